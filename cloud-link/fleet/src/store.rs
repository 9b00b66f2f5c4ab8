//! The fleet store: devices and telemetry in SQLite (default) or PostgreSQL.
//!
//! One set of queries serves both databases through sqlx's `Any` driver; placeholders
//! are `$N`, which both accept. Schema changes are numbered migrations applied once.

mod dashboard;
mod deployments;
mod registry;
mod reports;
mod telemetry;

pub use dashboard::{
    DEVICE_STATUSES, DeviceRow, FleetCounts, SeenDevice, SignatureBucket, SignatureGroup,
    VersionCount, VersionReports,
};
pub use deployments::{
    DeploymentEvent, DeploymentMember, ImageRecord, NewDeployment, StoredDeployment,
};
pub use registry::{ChallengeUse, NewDevice, Product, ProductOutcome, Registration};
pub use reports::{CrashRate, ReportBucket, ReportGroup, StoredEvent, StoredReport};

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};
use warden_wire::fleet_api::CommandView;
use warden_wire::topics::TelemetryBatch;
use warden_wire::value::Value;

/// SQLite connections for read-only lookups besides the one writer, by default.
pub const READ_CONNECTIONS: u32 = 2;

/// How much received time one delete of [`Store::prune_telemetry`] covers.
pub const PRUNE_WINDOW_MS: i64 = 60_000;

/// A schema change: the same SQL on both databases, or one text for each.
enum Migration {
    /// Statements both SQLite and PostgreSQL run.
    Both(&'static str),
    /// Statements per database (SQLite cannot drop a column's NOT NULL in place).
    PerBackend {
        /// For SQLite.
        sqlite: &'static str,
        /// For PostgreSQL.
        postgres: &'static str,
    },
}

impl Migration {
    fn sql(&self, sqlite: bool) -> &'static str {
        match *self {
            Self::Both(sql) => sql,
            Self::PerBackend { sqlite: lite, .. } if sqlite => lite,
            Self::PerBackend { postgres, .. } => postgres,
        }
    }
}

/// Migration 11 on SQLite: the tables of readings rebuilt with a nullable `value`
/// and a `flag` column (SQLite has no `ALTER COLUMN … DROP NOT NULL`); the 0 that
/// stood in `value` beside a text becomes NULL.
const MIGRATION_11_SQLITE: &str = "CREATE TABLE telemetry_v11 (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION,
        unit TEXT NOT NULL,
        text TEXT,
        received_ms BIGINT,
        flag BIGINT
    );
    INSERT INTO telemetry_v11 (device_id, point, ts_ms, value, unit, text, received_ms)
        SELECT device_id, point, ts_ms, CASE WHEN text IS NULL THEN value END, unit, text,
            received_ms
        FROM telemetry;
    DROP TABLE telemetry;
    ALTER TABLE telemetry_v11 RENAME TO telemetry;
    CREATE INDEX telemetry_by_point ON telemetry (device_id, point, ts_ms);
    CREATE INDEX telemetry_by_received ON telemetry (received_ms);
    CREATE TABLE latest_values_v11 (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION,
        unit TEXT NOT NULL,
        text TEXT,
        flag BIGINT,
        PRIMARY KEY (device_id, point)
    );
    INSERT INTO latest_values_v11 (device_id, point, ts_ms, value, unit, text)
        SELECT device_id, point, ts_ms, CASE WHEN text IS NULL THEN value END, unit, text
        FROM latest_values;
    DROP TABLE latest_values;
    ALTER TABLE latest_values_v11 RENAME TO latest_values";

/// Migration 11 on PostgreSQL: the same change in place.
const MIGRATION_11_POSTGRES: &str = "ALTER TABLE telemetry ALTER COLUMN value DROP NOT NULL;
    ALTER TABLE telemetry ADD COLUMN flag BIGINT;
    UPDATE telemetry SET value = NULL WHERE text IS NOT NULL;
    ALTER TABLE latest_values ALTER COLUMN value DROP NOT NULL;
    ALTER TABLE latest_values ADD COLUMN flag BIGINT;
    UPDATE latest_values SET value = NULL WHERE text IS NOT NULL";

