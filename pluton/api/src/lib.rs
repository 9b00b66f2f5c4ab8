#![doc = include_str!("../README.md")]

#[cfg(feature = "tokio")]
mod asynchronous;
mod blocking;
pub mod bundle_floor;
mod frame_io;
mod tls_signer;

#[cfg(feature = "tokio")]
pub use asynchronous::AsyncPlutonClient;
pub use blocking::PlutonClient;
pub use tls_signer::{PlutonSigningKey, p256_spki_der};

pub use warden_pluton::protocol::{Request, Response};
pub use warden_pluton::{
    CounterName, DeviceId, IdentityInfo, InstalledRootKey, PlutonError, ProvisioningCapability,
    Role, RoleToken, StatusInfo,
};

use std::path::PathBuf;

/// Default time a client waits for pluton to answer.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// An argument is larger than the protocol allows.
    #[error("{argument} is too large for the pluton protocol")]
    ArgumentTooLarge {
        /// Which argument.
        argument: &'static str,
    },
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
