//! The pluton process: a Unix-socket server answering [`crate::protocol`] frames.
//!
//! Each connection is served by its own task: read a 4-byte length (idle timeout), read the
//! body (frame timeout), answer, repeat. An oversized or zero length gets an error
//! response and the connection is closed (the stream cannot be resynchronised); a
//! malformed or unknown body gets an error response and the connection stays usable; a
//! client that stalls mid-frame is dropped when the frame timeout expires. Requests are
//! carried out one at a time on a blocking thread, so store fsyncs never stall the
//! socket loop.
//!
//! Each connection has a role ([`CallerRoles`]: the peer's uid from `SO_PEERCRED`, or a
//! token presented in `Authenticate`), and holds one of that role's connection slots
//! ([`crate::roles::connection_budget`]); a role whose slots are all taken gets `Busy`
//! without touching any other role's, and each role has its own idle timeout.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroize;

use crate::PlutonError;
use crate::backend::{RootOfTrust, SoftwarePluton};
use crate::backend_record::{self, BackendKind, BackendRecordError};
use crate::capability::{CAPABILITY_LEN, ProvisioningCapability};
use crate::file_store::{
    FileStore, FileStoreError, create_private_directory, write_file_atomically,
};
use crate::protocol::{
    Caller, FRAME_HEADER_LEN, MAX_FRAME_LEN, Response, encode_frame, frame_body_len,
    handle_request_frame,
};
use crate::roles::{ROLE_TOKEN_LEN, ROLES, Role, RoleToken, RoleTokens, connection_budget};

/// Name of the capability file written on first start, unless configured otherwise.
pub const DEFAULT_CAPABILITY_FILE_NAME: &str = "provisioning.capability";

/// The software backend as the server runs it.
pub type FileBackedPluton = SoftwarePluton<FileStore, getrandom::SysRng>;

/// Which role each caller has: the host's configuration (from its compartment manifest).
///
/// A caller whose uid is in `by_uid` has that role from its first byte. Otherwise it has
/// no role (no rights) until it presents, in `Authenticate`, a token from
/// `by_capability` (tokens the host minted with [`RoleToken::generate`] and handed each
/// compartment at launch, for hosts where uids cannot separate roles) or the
/// provisioning capability ([`Role::Boot`]). The default maps nobody: deny by default.
#[derive(Debug, Clone, Default)]
pub struct CallerRoles {
    /// Roles by the peer's uid (`SO_PEERCRED`).
    pub by_uid: BTreeMap<u32, Role>,
    /// Roles by the token a caller presents.
    pub by_capability: Vec<(Role, RoleToken)>,
    /// Give callers the uid map does not name [`Role::Unseparated`] instead of no role
    /// (transitional, for hosts not yet wired to hand out roles; see the README).
    pub unseparated: bool,
}

impl CallerRoles {
    /// Every caller the maps do not name is [`Role::Unseparated`] (transitional).
    pub fn unseparated() -> Self {
        Self {
            unseparated: true,
            ..Self::default()
        }
    }

    /// The role a caller has before it authenticates.
    pub fn role_of_uid(&self, uid: u32) -> Option<Role> {
        self.by_uid
            .get(&uid)
            .copied()
            .or(self.unseparated.then_some(Role::Unseparated))
    }
}

impl RoleTokens for CallerRoles {
    fn role_of(&self, token: &RoleToken) -> Option<Role> {
        self.by_capability.as_slice().role_of(token)
    }
}

/// Which root of trust the server runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Keys and state in pluton's state directory ([`SoftwarePluton`]).
    #[default]
    Software,
    /// A TPM 2.0 ([`crate::tpm::TpmPluton`], cargo feature `tpm`), reached through a
    /// TCTI: `device:/dev/tpmrm0` on hardware, `swtpm:host=127.0.0.1,port=2321` for swtpm.
    Tpm {
        /// The TCTI string.
        tcti: String,
    },
}

impl Backend {
    /// The backend of `kind`, reaching a TPM through `tcti`.
    pub fn of_kind(kind: BackendKind, tcti: String) -> Self {
        match kind {
            BackendKind::Software => Self::Software,
            BackendKind::Tpm => Self::Tpm { tcti },
        }
    }