/// Numbered schema migrations, applied in order, each exactly once.
const MIGRATIONS: &[(i64, Migration)] = &[
    (
        1,
        Migration::Both(
            "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        first_seen_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL
    );
    CREATE TABLE telemetry_batches (
        device_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, stream, epoch, seq)
    );
    CREATE TABLE telemetry (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        unit TEXT NOT NULL
    );
    CREATE INDEX telemetry_by_point ON telemetry (device_id, point, ts_ms);
    CREATE TABLE latest_values (
        device_id TEXT NOT NULL,
        point TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        unit TEXT NOT NULL,
        PRIMARY KEY (device_id, point)
    );",
        ),
    ),
    (
        2,
        Migration::Both(
            "CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        request TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        completed_ms BIGINT
    );
    CREATE INDEX commands_by_device ON commands (device_id, created_ms)",
        ),
    ),
    (
        3,
        Migration::Both(
            "CREATE TABLE twins (
        device_id TEXT PRIMARY KEY,
        desired TEXT,
        desired_ms BIGINT,
        reported TEXT,
        reported_ms BIGINT
    )",
        ),
    ),
    (
        4,
        Migration::Both(
            "CREATE TABLE products (
        name TEXT PRIMARY KEY,
        manufacturer_ca_pem TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE device_groups (
        product TEXT NOT NULL,
        name TEXT NOT NULL,
        receives_updates BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (product, name)
    );
    CREATE TABLE registry (
        device_id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        product TEXT NOT NULL,
        device_group TEXT NOT NULL,
        certificate_pem TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        image_version TEXT NOT NULL,
        policy_version BIGINT,
        attestation TEXT NOT NULL,
        attested_ms BIGINT,
        revoked_ms BIGINT,
        registered_ms BIGINT NOT NULL
    );
    CREATE INDEX registry_by_group ON registry (product, device_group, device_id);
    CREATE TABLE audit_log (
        ts_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status BIGINT NOT NULL
    )",
        ),
    ),
    (
        5,
        Migration::Both(
            "CREATE TABLE failure_reports (
        device_id TEXT NOT NULL,
        id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        compartment TEXT NOT NULL,
        kind TEXT NOT NULL,
        image_version TEXT NOT NULL,
        signature TEXT NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (device_id, id)
    );
    CREATE INDEX failure_reports_by_signature ON failure_reports (signature, ts_ms);
    CREATE INDEX failure_reports_by_version ON failure_reports (image_version, kind);
    CREATE TABLE device_events (
        device_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX device_events_by_device ON device_events (device_id, ts_ms)",
        ),
    ),
    (
        6,
        Migration::Both(
            "CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        product TEXT NOT NULL,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        security_counter BIGINT NOT NULL,
        measurement TEXT NOT NULL,
        uploaded_ms BIGINT NOT NULL
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        product TEXT NOT NULL,
        device_group TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE deployment_members (
        deployment_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        wave BIGINT NOT NULL,
        PRIMARY KEY (deployment_id, device_id)
    );
    CREATE TABLE deployment_events (
        deployment_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        wave BIGINT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (deployment_id, seq)
    );
    CREATE TABLE deployment_device_states (
        deployment_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX deployment_device_states_by_device
        ON deployment_device_states (deployment_id, device_id, seq)",
        ),
    ),
    (
        7,
        Migration::Both("ALTER TABLE registry ADD COLUMN attestation_detail TEXT"),
    ),
    // Pending attestation challenges and answered nonces (single use across restarts),
    // the reported twin's control-queue position, and the trust-lapse sweep's index.
    (8, Migration::Both(registry::MIGRATION_8)),
    (
        9,
        // String points: `text` is set and `value` held 0 (the column was NOT NULL on
        // both backends); migration 11 replaces that 0 with NULL.
        Migration::Both(
            "ALTER TABLE telemetry ADD COLUMN text TEXT;
    ALTER TABLE latest_values ADD COLUMN text TEXT",
        ),
    ),
    (
        10,
        // Retention goes by when the fleet received a reading, not by the device's
        // clock (a device whose clock is not set yet stamps 1970). Rows stored before
        // this migration have none and are pruned by their read time instead.
        Migration::Both(
            "ALTER TABLE telemetry ADD COLUMN received_ms BIGINT;
    CREATE INDEX telemetry_by_received ON telemetry (received_ms)",
        ),
    ),
    (
        11,
        // One value per reading, as `warden_wire::value::Value`: a number in `value`,
        // a text in `text`, a flag (0/1) in `flag`; the other two NULL.
        Migration::PerBackend {
            sqlite: MIGRATION_11_SQLITE,
            postgres: MIGRATION_11_POSTGRES,
        },
    ),
];

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    /// Device ID (certificate common name).
    pub id: String,
    /// First telemetry received, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last telemetry received, ms since the epoch.
    pub last_seen_ms: i64,
    /// Latest value of each point.
    pub latest: Vec<StoredReading>,
}

/// One stored reading.
///
/// In JSON (the API's `Reading`): `value` is the number, `null` for a text or a flag;
/// `text` is there only for a text, `flag` only for a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Point name, `bridge/point`.
    pub point: String,
    /// The value as read.
    pub value: Value,
    /// Engineering unit.
    pub unit: String,
    /// When the device read it, ms since the epoch.
    pub ts_ms: i64,
}

impl StoredReading {
    /// The number, if it is one.
    pub fn number(&self) -> Option<f64> {
        match self.value {
            Value::Number(number) => Some(number),
            _ => None,
        }
    }

    /// The text, if it is one.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl Serialize for StoredReading {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("point", &self.point)?;
        // JSON has no NaN: a number that is not finite is `null`.
        map.serialize_entry("value", &self.number().filter(|n| n.is_finite()))?;
        match &self.value {
            Value::Number(_) => {}
            Value::Text(text) => map.serialize_entry("text", text)?,
            Value::Bool(flag) => map.serialize_entry("flag", flag)?,
        }
        map.serialize_entry("unit", &self.unit)?;
        map.serialize_entry("ts_ms", &self.ts_ms)?;
        map.end()
    }
}

/// What ingesting a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The batch was new and is stored.
    Stored,
    /// The batch had been stored before; nothing changed.
    Duplicate,
}

