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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{
    DeviceEvent, PROTOCOL_VERSION, UpdateOffer, UpdateState, UpdateStatus, event_kind, from_hex,
};
use warden_link::{ControlMessage, ControlSender};
use warden_os::file_system::SlotFileSystem;
use warden_os::image::SemanticVersion;
use warden_os::update::{
    UpdateAgent, UpdateEvent, UpdateOffer as ImageOffer, UpdateWindowPolicy, WindowDecision,
    install_staged,
};
use warden_os::{
    BootMonitor, BootRootOfTrust, HealthCheckPolicy, HealthReport, Slot, SlotStatus,
    TrialHealthCheck, TrialVerdict,
};

use warden_os::root_of_trust::{IMAGE_SECURITY_COUNTER, RootOfTrustError};

use crate::state::updates::UpdateDecision;

/// How often a waiting offer looks at its gate again.
pub const GATE_RECHECK: Duration = Duration::from_secs(5);
/// Download attempts per gate check (each resumes where the last stopped).
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// Record of the last installed offer, in the download directory.
const INSTALLED_RECORD: &str = "installed-offer.json";

/// The boot monitor the updater installs through, shared with whoever else uses it.
pub type SharedMonitor<F, R> = Arc<Mutex<BootMonitor<F, R>>>;

/// What the updater works with.
pub struct Updater<F, R> {
    /// Downloads and checks images.
    pub agent: UpdateAgent,
    /// Where partial and staged downloads and the installed-offer record live.
    pub download_dir: PathBuf,
    /// Installs into the inactive slot (verifying the image first).
    pub monitor: SharedMonitor<F, R>,
    /// The unit's maintenance windows and application vetoes.
    pub window: Arc<Mutex<UpdateWindowPolicy>>,
    /// The operator's decision (status page).
    pub decision: Arc<Mutex<UpdateDecision>>,
    /// Where statuses go.
    pub control: ControlSender,
    /// Pause between download attempts.
    pub retry_pause: Duration,
    /// Cancelled after an install to have the boot stage boot the new slot (`None`
    /// when no boot stage started this image: the new slot boots at the next restart).
    pub restart: Option<CancellationToken>,
}

/// Observes the running appliance's health for the trial check.
pub type HealthProbe = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// An offer whose fields were checked.
struct CheckedOffer {
    wire: UpdateOffer,
    image: ImageOffer,
}

/// May the offer be installed now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Install,
    /// Not yet; why, for people.
    Wait(String),
    /// Never: the offer's window has ended.
    Expired(String),
}

/// The gate for `offer` at `now_ms`: the offer's window (the operator's "allow" lets
/// it in before the window opens, never after it ends), then vetoes, the operator's
/// deferral and the unit's maintenance windows.
pub fn gate(
    offer: &UpdateOffer,
    decision: &UpdateDecision,
    window: &UpdateWindowPolicy,
    now_ms: u64,
) -> Gate {
    if offer.window_end_ms != 0 && now_ms > offer.window_end_ms {
        return Gate::Expired(format!(
            "the offer's window ended at {} ms",
            offer.window_end_ms
        ));
    }
    let allowed = decision.allowed_version.as_deref() == Some(offer.version.as_str());
    let mut policy = window.clone();
    if let Some(until) = decision.deferred_until_ms.filter(|_| !allowed) {
        policy.defer_until(until.div_ceil(1000));
    }
    match policy.decide(now_ms / 1000) {
        WindowDecision::InstallNow => {}
        WindowDecision::Vetoed { by, reason } => {
            return Gate::Wait(format!("vetoed by {by}: {reason}"));
        }
        WindowDecision::Deferred { until } => {
            return Gate::Wait(format!("deferred by the operator until {until} (Unix s)"));
        }
        WindowDecision::OutsideWindow { opens_at } if !allowed => {
            return Gate::Wait(format!(
                "outside the maintenance window; the next opens at {opens_at} (Unix s)"
            ));
        }
        WindowDecision::OutsideWindow { .. } => {}
    }
    if now_ms < offer.window_start_ms && !allowed {
        return Gate::Wait(format!(
            "the offer's window opens at {} ms",
            offer.window_start_ms
        ));
    }
    Gate::Install
}

