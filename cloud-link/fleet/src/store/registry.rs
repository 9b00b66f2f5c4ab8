//! The registry: products, device groups and registered devices.

use serde::Serialize;
use sqlx::Row;

use warden_wire::fleet_api::{Group, RegisteredDevice};

use super::core::{Store, StoreError, WriteStatement as _, WriteTransaction};

/// The groups every product starts with, and whether each receives updates.
pub const DEFAULT_GROUPS: &[(&str, bool)] = &[
    ("Development", true),
    ("Field Test", true),
    ("Production", true),
    ("No Updates", false),
];

/// A product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Name (also the image header's product ID).
    pub name: String,
    /// The manufacturer CA(s) whose device certificates the fleet trusts, PEM.
    pub manufacturer_ca_pem: String,
    /// When it was created.
    pub created_ms: i64,
    /// Whether devices of its CA that were not registered may connect (and are then
    /// enrolled: registered in [`ENROLLED_GROUP`] at their first CONNECT).
    pub open_enrollment: bool,
}

/// Whether `name` can be a product: the image format's product ID, 1–16 of
/// `[A-Za-z0-9._-]`.
pub fn is_product_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 16
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The group a device enrolled at its first connection joins: it receives no updates
/// until an operator moves it.
pub const ENROLLED_GROUP: &str = "No Updates";

/// The image version recorded for an enrolled device until it reports its own.
pub const ENROLLED_IMAGE_VERSION: &str = "0.0.0";

/// What creating a product did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductOutcome {
    /// Created, with its default groups.
    Created,
    /// It existed with the same CA; nothing changed.
    Unchanged,
    /// It exists with another CA; nothing changed.
    Conflict,
}

/// A registration request, validated.
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    /// Device ID (= certificate CN).
    pub device_id: &'a str,
    /// Serial number.
    pub serial: &'a str,
    /// Product.
    pub product: &'a str,
    /// Group.
    pub group: &'a str,
    /// The certificate, PEM.
    pub certificate_pem: &'a str,
    /// Its fingerprint.
    pub fingerprint: &'a str,
    /// The image it was provisioned with.
    pub image_version: &'a str,
}

/// What the broker needs to know of a registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredIdentity {
    /// Device ID.
    pub device_id: String,
    /// Its certificate's fingerprint.
    pub fingerprint: String,
    /// Whether that certificate is revoked.
    pub revoked: bool,
    /// The product it is bound to (its certificate must chain to that product's CA).
    pub product: String,
}

/// What registering did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A new device.
    Created(RegisteredDevice),
    /// The device was registered with this certificate before; nothing changed.
    Unchanged(RegisteredDevice),
    /// The device is registered with another certificate (its fingerprint).
    Conflict(String),
}

const DEVICE_COLUMNS: &str = "r.device_id, r.serial, r.product, r.device_group, r.fingerprint,
    r.image_version, r.policy_version, d.last_seen_ms, r.attestation, r.attested_ms,
    r.revoked_ms, r.registered_ms, r.attestation_detail";

fn device_from_row(row: &sqlx::any::AnyRow) -> Result<RegisteredDevice, StoreError> {
    let revoked_ms: Option<i64> = row.try_get(10)?;
    Ok(RegisteredDevice {
        device_id: row.try_get(0)?,
        serial: row.try_get(1)?,
        product: row.try_get(2)?,
        group: row.try_get(3)?,
        fingerprint: row.try_get(4)?,
        image_version: row.try_get(5)?,
        policy_version: row.try_get(6)?,
        last_seen_ms: row.try_get(7)?,
        attestation: row.try_get(8)?,
        attested_ms: row.try_get(9)?,
        attestation_detail: row.try_get(12)?,
        revoked: revoked_ms.is_some(),
        revoked_ms,
        registered_ms: row.try_get(11)?,
    })
}

