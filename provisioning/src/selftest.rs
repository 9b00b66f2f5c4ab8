//! The factory self-test: boot the image, one real A/B update, one rollback.
//!
//! Runs the os crate's own [`BootMonitor`] (verify, measure into the unit's pluton,
//! trial boot, confirm, crash reports, installs) over the unit's real state directory
//! and pluton process, and [`TrialHealthCheck`] to judge each trial from a real start
//! of the image's `bin/warden` (unpacked and hashed again by [`warden_os::launch`]):
//!
//! 1. install the factory image (slot A), trial-boot it, health probe, confirm;
//! 2. update: install the self-test image (slot B), trial-boot, probe, confirm;
//! 3. update back: the factory image into slot A, trial-boot, probe, confirm;
//! 4. rollback: the self-test image into slot B, trial-boot it and kill it until the
//!    trial policy gives it up; the next boot must be slot A, confirmed, factory image.
//!
//! A unit that cannot do this never leaves the factory.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use warden_os::boot::{BootConfig, BootDecision, BootError, BootMonitor};
use warden_os::file_system::StdFileSystem;
use warden_os::slots::{CrashVerdict, Slot, SlotStatus};
use warden_os::trial::{HealthCheckPolicy, HealthReport, TrialHealthCheck, TrialVerdict};
use warden_os::{PlutonRootOfTrust, image::ProductId};
use warden_pluton::ProvisioningCapability;
use warden_pluton_api::PlutonClient;

/// What the self-test needs.
#[derive(Debug, Clone)]
pub struct SelftestPlan<'a> {
    /// The unit's boot state directory (`var/lib/warden`).
    pub boot_root: &'a Path,
    /// Scratch directory for unpacked payloads.
    pub run_dir: &'a Path,
    /// The product.
    pub product: ProductId,
    /// The factory image (ends in slot A).
    pub factory_image: &'a Path,
    /// The image the update goes to (slot B).
    pub update_image: &'a Path,
    /// Arguments of the health probe.
    pub probe_args: &'a [String],
    /// Time the probe may take.
    pub probe_timeout: Duration,
}

/// What the self-test showed.
#[derive(Debug, Clone)]
pub struct SelftestReport {
    /// The factory image's measurement (SHA-256 of its header), now primary in slot A.
    pub factory_measurement: [u8; 32],
    /// Its version, `major.minor.patch`.
    pub factory_version: String,
    /// Its security counter (the unit's anti-rollback floor).
    pub security_counter: u64,
    /// One line per stage, for the unit record.
    pub log: Vec<String>,
}

/// The self-test failed; `stage` says where.
#[derive(Debug, thiserror::Error)]
#[error("self-test stage `{stage}`: {reason}")]
pub struct SelftestError {
    /// The stage (`install factory image`, `update to slot B`, …).
    pub stage: String,
    /// What went wrong.
    pub reason: String,
}

fn fail(stage: &str, reason: impl std::fmt::Display) -> SelftestError {
    SelftestError {
        stage: stage.to_owned(),
        reason: reason.to_string(),
    }
}

type Monitor = BootMonitor<StdFileSystem, PlutonRootOfTrust>;

/// Run the self-test against the unit's pluton at `socket`.
pub fn run(
    plan: &SelftestPlan<'_>,
    socket: &Path,
    capability: ProvisioningCapability,
) -> Result<SelftestReport, SelftestError> {
    // A fresh boot state each attempt: a resumed unit repeats the whole test.
    for dir in [warden_os::boot::SLOTS_DIR, warden_os::boot::BOOT_DIR] {
        let path = plan.boot_root.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| fail("reset boot state", e))?;
        }
    }
    let client = PlutonClient::connect(socket).map_err(|e| fail("connect to pluton", e))?;
    let mut monitor = BootMonitor::new(
        StdFileSystem::new(plan.boot_root),
        PlutonRootOfTrust::new(client, capability, Vec::new()),
        BootConfig::new(plan.product),
    );
    let mut log = Vec::new();

    let stage = "first boot of the factory image";
    install(&mut monitor, plan.factory_image, Slot::A, stage)?;
    let first = boot_and_confirm(&mut monitor, plan, Slot::A, stage)?;
    log.push(format!(
        "{stage}: slot A, version {}, confirmed",
        first.version
    ));

    let stage = "update to slot B";
    install(&mut monitor, plan.update_image, Slot::B, stage)?;
    let update = boot_and_confirm(&mut monitor, plan, Slot::B, stage)?;
    log.push(format!("{stage}: version {}, confirmed", update.version));

    let stage = "update back to the factory image in slot A";
    install(&mut monitor, plan.factory_image, Slot::A, stage)?;
    let factory = boot_and_confirm(&mut monitor, plan, Slot::A, stage)?;
    log.push(format!("{stage}: confirmed"));

    let stage = "rollback from a failing trial in slot B";
    install(&mut monitor, plan.update_image, Slot::B, stage)?;
    let crashes = crash_until_rolled_back(&mut monitor, plan, stage)?;
    let after = monitor.select_boot().map_err(|e| fail(stage, e))?;
    if after.slot != Slot::A || after.trial || after.measurement != factory.measurement {
        return Err(fail(
            stage,
            format!(
                "after the rollback the unit booted slot {} (trial: {}), not the confirmed factory image in slot A",
                after.slot, after.trial
            ),
        ));
    }
    let state = monitor.load_state().map_err(|e| fail(stage, e))?;
    if state.primary() != Some(Slot::A) || !matches!(state.slot(Slot::A), SlotStatus::Confirmed(_))
    {
        return Err(fail(stage, "slot A is not the confirmed primary slot"));
    }
    log.push(format!(
        "{stage}: {crashes} crashes on trial, rolled back to slot A"
    ));

    Ok(SelftestReport {
        factory_measurement: factory.measurement,
        factory_version: factory.version.to_string(),
        security_counter: factory.security_counter,
        log,
    })
}

