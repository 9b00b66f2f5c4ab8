//! What the overview and the failure-reports section show about the unit itself: the
//! image slots from the boot monitor's state, the reports in the monitor's ring and
//! the device certificate's validity.
//!
//! Both are read from disk by whoever may read them: in one process the runtime
//! reads them; in compartments the link (which already reads the report ring and
//! keeps its upload marker) reads them and sends [`UnitFacts`] to the page over its
//! channel, so the page needs no file grant for either.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_os::reports::{FailureKind, FailureReport, ReportStore};
use warden_os::slots::{BootState, Slot, SlotStatus};

use crate::config::ApplianceConfig;
use crate::state::unit_facts::{FailureReports, ImageSlots, ReportView, SlotView, UnitFacts};

/// How often the facts are read again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Most reports the page lists (the newest).
pub const MAX_REPORTS: usize = 32;
/// A report's text is cut to this many characters for the page.
const MAX_TEXT: usize = 400;
/// A frame carrying the facts stays this far under the IPC frame limit.
const FRAME_MARGIN: usize = 512;

/// Where the facts are read from.
#[derive(Debug, Clone, Default)]
pub struct UnitFactsSource {
    ring: Option<ReportStore>,
    boot_state_dir: Option<PathBuf>,
    device_cert: Option<PathBuf>,
}

impl UnitFactsSource {
    /// From the config's `[reports]` and `[updates]`. `upload_marker` is where the
    /// reader that uploads reports keeps its mark, if not in the ring (the link
    /// compartment's, beside its outbox).
    pub fn new(config: &ApplianceConfig, upload_marker: Option<PathBuf>) -> Self {
        let ring = config.reports.as_ref().and_then(|reports| {
            match crate::failure_reports::open_ring(&reports.dir) {
                Ok(ring) => Some(match upload_marker {
                    Some(marker) => ring.with_upload_marker(marker),
                    None => ring,
                }),
                Err(error) => {
                    tracing::warn!(%error, "the failure reports cannot be listed");
                    None
                }
            }
        });
        Self {
            ring,
            boot_state_dir: config.updates.as_ref().map(|u| u.state_dir.clone()),
            device_cert: Some(config.link.device_cert.clone()),
        }
    }

    /// Reads the facts now.
    pub fn read(&self) -> UnitFacts {
        UnitFacts {
            image_slots: self
                .boot_state_dir
                .as_deref()
                .map(|dir| image_slots(dir, warden_os::monitor::trial::slot_from_env())),
            failure_reports: self.ring.as_ref().map(failure_reports),
            device_certificate: self.device_cert.as_deref().map(|path| {
                let now = i64::try_from(crate::clock::now_ms() / 1000).unwrap_or(i64::MAX);
                crate::device_certificate::certificate_view(path, now)
            }),
        }
    }

    /// Reads the facts into `into` every [`REFRESH`] until `shutdown`.
    pub async fn keep_reading(self, into: Arc<Mutex<UnitFacts>>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let source = self.clone();
            let Ok(facts) = tokio::task::spawn_blocking(move || source.read()).await else {
                return;
            };
            *into.lock().unwrap_or_else(PoisonError::into_inner) = facts;
        }
    }
}

/// The boot monitor's record in `state_dir` (`boot/state`), read only.
pub fn image_slots(state_dir: &Path, running: Option<Slot>) -> ImageSlots {
    // The boot monitor's record, as `warden_os::boot` names it (`BOOT_DIR`/state).
    let path = state_dir.join(warden_os::boot::BOOT_DIR).join("state");
    let state = match std::fs::read(&path) {
        Ok(bytes) => match BootState::decode(&bytes) {
            Some(state) => state,
            None => {
                return ImageSlots {
                    running: running.map(|s| s.name().to_owned()),
                    error: Some(format!(
                        "{} does not verify (the boot monitor rebuilds it at the next boot)",
                        path.display()
                    )),
                    ..ImageSlots::default()
                };
            }
        },
        // No record yet: a unit that never installed an update; both slots empty.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => BootState::new(),
        Err(error) => {
            return ImageSlots {
                running: running.map(|s| s.name().to_owned()),
                error: Some(format!("cannot read {}: {error}", path.display())),
                ..ImageSlots::default()
            };
        }
    };
    ImageSlots {
        running: running.map(|s| s.name().to_owned()),
        primary: state.primary().map(|s| s.name().to_owned()),
        slots: Slot::ALL
            .into_iter()
            .map(|slot| slot_view(slot, state.slot(slot)))
            .collect(),
        error: None,
    }
}

fn slot_view(slot: Slot, status: &SlotStatus) -> SlotView {
    let version = status.image().map(|image| {
        let [major, minor, patch] = image.version;
        format!("{major}.{minor}.{patch}")
    });
    let (name, detail) = match status {
        SlotStatus::Empty => ("empty", None),
        SlotStatus::Pending(_) => ("pending", None),
        SlotStatus::Trial { boots, crashes, .. } => (
            "trial",
            Some(format!("{boots} boot(s) on trial, {crashes} crash(es)")),
        ),
        SlotStatus::Confirmed(_) => ("confirmed", None),
        SlotStatus::Failed { reason, .. } => ("failed", Some(reason.to_string())),
    };
    SlotView {
        slot: slot.name().to_owned(),
        status: name.to_owned(),
        version,
        detail,
    }
}

