//! The store's connections and its one way to write: [`Store`] and [`WriteTransaction`].
//!
//! One set of queries serves both databases through sqlx's `Any` driver; placeholders
//! are `$N`, which both accept. The queries themselves live beside their concern
//! (telemetry, registry, reports, …), each an `impl Store` block over this file's type.

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};

use super::migrations::MIGRATIONS;

/// The advisory lock PostgreSQL migrations run under ("WARDENMG").
const MIGRATION_LOCK: i64 = 0x5741_5244_454E_4D47;

/// SQLite connections for read-only lookups besides the one writer, by default.
pub const READ_CONNECTIONS: u32 = 2;

/// How far past its receive time a reading may be dated before it is kept out of the
/// latest values (a clock set to 2100 would pin them forever); `[telemetry]
/// max_future_skew_secs` changes it.
pub const DEFAULT_FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The fleet's database.
#[derive(Debug, Clone)]

pub struct Store {
    /// The writer (the one SQLite connection, or PostgreSQL's pool). Every write goes
    /// through [`Store::begin_write`].
    pub(super) pool: AnyPool,
    /// Whether writes succeed, and the counters `/metrics` shows.
    pub(super) health: Arc<std::sync::Mutex<StoreHealth>>,
    /// Test hook: a statement run on every new writer connection (see
    /// [`Store::set_writer_pragma`]).
    pub(super) writer_pragma: Arc<std::sync::Mutex<Option<String>>>,
    /// Read-only lookups on the hot API path: on SQLite connections of their own (WAL
    /// lets readers run beside the one writer connection); on PostgreSQL, `None`: the
    /// pool.
    pub(super) reads: Option<Arc<ReadConnections>>,
    /// Whether the database is SQLite (else PostgreSQL): which text a
    /// [`Migration::PerBackend`] runs.
    pub(super) sqlite: bool,
    /// How far past its receive time a reading may be dated and still become a latest
    /// value (milliseconds; see [`Store::set_future_skew`]).
    pub(super) future_skew_ms: Arc<std::sync::atomic::AtomicI64>,
    /// A PostgreSQL read replica for the read-only dashboard queries (see
    /// [`Store::with_replica`]); `None`: they run on [`Store::pool`].
    pub(super) replica: Option<Arc<Replica>>,
}

/// A read replica's pool, and whether it failed to answer last time.
#[derive(Debug)]
pub(super) struct Replica {
    pool: AnyPool,
    /// Set while the replica cannot be reached (reads go to the primary); logged once
    /// at each end of such an episode.
    down: std::sync::atomic::AtomicBool,
}

/// Connections to a read replica (the dashboard's read-only queries share them).
pub const REPLICA_CONNECTIONS: u32 = 4;