    /// Which backend this is, as the state directory records it.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Software => BackendKind::Software,
            Self::Tpm { .. } => BackendKind::Tpm,
        }
    }
}

/// The TCTI of the kernel's TPM resource manager, the default on hardware.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The root of trust behind the socket (the state directory holds either's state).
    pub backend: Backend,
    /// The firmware version the security monitor verified (reported in quotes).
    pub firmware_version: u32,
    /// Where to write the provisioning capability on first start (mode 0600; only the
    /// monitor may read it). Default: `<state_dir>/provisioning.capability`.
    pub capability_file: Option<PathBuf>,
    /// Time allowed for a frame's body to arrive once its header has.
    pub frame_timeout: Duration,
    /// Who the callers are. Connection slots and idle timeouts follow from each role
    /// ([`crate::roles::connection_budget`]).
    pub roles: CallerRoles,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Software,
            firmware_version: 0,
            capability_file: None,
            frame_timeout: Duration::from_secs(2),
            roles: CallerRoles::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A state or capability file operation failed.
    #[error(transparent)]
    File(#[from] FileStoreError),
    /// The socket could not be bound.
    #[error("bind pluton socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The state directory belongs to another backend, or its record is unreadable.
    #[error(transparent)]
    BackendRecord(#[from] BackendRecordError),
    /// The configuration asks for the TPM backend, and this build does not have it.
    #[error("the tpm backend is not built in: build warden-pluton with the cargo feature `tpm`")]
    TpmNotBuilt,
    /// The TPM backend could not start.
    #[cfg(feature = "tpm")]
    #[error("pluton state in {path}: {error}")]
    Tpm {
        /// The state directory.
        path: PathBuf,
        /// What failed.
        error: crate::tpm::TpmError,
    },
    /// The backend refused to start (for example, corrupt state).
    #[error("pluton state in {path}: {error}")]
    Backend {
        /// The state directory.
        path: PathBuf,
        /// The error kind.
        error: PlutonError,
    },
}

/// Open the file-backed software root of trust in `state_dir` ("boot": registers zero).
/// On first start the provisioning capability is written to the capability file first.
pub fn open_file_backed(
    state_dir: &Path,
    options: &ServeOptions,
) -> Result<FileBackedPluton, ServerError> {
    open_on_state_dir(
        state_dir,
        BackendKind::Software,
        options,
        |store, deliver| {
            SoftwarePluton::open(store, getrandom::SysRng, options.firmware_version, deliver)
        },
        |error| ServerError::Backend {
            path: state_dir.to_owned(),
            error,
        },
    )
}

/// Open the TPM 2.0 root of trust behind `tcti`, its provisioning state in `state_dir`
/// (first start: the capability file is written first, as for the software backend).
#[cfg(feature = "tpm")]
pub fn open_tpm_backed(
    state_dir: &Path,
    tcti: &str,
    options: &ServeOptions,
) -> Result<crate::tpm::TpmPluton<FileStore>, ServerError> {
    open_on_state_dir(
        state_dir,
        BackendKind::Tpm,
        options,
        |store, deliver| {
            crate::tpm::TpmPluton::open(tcti, store, options.firmware_version, deliver)
        },
        |error| ServerError::Tpm {
            path: state_dir.to_owned(),
            error,
        },
    )
}

/// Open a backend on the store in `state_dir`: `open` gets the store and the function
/// that writes a newly minted capability to the capability file (which a backend calls
/// before it persists its first state). A failed capability write is reported as such.
fn open_on_state_dir<B, E>(
    state_dir: &Path,
    kind: BackendKind,
    options: &ServeOptions,
    open: impl FnOnce(
        FileStore,
        &mut dyn FnMut(&ProvisioningCapability) -> Result<(), PlutonError>,
    ) -> Result<B, E>,
    backend_error: impl FnOnce(E) -> ServerError,
) -> Result<B, ServerError> {
    create_private_directory(state_dir)?;
    backend_record::claim(state_dir, kind)?;
    let store = FileStore::open(state_dir)?;
    let capability_path = options
        .capability_file
        .clone()
        .unwrap_or_else(|| state_dir.join(DEFAULT_CAPABILITY_FILE_NAME));
    let mut file_error = None;
    let mut deliver = |capability: &ProvisioningCapability| {
        write_file_atomically(&capability_path, capability.as_bytes()).map_err(|error| {
            file_error = Some(error);
            PlutonError::StoreFailed
        })
    };
    let opened = open(store, &mut deliver);
    match (opened, file_error) {
        (Ok(backend), _) => Ok(backend),
        (Err(_), Some(error)) => Err(ServerError::File(error)),
        (Err(error), None) => Err(backend_error(error)),
    }
}

/// Read a file of exactly 32 secret bytes, leaving no copy behind but the one returned.
fn read_secret_file(
    path: &Path,
    what: &str,
) -> Result<zeroize::Zeroizing<[u8; 32]>, FileStoreError> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| FileStoreError {
        operation: "read",
        path: path.to_owned(),
        source,
    })?);
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != secret.len() {
        return Err(FileStoreError {
            operation: "parse",
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} file is not 32 bytes"),
            ),
        });
    }
    secret.copy_from_slice(&bytes);
    Ok(secret)
}