/// The newest [`MAX_REPORTS`] reports of `ring`, newest first.
pub fn failure_reports(ring: &ReportStore) -> FailureReports {
    let (all, pending) = match (ring.list(), ring.pending_upload()) {
        (Ok(all), Ok(pending)) => (all, pending),
        (Err(error), _) | (_, Err(error)) => {
            return FailureReports {
                error: Some(error.to_string()),
                ..FailureReports::default()
            };
        }
    };
    let pending: std::collections::BTreeSet<u64> = pending.iter().map(|r| r.id).collect();
    FailureReports {
        total: all.len(),
        newest: all
            .iter()
            .rev()
            .take(MAX_REPORTS)
            .map(|report| report_view(report, !pending.contains(&report.id)))
            .collect(),
        error: None,
    }
}

fn report_view(report: &FailureReport, uploaded: bool) -> ReportView {
    let detail = match &report.kind {
        FailureKind::Panic { backtrace, .. } => cut(backtrace),
        _ => String::new(),
    };
    ReportView {
        id: report.id,
        created_ms: report.created_ms,
        compartment: report.compartment.clone(),
        kind: report.kind.name().to_owned(),
        message: cut(&report.kind.summary()),
        image_version: report.image_version.clone(),
        signature: report.signature(),
        detail,
        uploaded,
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Drops the oldest listed reports until the facts fit in one IPC frame.
pub fn fit_into_frame(mut facts: UnitFacts) -> UnitFacts {
    let limit = warden_os::monitor::frame::MAX_FRAME_LEN - FRAME_MARGIN;
    while postcard::to_stdvec(&facts).map_or(0, |bytes| bytes.len()) > limit {
        match facts.failure_reports.as_mut() {
            Some(reports) if !reports.newest.is_empty() => {
                reports.newest.pop();
            }
            _ => break,
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_listed_newest_first_with_their_upload_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = ReportStore::open(dir.path(), 16, "1.2.3").expect("ring");
        ring.record("bridges", FailureKind::WatchdogExpired { silent_ms: 5000 })
            .expect("record");
        ring.record(
            "link",
            FailureKind::Panic {
                message: "boom".into(),
                backtrace: "at link.rs:7".into(),
            },
        )
        .expect("record");
        ring.mark_uploaded(1).expect("mark");
        let listed = failure_reports(&ring);
        assert_eq!(listed.total, 2);
        let ids: Vec<(u64, bool)> = listed.newest.iter().map(|r| (r.id, r.uploaded)).collect();
        assert_eq!(ids, [(2, false), (1, true)]);
        let panic = &listed.newest[0];
        assert_eq!(
            (
                panic.compartment.as_str(),
                panic.kind.as_str(),
                panic.message.as_str()
            ),
            ("link", "panic", "panicked: boom")
        );
        assert_eq!(panic.detail, "at link.rs:7");
        assert_eq!(panic.image_version, "1.2.3");
    }

    #[test]
    fn a_unit_without_a_boot_record_has_two_empty_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = image_slots(dir.path(), Some(Slot::B));
        assert_eq!(slots.running.as_deref(), Some("b"));
        assert_eq!(slots.error, None);
        let statuses: Vec<&str> = slots.slots.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(statuses, ["empty", "empty"]);
    }

    #[test]
    fn a_damaged_boot_record_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("boot")).expect("mkdir");
        std::fs::write(dir.path().join("boot/state"), b"garbage").expect("write");
        let slots = image_slots(dir.path(), None);
        assert!(
            slots
                .error
                .as_deref()
                .is_some_and(|e| e.contains("does not verify")),
            "{slots:?}"
        );
    }

    #[test]
    fn facts_are_cut_to_one_frame() {
        let report = ReportView {
            id: 1,
            created_ms: 0,
            compartment: "bridges".into(),
            kind: "panic".into(),
            message: "x".repeat(MAX_TEXT),
            image_version: "1.0.0".into(),
            signature: "s".repeat(64),
            detail: "y".repeat(MAX_TEXT),
            uploaded: false,
        };
        let facts = UnitFacts {
            image_slots: None,
            device_certificate: None,
            failure_reports: Some(FailureReports {
                total: 100,
                newest: vec![report; 100],
                error: None,
            }),
        };
        let fitted = fit_into_frame(facts);
        let kept = fitted
            .failure_reports
            .as_ref()
            .map_or(0, |r| r.newest.len());
        assert!((1..100).contains(&kept), "{kept}");
        let bytes = postcard::to_stdvec(&fitted).expect("encode");
        assert!(bytes.len() <= warden_os::monitor::frame::MAX_FRAME_LEN - FRAME_MARGIN);
    }
}