fn install(
    monitor: &mut Monitor,
    image: &Path,
    expected: Slot,
    stage: &str,
) -> Result<(), SelftestError> {
    let mut file =
        File::open(image).map_err(|e| fail(stage, format!("{}: {e}", image.display())))?;
    let len = file
        .metadata()
        .map_err(|e| fail(stage, format!("{}: {e}", image.display())))?
        .len();
    let slot = monitor
        .install(&mut file, len)
        .map_err(|e| fail(stage, format!("install {}: {e}", image.display())))?;
    if slot != expected {
        return Err(fail(
            stage,
            format!("installed into slot {slot}, expected slot {expected}"),
        ));
    }
    Ok(())
}

fn boot_trial(
    monitor: &mut Monitor,
    expected: Slot,
    stage: &str,
) -> Result<BootDecision, SelftestError> {
    let decision = monitor.select_boot().map_err(|e| boot_failure(stage, e))?;
    if decision.slot != expected || !decision.trial {
        return Err(fail(
            stage,
            format!(
                "boot chose slot {} (trial: {}), expected a trial of slot {expected}; given up: {:?}",
                decision.slot, decision.trial, decision.given_up
            ),
        ));
    }
    Ok(decision)
}

fn boot_failure(stage: &str, error: BootError) -> SelftestError {
    fail(stage, format!("boot: {error}"))
}

fn boot_and_confirm(
    monitor: &mut Monitor,
    plan: &SelftestPlan<'_>,
    expected: Slot,
    stage: &str,
) -> Result<BootDecision, SelftestError> {
    let decision = boot_trial(monitor, expected, stage)?;
    let policy = HealthCheckPolicy {
        deadline: plan.probe_timeout,
        require_link: false, // no fleet link on the line; the probe stands in for it
        require_bridges: true,
    };
    let mut check = TrialHealthCheck::new(policy);
    let started = Instant::now();
    let healthy = probe(plan, &decision, stage)?;
    let verdict = check.observe(
        started.elapsed(),
        HealthReport {
            link_up: false,
            bridges_healthy: healthy,
        },
    );
    match verdict {
        TrialVerdict::Confirm => {
            monitor
                .confirm(decision.slot)
                .map_err(|e| fail(stage, format!("confirm: {e}")))?;
            Ok(decision)
        }
        TrialVerdict::Waiting { .. } | TrialVerdict::TimedOut => {
            let _ = monitor.trial_timed_out(decision.slot);
            Err(fail(
                stage,
                format!(
                    "the image in slot {} did not pass its health probe",
                    decision.slot
                ),
            ))
        }
    }
}

/// Start the image's executable with the probe arguments; healthy = exit status 0 in time.
fn probe(
    plan: &SelftestPlan<'_>,
    decision: &BootDecision,
    stage: &str,
) -> Result<bool, SelftestError> {
    let args: Vec<&str> = plan.probe_args.iter().map(String::as_str).collect();
    let mut child = warden_os::launch::spawn(decision, plan.boot_root, plan.run_dir, &args)
        .map_err(|e| fail(stage, format!("launch slot {}: {e}", decision.slot)))?;
    let deadline = Instant::now() + plan.probe_timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            Err(error) => return Err(fail(stage, format!("wait for the probe: {error}"))),
        }
    }
}

/// Trial-boot slot B and kill its process until the trial policy rolls it back.
fn crash_until_rolled_back(
    monitor: &mut Monitor,
    plan: &SelftestPlan<'_>,
    stage: &str,
) -> Result<u32, SelftestError> {
    let limit = u32::from(monitor.config().trial.max_attempts) + 1;
    for crashes in 1..=limit {
        let decision = boot_trial(monitor, Slot::B, stage)?;
        let args: Vec<&str> = plan.probe_args.iter().map(String::as_str).collect();
        let mut child = warden_os::launch::spawn(&decision, plan.boot_root, plan.run_dir, &args)
            .map_err(|e| fail(stage, format!("launch slot B: {e}")))?;
        let _ = child.kill();
        let _ = child.wait();
        match monitor
            .report_crash(Slot::B)
            .map_err(|e| fail(stage, format!("report crash: {e}")))?
        {
            CrashVerdict::RolledBack(_) => return Ok(crashes),
            CrashVerdict::Restart => {}
        }
    }
    Err(fail(
        stage,
        format!("slot B was not rolled back after {limit} crashes"),
    ))
}
