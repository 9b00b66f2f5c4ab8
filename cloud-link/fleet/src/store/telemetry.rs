//! Telemetry ingest for a group of batches in a few multi-row statements.
//!
//! Every statement is a round trip to sqlx's SQLite worker thread (or to PostgreSQL);
//! one statement per reading (about 22 per batch) made those thread hand-offs most of
//! the fleet's CPU at 10,000 devices (`perf`: 60 % in scheduler wake-ups, 1.4 % in
//! SQLite itself). A group now costs four statements per [`ROWS_PER_STATEMENT`] rows.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sqlx::Row;
use warden_wire::topics::{Reading, TelemetryBatch};
use warden_wire::value::Value;

use super::{Ingested, StoreError, WriteTransaction, to_i64};

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
pub(super) async fn ingest_group(
    tx: &mut WriteTransaction<'_>,
    batches: &[(&str, &TelemetryBatch)],
    received_ms: i64,
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
    let mut latest: BTreeMap<(&str, &str), &Reading> = BTreeMap::new();
    for &(device_id, reading) in &readings {
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
pub(super) fn value_of_columns(
    number: Option<f64>,
    text: Option<String>,
    flag: Option<i64>,
) -> Value {
    match (text, flag, number) {
        (Some(text), _, _) => Value::Text(text),
        (None, Some(flag), _) => Value::Bool(flag != 0),
        // NaN (`null` in JSON) only for a row no writer of this store produces.
        (None, None, number) => Value::Number(number.unwrap_or(f64::NAN)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
