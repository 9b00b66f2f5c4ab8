//! The durable control queue: results, reported state, events, reports, update status.
//!
//! Control messages are rare and each one matters, so every push is forced to disk
//! before it returns ([`FsyncPolicy::Always`]): a message pushed while the link is
//! down, or just before the process is killed, is published after the next start and
//! leaves the queue only when the fleet acknowledges its `(control, epoch, seq)`.
//!
//! The queue is an [`Outbox`] of its own in `<outbox dir>/control` (its own epoch and
//! sequence numbers), holding JSON records `{"kind": …, "payload": …}`. A reported
//! state supersedes the older ones still queued (they are dropped locally: only the
//! newest state means anything). When the queue is full the oldest messages are dropped
//! and counted, and a `control-overflow` event says so.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::outbox::{FsyncPolicy, Outbox, OutboxConfig, OutboxError, OutboxStats, OverflowPolicy};
use warden_wire::topics::{
    CONTROL_STREAM, CommandResult, Delivery, DeviceEvent, FailureReportMessage, LinkSettings,
    TwinReported, UpdateStatus, command_results_topic, event_kind, events_topic, reports_topic,
    twin_reported_topic, update_status_topic,
};

/// Most bytes of unacknowledged control messages kept.
pub const CONTROL_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Segment size of the control queue.
const CONTROL_SEGMENT_BYTES: u64 = 256 * 1024;

/// One control message, as queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlMessage {
    /// How a command ended (`command-results`).
    CommandResult(CommandResult),
    /// What the device runs (`twin/reported`).
    TwinReported(TwinReported),
    /// Something an operator should know (`events`).
    Event(DeviceEvent),
    /// A failure report from the monitor (`reports`).
    FailureReport(FailureReportMessage),
    /// Progress of an update offer (`updates/status`).
    UpdateStatus(UpdateStatus),
}

impl ControlMessage {
    /// The topic it is published on for `device_id`.
    pub fn topic(&self, device_id: &str) -> String {
        match self {
            Self::CommandResult(_) => command_results_topic(device_id),
            Self::TwinReported(_) => twin_reported_topic(device_id),
            Self::Event(_) => events_topic(device_id),
            Self::FailureReport(_) => reports_topic(device_id),
            Self::UpdateStatus(_) => update_status_topic(device_id),
        }
    }

    /// The published bytes: the payload with its `delivery` member.
    pub fn encode_with(&self, delivery: &Delivery) -> Vec<u8> {
        match self {
            Self::CommandResult(payload) => delivery.attach(payload),
            Self::TwinReported(payload) => delivery.attach(payload),
            Self::Event(payload) => delivery.attach(payload),
            Self::FailureReport(payload) => delivery.attach(payload),
            Self::UpdateStatus(payload) => delivery.attach(payload),
        }
    }
}

/// The queue (see the module docs).
pub struct ControlQueue {
    outbox: Outbox,
    /// Queued reported states, oldest first; all but the newest are superseded.
    reported: Vec<u64>,
    /// Drops already announced by a `control-overflow` event.
    announced_drops: u64,
    max_bytes: u64,
    /// The link settings that run, written into every reported state.
    link_settings: Option<LinkSettings>,
    /// Why the last link settings change was refused (goes into the next reported state).
    link_error: Option<String>,
    /// The last reported state pushed (without the link's part).
    last_reported: Option<TwinReported>,
}

