//! What the fleet's dashboard reads: counts, device rows, one device's page, deployment
//! progress and report groups across versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::RegisteredDevice;
use super::reports::{ReportBucket, StoredReport};
use super::telemetry::StoredReading;

/// Registered devices running one image version of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCount {
    /// Product.
    pub product: String,
    /// Image version (as last known).
    pub image_version: String,
    /// Registered, not revoked devices on it.
    pub devices: i64,
}

/// Registered devices counted by status and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCounts {
    /// Every registered device, revoked ones included.
    pub registered: i64,
    /// Per status (`trusted`, `unverified`, `untrusted`, `unknown`, `revoked`: every
    /// one present, 0 if none).
    pub by_status: BTreeMap<String, i64>,
    /// Per product and image version (revoked devices left out), sorted.
    pub by_version: Vec<VersionCount>,
    /// Devices that sent telemetry but are not registered (e.g. the demo's).
    pub unregistered_seen: i64,
}

/// Registered, not revoked devices with and without a live session on this fleet's
/// broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connectivity {
    /// With a live MQTT session now.
    pub online: i64,
    /// Without one.
    pub offline: i64,
}

/// `GET /api/v1/dashboard/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// Devices by status and version.
    #[serde(flatten)]
    pub counts: FleetCounts,
    /// Online and offline devices.
    pub connectivity: Connectivity,
    /// Deployments by state (`advancing`, `halted`, `complete`; all present).
    pub deployments_by_state: BTreeMap<String, i64>,
    /// Deployments still advancing, with their waves, newest first.
    pub deployments_in_progress: Vec<DeploymentProgress>,
}

/// One device as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Device ID.
    pub device_id: String,
    /// Whether it is registered (a device may send telemetry before it is).
    pub registered: bool,
    /// Product (empty when unregistered).
    pub product: String,
    /// Group (empty when unregistered).
    pub group: String,
    /// Image version as last known (empty when unregistered).
    pub image_version: String,
    /// Its attestation status or `revoked` (see [`FleetCounts::by_status`]); `unknown`
    /// when unregistered.
    pub status: String,
    /// Last telemetry received, ms since the epoch.
    pub last_seen_ms: Option<i64>,
}

/// One device in `GET /api/v1/dashboard/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardDevice {
    /// The stored row.
    #[serde(flatten)]
    pub row: DeviceRow,
    /// Whether it has a live session on this fleet's broker.
    pub online: bool,
}

/// When a device was first and last heard from (telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDevice {
    /// First telemetry, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last telemetry, ms since the epoch.
    pub last_seen_ms: i64,
}

/// `GET /api/v1/dashboard/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device.
    pub device_id: String,
    /// Whether it has a live session on this fleet's broker.
    pub online: bool,
    /// Its registry record, if registered.
    pub registered: Option<RegisteredDevice>,
    /// When it first and last sent telemetry, if it did.
    pub seen: Option<SeenDevice>,
    /// The latest value of each point, by point.
    pub latest: Vec<StoredReading>,
    /// Its latest failure reports, newest first.
    pub reports: Vec<StoredReport>,
    /// Decimal places to show each point with, as the unit's config sets them (from its
    /// reported twin, [`crate::topics::TwinReported::point_decimals`]); points without
    /// the setting are absent.
    #[serde(default)]
    pub point_decimals: std::collections::BTreeMap<String, u8>,
    /// Its registered certificate's validity, and the broker's last refusal of it
    /// (`None` for a device never registered).
    #[serde(default)]
    pub certificate: Option<DeviceCertificate>,
    /// The release-key revocation list it holds (its reported twin) against the
    /// fleet's newest.
    #[serde(default)]
    pub revocation_list: Option<super::DeviceRevocationList>,
}

/// A registered device's certificate as the device page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// Valid from, ms since the epoch.
    pub not_before_ms: i64,
    /// Valid until, ms since the epoch.
    pub not_after_ms: i64,
    /// `valid`, `renewal-due` (less than a third of its validity left), `expired` or
    /// `not-valid-yet` (`warden_wire::validity::CertificateStanding`).
    pub standing: String,
    /// When the broker last refused it (this fleet process's memory), if it did.
    pub refused_ms: Option<i64>,
    /// Why (an expired certificate names when it expired).
    pub refused_reason: Option<String>,
    /// Its last renewal over the link, if it had one.
    #[serde(default)]
    pub renewal: Option<super::CertificateRenewal>,
}

/// Progress of one wave of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    /// Wave number, from 0.
    pub wave: i64,
    /// `pending` (not started), `running`, `succeeded` or `halted`.
    pub status: String,
    /// Member devices.
    pub targeted: i64,
    /// Members offered the image.
    pub offered: i64,
    /// Members not offered (untrusted, revoked, moved out of the group).
    pub withheld: i64,
    /// Offered members that have not finished.
    pub in_progress: i64,
    /// Offered members that confirmed the image (and did not crash on it).
    pub succeeded: i64,
    /// Offered members that failed or rolled back.
    pub failed: i64,
    /// Offered members that reported a crash on the new version since the wave began.
    pub crashed: i64,
}

/// A deployment as the dashboard shows it (`GET /api/v1/dashboard/deployments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentProgress {
    /// ID.
    pub id: String,
    /// Product.
    pub product: String,
    /// Target group.
    pub group: String,
    /// Image version.
    pub version: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_ms: i64,
    /// `advancing`, `halted` or `complete`.
    pub state: String,
    /// The last event's kind and details.
    pub last_event: String,
    /// Details of the last event (why it halted, …).
    pub detail: String,
    /// The wave the last event concerns.
    pub current_wave: i64,
    /// Success threshold of the request.
    pub success_threshold: Option<f64>,
    /// Failure threshold of the request.
    pub failure_threshold: Option<f64>,
    /// Every wave, in order.
    pub waves: Vec<WaveProgress>,
}

/// Reports of one image version within a [`SignatureGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReports {
    /// Image version.
    pub image_version: String,
    /// Reports on it.
    pub count: i64,
}

/// Reports sharing a signature, compartment and kind, across image versions
/// (`GET /api/v1/dashboard/report-groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureGroup {
    /// The devices' grouping signature.
    pub signature: String,
    /// Compartment.
    pub compartment: String,
    /// Kind.
    pub kind: String,
    /// The latest report's message.
    pub message: String,
    /// Reports in the group.
    pub count: i64,
    /// Distinct devices reporting.
    pub devices: i64,
    /// Counts per image version, versions sorted.
    pub versions: Vec<VersionReports>,
    /// First report, ms since the epoch.
    pub first_ms: i64,
    /// Latest report.
    pub last_ms: i64,
    /// Counts per bucket, oldest first, only non-empty buckets.
    pub series: Vec<ReportBucket>,
}

/// Query of `GET /api/v1/dashboard/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePageQuery {
    /// Only devices whose ID starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Devices skipped (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// At most this many (1..=10000, default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Query of `GET /api/v1/dashboard/report-groups`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportGroupsQuery {
    /// Only reports at or after this time (ms since the epoch; default 7 days ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Width of a count bucket in ms (default one hour, at least 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<i64>,
}
