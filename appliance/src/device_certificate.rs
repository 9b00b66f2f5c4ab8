//! The device certificate's validity, for the status page and `warden status`.
//!
//! A few lines of DER walking (`warden_link::certificate_fields`, which `config_check`
//! reads the common name with too) rather than an X.509 crate, which would cost the
//! shipped binary its size budget. The link's TLS stack is what verifies certificates;
//! this only reads when it expires.

use std::path::Path;

use warden_link::agent::{CertificateRenewalStatus, RenewalState};
use warden_link::validity::{CertificateStanding, utc_text};

use crate::state::unit_facts::CertificateView;

/// `(not_before, not_after)` of a DER X.509 certificate, seconds since the epoch (the
/// DER walk is the link's, which reads it to know when to renew).
pub use warden_link::certificate_fields::validity;

/// The certificate the link connects with, as the link read it: after a renewal over
/// the link that is the renewed one (in the link's own state), not `link.device_cert`.
/// `None` until the link has read one.
pub fn link_certificate_view(link: &CertificateRenewalStatus) -> Option<CertificateView> {
    let (not_before_ms, not_after_ms) = (link.not_before_ms?, link.not_after_ms?);
    Some(CertificateView {
        not_before: utc_text(not_before_ms / 1000),
        not_after: utc_text(not_after_ms / 1000),
        not_after_ms,
        standing: link.standing.clone()?,
        ..CertificateView::default()
    })
}

/// The certificate as the status page shows it at `now_ms`: the link role's reading
/// (the certificate in use, renewed or not, which the link can read where the page's
/// compartment cannot), else `unit`'s (read from `link.device_cert` by whoever may);
/// with the days left and the renewal's state from the link.
pub fn page_certificate_view(
    link: &CertificateRenewalStatus,
    unit: Option<CertificateView>,
    now_ms: u64,
) -> Option<CertificateView> {
    let mut view = link_certificate_view(link).or(unit)?;
    if view.error.is_none() {
        let now_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        view.days_left = Some((view.not_after_ms.saturating_sub(now_ms) / 86_400_000).max(0));
    }
    if link.state != RenewalState::Idle {
        let state = serde_json::to_value(link.state)
            .ok()
            .and_then(|state| state.as_str().map(str::to_owned))
            .unwrap_or_default();
        view.renewal = Some(match &link.detail {
            Some(detail) => format!("{state}: {detail}"),
            None => state,
        });
    }
    Some(view)
}

/// The certificate in the PEM file at `path` as the page shows it, at `now` (seconds).
pub fn certificate_view(path: &Path, now: i64) -> CertificateView {
    let failed = |error: String| CertificateView {
        error: Some(format!("{}: {error}", path.display())),
        ..CertificateView::default()
    };
    let chain = match warden_link::tls::load_certificates(path) {
        Ok(chain) => chain,
        Err(error) => return failed(error.to_string()),
    };
    let Some((not_before, not_after)) = chain.first().and_then(|der| validity(der)) else {
        return failed("the certificate's validity does not parse".to_owned());
    };
    CertificateView {
        not_before: utc_text(not_before),
        not_after: utc_text(not_after),
        not_after_ms: not_after.saturating_mul(1000),
        standing: CertificateStanding::at(not_before, not_after, now)
            .as_str()
            .to_owned(),
        ..CertificateView::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validity_of_a_certificate_reads_back_to_the_second() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["wd-1".to_owned()]).expect("params");
        // 2024-02-29 12:00:00 UTC (UTCTime) to 2051-03-01 00:00:05 UTC (GeneralizedTime).
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_208_000);
        let end = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_561_241_605);
        params.not_before = start.into();
        params.not_after = end.into();
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(validity(cert.der()), Some((1_709_208_000, 2_561_241_605)));
        assert_eq!(validity(&cert.der()[..40]), None, "truncated");
    }

    /// A compartmented unit: the page cannot read the certificate file (its facts
    /// name the error), the link role's status frame carries the certificate in use.
    #[test]
    fn the_page_shows_the_link_roles_certificate_with_days_left_and_renewal() {
        let day_ms: i64 = 86_400_000;
        let now_ms: i64 = 1_780_272_000_000;
        let link = CertificateRenewalStatus {
            in_use: Some("/var/lib/warden/device.pem".into()),
            not_before_ms: Some(now_ms - 300 * day_ms),
            not_after_ms: Some(now_ms + 65 * day_ms + 1000),
            standing: Some("valid".into()),
            state: RenewalState::Requested,
            detail: Some("a renewal request went to the fleet".into()),
            ..CertificateRenewalStatus::default()
        };
        let unreadable = CertificateView {
            error: Some("/var/lib/warden/device.pem: permission denied".into()),
            ..CertificateView::default()
        };
        let view =
            page_certificate_view(&link, Some(unreadable.clone()), now_ms as u64).expect("a view");
        assert_eq!(view.error, None, "the link's reading wins over the page's");
        assert_eq!(
            view.not_after,
            utc_text((now_ms + 65 * day_ms + 1000) / 1000)
        );
        assert_eq!(view.standing, "valid");
        assert_eq!(view.days_left, Some(65));
        assert_eq!(
            view.renewal.as_deref(),
            Some("requested: a renewal request went to the fleet")
        );
        // Expired: no negative days; idle renewal says nothing.
        let expired = CertificateRenewalStatus {
            not_before_ms: Some(now_ms - 400 * day_ms),
            not_after_ms: Some(now_ms - day_ms),
            standing: Some("expired".into()),
            ..CertificateRenewalStatus::default()
        };
        let view = page_certificate_view(&expired, None, now_ms as u64).expect("a view");
        assert_eq!((view.days_left, view.renewal), (Some(0), None));
        // Before the link read one, the unit's facts stand (an error stays an error).
        let view = page_certificate_view(
            &CertificateRenewalStatus::default(),
            Some(unreadable),
            now_ms as u64,
        )
        .expect("the facts' view");
        assert!(view.error.is_some() && view.days_left.is_none(), "{view:?}");
        assert_eq!(
            page_certificate_view(&CertificateRenewalStatus::default(), None, 0),
            None
        );
    }

    #[test]
    fn the_page_shows_the_end_of_validity_and_the_standing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["wd-1".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        let path = dir.path().join("device.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        // 2026-06-01: valid; 2026-11-01: under a third left; 2027-02-01: expired.
        let view = certificate_view(&path, 1_780_272_000);
        assert_eq!(view.not_after, "2027-01-01 00:00:00 UTC");
        assert_eq!(view.standing, "valid");
        assert_eq!(
            certificate_view(&path, 1_793_491_200).standing,
            "renewal-due"
        );
        assert_eq!(certificate_view(&path, 1_801_440_000).standing, "expired");
        let missing = certificate_view(&dir.path().join("none.pem"), 0);
        assert!(
            missing
                .error
                .as_deref()
                .is_some_and(|e| e.contains("none.pem")),
            "{missing:?}"
        );
    }
}
