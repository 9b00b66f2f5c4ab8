//! What a BLE bridge's handle and its session (the central) share: the spec, the
//! counters, the policy, and the writes on their way.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;
use warden_bridges::bridge::WriteOutcome;
use warden_bridges::point::WriteValue;
use warden_bridges::request_policy::RequestSource;

use crate::ble_policy::BleRequestPolicy;
use crate::config::BleBridgeSpec;
use crate::device_address::DeviceAddress;

/// What the bridge is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    /// Opening the HCI transport to the controller.
    #[default]
    OpeningController,
    /// Scanning for an advertiser with the configured name.
    Scanning,
    /// Waiting for the sensor to advertise and accept the connection.
    Connecting,
    /// Connected; discovering, reading, subscribed.
    Connected,
    /// Waiting before the next attempt after the sensor went away or an error.
    Waiting,
}

/// Counters and state of one BLE bridge, for the status page and telemetry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BleHealth {
    /// What the bridge is doing.
    pub state: LinkState,
    /// The sensor, once found (kept after a disconnection).
    pub sensor: Option<DeviceAddress>,
    /// Successful connections (the first one and every reconnection).
    pub connections: u64,
    /// Connections lost.
    pub disconnections: u64,
    /// Values read.
    pub reads: u64,
    /// Notifications and indications received.
    pub notifications: u64,
    /// Values that could not be decoded (too short for a point's field).
    pub decode_errors: u64,
    /// Operations the policy refused (reads, subscriptions, writes).
    pub denied: u64,
    /// Writes the sensor confirmed.
    pub writes: u64,
    /// Points missing on the sensor (service or characteristic not found).
    pub missing_points: Vec<String>,
    /// Last error, for people.
    pub last_error: Option<String>,
}

/// A write on its way to the session.
pub(crate) struct WriteCommand {
    pub point: String,
    pub value: WriteValue,
    pub source: RequestSource,
    pub deadline: Instant,
    pub reply: oneshot::Sender<WriteOutcome>,
}

/// State shared by the handle and the session.
pub(crate) struct Shared {
    pub spec: BleBridgeSpec,
    pub health: Mutex<BleHealth>,
    pub policy: Mutex<Box<dyn BleRequestPolicy>>,
}

impl Shared {
    pub fn update(&self, change: impl FnOnce(&mut BleHealth)) {
        change(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
