//! The fleet's HTTP request and response types: every body and query of its API.
//!
//! The fleet answers with these and the provisioning station, the load tools, the
//! simulators and the tests send and read them, so each body is written once.
//! `cloud-link/fleet/openapi.json` describes them; a test of the fleet checks the
//! document against these types (field names, required fields, query parameters) and
//! against the fleet's routes. Grouped by concern; every type is re-exported here.

mod attestation;
mod commands;
mod dashboard;
mod deployments;
mod error;
mod registry;
mod renewal;
mod reports;
mod revocation;
mod telemetry;

pub use attestation::Attestation;
pub use commands::{CommandView, DesiredRequest, TwinView, WriteRequest};
pub use dashboard::{
    Connectivity, DashboardDevice, DeploymentProgress, DeviceCertificate, DeviceDetail,
    DevicePageQuery, DeviceRow, FleetCounts, FleetSummary, ReportGroupsQuery, SeenDevice,
    SignatureGroup, VersionCount, VersionReports, WaveProgress,
};
pub use deployments::{
    DELTAS_PATH, DEPLOYMENTS_PATH, DeltaRecord, DeploymentEvent, DeploymentMember,
    DeploymentRequest, IMAGES_PATH, ImageRecord, InvalidDeployment, StoredDeployment, WaveSize,
    deployment_path,
};
pub use error::ErrorBody;
pub use registry::{
    DEFAULT_GROUP, DEVICES_PATH, DeviceView, EnrollmentRequest, Group, GroupRequest, PRODUCTS_PATH,
    ProductRequest, ProductView, RegisterRequest, RegisterResponse, RegisteredDevice, device_path,
    product_enrollment_path,
};
pub use renewal::{CertificateRenewal, certificate_renew_path};
pub use reports::{
    AuditLine, AuditQuery, CrashRate, EventsQuery, ReportBucket, ReportGroup, ReportsQuery,
    StoredEvent, StoredReport,
};
pub use revocation::{DeviceRevocationList, REVOCATION_LISTS_PATH, RevocationListRecord};
pub use telemetry::{
    Device, DevicesQuery, StoredReading, TelemetryQuery, TelemetryResponse, telemetry_path,
};
