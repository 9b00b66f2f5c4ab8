//! The update agent: download with resume, verify, honour the window, install.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use warden_image::SemanticVersion;

use crate::boot::{BootError, BootMonitor};
use crate::file_system::SlotFileSystem;
use crate::root_of_trust::BootRootOfTrust;
use crate::slots::Slot;
use crate::update::http_get::HttpGetter;
use crate::update::window::{UpdateWindowPolicy, WindowDecision};
use hex::encode as hex;

/// An update offered by the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOffer {
    /// Where to download the signed image: `https://` (the agent's TLS trusts the
    /// fleet CA only) or `http://` (a mirror; the image is signed either way).
    pub url: String,
    /// SHA-256 of the whole image file.
    pub sha256: [u8; 32],
    /// Size of the image file in bytes.
    pub size: u64,
    /// The version the fleet says it is (the signed header is what counts).
    pub version: SemanticVersion,
    /// A delta to the same image from the one the fleet believes is installed, if the
    /// fleet has one: tried first when its base is the installed image; the full
    /// image is the fallback.
    pub delta: Option<DeltaOffer>,
}

/// A delta offered beside the full image (`WDL1`, built by `warden image delta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaOffer {
    /// Where to download it (as [`UpdateOffer::url`]).
    pub url: String,
    /// SHA-256 of the delta file.
    pub sha256: [u8; 32],
    /// Size of the delta file in bytes.
    pub size: u64,
    /// SHA-256 of the whole image file it applies to.
    pub base_sha256: [u8; 32],
}

/// One file to download: an image or a delta.
#[derive(Debug, Clone, Copy)]
struct Remote<'o> {
    url: &'o str,
    sha256: [u8; 32],
    size: u64,
    /// The staged file's extension: `wim` or `wdelta`.
    extension: &'static str,
}

impl<'o> Remote<'o> {
    fn image(offer: &'o UpdateOffer) -> Self {
        Self {
            url: &offer.url,
            sha256: offer.sha256,
            size: offer.size,
            extension: "wim",
        }
    }

    fn delta(delta: &'o DeltaOffer) -> Self {
        Self {
            url: &delta.url,
            sha256: delta.sha256,
            size: delta.size,
            extension: "wdelta",
        }
    }
}

/// Progress and outcome reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateEvent {
    /// A download attempt starts (`from` > 0 resumes a partial download).
    DownloadStarted {
        /// Bytes already on disk.
        from: u64,
    },
    /// Bytes received so far.
    Downloading {
        /// Received.
        received: u64,
        /// Expected.
        total: u64,
    },
    /// The whole file arrived and matches the offer's digest.
    Downloaded,
    /// Installing into a slot (full verification first).
    Installing,
    /// Installed; the slot boots on trial at the next boot.
    Installed {
        /// The slot.
        slot: Slot,
    },
    /// Downloaded and staged, waiting for the update window.
    Waiting(WindowDecision),
    /// The offered delta was not used (the reason); the full image is used instead.
    DeltaFallback(String),
    /// Failed; the message names what failed.
    Failed(String),
}

/// The result of handling an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Installed into `slot`; reboot (or restart through the monitor) to run it on trial.
    Installed {
        /// The slot.
        slot: Slot,
    },
    /// Staged at `staged`, waiting for the window.
    Waiting {
        /// Why not now.
        decision: WindowDecision,
        /// The verified download.
        staged: PathBuf,
    },
}