/// Read a provisioning capability from the file pluton wrote (the monitor's side).
pub fn read_capability_file(path: &Path) -> Result<ProvisioningCapability, FileStoreError> {
    const _: () = assert!(CAPABILITY_LEN == 32);
    Ok(ProvisioningCapability::from_bytes(*read_secret_file(
        path,
        "capability",
    )?))
}

/// Read a role token from a file of 32 raw bytes (a host handing tokens out by file).
pub fn read_role_token_file(path: &Path) -> Result<RoleToken, FileStoreError> {
    const _: () = assert!(ROLE_TOKEN_LEN == 32);
    Ok(RoleToken::from_bytes(*read_secret_file(
        path,
        "role token",
    )?))
}

/// Bind `socket_path` (replacing a stale socket file, mode 0660 from the start).
pub fn bind(socket_path: &Path) -> Result<UnixListener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        path: socket_path.to_owned(),
        source,
    };
    // Bound in a private directory and renamed into place: never reachable with
    // looser permissions than 0660.
    warden_listeners::bind_unix_socket(socket_path, 0o660).map_err(bind_error)
}

/// Run pluton: open the chosen backend ([`ServeOptions::backend`]) with its state in
/// `state_dir`, bind `socket_path`, serve until the task is dropped or the process ends.
pub async fn serve(
    socket_path: &Path,
    state_dir: &Path,
    options: ServeOptions,
) -> Result<(), ServerError> {
    match &options.backend {
        Backend::Software => {
            let backend = open_file_backed(state_dir, &options)?;
            let listener = bind(socket_path)?;
            tracing::info!(socket = %socket_path.display(), state = %state_dir.display(), "pluton serving (software backend)");
            serve_backend(listener, backend, options).await;
            Ok(())
        }
        #[cfg(feature = "tpm")]
        Backend::Tpm { tcti } => {
            let backend = open_tpm_backed(state_dir, tcti, &options)?;
            let listener = bind(socket_path)?;
            tracing::info!(socket = %socket_path.display(), state = %state_dir.display(), tcti, "pluton serving (tpm backend)");
            serve_backend(listener, backend, options).await;
            Ok(())
        }
        #[cfg(not(feature = "tpm"))]
        Backend::Tpm { .. } => Err(ServerError::TpmNotBuilt),
    }
}

/// The connection slots of each role (index 0: callers without a role yet).
struct Slots([Arc<Semaphore>; ROLES.len() + 1]);

impl Slots {
    fn new() -> Self {
        Self(std::array::from_fn(|index| {
            let role = index.checked_sub(1).map(|index| ROLES[index]);
            Arc::new(Semaphore::new(connection_budget(role).slots))
        }))
    }

    fn take(&self, role: Option<Role>) -> Option<OwnedSemaphorePermit> {
        let index = role.map_or(0, |role| role.index() + 1);
        Arc::clone(&self.0[index]).try_acquire_owned().ok()
    }
}

