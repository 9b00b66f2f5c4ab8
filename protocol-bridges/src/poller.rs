//! The poll scheduler of one bridge: reads each point on its interval.
//!
//! Points are merged into read blocks ([`crate::read_plan`]); each unit of a bridge
//! polls in its own task, so on an RTU line a slow unit delays only itself (the bus
//! task serves units fairly). A merged read the policy refuses, or that the device
//! answers with exception 02 (a gap it does not have), is split into one read per
//! point from then on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bridge::{BridgeHandle, Downstream, RequestError};
use crate::clock::unix_millis;
use crate::config::ModbusTcpBridgeConfig;
use crate::deadband::should_report;
use crate::health::{BridgeHealth, HealthEvent};
use crate::modbus::pdu::ExceptionCode;
use crate::modbus::tcp_pool::TcpDevice;
use crate::modbus::{Answer, ClientError};
use crate::read_plan::{ReadBlock, plan_reads};
use crate::request_policy::{RequestPolicy, RequestSource};
use crate::sample::{Sample, Value};

/// Polls the points of one bridge and sends [`Sample`]s.
pub struct Poller {
    bridge: BridgeHandle,
    max_gap: u16,
}

impl Poller {
    /// A poller for one Modbus TCP device whose every request passes `policy`.
    pub fn new(config: ModbusTcpBridgeConfig, policy: Box<dyn RequestPolicy>) -> Self {
        let device = TcpDevice::new(
            config.address.clone(),
            config.max_connections,
            Duration::from_millis(config.timeout_ms),
        );
        let bridge = BridgeHandle::new(
            config.name,
            config.address,
            config.unit,
            config.points,
            Downstream::Tcp(Arc::new(device)),
            policy,
            Arc::default(),
        );
        Self::for_bridge(bridge, config.max_gap)
    }

    /// A poller for `bridge`, merging reads across gaps of at most `max_gap` registers.
    pub fn for_bridge(bridge: BridgeHandle, max_gap: u16) -> Self {
        Self { bridge, max_gap }
    }

    /// The bridge polled (for writes and the facade).
    pub fn bridge(&self) -> BridgeHandle {
        self.bridge.clone()
    }

    /// The bridge's health, updated as it runs.
    pub fn health(&self) -> Arc<std::sync::Mutex<BridgeHealth>> {
        self.bridge.health()
    }

    /// Runs until `shutdown` fires or the sample receiver is dropped.
    pub async fn run(self, samples: mpsc::Sender<Sample>, shutdown: CancellationToken) {
        let blocks = plan_reads(
            self.bridge.points(),
            self.bridge.default_unit(),
            self.max_gap,
        );
        let mut by_unit: BTreeMap<u8, Vec<ReadBlock>> = BTreeMap::new();
        for block in blocks {
            by_unit.entry(block.unit).or_default().push(block);
        }
        let mut units = tokio::task::JoinSet::new();
        for (unit, blocks) in by_unit {
            let poller = UnitPoller {
                bridge: self.bridge.clone(),
                unit,
                blocks,
                last_sent: BTreeMap::new(),
                failures: FailureLog::new(FAILURE_SUMMARY_INTERVAL),
            };
            units.spawn(poller.run(samples.clone(), shutdown.clone()));
        }
        drop(samples);
        while units.join_next().await.is_some() {}
    }
}

/// When a block due at `due` and polled at `now` is due next: on a fixed rate from its
/// schedule (the timer wakes late by up to a tick; counting from the wake-up would
/// stretch every period by that much), skipping the polls it fell behind on rather
/// than bursting to catch up.
fn next_poll_after(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now { next } else { now + interval }
}

struct UnitPoller {
    bridge: BridgeHandle,
    unit: u8,
    blocks: Vec<ReadBlock>,
    last_sent: BTreeMap<usize, Value>,
    failures: FailureLog,
}

/// How often a unit that keeps failing is summed up in the log.
const FAILURE_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What the log says about a unit's failed polls (sans-IO: time is passed in).
#[derive(Debug, Clone, PartialEq, Eq)]
enum FailureLine {
    /// The first failure after a success (or since start): logged in full.
    First,
    /// A summary of the failures counted since the last line.
    Summary {
        /// Failures since the last line.
        failures: u64,
    },
    /// The unit answered again after failing.
    Recovered {
        /// Failures in the outage.
        failures: u64,
    },
}