/// The fleet's database.
#[derive(Debug, Clone)]
pub struct Store {
    /// The writer (the one SQLite connection, or PostgreSQL's pool). Every write goes
    /// through [`Store::begin_write`].
    pool: AnyPool,
    /// Whether writes succeed, and the counters `/metrics` shows.
    health: Arc<std::sync::Mutex<StoreHealth>>,
    /// Test hook: a statement run on every new writer connection (see
    /// [`Store::set_writer_pragma`]).
    writer_pragma: Arc<std::sync::Mutex<Option<String>>>,
    /// Read-only lookups on the hot API path: on SQLite connections of their own (WAL
    /// lets readers run beside the one writer connection); on PostgreSQL, `None`: the
    /// pool.
    reads: Option<Arc<ReadConnections>>,
    /// Whether the database is SQLite (else PostgreSQL): which text a
    /// [`Migration::PerBackend`] runs.
    sqlite: bool,
}

/// Read-only SQLite connections held open and used in turn, outside sqlx's pool: the
/// pool pings every connection it gets back (`return_to_pool`), a second round trip to
/// the connection's worker thread for every query, which cost as much as the query.
#[derive(Debug)]
struct ReadConnections {
    connections: Vec<tokio::sync::Mutex<sqlx::AnyConnection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl ReadConnections {
    async fn open(url: &str, count: u32) -> Result<Self, StoreError> {
        use sqlx::Connection as _;
        let mut connections = Vec::new();
        for _ in 0..count {
            let mut connection = sqlx::AnyConnection::connect(url).await?;
            for pragma in ["PRAGMA busy_timeout=5000", "PRAGMA query_only=1"] {
                sqlx::query(pragma).execute(&mut connection).await?;
            }
            connections.push(tokio::sync::Mutex::new(connection));
        }
        Ok(Self {
            connections,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A free connection if there is one, else the next one in turn once it is free.
    async fn acquire(&self) -> tokio::sync::MutexGuard<'_, sqlx::AnyConnection> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count = self.connections.len();
        for offset in 0..count {
            if let Ok(connection) = self.connections[(start + offset) % count].try_lock() {
                return connection;
            }
        }
        self.connections[start % count].lock().await
    }

    /// Waits for the reads in flight.
    async fn quiesce(&self) {
        for connection in &self.connections {
            drop(connection.lock().await);
        }
    }
}

impl Store {
    /// Opens `url` (`sqlite://PATH` or `postgres://…`) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, READ_CONNECTIONS).await
    }

    /// [`Store::open`] with `read_connections` SQLite connections for read-only
    /// lookups besides the writer (0: every query on the writer connection). Ignored
    /// for PostgreSQL, whose pool serves both.
    pub async fn open_with(url: &str, read_connections: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let sqlite = url.starts_with("sqlite:");
        let max_connections = if sqlite { 1 } else { 8 };
        let writer_pragma: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let connect_pragma = Arc::clone(&writer_pragma);
        // A SQLite connection is a local file that cannot drop: no ping (a round trip
        // to its worker thread) before every use.
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(!sqlite)
            .after_connect(move |connection, _meta| {
                let extra = connect_pragma
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                Box::pin(async move {
                    if sqlite {
                        // WAL: one fsync per commit (FULL keeps an acknowledged batch
                        // durable across power loss), readers never block the writer.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=FULL",
                            "PRAGMA busy_timeout=5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *connection).await?;
                        }
                    }
                    if let Some(extra) = extra {
                        sqlx::query(&extra).execute(&mut *connection).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let mut store = Self {
            reads: None,
            sqlite,
            pool,
            health: Arc::default(),
            writer_pragma,
        };
        store.migrate().await?;
        if sqlite && read_connections > 0 {
            store.reads = Some(Arc::new(
                ReadConnections::open(&url, read_connections).await?,
            ));
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let created =
            sqlx::query("CREATE TABLE IF NOT EXISTS warden_schema (version BIGINT PRIMARY KEY)")
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from);
        tx.commit(created).await?;
        let applied: Option<i64> = sqlx::query("SELECT MAX(version) FROM warden_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        for (version, migration) in MIGRATIONS.iter().filter(|(v, _)| Some(*v) > applied) {
            let (version, sql) = (*version, migration.sql(self.sqlite));
            let mut tx = self.begin_write().await?;
            let applied = async {
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query("INSERT INTO warden_schema (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                Ok(())
            }
            .await;
            tx.commit(applied).await?;
            tracing::info!(version, "applied store migration");
        }
        Ok(())
    }

    /// Stores a telemetry batch from `device_id`, once: a batch seen before is ignored.
    pub async fn ingest(
        &self,
        device_id: &str,
        batch: &TelemetryBatch,
        received_ms: i64,
    ) -> Result<Ingested, StoreError> {
        let outcomes = self.ingest_many(&[(device_id, batch)], received_ms).await?;
        Ok(outcomes[0])
    }

    /// Stores several batches in one transaction (one commit, one fsync), each once.
    /// Either all are stored or none.
    pub async fn ingest_many(
        &self,
        batches: &[(&str, &TelemetryBatch)],
        received_ms: i64,
    ) -> Result<Vec<Ingested>, StoreError> {
        let mut tx = self.begin_write().await.inspect_err(|_| {
            self.count_withheld(batches.len());
        })?;
        let outcomes = telemetry::ingest_group(&mut tx, batches, received_ms).await;
        match tx.commit(outcomes).await {
            Ok(outcomes) => {
                let stored = outcomes.iter().filter(|o| **o == Ingested::Stored).count();
                self.lock_health().batches_stored += to_u64(stored);
                Ok(outcomes)
            }
            Err(error) => {
                self.count_withheld(batches.len());
                Err(error)
            }
        }
    }

    /// Every device with its latest values, ordered by ID.
    pub async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.devices_page(0, i64::MAX).await
    }

    /// One page of [`Self::devices`]: skipping `offset` devices, at most `limit`.
    pub async fn devices_page(&self, offset: i64, limit: i64) -> Result<Vec<Device>, StoreError> {
        // Two queries whatever the page's size (not one per device).
        let rows = sqlx::query(
            "SELECT id, first_seen_ms, last_seen_ms FROM devices ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let mut latest: std::collections::HashMap<String, Vec<StoredReading>> =
            std::collections::HashMap::new();
        for value in sqlx::query(
            "SELECT point, value, unit, ts_ms, text, flag, device_id FROM latest_values
             WHERE device_id IN (SELECT id FROM devices ORDER BY id LIMIT $1 OFFSET $2)
             ORDER BY device_id, point",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        {
            latest
                .entry(value.try_get(6)?)
                .or_default()
                .push(reading_from_row(&value)?);
        }
        let mut devices = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            devices.push(Device {
                latest: latest.remove(&id).unwrap_or_default(),
                id,
                first_seen_ms: row.try_get(1)?,
                last_seen_ms: row.try_get(2)?,
            });
        }
        Ok(devices)
    }

    /// Whether a device is known.
    pub async fn device_exists(&self, device_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// The latest value of each point of a device, ordered by point.
    pub async fn latest_values(&self, device_id: &str) -> Result<Vec<StoredReading>, StoreError> {
        let rows = sqlx::query(
            "SELECT point, value, unit, ts_ms, text, flag FROM latest_values WHERE device_id = $1 ORDER BY point",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(reading_from_row).collect()
    }

    /// Readings of a device, newest first, optionally of one point, at most `limit`.
    pub async fn telemetry(
        &self,
        device_id: &str,
        point: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredReading>, StoreError> {
        self.telemetry_between(device_id, point, i64::MIN..i64::MAX, limit)
            .await
    }

    /// A device's readings read (device time) within `read`, newest first, at most
    /// `limit`; only `point`'s if given.
    pub async fn telemetry_between(
        &self,
        device_id: &str,
        point: Option<&str>,
        read: std::ops::Range<i64>,
        limit: i64,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let rows = match point {
            Some(point) => {
                sqlx::query(
                    "SELECT point, value, unit, ts_ms, text, flag FROM telemetry
                     WHERE device_id = $1 AND point = $2 AND ts_ms >= $3 AND ts_ms < $4
                     ORDER BY ts_ms DESC LIMIT $5",
                )
                .bind(device_id)
                .bind(point)
                .bind(read.start)
                .bind(read.end)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT point, value, unit, ts_ms, text, flag FROM telemetry
                     WHERE device_id = $1 AND ts_ms >= $2 AND ts_ms < $3
                     ORDER BY ts_ms DESC, point LIMIT $4",
                )
                .bind(device_id)
                .bind(read.start)
                .bind(read.end)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(reading_from_row).collect()
    }

    /// Records a command sent to a device, as `sent`.
    pub async fn insert_command(
        &self,
        id: &str,
        device_id: &str,
        request: &str,
        created_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO commands (id, device_id, request, status, detail, created_ms) VALUES ($1, $2, $3, 'sent', '', $4)",
        )
        .bind(id)
        .bind(device_id)
        .bind(request)
        .bind(created_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        tx.commit(inserted).await?;
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
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE commands SET status = $1, detail = $2, completed_ms = $3
             WHERE id = $4 AND device_id = $5 AND status = 'sent'",
        )
        .bind(status)
        .bind(detail)
        .bind(completed_ms)
        .bind(id)
        .bind(device_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        Ok(tx.commit(updated).await?.rows_affected() == 1)
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
            Ok(CommandView {
                id: row.try_get(0)?,
                request: row.try_get(1)?,
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
        let mut tx = self.begin_write().await?;
        let stored = sqlx::query(
            "INSERT INTO twins (device_id, desired, desired_ms) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET desired = excluded.desired, desired_ms = excluded.desired_ms",
        )
        .bind(device_id)
        .bind(desired)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        tx.commit(stored).await?;
        Ok(())
    }

    /// Records the state `device_id` reports (JSON).
    pub async fn set_twin_reported(
        &self,
        device_id: &str,
        reported: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let stored = sqlx::query(
            "INSERT INTO twins (device_id, reported, reported_ms) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported, reported_ms = excluded.reported_ms",
        )
        .bind(device_id)
        .bind(reported)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from);
        tx.commit(stored).await?;
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

    /// Deletes readings the fleet received before `before_ms` from the time series
    /// (rows stored before migration 10 go by their read time), and the dedupe records
    /// of batches received before it (a redelivery that old is not expected); latest
    /// values stay. Works through the old rows in [`PRUNE_WINDOW_MS`] slices, one
    /// transaction each, so ingest waits for the writer one slice at a time, not for
    /// the whole prune. How many readings went.
    pub async fn prune_telemetry(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut readings = 0;
        let mut tx = self.begin_write().await?;
        let legacy = sqlx::query("DELETE FROM telemetry WHERE received_ms IS NULL AND ts_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from);
        readings += tx.commit(legacy).await?.rows_affected();
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(received_ms) FROM telemetry")
            .fetch_one(&self.pool)
            .await?;
        let mut cut = oldest.unwrap_or(before_ms);
        while cut < before_ms {
            cut = cut.saturating_add(PRUNE_WINDOW_MS).min(before_ms);
            let mut tx = self.begin_write().await?;
            let slice = sqlx::query("DELETE FROM telemetry WHERE received_ms < $1")
                .bind(cut)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from);
            readings += tx.commit(slice).await?.rows_affected();
        }
        let mut tx = self.begin_write().await?;
        let forgotten = sqlx::query("DELETE FROM telemetry_batches WHERE received_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from);
        tx.commit(forgotten).await?;
        Ok(readings)
    }

    /// Closes the pool, waiting for in-flight queries: nothing is left half-written.
    pub async fn close(&self) {
        if let Some(reads) = &self.reads {
            reads.quiesce().await;
        }
        self.pool.close().await;
    }
}

/// How writes have gone: whether the store takes them, and the counters `/metrics`
/// shows. One failure episode runs from the first failed write after a success to the
/// next successful commit; it is logged once at each end, not once per write.
#[derive(Debug, Default)]
struct StoreHealth {
    /// When the current failure episode began; `None` while writes succeed.
    failing_since: Option<Instant>,
    /// Telemetry batches withheld during the current episode.
    withheld_in_episode: u64,
    write_failures: u64,
    failure_episodes: u64,
    batches_stored: u64,
    batches_withheld: u64,
}

/// The store's write health at one moment (what `/metrics` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHealthSnapshot {
    /// Whether the last write transaction committed (true before any write).
    pub writable: bool,
    /// Write transactions that failed (a refused constraint does not count).
    pub write_failures: u64,
    /// Times writes started failing after succeeding.
    pub failure_episodes: u64,
    /// Telemetry batches committed as new (duplicates are acknowledged, not counted).
    pub batches_stored: u64,
    /// Telemetry batches not acknowledged because they were not committed.
    pub batches_withheld: u64,
}

/// A transaction on a writer connection taken from the pool, started by a real
/// `BEGIN`. The only way to write: [`Store::begin_write`], then
/// [`WriteTransaction::commit`] with the result of the statements.
///
/// Why the connection is closed after any failure, never returned to the pool: a
/// failed write can leave it inside a transaction that sqlx no longer tracks. On
/// `SQLITE_FULL` in `COMMIT` or in a statement without a statement journal (a
/// single-row insert) SQLite rolls back the whole transaction; sqlx's `ROLLBACK` then
/// fails and its depth counter stays at 1, so its next `BEGIN` is a `SAVEPOINT`. After a
/// second failure that rolls back only a statement (a multi-row insert), SQLite stays
/// inside the transaction that `SAVEPOINT` opened, and every later "commit" is a
/// `RELEASE` of an inner savepoint: acknowledged, never committed (reproduced by
/// `a_full_disk_withholds_batches_and_every_batch_reported_stored_is_durable`). Closing the connection ends whatever transaction it
/// held (SQLite rolls back on close; PostgreSQL aborts on disconnect), and the pool
/// opens a fresh one in autocommit. Besides, the transaction is begun with our own
/// `BEGIN` statement rather than sqlx's counter: SQLite refuses `BEGIN` inside an open
/// transaction, so a writer left in one can never pass for a fresh transaction, and a
/// `COMMIT` that returns success is a real top-level commit.
pub(crate) struct WriteTransaction<'s> {
    store: &'s Store,
    /// `Some` until [`WriteTransaction::commit`] or drop takes it.
    connection: Option<PoolConnection<Any>>,
}

impl std::ops::Deref for WriteTransaction<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.connection
            .as_deref()
            .expect("the connection is taken only by commit, which consumes the transaction")
    }
}

impl std::ops::DerefMut for WriteTransaction<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.connection
            .as_deref_mut()
            .expect("the connection is taken only by commit, which consumes the transaction")
    }
}

impl WriteTransaction<'_> {
    /// Commits if `result` is `Ok` and returns it once `COMMIT` succeeded; on any
    /// failure (of the statements or of `COMMIT`) closes the connection and returns
    /// the error. Only an `Ok` from here may be acknowledged to anyone.
    pub(crate) async fn commit<T>(
        mut self,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(mut connection) = self.connection.take() else {
            unreachable!("commit consumes the transaction, so the connection is still here")
        };
        let committed = match result {
            Ok(value) => sqlx::query("COMMIT")
                .execute(&mut *connection)
                .await
                .map(|_| value)
                .map_err(StoreError::from),
            Err(error) => Err(error),
        };
        match committed {
            Ok(value) => {
                self.store.write_succeeded();
                // Back to the pool: in autocommit, the transaction committed.
                drop(connection);
                Ok(value)
            }
            Err(error) => {
                self.store.write_failed(&error);
                reset_writer(connection).await;
                Err(error)
            }
        }
    }
}

impl Drop for WriteTransaction<'_> {
    /// Dropped without [`WriteTransaction::commit`] (the future was cancelled, or an
    /// early return): the transaction never committed and nothing was acknowledged;
    /// the connection is closed, not returned to the pool, for the reason above.
    fn drop(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            connection.close_on_drop();
        }
    }
}

/// One write statement in a write transaction of its own (see [`WriteTransaction`]):
/// how every single-statement write of the store runs, so none bypasses the reset.
pub(crate) trait WriteStatement {
    /// Executes the statement and commits; what it changed.
    async fn execute_write(self, store: &Store) -> Result<sqlx::any::AnyQueryResult, StoreError>;
    /// Runs a statement that returns rows (`… RETURNING`) and commits; the rows.
    async fn fetch_all_write(self, store: &Store) -> Result<Vec<sqlx::any::AnyRow>, StoreError>;
}

impl<'q> WriteStatement for sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    async fn execute_write(self, store: &Store) -> Result<sqlx::any::AnyQueryResult, StoreError> {
        let mut tx = store.begin_write().await?;
        let result = self.execute(&mut *tx).await.map_err(StoreError::from);
        tx.commit(result).await
    }

    async fn fetch_all_write(self, store: &Store) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let mut tx = store.begin_write().await?;
        let result = self.fetch_all(&mut *tx).await.map_err(StoreError::from);
        tx.commit(result).await
    }
}

/// Closes a writer connection whose transaction failed: see [`WriteTransaction`].
async fn reset_writer(connection: PoolConnection<Any>) {
    if let Err(error) = connection.close().await {
        // The pool forgets it either way; the next write opens a fresh connection.
        tracing::debug!(%error, "closing a failed writer connection");
    }
}

/// Whether `error` is the database refusing this one write (a constraint), which says
/// nothing about whether the store can write.
fn is_refusal(error: &StoreError) -> bool {
    match &error.0 {
        sqlx::Error::Database(database) => matches!(
            database.kind(),
            sqlx::error::ErrorKind::UniqueViolation
                | sqlx::error::ErrorKind::ForeignKeyViolation
                | sqlx::error::ErrorKind::NotNullViolation
                | sqlx::error::ErrorKind::CheckViolation
        ),
        _ => false,
    }
}

impl Store {
    /// Begins a write transaction on a writer connection (see [`WriteTransaction`]).
    pub(crate) async fn begin_write(&self) -> Result<WriteTransaction<'_>, StoreError> {
        let mut connection = match self.pool.acquire().await {
            Ok(connection) => connection,
            Err(error) => {
                let error = StoreError::from(error);
                self.write_failed(&error);
                return Err(error);
            }
        };
        if let Err(error) = sqlx::query("BEGIN").execute(&mut *connection).await {
            let error = StoreError::from(error);
            self.write_failed(&error);
            reset_writer(connection).await;
            return Err(error);
        }
        Ok(WriteTransaction {
            store: self,
            connection: Some(connection),
        })
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, StoreHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_succeeded(&self) {
        let mut health = self.lock_health();
        if let Some(since) = health.failing_since.take() {
            let withheld = std::mem::take(&mut health.withheld_in_episode);
            tracing::info!(
                failed_for_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                withheld_batches = withheld,
                "fleet store writes succeed again"
            );
        }
    }

