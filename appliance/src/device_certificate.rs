//! The device certificate's validity, for the status page and `warden status`.
//!
//! A few lines of DER walking (as `config_check` reads the common name) rather than an
//! X.509 crate, which would cost the shipped binary its size budget. The link's TLS
//! stack is what verifies certificates; this only reads when it expires.

use std::path::Path;

use warden_link::validity::{CertificateStanding, utc_text};

use crate::config_check::{der_element, tbs_field};
use crate::state::unit_facts::CertificateView;

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `(not_before, not_after)` of a DER X.509 certificate, seconds since the epoch.
pub fn validity(certificate: &[u8]) -> Option<(i64, i64)> {
    // serialNumber, signature, issuer, validity.
    let (tag, validity) = tbs_field(certificate, 3)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, not_before, rest) = der_element(validity)?;
    let not_before = asn1_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    Some((not_before, asn1_time(tag, not_after)?))
}

/// A UTCTime (`YYMMDDhhmmssZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDhhmmssZ`) as seconds since the epoch.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.is_ascii() {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let short: i64 = text[..2].parse().ok()?;
            (
                if short < 50 {
                    2000 + short
                } else {
                    1900 + short
                },
                &text[2..],
            )
        }
        (GENERALIZED_TIME, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |at: usize| -> Option<i64> { rest.get(at..at + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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
        error: None,
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
        // Digits only: a multi-byte character where a digit belongs is no time.
        assert_eq!(asn1_time(UTC_TIME, "2é0101000000Z".as_bytes()), None);
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
