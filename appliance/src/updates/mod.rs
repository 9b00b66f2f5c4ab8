//! Update offers from the fleet: window, download with resume, verify, install, report.
//!
//! For each [`UpdateOffer`] from the link:
//! 1. the offer is checked (digest, version, URL) and shown to the operator
//!    ([`UpdateDecision::offer`], on the status page);
//! 2. the image is downloaded into the download directory, resuming an interrupted
//!    transfer with an HTTP range request, and its SHA-256 checked against the offer
//!    (`warden_os::update::UpdateAgent`);
//! 3. the install waits for the gate: the offer's own window, the operator's deferral
//!    or allowance from the status page, the unit's maintenance windows and any
//!    application veto (`warden_os::update::window`);
//! 4. the boot monitor verifies the image fully (vendor root chain, product,
//!    anti-rollback counter, signature, payload) while writing it into the inactive
//!    slot, which then boots on trial.
//!
//! Every step is published as an [`UpdateStatus`] (and a `update-state` event) through
//! the durable control queue. When the boot stage (`warden boot`, `crate::boot`)
//! started this image, the appliance then stops with
//! [`RESTART_EXIT_CODE`](warden_os::launch::RESTART_EXIT_CODE) and the boot stage boots
//! the new slot on trial; otherwise it boots at the next restart. After the restart,
//! [`report_boot_outcome`] publishes `trial`, then `confirmed` or `rolled-back`, from
//! the boot monitor's state and the record of the installed offer.
//!
//! A trial image confirms itself here, with the same [`TrialHealthCheck`] the factory
//! self-test uses: healthy (link up, every bridge connected) before the deadline the
//! boot stage set → [`BootMonitor::confirm`]; not by then → `trial_timed_out` and a
//! restart into the previous image ([`watch_trial`]).

mod gate;
mod installer;
pub mod local;
pub mod revocations;
mod root_of_trust;
mod trial;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::ControlSender;
use warden_link::topics::{UpdateOffer, UpdateState};
use warden_os::file_system::SlotFileSystem;
use warden_os::update::UpdateAgent;
use warden_os::{BootMonitor, BootRootOfTrust};

// The updater's public face, kept where integrators and the tests find it.
pub use gate::{Gate, OfferError, gate};
pub use installer::{GATE_RECHECK, InstalledRecord, SharedMonitor, UpdateError, Updater};
pub use root_of_trust::UnprivilegedRootOfTrust;
pub use trial::{
    BOOT_OUTCOME_INTERVAL, BootOutcomeError, HealthProbe, TRIAL_CHECK_INTERVAL,
    report_boot_outcome, trial_policy_from_env, watch_trial,
};

use crate::state::updates::UpdateDecision;
use installer::publish;

/// What the updater and the trial check need from the running appliance.
pub struct UpdateContext {
    /// Where statuses go.
    pub control: ControlSender,
    /// The operator's decision (status page).
    pub decision: Arc<Mutex<UpdateDecision>>,
    /// Offers from the link.
    pub offers: mpsc::Receiver<UpdateOffer>,
    /// The appliance's health, for the trial check.
    pub health: HealthProbe,
    /// Cancelled to stop the appliance for the boot stage's next boot; `None` where
    /// nothing would act on it (the link compartment: the new slot boots at the next
    /// restart).
    pub restart: Option<CancellationToken>,
    /// Stops everything.
    pub shutdown: CancellationToken,
    /// Set at start to the SHA-256 (hex) of the installed image (the primary slot's
    /// file), which the unit's reported twin carries so that the fleet can offer a delta
    /// from it (`TwinReported::image_sha256`).
    pub installed_image: Arc<std::sync::OnceLock<String>>,
    /// Release-key revocation lists from the link (installed as a file's would be:
    /// [`revocations`]).
    pub revocation_lists: mpsc::Receiver<Vec<u8>>,
    /// Set at start, and after each install of a revocation list, to the sequence of
    /// the list the unit holds (`TwinReported::revocation_list_sequence`).
    pub revocation_sequence: tokio::sync::watch::Sender<Option<u64>>,
}

/// How the updater reaches pluton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlutonAccess {
    /// With the provisioning capability (`[updates] capability_file`; the single-process
    /// appliance): a confirmation raises the anti-rollback counter at once.
    Privileged,
    /// Without it (the link compartment, which faces the network and must never hold
    /// the capability that installs root keys): installs need only the vendor roots and
    /// the counter; a confirmation is persisted and the boot stage's next
    /// `select_boot` raises the counter (the path that finishes an interrupted confirm).
    Unprivileged,
}

