//! Certificate renewals: the certificate issued to each device and not yet used, and
//! the last outcome of its renewal (for the broker's trust and the device page).

use sqlx::Row;

use super::core::{Store, StoreError, WriteStatement as _};

/// `certificate_renewals.state` of a certificate issued and not yet used.
pub const RENEWAL_ISSUED: &str = "issued";
/// `certificate_renewals.state` once the device connected with its new certificate.
pub const RENEWAL_COMPLETED: &str = "completed";
/// `certificate_renewals.state` of a refused request.
pub const RENEWAL_REFUSED: &str = "refused";

/// The last renewal of one device's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The device.
    pub device_id: String,
    /// [`RENEWAL_ISSUED`], [`RENEWAL_COMPLETED`] or [`RENEWAL_REFUSED`].
    pub state: String,
    /// What happened, for people.
    pub detail: String,
    /// The issued certificate's fingerprint (issued, completed).
    pub fingerprint: Option<String>,
    /// The issued certificate's end of validity, ms since the epoch.
    pub not_after_ms: Option<i64>,
    /// When the state was reached, ms since the epoch.
    pub updated_ms: i64,
}

const RENEWAL_COLUMNS: &str = "device_id, state, detail, fingerprint, not_after_ms, updated_ms";

fn renewal_from_row(row: &sqlx::any::AnyRow) -> Result<Renewal, StoreError> {
    Ok(Renewal {
        device_id: row.try_get(0)?,
        state: row.try_get(1)?,
        detail: row.try_get(2)?,
        fingerprint: row.try_get(3)?,
        not_after_ms: row.try_get(4)?,
        updated_ms: row.try_get(5)?,
    })
}

impl Store {
    /// Records a certificate issued to `device_id` (PEM, fingerprint): the broker
    /// accepts it beside the registered one until the device first connects with it.
    /// A later issue replaces an unused earlier one.
    pub async fn record_renewal_issued(
        &self,
        device_id: &str,
        certificate_pem: &str,
        fingerprint: &str,
        not_after_ms: i64,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO certificate_renewals (device_id, state, detail, fingerprint,
                 certificate_pem, not_after_ms, updated_ms)
             VALUES ($1, 'issued', $2, $3, $4, $5, $6)
             ON CONFLICT (device_id) DO UPDATE SET state = 'issued',
                 detail = EXCLUDED.detail, fingerprint = EXCLUDED.fingerprint,
                 certificate_pem = EXCLUDED.certificate_pem,
                 not_after_ms = EXCLUDED.not_after_ms, updated_ms = EXCLUDED.updated_ms",
        )
        .bind(device_id)
        .bind(detail)
        .bind(fingerprint)
        .bind(certificate_pem)
        .bind(not_after_ms)
        .bind(now_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Records a refused request. A certificate already issued and not yet used stays
    /// acceptable (the refusal is of this request, not of that certificate).
    pub async fn record_renewal_refused(
        &self,
        device_id: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO certificate_renewals (device_id, state, detail, updated_ms)
             VALUES ($1, 'refused', $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET
                 state = CASE WHEN certificate_renewals.state = 'issued' THEN 'issued'
                              ELSE 'refused' END,
                 detail = EXCLUDED.detail, updated_ms = EXCLUDED.updated_ms",
        )
        .bind(device_id)
        .bind(detail)
        .bind(now_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// The device connected with its issued certificate `fingerprint`: it becomes the
    /// registered one (the old one is no longer accepted). False if no certificate
    /// with that fingerprint was waiting (another instance completed it first).
    pub async fn complete_renewal(
        &self,
        device_id: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let completed = async {
            let updated = sqlx::query(
                "UPDATE registry SET fingerprint = $2, certificate_pem = (
                     SELECT certificate_pem FROM certificate_renewals
                     WHERE device_id = $1 AND state = 'issued' AND fingerprint = $2)
                 WHERE device_id = $1 AND EXISTS (
                     SELECT 1 FROM certificate_renewals
                     WHERE device_id = $1 AND state = 'issued' AND fingerprint = $2)",
            )
            .bind(device_id)
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                sqlx::query(
                    "UPDATE certificate_renewals SET state = 'completed',
                         detail = 'the device connected with its renewed certificate; the old one is retired',
                         certificate_pem = NULL, updated_ms = $2
                     WHERE device_id = $1",
                )
                .bind(device_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            Ok(updated == 1)
        }
        .await;
        tx.commit(completed).await
    }

    /// Every certificate issued and not yet used: `(device_id, fingerprint)`.
    pub async fn issued_renewals(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, fingerprint FROM certificate_renewals WHERE state = 'issued'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The last renewal of `device_id`'s certificate, if it ever had one.
    pub async fn renewal(&self, device_id: &str) -> Result<Option<Renewal>, StoreError> {
        let sql =
            format!("SELECT {RENEWAL_COLUMNS} FROM certificate_renewals WHERE device_id = $1");
        let row = sqlx::query(&sql)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(renewal_from_row).transpose()
    }
}