/// Why an offer was refused before anything was downloaded.
fn check(offer: &UpdateOffer) -> Result<CheckedOffer, String> {
    let sha256: [u8; 32] = from_hex(&offer.sha256)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("sha256 {:?} is not 64 hex digits", offer.sha256))?;
    let version: SemanticVersion = offer
        .version
        .parse()
        .map_err(|_| format!("version {:?} is not MAJOR.MINOR.PATCH", offer.version))?;
    if !(offer.url.starts_with("http://") || offer.url.starts_with("https://")) {
        return Err(format!("url {:?} is not http(s)", offer.url));
    }
    if offer.size == 0 {
        return Err("size is 0".to_owned());
    }
    Ok(CheckedOffer {
        wire: offer.clone(),
        image: ImageOffer {
            url: offer.url.clone(),
            sha256,
            size: offer.size,
            version,
        },
    })
}

/// Which offer was installed into which slot, and the last state published for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRecord {
    /// The offer's ID.
    pub offer_id: String,
    /// The offered version.
    pub version: String,
    /// The slot it went into.
    pub slot: Slot,
    /// The last state published (`installed`, `trial`, …).
    pub published: UpdateState,
}

impl InstalledRecord {
    /// Reads the record in `download_dir`, if there is one.
    pub fn load(download_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(download_dir.join(INSTALLED_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, download_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        warden_os::release::write_atomically(&download_dir.join(INSTALLED_RECORD), &[&bytes])
            .map_err(std::io::Error::other)
    }
}

fn publish(control: &ControlSender, offer_id: &str, state: UpdateState, detail: String) {
    tracing::info!(offer = offer_id, state = state.as_str(), %detail, "update");
    let status = UpdateStatus {
        v: PROTOCOL_VERSION,
        id: offer_id.to_owned(),
        state: state.as_str().to_owned(),
        detail: detail.clone(),
    };
    control.send_or_log(&ControlMessage::UpdateStatus(status));
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::UPDATE_STATE,
        format!("update {offer_id}: {}: {detail}", state.as_str()),
    )));
}

fn now_ms() -> u64 {
    warden_os::reports::now_ms()
}

impl<F, R> Updater<F, R>
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    /// Handles offers until shutdown; a newer offer replaces one still waiting.
    pub async fn run(self, mut offers: mpsc::Receiver<UpdateOffer>, shutdown: CancellationToken) {
        let mut next = None;
        loop {
            let offer = match next.take() {
                Some(offer) => offer,
                None => tokio::select! {
                    () = shutdown.cancelled() => return,
                    offer = offers.recv() => match offer {
                        Some(offer) => offer,
                        None => return,
                    },
                },
            };
            let handling = self.handle(&offer);
            tokio::pin!(handling);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = &mut handling => break,
                    newer = offers.recv() => match newer {
                        // The same offer again (a redelivery): keep going.
                        Some(newer) if newer.id == offer.id => {}
                        Some(newer) => {
                            publish(&self.control, &offer.id, UpdateState::Failed, format!("replaced by offer {}", newer.id));
                            next = Some(newer);
                            break;
                        }
                        None => return,
                    },
                }
            }
        }
    }

    /// Takes one offer through download, gate and install. Returns the slot it was
    /// installed into, or why not (already published as `failed`).
    pub async fn handle(&self, offer: &UpdateOffer) -> Result<Slot, String> {
        let result = self.handle_inner(offer).await;
        if let Err(error) = &result {
            publish(&self.control, &offer.id, UpdateState::Failed, error.clone());
        }
        let mut decision = self.decision.lock().unwrap_or_else(PoisonError::into_inner);
        if decision.offer.as_ref().map(|o| o.version.as_str()) == Some(offer.version.as_str()) {
            decision.offer = None;
        }
        result
    }

    async fn handle_inner(&self, offer: &UpdateOffer) -> Result<Slot, String> {
        let checked = check(offer).map_err(|why| format!("offer refused: {why}"))?;
        if let Some(record) = InstalledRecord::load(&self.download_dir)
            && record.offer_id == offer.id
        {
            // Offered again (a redelivery, a restart): answer, do not install twice.
            publish(
                &self.control,
                &offer.id,
                record.published,
                format!(
                    "version {} already installed in slot {}",
                    record.version, record.slot
                ),
            );
            return Ok(record.slot);
        }
        self.decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer = Some(crate::state::updates::UpdateOffer {
            version: offer.version.clone(),
            window_ends_ms: offer.window_end_ms,
        });

        publish(
            &self.control,
            &offer.id,
            UpdateState::Downloading,
            format!("{} bytes from {}", offer.size, offer.url),
        );
        let staged = self.download(&checked).await?;

        let mut last_wait = String::new();
        loop {
            let outcome = {
                let decision = self
                    .decision
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let window = self
                    .window
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                gate(offer, &decision, &window, now_ms())
            };
            match outcome {
                Gate::Install => break,
                Gate::Expired(why) => return Err(why),
                Gate::Wait(why) => {
                    if why != last_wait {
                        publish(&self.control, &offer.id, UpdateState::Waiting, why.clone());
                        last_wait = why;
                    }
                    tokio::time::sleep(GATE_RECHECK).await;
                }
            }
        }

        publish(
            &self.control,
            &offer.id,
            UpdateState::Verifying,
            "sha256 matches the offer; verifying the image signature and installing".to_owned(),
        );
        let monitor = Arc::clone(&self.monitor);
        let installed = tokio::task::spawn_blocking(move || {
            let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
            install_staged(&mut monitor, &staged, &mut |_| {})
        })
        .await
        .map_err(|error| format!("install task: {error}"))?
        .map_err(|error| error.to_string())?;
        let record = InstalledRecord {
            offer_id: offer.id.clone(),
            version: offer.version.clone(),
            slot: installed,
            published: UpdateState::Installed,
        };
        if let Err(error) = record.save(&self.download_dir) {
            tracing::warn!(%error, "cannot record the installed offer; trial and confirmation will not be reported");
        }
        let when = if self.restart.is_some() {
            "restarting into it now"
        } else {
            "it boots on trial at the next restart"
        };
        publish(
            &self.control,
            &offer.id,
            UpdateState::Installed,
            format!(
                "version {} verified and installed in slot {installed}; {when}",
                checked.wire.version
            ),
        );
        if let Some(restart) = &self.restart {
            restart.cancel();
        }
        Ok(installed)
    }

    async fn download(&self, offer: &CheckedOffer) -> Result<PathBuf, String> {
        let id = offer.wire.id.clone();
        let control = self.control.clone();
        let mut report = move |event: UpdateEvent| {
            if let UpdateEvent::DownloadStarted { from } = event
                && from > 0
            {
                publish(
                    &control,
                    &id,
                    UpdateState::Downloading,
                    format!("resuming at byte {from}"),
                );
            }
        };
        self.agent
            .download_with_retries(
                &offer.image,
                DOWNLOAD_ATTEMPTS,
                self.retry_pause,
                &mut report,
            )
            .await
            .map_err(|error| error.to_string())
    }
}

