//! Which queued message to send next: in order, windowed, rate-limited, retransmitted.
//!
//! A pure state machine with time passed in; the agent drives it.

use std::collections::BTreeMap;

use crate::outbox::Outbox;

/// Sending limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Most messages sent and not yet acknowledged.
    pub window: usize,
    /// Resend a message not acknowledged after this long, in milliseconds.
    pub retransmit_after_ms: u64,
    /// Most messages sent per second (replay after an outage is paced by this).
    pub max_per_second: u32,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        Self {
            window: 64,
            retransmit_after_ms: 10_000,
            max_per_second: 500,
        }
    }
}

/// The sender's state.
#[derive(Debug)]
pub struct Dispatcher {
    limits: DispatchLimits,
    in_flight: BTreeMap<u64, u64>,
    cursor: u64,
    tokens: f64,
    refilled_at_ms: u64,
    connected: bool,
}

impl Dispatcher {
    /// A dispatcher with `limits`, disconnected.
    pub fn new(limits: DispatchLimits) -> Self {
        Self {
            limits,
            in_flight: BTreeMap::new(),
            cursor: 0,
            tokens: f64::from(limits.max_per_second.max(1)),
            refilled_at_ms: 0,
            connected: false,
        }
    }

    /// The link came up: everything unacknowledged is sent again, from the oldest.
    pub fn on_connected(&mut self) {
        self.connected = true;
        self.in_flight.clear();
        self.cursor = 0;
    }

    /// The link went down: nothing is sent until it is back.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// Changes the send rate from now on (the fleet's link settings).
    pub fn set_max_per_second(&mut self, max_per_second: u32) {
        self.limits.max_per_second = max_per_second;
    }

    /// The fleet acknowledged `seq`.
    pub fn on_ack(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next message to send at `now_ms`, if any; the caller sends it.
    pub fn next_to_send(&mut self, outbox: &Outbox, now_ms: u64) -> Option<u64> {
        if !self.connected {
            return None;
        }
        self.in_flight.retain(|seq, _| outbox.is_pending(*seq));
        self.refill(now_ms);
        if self.tokens < 1.0 {
            return None;
        }
        let expired = self
            .in_flight
            .iter()
            .find(|&(_, &sent)| now_ms.saturating_sub(sent) >= self.limits.retransmit_after_ms)
            .map(|(&seq, _)| seq);
        let seq = match expired {
            Some(seq) => seq,
            None => {
                if self.in_flight.len() >= self.limits.window {
                    return None;
                }
                let seq = outbox.next_pending(self.cursor)?;
                self.cursor = seq + 1;
                seq
            }
        };
        self.tokens -= 1.0;
        self.in_flight.insert(seq, now_ms);
        Some(seq)
    }

    fn refill(&mut self, now_ms: u64) {
        let rate = f64::from(self.limits.max_per_second.max(1));
        let elapsed = now_ms.saturating_sub(self.refilled_at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.refilled_at_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{FsyncPolicy, OutboxConfig};

    fn outbox(dir: &std::path::Path, count: u64) -> Outbox {
        let mut outbox = Outbox::open(OutboxConfig {
            fsync: FsyncPolicy::Never,
            ..OutboxConfig::in_dir(dir)
        })
        .expect("open");
        for _ in 0..count {
            outbox
                .append(|seq, _| seq.to_le_bytes().to_vec())
                .expect("append");
        }
        outbox
    }

    #[test]
    fn sends_in_order_within_the_window_and_resends_after_reconnect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = outbox(dir.path(), 5);
        let limits = DispatchLimits {
            window: 2,
            retransmit_after_ms: 1000,
            max_per_second: 1000,
        };
        let mut dispatch = Dispatcher::new(limits);
        assert_eq!(
            dispatch.next_to_send(&outbox, 0),
            None,
            "nothing is sent while disconnected"
        );
        dispatch.on_connected();
        assert_eq!(dispatch.next_to_send(&outbox, 10), Some(0));
        assert_eq!(dispatch.next_to_send(&outbox, 10), Some(1));
        assert_eq!(dispatch.next_to_send(&outbox, 10), None, "window full");
        outbox.ack(0).expect("ack");
        dispatch.on_ack(0);
        assert_eq!(dispatch.next_to_send(&outbox, 20), Some(2));
        // Reconnect: 1 and 2 were never acknowledged and go again, oldest first.
        dispatch.on_disconnected();
        dispatch.on_connected();
        assert_eq!(dispatch.next_to_send(&outbox, 30), Some(1));
        assert_eq!(dispatch.next_to_send(&outbox, 30), Some(2));
    }

    #[test]
    fn unacknowledged_messages_are_retransmitted_and_sending_is_paced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(dir.path(), 100);
        let limits = DispatchLimits {
            window: 100,
            retransmit_after_ms: 500,
            max_per_second: 10,
        };
        let mut dispatch = Dispatcher::new(limits);
        dispatch.on_connected();
        let mut sent = Vec::new();
        // One simulated second, polled every millisecond: the pace allows about 10 sends.
        for now in 0..1000 {
            if let Some(seq) = dispatch.next_to_send(&outbox, now) {
                sent.push((now, seq));
            }
        }
        assert!(
            (10..=20).contains(&sent.len()),
            "sent {} in one second at 10/s",
            sent.len()
        );
        assert!(
            sent.iter().any(|&(_, seq)| seq == 0)
                && sent.iter().filter(|&&(_, seq)| seq == 0).count() >= 2,
            "message 0 was not retransmitted: {sent:?}"
        );
    }

    #[test]
    fn a_record_lost_to_damage_is_skipped_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(outbox(dir.path(), 5));
        // Flip a payload byte of message 2 (20-byte segment header, 24-byte records).
        let segment = dir.path().join(format!("{:020}.seg", 0));
        let mut bytes = std::fs::read(&segment).expect("read");
        bytes[20 + 2 * 24 + 16] ^= 0xff;
        std::fs::write(&segment, &bytes).expect("write");
        let mut outbox = outbox(dir.path(), 0);
        assert_eq!(outbox.stats().damaged_records, 1);
        let mut dispatch = Dispatcher::new(DispatchLimits {
            window: 10,
            retransmit_after_ms: 1000,
            max_per_second: 1000,
        });
        dispatch.on_connected();
        let mut sent = Vec::new();
        while let Some(seq) = dispatch.next_to_send(&outbox, 10) {
            assert_eq!(outbox.read(seq).expect("read"), seq.to_le_bytes());
            sent.push(seq);
        }
        assert_eq!(sent, vec![0, 1, 3, 4]);
        for seq in sent {
            outbox.ack(seq).expect("ack");
            dispatch.on_ack(seq);
        }
        assert_eq!((dispatch.in_flight(), outbox.stats().depth), (0, 0));
        assert_eq!(
            dispatch.next_to_send(&outbox, 2000),
            None,
            "nothing waits for 2"
        );
    }
}
