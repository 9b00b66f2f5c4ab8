//! Read-only queries behind the dashboard: fleet counts, device rows, report groups.
//!
//! Like the other store modules, one set of `$N` queries serves SQLite and PostgreSQL
//! through sqlx's `Any` driver; counting by status and version is done in SQL
//! (`GROUP BY`), grouping reports across versions in Rust.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use warden_wire::fleet_api::{
    DeviceRow, FleetCounts, ReportBucket, SeenDevice, SignatureGroup, VersionCount, VersionReports,
};

use super::core::{Store, StoreError};

/// The statuses a registered device can have on the dashboard, in display order:
/// its attestation (`trusted`, `unverified` when it lapsed, `untrusted`, `unknown`),
/// or `revoked`, which wins. A status the store holds that is not listed here is
/// counted under its own name.
pub const DEVICE_STATUSES: &[&str] = &["trusted", "unverified", "untrusted", "unknown", "revoked"];

/// A group being accumulated: the group, counts per version and per bucket, devices.
struct GroupAccumulator {
    group: SignatureGroup,
    versions: BTreeMap<String, i64>,
    buckets: BTreeMap<i64, i64>,
    devices: BTreeSet<String>,
}

impl Store {
    /// Registered devices counted by status and by version, and unregistered senders.
    pub async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        let mut by_status: BTreeMap<String, i64> = DEVICE_STATUSES
            .iter()
            .map(|status| ((*status).to_owned(), 0))
            .collect();
        let mut registered = 0;
        let mut reader = self.dashboard_reader().await?;
        for row in sqlx::query(
            "SELECT CASE WHEN revoked_ms IS NOT NULL THEN 'revoked' ELSE attestation END AS status,
                    COUNT(*) FROM registry GROUP BY status",
        )
        .fetch_all(&mut *reader)
        .await?
        {
            let count: i64 = row.try_get(1)?;
            registered += count;
            *by_status.entry(row.try_get(0)?).or_default() += count;
        }
        let by_version = sqlx::query(
            "SELECT product, image_version, COUNT(*) FROM registry WHERE revoked_ms IS NULL
             GROUP BY product, image_version ORDER BY product, image_version",
        )
        .fetch_all(&mut *reader)
        .await?
        .iter()
        .map(|row| {
            Ok(VersionCount {
                product: row.try_get(0)?,
                image_version: row.try_get(1)?,
                devices: row.try_get(2)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
        let unregistered_seen: i64 = sqlx::query(
            "SELECT COUNT(*) FROM devices d WHERE NOT EXISTS
                 (SELECT 1 FROM registry r WHERE r.device_id = d.id)",
        )
        .fetch_one(&mut *reader)
        .await?
        .try_get(0)?;
        Ok(FleetCounts {
            registered,
            by_status,
            by_version,
            unregistered_seen,
        })
    }

    /// Every registered device, then every unregistered one that sent telemetry,
    /// each by ID.
    pub async fn device_rows(&self) -> Result<Vec<DeviceRow>, StoreError> {
        self.device_page("", 0, i64::MAX).await
    }

    /// One page of [`Self::device_rows`]: those whose ID starts with `prefix`, skipping
    /// `offset`, at most `limit`.
    pub async fn device_page(
        &self,
        prefix: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        let pattern = format!("{}%", escape_like(prefix));
        let rows = sqlx::query(
            "SELECT id, registered, product, device_group, image_version, status, last_seen_ms
             FROM (
                 SELECT r.device_id AS id, CAST(1 AS BIGINT) AS registered, r.product,
                        r.device_group, r.image_version,
                        CASE WHEN r.revoked_ms IS NOT NULL THEN 'revoked' ELSE r.attestation END
                            AS status,
                        d.last_seen_ms
                 FROM registry r LEFT JOIN devices d ON d.id = r.device_id
                 UNION ALL
                 SELECT d.id, CAST(0 AS BIGINT), '', '', '', 'unknown', d.last_seen_ms
                 FROM devices d
                 WHERE NOT EXISTS (SELECT 1 FROM registry r WHERE r.device_id = d.id)
             ) AS listed
             WHERE id LIKE $1 ESCAPE '\\'
             ORDER BY registered DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(pattern)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *self.dashboard_reader().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceRow {
                    device_id: row.try_get(0)?,
                    registered: row.try_get::<i64, _>(1)? == 1,
                    product: row.try_get(2)?,
                    group: row.try_get(3)?,
                    image_version: row.try_get(4)?,
                    status: row.try_get(5)?,
                    last_seen_ms: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// When `device_id` first and last sent telemetry, if it ever did.
    pub async fn seen_device(&self, device_id: &str) -> Result<Option<SeenDevice>, StoreError> {
        sqlx::query("SELECT first_seen_ms, last_seen_ms FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| {
                Ok(SeenDevice {
                    first_seen_ms: row.try_get(0)?,
                    last_seen_ms: row.try_get(1)?,
                })
            })
            .transpose()
    }

    /// Reports since `since_ms` grouped by (signature, compartment, kind) across image
    /// versions, with counts per version and per `bucket_ms`; the largest groups first.
    pub async fn signature_groups(
        &self,
        since_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<SignatureGroup>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let rows = sqlx::query(
            "SELECT signature, compartment, kind, image_version, device_id, ts_ms, message
             FROM failure_reports WHERE ts_ms >= $1 ORDER BY ts_ms, device_id, id",
        )
        .bind(since_ms)
        .fetch_all(&mut *self.dashboard_reader().await?)
        .await?;
        let mut groups: BTreeMap<(String, String, String), GroupAccumulator> = BTreeMap::new();
        for row in &rows {
            let key: (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let version: String = row.try_get(3)?;
            let device: String = row.try_get(4)?;
            let ts_ms: i64 = row.try_get(5)?;
            let message: String = row.try_get(6)?;
            let entry = groups
                .entry(key.clone())
                .or_insert_with(|| GroupAccumulator {
                    group: SignatureGroup {
                        signature: key.0,
                        compartment: key.1,
                        kind: key.2,
                        message: String::new(),
                        count: 0,
                        devices: 0,
                        versions: Vec::new(),
                        first_ms: ts_ms,
                        last_ms: ts_ms,
                        series: Vec::new(),
                    },
                    versions: BTreeMap::new(),
                    buckets: BTreeMap::new(),
                    devices: BTreeSet::new(),
                });
            entry.group.count += 1;
            entry.group.last_ms = ts_ms;
            entry.group.message = message;
            *entry.versions.entry(version).or_default() += 1;
            *entry
                .buckets
                .entry(ts_ms.div_euclid(bucket_ms) * bucket_ms)
                .or_default() += 1;
            entry.devices.insert(device);
        }
        let mut out: Vec<SignatureGroup> = groups
            .into_values()
            .map(|accumulated| {
                let mut group = accumulated.group;
                group.devices = i64::try_from(accumulated.devices.len()).unwrap_or(i64::MAX);
                group.versions = accumulated
                    .versions
                    .into_iter()
                    .map(|(image_version, count)| VersionReports {
                        image_version,
                        count,
                    })
                    .collect();
                group.series = accumulated
                    .buckets
                    .into_iter()
                    .map(|(start_ms, count)| ReportBucket { start_ms, count })
                    .collect();
                group
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ms.cmp(&a.last_ms)));
        Ok(out)
    }
}

/// `text` with LIKE's wildcards (and the escape character) escaped by a backslash.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::store::NewDevice;
    use warden_wire::topics::FailureReportMessage;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    fn report(id: &str, signature: &str, version: &str, ts_ms: u64) -> FailureReportMessage {
        serde_json::from_value(serde_json::json!({
            "v": 1, "id": id, "ts_ms": ts_ms, "compartment": "bridges", "kind": "crash",
            "image_version": version, "signature": signature, "message": format!("boom {id}"),
        }))
        .expect("report")
    }

    #[tokio::test]
    async fn reports_are_grouped_by_signature_across_versions_and_buckets() {
        let (_dir, store) = store().await;
        for (device, id, signature, version, ts) in [
            ("wd-1", "r1", "sig-a", "1.0.0", 1_000),
            ("wd-1", "r2", "sig-a", "1.1.0", 2_500),
            ("wd-2", "r1", "sig-a", "1.1.0", 2_600),
            ("wd-2", "r2", "sig-b", "1.1.0", 3_000),
            ("wd-3", "r1", "sig-a", "1.1.0", 500),
        ] {
            assert!(
                store
                    .insert_report(device, &report(id, signature, version, ts), 0)
                    .await
                    .expect("insert")
            );
        }
        let groups = store.signature_groups(1_000, 1_000).await.expect("groups");
        assert_eq!(groups.len(), 2, "{groups:?}");
        let a = &groups[0];
        assert_eq!((a.signature.as_str(), a.count, a.devices), ("sig-a", 3, 2));
        assert_eq!(
            a.versions,
            vec![
                VersionReports {
                    image_version: "1.0.0".into(),
                    count: 1
                },
                VersionReports {
                    image_version: "1.1.0".into(),
                    count: 2
                },
            ]
        );
        assert_eq!(
            a.series,
            vec![
                ReportBucket {
                    start_ms: 1_000,
                    count: 1
                },
                ReportBucket {
                    start_ms: 2_000,
                    count: 2
                },
            ]
        );
        assert_eq!((a.first_ms, a.last_ms), (1_000, 2_600));
        assert_eq!(a.message, "boom r1");
        assert_eq!(
            (groups[1].signature.as_str(), groups[1].count),
            ("sig-b", 1)
        );
    }

    #[tokio::test]
    async fn devices_are_counted_by_status_and_version() {
        let (_dir, store) = store().await;
        store
            .create_product("press", "pem", |_| true, now_ms())
            .await
            .expect("product");
        for (id, version) in [("wd-a", "1.0.0"), ("wd-b", "1.0.0"), ("wd-c", "1.1.0")] {
            store
                .register_device(
                    &NewDevice {
                        device_id: id,
                        serial: id,
                        product: "press",
                        group: "Production",
                        certificate_pem: "pem",
                        fingerprint: id,
                        image_version: version,
                    },
                    now_ms(),
                )
                .await
                .expect("register");
        }
        store
            .set_attestation("wd-a", "trusted", now_ms())
            .await
            .expect("attest");
        store.revoke_device("wd-b", now_ms()).await.expect("revoke");
        let batch = warden_wire::topics::TelemetryBatch {
            v: 1,
            stream: "s".into(),
            epoch: 1,
            seq: 0,
            readings: Vec::new(),
        };
        store.ingest("wd-demo", &batch, 42).await.expect("ingest");

        let counts = store.fleet_counts().await.expect("counts");
        assert_eq!(counts.registered, 3);
        let status = |s: &str| counts.by_status.get(s).copied();
        assert_eq!(
            (
                status("trusted"),
                status("untrusted"),
                status("unknown"),
                status("revoked")
            ),
            (Some(1), Some(0), Some(1), Some(1))
        );
        assert_eq!(
            counts
                .by_version
                .iter()
                .map(|v| (v.image_version.as_str(), v.devices))
                .collect::<Vec<_>>(),
            vec![("1.0.0", 1), ("1.1.0", 1)]
        );
        assert_eq!(counts.unregistered_seen, 1);

        let rows = store.device_rows().await.expect("rows");
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.device_id.as_str(), r.registered, r.status.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("wd-a", true, "trusted"),
                ("wd-b", true, "revoked"),
                ("wd-c", true, "unknown"),
                ("wd-demo", false, "unknown"),
            ]
        );
        assert_eq!(rows[3].last_seen_ms, Some(42));
        // Pages and ID prefixes (`_` and `%` are literal).
        let ids = |rows: Vec<DeviceRow>| -> Vec<String> {
            rows.into_iter().map(|r| r.device_id).collect()
        };
        assert_eq!(
            ids(store.device_page("", 1, 2).await.expect("page")),
            ["wd-b", "wd-c"]
        );
        assert_eq!(
            ids(store.device_page("wd-d", 0, 10).await.expect("prefix")),
            ["wd-demo"]
        );
        assert!(
            store
                .device_page("wd_", 0, 10)
                .await
                .expect("literal")
                .is_empty()
        );
        assert!(
            store
                .device_page("%", 0, 10)
                .await
                .expect("literal")
                .is_empty()
        );
        assert_eq!(
            store.seen_device("wd-demo").await.expect("seen"),
            Some(SeenDevice {
                first_seen_ms: 42,
                last_seen_ms: 42
            })
        );
        assert_eq!(store.seen_device("wd-a").await.expect("seen"), None);
    }
}
