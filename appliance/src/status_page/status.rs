//! The status the page, `warden status` and `/metrics` show, and how it reads in words.

use std::sync::PoisonError;

use serde::Serialize;
use warden_bridges::BridgeHealth;
use warden_link::LinkStatus;

use crate::state::unit_facts::{CertificateView, FailureReports, ImageSlots};
use crate::state::updates::UpdateDecision;
use crate::state::{ApplianceState, LiveValue};

/// The status as JSON.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This unit.
    pub device_id: String,
    /// The running software's version.
    pub software_version: &'static str,
    /// Attestation, in words: the fleet's last challenge and this unit's answer (the
    /// fleet's verdict comes first; the numbers are in `link.attestation`).
    pub attestation: String,
    /// The A/B image slots (`null`: the config has no `[updates]`).
    pub image_slots: Option<ImageSlots>,
    /// The device certificate's validity and standing (`renewal-due` once less than a
    /// third of it remains; the fleet refuses it once `expired`).
    pub device_certificate: Option<CertificateView>,
    /// The cloud link in words, true now: `connected`, `connecting`, `link down:
    /// <cause>` or `unavailable: <cause>` (see [`link_in_words`]).
    pub link_summary: String,
    /// Seconds since the fleet last acknowledged a telemetry batch (`null`: never
    /// since start).
    pub last_ack_age_secs: Option<u64>,
    /// The cloud link.
    pub link: LinkStatus,
    /// Restarts and last failure of each restartable task of the process serving
    /// this status.
    pub tasks: std::collections::BTreeMap<String, crate::supervision::TaskHealth>,
    /// Bridges in config order.
    pub bridges: Vec<BridgeStatus>,
    /// The gateway facade's counters (`null`: no facade configured).
    pub facade: Option<warden_bridges::FacadeHealth>,
    /// Failure reports, newest first (`null`: the config has no `[reports]`).
    pub failure_reports: Option<FailureReports>,
    /// The operator's update decision.
    pub updates: UpdateDecision,
}

/// One bridge.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    /// Name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Counters.
    pub health: BridgeHealth,
    /// Points with their last values (`null` before the first read).
    pub points: Vec<PointStatus>,
}

/// One point.
#[derive(Debug, Serialize)]
pub struct PointStatus {
    /// Name.
    pub name: String,
    /// Last value, if any.
    pub last: Option<LiveValue>,
    /// Recent numeric values, oldest first (for the trend chart).
    pub recent: Vec<f64>,
    /// Decimal places to show a number with, when the point's config sets them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u8>,
}

