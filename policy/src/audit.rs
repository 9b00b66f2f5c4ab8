//! Denial audit: counters per rule and reason, and a bounded sample of denials.

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Reason};
use crate::request::{Request, RuleId, Source};

/// One counter: denials with this rule (or none) and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialCount {
    /// Deciding rule id, if a rule applied.
    pub rule: Option<u16>,
    /// Reason code ([`Reason::code`]).
    pub reason: u8,
    /// Denials counted (saturating).
    pub count: u32,
    /// When this counter last produced a sample.
    pub last_sample_ms: Option<u64>,
}

/// A compact record of one denied request, for failure reports and telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialSample {
    /// When it was denied (the evaluator's clock).
    pub at_ms: u64,
    /// Reason code.
    pub reason: u8,
    /// Rule id, if a rule applied.
    pub rule: Option<u16>,
    /// What was asked.
    pub request: RequestSummary,
}

/// The fields of a request worth reporting (no host names, no written values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequestSummary {
    /// A Modbus request.
    Modbus {
        /// Bridge id.
        bridge: u16,
        /// Unit.
        unit: u8,
        /// Function code.
        function: u8,
        /// First address.
        address: u16,
        /// Count.
        count: u16,
        /// Source index ([`Source::index`]).
        source: u8,
    },
    /// A BLE request.
    Ble {
        /// Bridge id.
        bridge: u16,
        /// Device address.
        device: [u8; 6],
        /// Characteristic UUID.
        characteristic: u128,
        /// Operation bit.
        operation: u8,
        /// Source index.
        source: u8,
    },
    /// An outbound connection (the host is not kept).
    Connect {
        /// Compartment id.
        compartment: u16,
        /// Port.
        port: u16,
    },
    /// A listening port.
    Listen {
        /// Compartment id.
        compartment: u16,
        /// Port.
        port: u16,
    },
}

impl RequestSummary {
    /// Summary of a request.
    pub fn of(request: &Request<'_>) -> Self {
        match request {
            Request::Modbus(m) => RequestSummary::Modbus {
                bridge: m.bridge.0,
                unit: m.unit,
                function: m.function,
                address: m.address,
                count: m.count,
                source: source_index(m.source),
            },
            Request::Ble(b) => RequestSummary::Ble {
                bridge: b.bridge.0,
                device: b.device,
                characteristic: b.characteristic,
                operation: b.operation.bit(),
                source: source_index(b.source),
            },
            Request::Connect {
                compartment, port, ..
            } => RequestSummary::Connect {
                compartment: compartment.0,
                port: *port,
            },
            Request::Listen { compartment, port } => RequestSummary::Listen {
                compartment: compartment.0,
                port: *port,
            },
        }
    }
}

fn source_index(source: Source) -> u8 {
    source.index() as u8
}

/// Counts every denial per (rule, reason) in `C` counters and keeps a sample of at
/// most `S` recent denials, at most one per counter per `sample_interval_ms`.
///
/// Bounded: when all `C` counters are in use, further (rule, reason) pairs are
/// counted in `overflow`. Allowed decisions are ignored.
#[derive(Clone, Debug)]
pub struct DenialAudit<const C: usize, const S: usize> {
    counters: heapless::Vec<DenialCount, C>,
    samples: heapless::Deque<DenialSample, S>,
    overflow: u32,
    dropped_samples: u32,
    sample_interval_ms: u64,
}

impl<const C: usize, const S: usize> DenialAudit<C, S> {
    /// Empty audit; one sample per counter per `sample_interval_ms` at most.
    pub const fn new(sample_interval_ms: u64) -> Self {
        DenialAudit {
            counters: heapless::Vec::new(),
            samples: heapless::Deque::new(),
            overflow: 0,
            dropped_samples: 0,
            sample_interval_ms,
        }
    }