/// An update step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The HTTP request failed or the server answered unexpectedly.
    #[error("download {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The transfer stopped early; the partial file is kept for resuming.
    #[error("download {url} interrupted at {received} of {total} bytes (will resume)")]
    Interrupted {
        /// The URL.
        url: String,
        /// Bytes on disk.
        received: u64,
        /// Expected.
        total: u64,
    },
    /// The server sent more bytes than offered.
    #[error("download {url}: more than the offered {size} bytes; discarded")]
    TooLong {
        /// The URL.
        url: String,
        /// The offered size.
        size: u64,
    },
    /// The file does not hash to the offer's digest.
    #[error("downloaded image sha256 {actual} does not match the offer's {expected}; discarded")]
    DigestMismatch {
        /// The offer's digest, hex.
        expected: String,
        /// The file's digest, hex.
        actual: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Installing failed (the image did not verify, or a slot write failed).
    #[error("install: {0}")]
    Install(#[from] BootError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Downloads, stages and installs updates.
#[derive(Debug, Clone)]
pub struct UpdateAgent {
    http: HttpGetter,
    download_dir: PathBuf,
}

impl UpdateAgent {
    /// An agent that keeps partial and staged downloads in `download_dir` and speaks
    /// HTTPS with `https` (a rustls client config: the unit passes one trusting the
    /// fleet CA only, over the tree's one TLS stack); `None`: no CA is trusted, so
    /// only `http://` URLs can be fetched.
    pub fn new(download_dir: impl Into<PathBuf>, https: Option<rustls::ClientConfig>) -> Self {
        Self {
            http: HttpGetter::new(https, Duration::from_secs(10), Duration::from_secs(30)),
            download_dir: download_dir.into(),
        }
    }

    /// The partial download of `offer`.
    pub fn part_path(&self, offer: &UpdateOffer) -> PathBuf {
        self.part_of(Remote::image(offer))
    }

    /// The complete, digest-checked download of `offer`.
    pub fn staged_path(&self, offer: &UpdateOffer) -> PathBuf {
        self.staged_of(Remote::image(offer))
    }

    /// The complete, digest-checked download of `delta`.
    pub fn staged_delta_path(&self, delta: &DeltaOffer) -> PathBuf {
        self.staged_of(Remote::delta(delta))
    }

    fn part_of(&self, remote: Remote<'_>) -> PathBuf {
        self.download_dir
            .join(format!("{}.part", hex(remote.sha256)))
    }

    fn staged_of(&self, remote: Remote<'_>) -> PathBuf {
        self.download_dir
            .join(format!("{}.{}", hex(remote.sha256), remote.extension))
    }

    /// One download attempt: resumes a partial file with an HTTP range request, checks
    /// size and SHA-256, then renames it to the staged path (fsynced). An interrupted
    /// transfer keeps the partial file; a wrong digest deletes it.
    pub async fn download(
        &self,
        offer: &UpdateOffer,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, UpdateError> {
        self.download_remote(Remote::image(offer), report).await
    }

    async fn download_remote(
        &self,
        offer: Remote<'_>,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, UpdateError> {
        let staged = self.staged_of(offer);
        if tokio::fs::metadata(&staged).await.is_ok() {
            return Ok(staged);
        }
        tokio::fs::create_dir_all(&self.download_dir)
            .await
            .map_err(io_at(&self.download_dir))?;
        let part = self.part_of(offer);
        let mut from = tokio::fs::metadata(&part)
            .await
            .map_or(0, |meta| meta.len());
        if from > offer.size {
            tokio::fs::remove_file(&part).await.map_err(io_at(&part))?;
            from = 0;
        }
        if from < offer.size {
            from = self.fetch(offer, &part, from, report).await?;
        }
        if from != offer.size {
            return Err(UpdateError::Interrupted {
                url: offer.url.to_owned(),
                received: from,
                total: offer.size,
            });
        }
        let digest = hash_file(&part).await?;
        if digest != offer.sha256 {
            tokio::fs::remove_file(&part).await.map_err(io_at(&part))?;
            let error = UpdateError::DigestMismatch {
                expected: hex(offer.sha256),
                actual: hex(digest),
            };
            report(UpdateEvent::Failed(error.to_string()));
            return Err(error);
        }
        tokio::fs::rename(&part, &staged)
            .await
            .map_err(io_at(&staged))?;
        std::fs::File::open(&self.download_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_at(&self.download_dir))?;
        report(UpdateEvent::Downloaded);
        Ok(staged)
    }

    async fn fetch(
        &self,
        offer: Remote<'_>,
        part: &Path,
        from: u64,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<u64, UpdateError> {
        let http = |reason: String| UpdateError::Http {
            url: offer.url.to_owned(),
            reason,
        };
        report(UpdateEvent::DownloadStarted { from });
        let mut response = self
            .http
            .get(offer.url, from)
            .await
            .map_err(|error| http(error.to_string()))?;
        let mut received = match response.status() {
            206 => {
                let range = response.content_range().unwrap_or_default();
                if !range.starts_with(&format!("bytes {from}-")) {
                    return Err(http(format!(
                        "unexpected Content-Range {range:?} for a resume from {from}"
                    )));
                }
                from
            }
            200 => 0,
            416 if from == offer.size => return Ok(from),
            status => return Err(http(format!("server answered HTTP {status}"))),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(received > 0)
            .truncate(received == 0)
            .open(part)
            .await
            .map_err(io_at(part))?;
        let outcome = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    received += bytes.len() as u64;
                    if received > offer.size {
                        drop(file);
                        tokio::fs::remove_file(part).await.map_err(io_at(part))?;
                        return Err(UpdateError::TooLong {
                            url: offer.url.to_owned(),
                            size: offer.size,
                        });
                    }
                    file.write_all(&bytes).await.map_err(io_at(part))?;
                    report(UpdateEvent::Downloading {
                        received,
                        total: offer.size,
                    });
                }
                Ok(None) => break Ok(received),
                Err(error) => {
                    tracing::info!(%error, received, "download interrupted");
                    break Err(UpdateError::Interrupted {
                        url: offer.url.to_owned(),
                        received,
                        total: offer.size,
                    });
                }
            }
        };
        file.flush().await.map_err(io_at(part))?;
        file.sync_all().await.map_err(io_at(part))?;
        outcome
    }

    /// Download with up to `attempts` tries, resuming each time; `pause` between tries.
    pub async fn download_with_retries(
        &self,
        offer: &UpdateOffer,
        attempts: u32,
        pause: Duration,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, UpdateError> {
        self.remote_with_retries(Remote::image(offer), attempts, pause, report)
            .await
    }

    /// Download `delta` as [`Self::download_with_retries`] does an image (resumable,
    /// digest-checked), staged as `<sha256>.wdelta`.
    pub async fn download_delta_with_retries(
        &self,
        delta: &DeltaOffer,
        attempts: u32,
        pause: Duration,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, UpdateError> {
        self.remote_with_retries(Remote::delta(delta), attempts, pause, report)
            .await
    }

    async fn remote_with_retries(
        &self,
        offer: Remote<'_>,
        attempts: u32,
        pause: Duration,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, UpdateError> {
        let mut attempt = 1;
        loop {
            match self.download_remote(offer, report).await {
                Err(UpdateError::Interrupted { .. } | UpdateError::Http { .. })
                    if attempt < attempts =>
                {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// The staged delta of `offer`, downloaded, if it has one whose base is the image
    /// `monitor` has installed; otherwise (or if the download fails) why not, for
    /// [`UpdateEvent::DeltaFallback`].
    pub async fn stage_delta<F: SlotFileSystem, R: BootRootOfTrust>(
        &self,
        offer: &UpdateOffer,
        monitor: &mut BootMonitor<F, R>,
        attempts: u32,
        pause: Duration,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<PathBuf, String> {
        let Some(delta) = &offer.delta else {
            return Err("no delta offered".to_owned());
        };
        let installed = monitor
            .installed_image_sha256()
            .map_err(|error| format!("cannot read the installed image: {error}"))?;
        if installed != Some(delta.base_sha256) {
            return Err(format!(
                "the delta applies to image sha256 {}, the installed image is {}",
                hex(delta.base_sha256),
                installed.map_or_else(|| "none".to_owned(), hex)
            ));
        }
        self.download_delta_with_retries(delta, attempts, pause, report)
            .await
            .map_err(|error| format!("delta download failed: {error}"))
    }

    /// Handle an offer: download the delta (if its base is the installed image) or else
    /// the full image (with retries), then install if the window allows, else leave it
    /// staged. The monitor verifies the image (a delta's result) fully before the slot
    /// is marked bootable; a delta that fails to apply or verify falls back to the full
    /// image.
    pub async fn apply<F: SlotFileSystem, R: BootRootOfTrust>(
        &self,
        offer: &UpdateOffer,
        monitor: &mut BootMonitor<F, R>,
        window: &UpdateWindowPolicy,
        now: u64,
        report: &mut (dyn FnMut(UpdateEvent) + Send),
    ) -> Result<UpdateOutcome, UpdateError> {
        let (attempts, pause) = (5, Duration::from_millis(200));
        let staged = match offer.delta {
            Some(_) => match self
                .stage_delta(offer, monitor, attempts, pause, report)
                .await
            {
                Ok(staged) => staged,
                Err(reason) => {
                    report(UpdateEvent::DeltaFallback(reason));
                    self.download_with_retries(offer, attempts, pause, report)
                        .await?
                }
            },
            None => {
                self.download_with_retries(offer, attempts, pause, report)
                    .await?
            }
        };
        match window.decide(now) {
            WindowDecision::InstallNow => {}
            decision => {
                report(UpdateEvent::Waiting(decision.clone()));
                return Ok(UpdateOutcome::Waiting { decision, staged });
            }
        }
        let slot = match install_staged(monitor, &staged, report) {
            Ok(slot) => slot,
            Err(UpdateError::Install(BootError::DeltaRefused(error))) => {
                report(UpdateEvent::DeltaFallback(error.to_string()));
                let full = self
                    .download_with_retries(offer, attempts, pause, report)
                    .await?;
                install_staged(monitor, &full, report)?
            }
            Err(error) => return Err(error),
        };
        Ok(UpdateOutcome::Installed { slot })
    }
}

/// Install a staged download through the monitor, an image or a delta (told apart by
/// its magic: a delta is applied against the installed slot, and its result verified as
/// an image); the staged file is removed after, or when it is refused.
pub fn install_staged<F: SlotFileSystem, R: BootRootOfTrust>(
    monitor: &mut BootMonitor<F, R>,
    staged: &Path,
    report: &mut (dyn FnMut(UpdateEvent) + Send),
) -> Result<Slot, UpdateError> {
    report(UpdateEvent::Installing);
    let mut file = std::fs::File::open(staged).map_err(io_at(staged))?;
    let len = file.metadata().map_err(io_at(staged))?.len();
    let is_delta = crate::delta::looks_like_delta(&mut file).map_err(io_at(staged))?;
    let installed = if is_delta {
        monitor.install_delta(&mut file, len)
    } else {
        monitor.install(&mut file, len)
    };
    match installed {
        Ok(slot) => {
            let _ = std::fs::remove_file(staged);
            report(UpdateEvent::Installed { slot });
            Ok(slot)
        }
        Err(error) => {
            if matches!(
                error,
                BootError::ImageRefused(_) | BootError::DeltaRefused(_)
            ) {
                let _ = std::fs::remove_file(staged);
            }
            report(UpdateEvent::Failed(error.to_string()));
            Err(error.into())
        }
    }
}

async fn hash_file(path: &Path) -> Result<[u8; 32], UpdateError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; crate::image_io::READ_CHUNK];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok::<_, std::io::Error>(<[u8; 32]>::from(hasher.finalize()))
    })
    .await
    .map_err(|error| UpdateError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(error),
    })?
    .map_err(io_at(path))
}
