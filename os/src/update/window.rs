//! When an update may be installed (sans-IO): fleet windows, operator deferral, and
//! application vetoes. Time is passed in as Unix seconds (UTC).

use std::collections::BTreeMap;

const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// A weekly maintenance window set by the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Days it opens on: bit 0 = Monday … bit 6 = Sunday.
    pub weekdays: u8,
    /// Opening time, minutes after 00:00 UTC.
    pub start_minute: u16,
    /// How long it stays open, in minutes (may cross midnight).
    pub duration_minutes: u16,
}

impl MaintenanceWindow {
    /// Opening times (Unix seconds) of this window that could contain or follow `now`.
    fn openings_around(&self, now: u64) -> impl Iterator<Item = u64> + '_ {
        let today = now - now % DAY;
        (0..9u64).filter_map(move |offset| {
            // Start from yesterday so a window that crossed midnight is found.
            let day = (today + offset * DAY).checked_sub(DAY)?;
            // 1970-01-01 was a Thursday (index 3 with Monday = 0).
            let weekday = ((day / DAY + 3) % 7) as u8;
            (self.weekdays & (1 << weekday) != 0).then_some(day + u64::from(self.start_minute) * 60)
        })
    }

    fn contains(&self, now: u64) -> bool {
        self.openings_around(now)
            .any(|open| open <= now && now < open + u64::from(self.duration_minutes) * 60)
    }

    fn next_opening(&self, now: u64) -> Option<u64> {
        self.openings_around(now).find(|open| *open > now)
    }
}

/// May the update be installed now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowDecision {
    /// Yes.
    InstallNow,
    /// Outside every maintenance window; the next opens at this time.
    OutsideWindow {
        /// Unix seconds.
        opens_at: u64,
    },
    /// The operator deferred updates until this time.
    Deferred {
        /// Unix seconds.
        until: u64,
    },
    /// The running application vetoed (its equipment is not in a safe state).
    Vetoed {
        /// Who vetoed.
        by: String,
        /// Why.
        reason: String,
    },
}

/// The update-window policy: fleet windows, operator deferral, application vetoes.
///
/// The order of precedence is veto, then deferral, then windows: an application that
/// says its equipment is not safe always wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateWindowPolicy {
    windows: Vec<MaintenanceWindow>,
    deferred_until: Option<u64>,
    vetoes: BTreeMap<String, String>,
}

impl UpdateWindowPolicy {
    /// No windows configured means any time.
    pub fn new(windows: Vec<MaintenanceWindow>) -> Self {
        Self {
            windows,
            ..Self::default()
        }
    }

    /// The fleet replaces the windows.
    pub fn set_windows(&mut self, windows: Vec<MaintenanceWindow>) {
        self.windows = windows;
    }

    /// The operator defers updates until `until` (a later deferral replaces it).
    pub fn defer_until(&mut self, until: u64) {
        self.deferred_until = Some(until);
    }

    /// The operator lifts the deferral.
    pub fn clear_deferral(&mut self) {
        self.deferred_until = None;
    }

    /// An application vetoes until it lifts its veto.
    pub fn veto(&mut self, by: &str, reason: &str) {
        self.vetoes.insert(by.to_owned(), reason.to_owned());
    }

    /// An application lifts its veto.
    pub fn lift_veto(&mut self, by: &str) {
        self.vetoes.remove(by);
    }

    /// The decision at `now` (Unix seconds).
    pub fn decide(&self, now: u64) -> WindowDecision {
        if let Some((by, reason)) = self.vetoes.iter().next() {
            return WindowDecision::Vetoed {
                by: by.clone(),
                reason: reason.clone(),
            };
        }
        if let Some(until) = self.deferred_until.filter(|until| now < *until) {
            return WindowDecision::Deferred { until };
        }
        if self.windows.is_empty() || self.windows.iter().any(|window| window.contains(now)) {
            return WindowDecision::InstallNow;
        }
        let opens_at = self
            .windows
            .iter()
            .filter_map(|window| window.next_opening(now))
            .min()
            .unwrap_or(now + WEEK);
        WindowDecision::OutsideWindow { opens_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-02 00:00:00 UTC, a Monday.
    const MONDAY: u64 = 1_793_577_600;

    fn nightly_weekdays() -> MaintenanceWindow {
        MaintenanceWindow {
            weekdays: 0b001_1111,
            start_minute: 23 * 60,
            duration_minutes: 120,
        }
    }

    #[test]
    fn monday_constant_is_a_monday() {
        assert_eq!((MONDAY / DAY + 3) % 7, 0);
    }

    #[test]
    fn windows_open_and_cross_midnight() {
        let policy = UpdateWindowPolicy::new(vec![nightly_weekdays()]);
        assert_eq!(
            policy.decide(MONDAY + 12 * 3600),
            WindowDecision::OutsideWindow {
                opens_at: MONDAY + 23 * 3600
            }
        );
        assert_eq!(
            policy.decide(MONDAY + 23 * 3600),
            WindowDecision::InstallNow
        );
        // 00:30 Tuesday is inside Monday's window.
        assert_eq!(
            policy.decide(MONDAY + DAY + 1800),
            WindowDecision::InstallNow
        );
        assert!(matches!(
            policy.decide(MONDAY + DAY + 3 * 3600),
            WindowDecision::OutsideWindow { .. }
        ));
        // Saturday noon: the next window is Monday 23:00.
        assert_eq!(
            policy.decide(MONDAY + 5 * DAY + 12 * 3600),
            WindowDecision::OutsideWindow {
                opens_at: MONDAY + 7 * DAY + 23 * 3600
            }
        );
    }

    #[test]
    fn veto_beats_deferral_beats_window() {
        let mut policy = UpdateWindowPolicy::default();
        assert_eq!(policy.decide(MONDAY), WindowDecision::InstallNow);
        policy.defer_until(MONDAY + 3600);
        assert_eq!(
            policy.decide(MONDAY),
            WindowDecision::Deferred {
                until: MONDAY + 3600
            }
        );
        assert_eq!(policy.decide(MONDAY + 3600), WindowDecision::InstallNow);
        policy.veto("press-1", "die closing");
        assert_eq!(
            policy.decide(MONDAY + 7200),
            WindowDecision::Vetoed {
                by: "press-1".into(),
                reason: "die closing".into()
            }
        );
        policy.lift_veto("press-1");
        assert_eq!(policy.decide(MONDAY + 7200), WindowDecision::InstallNow);
    }
}
