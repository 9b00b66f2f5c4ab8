//! Commands to a device's points and its twin (desired and reported state).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/devices/{id}/commands`: a write request for a device's point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// Bridge name on the device.
    pub bridge: String,
    /// Point name.
    pub point: String,
    /// Value in engineering units.
    pub value: f64,
    /// Optional client-chosen command ID (idempotency key); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// A command as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandView {
    /// Command ID.
    pub id: String,
    /// The command as sent to the device (the `commands` topic's payload, as JSON).
    pub request: serde_json::Value,
    /// `sent`, or the device's answer: `written`, `denied`, `exception`, `failed`.
    pub status: String,
    /// The device's details.
    pub detail: String,
    /// When it was sent, ms since the epoch.
    pub created_ms: i64,
    /// When the device answered.
    pub completed_ms: Option<i64>,
}

/// `PUT /api/v1/devices/{id}/twin/desired`: the desired state an operator sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRequest {
    /// A signed policy bundle, hex-encoded (the device verifies it; the fleet only
    /// checks it is hex).
    #[serde(default)]
    pub policy_bundle: Option<String>,
}

/// `GET /api/v1/devices/{id}/twin`: a device's twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinView {
    /// The device.
    pub device: String,
    /// What the fleet wants (as sent).
    pub desired: Option<serde_json::Value>,
    /// What the device reports it runs.
    pub reported: Option<serde_json::Value>,
}
