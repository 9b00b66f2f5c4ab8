//! Release-key revocation lists (not device certificates): every list an operator
//! uploaded, verified before it got here (`crate::revocations`), by sequence.

use sqlx::Row;
use warden_wire::fleet_api::RevocationListRecord;
use warden_wire::topics::{from_hex, to_hex};

use super::core::{Store, StoreError, WriteStatement as _};

const LIST_COLUMNS: &str = "sequence, issuer, revoked, sha256, size, uploaded_ms";

fn record_from_row(row: &sqlx::any::AnyRow) -> Result<RevocationListRecord, StoreError> {
    let sequence: i64 = row.try_get(0)?;
    let revoked: String = row.try_get(2)?;
    Ok(RevocationListRecord {
        sequence: u64::try_from(sequence).unwrap_or_default(),
        issuer: row.try_get(1)?,
        revoked: revoked
            .split(',')
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect(),
        sha256: row.try_get(3)?,
        size: row.try_get(4)?,
        uploaded_ms: row.try_get(5)?,
    })
}

impl Store {
    /// Stores `list` (the `WRL1` bytes) as `record`, only if no list of an equal or
    /// higher sequence is stored (checked in the same statement, so two uploads at once
    /// cannot both win); whether it was stored.
    pub async fn insert_revocation_list(
        &self,
        record: &RevocationListRecord,
        list: &[u8],
    ) -> Result<bool, StoreError> {
        let sequence = i64::try_from(record.sequence).unwrap_or(i64::MAX);
        let inserted = sqlx::query(
            "INSERT INTO revocation_lists (sequence, issuer, revoked, sha256, size, list_hex,
                 uploaded_ms)
             SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE NOT EXISTS (SELECT 1 FROM revocation_lists WHERE sequence >= $8)",
        )
        .bind(sequence)
        .bind(&record.issuer)
        .bind(record.revoked.join(","))
        .bind(&record.sha256)
        .bind(record.size)
        .bind(to_hex(list))
        .bind(record.uploaded_ms)
        .bind(sequence)
        .execute_write(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Every stored list, newest (highest sequence) first.
    pub async fn revocation_lists(&self) -> Result<Vec<RevocationListRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {LIST_COLUMNS} FROM revocation_lists ORDER BY sequence DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The newest stored list's sequence, if any.
    pub async fn newest_revocation_sequence(&self) -> Result<Option<u64>, StoreError> {
        let row =
            sqlx::query("SELECT sequence FROM revocation_lists ORDER BY sequence DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            let sequence: i64 = row.try_get(0)?;
            Ok(u64::try_from(sequence).unwrap_or_default())
        })
        .transpose()
    }

    /// The newest stored list: its sequence and its `WRL1` bytes.
    pub async fn newest_revocation_list(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT sequence, list_hex FROM revocation_lists ORDER BY sequence DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sequence: i64 = row.try_get(0)?;
        let hex: String = row.try_get(1)?;
        let list = from_hex(&hex).ok_or_else(|| {
            StoreError::from(sqlx::Error::Decode(
                format!("revocation_lists: the list of sequence {sequence} is not hex").into(),
            ))
        })?;
        Ok(Some((u64::try_from(sequence).unwrap_or_default(), list)))
    }
}