/// The updater of a unit with `[updates]` (images verified against pluton's vendor
/// roots, installed into the slots of `config.state_dir`), the trial check when this
/// image runs on trial, and the watcher that reports trial, confirmation or rollback:
/// run the returned future until shutdown.
pub fn start(
    config: &crate::config::UpdatesConfig,
    fleet_ca: &Path,
    pluton_socket: Option<&Path>,
    product: &str,
    access: PlutonAccess,
    context: UpdateContext,
) -> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
    let socket = pluton_socket.ok_or_else(|| {
        anyhow::anyhow!(
            "[updates] needs link.pluton_socket: images are verified against pluton's vendor roots"
        )
    })?;
    let product = warden_os::image::ProductId::new(product)
        .ok_or_else(|| anyhow::anyhow!("product {product:?} is not a valid product id"))?;
    // Offers from an HTTPS fleet name https:// URLs: the downloads trust the fleet CA
    // (the link's `fleet_ca`) and nothing else.
    let https = warden_link::tls::server_auth_config(fleet_ca)
        .map_err(|e| anyhow::anyhow!("update downloads over https: {e}"))?;
    let boot_config = warden_os::BootConfig::new(product);
    let file_system = warden_os::file_system::StdFileSystem::new(&config.state_dir);
    Ok(match access {
        PlutonAccess::Privileged => {
            let root_of_trust =
                warden_os::PlutonRootOfTrust::connect(socket, &config.capability_file, Vec::new())
                    .map_err(|e| anyhow::anyhow!("update root of trust: {e}"))?;
            let monitor = BootMonitor::new(file_system, root_of_trust, boot_config);
            Box::pin(run_updates(config, monitor, https.clone(), context)?)
        }
        PlutonAccess::Unprivileged => {
            let root_of_trust = UnprivilegedRootOfTrust::connect(socket)
                .map_err(|e| anyhow::anyhow!("update root of trust: {e}"))?;
            let monitor = BootMonitor::new(file_system, root_of_trust, boot_config);
            Box::pin(run_updates(config, monitor, https.clone(), context)?)
        }
    })
}

fn run_updates<F, R>(
    config: &crate::config::UpdatesConfig,
    monitor: BootMonitor<F, R>,
    https: rustls::ClientConfig,
    context: UpdateContext,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static>
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let UpdateContext {
        control,
        decision,
        offers,
        health,
        restart,
        shutdown,
        installed_image,
        revocation_lists,
        revocation_sequence,
    } = context;
    let mut monitor = monitor;
    revocation_sequence.send_replace(revocations::held_sequence(&mut monitor));
    match monitor.installed_image_sha256() {
        Ok(Some(sha256)) => {
            let _ = installed_image.set(warden_link::topics::to_hex(&sha256));
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the installed image; the fleet is offered no delta base");
        }
    }
    let booted_slot = warden_os::monitor::trial::slot_from_env();
    let trial_slot = warden_os::monitor::trial::trial_slot_from_env();
    let monitor = Arc::new(Mutex::new(monitor));
    let updater = Updater {
        agent: UpdateAgent::new(&config.download_dir, Some(https)),
        download_dir: config.download_dir.clone(),
        monitor: Arc::clone(&monitor),
        window: Arc::default(),
        decision,
        control: control.clone(),
        retry_pause: Duration::from_secs(2),
        restart: booted_slot.and(restart.clone()),
        revocation_sequence: Some(revocation_sequence),
    };
    // An image installed from a file may run where the fleet is never reachable (an
    // air-gapped cell): its trial does not wait for the link, only for the bridges.
    let local_trial = InstalledRecord::load(&config.download_dir)
        .is_some_and(|record| record.local && Some(record.slot) == trial_slot);
    let trial = trial_slot.map(|slot| {
        let mut policy = trial_policy_from_env();
        if local_trial {
            policy.require_link = false;
        }
        watch_trial(
            Arc::clone(&monitor),
            slot,
            policy,
            health,
            restart,
            shutdown.clone(),
        )
    });
    let after_trial = (
        Arc::clone(&monitor),
        config.download_dir.clone(),
        control.clone(),
    );
    // Offline updates (a file from the CLI or the status page) through the same
    // updater; a unit whose socket cannot be bound still takes the fleet's offers.
    let local_installs = match local::bind(&config.download_dir) {
        Ok(listener) => Some(local::serve(
            listener,
            updater.clone(),
            config.max_local_image_mib.saturating_mul(1 << 20),
            shutdown.clone(),
        )),
        Err(error) => {
            tracing::warn!(%error, socket = %local::socket_path(&config.download_dir).display(), "local installs are off: cannot bind their socket");
            None
        }
    };
    let local_installs = async move {
        if let Some(serving) = local_installs {
            serving.await;
        }
    };
    let fleet_lists =
        revocations::take_from_fleet(updater.clone(), revocation_lists, shutdown.clone());
    let download_dir = config.download_dir.clone();
    let watch_stop = shutdown.clone();
    let watcher = async move {
        let mut every = tokio::time::interval(BOOT_OUTCOME_INTERVAL);
        loop {
            tokio::select! {
                () = watch_stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let (monitor, download_dir, control) =
                (Arc::clone(&monitor), download_dir.clone(), control.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
                report_boot_outcome(&mut monitor, &download_dir, &control)
            })
            .await;
            if let Ok(Err(error)) = outcome {
                tracing::warn!(%error, "cannot read the boot state for the update status");
            }
        }
    };
    let trial = async move {
        let Some(trial) = trial else { return };
        if trial.await.is_some() {
            // Publish the outcome now rather than at the next look.
            let (monitor, download_dir, control) = after_trial;
            let _ = tokio::task::spawn_blocking(move || {
                let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
                report_boot_outcome(&mut monitor, &download_dir, &control)
            })
            .await;
        }
    };
    Ok(async move {
        tokio::join!(
            watcher,
            trial,
            local_installs,
            fleet_lists,
            updater.run(offers, shutdown)
        );
    })
}

/// Answers every offer `failed` (a unit without `[updates]` takes no updates).
pub async fn refuse_all(
    mut offers: mpsc::Receiver<UpdateOffer>,
    control: ControlSender,
    shutdown: CancellationToken,
) {
    loop {
        let offer = tokio::select! {
            () = shutdown.cancelled() => return,
            offer = offers.recv() => match offer {
                Some(offer) => offer,
                None => return,
            },
        };
        publish(
            &control,
            &offer.id,
            UpdateState::Failed,
            "this unit takes no updates (its config has no [updates] section)".to_owned(),
        );
    }
}
