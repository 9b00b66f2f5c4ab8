//! The updater: takes an offer through download (with resume), the gate, and the
//! verified install into the inactive slot, publishing every step.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{
    DeviceEvent, PROTOCOL_VERSION, UPDATE_SOURCE_LOCAL, UpdateOffer, UpdateState, UpdateStatus,
    event_kind, to_hex,
};
use warden_link::{ControlMessage, ControlSender};
use warden_os::file_system::SlotFileSystem;
use warden_os::update::{UpdateAgent, UpdateEvent, UpdateWindowPolicy, install_staged};
use warden_os::{BootMonitor, BootRootOfTrust, Slot};

use super::gate::{CheckedOffer, Gate, OfferError, check, gate};
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
    /// Told the sequence of the release-key revocation list held after each install
    /// of one (from the fleet or a file), for the reported twin (`None`: nobody asks).
    pub revocation_sequence: Option<tokio::sync::watch::Sender<Option<u64>>>,
}

// Not derived: the file system and root of trust need not be `Clone` (they are shared
// behind the monitor's lock).
impl<F, R> Clone for Updater<F, R> {
    fn clone(&self) -> Self {
        Self {
            agent: self.agent.clone(),
            download_dir: self.download_dir.clone(),
            monitor: Arc::clone(&self.monitor),
            window: Arc::clone(&self.window),
            decision: Arc::clone(&self.decision),
            control: self.control.clone(),
            retry_pause: self.retry_pause,
            restart: self.restart.clone(),
            revocation_sequence: self.revocation_sequence.clone(),
        }
    }
}

/// Why an offer was not installed (published as its `failed` detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The offer's fields do not check.
    #[error("offer refused: {0}")]
    Refused(#[from] OfferError),
    /// The offer's window ended before the gate opened.
    #[error("{0}")]
    Expired(String),
    /// The download failed, or the image does not match the offer.
    #[error("{0}")]
    Download(String),
    /// The boot monitor refused the image, or the install failed.
    #[error("{0}")]
    Install(String),
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
    /// Installed from a file on the unit (its statuses are marked `source: local`).
    #[serde(default)]
    pub local: bool,
}

impl InstalledRecord {
    /// Whose statuses these are: an offer's, or a local install's (with its version).
    pub(super) fn origin(&self) -> Origin<'_> {
        if self.local {
            Origin::Local {
                version: &self.version,
            }
        } else {
            Origin::Offer
        }
    }
}

/// Where the image whose status is published came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin<'a> {
    /// An offer of the fleet's.
    Offer,
    /// A file installed on the unit (the `local` module).
    Local {
        /// The image's version (the fleet has no offer to know it from).
        version: &'a str,
    },
}

impl InstalledRecord {
    /// Reads the record in `download_dir`, if there is one.
    pub fn load(download_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(download_dir.join(INSTALLED_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) fn save(&self, download_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        warden_files::write_file_atomically(&download_dir.join(INSTALLED_RECORD), &bytes)
            .map_err(std::io::Error::other)
    }
}

/// Publishes an offer's new state as an update status and an `update-state` event.
pub(super) fn publish(control: &ControlSender, offer_id: &str, state: UpdateState, detail: String) {
    publish_from(control, Origin::Offer, offer_id, state, detail);
}

/// Publishes the new state of an offer or a local install (marked `source: local`)
/// as an update status and an `update-state` event, through the durable control
/// queue: what happens while the link is down reaches the fleet when it returns.
pub(super) fn publish_from(
    control: &ControlSender,
    origin: Origin<'_>,
    offer_id: &str,
    state: UpdateState,
    detail: String,
) {
    tracing::info!(offer = offer_id, state = state.as_str(), %detail, "update");
    let (source, version) = match origin {
        Origin::Offer => (None, None),
        Origin::Local { version } => (
            Some(UPDATE_SOURCE_LOCAL.to_owned()),
            Some(version.to_owned()),
        ),
    };
    let status = UpdateStatus {
        v: PROTOCOL_VERSION,
        id: offer_id.to_owned(),
        state: state.as_str().to_owned(),
        detail: detail.clone(),
        source,
        version,
    };
    control.send_or_log(&ControlMessage::UpdateStatus(status));
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::UPDATE_STATE,
        format!("update {offer_id}: {}: {detail}", state.as_str()),
    )));
}

impl<F, R> Updater<F, R> {
    /// The unit now holds the revocation list of `sequence`: the reported twin says so.
    pub(super) fn revocations_changed(&self, sequence: Option<u64>) {
        if let Some(watch) = &self.revocation_sequence {
            watch.send_if_modified(|held| {
                let changed = *held != sequence;
                *held = sequence;
                changed
            });
        }
    }
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
    pub async fn handle(&self, offer: &UpdateOffer) -> Result<Slot, UpdateError> {
        let result = self.handle_inner(offer).await;
        if let Err(error) = &result {
            publish(
                &self.control,
                &offer.id,
                UpdateState::Failed,
                error.to_string(),
            );
        }
        let mut decision = self.decision.lock().unwrap_or_else(PoisonError::into_inner);
        if decision.offer.as_ref().map(|o| o.version.as_str()) == Some(offer.version.as_str()) {
            decision.offer = None;
        }
        result
    }

