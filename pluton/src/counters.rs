//! Monotonic anti-rollback counters: they only ever increase, and are persisted.

use serde::{Deserialize, Serialize};

use crate::PlutonError;

/// Number of monotonic counters.
pub const COUNTER_COUNT: usize = 8;

/// The monotonic counters. The software backend persists them (fsync + atomic rename)
/// before an advance is acknowledged, so an acknowledged value survives any crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MonotonicCounters {
    values: [u64; COUNTER_COUNT],
}

impl MonotonicCounters {
    /// The current values.
    pub fn values(&self) -> &[u64; COUNTER_COUNT] {
        &self.values
    }

    /// The counters with counter `index` advanced to `value`: equal is a no-op, lower is
    /// refused. The receiver is unchanged, so the caller persists before committing.
    pub fn advanced(&self, index: u8, value: u64) -> Result<Self, PlutonError> {
        let current = *self
            .values
            .get(usize::from(index))
            .ok_or(PlutonError::InvalidCounter)?;
        if value < current {
            return Err(PlutonError::CounterWouldDecrease);
        }
        let mut next = *self;
        next.values[usize::from(index)] = value;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_never_decrease() {
        let counters = MonotonicCounters::default();
        let counters = counters.advanced(3, 5).expect("advance");
        assert_eq!(counters.values()[3], 5);
        assert_eq!(
            counters.advanced(3, 4),
            Err(PlutonError::CounterWouldDecrease)
        );
        assert_eq!(counters.advanced(3, 5).map(|c| c.values()[3]), Ok(5));
        assert_eq!(
            counters.advanced(3, u64::MAX).map(|c| c.values()[3]),
            Ok(u64::MAX)
        );
        assert_eq!(counters.advanced(8, 1), Err(PlutonError::InvalidCounter));
    }
}
