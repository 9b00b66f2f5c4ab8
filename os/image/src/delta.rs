//! The delta file `WDL1`: header, patch, release-key certificate and signature.
//!
//! Here, beside the image format, so that the device (`warden-os`) and the fleet
//! (which verifies a delta at upload) read the same bytes the same way; building and
//! applying a patch are `warden-os`'s (`warden_os::delta`).
//!
//! ```text
//! offset size field
//!      0    4 magic "WDL1"
//!      4    2 format version (1), little-endian
//!      6    1 patch engine (1 = bsdiff-style records in one raw deflate stream)
//!      7    1 reserved, 0
//!      8   16 product ID (as in the image header)
//!     24   32 SHA-256 of the whole base image file (the slot it applies to)
//!     56    8 size of the base image file
//!     64   32 SHA-256 of the whole result image file
//!     96    8 size of the result image file
//!    104   12 result version: major, minor, patch (u32 each)
//!    116    8 result security counter
//!    124    8 patch length
//!    132   32 SHA-256 of the patch
//!    164      patch (patch length bytes)
//!             release-key certificate (147 bytes, WKC1), as in images
//!             signature (64 bytes) over SHA-256 of the header, domain IMAGE_DELTA
//! ```
//!
//! The signature covers the header, and the header covers the patch by its digest. The
//! result is an ordinary image: the device verifies it in full before it installs it.

use crate::ProductId;
use crate::header::{SemanticVersion, TRAILER_LEN};
use sha2::{Digest, Sha256};
use warden_keychain::{CERT_LEN, Purpose, SIGNATURE_LEN, domain};

/// The magic at the start of every delta.
pub const DELTA_MAGIC: [u8; 4] = *b"WDL1";
/// The delta format version this code reads and writes.
pub const DELTA_FORMAT: u16 = 1;
/// Patch engine 1: bsdiff-style records (`add`, `copy`, `seek`) in a raw deflate stream.
pub const ENGINE_BSDIFF_DEFLATE: u8 = 1;
/// The header's size in bytes.
pub const DELTA_HEADER_LEN: usize = 164;
/// The signature domain of deltas (distinct from images, so neither verifies as the other).
pub const DELTA_DOMAIN: &[u8] = domain::IMAGE_DELTA;

/// The identity and integrity fields of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Product of both images.
    pub product: ProductId,
    /// SHA-256 of the whole base image file.
    pub base_sha256: [u8; 32],
    /// Size of the base image file.
    pub base_len: u64,
    /// SHA-256 of the whole result image file.
    pub result_sha256: [u8; 32],
    /// Size of the result image file.
    pub result_len: u64,
    /// The result's version (its signed header is what counts).
    pub result_version: SemanticVersion,
    /// The result's security counter (its signed header is what counts).
    pub result_security_counter: u64,
    /// Size of the patch.
    pub patch_len: u64,
    /// SHA-256 of the patch.
    pub patch_sha256: [u8; 32],
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

impl DeltaHeader {
    /// The header's bytes (what is signed, by its SHA-256).
    pub fn encode(&self) -> [u8; DELTA_HEADER_LEN] {
        let mut out = [0u8; DELTA_HEADER_LEN];
        out[0..4].copy_from_slice(&DELTA_MAGIC);
        out[4..6].copy_from_slice(&DELTA_FORMAT.to_le_bytes());
        out[6] = ENGINE_BSDIFF_DEFLATE;
        out[8..24].copy_from_slice(&self.product.0);
        out[24..56].copy_from_slice(&self.base_sha256);
        out[56..64].copy_from_slice(&self.base_len.to_le_bytes());
        out[64..96].copy_from_slice(&self.result_sha256);
        out[96..104].copy_from_slice(&self.result_len.to_le_bytes());
        out[104..108].copy_from_slice(&self.result_version.major.to_le_bytes());
        out[108..112].copy_from_slice(&self.result_version.minor.to_le_bytes());
        out[112..116].copy_from_slice(&self.result_version.patch.to_le_bytes());
        out[116..124].copy_from_slice(&self.result_security_counter.to_le_bytes());
        out[124..132].copy_from_slice(&self.patch_len.to_le_bytes());
        out[132..164].copy_from_slice(&self.patch_sha256);
        out
    }

