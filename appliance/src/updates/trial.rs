//! After an install: the trial of the new image judged here (confirm or give up), and
//! what became of the installed offer published from the boot monitor's state.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_link::ControlSender;
use warden_link::topics::UpdateState;
use warden_os::file_system::SlotFileSystem;
use warden_os::root_of_trust::RootOfTrustError;
use warden_os::{
    BootMonitor, BootRootOfTrust, HealthCheckPolicy, HealthReport, Slot, SlotStatus,
    TrialHealthCheck, TrialVerdict,
};

use super::installer::{InstalledRecord, SharedMonitor, publish_from};

/// Observes the running appliance's health for the trial check.
pub type HealthProbe = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// Why what became of the installed offer could not be looked at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootOutcomeError {
    /// The boot monitor's state could not be read.
    #[error("{0}")]
    BootState(String),
    /// The installed-offer record in the download directory could not be written.
    #[error("{}: {source}", dir.display())]
    Record {
        /// The download directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Publishes what became of the last installed offer since the restart: `trial` while
/// its slot runs on trial, then `confirmed` or `rolled-back` (each once).
pub fn report_boot_outcome<F: SlotFileSystem, R: BootRootOfTrust>(
    monitor: &mut BootMonitor<F, R>,
    download_dir: &Path,
    control: &ControlSender,
) -> Result<Option<UpdateState>, BootOutcomeError> {
    let Some(mut record) = InstalledRecord::load(download_dir) else {
        return Ok(None);
    };
    let state = monitor
        .load_state()
        .map_err(|error| BootOutcomeError::BootState(error.to_string()))?;
    let (now, detail) = match state.slot(record.slot) {
        SlotStatus::Trial { boots, .. } => (
            UpdateState::Trial,
            format!("version {} runs on trial (boot {boots})", record.version),
        ),
        SlotStatus::Confirmed(_) => (
            UpdateState::Confirmed,
            format!("version {} confirmed after its trial", record.version),
        ),
        SlotStatus::Failed { reason, .. } => (
            UpdateState::RolledBack,
            format!(
                "version {} given up ({reason}); the previous image runs",
                record.version
            ),
        ),
        SlotStatus::Pending(_) | SlotStatus::Empty => return Ok(Some(record.published)),
    };
    if now != record.published {
        publish_from(control, record.origin(), &record.offer_id, now, detail);
        record.published = now;
        record
            .save(download_dir)
            .map_err(|source| BootOutcomeError::Record {
                dir: download_dir.to_path_buf(),
                source,
            })?;
    }
    Ok(Some(now))
}

/// How often the boot monitor's state is looked at for trial, confirmation, rollback.
pub const BOOT_OUTCOME_INTERVAL: Duration = Duration::from_secs(30);
/// How often a trial image looks at its own health.
pub const TRIAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The trial check's policy: the deadline the boot stage set (its environment), else
/// the default; link and bridges must be healthy.
pub fn trial_policy_from_env() -> HealthCheckPolicy {
    let mut policy = HealthCheckPolicy::default();
    if let Some(ms) = std::env::var(warden_os::monitor::trial::TRIAL_DEADLINE_ENV)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
    {
        policy.deadline = Duration::from_millis(ms);
    }
    policy
}

/// Judges the trial of `slot` until it is decided: confirms it in the boot monitor
/// once `health` passes, or gives it up at the deadline and cancels `restart` (the
/// boot stage then boots the previous image). Returns the verdict.
pub async fn watch_trial<F, R>(
    monitor: SharedMonitor<F, R>,
    slot: Slot,
    policy: HealthCheckPolicy,
    health: HealthProbe,
    restart: Option<CancellationToken>,
    shutdown: CancellationToken,
) -> Option<TrialVerdict>
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let mut check = TrialHealthCheck::new(policy);
    let mut last_report = None;
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval(TRIAL_CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            _ = every.tick() => {}
        }
        let report = health();
        if last_report != Some(report) {
            tracing::info!(%slot, link_up = report.link_up, bridges_healthy = report.bridges_healthy, "trial health");
            last_report = Some(report);
        }
        let verdict = check.observe(started.elapsed(), report);
        let monitor = Arc::clone(&monitor);
        let outcome = match verdict {
            TrialVerdict::Waiting { .. } => continue,
            TrialVerdict::Confirm => {
                tokio::task::spawn_blocking(move || {
                    let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
                    match monitor.confirm(slot) {
                        Ok(counter) => Ok(format!("confirmed; anti-rollback counter at {counter}")),
                        // Persisted, but the counter needs the capability this process does
                        // not hold: the boot stage's next `select_boot` raises it.
                        Err(warden_os::BootError::RootOfTrust(RootOfTrustError::Capability {
                            ..
                        })) if monitor.load_state().is_ok_and(|state| {
                            matches!(state.slot(slot), SlotStatus::Confirmed(_))
                        }) =>
                        {
                            Ok(
                                "confirmed; the anti-rollback counter rises at the next boot"
                                    .to_owned(),
                            )
                        }
                        Err(error) => Err(error),
                    }
                })
                .await
            }
            TrialVerdict::TimedOut => {
                tokio::task::spawn_blocking(move || {
                    let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
                    monitor
                        .trial_timed_out(slot)
                        .map(|reason| format!("given up: {reason}"))
                })
                .await
            }
        };
        match outcome {
            Ok(Ok(detail)) => tracing::info!(%slot, %detail, "trial decided"),
            Ok(Err(error)) => tracing::error!(%slot, %error, "cannot record the trial's outcome"),
            Err(error) => tracing::error!(%slot, %error, "trial task failed"),
        }
        if verdict == TrialVerdict::TimedOut
            && let Some(restart) = &restart
        {
            restart.cancel();
        }
        return Some(verdict);
    }
}
