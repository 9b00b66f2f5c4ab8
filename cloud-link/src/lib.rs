#![doc = include_str!("../README.md")]

pub mod agent;
pub mod control;
pub mod dispatch;
pub mod journal;
pub mod outbox;
pub mod tls;
pub mod topics;

pub use agent::{
    AttestationAnswers, CommandChannel, FleetVerdict, LinkAgent, LinkConfig, LinkState, LinkStatus,
    SharedOutbox,
};
pub use control::{ControlMessage, ControlQueue, ControlSender};
pub use topics::{Reading, TelemetryBatch};
