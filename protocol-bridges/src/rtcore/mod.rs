//! An RTU line driven by the real-time core, reached over the mailbox UART.
//!
//! With `transport = "rtcore"` a bridge does not open the RS-485 port itself: the
//! firmware in `protocol-bridges/rtcore/firmware` owns it, runs the same sans-IO
//! `RtuMaster`, and checks every request against a policy bundle it verified itself.
//! This module is the application side: one task owns the mailbox device, says
//! hello, configures the line, uploads the signed bundle, then turns calls into
//! `ToCore::Transact` frames and `FromCore::Outcome` frames back into answers.
//! Results, counters (timeouts, retries, CRC errors, noise) and failures land in the
//! same [`BridgeHealth`](crate::health::BridgeHealth) as a native bus, so points and
//! reports look the same.
//!
//! The parts: [`setup`] (what the core is told, from the bridge's config),
//! [`error`] (what can fail), `messages` (between the handle and its task, and from
//! the core), `link` (the task's side of one mailbox connection) and [`bus`] (the
//! handle and the task's reconnect loop).

pub mod bus;
pub mod error;
mod link;
mod messages;
pub mod setup;
#[cfg(test)]
mod tests;

pub use bus::RtCoreBus;
pub use error::{BundleError, RtCoreError};
pub use setup::{CoreSetup, describe, line_settings};
