//! Whether an offer may be installed: its fields checked, then its window, vetoes,
//! the operator's decision and the unit's maintenance windows.

use warden_link::topics::{UpdateOffer, UpdateOfferDelta, from_hex};
use warden_os::image::SemanticVersion;
use warden_os::update::{
    DeltaOffer, UpdateOffer as ImageOffer, UpdateWindowPolicy, WindowDecision,
};

use crate::state::updates::UpdateDecision;

/// An offer whose fields were checked.
pub(super) struct CheckedOffer {
    pub(super) wire: UpdateOffer,
    pub(super) image: ImageOffer,
}

/// May the offer be installed now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Install,
    /// Not yet; why, for people.
    Wait(String),
    /// Never: the offer's window has ended.
    Expired(String),
}

/// The gate for `offer` at `now_ms`: the offer's window (the operator's "allow" lets
/// it in before the window opens, never after it ends), then vetoes, the operator's
/// deferral and the unit's maintenance windows.
pub fn gate(
    offer: &UpdateOffer,
    decision: &UpdateDecision,
    window: &UpdateWindowPolicy,
    now_ms: u64,
) -> Gate {
    if offer.window_end_ms != 0 && now_ms > offer.window_end_ms {
        return Gate::Expired(format!(
            "the offer's window ended at {} ms",
            offer.window_end_ms
        ));
    }
    let allowed = decision.allowed_version.as_deref() == Some(offer.version.as_str());
    let mut policy = window.clone();
    if let Some(until) = decision.deferred_until_ms.filter(|_| !allowed) {
        policy.defer_until(until.div_ceil(1000));
    }
    match policy.decide(now_ms / 1000) {
        WindowDecision::InstallNow => {}
        WindowDecision::Vetoed { by, reason } => {
            return Gate::Wait(format!("vetoed by {by}: {reason}"));
        }
        WindowDecision::Deferred { until } => {
            return Gate::Wait(format!("deferred by the operator until {until} (Unix s)"));
        }
        WindowDecision::OutsideWindow { opens_at } if !allowed => {
            return Gate::Wait(format!(
                "outside the maintenance window; the next opens at {opens_at} (Unix s)"
            ));
        }
        WindowDecision::OutsideWindow { .. } => {}
    }
    if now_ms < offer.window_start_ms && !allowed {
        return Gate::Wait(format!(
            "the offer's window opens at {} ms",
            offer.window_start_ms
        ));
    }
    Gate::Install
}

/// Why an offer was refused before anything was downloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The digest is not 64 hex digits.
    #[error("sha256 {0:?} is not 64 hex digits")]
    Digest(String),
    /// The version is not `MAJOR.MINOR.PATCH`.
    #[error("version {0:?} is not MAJOR.MINOR.PATCH")]
    Version(String),
    /// The URL is not http(s).
    #[error("url {0:?} is not http(s)")]
    Url(String),
    /// The image would be empty.
    #[error("size is 0")]
    Empty,
}

/// The offer's delta with its fields checked; a malformed one is dropped (the full
/// image is then downloaded), with a warning.
fn checked_delta(delta: &UpdateOfferDelta) -> Option<DeltaOffer> {
    let digest = |hex: &str| from_hex(hex).and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    let checked = (|| {
        if !(delta.url.starts_with("http://") || delta.url.starts_with("https://")) {
            return None;
        }
        Some(DeltaOffer {
            url: delta.url.clone(),
            sha256: digest(&delta.sha256)?,
            size: delta.size,
            base_sha256: digest(&delta.base_sha256)?,
        })
    })();
    if checked.is_none() {
        tracing::warn!(url = %delta.url, "the offer's delta is malformed; using the full image");
    }
    checked
}

/// The offer with its fields checked, or why it is refused before any download.
pub(super) fn check(offer: &UpdateOffer) -> Result<CheckedOffer, OfferError> {
    let sha256: [u8; 32] = from_hex(&offer.sha256)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| OfferError::Digest(offer.sha256.clone()))?;
    let version: SemanticVersion = offer
        .version
        .parse()
        .map_err(|_| OfferError::Version(offer.version.clone()))?;
    if !(offer.url.starts_with("http://") || offer.url.starts_with("https://")) {
        return Err(OfferError::Url(offer.url.clone()));
    }
    if offer.size == 0 {
        return Err(OfferError::Empty);
    }
    Ok(CheckedOffer {
        wire: offer.clone(),
        image: ImageOffer {
            url: offer.url.clone(),
            sha256,
            size: offer.size,
            version,
            delta: offer.delta.as_ref().and_then(checked_delta),
        },
    })
}

#[cfg(test)]
mod tests {
    use warden_link::topics::PROTOCOL_VERSION;

    use super::*;

    fn offer(start: u64, end: u64) -> UpdateOffer {
        UpdateOffer {
            v: PROTOCOL_VERSION,
            id: "wave-1".into(),
            url: "http://127.0.0.1/x.wim".into(),
            sha256: "00".repeat(32),
            size: 10,
            version: "1.2.0".into(),
            window_start_ms: start,
            window_end_ms: end,
            delta: None,
        }
    }

    #[test]
    fn the_gate_honours_window_deferral_allowance_and_veto() {
        let now = 1_800_000_000_000;
        let open = offer(now - 1000, now + 3_600_000);
        let none = UpdateDecision::default();
        let any_time = UpdateWindowPolicy::default();
        assert_eq!(gate(&open, &none, &any_time, now), Gate::Install);

        let later = offer(now + 60_000, now + 3_600_000);
        assert!(
            matches!(gate(&later, &none, &any_time, now), Gate::Wait(why) if why.contains("window opens"))
        );
        let mut allowed = UpdateDecision {
            offer: None,
            ..UpdateDecision::default()
        };
        allowed.allowed_version = Some("1.2.0".into());
        assert_eq!(
            gate(&later, &allowed, &any_time, now),
            Gate::Install,
            "the operator's allow lets it in before the window"
        );

        let mut deferred = UpdateDecision::default();
        deferred.defer(now);
        assert!(
            matches!(gate(&open, &deferred, &any_time, now), Gate::Wait(why) if why.contains("deferred"))
        );

        let mut vetoed = UpdateWindowPolicy::default();
        vetoed.veto("press-1", "die closing");
        assert!(
            matches!(gate(&open, &allowed, &vetoed, now), Gate::Wait(why) if why.contains("vetoed by press-1"))
        );

        let ended = offer(now - 7_200_000, now - 3_600_000);
        assert!(matches!(
            gate(&ended, &allowed, &any_time, now),
            Gate::Expired(_)
        ));
    }

    #[test]
    fn malformed_offers_are_refused_before_any_download() {
        let mut bad = offer(0, 0);
        bad.sha256 = "xyz".into();
        assert!(
            check(&bad)
                .err()
                .is_some_and(|e| e.to_string().contains("sha256"))
        );
        let mut bad = offer(0, 0);
        bad.version = "one".into();
        assert!(
            check(&bad)
                .err()
                .is_some_and(|e| e.to_string().contains("version"))
        );
        let mut bad = offer(0, 0);
        bad.url = "file:///etc/passwd".into();
        assert!(
            check(&bad)
                .err()
                .is_some_and(|e| e.to_string().contains("url"))
        );
        assert!(check(&offer(0, 0)).is_ok());
    }
}
