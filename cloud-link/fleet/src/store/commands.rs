//! Commands sent to devices and their results, and the device twins (desired and
//! reported state) the fleet keeps.

use sqlx::Row;
use warden_wire::fleet_api::CommandView;

use super::core::{Store, StoreError, WriteStatement as _};

/// A stored command's request as JSON. The column holds the payload sent (JSON
/// text); a row whose text is not JSON (written by hand, or damaged) is shown as the
/// text itself rather than failing the read.
fn request_as_json(stored: String) -> serde_json::Value {
    serde_json::from_str(&stored).unwrap_or(serde_json::Value::String(stored))
}

impl Store {
    /// Records a command sent to a device, as `sent`.
    pub async fn insert_command(
        &self,
        id: &str,
        device_id: &str,
        request: &str,
        created_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO commands (id, device_id, request, status, detail, created_ms) VALUES ($1, $2, $3, 'sent', '', $4)",
        )
        .bind(id)
        .bind(device_id)
        .bind(request)
        .bind(created_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Records a device's result for one of its commands (the first result wins;
    /// a result for another device's command changes nothing).
    pub async fn complete_command(
        &self,
        device_id: &str,
        id: &str,
        status: &str,
        detail: &str,
        completed_ms: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE commands SET status = $1, detail = $2, completed_ms = $3
             WHERE id = $4 AND device_id = $5 AND status = 'sent'",
        )
        .bind(status)
        .bind(detail)
        .bind(completed_ms)
        .bind(id)
        .bind(device_id)
        .execute_write(self)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// One command of a device.
    pub async fn command(
        &self,
        device_id: &str,
        id: &str,
    ) -> Result<Option<CommandView>, StoreError> {
        let row = sqlx::query(
            "SELECT id, request, status, detail, created_ms, completed_ms FROM commands WHERE id = $1 AND device_id = $2",
        )
        .bind(id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let request: String = row.try_get(1)?;
            Ok(CommandView {
                id: row.try_get(0)?,
                request: request_as_json(request),
                status: row.try_get(2)?,
                detail: row.try_get(3)?,
                created_ms: row.try_get(4)?,
                completed_ms: row.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Records the state the fleet wants `device_id` in (JSON).
    pub async fn set_twin_desired(
        &self,
        device_id: &str,
        desired: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO twins (device_id, desired, desired_ms) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET desired = excluded.desired, desired_ms = excluded.desired_ms",
        )
        .bind(device_id)
        .bind(desired)
        .bind(now_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Records the state `device_id` reports (JSON).
    pub async fn set_twin_reported(
        &self,
        device_id: &str,
        reported: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO twins (device_id, reported, reported_ms) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported, reported_ms = excluded.reported_ms",
        )
        .bind(device_id)
        .bind(reported)
        .bind(now_ms)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// The desired and reported state of a device (JSON texts), if any was recorded.
    pub async fn twin(
        &self,
        device_id: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT desired, reported FROM twins WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_request_reads_as_json_and_other_text_as_itself() {
        assert_eq!(
            request_as_json(r#"{"v":1,"id":"c-1"}"#.into()),
            serde_json::json!({"v": 1, "id": "c-1"})
        );
        assert_eq!(
            request_as_json("not json".into()),
            serde_json::Value::String("not json".into())
        );
    }
}