impl Store {
    /// Creates a product and its default groups, once.
    pub async fn create_product(
        &self,
        name: &str,
        manufacturer_ca_pem: &str,
        same_ca: impl Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<ProductOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = async {
            let existing = sqlx::query("SELECT manufacturer_ca_pem FROM products WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                let stored: String = row.try_get(0)?;
                return Ok(if same_ca(&stored) {
                    ProductOutcome::Unchanged
                } else {
                    ProductOutcome::Conflict
                });
            }
            sqlx::query(
                "INSERT INTO products (name, manufacturer_ca_pem, created_ms) VALUES ($1, $2, $3)",
            )
            .bind(name)
            .bind(manufacturer_ca_pem)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            for (group, receives_updates) in DEFAULT_GROUPS {
                insert_group(&mut tx, name, group, *receives_updates, now_ms).await?;
            }
            Ok(ProductOutcome::Created)
        }
        .await;
        tx.commit(outcome).await
    }

    /// Every product, by name.
    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, manufacturer_ca_pem, created_ms, open_enrollment FROM products
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Product {
                    name: row.try_get(0)?,
                    manufacturer_ca_pem: row.try_get(1)?,
                    created_ms: row.try_get(2)?,
                    open_enrollment: row.try_get::<i64, _>(3)? != 0,
                })
            })
            .collect()
    }

    /// Lets `product`'s CA enroll unregistered devices (or stops it); whether the
    /// product exists.
    pub async fn set_open_enrollment(&self, product: &str, open: bool) -> Result<bool, StoreError> {
        let changed = sqlx::query("UPDATE products SET open_enrollment = $1 WHERE name = $2")
            .bind(i64::from(open))
            .bind(product)
            .execute_write(self)
            .await?
            .rows_affected();
        Ok(changed == 1)
    }

    /// One product.
    pub async fn product(&self, name: &str) -> Result<Option<Product>, StoreError> {
        Ok(self.products().await?.into_iter().find(|p| p.name == name))
    }

    /// The groups of a product with their device counts, by name.
    pub async fn groups(&self, product: &str) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.name, g.receives_updates,
                    (SELECT COUNT(*) FROM registry r WHERE r.product = g.product AND r.device_group = g.name)
             FROM device_groups g WHERE g.product = $1 ORDER BY g.name",
        )
        .bind(product)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    product: product.to_owned(),
                    name: row.try_get(0)?,
                    receives_updates: row.try_get::<i64, _>(1)? != 0,
                    devices: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// Adds a group that receives updates; `false` if it existed.
    pub async fn create_group(
        &self,
        product: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let created = insert_group(&mut tx, product, name, true, now_ms).await;
        tx.commit(created).await
    }

    /// Registers a device, once: the same device with the same certificate changes
    /// nothing; with another certificate it is a conflict.
    pub async fn register_device(
        &self,
        device: &NewDevice<'_>,
        now_ms: i64,
    ) -> Result<Registration, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO registry (device_id, serial, product, device_group, certificate_pem,
                 fingerprint, image_version, attestation, registered_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'unknown', $8) ON CONFLICT DO NOTHING",
        )
        .bind(device.device_id)
        .bind(device.serial)
        .bind(device.product)
        .bind(device.group)
        .bind(device.certificate_pem)
        .bind(device.fingerprint)
        .bind(device.image_version)
        .bind(now_ms)
        .execute_write(self)
        .await?
        .rows_affected();
        let stored = self
            .registered_device(device.device_id)
            .await?
            .ok_or(StoreError::from(sqlx::Error::RowNotFound))?;
        Ok(if inserted == 1 {
            Registration::Created(stored)
        } else if stored.fingerprint == device.fingerprint {
            Registration::Unchanged(stored)
        } else {
            Registration::Conflict(stored.fingerprint)
        })
    }

    /// A registered device.
    pub async fn registered_device(
        &self,
        device_id: &str,
    ) -> Result<Option<RegisteredDevice>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM registry r LEFT JOIN devices d ON d.id = r.device_id
             WHERE r.device_id = $1"
        );
        let query = sqlx::query(&sql).bind(device_id);
        let row = match &self.reads {
            Some(reads) => query.fetch_optional(&mut *reads.acquire().await).await?,
            None => query.fetch_optional(&self.pool).await?,
        };
        row.as_ref().map(device_from_row).transpose()
    }

    /// The certificate (PEM) a device was registered with, if it is registered.
    pub async fn registered_certificate(
        &self,
        device_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let query = sqlx::query_scalar::<_, String>(
            "SELECT certificate_pem FROM registry WHERE device_id = $1",
        )
        .bind(device_id);
        Ok(match &self.reads {
            Some(reads) => query.fetch_optional(&mut *reads.acquire().await).await?,
            None => query.fetch_optional(&self.pool).await?,
        })
    }

    /// The registered devices of a product's group, by ID.
    pub async fn group_devices(
        &self,
        product: &str,
        group: &str,
    ) -> Result<Vec<RegisteredDevice>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM registry r LEFT JOIN devices d ON d.id = r.device_id
             WHERE r.product = $1 AND r.device_group = $2 ORDER BY r.device_id"
        ))
        .bind(product)
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Every registered device's identity (the broker's trust is loaded from it at
    /// start).
    pub async fn registered_identities(&self) -> Result<Vec<RegisteredIdentity>, StoreError> {
        let rows = sqlx::query("SELECT device_id, fingerprint, revoked_ms, product FROM registry")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RegisteredIdentity {
                    device_id: row.try_get(0)?,
                    fingerprint: row.try_get(1)?,
                    revoked: row.try_get::<Option<i64>, _>(2)?.is_some(),
                    product: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Marks a device's certificate revoked (the first revocation's time is kept).
    pub async fn revoke_device(&self, device_id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE registry SET revoked_ms = $1 WHERE device_id = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms)
        .bind(device_id)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Records an attestation outcome (`trusted` or `untrusted`).
    pub async fn set_attestation(
        &self,
        device_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE registry SET attestation = $1, attested_ms = $2 WHERE device_id = $3")
            .bind(status)
            .bind(now_ms)
            .bind(device_id)
            .execute_write(self)
            .await?;
        Ok(())
    }

    /// Records an attestation verdict (`trusted` or `untrusted`) with what it found.
    pub async fn record_attestation(
        &self,
        device_id: &str,
        status: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE registry SET attestation = $1, attested_ms = $2, attestation_detail = $3
             WHERE device_id = $4",
        )
        .bind(status)
        .bind(now_ms)
        .bind(detail)
        .bind(device_id)
        .execute_write(self)
        .await?;
        let mut health = self.lock_health();
        match status {
            "trusted" => health.attestations.trusted += 1,
            "untrusted" => health.attestations.untrusted += 1,
            _ => {}
        }
        Ok(())
    }

    /// Records why an attestation reached no verdict (no answer, a late answer); the
    /// status and its time are left as they were.
    pub async fn note_attestation(&self, device_id: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE registry SET attestation_detail = $1 WHERE device_id = $2")
            .bind(detail)
            .bind(device_id)
            .execute_write(self)
            .await?;
        Ok(())
    }

    /// Records the image version a device runs.
    pub async fn set_image_version(
        &self,
        device_id: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE registry SET image_version = $1 WHERE device_id = $2")
            .bind(version)
            .bind(device_id)
            .execute_write(self)
            .await?;
        Ok(())
    }

    /// Records the policy bundle version a device runs.
    pub async fn set_policy_version(
        &self,
        device_id: &str,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE registry SET policy_version = $1 WHERE device_id = $2")
            .bind(version)
            .bind(device_id)
            .execute_write(self)
            .await?;
        Ok(())
    }

    /// Appends one line to the audit log (every API write).
    pub async fn audit(
        &self,
        actor: &str,
        method: &str,
        path: &str,
        status: u16,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (ts_ms, actor, method, path, status) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms)
        .bind(actor)
        .bind(method)
        .bind(path)
        .bind(i64::from(status))
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// The audit log, newest first, at most `limit` lines: `(ts_ms, actor, method, path, status)`.
    pub async fn audit_log(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts_ms, actor, method, path, status FROM audit_log ORDER BY ts_ms DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                ))
            })
            .collect()
    }
}

