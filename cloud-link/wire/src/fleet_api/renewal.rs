//! Certificate renewal as the fleet's API and device page show it.

use serde::{Deserialize, Serialize};

/// The last renewal of a device's certificate (`DeviceCertificate::renewal`), and the
/// answer to `POST /api/v1/devices/{id}/certificate/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewal {
    /// `ordered` (the device was asked to renew), `issued` (a new certificate waits
    /// for its first connection; both are accepted until then), `completed` (the
    /// device connected with it; the old one is retired) or `refused` (see `detail`).
    pub state: String,
    /// What happened, for people (a refusal names its reason).
    pub detail: String,
    /// The new certificate's fingerprint (issued, completed).
    pub fingerprint: Option<String>,
    /// The new certificate's end of validity, ms since the epoch (issued, completed).
    pub not_after_ms: Option<i64>,
    /// When, ms since the epoch.
    pub updated_ms: i64,
}

/// `POST /api/v1/devices/{id}/certificate/renew`.
pub fn certificate_renew_path(device_id: &str) -> String {
    format!("/api/v1/devices/{device_id}/certificate/renew")
}
