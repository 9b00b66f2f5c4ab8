//! Failure reports and device events: stored once, grouped by signature, counted.

use std::collections::BTreeMap;

use sqlx::Row;
use warden_wire::fleet_api::{CrashRate, ReportBucket, ReportGroup, StoredEvent, StoredReport};
use warden_wire::topics::{Delivery, DeviceEvent, FailureReportMessage};

use super::core::{Store, StoreError, WriteStatement as _, WriteTransaction, to_i64};

/// Report kinds that count as a crash of the image (crash rate, rollout halts).
pub const CRASH_KINDS: &[&str] = &["crash", "panic", "watchdog"];

impl Store {
    /// Stores a failure report once (by device and report ID); `true` if it was new.
    pub async fn insert_report(
        &self,
        device_id: &str,
        report: &FailureReportMessage,
        received_ms: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO failure_reports (device_id, id, ts_ms, received_ms, compartment, kind,
                 image_version, signature, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(device_id)
        .bind(&report.id)
        .bind(to_i64(report.ts_ms))
        .bind(received_ms)
        .bind(&report.compartment)
        .bind(&report.kind)
        .bind(&report.image_version)
        .bind(&report.signature)
        .bind(&report.message)
        .execute_write(self)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Reports, newest first, at most `limit`, optionally of one device.
    pub async fn reports(
        &self,
        device_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredReport>, StoreError> {
        let columns = "device_id, id, ts_ms, compartment, kind, image_version, signature, message";
        let rows = match device_id {
            Some(device) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM failure_reports WHERE device_id = $1
                     ORDER BY ts_ms DESC, id LIMIT $2"
                ))
                .bind(device)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM failure_reports ORDER BY ts_ms DESC, id LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                Ok(StoredReport {
                    device_id: row.try_get(0)?,
                    id: row.try_get(1)?,
                    ts_ms: row.try_get(2)?,
                    compartment: row.try_get(3)?,
                    kind: row.try_get(4)?,
                    image_version: row.try_get(5)?,
                    signature: row.try_get(6)?,
                    message: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Reports since `since_ms`, grouped by (signature, compartment, kind, image
    /// version), with counts per `bucket_ms`; the largest groups first.
    pub async fn report_groups(
        &self,
        since_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let rows = sqlx::query(
            "SELECT signature, compartment, kind, image_version, device_id, ts_ms, message
             FROM failure_reports WHERE ts_ms >= $1 ORDER BY ts_ms",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        type Key = (String, String, String, String);
        // Per group: the group so far, counts per bucket start, devices seen.
        type Accumulated = (ReportGroup, BTreeMap<i64, i64>, Vec<String>);
        let mut groups: BTreeMap<Key, Accumulated> = BTreeMap::new();
        for row in &rows {
            let key: Key = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            let device: String = row.try_get(4)?;
            let ts_ms: i64 = row.try_get(5)?;
            let message: String = row.try_get(6)?;
            let entry = groups.entry(key.clone()).or_insert_with(|| {
                (
                    ReportGroup {
                        signature: key.0,
                        compartment: key.1,
                        kind: key.2,
                        image_version: key.3,
                        message: String::new(),
                        count: 0,
                        devices: 0,
                        first_ms: ts_ms,
                        last_ms: ts_ms,
                        series: Vec::new(),
                    },
                    BTreeMap::new(),
                    Vec::new(),
                )
            });
            entry.0.count += 1;
            entry.0.last_ms = ts_ms;
            entry.0.message = message;
            *entry
                .1
                .entry(ts_ms.div_euclid(bucket_ms) * bucket_ms)
                .or_default() += 1;
            if !entry.2.contains(&device) {
                entry.2.push(device);
            }
        }
        let mut out: Vec<ReportGroup> = groups
            .into_values()
            .map(|(mut group, buckets, devices)| {
                group.devices = i64::try_from(devices.len()).unwrap_or(i64::MAX);
                group.series = buckets
                    .into_iter()
                    .map(|(start_ms, count)| ReportBucket { start_ms, count })
                    .collect();
                group
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ms.cmp(&a.last_ms)));
        Ok(out)
    }

    /// Crash rate per image version, versions sorted.
    pub async fn crash_rates(&self) -> Result<Vec<CrashRate>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT image_version, COUNT(*), COUNT(DISTINCT device_id) FROM failure_reports
             WHERE kind IN ({}) GROUP BY image_version",
            crash_kinds_sql()
        ))
        .fetch_all(&self.pool)
        .await?;
        let populations = sqlx::query(
            "SELECT image_version, COUNT(*) FROM registry WHERE revoked_ms IS NULL GROUP BY image_version",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut devices: BTreeMap<String, i64> = BTreeMap::new();
        for row in &populations {
            devices.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let mut rates: BTreeMap<String, CrashRate> = BTreeMap::new();
        for row in &rows {
            let version: String = row.try_get(0)?;
            let population = devices.get(&version).copied().unwrap_or(0);
            let crashed: i64 = row.try_get(2)?;
            rates.insert(
                version.clone(),
                CrashRate {
                    image_version: version,
                    crashes: row.try_get(1)?,
                    crashed_devices: crashed,
                    devices: population,
                    rate: rate(crashed, population),
                },
            );
        }
        for (version, population) in devices {
            rates.entry(version.clone()).or_insert(CrashRate {
                image_version: version,
                crashes: 0,
                crashed_devices: 0,
                devices: population,
                rate: 0.0,
            });
        }
        Ok(rates.into_values().collect())
    }

    /// Devices that sent a crash-kind report on `image_version`
    /// received at or after `since_ms`.
    pub async fn crashed_devices(
        &self,
        image_version: &str,
        since_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT device_id FROM failure_reports
             WHERE image_version = $1 AND received_ms >= $2 AND kind IN ({})",
            crash_kinds_sql()
        ))
        .bind(image_version)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Stores a device event, once per control-queue delivery when it has one;
    /// `true` if it was new.
    pub async fn insert_event(
        &self,
        device_id: &str,
        event: &DeviceEvent,
        delivery: Option<&Delivery>,
        received_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let stored = async {
            if let Some(delivery) = delivery
                && !record_delivery(&mut tx, device_id, delivery, received_ms).await?
            {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO device_events (device_id, ts_ms, received_ms, kind, detail)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(device_id)
            .bind(to_i64(event.ts_ms))
            .bind(received_ms)
            .bind(&event.kind)
            .bind(&event.detail)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        }
        .await;
        tx.commit(stored).await
    }

    /// Events, newest first, at most `limit`, optionally of one device.
    pub async fn events(
        &self,
        device_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = match device_id {
            Some(device) => {
                sqlx::query(
                    "SELECT device_id, ts_ms, kind, detail FROM device_events WHERE device_id = $1
                     ORDER BY ts_ms DESC LIMIT $2",
                )
                .bind(device)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT device_id, ts_ms, kind, detail FROM device_events ORDER BY ts_ms DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    device_id: row.try_get(0)?,
                    ts_ms: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    detail: row.try_get(3)?,
                })
            })
            .collect()
    }
}

/// Records a control-queue delivery in the same table as telemetry batches (keyed
/// by device, stream, epoch, seq); `false` if it was recorded before.
async fn record_delivery(
    tx: &mut WriteTransaction<'_>,
    device_id: &str,
    delivery: &Delivery,
    received_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO telemetry_batches (device_id, stream, epoch, seq, received_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(device_id)
    .bind(&delivery.stream)
    .bind(to_i64(delivery.epoch))
    .bind(to_i64(delivery.seq))
    .bind(received_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// [`CRASH_KINDS`] as an SQL list of literals (constants, never input).
fn crash_kinds_sql() -> String {
    CRASH_KINDS
        .iter()
        .map(|kind| format!("'{kind}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `part / whole`, 1.0 when crashes exist but no device is known to run the version.
fn rate(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        return if part > 0 { 1.0 } else { 0.0 };
    }
    #[allow(clippy::cast_precision_loss)]
    let value = part as f64 / whole as f64;
    value.min(1.0)
}
