//! What several fleet instances on one PostgreSQL share (see `crate::cluster`): live
//! instances with their heartbeats, which instance holds each device's session, and
//! messages queued for a device whose session another instance holds.
//!
//! Times here are the database's clock (`clock_timestamp()`), so instances on machines
//! whose clocks differ still agree on which heartbeat is stale. These queries are
//! PostgreSQL's: a single instance on SQLite never runs them.

use sqlx::Row;

use super::core::{Store, StoreError, WriteStatement as _};

/// The database's time in milliseconds since the epoch, as SQL.
const DB_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// A message queued for the instance holding a device's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The instance that queued it.
    pub origin: String,
    /// MQTT topic (or a `$warden/…` instruction to the instance itself).
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Where a device's live session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The instance holding it.
    pub instance_id: String,
    /// The public key (uncompressed SEC1, hex) the device authenticated with.
    pub public_key_hex: String,
}

impl Store {
    /// Records instance `id` as live (started now, heartbeat now).
    pub async fn register_instance(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO fleet_instances (instance_id, started_ms, heartbeat_ms)
             VALUES ($1, {DB_NOW_MS}, {DB_NOW_MS})
             ON CONFLICT (instance_id) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms"
        ))
        .bind(id)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Renews instance `id`'s heartbeat; `false` if another instance had declared it
    /// dead (its row was gone: its presence went with it and must be written again).
    pub async fn heartbeat(&self, id: &str) -> Result<bool, StoreError> {
        let updated = sqlx::query(&format!(
            "UPDATE fleet_instances SET heartbeat_ms = {DB_NOW_MS} WHERE instance_id = $1"
        ))
        .bind(id)
        .execute_write(self)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Forgets instances whose heartbeat is older than `dead_after_ms`, with the
    /// sessions they held (those devices are offline until they reconnect) and the
    /// messages queued for them; the IDs of the instances forgotten.
    pub async fn reap_dead_instances(&self, dead_after_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let reaped = async {
            let dead: Vec<String> = sqlx::query(&format!(
                "DELETE FROM fleet_instances WHERE heartbeat_ms < {DB_NOW_MS} - $1
                 RETURNING instance_id"
            ))
            .bind(dead_after_ms)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
            for statement in [
                "DELETE FROM device_presence WHERE instance_id NOT IN \
                 (SELECT instance_id FROM fleet_instances)",
                "DELETE FROM device_deliveries WHERE instance_id NOT IN \
                 (SELECT instance_id FROM fleet_instances)",
            ] {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(dead)
        }
        .await;
        tx.commit(reaped).await
    }

    /// Instance `id` stops: its row, its sessions and its queue go.
    pub async fn leave_cluster(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let left = async {
            for statement in [
                "DELETE FROM device_presence WHERE instance_id = $1",
                "DELETE FROM device_deliveries WHERE instance_id = $1",
                "DELETE FROM fleet_instances WHERE instance_id = $1",
            ] {
                sqlx::query(statement).bind(id).execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        tx.commit(left).await
    }

    /// `device`'s session is now `session` on `instance` (replacing wherever it was).
    pub async fn set_present(
        &self,
        device: &str,
        instance: &str,
        session: i64,
        public_key_hex: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO device_presence (device_id, instance_id, session, public_key, connected_ms)
             VALUES ($1, $2, $3, $4, {DB_NOW_MS})
             ON CONFLICT (device_id) DO UPDATE SET instance_id = EXCLUDED.instance_id,
                 session = EXCLUDED.session, public_key = EXCLUDED.public_key,
                 connected_ms = EXCLUDED.connected_ms"
        ))
        .bind(device)
        .bind(instance)
        .bind(session)
        .bind(public_key_hex)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// `device`'s session `session` on `instance` ended; a newer session (elsewhere,
    /// or a later one here) is left alone.
    pub async fn set_absent(
        &self,
        device: &str,
        instance: &str,
        session: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM device_presence WHERE device_id = $1 AND instance_id = $2 AND session = $3",
        )
        .bind(device)
        .bind(instance)
        .bind(session)
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Where `device`'s live session is, if anywhere.
    pub async fn presence(&self, device: &str) -> Result<Option<Presence>, StoreError> {
        let row =
            sqlx::query("SELECT instance_id, public_key FROM device_presence WHERE device_id = $1")
                .bind(device)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(row) => Some(Presence {
                instance_id: row.try_get(0)?,
                public_key_hex: row.try_get(1)?,
            }),
            None => None,
        })
    }

    /// The devices with a live session on any instance, sorted.
    pub async fn online_devices(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query("SELECT device_id FROM device_presence ORDER BY device_id")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?,
        )
    }

    /// Queues `topic`/`payload` for the instance holding `device`'s session, unless
    /// that is `origin` itself or nobody; whether it was queued.
    pub async fn queue_for_device(
        &self,
        device: &str,
        origin: &str,
        topic: &str,
        payload: &[u8],
    ) -> Result<bool, StoreError> {
        let queued = sqlx::query(&format!(
            "INSERT INTO device_deliveries (instance_id, origin, topic, payload, created_ms)
             SELECT instance_id, $2, $3, $4, {DB_NOW_MS} FROM device_presence
             WHERE device_id = $1 AND instance_id <> $2"
        ))
        .bind(device)
        .bind(origin)
        .bind(topic)
        .bind(payload.to_vec())
        .execute_write(self)
        .await?;
        Ok(queued.rows_affected() == 1)
    }

    /// Queues `topic`/`payload` for instance `instance`.
    pub async fn queue_for_instance(
        &self,
        instance: &str,
        origin: &str,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO device_deliveries (instance_id, origin, topic, payload, created_ms)
             VALUES ($1, $2, $3, $4, {DB_NOW_MS})"
        ))
        .bind(instance)
        .bind(origin)
        .bind(topic)
        .bind(payload.to_vec())
        .execute_write(self)
        .await?;
        Ok(())
    }

    /// Takes (deletes and returns, oldest first) up to `limit` messages queued for
    /// `instance`: each is taken once, by one poll.
    pub async fn take_deliveries(
        &self,
        instance: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM device_deliveries WHERE id IN (
                 SELECT id FROM device_deliveries WHERE instance_id = $1 ORDER BY id LIMIT $2)
             RETURNING id, origin, topic, payload",
        )
        .bind(instance)
        .bind(limit)
        .fetch_all_write(self)
        .await?;
        let mut taken = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>(0)?,
                    Delivery {
                        origin: row.try_get(1)?,
                        topic: row.try_get(2)?,
                        payload: row.try_get(3)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        taken.sort_by_key(|(id, _)| *id);
        Ok(taken.into_iter().map(|(_, delivery)| delivery).collect())
    }

    /// A connection of its own, outside the pool (a session-level advisory lock lives
    /// as long as the connection that took it).
    pub async fn dedicated_connection(&self) -> Result<sqlx::AnyConnection, StoreError> {
        use sqlx::ConnectOptions as _;
        Ok(self.pool.connect_options().connect().await?)
    }

    /// Whether this store is PostgreSQL (where several instances may share it).
    pub fn is_postgres(&self) -> bool {
        !self.sqlite
    }
}
