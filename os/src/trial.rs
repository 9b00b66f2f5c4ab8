//! The trial health check (sans-IO): confirm when healthy, roll back at the deadline.

use std::time::Duration;

/// What a trial image must show, and by when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckPolicy {
    /// N: how long after the trial boot the image has to become healthy.
    pub deadline: Duration,
    /// Require the cloud link to be up.
    pub require_link: bool,
    /// Require every bridge to report healthy.
    pub require_bridges: bool,
}

impl Default for HealthCheckPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(300),
            require_link: true,
            require_bridges: true,
        }
    }
}

/// One observation of the running image's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// The cloud link is connected.
    pub link_up: bool,
    /// Every configured bridge is healthy.
    pub bridges_healthy: bool,
}

/// What to do after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialVerdict {
    /// Not healthy yet; keep waiting at most this long.
    Waiting {
        /// Time left before the deadline.
        remaining: Duration,
    },
    /// Healthy within the deadline: confirm the slot.
    Confirm,
    /// The deadline passed without a healthy observation: roll back.
    TimedOut,
}

/// Decides a trial from health observations; time is passed in (time since trial boot).
#[derive(Debug, Clone, Copy)]
pub struct TrialHealthCheck {
    policy: HealthCheckPolicy,
    decided: Option<TrialVerdict>,
}

impl TrialHealthCheck {
    /// A check under `policy`.
    pub fn new(policy: HealthCheckPolicy) -> Self {
        Self {
            policy,
            decided: None,
        }
    }

    /// Observe `report` at `elapsed` since the trial boot. Once `Confirm` or `TimedOut`
    /// is returned, the verdict is final.
    pub fn observe(&mut self, elapsed: Duration, report: HealthReport) -> TrialVerdict {
        if let Some(verdict) = self.decided {
            return verdict;
        }
        let healthy = (report.link_up || !self.policy.require_link)
            && (report.bridges_healthy || !self.policy.require_bridges);
        let verdict = if elapsed > self.policy.deadline {
            TrialVerdict::TimedOut
        } else if healthy {
            TrialVerdict::Confirm
        } else {
            return TrialVerdict::Waiting {
                remaining: self.policy.deadline - elapsed,
            };
        };
        self.decided = Some(verdict);
        verdict
    }

    /// The verdict when no observation arrives by `elapsed` (a timer tick).
    pub fn tick(&mut self, elapsed: Duration) -> TrialVerdict {
        self.observe(elapsed, HealthReport::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: HealthReport = HealthReport {
        link_up: true,
        bridges_healthy: true,
    };

    #[test]
    fn healthy_within_the_deadline_confirms() {
        let mut check = TrialHealthCheck::new(HealthCheckPolicy {
            deadline: Duration::from_secs(60),
            ..HealthCheckPolicy::default()
        });
        let link_only = HealthReport {
            link_up: true,
            bridges_healthy: false,
        };
        assert_eq!(
            check.observe(Duration::from_secs(10), link_only),
            TrialVerdict::Waiting {
                remaining: Duration::from_secs(50)
            }
        );
        assert_eq!(
            check.observe(Duration::from_secs(59), HEALTHY),
            TrialVerdict::Confirm
        );
        assert_eq!(check.tick(Duration::from_secs(600)), TrialVerdict::Confirm);
    }

    #[test]
    fn no_health_by_the_deadline_times_out_for_good() {
        let mut check = TrialHealthCheck::new(HealthCheckPolicy {
            deadline: Duration::from_secs(60),
            ..HealthCheckPolicy::default()
        });
        assert!(matches!(
            check.tick(Duration::from_secs(30)),
            TrialVerdict::Waiting { .. }
        ));
        assert_eq!(check.tick(Duration::from_secs(61)), TrialVerdict::TimedOut);
        assert_eq!(
            check.observe(Duration::from_secs(62), HEALTHY),
            TrialVerdict::TimedOut
        );
    }

    #[test]
    fn requirements_are_configurable() {
        let mut check = TrialHealthCheck::new(HealthCheckPolicy {
            deadline: Duration::from_secs(5),
            require_link: false,
            require_bridges: true,
        });
        let bridges_only = HealthReport {
            link_up: false,
            bridges_healthy: true,
        };
        assert_eq!(
            check.observe(Duration::from_secs(1), bridges_only),
            TrialVerdict::Confirm
        );
    }
}
