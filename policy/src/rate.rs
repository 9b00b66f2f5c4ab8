//! Rate-limit buckets (GCRA, one `u64` each) in caller-provided storage.

use crate::tables::{PolicyTables, RateLimit};

/// Rate-limit state for one policy: one `u64` bucket per slot the tables ask for.
///
/// Storage is the caller's: `RateState::<[u64; 1024]>::new()` on the device,
/// `RateState::for_tables(&tables)` (a `Vec`) with `std`, or any `AsMut<[u64]>`. The
/// state binds itself to the tables' fingerprint and clears itself when it sees
/// another policy, so applying a new bundle never reuses old buckets.
#[derive(Clone, Debug)]
pub struct RateState<S> {
    slots: S,
    fingerprint: Option<u64>,
}

impl<const N: usize> RateState<[u64; N]> {
    /// Fixed storage of `N` buckets.
    pub const fn new() -> Self {
        RateState {
            slots: [0; N],
            fingerprint: None,
        }
    }
}

impl<const N: usize> Default for RateState<[u64; N]> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl RateState<Vec<u64>> {
    /// Heap storage sized for `tables`.
    pub fn for_tables(tables: &PolicyTables<'_>) -> Self {
        RateState {
            slots: vec![0; tables.rate_slots as usize],
            fingerprint: None,
        }
    }
}

impl<S: AsMut<[u64]>> RateState<S> {
    /// State over caller storage (e.g. `&mut [u64]`).
    pub fn from_storage(slots: S) -> Self {
        RateState {
            slots,
            fingerprint: None,
        }
    }

    /// Forgets every bucket (all limits start full).
    pub fn reset(&mut self) {
        self.slots.as_mut().fill(0);
        self.fingerprint = None;
    }

    /// The buckets for `tables`, cleared first if they belonged to another policy.
    pub(crate) fn bind(&mut self, tables: &PolicyTables<'_>) -> &mut [u64] {
        if self.fingerprint != Some(tables.fingerprint) {
            self.slots.as_mut().fill(0);
            self.fingerprint = Some(tables.fingerprint);
        }
        self.slots.as_mut()
    }
}

/// GCRA with time scaled by the limit's count, so that `count` events per
/// `period_ms` is exact in integers: the bucket holds the theoretical arrival time
/// in units of ms/count. Equivalent to a token bucket of capacity `count`, refilled
/// at `count` per `period_ms`, starting full.
///
/// Returns the new bucket value if one more event is allowed at `now_ms`.
#[inline]
pub(crate) fn gcra_take(limit: RateLimit, bucket: u64, now_ms: u64) -> Option<u64> {
    let count = u64::from(limit.count);
    let period = u64::from(limit.period_ms);
    let now = now_ms.saturating_mul(count);
    let start = if bucket > now { bucket } else { now };
    let next = start.saturating_add(period);
    if next <= now.saturating_add(count.saturating_mul(period)) {
        Some(next)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let limit = RateLimit {
            count: 3,
            period_ms: 3_000,
        };
        let mut bucket = 0;
        for _ in 0..3 {
            bucket = gcra_take(limit, bucket, 1_000).expect("burst of three");
        }
        assert!(gcra_take(limit, bucket, 1_000).is_none());
        assert!(gcra_take(limit, bucket, 1_999).is_none());
        bucket = gcra_take(limit, bucket, 2_000).expect("one token back after 1 s");
        assert!(gcra_take(limit, bucket, 2_000).is_none());
    }

    #[test]
    fn state_clears_on_another_policy() {
        let mut state = RateState::<[u64; 2]>::new();
        let a = PolicyTables {
            fingerprint: 1,
            ..empty()
        };
        state.bind(&a)[0] = 42;
        assert_eq!(state.bind(&a)[0], 42);
        let b = PolicyTables {
            fingerprint: 2,
            ..empty()
        };
        assert_eq!(state.bind(&b)[0], 0);
    }

    fn empty() -> PolicyTables<'static> {
        PolicyTables {
            format: crate::tables::TABLES_FORMAT,
            names: "",
            bridges: &[],
            compartments: &[],
            rules: &[],
            values: &[],
            modbus_groups: &[],
            modbus_segments: &[],
            unit_limits: &[],
            ble_rules: &[],
            connect_rules: &[],
            listen_rules: &[],
            rate_slots: 2,
            fingerprint: 0,
        }
    }
}