/// Publishes what became of the last installed offer since the restart: `trial` while
/// its slot runs on trial, then `confirmed` or `rolled-back` (each once).
pub fn report_boot_outcome<F: SlotFileSystem, R: BootRootOfTrust>(
    monitor: &mut BootMonitor<F, R>,
    download_dir: &Path,
    control: &ControlSender,
) -> Result<Option<UpdateState>, String> {
    let Some(mut record) = InstalledRecord::load(download_dir) else {
        return Ok(None);
    };
    let state = monitor.load_state().map_err(|error| error.to_string())?;
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
        publish(control, &record.offer_id, now, detail);
        record.published = now;
        record
            .save(download_dir)
            .map_err(|error| format!("{}: {error}", download_dir.display()))?;
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

/// Pluton without the provisioning capability: roots and counters, read only.
#[derive(Debug)]
pub struct UnprivilegedRootOfTrust {
    client: warden_pluton_api::PlutonClient,
}

impl UnprivilegedRootOfTrust {
    /// Connects to pluton's socket.
    pub fn connect(socket: &Path) -> Result<Self, RootOfTrustError> {
        Ok(Self {
            client: warden_pluton_api::PlutonClient::connect(socket)?,
        })
    }

    fn refused(what: &str) -> RootOfTrustError {
        RootOfTrustError::Capability {
            path: PathBuf::from("(none)"),
            reason: format!(
                "{what} needs the provisioning capability, which this compartment does not hold"
            ),
        }
    }
}

impl BootRootOfTrust for UnprivilegedRootOfTrust {
    fn vendor_roots(&mut self) -> Result<Vec<warden_os::image::RootKey>, RootOfTrustError> {
        self.client
            .root_keys()?
            .iter()
            .map(|root| {
                root.to_root_key()
                    .map_err(|error| RootOfTrustError::InvalidRoot(error.to_string()))
            })
            .collect()
    }
    fn revoked_keys(&mut self) -> Result<Vec<warden_os::image::KeyId>, RootOfTrustError> {
        Ok(Vec::new())
    }
    fn extend_measurement(&mut self, _: &[u8; 32]) -> Result<(), RootOfTrustError> {
        Err(Self::refused("measuring an image"))
    }
    fn read_counter(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self.client.counters()?[usize::from(IMAGE_SECURITY_COUNTER)])
    }
    fn raise_counter(&mut self, _: u64) -> Result<u64, RootOfTrustError> {
        Err(Self::refused("raising the anti-rollback counter"))
    }
}

