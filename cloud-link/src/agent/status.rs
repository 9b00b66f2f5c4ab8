//! The link's state and counters, as the status page and `/metrics` show them.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::outbox::OutboxStats;

/// Whether the link is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet connected.
    #[default]
    Connecting,
    /// Connected and acknowledged by the broker.
    Connected,
    /// Lost; reconnecting with backoff.
    Disconnected,
    /// The link cannot run at all right now (no identity: pluton unreachable or a
    /// certificate missing; TLS configuration unusable; outbox unusable): the cause is
    /// in [`LinkStatus::last_error`] and the agent tries again with backoff.
    Unavailable,
}

/// The link's state and counters, shared with the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// Batches written to the outbox.
    pub batches_queued: u64,
    /// Batches the fleet acknowledged (stored).
    pub batches_acknowledged: u64,
    /// Control messages (results, reported state, events, reports, update status)
    /// the fleet acknowledged.
    pub control_acknowledged: u64,
    /// The durable control queue.
    pub control: OutboxStats,
    /// Messages sent, including resends.
    pub messages_sent: u64,
    /// Readings dropped because the pending store was at its bound (the outbox refused
    /// them or was unavailable for long), or because one reading alone was larger than
    /// an outbox record may be.
    pub readings_dropped: u64,
    /// The store-and-forward queue.
    pub outbox: OutboxStats,
    /// Last connection error, for people.
    pub last_error: Option<String>,
    /// When the fleet last acknowledged a telemetry batch, ms since the epoch.
    pub last_ack_ms: Option<u64>,
    /// When the link was last connected to the broker (ConnAck or any packet since),
    /// ms since the epoch.
    pub last_connected_ms: Option<u64>,
    /// Times the agent had to start over after an error (identity, TLS, outbox).
    pub restarts: u64,
    /// Readings waiting for the outbox (in memory and in the readings journal).
    pub readings_pending: u64,
    /// Records of the readings journal found damaged at start (their readings are
    /// lost; the rest of the journal was recovered).
    pub journal_damaged: u64,
    /// The fleet's attestation challenges as this unit answered them.
    pub attestation: AttestationAnswers,
    /// The device certificate the link connects with, and its renewal.
    #[serde(default)]
    pub certificate: super::renewal::CertificateRenewalStatus,
}

/// The fleet's attestation challenges, this unit's answers, and the fleet's last
/// verdict on them (`attestation/verdict`; the unit only shows it, the fleet enforces
/// it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationAnswers {
    /// Challenges answered since the link started.
    pub answered: u64,
    /// When the last one was answered, ms since the epoch.
    pub last_answered_ms: Option<u64>,
    /// Why the last answer carried no quote (pluton unreachable, bad nonce) or could
    /// not be published; `None` when a quote went out.
    pub last_error: Option<String>,
    /// The fleet's last verdict, if one came since the link started.
    pub verdict: Option<FleetVerdict>,
}

/// The fleet's verdict as the unit received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVerdict {
    /// The fleet trusts this unit.
    pub trusted: bool,
    /// The known release the fleet found the unit running, if any.
    pub release: Option<String>,
    /// What the fleet found, for people.
    pub detail: String,
    /// When it arrived, ms since the epoch.
    pub received_ms: u64,
}

/// Changes the shared status under its lock (a poisoned lock is still used: the
/// status is plain counters).
pub(super) fn update(status: &Mutex<LinkStatus>, change: impl FnOnce(&mut LinkStatus)) {
    change(&mut status.lock().unwrap_or_else(PoisonError::into_inner));
}
