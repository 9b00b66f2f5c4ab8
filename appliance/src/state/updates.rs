//! What the operator decided about the fleet's update offer (the status page writes it,
//! the update agent reads it before installing anything).

/// An update the fleet offers, waiting for the operator (set by `crate::updates` when
/// an offer arrives over the link).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateOffer {
    /// The offered image version.
    pub version: String,
    /// The operator may defer installing it until this time, ms since the epoch.
    pub window_ends_ms: u64,
}

/// What the operator decided about updates; the update agent reads it before
/// installing anything.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateDecision {
    /// The pending offer, if any.
    pub offer: Option<UpdateOffer>,
    /// No update is installed before this time (ms since the epoch).
    pub deferred_until_ms: Option<u64>,
    /// The offered version the operator allowed to install now.
    pub allowed_version: Option<String>,
    /// When the operator last decided (ms since the epoch).
    pub decided_at_ms: Option<u64>,
}

impl UpdateDecision {
    /// How long one "defer" postpones updates when no offer bounds it.
    pub const DEFER_FOR_MS: u64 = 4 * 60 * 60 * 1000;

    /// Defers updates from `now_ms`: by [`Self::DEFER_FOR_MS`], but never past the
    /// pending offer's window.
    pub fn defer(&mut self, now_ms: u64) {
        let mut until = now_ms.saturating_add(Self::DEFER_FOR_MS);
        if let Some(offer) = &self.offer {
            until = until.min(offer.window_ends_ms);
        }
        self.deferred_until_ms = Some(until);
        self.allowed_version = None;
        self.decided_at_ms = Some(now_ms);
    }

    /// Allows the pending offer (if any) now and lifts any deferral.
    pub fn allow(&mut self, now_ms: u64) {
        self.deferred_until_ms = None;
        self.allowed_version = self.offer.as_ref().map(|offer| offer.version.clone());
        self.decided_at_ms = Some(now_ms);
    }
}