/// The status of `state` now.
pub fn snapshot(state: &ApplianceState) -> Status {
    let values = state
        .values
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let history = state
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let bridges = state
        .bridges
        .iter()
        .map(|bridge| BridgeStatus {
            name: bridge.name.clone(),
            address: bridge.address.clone(),
            health: bridge
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            points: bridge
                .points
                .iter()
                .map(|point| {
                    let key = (bridge.name.clone(), point.clone());
                    PointStatus {
                        decimals: state
                            .point_decimals
                            .get(&format!("{}/{point}", bridge.name))
                            .copied(),
                        name: point.clone(),
                        last: values.get(&key).cloned(),
                        recent: history
                            .get(&key)
                            .map(|recent| recent.iter().copied().collect())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    let link = state
        .link
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let unit = state
        .unit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let now = crate::clock::now_ms();
    Status {
        device_id: state.device_id.clone(),
        software_version: env!("CARGO_PKG_VERSION"),
        attestation: attestation_in_words(&link.attestation, now),
        image_slots: unit.image_slots,
        // The link's reading wins: it is the certificate in use (renewed or not).
        device_certificate: crate::device_certificate::page_certificate_view(
            &link.certificate,
            unit.device_certificate,
            now,
        ),
        link_summary: link_in_words(&link),
        last_ack_age_secs: age_secs(link.last_ack_ms, now),
        link,
        tasks: state
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        bridges,
        facade: state
            .facade
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        failure_reports: unit.failure_reports,
        updates: state
            .updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    }
}

/// The name of a link state as the status and `/metrics` show it (its serialised
/// name: one spelling everywhere).
pub fn link_state_name(state: warden_link::LinkState) -> &'static str {
    use warden_link::LinkState;
    match state {
        LinkState::Connecting => "connecting",
        LinkState::Connected => "connected",
        LinkState::Disconnected => "disconnected",
        LinkState::Unavailable => "unavailable",
    }
}

/// The link as the operator must read it: never "connected" unless it is, and the
/// cause whenever it is not.
pub fn link_in_words(link: &LinkStatus) -> String {
    use warden_link::LinkState;
    let cause = link
        .last_error
        .as_deref()
        .unwrap_or("no cause reported yet");
    match link.state {
        LinkState::Connected => "connected".to_owned(),
        LinkState::Connecting => match &link.last_error {
            None => "connecting".to_owned(),
            Some(error) => format!("connecting (last error: {error})"),
        },
        LinkState::Disconnected => format!("link down: {cause}"),
        LinkState::Unavailable => format!("unavailable: {cause}"),
    }
}

/// Whole seconds from `since_ms` to `now_ms`; `None` when it never happened.
pub fn age_secs(since_ms: Option<u64>, now_ms: u64) -> Option<u64> {
    since_ms.map(|since| now_ms.saturating_sub(since) / 1000)
}

/// The unit's attestation in words: the fleet's last verdict (the fleet enforces it;
/// the unit only shows it), then when it last answered a challenge and whether with a
/// quote.
pub fn attestation_in_words(answers: &warden_link::AttestationAnswers, now_ms: u64) -> String {
    let Some(at) = answers.last_answered_ms else {
        return "no challenge from the fleet yet".to_owned();
    };
    let verdict = match &answers.verdict {
        None => "no verdict from the fleet yet".to_owned(),
        Some(verdict) => {
            let ago = now_ms.saturating_sub(verdict.received_ms) / 1000;
            match (verdict.trusted, &verdict.release) {
                (true, Some(release)) => {
                    format!("trusted by the fleet (release {release}) {ago} s ago")
                }
                (true, None) => format!("trusted by the fleet {ago} s ago"),
                (false, _) => format!("NOT trusted by the fleet {ago} s ago: {}", verdict.detail),
            }
        }
    };
    let ago = now_ms.saturating_sub(at) / 1000;
    let outcome = match &answers.last_error {
        None => "answered with a quote".to_owned(),
        Some(error) => format!("not answered with a quote: {error}"),
    };
    format!(
        "{verdict}; last challenge {ago} s ago, {outcome} ({} answered since start)",
        answers.answered
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_reads_as_what_the_unit_knows() {
        let mut answers = warden_link::AttestationAnswers::default();
        assert_eq!(
            attestation_in_words(&answers, 5_000),
            "no challenge from the fleet yet"
        );
        answers.answered = 2;
        answers.last_answered_ms = Some(1_000);
        assert_eq!(
            attestation_in_words(&answers, 43_000),
            "no verdict from the fleet yet; last challenge 42 s ago, answered with a quote (2 answered since start)"
        );
        answers.verdict = Some(warden_link::FleetVerdict {
            trusted: true,
            release: Some("1.4.0".into()),
            detail: "runs release press-guardian 1.4.0".into(),
            received_ms: 2_000,
        });
        assert!(
            attestation_in_words(&answers, 43_000)
                .starts_with("trusted by the fleet (release 1.4.0) 41 s ago; last challenge")
        );
        answers.verdict = Some(warden_link::FleetVerdict {
            trusted: false,
            release: None,
            detail: "measured image 00ff is not a known release".into(),
            received_ms: 43_000,
        });
        answers.last_error = Some("pluton: no such socket".into());
        let words = attestation_in_words(&answers, 43_000);
        assert!(
            words.starts_with(
                "NOT trusted by the fleet 0 s ago: measured image 00ff is not a known release;"
            ),
            "{words}"
        );
        assert!(words.contains("not answered with a quote: pluton: no such socket"));
    }

    #[test]
    fn the_link_is_connected_in_words_only_when_it_is() {
        use warden_link::LinkState;
        let mut link = LinkStatus {
            state: LinkState::Disconnected,
            last_error: Some("connection refused (127.0.0.1:1)".into()),
            ..Default::default()
        };
        assert_eq!(
            link_in_words(&link),
            "link down: connection refused (127.0.0.1:1)"
        );
        link.state = LinkState::Unavailable;
        link.last_error = Some("fleet CA pki/fleet-ca.pem: not found".into());
        assert_eq!(
            link_in_words(&link),
            "unavailable: fleet CA pki/fleet-ca.pem: not found"
        );
        link.last_error = None;
        assert_eq!(link_in_words(&link), "unavailable: no cause reported yet");
        link.state = LinkState::Connected;
        assert_eq!(link_in_words(&link), "connected");
        assert_eq!(age_secs(None, 5_000), None);
        assert_eq!(age_secs(Some(1_000), 5_999), Some(4));
    }
}
