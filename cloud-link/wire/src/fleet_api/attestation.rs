//! The outcome of an attestation the fleet ran (`POST /api/v1/devices/{id}/attestation`).

use serde::{Deserialize, Serialize};

/// The outcome of one attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The device.
    pub device: String,
    /// Whether the quote verified against the device's key and the fresh nonce and its
    /// measured image is acceptable (see [`Attestation::detail`]).
    pub verified: bool,
    /// Why it did not.
    pub reason: Option<String>,
    /// What was found: the release it runs, or why the image was not checked, or the
    /// reason it was refused (stored as the device's `attestation_detail`).
    pub detail: String,
    /// The image measurement register (the one boot extends with the image's
    /// measurement, `warden_os::root_of_trust::IMAGE_MEASUREMENT_REGISTER`), hex.
    pub measured_image: Option<String>,
    /// The known release that register matches (its version).
    pub release: Option<String>,
    /// The firmware version pluton reported.
    pub firmware_version: Option<u32>,
    /// The measurement registers, hex.
    pub registers: Vec<String>,
    /// The anti-rollback counters.
    pub counters: Vec<u64>,
}

impl Attestation {
    /// A refused attestation of `device`: not verified, `reason` as its detail, nothing
    /// measured.
    pub fn refused(device: &str, reason: String) -> Self {
        Self {
            device: device.to_owned(),
            verified: false,
            detail: reason.clone(),
            reason: Some(reason),
            measured_image: None,
            release: None,
            firmware_version: None,
            registers: Vec::new(),
            counters: Vec::new(),
        }
    }
}
