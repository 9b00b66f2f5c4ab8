//! The flat error kinds of the root of trust and of quote verification.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Why pluton refused or failed an operation.
///
/// Flat and `Copy` so the no_std core returns it without allocation; it is also the error
/// code carried in [`crate::protocol::Response::Error`]. Wire encoding is by variant
/// position: append new variants at the end, never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PlutonError {
    /// No identity key has been created yet.
    NoIdentity,
    /// An identity already exists; replacing it needs the provisioning capability.
    IdentityExists,
    /// Manufacturing state is locked; provisioning operations are refused.
    ManufacturingLocked,
    /// The operation needs a capability the caller does not hold: the provisioning
    /// capability, or (for boot registers 0 to 3) the boot role before the boot latch.
    CapabilityRequired,
    /// The presented capability is not the one this device minted.
    CapabilityInvalid,
    /// A measurement register index is out of range.
    InvalidRegister,
    /// A counter index is out of range.
    InvalidCounter,
    /// The requested value is below the counter's current value.
    CounterWouldDecrease,
    /// A nonce is shorter than 32 or longer than 64 bytes.
    InvalidNonceLength,
    /// The message is not a TLS 1.3 client CertificateVerify content.
    NotTls13ClientCertificateVerify,
    /// A public key is not a valid uncompressed P-256 point.
    InvalidPublicKey,
    /// All root-key slots are in use.
    RootKeySlotsFull,
    /// A purpose bitmask is empty or has undefined bits.
    InvalidPurpose,
    /// A sealing label is empty or too long.
    InvalidLabel,
    /// Data to seal is larger than the sealing limit.
    SealInputTooLarge,
    /// A sealed blob is malformed.
    SealedBlobMalformed,
    /// A sealed blob did not authenticate: wrong device, owner, label, registers, or tampered.
    UnsealFailed,
    /// An output buffer is too small.
    BufferTooSmall,
    /// The random number generator failed.
    RandomFailed,
    /// Persisting state failed; the operation did not take effect.
    StoreFailed,
    /// The persisted state is corrupt or of an unknown version.
    StoreCorrupt,
    /// A request frame is larger than the protocol allows.
    FrameTooLarge,
    /// A request frame could not be decoded.
    MalformedRequest,
    /// A request names an operation this server does not know.
    UnknownRequest,
    /// The server is busy (the caller's role holds all its connection slots).
    Busy,
    /// The caller's role (or lack of one) does not allow this operation.
    NotPermitted,
    /// The TPM refused or failed a command (TPM 2.0 backend; the server's log names the
    /// command and the TPM's response code).
    TpmFailed,
    /// The data is not a PKCS#10 CertificationRequestInfo for this device's identity key.
    NotCertificateRequest,
}

impl fmt::Display for PlutonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            Self::NoIdentity => "no identity key has been created",
            Self::IdentityExists => {
                "an identity key already exists (factory reset needs the capability)"
            }
            Self::ManufacturingLocked => "manufacturing state is locked",
            Self::CapabilityRequired => {
                "operation needs a capability the caller does not hold (provisioning, or boot before the boot latch)"
            }
            Self::CapabilityInvalid => "provisioning capability is not valid for this device",
            Self::InvalidRegister => "measurement register index is out of range",
            Self::InvalidCounter => "counter index is out of range",
            Self::CounterWouldDecrease => "counter value would decrease",
            Self::InvalidNonceLength => "nonce must be 32 to 64 bytes",
            Self::NotTls13ClientCertificateVerify => {
                "message is not a tls 1.3 client certificateverify content"
            }
            Self::InvalidPublicKey => "public key is not a valid uncompressed p-256 point",
            Self::RootKeySlotsFull => "all root-key slots are in use",
            Self::InvalidPurpose => "purpose bitmask is empty or has undefined bits",
            Self::InvalidLabel => "sealing label is empty or too long",
            Self::SealInputTooLarge => "data to seal is too large",
            Self::SealedBlobMalformed => "sealed blob is malformed",
            Self::UnsealFailed => "sealed blob did not authenticate on this device",
            Self::BufferTooSmall => "output buffer is too small",
            Self::RandomFailed => "random number generator failed",
            Self::StoreFailed => "persisting pluton state failed",
            Self::StoreCorrupt => "persisted pluton state is corrupt",
            Self::FrameTooLarge => "request frame is too large",
            Self::MalformedRequest => "request frame is malformed",
            Self::UnknownRequest => "request names an unknown operation",
            Self::Busy => "pluton is busy",
            Self::NotPermitted => "the caller's role may not perform this operation",
            Self::TpmFailed => "the tpm refused or failed a command",
            Self::NotCertificateRequest => {
                "data is not a certification request info for this device's identity key"
            }
        };
        f.write_str(message)
    }
}

impl core::error::Error for PlutonError {}

/// Why an attestation quote did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QuoteError {
    /// The quote does not start with the `WPQ1` (or `WPT1`) magic.
    BadMagic,
    /// The quote's format version is not supported.
    UnsupportedVersion,
    /// The quote is shorter than its header says.
    Truncated,
    /// The quote is longer than its header says.
    TrailingBytes,
    /// Register count, counter count or nonce length is not allowed by the format.
    BadLayout,
    /// The verifying public key is not a valid uncompressed P-256 point.
    InvalidPublicKey,
    /// The quote's device ID is not the one derived from the verifying public key.
    DeviceIdMismatch,
    /// The quote's signature does not verify.
    SignatureInvalid,
    /// The quote's nonce is not the expected (fresh) nonce.
    NonceMismatch,
    /// A TPM quote's attestation key is not vouched for by the identity key.
    AttestationKeyBindingInvalid,
    /// A TPM quote's attestation-key signature over the TPM's attestation is invalid.
    AttestSignatureInvalid,
    /// A TPM quote's `TPMS_ATTEST` is malformed (out of bounds, bad field, left over).
    AttestMalformed,
    /// A TPM quote's `TPMS_ATTEST` is not a TPM-generated quote (magic or type).
    AttestNotTpmQuote,
    /// A TPM quote does not select exactly the registers' PCRs (SHA-256 bank, 8 to 15).
    PcrSelectionMismatch,
    /// A TPM quote's PCR digest is not the digest of the reported registers.
    PcrDigestMismatch,
}

impl fmt::Display for QuoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            Self::BadMagic => "quote does not start with the WPQ1 or WPT1 magic",
            Self::UnsupportedVersion => "quote format version is not supported",
            Self::Truncated => "quote is truncated",
            Self::TrailingBytes => "quote has trailing bytes",
            Self::BadLayout => "quote register count, counter count or nonce length is invalid",
            Self::InvalidPublicKey => "quote verification key is not a valid p-256 point",
            Self::DeviceIdMismatch => "quote device id does not match the public key",
            Self::SignatureInvalid => "quote signature is invalid",
            Self::NonceMismatch => "quote nonce is not the expected nonce",
            Self::AttestationKeyBindingInvalid => {
                "tpm quote attestation key is not bound to the identity key"
            }
            Self::AttestSignatureInvalid => {
                "tpm quote attestation-key signature over the tpm attestation is invalid"
            }
            Self::AttestMalformed => "tpm quote attestation structure is malformed",
            Self::AttestNotTpmQuote => "tpm quote attestation is not a tpm-generated quote",
            Self::PcrSelectionMismatch => {
                "tpm quote does not select exactly pcrs 8 to 15 of the sha-256 bank"
            }
            Self::PcrDigestMismatch => "tpm quote pcr digest does not match the reported registers",
        };
        f.write_str(message)
    }
}

impl core::error::Error for QuoteError {}