    /// Decode a header; refuses another magic, format, engine or a non-zero reserved byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeltaFormatError> {
        if bytes.len() < DELTA_HEADER_LEN {
            return Err(DeltaFormatError::Malformed(
                "shorter than the 164-byte header",
            ));
        }
        if bytes[0..4] != DELTA_MAGIC {
            return Err(DeltaFormatError::Malformed(
                "not a delta (magic is not WDL1)",
            ));
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != DELTA_FORMAT {
            return Err(DeltaFormatError::Malformed(
                "unsupported delta format version",
            ));
        }
        if bytes[6] != ENGINE_BSDIFF_DEFLATE || bytes[7] != 0 {
            return Err(DeltaFormatError::Malformed("unknown patch engine"));
        }
        Ok(Self {
            product: ProductId(array_at(bytes, 8)),
            base_sha256: array_at(bytes, 24),
            base_len: u64_at(bytes, 56),
            result_sha256: array_at(bytes, 64),
            result_len: u64_at(bytes, 96),
            result_version: SemanticVersion::new(
                u32_at(bytes, 104),
                u32_at(bytes, 108),
                u32_at(bytes, 112),
            ),
            result_security_counter: u64_at(bytes, 116),
            patch_len: u64_at(bytes, 124),
            patch_sha256: array_at(bytes, 132),
        })
    }

    /// SHA-256 of the encoded header: what the release key signs.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The size of the whole delta file (saturating: a patch length near `u64::MAX`
    /// names no file that exists, and must not wrap to one that does).
    pub fn delta_len(&self) -> u64 {
        self.patch_len
            .saturating_add((DELTA_HEADER_LEN + TRAILER_LEN) as u64)
    }
}

/// Verify a delta header's trailer (certificate then signature) against `trust`: the
/// product, the result's counter against the anti-rollback counter, the release key's
/// chain for images (revocation included), then the signature over the header.
pub fn verify_delta_header(
    header: &DeltaHeader,
    trailer: &[u8],
    trust: &crate::ImageTrust<'_>,
) -> Result<(), DeltaFormatError> {
    if header.product != trust.product {
        return Err(DeltaFormatError::WrongProduct {
            delta: header.product,
            device: trust.product,
        });
    }
    if header.result_security_counter < trust.min_security_counter {
        return Err(DeltaFormatError::CounterTooLow {
            delta: header.result_security_counter,
            device: trust.min_security_counter,
        });
    }
    if trailer.len() != TRAILER_LEN {
        return Err(DeltaFormatError::Malformed(
            "trailer is not certificate + signature",
        ));
    }
    let (cert, signature) = trailer.split_at(CERT_LEN);
    let signature = <&[u8; SIGNATURE_LEN]>::try_from(signature)
        .map_err(|_| DeltaFormatError::Malformed("signature is not 64 bytes"))?;
    let release_key =
        warden_keychain::verify_release_key(cert, trust.roots, trust.revoked, Purpose::IMAGE)
            .map_err(DeltaFormatError::Certificate)?;
    release_key
        .verify(DELTA_DOMAIN, &header.digest(), signature)
        .map_err(|_| DeltaFormatError::SignatureInvalid)
}

