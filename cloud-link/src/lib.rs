#![doc = include_str!("../README.md")]

pub mod agent;
mod clock;
pub mod control;
pub mod dispatch;
pub mod journal;
pub mod outbox;

pub use agent::{
    AttestationAnswers, CommandChannel, FleetVerdict, LinkAgent, LinkConfig, LinkState, LinkStatus,
    SharedOutbox,
};
/// The MQTT topics and payloads, the TLS profile, the device certificates' validity
/// rules and fields, and certificate renewal live in the wire crate; the link's API
/// speaks them.
pub use warden_wire::{certificate_fields, renewal, revocation, tls, topics, validity};

pub use control::{ControlMessage, ControlQueue, ControlSender};
pub use topics::{Reading, TelemetryBatch};
