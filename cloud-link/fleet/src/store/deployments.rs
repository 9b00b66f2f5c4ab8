//! Images and deployments: append-only records of what was rolled out, where, and how
//! it went. A deployment row is never updated; its state is the last of its events.

use std::collections::BTreeMap;

use sqlx::Row;
use warden_wire::fleet_api::{
    DeltaRecord, DeploymentEvent, DeploymentMember, ImageRecord, StoredDeployment,
};

use super::core::{Store, StoreError, WriteStatement as _};

/// Every column of `deltas`, in the order [`delta_from_row`] reads them.
const SELECT_DELTAS: &str =
    "SELECT sha256, product, base_sha256, result_sha256, result_version, size, uploaded_ms
     FROM deltas";

/// A `deltas` row selected by [`SELECT_DELTAS`].
fn delta_from_row(row: &sqlx::any::AnyRow) -> Result<DeltaRecord, StoreError> {
    Ok(DeltaRecord {
        sha256: row.try_get(0)?,
        product: row.try_get(1)?,
        base_sha256: row.try_get(2)?,
        result_sha256: row.try_get(3)?,
        result_version: row.try_get(4)?,
        size: row.try_get(5)?,
        uploaded_ms: row.try_get(6)?,
    })
}

/// A deployment to create.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// ID.
    pub id: String,
    /// Product.
    pub product: String,
    /// Target group.
    pub group: String,
    /// Image.
    pub image_sha256: String,
    /// The request as accepted (JSON).
    pub spec: String,
    /// Who created it.
    pub created_by: String,
    /// `(device, wave)` of every member, fixed at creation.
    pub members: Vec<(String, i64)>,
}

/// A number larger than every one handed out before, in this process and (being
/// seeded from the wall clock in microseconds) in earlier runs: orders member states
/// that land in the same millisecond.
fn next_state_seq() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now_us = crate::clock::now_us();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now_us.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// Event kinds after which a deployment does nothing more.
pub const FINAL_STATES: &[&str] = &["halted", "completed"];

impl Store {
    /// Records an image; `false` if it was there already.
    pub async fn insert_image(&self, image: &ImageRecord) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO images (sha256, product, version, size, security_counter, measurement, uploaded_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&image.sha256)
        .bind(&image.product)
        .bind(&image.version)
        .bind(image.size)
        .bind(image.security_counter)
        .bind(&image.measurement)
        .bind(image.uploaded_ms)
        .execute_write(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Every image, newest first.
    pub async fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, product, version, size, security_counter, measurement, uploaded_ms
             FROM images ORDER BY uploaded_ms DESC, sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ImageRecord {
                    sha256: row.try_get(0)?,
                    product: row.try_get(1)?,
                    version: row.try_get(2)?,
                    size: row.try_get(3)?,
                    security_counter: row.try_get(4)?,
                    measurement: row.try_get(5)?,
                    uploaded_ms: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// The product's known security floor: the highest security counter of an image of
    /// `product` that some device has confirmed (a confirmed image raises the device's
    /// anti-rollback counter, so it refuses anything below). `None`: none confirmed.
    pub async fn security_floor(&self, product: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT i.security_counter, i.version FROM images i
             JOIN deployments d ON d.image_sha256 = i.sha256
             JOIN deployment_device_states s ON s.deployment_id = d.id
             WHERE i.product = $1 AND s.state = 'confirmed'
             ORDER BY i.security_counter DESC LIMIT 1",
        )
        .bind(product)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    /// The images uploaded for `product` (its known releases), newest first.
    pub async fn images_of_product(&self, product: &str) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self
            .images()
            .await?
            .into_iter()
            .filter(|i| i.product == product)
            .collect())
    }