    async fn handle_inner(&self, offer: &UpdateOffer) -> Result<Slot, UpdateError> {
        let checked = check(offer)?;
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
        if let Some(staged) = self.stage_delta(&checked).await {
            match self
                .gate_and_install(offer, Origin::Offer, staged, &mut |_| {})
                .await
            {
                Err(UpdateError::Install(reason)) => {
                    // The delta's result did not verify or apply: the full image.
                    publish(
                        &self.control,
                        &offer.id,
                        UpdateState::Downloading,
                        format!("delta not used ({reason}); downloading the full image"),
                    );
                }
                other => return other,
            }
        }
        let staged = self.download(&checked).await?;
        self.gate_and_install(offer, Origin::Offer, staged, &mut |_| {})
            .await
    }

    /// The offer's delta, downloaded, when its base is the installed image; `None` (and a
    /// status saying why) when there is none or it cannot be used: the full image then.
    async fn stage_delta(&self, offer: &CheckedOffer) -> Option<PathBuf> {
        let delta = offer.image.delta.as_ref()?;
        let monitor = Arc::clone(&self.monitor);
        let installed = tokio::task::spawn_blocking(move || {
            let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
            monitor.installed_image_sha256()
        })
        .await;
        let not_used = |why: String| {
            publish(
                &self.control,
                &offer.wire.id,
                UpdateState::Downloading,
                format!("delta not used ({why}); downloading the full image"),
            );
            None
        };
        match installed {
            Ok(Ok(Some(installed))) if installed == delta.base_sha256 => {}
            Ok(Ok(installed)) => {
                return not_used(format!(
                    "it applies to image sha256 {}, the installed image is {}",
                    to_hex(&delta.base_sha256),
                    installed.map_or_else(|| "none".to_owned(), |sha| to_hex(&sha))
                ));
            }
            Ok(Err(error)) => return not_used(format!("cannot read the installed image: {error}")),
            Err(error) => return not_used(format!("install task: {error}")),
        }
        publish(
            &self.control,
            &offer.wire.id,
            UpdateState::Downloading,
            format!("delta of {} bytes from {}", delta.size, delta.url),
        );
        match self
            .agent
            .download_delta_with_retries(delta, DOWNLOAD_ATTEMPTS, self.retry_pause, &mut |_| {})
            .await
        {
            Ok(staged) => Some(staged),
            Err(error) => not_used(format!("download: {error}")),
        }
    }

    /// Waits for the gate (the offer's window, vetoes, the operator's decision, the
    /// unit's maintenance windows), then verifies and installs `staged` into the
    /// inactive slot, records it and publishes each step; `waiting` hears each new
    /// reason to wait. Online offers and local installs (the `local` module) both end
    /// here, so both take the same windows, verification and anti-rollback check.
    pub(super) async fn gate_and_install(
        &self,
        offer: &UpdateOffer,
        origin: Origin<'_>,
        staged: PathBuf,
        waiting: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Slot, UpdateError> {
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
                gate(offer, &decision, &window, crate::clock::now_ms())
            };
            match outcome {
                Gate::Install => break,
                Gate::Expired(why) => return Err(UpdateError::Expired(why)),
                Gate::Wait(why) => {
                    if why != last_wait {
                        publish_from(
                            &self.control,
                            origin,
                            &offer.id,
                            UpdateState::Waiting,
                            why.clone(),
                        );
                        waiting(&why);
                        last_wait = why;
                    }
                    tokio::time::sleep(GATE_RECHECK).await;
                }
            }
        }

        let verifying = match origin {
            Origin::Offer => {
                "sha256 matches the offer; verifying the image signature and installing"
            }
            Origin::Local { .. } => "verifying the image signature and installing",
        };
        publish_from(
            &self.control,
            origin,
            &offer.id,
            UpdateState::Verifying,
            verifying.to_owned(),
        );
        let monitor = Arc::clone(&self.monitor);
        let installed = tokio::task::spawn_blocking(move || {
            let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
            install_staged(&mut monitor, &staged, &mut |_| {})
        })
        .await
        .map_err(|error| UpdateError::Install(format!("install task: {error}")))?
        .map_err(|error| UpdateError::Install(error.to_string()))?;
        let record = InstalledRecord {
            offer_id: offer.id.clone(),
            version: offer.version.clone(),
            slot: installed,
            published: UpdateState::Installed,
            local: matches!(origin, Origin::Local { .. }),
        };
        if let Err(error) = record.save(&self.download_dir) {
            tracing::warn!(%error, "cannot record the installed offer; trial and confirmation will not be reported");
        }
        let when = if self.restart.is_some() {
            "restarting into it now"
        } else {
            "it boots on trial at the next restart"
        };
        let from = match origin {
            Origin::Offer => String::new(),
            Origin::Local { .. } => " from a file".to_owned(),
        };
        publish_from(
            &self.control,
            origin,
            &offer.id,
            UpdateState::Installed,
            format!(
                "version {} verified and installed in slot {installed}{from}; {when}",
                offer.version
            ),
        );
        if let Some(restart) = &self.restart {
            restart.cancel();
        }
        Ok(installed)
    }

    async fn download(&self, offer: &CheckedOffer) -> Result<PathBuf, UpdateError> {
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
            .map_err(|error| UpdateError::Download(error.to_string()))
    }
}