/// The updater of a unit with `[updates]` (images verified against pluton's vendor
/// roots, installed into the slots of `config.state_dir`), the trial check when this
/// image runs on trial, and the watcher that reports trial, confirmation or rollback:
/// run the returned future until shutdown.
pub fn start(
    config: &crate::config::UpdatesConfig,
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
    let boot_config = warden_os::BootConfig::new(product);
    let file_system = warden_os::file_system::StdFileSystem::new(&config.state_dir);
    Ok(match access {
        PlutonAccess::Privileged => {
            let root_of_trust =
                warden_os::PlutonRootOfTrust::connect(socket, &config.capability_file, Vec::new())
                    .map_err(|e| anyhow::anyhow!("update root of trust: {e}"))?;
            let monitor = BootMonitor::new(file_system, root_of_trust, boot_config);
            Box::pin(run_updates(config, monitor, context)?)
        }
        PlutonAccess::Unprivileged => {
            let root_of_trust = UnprivilegedRootOfTrust::connect(socket)
                .map_err(|e| anyhow::anyhow!("update root of trust: {e}"))?;
            let monitor = BootMonitor::new(file_system, root_of_trust, boot_config);
            Box::pin(run_updates(config, monitor, context)?)
        }
    })
}

fn run_updates<F, R>(
    config: &crate::config::UpdatesConfig,
    monitor: BootMonitor<F, R>,
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
    } = context;
    let booted_slot = warden_os::monitor::trial::slot_from_env();
    let trial_slot = warden_os::monitor::trial::trial_slot_from_env();
    let monitor = Arc::new(Mutex::new(monitor));
    let updater = Updater {
        agent: UpdateAgent::new(&config.download_dir)?,
        download_dir: config.download_dir.clone(),
        monitor: Arc::clone(&monitor),
        window: Arc::default(),
        decision,
        control: control.clone(),
        retry_pause: Duration::from_secs(2),
        restart: booted_slot.and(restart.clone()),
    };
    let trial = trial_slot.map(|slot| {
        watch_trial(
            Arc::clone(&monitor),
            slot,
            trial_policy_from_env(),
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
        tokio::join!(watcher, trial, updater.run(offers, shutdown));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(start: u64, end: u64) -> UpdateOffer {
        UpdateOffer {
            v: PROTOCOL_VERSION,
            id: "wave-1".into(),
            url: "http://127.0.0.1/x.wim".into(),
            sha256: "00".repeat(32),
            size: 10,
            version: "1.2.0".into(),
            window_start_ms: start,
            window_end_ms: end,
        }
    }

    #[test]
    fn the_gate_honours_window_deferral_allowance_and_veto() {
        let now = 1_800_000_000_000;
        let open = offer(now - 1000, now + 3_600_000);
        let none = UpdateDecision::default();
        let any_time = UpdateWindowPolicy::default();
        assert_eq!(gate(&open, &none, &any_time, now), Gate::Install);

        let later = offer(now + 60_000, now + 3_600_000);
        assert!(
            matches!(gate(&later, &none, &any_time, now), Gate::Wait(why) if why.contains("window opens"))
        );
        let mut allowed = UpdateDecision {
            offer: None,
            ..UpdateDecision::default()
        };
        allowed.allowed_version = Some("1.2.0".into());
        assert_eq!(
            gate(&later, &allowed, &any_time, now),
            Gate::Install,
            "the operator's allow lets it in before the window"
        );

        let mut deferred = UpdateDecision::default();
        deferred.defer(now);
        assert!(
            matches!(gate(&open, &deferred, &any_time, now), Gate::Wait(why) if why.contains("deferred"))
        );

        let mut vetoed = UpdateWindowPolicy::default();
        vetoed.veto("press-1", "die closing");
        assert!(
            matches!(gate(&open, &allowed, &vetoed, now), Gate::Wait(why) if why.contains("vetoed by press-1"))
        );

        let ended = offer(now - 7_200_000, now - 3_600_000);
        assert!(matches!(
            gate(&ended, &allowed, &any_time, now),
            Gate::Expired(_)
        ));
    }

    #[test]
    fn malformed_offers_are_refused_before_any_download() {
        let mut bad = offer(0, 0);
        bad.sha256 = "xyz".into();
        assert!(check(&bad).err().is_some_and(|e| e.contains("sha256")));
        let mut bad = offer(0, 0);
        bad.version = "one".into();
        assert!(check(&bad).err().is_some_and(|e| e.contains("version")));
        let mut bad = offer(0, 0);
        bad.url = "file:///etc/passwd".into();
        assert!(check(&bad).err().is_some_and(|e| e.contains("url")));
        assert!(check(&offer(0, 0)).is_ok());
    }
}
