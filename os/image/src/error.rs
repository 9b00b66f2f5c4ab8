//! The flat error kind returned when an image does not verify.

use core::fmt;

use warden_keychain::ChainError;

/// What failed while decoding or verifying a firmware image.
///
/// A flat `Copy` kind so the no_std boot path can return it without allocation; each
/// variant names the one check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageError {
    /// The image is shorter than its header, or than its header says it is.
    Truncated,
    /// The image does not start with the `WIM1` magic.
    BadMagic,
    /// The header's format version is not one this build reads.
    UnsupportedFormat,
    /// The header-length field is not the length of this format version's header.
    BadHeaderLength,
    /// Reserved flag bits are set.
    ReservedFlags,
    /// The declared payload is larger than a device accepts.
    TooLarge,
    /// The image's length is not header + payload size + certificate + signature.
    LengthMismatch,
    /// The image is for another product.
    WrongProduct,
    /// The image's security counter is below the device's anti-rollback counter.
    SecurityCounterTooLow,
    /// The release-key certificate does not chain to an installed root for images.
    Certificate(ChainError),
    /// The release key's signature over the header does not verify.
    SignatureInvalid,
    /// More payload bytes arrived than the header declares.
    PayloadTooLong,
    /// Fewer payload bytes arrived than the header declares.
    PayloadTooShort,
    /// The payload does not hash to the header's SHA-256.
    PayloadHashMismatch,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            Self::Truncated => "image is truncated",
            Self::BadMagic => "not a firmware image (magic is not WIM1)",
            Self::UnsupportedFormat => "image header format version is not supported",
            Self::BadHeaderLength => "image header length field does not match its format",
            Self::ReservedFlags => "image header has reserved flag bits set",
            Self::TooLarge => "image payload is larger than a device accepts",
            Self::LengthMismatch => {
                "image length does not match the payload size in its header (truncated or padded)"
            }
            Self::WrongProduct => "image is for another product",
            Self::SecurityCounterTooLow => {
                "image security counter is below the device's anti-rollback counter"
            }
            Self::Certificate(error) => {
                return write!(f, "image release-key certificate rejected: {error}");
            }
            Self::SignatureInvalid => "image header signature does not verify",
            Self::PayloadTooLong => "image payload is longer than its header says",
            Self::PayloadTooShort => "image payload is shorter than its header says",
            Self::PayloadHashMismatch => "image payload does not match the SHA-256 in its header",
        };
        f.write_str(message)
    }
}

impl core::error::Error for ImageError {}