    fn write_failed(&self, error: &StoreError) {
        if is_refusal(error) {
            tracing::debug!(%error, "fleet store refused a write");
            return;
        }
        let mut health = self.lock_health();
        health.write_failures += 1;
        if health.failing_since.is_none() {
            health.failing_since = Some(Instant::now());
            health.failure_episodes += 1;
            tracing::error!(
                %error,
                "fleet store writes fail; nothing is acknowledged until they succeed again"
            );
        }
    }

    /// `count` telemetry batches were not acknowledged because they were not stored.
    fn count_withheld(&self, count: usize) {
        let mut health = self.lock_health();
        health.batches_withheld += to_u64(count);
        if health.failing_since.is_some() {
            health.withheld_in_episode += to_u64(count);
        }
    }

    /// Whether writes succeed, and the write counters.
    pub fn health(&self) -> StoreHealthSnapshot {
        let health = self.lock_health();
        StoreHealthSnapshot {
            writable: health.failing_since.is_none(),
            write_failures: health.write_failures,
            failure_episodes: health.failure_episodes,
            batches_stored: health.batches_stored,
            batches_withheld: health.batches_withheld,
        }
    }

    /// Test hook: runs `statement` (`PRAGMA max_page_count=…` to fill the disk) on the
    /// writer connection now and on every writer connection opened from now on (a
    /// pragma is per connection, and a failed writer is replaced). Not for production.
    #[doc(hidden)]
    pub async fn set_writer_pragma(&self, statement: &str) -> Result<(), StoreError> {
        *self
            .writer_pragma
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(statement.to_owned());
        let mut connection = self.pool.acquire().await?;
        sqlx::query(statement).execute(&mut *connection).await?;
        Ok(())
    }
}

/// A reading from a row of `point, value, unit, ts_ms, text, flag`.
fn reading_from_row(row: &sqlx::any::AnyRow) -> Result<StoredReading, StoreError> {
    Ok(StoredReading {
        point: row.try_get(0)?,
        value: telemetry::value_of_columns(row.try_get(1)?, row.try_get(4)?, row.try_get(5)?),
        unit: row.try_get(2)?,
        ts_ms: row.try_get(3)?,
    })
}

/// A count as a counter.
fn to_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// Saturating conversion for counters and timestamps stored as BIGINT.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[error("fleet store: {0}")]
pub struct StoreError(#[from] sqlx::Error);

#[cfg(test)]
mod tests {
    use super::*;
    use warden_wire::topics::Reading;

    fn batch(seq: u64, value: f64, ts_ms: u64) -> TelemetryBatch {
        TelemetryBatch {
            v: 1,
            stream: "line1".into(),
            epoch: 1,
            seq,
            readings: vec![Reading::number("line1/t".into(), value, "°C".into(), ts_ms)],
        }
    }

    #[tokio::test]
    async fn batches_are_stored_once_and_latest_values_follow_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        assert_eq!(
            store
                .ingest("wd-1", &batch(0, 20.0, 100), 1)
                .await
                .expect("ingest"),
            Ingested::Stored
        );
        assert_eq!(
            store
                .ingest("wd-1", &batch(0, 20.0, 100), 2)
                .await
                .expect("ingest"),
            Ingested::Duplicate
        );
        assert_eq!(
            store
                .ingest("wd-1", &batch(2, 22.0, 300), 3)
                .await
                .expect("ingest"),
            Ingested::Stored
        );
        // A late batch with an older reading must not overwrite the latest value.
        assert_eq!(
            store
                .ingest("wd-1", &batch(1, 21.0, 200), 4)
                .await
                .expect("ingest"),
            Ingested::Stored
        );
        let devices = store.devices().await.expect("devices");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].last_seen_ms, 4);
        assert_eq!(devices[0].latest[0].number(), Some(22.0));
        let series = store
            .telemetry("wd-1", Some("line1/t"), 10)
            .await
            .expect("telemetry");
        assert_eq!(
            series
                .iter()
                .map(|r| r.number().expect("a number"))
                .collect::<Vec<_>>(),
            vec![22.0, 21.0, 20.0]
        );
        store.close().await;
        // Reopening applies no migration twice and keeps the data.
        let store = Store::open(&url).await.expect("reopen");
        assert!(store.device_exists("wd-1").await.expect("query"));
        assert!(!store.device_exists("wd-2").await.expect("query"));
    }

    /// A batch big enough to need new pages of the database file. Batch 1 is one
    /// 64 KiB text reading: a single-row insert, which SQLite runs without a statement
    /// journal, so SQLITE_FULL rolls back the whole transaction (sqlx's `ROLLBACK` then
    /// fails and its depth counter stays at 1). The others have 200 readings: a
    /// multi-row insert, whose SQLITE_FULL rolls back only the statement. The two in
    /// that order left today's writer inside a transaction that never committed.
    fn big_batch(seq: u64) -> TelemetryBatch {
        let mut big = batch(seq, 0.0, 100);
        big.readings = if seq == 1 {
            vec![Reading::text(
                "line1/serial".into(),
                "x".repeat(64 * 1024),
                String::new(),
                1_000 * seq,
            )]
        } else {
            (0..200)
                .map(|i| {
                    Reading::number(
                        format!("line1/point-{i:03}-{}", "x".repeat(40)),
                        f64::from(i),
                        "°C".into(),
                        1_000 * seq,
                    )
                })
                .collect()
        };
        big
    }

    /// The bug this guards against: after SQLite refused a write with SQLITE_FULL, the
    /// writer stayed inside a transaction, and every later batch was reported stored
    /// (and acknowledged) but never committed.
    #[tokio::test]
    async fn a_full_disk_withholds_batches_and_every_batch_reported_stored_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        let mut reported_stored = Vec::new();
        assert_eq!(
            store
                .ingest("wd-1", &big_batch(0), 1)
                .await
                .expect("ingest"),
            Ingested::Stored
        );
        reported_stored.push(0);
        // The disk is full: the file may not grow (a limit below its size means its
        // size). The writer is replaced after each failure; the hook limits it too.
        store
            .set_writer_pragma("PRAGMA max_page_count=1")
            .await
            .expect("limit the file");
        for seq in [1, 2] {
            let error = store
                .ingest("wd-1", &big_batch(seq), 2)
                .await
                .expect_err("a full disk refuses the batch");
            assert!(error.to_string().contains("full"), "{error}");
        }
        let health = store.health();
        assert!(!health.writable);
        assert_eq!(
            (
                health.write_failures,
                health.failure_episodes,
                health.batches_withheld
            ),
            (2, 1, 2)
        );
        // Space again: the next batches (the withheld ones resent, and a new one) are
        // stored, and durable.
        store
            .set_writer_pragma("PRAGMA max_page_count=4294967294")
            .await
            .expect("lift the limit");
        for seq in [1, 2, 3] {
            if store
                .ingest("wd-1", &big_batch(seq), 3)
                .await
                .expect("ingest")
                == Ingested::Stored
            {
                reported_stored.push(seq);
            }
        }
        assert_eq!(reported_stored, [0, 1, 2, 3]);
        let health = store.health();
        assert!(health.writable);
        assert_eq!((health.failure_episodes, health.batches_stored), (1, 4));
        store.close().await;

        let store = Store::open(&url).await.expect("reopen");
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM telemetry_batches WHERE device_id = 'wd-1' ORDER BY seq",
        )
        .fetch_all(&store.pool)
        .await
        .expect("batches");
        assert_eq!(
            seqs,
            [0, 1, 2, 3],
            "every batch reported stored survives a reopen"
        );
        let readings: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM telemetry WHERE device_id = 'wd-1'")
                .fetch_one(&store.pool)
                .await
                .expect("readings");
        assert_eq!(readings, 3 * 200 + 1);
    }

    /// Each write path resets the writer: a failure in one (here an event) leaves no
    /// transaction behind for the next (here a command), and a refused constraint
    /// does not count as the store failing.
    #[tokio::test]
    async fn a_failed_write_leaves_no_transaction_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        store
            .insert_command("c-1", "wd-1", "{}", 1)
            .await
            .expect("command");
        store
            .insert_command("c-1", "wd-1", "{}", 2)
            .await
            .expect_err("the same command ID twice is refused");
        assert!(
            store.health().writable,
            "a refused constraint is not a failing store"
        );
        store
            .set_writer_pragma("PRAGMA max_page_count=1")
            .await
            .expect("limit the file");
        let long = "x".repeat(64 * 1024);
        store
            .set_twin_desired("wd-1", &long, 3)
            .await
            .expect_err("a full disk refuses the twin");
        assert!(!store.health().writable);
        store
            .set_writer_pragma("PRAGMA max_page_count=4294967294")
            .await
            .expect("lift the limit");
        store
            .insert_command("c-2", "wd-1", &long, 4)
            .await
            .expect("command");
        assert!(store.health().writable);
        store.close().await;
        let store = Store::open(&url).await.expect("reopen");
        let command = store.command("wd-1", "c-2").await.expect("query");
        assert_eq!(command.map(|c| c.request.len()), Some(long.len()));
    }

    #[tokio::test]
    async fn string_points_are_stored_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        let mut text = batch(0, 0.0, 100);
        text.readings = vec![Reading::text(
            "line1/serial".into(),
            "AB-17".into(),
            String::new(),
            100,
        )];
        store.ingest("wd-1", &text, 1).await.expect("ingest");
        store
            .ingest("wd-1", &batch(1, 20.5, 100), 2)
            .await
            .expect("ingest");
        let latest = store.latest_values("wd-1").await.expect("latest");
        let serial = latest
            .iter()
            .find(|r| r.point == "line1/serial")
            .expect("serial");
        assert_eq!(serial.number(), None);
        assert_eq!(serial.text(), Some("AB-17"));
        let t = latest.iter().find(|r| r.point == "line1/t").expect("t");
        assert_eq!((t.number(), t.text()), (Some(20.5), None));
        // The API's JSON: `value` null and the text beside it.
        let json = serde_json::to_value(serial).expect("json");
        assert_eq!(json["value"], serde_json::Value::Null);
        assert_eq!(json["text"], "AB-17");
        let series = store
            .telemetry("wd-1", Some("line1/serial"), 10)
            .await
            .expect("telemetry");
        assert_eq!(series[0].text(), Some("AB-17"));
    }

    #[tokio::test]
    async fn readings_are_pruned_by_received_time_and_latest_values_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        let day: i64 = 24 * 3600 * 1000;
        // (seq, device's read time, fleet's receive time): the device's clock is not
        // set (1970) on the recent batches, and runs ahead on the old ones; several
        // prune windows apart.
        for (seq, ts_ms, received_ms) in [
            (0, 50 * day as u64, 10 * day),
            (1, 50 * day as u64 + 1, 10 * day + 5 * PRUNE_WINDOW_MS / 2),
            (2, 100, 40 * day),
            (3, 200, 41 * day),
        ] {
            store
                .ingest("wd-1", &batch(seq, seq as f64, ts_ms), received_ms)
                .await
                .expect("ingest");
        }
        // A row from before migration 10 (no receive time) goes by its read time.
        sqlx::query(
            "INSERT INTO telemetry (device_id, point, ts_ms, value, unit) VALUES ('wd-1', 'line1/t', 7, 7.0, 'C')",
        )
        .execute(&store.pool)
        .await
        .expect("legacy row");

        assert_eq!(store.prune_telemetry(30 * day).await.expect("prune"), 3);
        let series = store
            .telemetry("wd-1", Some("line1/t"), 10)
            .await
            .expect("telemetry");
        let mut kept: Vec<f64> = series
            .iter()
            .map(|r| r.number().expect("a number"))
            .collect();
        kept.sort_by(f64::total_cmp);
        assert_eq!(kept, [2.0, 3.0], "the recently received readings stay");
        // Latest values stay whatever their age (here the one read last by the device).
        let latest = store.latest_values("wd-1").await.expect("latest");
        assert_eq!(latest[0].number(), Some(1.0));
        // Dedupe records of batches received after the cut stay: a resend is refused;
        // those of pruned batches are gone.
        assert_eq!(
            store
                .ingest("wd-1", &batch(3, 3.0, 200), 42 * day)
                .await
                .expect("ingest"),
            Ingested::Duplicate
        );
        let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_batches")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(batches, 2);
        // Nothing older left: a second prune deletes nothing.
        assert_eq!(store.prune_telemetry(30 * day).await.expect("prune"), 0);
    }
}
