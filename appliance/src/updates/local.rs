//! Offline updates: a signed image from a file, installed as an offer's would be.
//!
//! An air-gapped unit takes its image from a USB stick (`warden update install FILE`)
//! or a laptop on the local port (the status page's upload form). Both are clients of
//! one local socket, `update.sock` in the updater's download directory, served by the
//! updater itself (in the link role, the one process that installs images), so a file
//! goes through exactly what an offer's download goes through:
//!
//! 1. streamed to disk in the download directory (never held whole in memory), at
//!    most `[updates] max_local_image_mib`;
//! 2. verified against pluton's vendor roots, the unit's product and its
//!    anti-rollback counter *before* it waits for anything: a bad file is refused at
//!    once, named (signature, product, counter, size), deleted, and nothing changes;
//! 3. the same gate as an offer (application vetoes, the operator's deferral or
//!    allowance, the unit's maintenance windows), then the boot monitor's full
//!    verification while it writes the inactive slot, which boots on trial;
//! 4. every step published as an update status marked `source: local` (id
//!    `local-` + 12 hex digits of its SHA-256) through the durable control queue: it
//!    reaches the fleet when the link returns.
//!
//! The file may also be a delta (`warden image delta`, `.wdelta`) from the image the
//! unit runs: verified likewise at step 2 (signature chain, product, the result's
//! counter, the patch's digest) and refused at once unless its base is the installed
//! image; the monitor then applies it into the inactive slot and verifies the result in
//! full as an image before that slot may boot.
//!
//! The protocol: the client sends one JSON line [`LocalInstallRequest`] and then
//! exactly `size` bytes; the updater answers JSON lines [`LocalInstallAnswer`] until a
//! final one (`installed`, `refused`) or `waiting` (the image stays staged and installs
//! when the gate opens; the client may leave). One install at a time; the socket is
//! mode 0660 (the updater's user and the status page's group, which the monitor grants
//! through the manifest's `unix_connect`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{PROTOCOL_VERSION, UpdateOffer, UpdateState, to_hex};
use warden_os::file_system::SlotFileSystem;
use warden_os::image::{HEADER_LEN, ImageError, ImageHeader, ImageTrust};
use warden_os::image_io::{ImageReadError, verify_reader};
use warden_os::revocations::RevocationInstall;
use warden_os::{BootMonitor, BootRootOfTrust};

use super::installer::{Origin, Updater, publish_from};

/// File name of the socket in the updater's download directory.
pub const SOCKET_NAME: &str = "update.sock";
/// Update IDs of local installs start with this (then 12 hex digits of the SHA-256).
pub const LOCAL_ID_PREFIX: &str = "local-";
/// Longest request line.
const MAX_REQUEST_LINE: u64 = 4096;
/// Longest answer line a client reads.
const MAX_ANSWER_LINE: u64 = 64 * 1024;
/// A client that sends nothing for this long is dropped (its partial file deleted).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The partial file of the upload in progress, in the download directory.
const PARTIAL_NAME: &str = "local-upload.part";
/// How long a client waits for the install before its own to finish; then it is told
/// another one is in progress.
const BUSY_WAIT: Duration = Duration::from_secs(2);
/// Bytes per read while receiving.
const RECEIVE_CHUNK: usize = 64 * 1024;

/// Where the updater with `download_dir` takes local installs.
pub fn socket_path(download_dir: &Path) -> PathBuf {
    download_dir.join(SOCKET_NAME)
}

/// Where a client (the status page's upload form) sends images: the updater's socket,
/// and the largest file it takes.
#[derive(Debug, Clone)]
pub struct LocalInstallTarget {
    /// The updater's socket.
    pub socket: PathBuf,
    /// The largest image, bytes (`[updates] max_local_image_mib`).
    pub max_bytes: u64,
}

/// What a client asks: install the `size` bytes that follow this line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInstallRequest {
    /// The file's length in bytes.
    pub size: u64,
    /// Where it came from, for the record (`status page upload`, `file /media/…`).
    pub source: String,
}

