//! Telemetry: readings stored and read back, ingest in multi-row statements, retention.
//!
//! Ingest takes a group of batches in a few multi-row statements. Every statement is a
//! round trip to sqlx's SQLite worker thread (or to PostgreSQL); one statement per
//! reading (about 22 per batch) made those thread hand-offs most of the fleet's CPU at
//! 10,000 devices (`perf`: 60 % in scheduler wake-ups, 1.4 % in SQLite itself). On
//! SQLite a group costs four statements per [`ROWS_PER_STATEMENT`] rows; on PostgreSQL,
//! where each statement is a network round trip, one statement ([`INGEST_POSTGRES`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sqlx::Row;
use warden_wire::fleet_api::{Device, StoredReading};
use warden_wire::topics::{Reading, TelemetryBatch};
use warden_wire::value::Value;

use super::core::{Store, StoreError, WriteTransaction, to_i64, to_u64};

/// Rows per multi-row statement (at most 8 columns: 256 parameters). Not more: sqlx
/// binds each parameter of a SQLite statement by looking its name up among all of
/// them (`sqlite3_bind_parameter_name`), so binding costs grow with the square of the
/// statement's parameters — with 500 rows that lookup was 72 % of the fleet's CPU.
pub const ROWS_PER_STATEMENT: usize = 32;

