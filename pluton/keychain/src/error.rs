//! The flat error kind returned when a signing chain does not verify.

use core::fmt;

/// What failed while decoding or verifying a release-key certificate or a signature.
///
/// A flat `Copy` kind so the no_std verifier in the boot path can return it without
/// allocation; each variant names the one check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChainError {
    /// The certificate does not start with the `WKC1` magic.
    BadMagic,
    /// The certificate's format version is not one this build understands.
    UnsupportedVersion,
    /// The certificate is shorter than its format requires.
    Truncated,
    /// The certificate is longer than its format allows.
    TrailingBytes,
    /// The purpose byte is empty or has bits this format version does not define.
    BadPurpose,
    /// A public key is not a valid uncompressed SEC1 P-256 point.
    InvalidPublicKey,
    /// The certificate names an issuer that is not among the installed roots.
    UnknownRoot,
    /// The issuing root's signature over the certificate does not verify.
    RootSignatureInvalid,
    /// The issuing root is not allowed to certify keys for the requested purpose.
    RootNotAllowed,
    /// The release key is not certified for the requested purpose.
    WrongPurpose,
    /// The release key (or its issuing root) is on the revocation list.
    Revoked,
    /// The domain-separation label is empty or longer than [`crate::MAX_DOMAIN_LEN`].
    BadDomain,
    /// The release key's signature over the message does not verify.
    SignatureInvalid,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            Self::BadMagic => "release-key certificate does not start with the WKC1 magic",
            Self::UnsupportedVersion => "release-key certificate format version is not supported",
            Self::Truncated => "release-key certificate is truncated",
            Self::TrailingBytes => "release-key certificate has trailing bytes",
            Self::BadPurpose => "release-key certificate purpose is empty or has unknown bits",
            Self::InvalidPublicKey => "public key is not a valid uncompressed P-256 point",
            Self::UnknownRoot => "release-key certificate issuer is not an installed root key",
            Self::RootSignatureInvalid => {
                "root signature over the release-key certificate is invalid"
            }
            Self::RootNotAllowed => "issuing root key is not allowed for this purpose",
            Self::WrongPurpose => "release key is not certified for this purpose",
            Self::Revoked => {
                "release key or its issuing root is revoked by the vendor's revocation list"
            }
            Self::BadDomain => "signature domain label is empty or too long",
            Self::SignatureInvalid => "release-key signature is invalid",
        };
        f.write_str(message)
    }
}

impl core::error::Error for ChainError {}