impl ControlQueue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        Self::open_bounded(dir, CONTROL_MAX_BYTES)
    }

    /// Opens the queue with a bound other than [`CONTROL_MAX_BYTES`] (tests).
    pub fn open_bounded(dir: &Path, max_bytes: u64) -> Result<Self, OutboxError> {
        let outbox = Outbox::open(OutboxConfig {
            max_bytes,
            segment_bytes: CONTROL_SEGMENT_BYTES,
            fsync: FsyncPolicy::Always,
            overflow: OverflowPolicy::DropOldest,
            ..OutboxConfig::in_dir(dir)
        })?;
        let announced_drops = outbox.stats().dropped_oldest;
        let mut queue = Self {
            outbox,
            reported: Vec::new(),
            announced_drops,
            max_bytes,
            link_settings: None,
            link_error: None,
            last_reported: None,
        };
        let mut seq = queue.outbox.next_pending(0);
        while let Some(current) = seq {
            if let Ok(ControlMessage::TwinReported(_)) = queue.message(current) {
                queue.reported.push(current);
            }
            seq = queue.outbox.next_pending(current + 1);
        }
        queue.drop_superseded_reports()?;
        Ok(queue)
    }

    /// The queue's epoch.
    pub fn epoch(&self) -> u64 {
        self.outbox.epoch()
    }

    /// Queues `message` durably (on disk when this returns) and returns its sequence
    /// number. A reported state supersedes the queued ones; a full queue drops its
    /// oldest messages and queues a `control-overflow` event after this message.
    pub fn push(&mut self, message: &ControlMessage) -> Result<u64, OutboxError> {
        let completed;
        let message = match message {
            ControlMessage::TwinReported(reported) => {
                self.last_reported = Some(reported.clone());
                completed = ControlMessage::TwinReported(self.with_link_part(reported.clone()));
                &completed
            }
            other => other,
        };
        let record =
            serde_json::to_vec(message).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        let seq = self.outbox.append(|_, _| record)?;
        // The message is queued from here on: what follows is logged, not returned (an
        // error would make the caller push the same message again).
        if matches!(message, ControlMessage::TwinReported(_)) {
            self.reported.push(seq);
            if let Err(error) = self.drop_superseded_reports() {
                tracing::warn!(%error, "cannot drop superseded reported states; retried at the next one");
            }
        }
        if let Err(error) = self.announce_drops() {
            // Not announced yet: the next push tries again.
            tracing::warn!(%error, "cannot queue the control-overflow event");
        }
        Ok(seq)
    }

    /// Queues a `control-overflow` event if messages were dropped since the last one.
    fn announce_drops(&mut self) -> Result<(), OutboxError> {
        let dropped = self.outbox.stats().dropped_oldest;
        if dropped > self.announced_drops {
            let event = DeviceEvent::now(
                event_kind::CONTROL_OVERFLOW,
                format!(
                    "control queue full ({} bytes): {dropped} oldest messages dropped so far",
                    self.max_bytes
                ),
            );
            tracing::warn!(detail = %event.detail, "control queue overflow");
            let record = serde_json::to_vec(&ControlMessage::Event(event))
                .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
            self.outbox.append(|_, _| record)?;
            self.announced_drops = dropped;
        }
        Ok(())
    }

    /// Records the link settings that now run, or why a change was refused, and
    /// reports the state again (if one was reported) so the fleet sees what runs.
    pub fn set_link_settings(
        &mut self,
        running: Option<LinkSettings>,
        refused: Option<String>,
    ) -> Result<(), OutboxError> {
        self.link_settings = running;
        self.link_error = refused;
        match self.last_reported.clone() {
            Some(reported) => self
                .push(&ControlMessage::TwinReported(reported))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// The link settings that run, if the fleet set any.
    pub fn link_settings(&self) -> Option<&LinkSettings> {
        self.link_settings.as_ref()
    }

    fn with_link_part(&mut self, mut reported: TwinReported) -> TwinReported {
        reported.link_settings_version = self.link_settings.as_ref().map(|s| s.version);
        reported.link_settings_sha256 = self.link_settings.as_ref().map(LinkSettings::digest);
        if let Some(error) = self.link_error.take() {
            reported.last_error = Some(error);
        }
        reported
    }

    /// The queued message `seq`.
    pub fn message(&self, seq: u64) -> Result<ControlMessage, OutboxError> {
        let bytes = self.outbox.read(seq)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| OutboxError::Corrupt(format!("control record {seq}: {e}")))
    }

    /// The topic and bytes to publish for message `seq` on `device_id`'s link.
    pub fn publication(&self, device_id: &str, seq: u64) -> Result<(String, Vec<u8>), OutboxError> {
        let message = self.message(seq)?;
        let delivery = Delivery {
            stream: CONTROL_STREAM.to_owned(),
            epoch: self.epoch(),
            seq,
        };
        Ok((message.topic(device_id), message.encode_with(&delivery)))
    }

    /// The fleet acknowledged `seq`: it leaves the queue (saved before this returns).
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        self.reported.retain(|&queued| queued != seq);
        self.outbox.ack(seq)?;
        // Control acknowledgements are rare: save them at once, so a restart does not
        // send acknowledged messages again (the fleet would drop them, but why send).
        self.outbox.sync()
    }

    /// Whether `seq` waits for acknowledgement.
    pub fn is_pending(&self, seq: u64) -> bool {
        self.outbox.is_pending(seq)
    }

    /// The queue's storage (for the dispatcher).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The queue's counters.
    pub fn stats(&self) -> OutboxStats {
        self.outbox.stats()
    }

    fn drop_superseded_reports(&mut self) -> Result<(), OutboxError> {
        while self.reported.len() > 1 {
            let superseded = self.reported.remove(0);
            self.outbox.ack(superseded)?;
        }
        Ok(())
    }
}

/// A handle to the control queue that any task may push to; the link agent sends
/// what is queued.
#[derive(Clone)]
pub struct ControlSender {
    queue: Arc<Mutex<ControlQueue>>,
}

impl ControlSender {
    /// A handle to `queue`.
    pub fn new(queue: ControlQueue) -> Self {
        Self {
            queue: Arc::new(Mutex::new(queue)),
        }
    }