/// Serve any [`RootOfTrust`] backend on an already-bound listener.
pub async fn serve_backend<B: RootOfTrust + Send + 'static>(
    listener: UnixListener,
    backend: B,
    options: ServeOptions,
) {
    let backend = Arc::new(Mutex::new(backend));
    let options = Arc::new(options);
    let slots = Arc::new(Slots::new());
    let mut backoff = warden_listeners::AcceptBackoff::new("pluton");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                let wait = backoff.failed(&error);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.succeeded();
        // The uid comes from the kernel (SO_PEERCRED), never from the request.
        let uid = match stream.peer_cred() {
            Ok(credentials) => credentials.uid(),
            Err(error) => {
                tracing::warn!(%error, "no peer credentials; closing");
                continue;
            }
        };
        let caller = Caller {
            uid,
            role: options.roles.role_of_uid(uid),
        };
        let Some(permit) = slots.take(caller.role) else {
            tracing::warn!(uid, role = ?caller.role, "role's connection slots are full");
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let backend = Arc::clone(&backend);
        let options = Arc::clone(&options);
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            serve_connection(stream, caller, permit, backend, &options, &slots).await;
        });
    }
}

async fn refuse_busy(mut stream: UnixStream) {
    let mut frame = [0u8; 16];
    if let Ok(length) = encode_frame(&Response::Error(PlutonError::Busy), &mut frame) {
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame[..length])).await;
    }
}

async fn serve_connection<B: RootOfTrust + Send + 'static>(
    mut stream: UnixStream,
    mut caller: Caller,
    mut permit: OwnedSemaphorePermit,
    backend: Arc<Mutex<B>>,
    options: &Arc<ServeOptions>,
    slots: &Slots,
) {
    let uid = caller.uid;
    let mut body = vec![0u8; MAX_FRAME_LEN];
    let mut out = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    loop {
        let idle_timeout = Duration::from_millis(connection_budget(caller.role).idle_timeout_ms);
        let mut header = [0u8; FRAME_HEADER_LEN];
        match tokio::time::timeout(idle_timeout, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let length = match frame_body_len(header) {
            Ok(length) => length,
            Err(error) => {
                tracing::warn!(uid, %error, "refusing frame");
                if let Ok(length) = encode_frame(&Response::Error(error), &mut out) {
                    let _ = tokio::time::timeout(
                        options.frame_timeout,
                        stream.write_all(&out[..length]),
                    )
                    .await;
                }
                break;
            }
        };
        match tokio::time::timeout(
            options.frame_timeout,
            stream.read_exact(&mut body[..length]),
        )
        .await
        {
            Ok(Ok(_)) => {}
            _ => {
                tracing::warn!(uid, "incomplete frame; closing");
                break;
            }
        }
        let backend = Arc::clone(&backend);
        let shared = Arc::clone(options);
        let before = caller;
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = backend.lock().unwrap_or_else(PoisonError::into_inner);
            let result = handle_request_frame(
                &mut *guard,
                &mut caller,
                &shared.roles,
                &body[..length],
                &mut out,
            );
            body[..length].zeroize();
            (result, caller, body, out)
        })
        .await;
        let Ok((result, after, returned_body, returned_out)) = result else {
            tracing::error!(uid, "request handler failed");
            break;
        };
        caller = after;
        body = returned_body;
        out = returned_out;
        let mut frame_length = match result {
            Ok(frame_length) => frame_length,
            Err(error) => {
                tracing::error!(uid, %error, "cannot encode response");
                break;
            }
        };
        // A new role moves the connection to that role's slots, or it is closed.
        let mut close = false;
        if caller.role != before.role {
            match slots.take(caller.role) {
                Some(new_permit) => permit = new_permit,
                None => {
                    tracing::warn!(uid, role = ?caller.role, "role's connection slots are full");
                    out[..frame_length].zeroize();
                    match encode_frame(&Response::Error(PlutonError::Busy), &mut out) {
                        Ok(length) => frame_length = length,
                        Err(_) => break,
                    }
                    close = true;
                }
            }
        }
        let written = tokio::time::timeout(
            options.frame_timeout,
            stream.write_all(&out[..frame_length]),
        )
        .await;
        out[..frame_length].zeroize();
        if close || !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    drop(permit);
}