/// How long a dashboard read waits for a replica connection before it goes to the
/// primary instead.
pub const REPLICA_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Read-only SQLite connections held open and used in turn, outside sqlx's pool: the
/// pool pings every connection it gets back (`return_to_pool`), a second round trip to
/// the connection's worker thread for every query, which cost as much as the query.
#[derive(Debug)]
pub(super) struct ReadConnections {
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
    pub(super) async fn acquire(&self) -> tokio::sync::MutexGuard<'_, sqlx::AnyConnection> {
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
    /// Readings dated more than `skew` after the fleet received them are stored in the
    /// time series but never become a latest value.
    pub fn set_future_skew(&self, skew: std::time::Duration) {
        self.future_skew_ms.store(
            i64::try_from(skew.as_millis()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

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
            replica: None,
            future_skew_ms: Arc::new(std::sync::atomic::AtomicI64::new(
                i64::try_from(DEFAULT_FUTURE_SKEW.as_millis()).unwrap_or(i64::MAX),
            )),
        };
        store.migrate().await?;
        if sqlite && read_connections > 0 {
            store.reads = Some(Arc::new(
                ReadConnections::open(&url, read_connections).await?,
            ));
        }
        Ok(store)
    }

    /// Sends the dashboard's read-only queries (fleet counts, device pages, latest
    /// values, time series, report groups) to the PostgreSQL read replica at `url`: a
    /// hot standby streaming from this store's database, so they may lag it by the
    /// replication delay. Everything else (writes, and reads that decide something:
    /// registry lookups for authentication and attestation, presence, queues) stays on
    /// the primary. Connects lazily: a replica that cannot be reached (within
    /// [`REPLICA_ACQUIRE_TIMEOUT`]) sends those reads to the primary until it answers
    /// again. Its sessions are read-only (`default_transaction_read_only`), so a write
    /// routed to it by mistake fails instead of splitting the data.
    pub fn with_replica(mut self, url: &str) -> Result<Self, StoreError> {
        if self.sqlite || !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
            // The URL is not repeated: it may hold a password.
            return Err(StoreError(sqlx::Error::Configuration(
                "a read replica needs PostgreSQL (postgres://…) for both the database and the replica"
                    .into(),
            )));
        }
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(REPLICA_CONNECTIONS)
            .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
            .after_connect(|connection, _meta| {
                Box::pin(async move {
                    sqlx::query("SET default_transaction_read_only = on")
                        .execute(&mut *connection)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy(url)?;
        self.replica = Some(Arc::new(Replica {
            pool,
            down: std::sync::atomic::AtomicBool::new(false),
        }));
        Ok(self)
    }

    /// A connection for a read-only dashboard query: the replica's if there is one
    /// and it answers, else the primary's.
    pub(super) async fn dashboard_reader(&self) -> Result<PoolConnection<Any>, StoreError> {
        use std::sync::atomic::Ordering;
        if let Some(replica) = &self.replica {
            match replica.pool.acquire().await {
                Ok(connection) => {
                    if replica.down.swap(false, Ordering::Relaxed) {
                        tracing::info!("read replica answers again; dashboard reads use it");
                    }
                    return Ok(connection);
                }
                Err(error) => {
                    if !replica.down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %error,
                            "read replica unreachable; dashboard reads use the primary"
                        );
                    }
                }
            }
        }
        Ok(self.pool.acquire().await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        if self.sqlite {
            return self.apply_migrations().await;
        }
        // Instances starting together on one PostgreSQL: one migrates at a time, and
        // the others then find nothing left to apply.
        let mut lock = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await?;
        let applied = self.apply_migrations().await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await;
        if unlocked.is_err() {
            // Closing the connection releases the lock.
            lock.close_on_drop();
        }
        applied
    }

    async fn apply_migrations(&self) -> Result<(), StoreError> {
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

    /// The newest schema migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT MAX(version) FROM warden_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get::<Option<i64>, _>(0)?
            .unwrap_or(0))
    }

    /// Closes the pool, waiting for in-flight queries: nothing is left half-written.
    pub async fn close(&self) {
        if let Some(reads) = &self.reads {
            reads.quiesce().await;
        }
        self.pool.close().await;
        if let Some(replica) = &self.replica {
            replica.pool.close().await;
        }
    }
}

/// How writes have gone: whether the store takes them, and the counters `/metrics`
/// shows. One failure episode runs from the first failed write after a success to the
/// next successful commit; it is logged once at each end, not once per write.
#[derive(Debug, Default)]
pub(super) struct StoreHealth {
    /// When the current failure episode began; `None` while writes succeed.
    failing_since: Option<Instant>,
    /// Telemetry batches withheld during the current episode.
    withheld_in_episode: u64,
    write_failures: u64,
    failure_episodes: u64,
    pub(super) batches_stored: u64,
    batches_withheld: u64,
    /// Seconds from taking the writer to the commit of each telemetry group.
    pub(super) ingest_seconds: Histogram,
    /// Telemetry messages waiting for ingest when it last took a group.
    ingest_queue_depth: u64,
    /// Attestation verdicts recorded: trusted, untrusted, unanswered.
    pub(super) attestations: AttestationCounts,
}

/// Upper bounds (seconds) of the ingest latency histogram's buckets (`+Inf` besides).
pub const INGEST_SECONDS_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A Prometheus histogram over [`INGEST_SECONDS_BUCKETS`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; the renderer sums).
    pub buckets: [u64; INGEST_SECONDS_BUCKETS.len()],
    /// Observations in all.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = INGEST_SECONDS_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .and_then(|index| self.buckets.get_mut(index))
        {
            *bucket += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Attestation verdicts recorded since the fleet started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AttestationCounts {
    /// Quotes verified: the device became `trusted`.
    pub trusted: u64,
    /// Quotes refused: the device became `untrusted`.
    pub untrusted: u64,
    /// Challenges unanswered in time: the device became `unverified`.
    pub unanswered: u64,
}

/// The store's write health at one moment (what `/metrics` shows).
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Seconds each telemetry group took to commit (waiting for the writer included).
    pub ingest_seconds: Histogram,
    /// Telemetry messages waiting for ingest when it last took a group.
    pub ingest_queue_depth: u64,
    /// Attestation verdicts recorded.
    pub attestations: AttestationCounts,
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

    pub(super) fn lock_health(&self) -> std::sync::MutexGuard<'_, StoreHealth> {
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
    pub(super) fn count_withheld(&self, count: usize) {
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
            ingest_seconds: health.ingest_seconds,
            ingest_queue_depth: health.ingest_queue_depth,
            attestations: health.attestations,
        }
    }

    /// Ingest found `depth` telemetry messages waiting when it took its last group.
    pub fn note_ingest_queue_depth(&self, depth: usize) {
        self.lock_health().ingest_queue_depth = to_u64(depth);
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

/// A count as a counter.
pub(super) fn to_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// Saturating conversion for counters and timestamps stored as BIGINT.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[error("fleet store: {0}")]
pub struct StoreError(#[from] sqlx::Error);

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            command.and_then(|c| c.request.as_str().map(str::len)),
            Some(long.len())
        );
    }
}
