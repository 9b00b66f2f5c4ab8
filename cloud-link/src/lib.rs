#![doc = include_str!("../README.md")]

pub mod agent;
pub mod control;
pub mod dispatch;
pub mod journal;
pub mod outbox;
pub mod tls;

pub use agent::{
    AttestationAnswers, CommandChannel, FleetVerdict, LinkAgent, LinkConfig, LinkState, LinkStatus,
    SharedOutbox,
};
/// The MQTT topics and payloads live in the wire crate; the link's API speaks them.
pub use warden_wire::topics;

pub use control::{ControlMessage, ControlQueue, ControlSender};
pub use topics::{Reading, TelemetryBatch};