/// Why a file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RefusalKind {
    /// Larger than `[updates] max_local_image_mib`.
    TooLarge,
    /// Fewer bytes arrived than announced.
    Truncated,
    /// The image does not verify (signature, product, anti-rollback counter, framing).
    Image,
    /// Another local install is in progress.
    Busy,
    /// The request line is not a [`LocalInstallRequest`].
    Request,
    /// The install itself failed (a slot write, the root of trust).
    Install,
}

/// What the updater answers, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LocalInstallAnswer {
    /// Verified; waiting for the gate (staged: it installs when the gate opens).
    Waiting {
        /// The update's ID (`local-…`).
        id: String,
        /// The image's version.
        version: String,
        /// Why it waits.
        detail: String,
    },
    /// Verified and installed into the inactive slot; it boots on trial next.
    Installed {
        /// The update's ID (`local-…`).
        id: String,
        /// The image's version.
        version: String,
        /// The slot it went into.
        slot: String,
        /// For people.
        detail: String,
    },
    /// The file was a revocation list (`WRL1`) signed by a vendor root: it is now held,
    /// and images signed by a key it names are refused.
    RevocationsInstalled {
        /// The list's sequence.
        sequence: u64,
        /// How many keys it revokes.
        revoked: usize,
        /// For people.
        detail: String,
    },
    /// Refused; nothing was changed.
    Refused {
        /// What kind of refusal.
        reason: RefusalKind,
        /// What was wrong, for people.
        detail: String,
    },
}

impl LocalInstallAnswer {
    fn refused(reason: RefusalKind, detail: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            detail: detail.into(),
        }
    }
}

/// A local install client failed to reach the updater or to understand it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClientError {
    /// The socket is not there or nobody serves it.
    #[error(
        "cannot reach the updater at {}: {source} (is the appliance running, with an [updates] section?)",
        socket.display()
    )]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the file or talking to the updater failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The updater closed the connection without a final answer.
    #[error("the updater closed the connection without an answer")]
    NoAnswer,
    /// The updater's answer is not a [`LocalInstallAnswer`].
    #[error("the updater's answer is not understood: {0}")]
    Answer(String),
}

/// A connection to the updater's local install socket.
pub struct LocalInstallClient {
    stream: tokio::io::BufReader<UnixStream>,
}

impl LocalInstallClient {
    /// Connects to `socket` and announces `size` bytes from `source`.
    pub async fn start(socket: &Path, size: u64, source: &str) -> Result<Self, LocalClientError> {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| LocalClientError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        let mut line = serde_json::to_vec(&LocalInstallRequest {
            size,
            source: source.to_owned(),
        })
        .map_err(|error| LocalClientError::Answer(error.to_string()))?;
        line.push(b'\n');
        let mut stream = tokio::io::BufReader::new(stream);
        if let Err(error) = stream.get_mut().write_all(&line).await {
            // Answered before it read the request (busy): the answer explains.
            tracing::debug!(%error, "local install: the updater closed before the request");
        }
        Ok(Self { stream })
    }

    /// Sends the next bytes of the file. An error may mean the updater refused early
    /// (too large, busy): [`Self::finish`] then still reads its answer.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    /// Reads answers (each shown to `progress`) until a final one or `waiting`.
    pub async fn finish(
        mut self,
        progress: &mut (dyn FnMut(&LocalInstallAnswer) + Send),
    ) -> Result<LocalInstallAnswer, LocalClientError> {
        // Every answer the updater sends is final for the client (`waiting` included).
        let mut line = String::new();
        let read = (&mut self.stream)
            .take(MAX_ANSWER_LINE)
            .read_line(&mut line)
            .await
            .map_err(|source| LocalClientError::Io {
                what: "reading the updater's answer".to_owned(),
                source,
            })?;
        if read == 0 {
            return Err(LocalClientError::NoAnswer);
        }
        let answer: LocalInstallAnswer = serde_json::from_str(line.trim_end())
            .map_err(|error| LocalClientError::Answer(error.to_string()))?;
        progress(&answer);
        Ok(answer)
    }

