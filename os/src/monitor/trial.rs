//! Compartment crashes while the running image is on trial go to the boot monitor.
//!
//! [`launch::spawn`](crate::launch::spawn) starts the image with `WARDEN_SLOT` and
//! `WARDEN_TRIAL`; on a trial image every compartment crash is one
//! [`BootMonitor::report_crash`], and the K-th ends the run for rollback.

use std::path::Path;

use super::manifest::BootSettings;
use crate::boot::{BootError, BootMonitor};
use crate::file_system::{SlotFileSystem, StdFileSystem};
use crate::root_of_trust::{BootRootOfTrust, PlutonRootOfTrust, RootOfTrustError};
use crate::slots::{CrashVerdict, Slot};
use crate::{BootConfig, image::ProductId};

/// Environment variable (set by `launch::spawn`): the slot this image runs from.
pub const SLOT_ENV: &str = "WARDEN_SLOT";
/// Environment variable (set by `launch::spawn`): `1` on a trial boot.
pub const TRIAL_ENV: &str = "WARDEN_TRIAL";
/// Environment variable (set by `launch::spawn`): the running image's version, as its
/// signed header names it.
pub const VERSION_ENV: &str = "WARDEN_IMAGE_VERSION";
/// Environment variable (set by `launch::spawn`): the running image's measurement (the
/// SHA-256 of its header the boot stage extended into the root of trust), lowercase hex.
pub const MEASUREMENT_ENV: &str = "WARDEN_MEASUREMENT";
/// Environment variable (set by `warden boot`): the trial's health-check deadline in
/// ms; the image confirms itself healthy before it, or gives the trial up.
pub const TRIAL_DEADLINE_ENV: &str = "WARDEN_TRIAL_DEADLINE_MS";

/// The slot this image was booted from (`WARDEN_SLOT`), if `launch` started it.
pub fn slot_from_env() -> Option<Slot> {
    match std::env::var(SLOT_ENV).ok()?.as_str() {
        "a" => Some(Slot::A),
        "b" => Some(Slot::B),
        _ => None,
    }
}

/// The image the boot stage started, from the environment `launch` gave it: slot,
/// version and measurement, if all three are there.
pub fn booted_image_from_env() -> Option<(Slot, String, String)> {
    Some((
        slot_from_env()?,
        std::env::var(VERSION_ENV).ok()?,
        std::env::var(MEASUREMENT_ENV).ok()?,
    ))
}

/// The slot this image runs from on trial (`WARDEN_TRIAL=1`), if it does.
pub fn trial_slot_from_env() -> Option<Slot> {
    (std::env::var(TRIAL_ENV).ok()? == "1")
        .then(slot_from_env)
        .flatten()
}

/// What the boot state says after one more crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialCrashVerdict {
    /// Keep going: restart the compartment.
    Restart,
    /// The trial failed: the slot is given up, the next boot runs the other image.
    RolledBack {
        /// The boot state's reason.
        reason: String,
    },
}

/// A trial crash that could not be reported to the boot monitor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrialCrashError {
    /// The boot settings name a product that is not a product ID.
    #[error("product {0:?} in the manifest's boot settings is not a product id")]
    Product(String),
    /// Pluton (the root of trust) could not be reached.
    #[error("cannot reach pluton to report a trial crash: {0}")]
    RootOfTrust(#[source] RootOfTrustError),
    /// The boot monitor could not record the crash.
    #[error("the boot monitor could not record the crash: {0}")]
    Boot(#[from] BootError),
}

/// Where compartment crashes go while the running image is on trial.
pub trait TrialCrashSink: Send {
    /// Compartment `compartment` crashed (exit, signal, panic or watchdog kill).
    fn compartment_crashed(
        &mut self,
        compartment: &str,
    ) -> Result<TrialCrashVerdict, TrialCrashError>;
}

/// A boot monitor and the trial slot it runs from.
#[derive(Debug)]
pub struct BootTrial<F, R> {
    /// The boot monitor over the device's boot state.
    pub boot: BootMonitor<F, R>,
    /// The slot on trial.
    pub slot: Slot,
}

impl<F, R> TrialCrashSink for BootTrial<F, R>
where
    F: SlotFileSystem + Send,
    R: BootRootOfTrust + Send,
{
    fn compartment_crashed(
        &mut self,
        compartment: &str,
    ) -> Result<TrialCrashVerdict, TrialCrashError> {
        tracing::warn!(compartment, slot = %self.slot.name(), "crash on a trial image reported to the boot monitor");
        match self.boot.report_crash(self.slot) {
            Ok(CrashVerdict::Restart) => Ok(TrialCrashVerdict::Restart),
            Ok(CrashVerdict::RolledBack(reason)) => Ok(TrialCrashVerdict::RolledBack {
                reason: reason.to_string(),
            }),
            Err(error) => Err(error.into()),
        }
    }
}

/// The sink `warden run --manifest` uses: pluton is one of the monitor's own
/// compartments, so it is reached only when a crash is reported.
#[derive(Debug)]
pub struct PlutonBootTrial {
    settings: BootSettings,
    slot: Slot,
}

impl PlutonBootTrial {
    /// A sink when this image is on trial (from the environment `launch::spawn` sets),
    /// `None` otherwise.
    pub fn from_env(settings: &BootSettings) -> Option<Self> {
        let slot = trial_slot_from_env()?;
        Some(Self {
            settings: settings.clone(),
            slot,
        })
    }

    fn boot(&self) -> Result<BootTrial<StdFileSystem, PlutonRootOfTrust>, TrialCrashError> {
        let product = ProductId::new(&self.settings.product)
            .ok_or_else(|| TrialCrashError::Product(self.settings.product.clone()))?;
        let root_of_trust = PlutonRootOfTrust::connect(
            &self.settings.pluton_socket,
            &self.settings.capability_file,
            Vec::new(),
        )
        .map_err(TrialCrashError::RootOfTrust)?;
        Ok(BootTrial {
            boot: BootMonitor::new(
                StdFileSystem::new(Path::new(&self.settings.state_dir)),
                root_of_trust,
                BootConfig::new(product),
            ),
            slot: self.slot,
        })
    }
}

impl TrialCrashSink for PlutonBootTrial {
    fn compartment_crashed(
        &mut self,
        compartment: &str,
    ) -> Result<TrialCrashVerdict, TrialCrashError> {
        self.boot()?.compartment_crashed(compartment)
    }
}
