//! Products, groups and registered devices: what the provisioning station sends and
//! reads, and what the fleet's registry endpoints answer.

use serde::{Deserialize, Serialize};

/// Path of the product collection (`GET`, `POST` with [`ProductRequest`]).
pub const PRODUCTS_PATH: &str = "/api/v1/products";

/// Path of the device collection (`GET`, `POST` with [`RegisterRequest`]).
pub const DEVICES_PATH: &str = "/api/v1/devices";

/// Path of one device's record ([`DeviceView`]).
pub fn device_path(device_id: &str) -> String {
    format!("{DEVICES_PATH}/{device_id}")
}

/// `POST /api/v1/products`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductRequest {
    /// 1 to 16 letters, digits, `-`, `_` or `.` (it is also the image header's product).
    pub name: String,
    /// The manufacturer CA certificate(s), PEM.
    pub manufacturer_ca_pem: String,
}

/// A product as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    /// Name.
    pub name: String,
    /// The manufacturer CA(s), PEM.
    pub manufacturer_ca_pem: String,
    /// SHA-256 fingerprints of the CA certificates.
    pub ca_fingerprints: Vec<String>,
    /// When it was created.
    pub created_ms: i64,
    /// Whether devices of its CA that were not registered may connect (and are then
    /// enrolled in its `No Updates` group at their first connection). Off unless an
    /// operator turns it on ([`EnrollmentRequest`]). Absent from an older fleet's
    /// answer: off.
    #[serde(default)]
    pub open_enrollment: bool,
}

/// Path of a product's enrollment setting (`PUT` with [`EnrollmentRequest`]).
pub fn product_enrollment_path(product: &str) -> String {
    format!("{PRODUCTS_PATH}/{product}/enrollment")
}

/// `PUT /api/v1/products/{name}/enrollment` (permission `operate`: a provisioner, who
/// may create products, cannot open one's enrollment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// Whether devices of the product's CA that were not registered may connect.
    pub open: bool,
}

/// `POST /api/v1/products/{name}/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`.
    pub name: String,
}

/// A device group of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its product.
    pub product: String,
    /// Its name.
    pub name: String,
    /// Whether deployments may target it (`No Updates` never does).
    pub receives_updates: bool,
    /// Registered devices in it.
    pub devices: i64,
}

/// The group a registration without one lands in.
pub const DEFAULT_GROUP: &str = "Production";

/// `POST /api/v1/devices`: what the provisioning station sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Device ID; must be the certificate's common name.
    pub device_id: String,
    /// Serial number (1 to 128 printable characters).
    pub serial: String,
    /// Product.
    pub product: String,
    /// Group (default [`DEFAULT_GROUP`]).
    #[serde(default = "default_group")]
    pub group: String,
    /// The device certificate, PEM (one certificate).
    pub certificate_pem: String,
    /// The image version provisioned, `MAJOR.MINOR.PATCH`.
    pub image_version: String,
}

fn default_group() -> String {
    DEFAULT_GROUP.to_owned()
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Device ID.
    pub device_id: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    /// Product.
    pub product: String,
    /// Group.
    pub group: String,
}

/// A registered device as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredDevice {
    /// Device ID.
    pub device_id: String,
    /// Serial number.
    pub serial: String,
    /// Product.
    pub product: String,
    /// Group.
    pub group: String,
    /// SHA-256 of the certificate DER, hex.
    pub fingerprint: String,
    /// The image version it runs (as last known).
    pub image_version: String,
    /// The policy bundle version it runs (from its twin), if any.
    pub policy_version: Option<i64>,
    /// Last message seen (telemetry), ms since the epoch.
    pub last_seen_ms: Option<i64>,
    /// `unknown`, `trusted`, `untrusted` (a refused quote) or `unverified` (a challenge
    /// went unanswered, or the last verified attestation is older than
    /// `rollouts.attestation_valid_secs`).
    pub attestation: String,
    /// When it was last attested.
    pub attested_ms: Option<i64>,
    /// What the last attestation found (the release it runs, or why it was refused,
    /// or why no verdict was reached).
    pub attestation_detail: Option<String>,
    /// Whether its certificate is revoked.
    pub revoked: bool,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
    /// When it was registered.
    pub registered_ms: i64,
}

/// `GET /api/v1/devices/{id}`: the registry record, or what is known of a device
/// that connected without being registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceView {
    /// A registered device.
    Registered(Box<RegisteredDevice>),
    /// A device seen (its certificate chains to a trusted CA) but never registered.
    Unregistered {
        /// Device ID.
        device_id: String,
        /// Always `false`.
        registered: bool,
        /// Last telemetry.
        last_seen_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_without_a_group_lands_in_production() {
        let request: RegisterRequest = serde_json::from_str(
            r#"{"device_id":"wd-1","serial":"S1","product":"gw","certificate_pem":"-","image_version":"1.0.0"}"#,
        )
        .expect("decodes");
        assert_eq!(request.group, DEFAULT_GROUP);
    }

    #[test]
    fn an_unregistered_device_reads_back_as_such() {
        let view: DeviceView =
            serde_json::from_str(r#"{"device_id":"wd-1","registered":false,"last_seen_ms":5}"#)
                .expect("decodes");
        assert!(matches!(
            view,
            DeviceView::Unregistered {
                last_seen_ms: 5,
                ..
            }
        ));
    }
}
