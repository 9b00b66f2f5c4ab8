//! Why a delta could not be built, verified or applied.

use std::io;
use std::path::PathBuf;

use warden_image::build::SignError;
use warden_keychain::tooling::ToolError;

use super::patch::PatchError;

/// A delta could not be built, verified or applied; the message names the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The delta's framing is wrong.
    #[error("delta is malformed: {0}")]
    Malformed(&'static str),
    /// The delta is for another product.
    #[error("delta is for product {delta}, this device is {device}")]
    WrongProduct {
        /// The delta's product.
        delta: String,
        /// The device's.
        device: String,
    },
    /// The result's security counter is below the device's anti-rollback counter.
    #[error("delta's result has security counter {delta}, below this device's {device}")]
    CounterTooLow {
        /// The result's counter.
        delta: u64,
        /// The device's counter.
        device: u64,
    },
    /// The release key's certificate does not chain to a trusted, unrevoked root.
    #[error("delta's release-key certificate: {0}")]
    Certificate(warden_keychain::ChainError),
    /// The signature over the header does not verify.
    #[error("delta's signature does not verify")]
    SignatureInvalid,
    /// The patch does not hash to the signed digest.
    #[error("delta's patch does not match its signed SHA-256 (corrupted or altered)")]
    PatchHashMismatch,
    /// The installed image is not the delta's base.
    #[error("delta applies to base image sha256 {expected}, but the installed image is {actual}")]
    BaseMismatch {
        /// The delta's base, hex.
        expected: String,
        /// The installed image, hex.
        actual: String,
    },
    /// The patch is inconsistent.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The result is not the image the delta names.
    #[error("delta's result is {actual_len} bytes with sha256 {actual}, not the signed {expected}")]
    ResultMismatch {
        /// The signed digest, hex.
        expected: String,
        /// What came out, hex.
        actual: String,
        /// Bytes that came out.
        actual_len: u64,
    },
    /// An input image is not a signed image, or the two are for different products.
    #[error("{path}: {reason}")]
    Input {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed.
    #[error("{path}: {source}")]
    Sign {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: SignError,
    },
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] ToolError),
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// The file or stream.
        what: String,
        /// Why.
        source: io::Error,
    },
}
