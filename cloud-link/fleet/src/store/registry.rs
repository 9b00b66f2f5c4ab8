//! The registry: products, device groups and registered devices.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

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
}

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

/// A device group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Its product.
    pub product: String,
    /// Its name.
    pub name: String,
    /// Whether deployments may target it (`No Updates` never does).
    pub receives_updates: bool,
    /// Registered devices in it.
    pub devices: i64,
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

/// A registered device as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegisteredDevice {
    /// Device ID.
    pub device_id: String,
    /// Serial number.
    pub serial: String,
    /// Product.
    pub product: String,
    /// Group.
    pub group: String,
    /// SHA-256 of the certificate DER, hex.
    pub fingerprint: String,
    /// The image version it runs (as last known).
    pub image_version: String,
    /// The policy bundle version it runs (from its twin), if any.
    pub policy_version: Option<i64>,
    /// Last message seen (telemetry), ms since the epoch.
    pub last_seen_ms: Option<i64>,
    /// `unknown`, `trusted` or `untrusted`.
    pub attestation: String,
    /// When it was last attested.
    pub attested_ms: Option<i64>,
    /// What the last attestation found (the release it runs, or why it was refused,
    /// or why no verdict was reached).
    pub attestation_detail: Option<String>,
    /// Whether its certificate is revoked.
    pub revoked: bool,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
    /// When it was registered.
    pub registered_ms: i64,
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
        let mut tx = self.pool.begin().await?;
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
        tx.commit().await?;
        Ok(ProductOutcome::Created)
    }

    /// Every product, by name.
    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let rows =
            sqlx::query("SELECT name, manufacturer_ca_pem, created_ms FROM products ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(Product {
                    name: row.try_get(0)?,
                    manufacturer_ca_pem: row.try_get(1)?,
                    created_ms: row.try_get(2)?,
                })
            })
            .collect()
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
        let mut tx = self.pool.begin().await?;
        let created = insert_group(&mut tx, product, name, true, now_ms).await?;
        tx.commit().await?;
        Ok(created)
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        let stored = self
            .registered_device(device.device_id)
            .await?
            .ok_or(StoreError(sqlx::Error::RowNotFound))?;
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
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM registry r LEFT JOIN devices d ON d.id = r.device_id
             WHERE r.device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(device_from_row).transpose()
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

    /// `(device_id, fingerprint, revoked)` of every registered device (the broker's
    /// trust is loaded from it at start).
    pub async fn registered_fingerprints(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let rows = sqlx::query("SELECT device_id, fingerprint, revoked_ms FROM registry")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get::<Option<i64>, _>(2)?.is_some(),
                ))
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
        .execute(&self.pool)
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
            .execute(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records why an attestation reached no verdict (no answer, a late answer); the
    /// status and its time are left as they were.
    pub async fn note_attestation(&self, device_id: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE registry SET attestation_detail = $1 WHERE device_id = $2")
            .bind(detail)
            .bind(device_id)
            .execute(&self.pool)
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
            .execute(&self.pool)
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
            .execute(&self.pool)
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
        .execute(&self.pool)
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
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
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