    /// Sends all of `reader` (`size` bytes were announced) and reads the answer.
    pub async fn send_all(
        mut self,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        progress: &mut (dyn FnMut(&LocalInstallAnswer) + Send),
    ) -> Result<LocalInstallAnswer, LocalClientError> {
        let mut buffer = vec![0u8; RECEIVE_CHUNK];
        loop {
            let read = reader
                .read(&mut buffer)
                .await
                .map_err(|source| LocalClientError::Io {
                    what: "reading the file".to_owned(),
                    source,
                })?;
            if read == 0 {
                break;
            }
            if self.send(&buffer[..read]).await.is_err() {
                // Refused early: its answer explains.
                break;
            }
        }
        self.finish(progress).await
    }
}

/// Installs `file` through the updater at `socket` (what `warden update install` does).
pub async fn install_file(
    socket: &Path,
    file: &Path,
    progress: &mut (dyn FnMut(&LocalInstallAnswer) + Send),
) -> Result<LocalInstallAnswer, LocalClientError> {
    let io = |source| LocalClientError::Io {
        what: format!("reading {}", file.display()),
        source,
    };
    let mut reader = tokio::fs::File::open(file).await.map_err(io)?;
    let size = reader.metadata().await.map_err(io)?.len();
    let source = format!("file {}", file.display());
    LocalInstallClient::start(socket, size, &source)
        .await?
        .send_all(&mut reader, progress)
        .await
}

/// Binds the local install socket (replacing a stale one) in `download_dir`.
pub fn bind(download_dir: &Path) -> std::io::Result<UnixListener> {
    std::fs::create_dir_all(download_dir)?;
    warden_listeners::bind_unix_socket(&socket_path(download_dir), 0o660)
}

/// Serves local installs through `updater` until `shutdown`, one at a time, each at
/// most `max_bytes`.
pub async fn serve<F, R>(
    listener: UnixListener,
    updater: Updater<F, R>,
    max_bytes: u64,
    shutdown: CancellationToken,
) where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let busy = Arc::new(tokio::sync::Semaphore::new(1));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "local install socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let (updater, busy, stop) = (updater.clone(), Arc::clone(&busy), shutdown.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            // A short wait: the last client may have its answer while its install
            // task is still finishing.
            let permit = tokio::time::timeout(BUSY_WAIT, busy.acquire()).await;
            let Ok(Ok(_permit)) = permit else {
                let answer = LocalInstallAnswer::refused(
                    RefusalKind::Busy,
                    "another local install is in progress; try again when it has finished",
                );
                let _ = write_answer(&mut stream, &answer).await;
                return;
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = handle(&updater, stream, max_bytes) => {}
            }
        });
    }
}

async fn write_answer(
    stream: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    answer: &LocalInstallAnswer,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// One client: receive, verify, gate, install; answers go to the client while it
/// listens (an answer it no longer hears changes nothing: the install goes on).
async fn handle<F, R>(updater: &Updater<F, R>, stream: UnixStream, max_bytes: u64)
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read_half);
    let mut line = String::new();
    let request = match tokio::time::timeout(
        IDLE_TIMEOUT,
        (&mut reader).take(MAX_REQUEST_LINE).read_line(&mut line),
    )
    .await
    {
        Ok(Ok(_)) => serde_json::from_str::<LocalInstallRequest>(line.trim_end()).map_err(|e| {
            LocalInstallAnswer::refused(RefusalKind::Request, format!("bad request: {e}"))
        }),
        Ok(Err(error)) => Err(LocalInstallAnswer::refused(
            RefusalKind::Request,
            format!("reading the request: {error}"),
        )),
        Err(_) => Err(LocalInstallAnswer::refused(
            RefusalKind::Request,
            "no request within 30 s",
        )),
    };
    let (answers, mut answered) = mpsc::unbounded_channel();
    let install = async {
        let answer = match request {
            Ok(request) => install(updater, &mut reader, &request, max_bytes, &answers).await,
            Err(answer) => answer,
        };
        let _ = answers.send(answer);
    };
    tokio::pin!(install);
    let mut writing = true;
    let mut done = false;
    loop {
        tokio::select! {
            () = &mut install, if !done => done = true,
            answer = answered.recv() => match answer {
                Some(answer) => {
                    if writing && write_answer(&mut write_half, &answer).await.is_err() {
                        writing = false;
                    }
                }
                None => return,
            },
        }
        if done && answered.is_empty() {
            return;
        }
    }
}