async fn insert_group(
    tx: &mut WriteTransaction<'_>,
    product: &str,
    name: &str,
    receives_updates: bool,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO device_groups (product, name, receives_updates, created_ms)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(product)
    .bind(name)
    .bind(i64::from(receives_updates))
    .bind(now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// What a quote found when it tried to use its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeUse {
    /// The challenge was pending and within its deadline: it is used up (deleted in
    /// the same transaction that records the answer).
    Accepted {
        /// When it was issued, ms since the epoch.
        issued_ms: i64,
    },
    /// The challenge's deadline has passed; it stays unanswerable until purged.
    Expired {
        /// When it was issued.
        issued_ms: i64,
        /// When it stopped being answerable.
        deadline_ms: i64,
    },
    /// The nonce was answered before, by a quote with this SHA-256 (hex).
    Answered {
        /// The digest of the quote that used it.
        quote_sha256: String,
    },
    /// No challenge with this nonce was issued to this device (or it was purged).
    Unknown,
}

impl Store {
    /// Records a challenge sent to `device_id`, answerable until `deadline_ms`.
    pub async fn issue_challenge(
        &self,
        device_id: &str,
        nonce_hex: &str,
        issued_ms: i64,
        deadline_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO attestation_challenges (device_id, nonce, issued_ms, deadline_ms)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(device_id)
        .bind(nonce_hex)
        .bind(issued_ms)
        .bind(deadline_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Uses the challenge `nonce_hex` of `device_id` for a quote whose digest is
    /// `quote_sha256`. The pending row is deleted by the statement that finds it
    /// (`DELETE … RETURNING`, so two answers — or two fleet instances — cannot both use
    /// it), and the answer is recorded in the same transaction.
    pub async fn use_challenge(
        &self,
        device_id: &str,
        nonce_hex: &str,
        quote_sha256: &str,
        now_ms: i64,
    ) -> Result<ChallengeUse, StoreError> {
        let mut tx = self.begin_write().await?;
        let found = async {
            let used = sqlx::query(
                "DELETE FROM attestation_challenges
                 WHERE device_id = $1 AND nonce = $2 AND deadline_ms >= $3 RETURNING issued_ms",
            )
            .bind(device_id)
            .bind(nonce_hex)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = used {
                sqlx::query(
                    "INSERT INTO attestation_answers (device_id, nonce, quote_sha256, answered_ms)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(device_id)
                .bind(nonce_hex)
                .bind(quote_sha256)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                return Ok(ChallengeUse::Accepted {
                    issued_ms: row.try_get(0)?,
                });
            }
            let expired = sqlx::query(
                "SELECT issued_ms, deadline_ms FROM attestation_challenges
                 WHERE device_id = $1 AND nonce = $2",
            )
            .bind(device_id)
            .bind(nonce_hex)
            .fetch_optional(&mut *tx)
            .await?;
            let found = if let Some(row) = expired {
                ChallengeUse::Expired {
                    issued_ms: row.try_get(0)?,
                    deadline_ms: row.try_get(1)?,
                }
            } else {
                let answered = sqlx::query(
                    "SELECT quote_sha256 FROM attestation_answers WHERE device_id = $1 AND nonce = $2",
                )
                .bind(device_id)
                .bind(nonce_hex)
                .fetch_optional(&mut *tx)
                .await?;
                match answered {
                    Some(row) => ChallengeUse::Answered {
                        quote_sha256: row.try_get(0)?,
                    },
                    None => ChallengeUse::Unknown,
                }
            };
            Ok(found)
        }
        .await;
        tx.commit(found).await
    }

    /// Forgets challenges whose deadline and answers whose time are before
    /// `before_ms`; how many rows went.
    pub async fn purge_challenges(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let purged = async {
            let challenges =
                sqlx::query("DELETE FROM attestation_challenges WHERE deadline_ms < $1")
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            let answers = sqlx::query("DELETE FROM attestation_answers WHERE answered_ms < $1")
                .bind(before_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            Ok(challenges + answers)
        }
        .await;
        tx.commit(purged).await
    }

    /// A challenge went unanswered past its deadline: a `trusted` or `unknown` device
    /// becomes `unverified` (an `untrusted` one stays so), with `detail`. Nothing
    /// changes if the challenge was answered meanwhile (it is no longer pending).
    /// Whether the record changed.
    pub async fn challenge_unanswered(
        &self,
        device_id: &str,
        nonce_hex: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE registry SET attestation_detail = $1,
                 attestation = CASE WHEN attestation = 'untrusted' THEN 'untrusted'
                                    ELSE 'unverified' END
             WHERE device_id = $2 AND EXISTS (SELECT 1 FROM attestation_challenges c
                 WHERE c.device_id = $2 AND c.nonce = $3)",
        )
        .bind(detail)
        .bind(device_id)
        .bind(nonce_hex)
        .execute_write(self)
        .await?
        .rows_affected();
        if updated > 0 {
            self.lock_health().attestations.unanswered += 1;
        }
        Ok(updated > 0)
    }

    /// Trust lapses: every `trusted` device whose last verified attestation is before
    /// `attested_before_ms` becomes `unverified` with `detail`. The devices changed.
    pub async fn lapse_stale_trust(
        &self,
        attested_before_ms: i64,
        detail: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "UPDATE registry SET attestation = 'unverified', attestation_detail = $1
             WHERE attestation = 'trusted' AND (attested_ms IS NULL OR attested_ms < $2)
             RETURNING device_id",
        )
        .bind(detail)
        .bind(attested_before_ms)
        .fetch_all_write(self)
        .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Records the state `device_id` reports (JSON) and the policy version in it,
    /// unless a state from a later control-queue position (`(epoch, seq)` of its
    /// `delivery`) is stored already: a redelivered older state never overwrites a
    /// newer one. The comparison is made by the database in the upsert. A state
    /// without a position counts as `(0, 0)`: it replaces only another such state.
    /// Whether it was stored.
    pub async fn record_twin_reported(
        &self,
        device_id: &str,
        reported: &str,
        position: Option<(u64, u64)>,
        policy_version: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (epoch, seq) = position.map_or((0, 0), |(epoch, seq)| {
            (
                i64::try_from(epoch).unwrap_or(i64::MAX),
                i64::try_from(seq).unwrap_or(i64::MAX),
            )
        });
        let mut tx = self.begin_write().await?;
        let stored = async {
            let stored = sqlx::query(
                "INSERT INTO twins (device_id, reported, reported_ms, reported_epoch, reported_seq)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported,
                     reported_ms = excluded.reported_ms, reported_epoch = excluded.reported_epoch,
                     reported_seq = excluded.reported_seq
                 WHERE twins.reported_epoch IS NULL
                    OR excluded.reported_epoch > twins.reported_epoch
                    OR (excluded.reported_epoch = twins.reported_epoch
                        AND excluded.reported_seq >= twins.reported_seq)",
            )
            .bind(device_id)
            .bind(reported)
            .bind(now_ms)
            .bind(epoch)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if stored {
                sqlx::query("UPDATE registry SET policy_version = $1 WHERE device_id = $2")
                    .bind(policy_version)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(stored)
        }
        .await;
        tx.commit(stored).await
    }
}