    /// Opens the queue in `dir` and returns a handle to it.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        Ok(Self::new(ControlQueue::open(dir)?))
    }

    /// Queues `message` durably (see [`ControlQueue::push`]). Blocks for one fsync.
    pub fn send(&self, message: &ControlMessage) -> Result<u64, OutboxError> {
        self.lock().push(message)
    }

    /// Queues `message`; a failure is logged (the caller has nothing better to do).
    pub fn send_or_log(&self, message: &ControlMessage) {
        if let Err(error) = self.send(message) {
            tracing::error!(%error, ?message, "cannot queue a control message");
        }
    }

    /// The queue, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ControlQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_wire::topics::{CommandStatus, PROTOCOL_VERSION};

    fn result(id: &str) -> ControlMessage {
        ControlMessage::CommandResult(CommandResult {
            v: PROTOCOL_VERSION,
            id: id.into(),
            status: CommandStatus::Written,
            detail: String::new(),
        })
    }

    fn reported(version: u64) -> ControlMessage {
        ControlMessage::TwinReported(TwinReported {
            v: PROTOCOL_VERSION,
            policy_version: Some(version),
            ..TwinReported::default()
        })
    }

    fn pending(queue: &ControlQueue) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut next = queue.outbox().next_pending(0);
        while let Some(seq) = next {
            seqs.push(seq);
            next = queue.outbox().next_pending(seq + 1);
        }
        seqs
    }

    #[test]
    fn a_push_survives_a_crash_without_any_shutdown_and_leaves_only_on_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut queue = ControlQueue::open(dir.path()).expect("open");
        let epoch = queue.epoch();
        assert_eq!(queue.push(&result("c-1")).expect("push"), 0);
        assert_eq!(queue.push(&result("c-2")).expect("push"), 1);
        // No drop, no final sync: what a SIGKILL leaves behind.
        std::mem::forget(queue);

        let mut queue = ControlQueue::open(dir.path()).expect("reopen");
        assert_eq!(queue.epoch(), epoch);
        assert_eq!(pending(&queue), vec![0, 1]);
        let (topic, bytes) = queue.publication("wd-1", 1).expect("publication");
        assert_eq!(topic, "warden/v1/devices/wd-1/command-results");
        // Older peers read the payload as before; the fleet finds the delivery in it.
        let decoded = CommandResult::decode(&bytes).expect("a plain command result");
        assert_eq!(decoded.id, "c-2");
        assert_eq!(
            Delivery::of_payload(&bytes),
            Some(Delivery {
                stream: CONTROL_STREAM.into(),
                epoch,
                seq: 1
            })
        );
        queue.ack(0).expect("ack");
        std::mem::forget(queue);
        let queue = ControlQueue::open(dir.path()).expect("reopen");
        assert_eq!(pending(&queue), vec![1], "the acknowledged one is gone");
    }

    #[test]
    fn a_newer_reported_state_supersedes_the_queued_ones_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut queue = ControlQueue::open(dir.path()).expect("open");
        queue.push(&reported(1)).expect("push");
        queue.push(&result("c-1")).expect("push");
        queue.push(&reported(2)).expect("push");
        assert_eq!(pending(&queue), vec![1, 2]);
        std::mem::forget(queue);
        // Out-of-order local acks are not persisted: the reopened queue finds both
        // reported states again and keeps only the newest.
        let mut queue = ControlQueue::open(dir.path()).expect("reopen");
        assert_eq!(pending(&queue), vec![1, 2]);
        queue.push(&reported(3)).expect("push");
        assert_eq!(pending(&queue), vec![1, 3]);
        assert_eq!(queue.message(3).expect("read"), reported(3));
    }

    #[test]
    fn overflow_drops_the_oldest_and_queues_an_event_about_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut queue = ControlQueue::open_bounded(dir.path(), 1000).expect("open");
        for n in 0..20 {
            queue.push(&result(&format!("c-{n}"))).expect("push");
        }
        let stats = queue.stats();
        assert!(stats.dropped_oldest > 0, "{stats:?}");
        let seqs = pending(&queue);
        let events: Vec<DeviceEvent> = seqs
            .iter()
            .filter_map(|&seq| match queue.message(seq).expect("read") {
                ControlMessage::Event(event) => Some(event),
                _ => None,
            })
            .collect();
        let last = events.last().expect("an overflow event is queued");
        assert_eq!(last.kind, event_kind::CONTROL_OVERFLOW);
        assert!(
            last.detail.contains("oldest messages dropped so far"),
            "{}",
            last.detail
        );
        // The newest result is never the one dropped.
        assert!(
            seqs.iter()
                .any(|&seq| queue.message(seq).expect("read") == result("c-19"))
        );
    }
}
