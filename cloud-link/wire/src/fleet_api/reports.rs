//! Failure reports, device events and the audit log, as the fleet's endpoints show them.

use serde::{Deserialize, Serialize};

/// One stored failure report (`GET /api/v1/reports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    /// The device.
    pub device_id: String,
    /// Its report ID.
    pub id: String,
    /// When it happened.
    pub ts_ms: i64,
    /// The failed compartment.
    pub compartment: String,
    /// Kind (`crash`, `panic`, …).
    pub kind: String,
    /// Image version running.
    pub image_version: String,
    /// Grouping signature.
    pub signature: String,
    /// Message.
    pub message: String,
}

/// Reports in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBucket {
    /// Start of the bucket, ms since the epoch.
    pub start_ms: i64,
    /// Reports in it.
    pub count: i64,
}

/// Reports sharing a signature, compartment, kind and image version
/// (`GET /api/v1/reports?group_by=signature`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportGroup {
    /// The device's grouping signature.
    pub signature: String,
    /// Compartment.
    pub compartment: String,
    /// Kind.
    pub kind: String,
    /// Image version.
    pub image_version: String,
    /// A message of the group (the latest).
    pub message: String,
    /// Reports in the group.
    pub count: i64,
    /// Distinct devices reporting.
    pub devices: i64,
    /// First report.
    pub first_ms: i64,
    /// Latest report.
    pub last_ms: i64,
    /// Counts over time, oldest bucket first (only non-empty buckets).
    pub series: Vec<ReportBucket>,
}

/// Crashes of one image version (`GET /api/v1/reports/crash-rate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashRate {
    /// Image version.
    pub image_version: String,
    /// Crash-kind reports (`crash`, `panic`, `watchdog`).
    pub crashes: i64,
    /// Distinct devices that crashed on it.
    pub crashed_devices: i64,
    /// Registered devices known to run it.
    pub devices: i64,
    /// `crashed_devices / devices` (or 1.0 when crashes come from unknown devices).
    pub rate: f64,
}

/// One stored device event (`GET /api/v1/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The device.
    pub device_id: String,
    /// When.
    pub ts_ms: i64,
    /// Kind.
    pub kind: String,
    /// Details.
    pub detail: String,
}

/// One audit line (`GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// When.
    pub ts_ms: i64,
    /// The token's name.
    pub actor: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The answer's status.
    pub status: i64,
}

/// Query of `GET /api/v1/reports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsQuery {
    /// `signature`: groups instead of single reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// Only this device's reports (not with `group_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Groups: only reports at or after this time (ms since the epoch; default 7 days ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Groups: width of a count bucket in ms (default one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<i64>,
    /// Single reports: at most this many, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this device's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// At most this many, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}