async fn install<F, R>(
    updater: &Updater<F, R>,
    reader: &mut (dyn AsyncRead + Unpin + Send),
    request: &LocalInstallRequest,
    max_bytes: u64,
    answers: &mpsc::UnboundedSender<LocalInstallAnswer>,
) -> LocalInstallAnswer
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    if request.size > max_bytes {
        return LocalInstallAnswer::refused(
            RefusalKind::TooLarge,
            format!(
                "the file is {} bytes; this unit takes images of at most {max_bytes} bytes ([updates] max_local_image_mib); nothing was changed",
                request.size
            ),
        );
    }
    let received = match receive(reader, request.size, &updater.download_dir).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let id = format!("{LOCAL_ID_PREFIX}{}", &to_hex(&received.sha256)[..12]);
    tracing::info!(%id, source = %request.source, size = request.size, "local install: file received");
    if is_revocation_list(&received.path) {
        return install_revocations(updater, &received.path, &request.source).await;
    }

    // Verified before it waits for anything: a bad file is refused now, by name.
    let monitor = Arc::clone(&updater.monitor);
    let path = received.path.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let mut monitor = monitor.lock().unwrap_or_else(PoisonError::into_inner);
        verify_staged(&mut monitor, &path)
    })
    .await
    .unwrap_or_else(|error| Err(format!("verification task: {error}")));
    let header = match checked {
        Ok(header) => header,
        Err(why) => {
            let _ = std::fs::remove_file(&received.path);
            let detail = format!(
                "refused {} ({}): {why}; nothing was changed",
                request.source, id
            );
            publish_from(
                &updater.control,
                Origin::Local { version: "unknown" },
                &id,
                UpdateState::Failed,
                detail.clone(),
            );
            return LocalInstallAnswer::refused(RefusalKind::Image, detail);
        }
    };
    let version = header.version.clone();
    let offer = UpdateOffer {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        url: String::new(),
        sha256: to_hex(&received.sha256),
        size: request.size,
        version: version.clone(),
        window_start_ms: 0,
        window_end_ms: 0,
        delta: None,
    };
    let origin = Origin::Local { version: &version };
    publish_from(
        &updater.control,
        origin,
        &id,
        UpdateState::Verifying,
        format!(
            "{} verified ({}version {version}, security counter {}); waiting for the update gate",
            request.source,
            if header.delta {
                "a delta from the installed image to "
            } else {
                ""
            },
            header.security_counter
        ),
    );
    // Shown on the status page like an offer, so "allow" and "defer" apply to it.
    updater
        .decision
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .offer = Some(crate::state::updates::UpdateOffer {
        version: version.clone(),
        window_ends_ms: u64::MAX,
    });
    let waiting_answers = answers.clone();
    let (waiting_id, waiting_version) = (id.clone(), version.clone());
    let mut waiting = move |why: &str| {
        let _ = waiting_answers.send(LocalInstallAnswer::Waiting {
            id: waiting_id.clone(),
            version: waiting_version.clone(),
            detail: format!("{why}; the image is staged and installs when the gate opens"),
        });
    };
    let installed = updater
        .gate_and_install(&offer, origin, received.path, &mut waiting)
        .await;
    {
        let mut decision = updater
            .decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if decision.offer.as_ref().map(|o| o.version.as_str()) == Some(version.as_str()) {
            decision.offer = None;
        }
    }
    match installed {
        Ok(slot) => LocalInstallAnswer::Installed {
            id,
            version: version.clone(),
            slot: slot.to_string(),
            detail: format!(
                "version {version} verified and installed in slot {slot}; it boots on trial next"
            ),
        },
        Err(error) => {
            let detail = error.to_string();
            publish_from(
                &updater.control,
                origin,
                &id,
                UpdateState::Failed,
                detail.clone(),
            );
            LocalInstallAnswer::refused(RefusalKind::Install, detail)
        }
    }
}

/// A file received into the download directory.
struct Received {
    path: PathBuf,
    sha256: [u8; 32],
}

