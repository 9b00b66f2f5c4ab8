//! The descriptor budget: `RLIMIT_NOFILE` known at start, a reserve kept, the rest shared.

use nix::sys::resource::{Resource, getrlimit};

/// The process's descriptors and how the listeners share them.
///
/// Listeners take their caps from [`DescriptorBudget::cap`], so together they never
/// use more than `limit − reserve` descriptors; the reserve stays for what must keep
/// working when every listener is full: the cloud link's connection and outbox files,
/// pluton's socket, IPC channels, logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// `RLIMIT_NOFILE` (the soft limit: what `accept` runs into).
    pub limit: u64,
    /// Kept for what is not a listener.
    pub reserve: u64,
}

impl DescriptorBudget {
    /// The budget of this process: its soft `RLIMIT_NOFILE`, `reserve` kept.
    pub fn of_this_process(reserve: u64) -> Self {
        let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        Self { limit, reserve }
    }

    /// Descriptors the listeners share.
    pub fn for_listeners(&self) -> u64 {
        self.limit.saturating_sub(self.reserve)
    }

    /// A listener's cap: `wanted`, or its `percent` of the listeners' share when that
    /// is smaller (at least 1).
    pub fn cap(&self, wanted: usize, percent: u64) -> usize {
        let share = self.for_listeners().saturating_mul(percent.min(100)) / 100;
        usize::try_from(share)
            .map_or(wanted, |share| wanted.min(share))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_shrink_with_the_limit_and_never_reach_the_reserve() {
        let small = DescriptorBudget {
            limit: 256,
            reserve: 64,
        };
        assert_eq!(small.for_listeners(), 192);
        assert_eq!(small.cap(64, 50), 64);
        assert_eq!(small.cap(128, 50), 96);
        let tiny = DescriptorBudget {
            limit: 32,
            reserve: 64,
        };
        assert_eq!(tiny.cap(64, 50), 1);
        assert!(DescriptorBudget::of_this_process(64).limit > 0);
    }
}
