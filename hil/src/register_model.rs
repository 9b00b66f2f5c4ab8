//! Register models: how a simulated register's value evolves over time.

use serde::Deserialize;

/// How one simulated register (or coil: non-zero is on) behaves.
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
    /// The number of times a client has read it: 1 at the first read, 2 at the second
    /// (wrapping at 65535). Every reading is unique, so an end-to-end test can tell
    /// each one lost or duplicated on its way (the fault suite's "produced" count).
    ReadCount,
    /// `center + amplitude × sin(2π t / period_ms)`, rounded and clamped to 0..=65535.
    Sine {
        /// Middle value.
        center: f64,
        /// Peak deviation from the middle.
        amplitude: f64,
        /// Milliseconds per full cycle.
        period_ms: u64,
    },
    /// Moves up or down by at most `step` every `period_ms`, staying in `min..=max`;
    /// deterministic for a given `seed`.
    RandomWalk {
        /// First value.
        start: u16,
        /// Largest move per period.
        step: u16,
        /// Lowest value.
        min: u16,
        /// Highest value.
        max: u16,
        /// Milliseconds per move.
        period_ms: u64,
        /// Seed of the walk.
        #[serde(default)]
        seed: u64,
    },
}

/// A register model with the state it needs to be evaluated cheaply as time goes on.
#[derive(Debug, Clone)]
pub struct RegisterSource {
    model: RegisterModel,
    walk: Option<Walk>,
    reads: u64,
}

#[derive(Debug, Clone)]
struct Walk {
    steps: u64,
    value: u16,
    rng: u64,
}

impl RegisterSource {
    /// A source for `model`.
    pub fn new(model: RegisterModel) -> Self {
        let walk = match model {
            RegisterModel::RandomWalk { start, seed, .. } => Some(Walk {
                steps: 0,
                value: start,
                rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            }),
            _ => None,
        };
        Self {
            model,
            walk,
            reads: 0,
        }
    }

    /// The value a client reading the register now receives: like
    /// [`Self::value_at`], but a [`RegisterModel::ReadCount`] register counts the read.
    pub fn read_at(&mut self, elapsed_ms: u64) -> u16 {
        self.reads += 1;
        self.value_at(elapsed_ms)
    }

    /// Reads served so far through [`Self::read_at`] (counted for every model).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The value `elapsed_ms` after the simulator started. Times must not go backwards
    /// for random walks (they are clamped if they do).
    pub fn value_at(&mut self, elapsed_ms: u64) -> u16 {
        match (&self.model, &mut self.walk) {
            (
                RegisterModel::RandomWalk {
                    step,
                    min,
                    max,
                    period_ms,
                    ..
                },
                Some(walk),
            ) => {
                let target = elapsed_ms / (*period_ms).max(1);
                while walk.steps < target {
                    walk.rng = xorshift(walk.rng);
                    let span = u64::from(*step) * 2 + 1;
                    let delta = (walk.rng % span) as i64 - i64::from(*step);
                    let next = (i64::from(walk.value) + delta)
                        .clamp(i64::from(*min), i64::from((*max).max(*min)));
                    walk.value = next as u16;
                    walk.steps += 1;
                }
                walk.value
            }
            (RegisterModel::ReadCount, _) => self.reads as u16,
            (model, _) => model.value_at(elapsed_ms),
        }
    }
}

/// One step of the xorshift64 generator (never returns 0 for a non-zero input).
pub fn xorshift(mut x: u64) -> u64 {
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

impl RegisterModel {
    /// The register's value `elapsed_ms` after the simulator started (random walks
    /// need a [`RegisterSource`]; here they return their start value).
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
            Self::Sine {
                center,
                amplitude,
                period_ms,
            } => {
                let phase = (elapsed_ms % period_ms.max(1)) as f64 / period_ms.max(1) as f64;
                let value = center + amplitude * (phase * std::f64::consts::TAU).sin();
                value.round().clamp(0.0, 65_535.0) as u16
            }
            Self::RandomWalk { start, .. } => start,
            Self::ReadCount => 0,
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

    #[test]
    fn read_count_counts_reads_not_peeks() {
        let mut source = RegisterSource::new(RegisterModel::ReadCount);
        assert_eq!(source.value_at(5), 0);
        let reads: Vec<u16> = (0..3).map(|t| source.read_at(t)).collect();
        assert_eq!(reads, vec![1, 2, 3]);
        assert_eq!(source.value_at(10), 3, "peeking is not a read");
        assert_eq!(source.reads(), 3);
    }

    #[test]
    fn sine_swings_around_its_center() {
        let sine = RegisterModel::Sine {
            center: 1000.0,
            amplitude: 100.0,
            period_ms: 4000,
        };
        assert_eq!(sine.value_at(0), 1000);
        assert_eq!(sine.value_at(1000), 1100);
        assert_eq!(sine.value_at(3000), 900);
    }

    #[test]
    fn random_walk_is_bounded_and_repeatable() {
        let model = RegisterModel::RandomWalk {
            start: 50,
            step: 5,
            min: 40,
            max: 60,
            period_ms: 10,
            seed: 7,
        };
        let mut a = RegisterSource::new(model.clone());
        let mut b = RegisterSource::new(model);
        let mut moved = false;
        for t in (0..10_000).step_by(37) {
            let value = a.value_at(t);
            assert!((40..=60).contains(&value));
            assert_eq!(value, b.value_at(t));
            moved |= value != 50;
        }
        assert!(moved);
    }
}
