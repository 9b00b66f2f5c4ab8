//! Failure reports from the monitor's on-disk ring, uploaded to the fleet once each.
//!
//! The monitor records reports in `warden_os::reports::ReportStore`. This task moves
//! each new one into the link's durable control queue and then marks it uploaded in
//! the ring (`mark_uploaded`), so the ring remembers how far it got: a report is
//! queued once, and the queue keeps it until the fleet acknowledges it. A kill between
//! the two steps queues the report again at the next start; the fleet keeps one per
//! `(device, report id)`.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_link::topics::{FailureReportMessage, PROTOCOL_VERSION};
use warden_link::{ControlMessage, ControlSender};
use warden_os::reports::{FailureKind, FailureReport, ReportError, ReportStore};

/// How often the ring is looked at when no interval is configured.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// A report as it travels to the fleet.
pub fn message_for(report: &FailureReport) -> FailureReportMessage {
    let mut message = report.kind.summary();
    if let FailureKind::Panic { backtrace, .. } = &report.kind
        && !backtrace.is_empty()
    {
        message.push('\n');
        message.push_str(backtrace);
    }
    FailureReportMessage {
        v: PROTOCOL_VERSION,
        id: report.id.to_string(),
        ts_ms: report.created_ms,
        compartment: report.compartment.clone(),
        kind: report.kind.name().to_owned(),
        image_version: report.image_version.clone(),
        signature: report.signature(),
        message,
    }
}

/// Why reports could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The ring could not be read or marked.
    #[error(transparent)]
    Ring(#[from] ReportError),
    /// The control queue refused the report.
    #[error("control queue: {0}")]
    Queue(#[from] warden_link::outbox::OutboxError),
}

/// Opens the monitor's ring in `dir` (read and mark only; the monitor writes it).
pub fn open_ring(dir: &Path) -> Result<ReportStore, ReportError> {
    ReportStore::open(dir, usize::MAX, "")
}

/// Queues every report not uploaded yet, oldest first, marking each after it is in
/// the queue. Returns how many were queued.
pub fn upload_pending(ring: &ReportStore, control: &ControlSender) -> Result<usize, UploadError> {
    let pending = ring.pending_upload()?;
    for report in &pending {
        control.send(&ControlMessage::FailureReport(message_for(report)))?;
        ring.mark_uploaded(report.id)?;
        tracing::info!(id = report.id, signature = %report.signature(), "failure report queued for the fleet");
    }
    Ok(pending.len())
}

/// Uploads new reports every `interval` until shutdown.
pub async fn run(
    ring: ReportStore,
    control: ControlSender,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (ring, control) = (ring.clone(), control.clone());
        let outcome = tokio::task::spawn_blocking(move || upload_pending(&ring, &control)).await;
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "failure reports not uploaded; retrying"),
            Err(error) => tracing::error!(%error, "failure report upload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_report_is_queued_once_and_the_ring_remembers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = ReportStore::open(&dir.path().join("reports"), 16, "1.4.0").expect("ring");
        writer
            .record(
                "bridge-line1",
                FailureKind::Panic {
                    message: "index 7 out of range".into(),
                    backtrace: "at poll.rs:12".into(),
                },
            )
            .expect("record");
        writer
            .record("link", FailureKind::Signaled { signal: 9 })
            .expect("record");
        let ring = open_ring(&dir.path().join("reports")).expect("open");
        let control = ControlSender::open(&dir.path().join("control")).expect("control");
        assert_eq!(upload_pending(&ring, &control).expect("upload"), 2);
        assert_eq!(
            upload_pending(&ring, &control).expect("upload"),
            0,
            "nothing is queued twice"
        );
        writer
            .record("web", FailureKind::WatchdogExpired { silent_ms: 3000 })
            .expect("record");
        assert_eq!(upload_pending(&ring, &control).expect("upload"), 1);

        let queue = control.lock();
        let ControlMessage::FailureReport(first) = queue.message(0).expect("queued") else {
            panic!("not a report");
        };
        assert_eq!(first.id, "1");
        assert_eq!(first.compartment, "bridge-line1");
        assert_eq!(first.kind, "panic");
        assert_eq!(first.image_version, "1.4.0");
        assert_eq!(first.signature, "bridge-line1/panic/index # out of range");
        assert_eq!(
            first.message,
            "panicked: index 7 out of range\nat poll.rs:12"
        );
        let ControlMessage::FailureReport(third) = queue.message(2).expect("queued") else {
            panic!("not a report");
        };
        assert_eq!((third.id.as_str(), third.kind.as_str()), ("3", "watchdog"));
    }
}
