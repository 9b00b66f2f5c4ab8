//! Why a call through the real-time core, or the core itself, failed.

use std::path::PathBuf;
use std::sync::Arc;

use warden_rtcore_mailbox::BundleRefusal;
use warden_rtcore_mailbox::message::ConfigureRefusal;

use crate::modbus::ClientError;
use crate::modbus::pdu::ExceptionCode;

/// Why a call through the core, or the core itself, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtCoreError {
    /// The core's policy refused the request; nothing went on the line.
    #[error("the real-time core's policy denied the request: {reason}")]
    Denied {
        /// The policy's reason (`address-not-allowed`) and rule.
        reason: String,
        /// What a Modbus server answers in its place (02 for addresses, else 01).
        exception: ExceptionCode,
    },
    /// The core has no verified policy bundle: it denies everything.
    #[error("the real-time core has no verified policy bundle; every request is denied")]
    NoPolicy,
    /// The core refused a bundle.
    #[error("the real-time core refused the policy bundle: {0}")]
    BundleRefused(BundleRefusal),
    /// The bundle could not be read or is too large to upload.
    #[error("policy bundle for the real-time core: {0}")]
    Bundle(#[from] BundleError),
    /// The core refused the line settings.
    #[error("the real-time core refused the line settings: {0}")]
    ConfigureRefused(ConfigureRefusal),
    /// The core speaks another mailbox protocol.
    #[error("the real-time core speaks mailbox protocol {core}, this build {ours}")]
    Protocol {
        /// The core's.
        core: u16,
        /// Ours.
        ours: u16,
    },
    /// The core refused the request as malformed, busy or unconfigured.
    #[error("the real-time core did not take the request: {0}")]
    NotTaken(&'static str),
    /// The line failed (timeout, garbled answers) or the mailbox did.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Why the bundle for the core could not be read or uploaded (the core never saw it).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The RTU bridge runs on the core but names no `policy_bundle`.
    #[error("no policy_bundle configured")]
    NotConfigured,
    /// The configured bundle file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        /// The configured `policy_bundle`.
        path: PathBuf,
        /// Why (shared: the error is cloned with the outcome it is part of).
        error: Arc<std::io::Error>,
    },
    /// The bundle is larger than the core's upload buffer.
    #[error("{len} bytes is more than the core accepts ({max})")]
    TooLarge {
        /// The bundle's length.
        len: usize,
        /// The core's limit.
        max: usize,
    },
    /// The core answered the upload with something other than a verdict.
    #[error("unexpected answer to the upload")]
    UnexpectedAnswer,
}

/// Equal when the same thing went wrong; read errors compare by their kind
/// (`std::io::Error` itself has no equality).
impl PartialEq for BundleError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotConfigured, Self::NotConfigured)
            | (Self::UnexpectedAnswer, Self::UnexpectedAnswer) => true,
            (
                Self::Unreadable { path, error },
                Self::Unreadable {
                    path: other_path,
                    error: other_error,
                },
            ) => path == other_path && error.kind() == other_error.kind(),
            (
                Self::TooLarge { len, max },
                Self::TooLarge {
                    len: other_len,
                    max: other_max,
                },
            ) => len == other_len && max == other_max,
            _ => false,
        }
    }
}

impl Eq for BundleError {}

impl RtCoreError {
    /// As a [`ClientError`] for the bridge's downstream: a policy refusal by the core
    /// becomes `PermissionDenied` (it is also counted as a denial in the health).
    pub fn into_client_error(self) -> ClientError {
        match self {
            Self::Client(error) => error,
            Self::Denied { .. } | Self::NoPolicy => {
                ClientError::Io(std::io::ErrorKind::PermissionDenied)
            }
            Self::NotTaken(_) => ClientError::Io(std::io::ErrorKind::InvalidInput),
            _ => ClientError::Io(std::io::ErrorKind::NotConnected),
        }
    }
}

/// Turns a core denial into the text and exception a native denial would carry.
pub(crate) fn denial(reason: u8, rule: Option<u16>) -> RtCoreError {
    let reason = warden_policy::Reason::from_code(reason);
    let exception = if reason == Some(warden_policy::Reason::AddressNotAllowed) {
        ExceptionCode::ILLEGAL_DATA_ADDRESS
    } else {
        ExceptionCode::ILLEGAL_FUNCTION
    };
    let name = reason.map_or("unknown reason", warden_policy::Reason::name);
    let reason = match rule {
        Some(rule) => format!("{name} (rule #{rule})"),
        None => name.to_owned(),
    };
    RtCoreError::Denied { reason, exception }
}
