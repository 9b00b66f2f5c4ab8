//! Validity periods of the certificates the fleet (`warden-fleet init`) and the station
//! (`warden-provision ca init`) issue: from the start of the day an hour ago, for a
//! real span, never rcgen's 1975–4096 default. One place for both issuers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::CertificateParams;

/// Valid from the start of the day an hour before `now` (a peer whose clock is a
/// little behind) for `valid`.
pub fn set_validity(params: &mut CertificateParams, now: SystemTime, valid: Duration) {
    let start = start_of_validity(now);
    let (year, month, day) = civil_date(start);
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = civil_date(start + valid);
    params.not_after = rcgen::date_time_ymd(year, month, day);
}

/// Valid from the start of the day an hour before `now` until 1 January of the year
/// `years` after it (a CA: whole years are easier to plan a rollover by).
pub fn set_validity_years(params: &mut CertificateParams, now: SystemTime, years: i32) {
    set_validity(params, now, Duration::ZERO);
    let (year, _, _) = civil_date(start_of_validity(now));
    params.not_after = rcgen::date_time_ymd(year.saturating_add(years), 1, 1);
}

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
    fn years_end_on_the_first_of_january() {
        let mut params = CertificateParams::default();
        // 2026-12-01 00:30 UTC: an hour earlier is still 30 November.
        let now = UNIX_EPOCH + Duration::from_secs(1_796_083_200 + 1800);
        set_validity_years(&mut params, now, 10);
        assert_eq!(params.not_before, rcgen::date_time_ymd(2026, 11, 30));
        assert_eq!(params.not_after, rcgen::date_time_ymd(2036, 1, 1));
    }
}