/// Why a delta's header or trailer was refused (a flat `Copy` kind, as [`crate::ImageError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaFormatError {
    /// The framing is wrong (what is wrong).
    Malformed(&'static str),
    /// The delta is for another product.
    WrongProduct {
        /// The delta's product.
        delta: ProductId,
        /// The product it was checked for.
        device: ProductId,
    },
    /// The result's security counter is below the anti-rollback counter.
    CounterTooLow {
        /// The result's counter.
        delta: u64,
        /// The device's counter.
        device: u64,
    },
    /// The release key's certificate does not chain to a trusted, unrevoked root.
    Certificate(warden_keychain::ChainError),
    /// The signature over the header does not verify.
    SignatureInvalid,
    /// The patch does not hash to the signed digest.
    PatchHashMismatch,
}

impl core::fmt::Display for DeltaFormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "delta is malformed: {what}"),
            Self::WrongProduct { delta, device } => {
                write!(f, "delta is for product {delta}, this device is {device}")
            }
            Self::CounterTooLow { delta, device } => write!(
                f,
                "delta's result has security counter {delta}, below this device's {device}"
            ),
            Self::Certificate(error) => write!(f, "delta's release-key certificate: {error}"),
            Self::SignatureInvalid => f.write_str("delta's signature does not verify"),
            Self::PatchHashMismatch => f.write_str(
                "delta's patch does not match its signed SHA-256 (corrupted or altered)",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DeltaFormatError {}

/// Verify a whole delta held in memory: framing, the file's length, then as
/// [`verify_delta_header`], then the patch's SHA-256. (The device verifies a delta
/// streamed from disk: `warden_os::delta::verify_delta_reader`.)
pub fn verify_delta(
    bytes: &[u8],
    trust: &crate::ImageTrust<'_>,
) -> Result<DeltaHeader, DeltaFormatError> {
    let header = DeltaHeader::decode(bytes)?;
    if bytes.len() < DELTA_HEADER_LEN + TRAILER_LEN || header.delta_len() != bytes.len() as u64 {
        return Err(DeltaFormatError::Malformed(
            "file length does not match the header's patch length",
        ));
    }
    let patch_end = bytes.len() - TRAILER_LEN;
    verify_delta_header(&header, &bytes[patch_end..], trust)?;
    let patch_digest: [u8; 32] = Sha256::digest(&bytes[DELTA_HEADER_LEN..patch_end]).into();
    if patch_digest != header.patch_sha256 {
        return Err(DeltaFormatError::PatchHashMismatch);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> DeltaHeader {
        DeltaHeader {
            product: ProductId::new("press-guardian").expect("product"),
            base_sha256: [1; 32],
            base_len: 1000,
            result_sha256: [2; 32],
            result_len: 2000,
            result_version: SemanticVersion::new(1, 2, 3),
            result_security_counter: 7,
            patch_len: 99,
            patch_sha256: [3; 32],
        }
    }

    #[test]
    fn header_round_trips_and_every_field_is_placed() {
        let encoded = header().encode();
        assert_eq!(DeltaHeader::decode(&encoded).expect("decode"), header());
        assert_eq!(&encoded[..4], b"WDL1");
        assert_eq!(header().delta_len(), 164 + 147 + 64 + 99);
    }

    #[test]
    fn a_patch_length_near_the_limit_names_no_file() {
        let mut near = header();
        near.patch_len = u64::MAX - 100;
        assert_eq!(near.delta_len(), u64::MAX);
        let mut bytes = near.encode().to_vec();
        bytes.resize(200, 0);
        assert!(matches!(
            verify_delta(
                &bytes,
                &crate::ImageTrust {
                    roots: &[],
                    revoked: &[],
                    product: near.product,
                    min_security_counter: 0,
                }
            ),
            Err(DeltaFormatError::Malformed(_))
        ));
    }

    #[test]
    fn header_refuses_other_magic_format_engine_and_short_input() {
        let encoded = header().encode();
        assert!(DeltaHeader::decode(&encoded[..163]).is_err());
        for at in [0, 4, 6, 7] {
            let mut bad = encoded;
            bad[at] ^= 0x40;
            assert!(DeltaHeader::decode(&bad).is_err(), "byte {at} changed");
        }
    }
}
