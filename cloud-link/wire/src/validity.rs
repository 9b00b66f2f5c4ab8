//! Validity periods of the certificates the fleet (`warden-fleet init`) and the station
//! (`warden-provision ca init`, device certificates) issue: from the start of the day
//! an hour ago, for a real span, never rcgen's 1975–4096 default. One place for both
//! issuers, and for the device certificates' default validity and renewal threshold
//! (the setters need the `validity` feature; the rest is plain arithmetic).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "validity")]
use rcgen::CertificateParams;

/// Days a device certificate is valid unless the product says otherwise (the
/// station's `device_certificate_days`).
pub const DEFAULT_DEVICE_CERTIFICATE_DAYS: u32 = 365;

/// Longest validity a product may give its device certificates (10 years): a stolen
/// certificate must age out within a unit's service life.
pub const MAX_DEVICE_CERTIFICATE_DAYS: u32 = 3650;

/// Valid from the start of the day an hour before `now` (a peer whose clock is a
/// little behind) for `valid`.
#[cfg(feature = "validity")]
pub fn set_validity(params: &mut CertificateParams, now: SystemTime, valid: Duration) {
    let start = start_of_validity(now);
    let (year, month, day) = civil_date(start);
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = civil_date(start + valid);
    params.not_after = rcgen::date_time_ymd(year, month, day);
}

/// Valid from the start of the day an hour before `now` until 1 January of the year
/// `years` after it (a CA: whole years are easier to plan a rollover by).
#[cfg(feature = "validity")]
pub fn set_validity_years(params: &mut CertificateParams, now: SystemTime, years: i32) {
    set_validity(params, now, Duration::ZERO);
    let (year, _, _) = civil_date(start_of_validity(now));
    params.not_after = rcgen::date_time_ymd(year.saturating_add(years), 1, 1);
}

/// Where a device certificate stands at a moment (all times in seconds since the
/// Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStanding {
    /// Not valid before `not_before`.
    NotValidYet,
    /// Valid, with more than a third of its validity left.
    Valid,
    /// Valid, with less than a third of its validity left: time to renew it.
    RenewalDue,
    /// Past `not_after`: the fleet refuses it.
    Expired,
}

impl CertificateStanding {
    /// Where a certificate valid from `not_before` to `not_after` stands at `now`.
    /// Renewal is due once less than a third of the validity remains (a year's
    /// certificate: its last four months), which leaves months of retries before expiry.
    pub fn at(not_before: i64, not_after: i64, now: i64) -> Self {
        if now < not_before {
            Self::NotValidYet
        } else if now > not_after {
            Self::Expired
        } else if not_after.saturating_sub(now).saturating_mul(3)
            < not_after.saturating_sub(not_before)
        {
            Self::RenewalDue
        } else {
            Self::Valid
        }
    }

    /// Its name in the fleet's API and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotValidYet => "not-valid-yet",
            Self::Valid => "valid",
            Self::RenewalDue => "renewal-due",
            Self::Expired => "expired",
        }
    }
}

/// `seconds` since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`, for messages.
pub fn utc_text(seconds: i64) -> String {
    let clamped = u64::try_from(seconds).unwrap_or(0);
    let (year, month, day) = civil_date(UNIX_EPOCH + Duration::from_secs(clamped));
    let of_day = clamped % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(feature = "validity")]
fn start_of_validity(now: SystemTime) -> SystemTime {
    now.checked_sub(Duration::from_secs(3600))
        .unwrap_or(UNIX_EPOCH)
}

/// `(year, month, day)` of `time` in UTC (Howard Hinnant's days-to-civil).
pub fn civil_date(time: SystemTime) -> (i32, u8, u8) {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_date(UNIX_EPOCH), (1970, 1, 1));
        // 2024-02-29 (a leap day) 12:00 UTC.
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_208_000);
        assert_eq!(civil_date(leap), (2024, 2, 29));
        let later = UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        assert_eq!(civil_date(later), (2026, 12, 1));
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_validity() {
        let (start, end) = (1_000, 1_000 + 300 * 86_400);
        assert_eq!(
            CertificateStanding::at(start, end, 0),
            CertificateStanding::NotValidYet
        );
        assert_eq!(
            CertificateStanding::at(start, end, start),
            CertificateStanding::Valid
        );
        // 101 days left of 300: not yet; 99 days left: due.
        let due_from = end - 100 * 86_400;
        assert_eq!(
            CertificateStanding::at(start, end, due_from - 86_400),
            CertificateStanding::Valid
        );
        assert_eq!(
            CertificateStanding::at(start, end, due_from + 86_400),
            CertificateStanding::RenewalDue
        );
        assert_eq!(
            CertificateStanding::at(start, end, end),
            CertificateStanding::RenewalDue
        );
        assert_eq!(
            CertificateStanding::at(start, end, end + 1),
            CertificateStanding::Expired
        );
        assert_eq!(CertificateStanding::Expired.as_str(), "expired");
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(1_709_208_000 + 3723), "2024-02-29 13:02:03 UTC");
    }

    #[cfg(feature = "validity")]
    #[test]
    fn years_end_on_the_first_of_january() {
        let mut params = CertificateParams::default();
        // 2026-12-01 00:30 UTC: an hour earlier is still 30 November.
        let now = UNIX_EPOCH + Duration::from_secs(1_796_083_200 + 1800);
        set_validity_years(&mut params, now, 10);
        assert_eq!(params.not_before, rcgen::date_time_ymd(2026, 11, 30));
        assert_eq!(params.not_after, rcgen::date_time_ymd(2036, 1, 1));
    }
}
