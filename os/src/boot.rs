//! The boot monitor (I/O): slot selection, verification, measurement, confirm,
//! crash reports and installs, around the sans-IO [`crate::slots`] state machine.
//!
//! Layout under the state directory (the [`SlotFileSystem`] root):
//!
//! ```text
//! slots/a.wim, slots/b.wim   the signed images
//! slots/install.tmp          an image being copied in, or a delta's result being
//!                            written (never booted)
//! boot/state                 the A/B state record (WBS1, atomically replaced)
//! boot/state.tmp             the next record being written
//! ```

use std::io::{self, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use warden_image::{
    ImageError, ImageTrust, KeyId, ProductId, RootKey, SemanticVersion, VerifiedImage,
};

use crate::delta::{self, DeltaError};
use crate::file_system::{ReadSeek, SlotFileSystem};
use crate::image_io::{ImageReadError, READ_CHUNK, verify_reader};
use crate::root_of_trust::{BootRootOfTrust, RootOfTrustError};
use crate::slots::{
    BootCandidate, BootState, CrashVerdict, FailureReason, ImageSummary, Slot, SlotError,
    TrialPolicy,
};

/// Directory of the slot images.
pub const SLOTS_DIR: &str = "slots";
/// Directory of the boot-state record.
pub const BOOT_DIR: &str = "boot";
const STATE_FILE: &str = "boot/state";
const STATE_TEMP: &str = "boot/state.tmp";
const INSTALL_TEMP: &str = "slots/install.tmp";

/// The boot-state record under `state_dir`, read without the root of trust (for
/// questions only the boot stage acts on: it verifies everything again). `None` when
/// there is no record or it does not decode.
pub fn read_boot_state(state_dir: &Path) -> io::Result<Option<BootState>> {
    match std::fs::read(state_dir.join(STATE_FILE)) {
        Ok(bytes) => Ok(BootState::decode(&bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The image file of a slot, relative to the state directory.
pub fn slot_image_path(slot: Slot) -> PathBuf {
    Path::new(SLOTS_DIR).join(format!("{}.wim", slot.name()))
}

/// How the monitor boots.
#[derive(Debug, Clone, Copy)]
pub struct BootConfig {
    /// This device's product.
    pub product: ProductId,
    /// Trial limits.
    pub trial: TrialPolicy,
    /// Bytes per write when copying an image into a slot.
    pub copy_chunk: usize,
}

impl BootConfig {
    /// Defaults for `product`: 3 trial attempts, 1 MiB copy chunks.
    pub fn new(product: ProductId) -> Self {
        Self {
            product,
            trial: TrialPolicy::default(),
            copy_chunk: READ_CHUNK,
        }
    }
}

/// What to run: returned by [`BootMonitor::select_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDecision {
    /// The slot.
    pub slot: Slot,
    /// The image file, relative to the state directory.
    pub image_path: PathBuf,
    /// Whether this is a trial boot (confirm it after the health check).
    pub trial: bool,
    /// The image's version.
    pub version: SemanticVersion,
    /// The image's security counter.
    pub security_counter: u64,
    /// The measurement extended into the root of trust (SHA-256 of the header).
    pub measurement: [u8; 32],
    /// The payload's size.
    pub payload_len: u64,
    /// The payload's SHA-256 (checked again when the payload is unpacked to run).
    pub payload_sha256: [u8; 32],
    /// Slots given up during this selection, and why.
    pub given_up: Vec<(Slot, String)>,
}

/// The monitor could not boot, confirm, report or install.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, relative to the state directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The root of trust failed.
    #[error(transparent)]
    RootOfTrust(#[from] RootOfTrustError),
    /// The state machine refused the transition.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// No slot holds an image that verifies.
    #[error("no bootable image: {}", describe(.0))]
    NoBootableImage(Vec<(Slot, String)>),
    /// The offered image does not verify; nothing was changed.
    #[error("update image refused: {0}")]
    ImageRefused(ImageError),
    /// The held revocation list cannot be read or does not verify.
    #[error(transparent)]
    Revocations(#[from] crate::revocations::RevocationStoreError),
    /// The delta was refused (signature, corruption, wrong base) or its result is not
    /// a valid image; no slot was made bootable.
    #[error("update delta refused: {0}")]
    DeltaRefused(DeltaError),
    /// The image copied into a slot does not read back as the verified image.
    #[error("slot {slot} does not read back as the installed image: {reason}")]
    ReadBack {
        /// The slot.
        slot: Slot,
        /// Why.
        reason: String,
    },
}

/// Why a slot was not booted.
#[derive(Debug, thiserror::Error)]
enum CandidateRefused {
    /// The slot's file does not verify.
    #[error(transparent)]
    Image(#[from] ImageReadError),
    /// It verifies, but it is not the image whose measurement was recorded at install.
    #[error("slot file is not the image recorded at install")]
    NotTheInstalledImage,
}

fn describe(failures: &[(Slot, String)]) -> String {
    if failures.is_empty() {
        return "no image installed".to_owned();
    }
    failures
        .iter()
        .map(|(slot, reason)| format!("slot {slot}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn io_at(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> BootError {
    let path = path.as_ref().to_owned();
    move |source| BootError::Io { path, source }
}

fn summary_of(image: &VerifiedImage) -> ImageSummary {
    let version = image.header().version;
    ImageSummary {
        version: [version.major, version.minor, version.patch],
        security_counter: image.header().security_counter,
        measurement: image.measurement(),
    }
}

/// The boot monitor over a file system and a root of trust.
#[derive(Debug)]
pub struct BootMonitor<F, R> {
    fs: F,
    root_of_trust: R,
    config: BootConfig,
}

struct TrustInputs {
    roots: Vec<RootKey>,
    revoked: Vec<KeyId>,
    counter: u64,
}

impl<F: SlotFileSystem, R: BootRootOfTrust> BootMonitor<F, R> {
    /// A monitor; nothing is read until the first call.
    pub fn new(fs: F, root_of_trust: R, config: BootConfig) -> Self {
        Self {
            fs,
            root_of_trust,
            config,
        }
    }

    /// The file system.
    pub fn file_system(&self) -> &F {
        &self.fs
    }

    /// The root of trust.
    pub fn root_of_trust(&mut self) -> &mut R {
        &mut self.root_of_trust
    }

    /// The configuration.
    pub fn config(&self) -> &BootConfig {
        &self.config
    }

    /// Every revoked key: the root of trust's and the held revocation list's
    /// ([`crate::revocations`]), as every verification of an image applies them.
    pub fn revoked_keys(&mut self, roots: &[RootKey]) -> Result<Vec<KeyId>, BootError> {
        Ok(crate::revocations::revoked_keys(
            &self.fs,
            &mut self.root_of_trust,
            roots,
        )?)
    }

    fn trust_inputs(&mut self) -> Result<TrustInputs, BootError> {
        let roots = self.root_of_trust.vendor_roots()?;
        // The root of trust's revocations and the held revocation list's.
        let revoked = self.revoked_keys(&roots)?;
        Ok(TrustInputs {
            roots,
            revoked,
            counter: self.root_of_trust.read_counter()?,
        })
    }

    fn trust<'k>(&self, inputs: &'k TrustInputs) -> ImageTrust<'k> {
        ImageTrust {
            roots: &inputs.roots,
            revoked: &inputs.revoked,
            product: self.config.product,
            min_security_counter: inputs.counter,
        }
    }

    fn verify_file(
        &self,
        path: &Path,
        trust: &ImageTrust<'_>,
    ) -> Result<VerifiedImage, ImageReadError> {
        let len = self.fs.len(path)?;
        let mut reader = self.fs.open_read(path)?;
        verify_reader(&mut *reader, len, trust, &mut |_| {})
    }

    /// The current state. A missing record is a fresh device (or one whose first install
    /// never finished); an unreadable one is rebuilt from the images that verify.
    pub fn load_state(&mut self) -> Result<BootState, BootError> {
        match self.fs.read(Path::new(STATE_FILE)) {
            Ok(bytes) => {
                if let Some(state) = BootState::decode(&bytes) {
                    return Ok(state);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(BootState::new());
            }
            Err(error) => return Err(io_at(STATE_FILE)(error)),
        }
        let inputs = self.trust_inputs()?;
        let trust = self.trust(&inputs);
        let found: Vec<(Slot, ImageSummary)> = Slot::ALL
            .into_iter()
            .filter_map(|slot| {
                let image = self.verify_file(&slot_image_path(slot), &trust).ok()?;
                Some((slot, summary_of(&image)))
            })
            .collect();
        tracing::warn!(slots = found.len(), "boot state record unreadable; rebuilt");
        Ok(BootState::rebuilt(&found))
    }

    /// Write the state atomically: temp file, fsync, rename, fsync the directory.
    pub fn save_state(&self, state: &BootState) -> Result<(), BootError> {
        let temp = Path::new(STATE_TEMP);
        self.fs
            .create_dir_all(Path::new(BOOT_DIR))
            .map_err(io_at(BOOT_DIR))?;
        self.fs.create(temp).map_err(io_at(temp))?;
        self.fs.append(temp, &state.encode()).map_err(io_at(temp))?;
        self.fs.sync_file(temp).map_err(io_at(temp))?;
        self.fs
            .rename(temp, Path::new(STATE_FILE))
            .map_err(io_at(STATE_FILE))?;
        self.fs
            .sync_dir(Path::new(BOOT_DIR))
            .map_err(io_at(BOOT_DIR))
    }

    /// Pick the slot to run: a pending or trial image first (on trial), else the confirmed
    /// one. Each candidate's chain, product, counter and payload are verified and its file
    /// must be the installed image; a failure is recorded and the next slot is tried. The
    /// chosen image is measured into the root of trust before this returns. Never returns
    /// an image that did not verify.
    pub fn select_boot(&mut self) -> Result<BootDecision, BootError> {
        let mut state = self.load_state()?;
        let original = state.clone();
        let inputs = self.trust_inputs()?;
        // Finish a confirmation interrupted between persisting it and raising the counter.
        if let Some(primary) = state.primary()
            && let crate::slots::SlotStatus::Confirmed(image) = state.slot(primary)
            && image.security_counter > inputs.counter
        {
            self.root_of_trust.raise_counter(image.security_counter)?;
            return self.select_boot();
        }
        let trust = self.trust(&inputs);
        let mut given_up = Vec::new();
        for candidate in state.plan_boot(&self.config.trial) {
            match self.verify_candidate(&candidate, &trust) {
                Ok(image) => {
                    state.booting(&candidate);
                    self.save_state(&state)?;
                    self.root_of_trust
                        .extend_measurement(&image.measurement())?;
                    let header = image.header();
                    return Ok(BootDecision {
                        slot: candidate.slot,
                        image_path: slot_image_path(candidate.slot),
                        trial: candidate.trial,
                        version: header.version,
                        security_counter: header.security_counter,
                        measurement: image.measurement(),
                        payload_len: header.payload_len,
                        payload_sha256: header.payload_sha256,
                        given_up,
                    });
                }
                Err(refused) => {
                    // The boot state keeps the reason as text (it is persisted and shown).
                    let reason = refused.to_string();
                    tracing::warn!(slot = %candidate.slot, %reason, "slot refused at boot");
                    state.candidate_failed(candidate.slot, &reason);
                    given_up.push((candidate.slot, reason));
                }
            }
        }
        if state != original {
            self.save_state(&state)?;
        }
        Err(BootError::NoBootableImage(given_up))
    }

    fn verify_candidate(
        &self,
        candidate: &BootCandidate,
        trust: &ImageTrust<'_>,
    ) -> Result<VerifiedImage, CandidateRefused> {
        let image = self.verify_file(&slot_image_path(candidate.slot), trust)?;
        if image.measurement() != candidate.image.measurement {
            return Err(CandidateRefused::NotTheInstalledImage);
        }
        Ok(image)
    }

    /// The running trial slot passed its health check: persist the confirmation, then
    /// raise the anti-rollback counter to its security counter (never earlier: until the
    /// confirmation is durable the device must still be able to revert).
    pub fn confirm(&mut self, slot: Slot) -> Result<u64, BootError> {
        let mut state = self.load_state()?;
        let before = state.clone();
        let counter = state.confirm(slot)?;
        if state != before {
            self.save_state(&state)?;
        }
        Ok(self.root_of_trust.raise_counter(counter)?)
    }

    /// The image running from `slot` crashed; on trial, the K-th crash rolls back.
    pub fn report_crash(&mut self, slot: Slot) -> Result<CrashVerdict, BootError> {
        let mut state = self.load_state()?;
        let verdict = state.report_crash(slot, &self.config.trial);
        self.save_state(&state)?;
        Ok(verdict)
    }

    /// The trial's health check did not pass in time: give the slot up.
    pub fn trial_timed_out(&mut self, slot: Slot) -> Result<FailureReason, BootError> {
        let mut state = self.load_state()?;
        let reason = state.trial_timed_out(slot)?;
        self.save_state(&state)?;
        Ok(reason)
    }

    /// Install a signed image from `source` (`len` bytes) into the slot that is not
    /// primary. The image is fully verified first (a refused image changes nothing); the
    /// slot is marked not bootable, the image copied to a temp file, fsynced, renamed into
    /// place and the directory fsynced; the copy is verified again as read back; only then
    /// is the slot marked pending (bootable on trial).
    pub fn install(&mut self, source: &mut dyn ReadSeek, len: u64) -> Result<Slot, BootError> {
        let inputs = self.trust_inputs()?;
        let trust = self.trust(&inputs);
        let verified =
            verify_reader(source, len, &trust, &mut |_| {}).map_err(|error| match error {
                ImageReadError::Image(error) => BootError::ImageRefused(error),
                ImageReadError::Io(source) => BootError::Io {
                    path: "<update image>".into(),
                    source,
                },
            })?;
        let mut state = self.load_state()?;
        let slot = state.install_target();
        state.begin_install(slot)?;
        self.save_state(&state)?;

        let temp = Path::new(INSTALL_TEMP);
        let target = slot_image_path(slot);
        self.fs
            .create_dir_all(Path::new(SLOTS_DIR))
            .map_err(io_at(SLOTS_DIR))?;
        self.fs.create(temp).map_err(io_at(temp))?;
        source
            .seek(SeekFrom::Start(0))
            .map_err(io_at("<update image>"))?;
        let mut buffer = vec![0u8; self.config.copy_chunk.max(1)];
        let mut copied = 0u64;
        while copied < len {
            let read = source.read(&mut buffer).map_err(io_at("<update image>"))?;
            if read == 0 {
                break;
            }
            self.fs.append(temp, &buffer[..read]).map_err(io_at(temp))?;
            copied += read as u64;
        }
        self.fs.sync_file(temp).map_err(io_at(temp))?;
        self.fs.rename(temp, &target).map_err(io_at(&target))?;
        self.fs
            .sync_dir(Path::new(SLOTS_DIR))
            .map_err(io_at(SLOTS_DIR))?;

        let read_back = self
            .verify_file(&target, &trust)
            .map_err(|error| BootError::ReadBack {
                slot,
                reason: error.to_string(),
            })?;
        if read_back.measurement() != verified.measurement() {
            return Err(BootError::ReadBack {
                slot,
                reason: "a different image was read back".to_owned(),
            });
        }
        state.finish_install(slot, summary_of(&verified))?;
        self.save_state(&state)?;
        Ok(slot)
    }
    /// SHA-256 of the whole image file in the primary (confirmed, installed) slot: what
    /// a delta must name as its base. `None` before any image is confirmed.
    pub fn installed_image_sha256(&mut self) -> Result<Option<[u8; 32]>, BootError> {
        let Some(primary) = self.load_state()?.primary() else {
            return Ok(None);
        };
        let path = slot_image_path(primary);
        let mut reader = self.fs.open_read(&path).map_err(io_at(&path))?;
        let digest = delta::sha256_of(&mut *reader).map_err(io_at(&path))?;
        Ok(Some(digest))
    }

    /// Install from a delta (`len` bytes) against the primary slot's image, into the
    /// other slot. Before anything changes, the delta is verified (signature chain,
    /// product, the result's counter, the patch's digest) and its base compared with the
    /// installed image: a wrong base is [`DeltaError::BaseMismatch`]. Then, as
    /// [`Self::install`]: the target slot is marked not bootable, the result streamed
    /// into the install temp file, fsynced, checked against the signed size and SHA-256,
    /// **verified in full as an image** (chain, product, anti-rollback counter, payload),
    /// renamed into place, and only then is the slot marked pending. A crash at any step
    /// leaves the target slot not bootable and the installed one untouched.
    pub fn install_delta(
        &mut self,
        source: &mut dyn ReadSeek,
        len: u64,
    ) -> Result<Slot, BootError> {
        let inputs = self.trust_inputs()?;
        let trust = self.trust(&inputs);
        let header =
            delta::verify_delta_reader(source, len, &trust).map_err(BootError::DeltaRefused)?;
        let mut state = self.load_state()?;
        let base_slot = state.primary().ok_or_else(|| {
            BootError::DeltaRefused(DeltaError::BaseMismatch {
                expected: hex::encode(header.base_sha256),
                actual: "none (no confirmed image installed)".to_owned(),
            })
        })?;
        let base_path = slot_image_path(base_slot);
        {
            let mut base = self.fs.open_read(&base_path).map_err(io_at(&base_path))?;
            delta::check_base(&header, &mut *base).map_err(BootError::DeltaRefused)?;
        }
        let slot = state.install_target();
        state.begin_install(slot)?;
        self.save_state(&state)?;

        let temp = Path::new(INSTALL_TEMP);
        self.fs
            .create_dir_all(Path::new(SLOTS_DIR))
            .map_err(io_at(SLOTS_DIR))?;
        self.fs.create(temp).map_err(io_at(temp))?;
        {
            let mut base = self.fs.open_read(&base_path).map_err(io_at(&base_path))?;
            let mut writer = io::BufWriter::with_capacity(
                self.config.copy_chunk.max(1),
                SlotFileWriter {
                    fs: &self.fs,
                    path: temp,
                },
            );
            let applied = delta::apply_delta(&header, source, &mut *base, &mut writer);
            let flushed = writer.flush().map_err(io_at(temp));
            match applied {
                Ok(()) => flushed?,
                Err(error) => {
                    drop(writer);
                    let _ = self.fs.remove_file(temp);
                    return Err(BootError::DeltaRefused(error));
                }
            }
        }
        self.fs.sync_file(temp).map_err(io_at(temp))?;
        let verified = match self.verify_file(temp, &trust) {
            Ok(verified) => verified,
            Err(error) => {
                let _ = self.fs.remove_file(temp);
                return Err(match error {
                    ImageReadError::Image(error) => BootError::ImageRefused(error),
                    ImageReadError::Io(source) => BootError::Io {
                        path: temp.to_owned(),
                        source,
                    },
                });
            }
        };
        let target = slot_image_path(slot);
        self.fs.rename(temp, &target).map_err(io_at(&target))?;
        self.fs
            .sync_dir(Path::new(SLOTS_DIR))
            .map_err(io_at(SLOTS_DIR))?;
        state.finish_install(slot, summary_of(&verified))?;
        self.save_state(&state)?;
        Ok(slot)
    }
}

/// Appends what is written to a file of the slot store (a delta's result).
struct SlotFileWriter<'f, F> {
    fs: &'f F,
    path: &'f Path,
}

impl<F: SlotFileSystem> io::Write for SlotFileWriter<'_, F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.fs.append(self.path, bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