/// Rate-limits a unit's poll-failure warnings: the first failure, then at most one
/// summary per interval while it keeps failing, and one line when it recovers. A
/// dead unit polled every 100 ms would otherwise fill the journal.
#[derive(Debug)]
struct FailureLog {
    interval: Duration,
    /// When the last line was logged; `None` while the unit answers.
    last_line: Option<Instant>,
    /// Failures not yet in a line.
    unlogged: u64,
    /// Failures since the unit last answered.
    outage: u64,
}

impl FailureLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: None,
            unlogged: 0,
            outage: 0,
        }
    }

    /// A poll failed at `now`: the line to log, if any.
    fn failed(&mut self, now: Instant) -> Option<FailureLine> {
        self.outage += 1;
        match self.last_line {
            None => {
                self.last_line = Some(now);
                Some(FailureLine::First)
            }
            Some(at) => {
                self.unlogged += 1;
                if now.saturating_duration_since(at) < self.interval {
                    return None;
                }
                self.last_line = Some(now);
                Some(FailureLine::Summary {
                    failures: std::mem::take(&mut self.unlogged),
                })
            }
        }
    }

    /// A poll succeeded: the recovery line if the unit was failing.
    fn succeeded(&mut self) -> Option<FailureLine> {
        self.last_line.take()?;
        self.unlogged = 0;
        Some(FailureLine::Recovered {
            failures: std::mem::take(&mut self.outage),
        })
    }
}

enum Polled {
    Samples(Vec<Sample>),
    Split,
    Nothing,
}

impl UnitPoller {
    async fn run(mut self, samples: mpsc::Sender<Sample>, shutdown: CancellationToken) {
        let mut next_due: Vec<Instant> = vec![Instant::now(); self.blocks.len()];
        loop {
            let Some(earliest) = next_due.iter().min().copied() else {
                shutdown.cancelled().await;
                return;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(earliest.into()) => {}
            }
            let now = Instant::now();
            let mut index = 0;
            while index < self.blocks.len() {
                if next_due[index] > now {
                    index += 1;
                    continue;
                }
                let interval = Duration::from_millis(self.blocks[index].interval_ms.max(1));
                next_due[index] = next_poll_after(next_due[index], interval, now);
                let polled = tokio::select! {
                    () = shutdown.cancelled() => return,
                    polled = self.poll_block(index) => polled,
                };
                match polled {
                    Polled::Samples(batch) => {
                        for sample in batch {
                            if samples.send(sample).await.is_err() {
                                return;
                            }
                        }
                    }
                    Polled::Split => {
                        let parts = self.blocks[index].split(self.bridge.points());
                        let count = parts.len();
                        self.blocks.splice(index..=index, parts);
                        next_due.splice(index..=index, std::iter::repeat_n(now, count));
                        continue;
                    }
                    Polled::Nothing => {}
                }
                index += 1;
            }
        }
    }

    async fn poll_block(&mut self, index: usize) -> Polled {
        let block = &self.blocks[index];
        let request = block.request();
        let merged = block.points.len() > 1;
        if merged
            && !self
                .bridge
                .allowed_quietly(self.unit, &request, RequestSource::Poll)
        {
            // The merged range covers registers the policy does not allow; the points
            // themselves may be allowed one by one.
            return Polled::Split;
        }
        let answer = match self
            .bridge
            .request(self.unit, request, RequestSource::Poll)
            .await
        {
            Ok(answer) => answer,
            Err(RequestError::Denied(_)) => return Polled::Nothing,
            Err(RequestError::Failed { error, .. }) => {
                self.record_failure(&error);
                return Polled::Nothing;
            }
        };
        let block = self.blocks[index].clone();
        let timestamp_ms = unix_millis();
        let mut batch = Vec::new();
        let bridge = self.bridge.clone();
        let points = bridge.points();
        match answer {
            Answer::Registers(registers) => {
                for &i in &block.points {
                    let point = &points[i];
                    let offset = usize::from(point.address - block.address);
                    let end = offset + usize::from(point.register_count());
                    let Some(value) = registers
                        .get(offset..end)
                        .and_then(|r| point.decode_registers(r))
                    else {
                        continue;
                    };
                    batch.extend(self.sample(i, value, timestamp_ms));
                }
            }
            Answer::Bits(bits) => {
                for &i in &block.points {
                    let point = &points[i];
                    let offset = usize::from(point.address - block.address);
                    let Some(&bit) = bits.get(offset) else {
                        continue;
                    };
                    batch.extend(self.sample(i, point.decode_bit(bit), timestamp_ms));
                }
            }
            Answer::Exception(code) => {
                if merged && code == ExceptionCode::ILLEGAL_DATA_ADDRESS {
                    return Polled::Split;
                }
                let name = points[block.points[0]].name.clone();
                let text_for_log = format!("point {name}: device exception {code}");
                self.log_failure(&text_for_log);
                let text = format!("unit {} point {name}: {code}", self.unit);
                self.bridge
                    .update_health(|h| h.record(Some(self.unit), HealthEvent::Exception(text)));
                return Polled::Nothing;
            }
            Answer::Written => {
                self.record_failure(&ClientError::Pdu(crate::modbus::pdu::PduError::BadLength));
                return Polled::Nothing;
            }
        }
        self.bridge.update_health(|h| {
            h.record(Some(self.unit), HealthEvent::ReadOk);
            h.connected = true;
        });
        if let Some(FailureLine::Recovered { failures }) = self.failures.succeeded() {
            tracing::info!(bridge = %self.bridge.name(), unit = self.unit, failures, "unit answers again");
        }
        Polled::Samples(batch)
    }

