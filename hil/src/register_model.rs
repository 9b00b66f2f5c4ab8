//! Register models: how a simulated register's value evolves over time.

use serde::Deserialize;

/// How one simulated register behaves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegisterModel {
    /// Always the same value.
    Constant {
        /// The value.
        value: u16,
    },
    /// Climbs from `from` to `to` by `step` per `period_ms`, then starts again.
    Ramp {
        /// First value.
        from: u16,
        /// Last value before wrapping back to `from`.
        to: u16,
        /// Increment per period.
        step: u16,
        /// Milliseconds per step.
        period_ms: u64,
    },
    /// Counts up by one per `period_ms`, wrapping at 65535.
    Counter {
        /// Milliseconds per increment.
        period_ms: u64,
    },
}

impl RegisterModel {
    /// The register's value `elapsed_ms` after the simulator started.
    pub fn value_at(&self, elapsed_ms: u64) -> u16 {
        match *self {
            Self::Constant { value } => value,
            Self::Ramp {
                from,
                to,
                step,
                period_ms,
            } => {
                let span = u64::from(to.saturating_sub(from));
                let steps_per_cycle = span / u64::from(step.max(1)) + 1;
                let step_index = (elapsed_ms / period_ms.max(1)) % steps_per_cycle;
                from.saturating_add((step_index * u64::from(step.max(1))) as u16)
            }
            Self::Counter { period_ms } => (elapsed_ms / period_ms.max(1)) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_climbs_and_wraps() {
        let ramp = RegisterModel::Ramp {
            from: 200,
            to: 230,
            step: 10,
            period_ms: 1000,
        };
        let values: Vec<u16> = (0..6).map(|s| ramp.value_at(s * 1000 + 1)).collect();
        assert_eq!(values, vec![200, 210, 220, 230, 200, 210]);
    }

    #[test]
    fn counter_wraps_at_u16() {
        let counter = RegisterModel::Counter { period_ms: 1 };
        assert_eq!(counter.value_at(65_535), 65_535);
        assert_eq!(counter.value_at(65_536), 0);
    }
}
