#![doc = include_str!("../README.md")]

pub mod agent;
pub mod tls;
pub mod topics;

pub use agent::{LinkAgent, LinkConfig, LinkState, LinkStatus};
pub use topics::{Reading, TelemetryBatch};