    fn sample(&mut self, index: usize, value: Value, timestamp_ms: u64) -> Option<Sample> {
        let point = &self.bridge.points()[index];
        if !should_report(self.last_sent.get(&index), &value, point.deadband) {
            return None;
        }
        // Only a reported value is kept (a text is cloned when it changed, not per poll).
        self.last_sent.insert(index, value.clone());
        Some(Sample {
            bridge: self.bridge.name().to_owned(),
            point: point.name.clone(),
            value,
            unit: point.unit.clone(),
            timestamp_ms,
        })
    }

    /// Logs a failed poll through the unit's [`FailureLog`].
    fn log_failure(&mut self, error: &str) {
        match self.failures.failed(Instant::now()) {
            Some(FailureLine::First) => {
                tracing::warn!(bridge = %self.bridge.name(), unit = self.unit, %error, "modbus error");
            }
            Some(FailureLine::Summary { failures }) => {
                let interval_s = self.failures.interval.as_secs();
                tracing::warn!(bridge = %self.bridge.name(), unit = self.unit, failures, interval_s, last_error = %error, "modbus polls still failing");
            }
            Some(FailureLine::Recovered { .. }) | None => {}
        }
    }

    fn record_failure(&mut self, error: &ClientError) {
        self.log_failure(&error.to_string());
        let disconnected = matches!(
            error,
            ClientError::Io(_) | ClientError::Closed | ClientError::Unavailable { .. }
        );
        let text = format!("unit {}: {error}", self.unit);
        self.bridge.update_health(|h| {
            h.record(Some(self.unit), HealthEvent::Error(text));
            if disconnected {
                h.connected = false;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_failures_log_once_then_a_summary_per_interval_then_recovery() {
        let mut log = FailureLog::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(log.failed(start), Some(FailureLine::First));
        // A poll every second for a minute: silent.
        for s in 1..60 {
            assert_eq!(log.failed(start + Duration::from_secs(s)), None, "at {s} s");
        }
        assert_eq!(
            log.failed(start + Duration::from_secs(60)),
            Some(FailureLine::Summary { failures: 60 })
        );
        assert_eq!(log.failed(start + Duration::from_secs(61)), None);
        assert_eq!(
            log.succeeded(),
            Some(FailureLine::Recovered { failures: 62 })
        );
        // Answering on: nothing more; the next outage starts with its own first line.
        assert_eq!(log.succeeded(), None);
        assert_eq!(
            log.failed(start + Duration::from_secs(62)),
            Some(FailureLine::First)
        );
    }

    #[test]
    fn polls_keep_their_rate_when_the_timer_wakes_late() {
        let start = Instant::now();
        let interval = Duration::from_millis(10);
        // Woken 1 ms late: the next poll is still 10 ms after the scheduled one.
        let next = next_poll_after(start, interval, start + Duration::from_millis(1));
        assert_eq!(next, start + interval);
        // Fallen behind by more than a period: skip, do not burst.
        let late = start + Duration::from_millis(35);
        assert_eq!(next_poll_after(start, interval, late), late + interval);
    }
}