/// Streams exactly `size` bytes from `reader` to a partial file in `dir`, hashing
/// them, then renames it to `local-<sha256>.wim`; anything short is deleted.
async fn receive(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    size: u64,
    dir: &Path,
) -> Result<Received, LocalInstallAnswer> {
    let failed = |what: &str, error: std::io::Error| {
        LocalInstallAnswer::refused(
            RefusalKind::Install,
            format!("{what} in {}: {error}; nothing was changed", dir.display()),
        )
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| failed("cannot create the download directory", e))?;
    let partial = dir.join(PARTIAL_NAME);
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| failed("cannot create the partial file", e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; RECEIVE_CHUNK];
    let mut received = 0u64;
    let outcome = loop {
        if received == size {
            break Ok(());
        }
        let want = buffer
            .len()
            .min(usize::try_from(size - received).unwrap_or(usize::MAX));
        match tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut buffer[..want])).await {
            Ok(Ok(0)) | Err(_) => {
                break Err(LocalInstallAnswer::refused(
                    RefusalKind::Truncated,
                    format!(
                        "the file stopped at {received} of the announced {size} bytes; nothing was changed"
                    ),
                ));
            }
            Ok(Ok(read)) => {
                hasher.update(&buffer[..read]);
                if let Err(error) = file.write_all(&buffer[..read]).await {
                    break Err(failed("cannot write the partial file", error));
                }
                received += read as u64;
            }
            Ok(Err(error)) => {
                break Err(LocalInstallAnswer::refused(
                    RefusalKind::Truncated,
                    format!(
                        "the file stopped at {received} of the announced {size} bytes ({error}); nothing was changed"
                    ),
                ));
            }
        }
    };
    let synced = match outcome {
        Ok(()) => file
            .sync_all()
            .await
            .map_err(|e| failed("cannot sync the file", e)),
        Err(answer) => Err(answer),
    };
    drop(file);
    if let Err(answer) = synced {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(answer);
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let path = dir.join(format!("{LOCAL_ID_PREFIX}{}.wim", to_hex(&sha256)));
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| failed("cannot stage the file", e))?;
    Ok(Received { path, sha256 })
}

/// Whether the staged file is a revocation list (it starts with `WRL1`), not an image.
fn is_revocation_list(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok_and(|()| magic == warden_keychain::LIST_MAGIC)
}

/// Installs the staged revocation list (`warden_os::revocations`): verified against
/// the vendor roots, newer than the held one, written atomically. The staged file is
/// deleted either way.
async fn install_revocations<F, R>(
    updater: &Updater<F, R>,
    path: &Path,
    source: &str,
) -> LocalInstallAnswer
where
    F: SlotFileSystem + Send + 'static,
    R: BootRootOfTrust + Send + 'static,
{
    let bytes = std::fs::read(path);
    let _ = std::fs::remove_file(path);
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(error) => {
            return LocalInstallAnswer::refused(
                RefusalKind::Install,
                format!("cannot read the staged revocation list: {error}; nothing was changed"),
            );
        }
    };
    // The one install path, the fleet's lists' too (`super::revocations`).
    let installed = super::revocations::install_list(&updater.monitor, bytes).await;
    match installed {
        Ok(RevocationInstall::Installed { sequence, revoked }) => {
            updater.revocations_changed(Some(sequence));
            LocalInstallAnswer::RevocationsInstalled {
                sequence,
                revoked,
                detail: format!(
                    "revocation list {sequence} from {source} installed: {revoked} key(s) revoked; images signed by them are refused"
                ),
            }
        }
        Ok(RevocationInstall::AlreadyHeld { sequence }) => {
            LocalInstallAnswer::RevocationsInstalled {
                sequence,
                revoked: 0,
                detail: format!("revocation list {sequence} was already held; nothing changed"),
            }
        }
        Err(why) => LocalInstallAnswer::refused(
            RefusalKind::Image,
            format!("refused {source}: {why}; nothing was changed"),
        ),
    }
}

/// What a verified staged file installs: an image, or a delta's result.
struct StagedRelease {
    /// The (resulting) image's version.
    version: String,
    /// Its anti-rollback counter.
    security_counter: u64,
    /// Whether the file is a delta (`warden image delta`) to apply to the installed image.
    delta: bool,
}

