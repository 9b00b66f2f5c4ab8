//! Release-key revocation lists as the fleet's API and device page show them (not
//! device certificates: see [`crate::revocation`]).

use serde::{Deserialize, Serialize};

/// `GET` (every list, newest first) and `POST` (upload a `WRL1` file as the body).
pub const REVOCATION_LISTS_PATH: &str = "/api/v1/revocation-lists";

/// A release-key revocation list the fleet holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationListRecord {
    /// Its sequence (a newer list has a higher one).
    pub sequence: u64,
    /// The vendor root that signed it (key ID, hex).
    pub issuer: String,
    /// The key IDs it revokes (hex), in the list's order.
    pub revoked: Vec<String>,
    /// SHA-256 of the `WRL1` file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// When it was uploaded, ms since the epoch.
    pub uploaded_ms: i64,
}

/// Where a device stands against the fleet's newest list (`DeviceDetail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevocationList {
    /// The sequence of the list the device holds, from its reported twin (`None`: it
    /// reports none).
    pub held_sequence: Option<u64>,
    /// The sequence of the newest list the fleet holds (`None`: the fleet holds none).
    pub fleet_sequence: Option<u64>,
    /// The device holds the fleet's newest list (or a newer one), or the fleet has none.
    pub current: bool,
}

impl DeviceRevocationList {
    /// Where a device holding `held` stands against the fleet's newest `fleet`.
    pub fn of(held: Option<u64>, fleet: Option<u64>) -> Self {
        Self {
            held_sequence: held,
            fleet_sequence: fleet,
            current: match (held, fleet) {
                (_, None) => true,
                (Some(held), Some(fleet)) => held >= fleet,
                (None, Some(_)) => false,
            },
        }
    }
}