    /// Records the decision on `request` (only denials are recorded).
    pub fn record(&mut self, request: &Request<'_>, decision: &Decision, now_ms: u64) {
        if decision.is_allowed() {
            return;
        }
        let rule = decision.rule.map(|RuleId(r)| r);
        let reason = decision.reason.code();
        let index = match self
            .counters
            .iter()
            .position(|c| c.rule == rule && c.reason == reason)
        {
            Some(i) => i,
            None => {
                let fresh = DenialCount {
                    rule,
                    reason,
                    count: 0,
                    last_sample_ms: None,
                };
                if self.counters.push(fresh).is_err() {
                    self.overflow = self.overflow.saturating_add(1);
                    return;
                }
                self.counters.len() - 1
            }
        };
        let interval = self.sample_interval_ms;
        let Some(counter) = self.counters.get_mut(index) else {
            return;
        };
        counter.count = counter.count.saturating_add(1);
        let due = counter
            .last_sample_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= interval);
        if !due {
            return;
        }
        counter.last_sample_ms = Some(now_ms);
        let sample = DenialSample {
            at_ms: now_ms,
            reason,
            rule,
            request: RequestSummary::of(request),
        };
        if self.samples.is_full() {
            self.samples.pop_front();
            self.dropped_samples = self.dropped_samples.saturating_add(1);
        }
        let _ = self.samples.push_back(sample);
    }

    /// Counters so far.
    pub fn counters(&self) -> &[DenialCount] {
        &self.counters
    }

    /// Denials of pairs that found no free counter.
    pub fn overflow(&self) -> u32 {
        self.overflow
    }

    /// Samples pushed out by newer ones before being taken.
    pub fn dropped_samples(&self) -> u32 {
        self.dropped_samples
    }

    /// Total denials counted, overflow included.
    pub fn total(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| u64::from(c.count))
            .sum::<u64>()
            + u64::from(self.overflow)
    }

    /// Takes the oldest sample (for a failure report or telemetry message).
    pub fn take_sample(&mut self) -> Option<DenialSample> {
        self.samples.pop_front()
    }

    /// Count for one (rule, reason).
    pub fn count(&self, rule: Option<RuleId>, reason: Reason) -> u32 {
        let rule = rule.map(|RuleId(r)| r);
        self.counters
            .iter()
            .find(|c| c.rule == rule && c.reason == reason.code())
            .map_or(0, |c| c.count)
    }

    /// Clears counters and samples (after they were reported).
    pub fn clear(&mut self) {
        self.counters.clear();
        self.samples.clear();
        self.overflow = 0;
        self.dropped_samples = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{CompartmentId, RuleId};

    #[test]
    fn counts_every_denial_and_samples_boundedly() {
        let mut audit = DenialAudit::<2, 2>::new(1_000);
        let request = Request::Listen {
            compartment: CompartmentId(0),
            port: 80,
        };
        let denied = Decision::deny(Reason::PortNotAllowed, None);
        for t in 0..10 {
            audit.record(&request, &denied, t * 100);
        }
        audit.record(&request, &Decision::allow(RuleId(0)), 0);
        audit.record(
            &request,
            &Decision::deny(Reason::RateLimited, Some(RuleId(3))),
            0,
        );
        audit.record(&request, &Decision::deny(Reason::HostNotAllowed, None), 0);
        assert_eq!(audit.count(None, Reason::PortNotAllowed), 10);
        assert_eq!(audit.count(Some(RuleId(3)), Reason::RateLimited), 1);
        assert_eq!(audit.overflow(), 1);
        assert_eq!(audit.total(), 12);
        // One sample per counter per second: t=0 and t=... only 0 within 0..=900 ms.
        let first = audit.take_sample().expect("sample");
        assert_eq!(
            (first.at_ms, first.reason),
            (0, Reason::PortNotAllowed.code())
        );
        assert_eq!(audit.take_sample().map(|s| s.rule), Some(Some(3)));
        assert!(audit.take_sample().is_none());
    }
}