/// Verifies the staged image as the boot monitor's install will (vendor roots,
/// revocations, product, anti-rollback counter, signature, payload) and returns what it
/// installs, or what was wrong in words that name the unit's side too. A delta is
/// verified likewise (its patch's digest for the payload) and its base must be the
/// installed image; its result is verified in full as an image when it is installed.
fn verify_staged<F: SlotFileSystem, R: BootRootOfTrust>(
    monitor: &mut BootMonitor<F, R>,
    path: &Path,
) -> Result<StagedRelease, String> {
    let product = monitor.config().product;
    let trust_error = |error: warden_os::root_of_trust::RootOfTrustError| {
        format!("cannot read the unit's vendor roots and anti-rollback counter: {error}")
    };
    let roots = monitor
        .root_of_trust()
        .vendor_roots()
        .map_err(trust_error)?;
    // The root of trust's revocations and the held revocation list's.
    let revoked = monitor
        .revoked_keys(&roots)
        .map_err(|error| error.to_string())?;
    let counter = monitor
        .root_of_trust()
        .read_counter()
        .map_err(trust_error)?;
    let trust = ImageTrust {
        roots: &roots,
        revoked: &revoked,
        product,
        min_security_counter: counter,
    };
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if warden_os::delta::looks_like_delta(&mut file)
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        let header = warden_os::delta::verify_delta_reader(&mut file, len, &trust)
            .map_err(|error| format!("delta: {error}"))?;
        let installed = monitor
            .installed_image_sha256()
            .map_err(|error| format!("cannot read the installed image: {error}"))?;
        return match installed {
            Some(installed) if installed == header.base_sha256 => Ok(StagedRelease {
                version: header.result_version.to_string(),
                security_counter: header.result_security_counter,
                delta: true,
            }),
            Some(installed) => Err(format!(
                "the delta applies to image sha256 {}, this unit runs image {}; install the full image of version {} instead",
                to_hex(&header.base_sha256),
                to_hex(&installed),
                header.result_version
            )),
            None => Err(format!(
                "this unit has no installed image to apply the delta to; install the full image of version {} instead",
                header.result_version
            )),
        };
    }
    match verify_reader(&mut file, len, &trust, &mut |_| {}) {
        Ok(verified) => Ok(StagedRelease {
            version: verified.header().version.to_string(),
            security_counter: verified.header().security_counter,
            delta: false,
        }),
        Err(ImageReadError::Image(error)) => {
            let header = read_header(path);
            Err(describe_refusal(error, header.as_ref(), product, counter))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The unverified header of the file at `path`, to name what it claims to be.
fn read_header(path: &Path) -> Option<ImageHeader> {
    use std::io::Read as _;
    let mut bytes = [0u8; HEADER_LEN];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut bytes)
        .ok()?;
    ImageHeader::decode(&bytes).ok()
}

/// The image error in words, with the values on both sides where there are two.
fn describe_refusal(
    error: ImageError,
    header: Option<&ImageHeader>,
    product: warden_os::image::ProductId,
    counter: u64,
) -> String {
    match (error, header) {
        (ImageError::WrongProduct, Some(header)) => format!(
            "wrong product: the image is for {}, this unit is {product}",
            header.product
        ),
        (ImageError::SecurityCounterTooLow, Some(header)) => format!(
            "anti-rollback: the image's security counter {} (version {}) is below this unit's counter {counter}; a downgrade is refused",
            header.security_counter, header.version
        ),
        (ImageError::Certificate(warden_os::image::ChainError::Revoked), _) => format!(
            "revoked signing key: {error}; the vendor withdrew the key this image is signed with, so this unit refuses it"
        ),
        (ImageError::SignatureInvalid | ImageError::Certificate(_), _) => {
            format!("signature: {error}")
        }
        (
            ImageError::PayloadHashMismatch
            | ImageError::PayloadTooLong
            | ImageError::PayloadTooShort
            | ImageError::LengthMismatch
            | ImageError::Truncated,
            _,
        ) => format!("the file was altered or is incomplete: {error}"),
        _ => error.to_string(),
    }
}