/// `($1, $2, $3), ($4, $5, $6)` for `rows` rows of `columns` placeholders.
fn values_clause(rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// Stores `batches` (in order; a batch stored before, or twice in this group, is a
/// duplicate) inside `tx`; what happened to each.
async fn ingest_group(
    tx: &mut WriteTransaction<'_>,
    batches: &[(&str, &TelemetryBatch)],
    received_ms: i64,
    future_skew_ms: i64,
) -> Result<Vec<Ingested>, StoreError> {
    // 1. Dedupe records: the rows this group inserted are the new batches.
    let mut new_keys: HashSet<(String, String, i64, i64)> = HashSet::new();
    for chunk in batches.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO telemetry_batches (device_id, stream, epoch, seq, received_ms) VALUES {}
             ON CONFLICT DO NOTHING RETURNING device_id, stream, epoch, seq",
            values_clause(chunk.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for (device_id, batch) in chunk {
            query = query
                .bind(*device_id)
                .bind(batch.stream.as_str())
                .bind(to_i64(batch.epoch))
                .bind(to_i64(batch.seq))
                .bind(received_ms);
        }
        for row in query.fetch_all(&mut **tx).await? {
            new_keys.insert((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ));
        }
    }
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut stored: Vec<(&str, &TelemetryBatch)> = Vec::with_capacity(batches.len());
    for &(device_id, batch) in batches {
        let key = (
            device_id.to_owned(),
            batch.stream.clone(),
            to_i64(batch.epoch),
            to_i64(batch.seq),
        );
        // The first occurrence claims the inserted row; a repeat in the group finds it gone.
        if new_keys.remove(&key) {
            outcomes.push(Ingested::Stored);
            stored.push((device_id, batch));
        } else {
            outcomes.push(Ingested::Duplicate);
        }
    }
    if stored.is_empty() {
        return Ok(outcomes);
    }

    // 2. Devices seen (sorted: concurrent writers on PostgreSQL lock rows in one order).
    let devices: Vec<&str> = stored
        .iter()
        .map(|(device_id, _)| *device_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in devices.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO devices (id, first_seen_ms, last_seen_ms) VALUES {}
             ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            values_clause(chunk.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for device_id in chunk {
            query = query.bind(*device_id).bind(received_ms).bind(received_ms);
        }
        query.execute(&mut **tx).await?;
    }

    // 3. The time series: every reading.
    let readings: Vec<(&str, &Reading)> = stored
        .iter()
        .flat_map(|(device_id, batch)| batch.readings.iter().map(move |r| (*device_id, r)))
        .collect();
    for chunk in readings.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO telemetry (device_id, point, ts_ms, value, unit, text, flag, received_ms) VALUES {}",
            values_clause(chunk.len(), 8)
        );
        let mut query = sqlx::query(&sql);
        for (device_id, reading) in chunk {
            let (number, text, flag) = columns(reading_value(reading));
            query = query
                .bind(*device_id)
                .bind(reading.point.as_str())
                .bind(to_i64(reading.ts_ms))
                .bind(number)
                .bind(reading.unit.as_str())
                .bind(text)
                .bind(flag)
                .bind(received_ms);
        }
        query.execute(&mut **tx).await?;
    }

    // 4. Latest values: per (device, point) the reading read last (on a tie, the one
    // that came last), so no statement updates a row twice (PostgreSQL refuses that).
    // A reading dated beyond the skew past its receive time is in the time series but
    // never a latest value: a clock set to 2100 would pin the value forever.
    let newest_latest = received_ms.saturating_add(future_skew_ms);
    let mut latest: BTreeMap<(&str, &str), &Reading> = BTreeMap::new();
    for &(device_id, reading) in readings
        .iter()
        .filter(|(_, reading)| to_i64(reading.ts_ms) <= newest_latest)
    {
        latest
            .entry((device_id, reading.point.as_str()))
            .and_modify(|kept| {
                if reading.ts_ms >= kept.ts_ms {
                    *kept = reading;
                }
            })
            .or_insert(reading);
    }
    let latest: Vec<((&str, &str), &Reading)> = latest.into_iter().collect();
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO latest_values (device_id, point, ts_ms, value, unit, text, flag) VALUES {}
             ON CONFLICT (device_id, point) DO UPDATE
             SET ts_ms = excluded.ts_ms, value = excluded.value, unit = excluded.unit,
                 text = excluded.text, flag = excluded.flag
             WHERE excluded.ts_ms >= latest_values.ts_ms",
            values_clause(chunk.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        for ((device_id, point), reading) in chunk {
            let (number, text, flag) = columns(reading_value(reading));
            query = query
                .bind(*device_id)
                .bind(*point)
                .bind(to_i64(reading.ts_ms))
                .bind(number)
                .bind(reading.unit.as_str())
                .bind(text)
                .bind(flag);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(outcomes)
}

/// PostgreSQL's ingest of a group: one statement, whatever the group's size. The group
/// travels as one array per column (`unnest`), each bound as the text of a PostgreSQL
/// array literal (sqlx's `Any` driver binds no arrays) and cast on the server; data-
/// modifying `WITH` clauses then record the new batches, the devices seen, the time
/// series and the latest values. With multi-row `VALUES` statements a group of 256
/// batches was 186 statements, each a round trip (BENCHMARKS.md, "Fleet ingest on
/// PostgreSQL").
const INGEST_POSTGRES: &str = "WITH batch_in AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
            WITH ORDINALITY AS b(device_id, stream, epoch, seq, n)
    ),
    new AS (
        INSERT INTO telemetry_batches (device_id, stream, epoch, seq, received_ms)
        SELECT device_id, stream, epoch, seq, $5 FROM batch_in ORDER BY n
        ON CONFLICT DO NOTHING
        RETURNING device_id, stream, epoch, seq
    ),
    new_in AS (
        SELECT batch_in.n, batch_in.device_id
        FROM batch_in JOIN new USING (device_id, stream, epoch, seq)
    ),
    reading_in AS (
        SELECT * FROM unnest($6::bigint[], $7::text[], $8::bigint[], $9::float8[],
                             $10::text[], $11::text[], $12::bigint[])
            WITH ORDINALITY AS r(batch, point, ts_ms, value, unit, text, flag, n)
    ),
    stored AS (
        SELECT new_in.device_id, reading_in.*
        FROM reading_in JOIN new_in ON new_in.n = reading_in.batch
    ),
    seen AS (
        INSERT INTO devices (id, first_seen_ms, last_seen_ms)
        SELECT DISTINCT device_id, $5::bigint, $5::bigint FROM new_in ORDER BY 1
        ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms
    ),
    series AS (
        INSERT INTO telemetry (device_id, point, ts_ms, value, unit, text, flag, received_ms)
        SELECT device_id, point, ts_ms, value, unit, text, flag, $5 FROM stored ORDER BY n
    ),
    latest AS (
        INSERT INTO latest_values (device_id, point, ts_ms, value, unit, text, flag)
        SELECT DISTINCT ON (device_id, point) device_id, point, ts_ms, value, unit, text, flag
        FROM stored WHERE ts_ms <= $13
        ORDER BY device_id, point, ts_ms DESC, n DESC
        ON CONFLICT (device_id, point) DO UPDATE
        SET ts_ms = excluded.ts_ms, value = excluded.value, unit = excluded.unit,
            text = excluded.text, flag = excluded.flag
        WHERE excluded.ts_ms >= latest_values.ts_ms
    )
    SELECT n FROM new_in";

/// The text of a one-dimensional PostgreSQL array literal (`{"a",NULL,"b\\"c"}`),
/// built element by element.
#[derive(Debug)]
struct ArrayLiteral(String);

impl ArrayLiteral {
    fn with_capacity(bytes: usize) -> Self {
        let mut text = String::with_capacity(bytes + 2);
        text.push('{');
        Self(text)
    }

    fn separate(&mut self) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
    }

    /// A text element, always quoted: inside quotes only `"` and `\` are escaped.
    fn text(&mut self, value: &str) {
        self.separate();
        self.0.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        self.0.push('"');
    }

    fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    fn integer(&mut self, value: i64) {
        use std::fmt::Write as _;
        self.separate();
        let _ = write!(self.0, "{value}");
    }

    fn optional_integer(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.integer(value),
            None => self.null(),
        }
    }

    /// A `float8` element: Rust's shortest text that reads back to the same bits, and
    /// PostgreSQL's spelling of the values that are not finite.
    fn float(&mut self, value: Option<f64>) {
        use std::fmt::Write as _;
        let Some(value) = value else {
            return self.null();
        };
        self.separate();
        if value.is_nan() {
            self.0.push_str("NaN");
        } else if value.is_infinite() {
            self.0
                .push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn null(&mut self) {
        self.separate();
        self.0.push_str("NULL");
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// [`ingest_group`] on PostgreSQL: the group in one statement ([`INGEST_POSTGRES`]).
async fn ingest_group_postgres(
    tx: &mut WriteTransaction<'_>,
    batches: &[(&str, &TelemetryBatch)],
    received_ms: i64,
    future_skew_ms: i64,
) -> Result<Vec<Ingested>, StoreError> {
    // A batch twice in the group: the first occurrence goes to the database, the
    // repeats are duplicates whatever it finds.
    let mut first_seen: HashSet<(&str, &str, u64, u64)> = HashSet::with_capacity(batches.len());
    let mut sent: Vec<usize> = Vec::with_capacity(batches.len());
    let readings: usize = batches.iter().map(|(_, b)| b.readings.len()).sum();
    let (mut devices, mut streams, mut epochs, mut seqs) = (
        ArrayLiteral::with_capacity(batches.len() * 12),
        ArrayLiteral::with_capacity(batches.len() * 12),
        ArrayLiteral::with_capacity(batches.len() * 4),
        ArrayLiteral::with_capacity(batches.len() * 6),
    );
    let (mut owners, mut points, mut times, mut values, mut units, mut texts, mut flags) = (
        ArrayLiteral::with_capacity(readings * 4),
        ArrayLiteral::with_capacity(readings * 16),
        ArrayLiteral::with_capacity(readings * 14),
        ArrayLiteral::with_capacity(readings * 8),
        ArrayLiteral::with_capacity(readings * 6),
        ArrayLiteral::with_capacity(readings * 5),
        ArrayLiteral::with_capacity(readings * 5),
    );
    for (index, &(device_id, batch)) in batches.iter().enumerate() {
        if !first_seen.insert((device_id, batch.stream.as_str(), batch.epoch, batch.seq)) {
            continue;
        }
        sent.push(index);
        // The batch's position among those sent, as `WITH ORDINALITY` counts (from 1).
        let ordinal = to_i64(to_u64(sent.len()));
        devices.text(device_id);
        streams.text(&batch.stream);
        epochs.integer(to_i64(batch.epoch));
        seqs.integer(to_i64(batch.seq));
        for reading in &batch.readings {
            let (number, text, flag) = columns(reading_value(reading));
            owners.integer(ordinal);
            points.text(&reading.point);
            times.integer(to_i64(reading.ts_ms));
            values.float(number);
            units.text(&reading.unit);
            texts.optional_text(text.as_deref());
            flags.optional_integer(flag);
        }
    }
    let mut outcomes = vec![Ingested::Duplicate; batches.len()];
    if sent.is_empty() {
        return Ok(outcomes);
    }
    let stored: Vec<i64> = sqlx::query_scalar(INGEST_POSTGRES)
        .bind(devices.finish())
        .bind(streams.finish())
        .bind(epochs.finish())
        .bind(seqs.finish())
        .bind(received_ms)
        .bind(owners.finish())
        .bind(points.finish())
        .bind(times.finish())
        .bind(values.finish())
        .bind(units.finish())
        .bind(texts.finish())
        .bind(flags.finish())
        .bind(received_ms.saturating_add(future_skew_ms))
        .fetch_all(&mut **tx)
        .await?;
    for ordinal in stored {
        let index = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|position| sent.get(position));
        if let Some(&index) = index {
            outcomes[index] = Ingested::Stored;
        }
    }
    Ok(outcomes)
}

/// The one place a wire reading becomes the store's value: the reading's own [`Value`]
/// (decode refused any reading that has neither a number nor text).
fn reading_value(reading: &Reading) -> Value {
    reading.value.clone()
}

/// A value as its columns `(value, text, flag)`: exactly one is set (migration 11).
fn columns(value: Value) -> (Option<f64>, Option<String>, Option<i64>) {
    match value {
        Value::Number(number) => (Some(number), None, None),
        Value::Text(text) => (None, Some(text), None),
        Value::Bool(flag) => (None, None, Some(i64::from(flag))),
    }
}

/// A stored row's value from its columns `(value, text, flag)`. Rows written before
/// migration 11 hold a text reading as `0` in `value` plus its text: text wins.
fn value_of_columns(number: Option<f64>, text: Option<String>, flag: Option<i64>) -> Value {
    match (text, flag, number) {
        (Some(text), _, _) => Value::Text(text),
        (None, Some(flag), _) => Value::Bool(flag != 0),
        // NaN (`null` in JSON) only for a row no writer of this store produces.
        (None, None, number) => Value::Number(number.unwrap_or(f64::NAN)),
    }
}

/// How much received time one delete of [`Store::prune_telemetry`] covers.
pub const PRUNE_WINDOW_MS: i64 = 60_000;

/// What ingesting a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The batch was new and is stored.
    Stored,
    /// The batch had been stored before; nothing changed.
    Duplicate,
}

impl Store {
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
        let started = std::time::Instant::now();
        let mut tx = self.begin_write().await.inspect_err(|_| {
            self.count_withheld(batches.len());
        })?;
        let skew = self
            .future_skew_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let outcomes = if self.sqlite {
            ingest_group(&mut tx, batches, received_ms, skew).await
        } else {
            ingest_group_postgres(&mut tx, batches, received_ms, skew).await
        };
        match tx.commit(outcomes).await {
            Ok(outcomes) => {
                let stored = outcomes.iter().filter(|o| **o == Ingested::Stored).count();
                let mut health = self.lock_health();
                health.batches_stored += to_u64(stored);
                health
                    .ingest_seconds
                    .observe(started.elapsed().as_secs_f64());
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
        let mut reader = self.dashboard_reader().await?;
        let rows = sqlx::query(
            "SELECT id, first_seen_ms, last_seen_ms FROM devices ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *reader)
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
        .fetch_all(&mut *reader)
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
        let mut reader = self.dashboard_reader().await?;
        let rows = sqlx::query(
            "SELECT point, value, unit, ts_ms, text, flag FROM latest_values WHERE device_id = $1 ORDER BY point",
        )
        .bind(device_id)
        .fetch_all(&mut *reader)
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
        let mut reader = self.dashboard_reader().await?;
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
                .fetch_all(&mut *reader)
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
                .fetch_all(&mut *reader)
                .await?
            }
        };
        rows.iter().map(reading_from_row).collect()
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
}

/// A reading from a row of `point, value, unit, ts_ms, text, flag`.
fn reading_from_row(row: &sqlx::any::AnyRow) -> Result<StoredReading, StoreError> {
    Ok(StoredReading {
        point: row.try_get(0)?,
        value: value_of_columns(row.try_get(1)?, row.try_get(4)?, row.try_get(5)?),
        unit: row.try_get(2)?,
        ts_ms: row.try_get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Issue #22 item 8: a reading dated year 2100 is kept in the time series but never
    /// becomes the latest value, which keeps following readings dated near receive time.
    #[tokio::test]
    async fn future_dated_readings_never_become_latest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        let now = 1_800_000_000_000_i64;
        let year_2100 = 4_102_444_800_000_u64;
        let ingest = |seq, value, ts_ms| {
            let store = store.clone();
            async move {
                store
                    .ingest("wd-1", &batch(seq, value, ts_ms), now)
                    .await
                    .expect("ingest")
            }
        };
        assert_eq!(ingest(0, 1.0, year_2100).await, Ingested::Stored);
        assert_eq!(ingest(1, 2.0, now as u64).await, Ingested::Stored);
        // Within the skew (4 minutes ahead) is still a latest value.
        assert_eq!(ingest(2, 3.0, now as u64 + 240_000).await, Ingested::Stored);
        let latest = store.latest_values("wd-1").await.expect("latest");
        assert_eq!(latest[0].number(), Some(3.0));
        let series = store
            .telemetry("wd-1", Some("line1/t"), 10)
            .await
            .expect("telemetry");
        assert_eq!(series.len(), 3, "the future reading is stored");
        // A tighter skew keeps the 4-minutes-ahead reading out too.
        store.set_future_skew(std::time::Duration::from_secs(60));
        assert_eq!(ingest(3, 4.0, now as u64 + 240_000).await, Ingested::Stored);
        let latest = store.latest_values("wd-1").await.expect("latest");
        assert_eq!(latest[0].number(), Some(3.0));
        store.close().await;
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
        // This case is about pruning: the clock running 40 days ahead below is let
        // become latest (the skew rule has its own case).
        store.set_future_skew(std::time::Duration::from_millis(100 * day as u64));
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

    #[test]
    fn every_value_survives_its_columns_and_old_text_rows_read_as_text() {
        for value in [
            Value::Number(21.5),
            Value::Text("AB-17".into()),
            Value::Bool(true),
            Value::Bool(false),
        ] {
            let (number, text, flag) = columns(value.clone());
            assert_eq!(value_of_columns(number, text, flag), value);
        }
        // Before migration 11 a text reading was stored as 0 plus its text.
        assert_eq!(
            value_of_columns(Some(0.0), Some("AB-17".into()), None),
            Value::Text("AB-17".into())
        );
    }

    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(values_clause(1, 2), "($1, $2)");
        assert_eq!(values_clause(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