    /// One image.
    pub async fn image(&self, sha256: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self
            .images()
            .await?
            .into_iter()
            .find(|i| i.sha256 == sha256))
    }

    /// Records a delta; `false` if it was there already.
    pub async fn insert_delta(&self, delta: &DeltaRecord) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO deltas (sha256, product, base_sha256, result_sha256, result_version, size, uploaded_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&delta.sha256)
        .bind(&delta.product)
        .bind(&delta.base_sha256)
        .bind(&delta.result_sha256)
        .bind(&delta.result_version)
        .bind(delta.size)
        .bind(delta.uploaded_ms)
        .execute_write(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Deltas, newest first: every one, or those producing the image `result_sha256`.
    pub async fn deltas(
        &self,
        result_sha256: Option<&str>,
    ) -> Result<Vec<DeltaRecord>, StoreError> {
        let rows = match result_sha256 {
            Some(result) => {
                sqlx::query(&format!(
                    "{SELECT_DELTAS} WHERE result_sha256 = $1 ORDER BY uploaded_ms DESC, sha256"
                ))
                .bind(result)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{SELECT_DELTAS} ORDER BY uploaded_ms DESC, sha256"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(delta_from_row).collect()
    }

    /// One delta.
    pub async fn delta(&self, sha256: &str) -> Result<Option<DeltaRecord>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_DELTAS} WHERE sha256 = $1"))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delta_from_row).transpose()
    }

    /// The delta from the image `base_sha256` to the image `result_sha256`, if one was
    /// uploaded (the smallest, should there be several).
    pub async fn delta_between(
        &self,
        base_sha256: &str,
        result_sha256: &str,
    ) -> Result<Option<DeltaRecord>, StoreError> {
        Ok(self
            .deltas(Some(result_sha256))
            .await?
            .into_iter()
            .filter(|d| d.base_sha256 == base_sha256)
            .min_by_key(|d| d.size))
    }

    /// Creates a deployment with its members and its `created` event, atomically.
    pub async fn create_deployment(
        &self,
        deployment: &NewDeployment,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let created = async {
            sqlx::query(
                "INSERT INTO deployments (id, product, device_group, image_sha256, spec, created_by, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&deployment.id)
            .bind(&deployment.product)
            .bind(&deployment.group)
            .bind(&deployment.image_sha256)
            .bind(&deployment.spec)
            .bind(&deployment.created_by)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            for (device, wave) in &deployment.members {
                sqlx::query(
                    "INSERT INTO deployment_members (deployment_id, device_id, wave) VALUES ($1, $2, $3)",
                )
                .bind(&deployment.id)
                .bind(device)
                .bind(*wave)
                .execute(&mut *tx)
                .await?;
            }
            let waves = deployment
                .members
                .iter()
                .map(|m| m.1)
                .max()
                .map_or(0, |w| w + 1);
            sqlx::query(
                "INSERT INTO deployment_events (deployment_id, seq, ts_ms, kind, wave, detail)
                 VALUES ($1, 0, $2, 'created', 0, $3)",
            )
            .bind(&deployment.id)
            .bind(now_ms)
            .bind(format!(
                "{} devices in {waves} waves",
                deployment.members.len()
            ))
            .execute(&mut *tx)
            .await?;
            Ok(())
        }
        .await;
        tx.commit(created).await
    }

    /// Appends a state change right after event `after_seq`; `false` (nothing
    /// written) if another writer appended that position first.
    pub async fn append_deployment_event(
        &self,
        deployment_id: &str,
        after_seq: i64,
        kind: &str,
        wave: i64,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO deployment_events (deployment_id, seq, ts_ms, kind, wave, detail)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(deployment_id)
        .bind(after_seq + 1)
        .bind(now_ms)
        .bind(kind)
        .bind(wave)
        .bind(detail)
        .execute_write(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Appends a member device's state (`offered`, `withheld`, or its update status).
    pub async fn record_member_state(
        &self,
        deployment_id: &str,
        device_id: &str,
        state: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deployment_device_states (deployment_id, device_id, seq, ts_ms, state, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(deployment_id)
        .bind(device_id)
        .bind(next_state_seq())
        .bind(now_ms)
        .bind(state)
        .bind(detail)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// IDs of deployments that are neither halted nor completed, oldest first.
    pub async fn active_deployments(&self) -> Result<Vec<String>, StoreError> {
        let finals = FINAL_STATES
            .iter()
            .map(|kind| format!("'{kind}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT d.id FROM deployments d WHERE NOT EXISTS (
                 SELECT 1 FROM deployment_events e WHERE e.deployment_id = d.id
                 AND e.kind IN ({finals}))
             ORDER BY d.created_ms, d.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Every deployment ID, newest first.
    pub async fn deployment_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM deployments ORDER BY created_ms DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// A deployment with its events and members.
    pub async fn deployment(&self, id: &str) -> Result<Option<StoredDeployment>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT d.id, d.product, d.device_group, d.image_sha256, i.version, d.spec,
                    d.created_by, d.created_ms
             FROM deployments d JOIN images i ON i.sha256 = d.image_sha256 WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let events: Vec<DeploymentEvent> = sqlx::query(
            "SELECT seq, ts_ms, kind, wave, detail FROM deployment_events
             WHERE deployment_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(DeploymentEvent {
                seq: row.try_get(0)?,
                ts_ms: row.try_get(1)?,
                kind: row.try_get(2)?,
                wave: row.try_get(3)?,
                detail: row.try_get(4)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
        let mut members: BTreeMap<String, DeploymentMember> = BTreeMap::new();
        for row in
            sqlx::query("SELECT device_id, wave FROM deployment_members WHERE deployment_id = $1")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
        {
            let device_id: String = row.try_get(0)?;
            members.insert(
                device_id.clone(),
                DeploymentMember {
                    device_id,
                    wave: row.try_get(1)?,
                    state: "pending".to_owned(),
                    detail: String::new(),
                    updated_ms: None,
                },
            );
        }
        for row in sqlx::query(
            "SELECT device_id, ts_ms, state, detail FROM deployment_device_states
             WHERE deployment_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        {
            let device_id: String = row.try_get(0)?;
            if let Some(member) = members.get_mut(&device_id) {
                member.updated_ms = Some(row.try_get(1)?);
                member.state = row.try_get(2)?;
                member.detail = row.try_get(3)?;
            }
        }
        let mut members: Vec<DeploymentMember> = members.into_values().collect();
        members.sort_by(|a, b| a.wave.cmp(&b.wave).then(a.device_id.cmp(&b.device_id)));
        let spec: String = row.try_get(5)?;
        let last = events.last();
        Ok(Some(StoredDeployment {
            id: row.try_get(0)?,
            product: row.try_get(1)?,
            group: row.try_get(2)?,
            image_sha256: row.try_get(3)?,
            version: row.try_get(4)?,
            spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::Null),
            created_by: row.try_get(6)?,
            created_ms: row.try_get(7)?,
            state: last.map(|e| e.kind.clone()).unwrap_or_default(),
            wave: last.map_or(0, |e| e.wave),
            events,
            members,
        }))
    }
}
