//! What can go wrong talking to pluton, and the names of requests for messages.

use std::path::PathBuf;

use warden_pluton::PlutonError;
use warden_pluton::protocol::Request;

/// What went wrong talking to pluton.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("connect to pluton at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed (including timeouts).
    #[error("pluton at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Pluton answered with an error.
    #[error("pluton refused {operation}: {error}")]
    Refused {
        /// The request that was refused.
        operation: &'static str,
        /// Pluton's reason.
        error: PlutonError,
    },
    /// Pluton's answer could not be decoded, or did not fit the request.
    #[error("pluton sent an unexpected answer to {operation}")]
    UnexpectedResponse {
        /// The request.
        operation: &'static str,
    },
    /// The role tokens this process was launched with are unusable.
    #[error(transparent)]
    LaunchToken(#[from] LaunchTokenError),
    /// An argument is larger than the protocol allows.
    #[error("{argument} is too large for the pluton protocol")]
    ArgumentTooLarge {
        /// Which argument.
        argument: &'static str,
    },
}

/// Why the launch tokens in the environment cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchTokenError {
    /// A `WARDEN_PLUTON_TOKEN_*` variable is not 64 hex digits.
    #[error("environment variable {variable}: expected 64 hex digits")]
    Malformed {
        /// The variable's name.
        variable: String,
    },
    /// A `WARDEN_PLUTON_TOKEN_*` variable names no role a token can be issued for.
    #[error(
        "environment variable {variable}: no such role (roles: link, bridges, status-page, updates)"
    )]
    UnknownRole {
        /// The variable's name.
        variable: String,
    },
    /// An entry of `WARDEN_PLUTON_ROLE_UIDS` is not `role=uid` with a compartment role
    /// and a non-root uid given to one role only.
    #[error(
        "environment variable WARDEN_PLUTON_ROLE_UIDS: entry {entry:?} is not role=uid (roles: link, bridges, status-page, updates; uid not 0, one role per uid)"
    )]
    RoleUid {
        /// The entry.
        entry: String,
    },
    /// No randomness to mint a token.
    #[error("cannot mint a role token: {0}")]
    Mint(warden_pluton::PlutonError),
}

/// The name of a request, for error messages.
pub(crate) fn operation_name(request: &Request) -> &'static str {
    match request {
        Request::Status => "status",
        Request::ExportIdentity => "export identity",
        Request::CreateIdentity { .. } => "create identity",
        Request::InstallRootKey { .. } => "install root key",
        Request::ListRootKeys => "list root keys",
        Request::LockManufacturing { .. } => "lock manufacturing",
        Request::ExtendRegister { .. } => "extend register",
        Request::ReadRegisters => "read registers",
        Request::ReadCounters => "read counters",
        Request::AdvanceCounter { .. } => "advance counter",
        Request::Quote { .. } => "quote",
        Request::SignTls13ClientCertificateVerify { .. } => "tls sign",
        Request::Seal { .. } => "seal",
        Request::Unseal { .. } => "unseal",
        Request::Authenticate { .. } => "authenticate",
        Request::EndBoot => "end boot",
        Request::ReadNamedCounter { .. } => "read named counter",
        Request::AdvanceNamedCounter { .. } => "advance named counter",
        Request::SignCertificateRequest { .. } => "sign certificate request",
        _ => "request",
    }
}

/// Copy `bytes` into a bounded protocol field.
pub(crate) fn bounded<const N: usize>(
    bytes: &[u8],
    argument: &'static str,
) -> Result<heapless::Vec<u8, N>, ClientError> {
    heapless::Vec::from_slice(bytes).map_err(|_| ClientError::ArgumentTooLarge { argument })
}
