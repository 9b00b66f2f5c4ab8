//! A fair request queue across the unit IDs of one line, with per-unit backoff.
//!
//! Sans-IO: time is passed in. Units take turns round-robin; a unit that keeps failing
//! backs off exponentially and is skipped until its backoff ends, so a slow or dead
//! unit costs the line at most one attempt per turn and never starves the others.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a unit waits after consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Wait after the first failure; doubles with each further one.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl BackoffPolicy {
    /// The wait after `failures` consecutive failures (0 → none).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

struct UnitQueue<T> {
    items: VecDeque<T>,
    failures: u32,
    not_before: Option<Instant>,
}

/// Per-unit FIFO queues served round-robin.
pub struct FairQueue<T> {
    units: BTreeMap<u8, UnitQueue<T>>,
    last_served: Option<u8>,
    backoff: BackoffPolicy,
    len: usize,
}

impl<T> FairQueue<T> {
    /// An empty queue.
    pub fn new(backoff: BackoffPolicy) -> Self {
        Self {
            units: BTreeMap::new(),
            last_served: None,
            backoff,
            len: 0,
        }
    }

    fn unit(&mut self, unit: u8) -> &mut UnitQueue<T> {
        self.units.entry(unit).or_insert_with(|| UnitQueue {
            items: VecDeque::new(),
            failures: 0,
            not_before: None,
        })
    }

    /// Queues `item` for `unit` behind its other requests.
    pub fn push(&mut self, unit: u8, item: T) {
        self.unit(unit).items.push_back(item);
        self.len += 1;
    }

    /// Queues `item` for `unit` ahead of its other requests (a retry).
    pub fn push_front(&mut self, unit: u8, item: T) {
        self.unit(unit).items.push_front(item);
        self.len += 1;
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next request to send at `now`: the next unit after the last one served
    /// that has requests and is not backing off.
    pub fn pop(&mut self, now: Instant) -> Option<(u8, T)> {
        let last = self.last_served;
        let after = |unit: u8| last.is_none_or(|last| unit > last);
        let ready = |q: &UnitQueue<T>| !q.items.is_empty() && q.not_before.is_none_or(|t| t <= now);
        let pick = self
            .units
            .iter()
            .filter(|(unit, _)| after(**unit))
            .chain(self.units.iter().filter(|(unit, _)| !after(**unit)))
            .find(|(_, q)| ready(q))
            .map(|(&unit, _)| unit)?;
        let item = self.units.get_mut(&pick)?.items.pop_front()?;
        self.len -= 1;
        self.last_served = Some(pick);
        Some((pick, item))
    }

    /// When the earliest backing-off unit with requests may be served again; `None`
    /// when no unit with requests is backing off.
    pub fn next_ready(&self) -> Option<Instant> {
        self.units
            .values()
            .filter(|q| !q.items.is_empty())
            .filter_map(|q| q.not_before)
            .min()
    }

    /// `unit` answered: its backoff ends.
    pub fn record_success(&mut self, unit: u8) {
        let queue = self.unit(unit);
        queue.failures = 0;
        queue.not_before = None;
    }

    /// `unit` failed at `now`: it backs off; returns for how long.
    pub fn record_failure(&mut self, unit: u8, now: Instant) -> Duration {
        let backoff = self.backoff;
        let queue = self.unit(unit);
        queue.failures = queue.failures.saturating_add(1);
        let delay = backoff.delay(queue.failures);
        queue.not_before = Some(now + delay);
        delay
    }

    /// Removes and returns every waiting request (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        self.units
            .values_mut()
            .flat_map(|q| q.items.drain(..))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> FairQueue<&'static str> {
        FairQueue::new(BackoffPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
    }

    #[test]
    fn units_take_turns() {
        let mut q = queue();
        let now = Instant::now();
        for item in ["a1", "a2", "a3"] {
            q.push(1, item);
        }
        q.push(2, "b1");
        q.push(3, "c1");
        q.push(2, "b2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now)).map(|(_, i)| i).collect();
        assert_eq!(order, vec!["a1", "b1", "c1", "a2", "b2", "a3"]);
    }

    #[test]
    fn a_failing_unit_backs_off_and_the_others_go_on() {
        let mut q = queue();
        let now = Instant::now();
        q.push(1, "dead-1");
        q.push(1, "dead-2");
        q.push(2, "live-1");
        q.push(2, "live-2");
        let (unit, item) = q.pop(now).expect("ready");
        assert_eq!((unit, item), (1, "dead-1"));
        assert_eq!(q.record_failure(1, now), Duration::from_millis(100));
        q.push_front(1, item);
        assert_eq!(q.pop(now), Some((2, "live-1")));
        assert_eq!(q.pop(now), Some((2, "live-2")));
        assert_eq!(q.pop(now), None);
        assert_eq!(q.next_ready(), Some(now + Duration::from_millis(100)));
        let later = now + Duration::from_millis(100);
        assert_eq!(q.pop(later), Some((1, "dead-1")));
        assert_eq!(q.record_failure(1, later), Duration::from_millis(200));
        q.record_success(1);
        assert_eq!(q.pop(later), Some((1, "dead-2")));
        assert!(q.is_empty());
    }

    #[test]
    fn backoff_is_capped() {
        let policy = BackoffPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(policy.delay(0), Duration::ZERO);
        assert_eq!(policy.delay(4), Duration::from_millis(800));
        assert_eq!(policy.delay(40), Duration::from_secs(1));
    }
}
