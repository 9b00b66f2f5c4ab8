//! The signed image header (format version 1): fields, encoding, decoding.

use core::fmt;
use core::str::FromStr;

use sha2::{Digest, Sha256};
use warden_keychain::{CERT_LEN, SIGNATURE_LEN, domain};

use warden_policy::bundle::ProductId;

use crate::ImageError;

/// First four bytes of every image.
pub const IMAGE_MAGIC: [u8; 4] = *b"WIM1";
/// The image format version this build writes and reads.
pub const IMAGE_FORMAT: u16 = 1;
/// Length of the version-1 header (the part the release key signs).
pub const HEADER_LEN: usize = 112;
/// Length of what follows the payload: the release-key certificate and the signature.
pub const TRAILER_LEN: usize = CERT_LEN + SIGNATURE_LEN;
/// Largest payload a device accepts (1 GiB).
pub const MAX_PAYLOAD_LEN: u64 = 1 << 30;
/// Signature domain of images (the keychain's image domain).
pub const IMAGE_DOMAIN: &[u8] = domain::IMAGE;

const FORMAT_AT: usize = 4;
const HEADER_LEN_AT: usize = 6;
const PRODUCT_AT: usize = 8;
const MAJOR_AT: usize = 24;
const MINOR_AT: usize = 28;
const PATCH_AT: usize = 32;
const FLAGS_AT: usize = 36;
const COUNTER_AT: usize = 40;
const BUILD_ID_AT: usize = 48;
const CREATED_AT: usize = 64;
const PAYLOAD_LEN_AT: usize = 72;
const PAYLOAD_SHA256_AT: usize = 80;

/// A semantic version `major.minor.patch` (informational: anti-rollback uses the
/// security counter, so a hotfix can share a counter with the release it fixes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SemanticVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl SemanticVersion {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for SemanticVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version string is not `MAJOR.MINOR.PATCH` with decimal `u32` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionParseError;

impl fmt::Display for VersionParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("version is not MAJOR.MINOR.PATCH (three decimal numbers)")
    }
}

impl core::error::Error for VersionParseError {}

impl FromStr for SemanticVersion {
    type Err = VersionParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split('.');
        let mut next = || -> Result<u32, VersionParseError> {
            let part = parts.next().ok_or(VersionParseError)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionParseError);
            }
            part.parse().map_err(|_| VersionParseError)
        };
        let version = Self::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(VersionParseError);
        }
        Ok(version)
    }
}

/// A 16-byte build identifier chosen by the release pipeline (e.g. a commit hash prefix).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BuildId(pub [u8; 16]);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({self})")
    }
}

/// The signed header of an image. See the README for the byte layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// The product the image is for.
    pub product: ProductId,
    /// The release's semantic version.
    pub version: SemanticVersion,
    /// Anti-rollback: a device refuses an image below its stored counter.
    pub security_counter: u64,
    /// The build identifier.
    pub build_id: BuildId,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created_at: u64,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// SHA-256 of the payload.
    pub payload_sha256: [u8; 32],
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], ImageError> {
    bytes
        .get(at..at + N)
        .and_then(|slice| <[u8; N]>::try_from(slice).ok())
        .ok_or(ImageError::Truncated)
}

impl ImageHeader {
    /// The header's bytes (deterministic: fixed offsets, little-endian integers).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..FORMAT_AT].copy_from_slice(&IMAGE_MAGIC);
        out[FORMAT_AT..HEADER_LEN_AT].copy_from_slice(&IMAGE_FORMAT.to_le_bytes());
        // HEADER_LEN is 112: the cast cannot truncate.
        out[HEADER_LEN_AT..PRODUCT_AT].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        out[PRODUCT_AT..MAJOR_AT].copy_from_slice(&self.product.0);
        out[MAJOR_AT..MINOR_AT].copy_from_slice(&self.version.major.to_le_bytes());
        out[MINOR_AT..PATCH_AT].copy_from_slice(&self.version.minor.to_le_bytes());
        out[PATCH_AT..FLAGS_AT].copy_from_slice(&self.version.patch.to_le_bytes());
        out[FLAGS_AT..COUNTER_AT].copy_from_slice(&0u32.to_le_bytes());
        out[COUNTER_AT..BUILD_ID_AT].copy_from_slice(&self.security_counter.to_le_bytes());
        out[BUILD_ID_AT..CREATED_AT].copy_from_slice(&self.build_id.0);
        out[CREATED_AT..PAYLOAD_LEN_AT].copy_from_slice(&self.created_at.to_le_bytes());
        out[PAYLOAD_LEN_AT..PAYLOAD_SHA256_AT].copy_from_slice(&self.payload_len.to_le_bytes());
        out[PAYLOAD_SHA256_AT..HEADER_LEN].copy_from_slice(&self.payload_sha256);
        out
    }

    /// Decode the header at the start of `bytes` (framing checks only; nothing verified).
    pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
        let magic_len = bytes.len().min(IMAGE_MAGIC.len());
        if bytes[..magic_len] != IMAGE_MAGIC[..magic_len] {
            return Err(ImageError::BadMagic);
        }
        if u16::from_le_bytes(array(bytes, FORMAT_AT)?) != IMAGE_FORMAT {
            return Err(ImageError::UnsupportedFormat);
        }
        if usize::from(u16::from_le_bytes(array(bytes, HEADER_LEN_AT)?)) != HEADER_LEN {
            return Err(ImageError::BadHeaderLength);
        }
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Truncated);
        }
        if u32::from_le_bytes(array(bytes, FLAGS_AT)?) != 0 {
            return Err(ImageError::ReservedFlags);
        }
        let header = Self {
            product: ProductId(array(bytes, PRODUCT_AT)?),
            version: SemanticVersion::new(
                u32::from_le_bytes(array(bytes, MAJOR_AT)?),
                u32::from_le_bytes(array(bytes, MINOR_AT)?),
                u32::from_le_bytes(array(bytes, PATCH_AT)?),
            ),
            security_counter: u64::from_le_bytes(array(bytes, COUNTER_AT)?),
            build_id: BuildId(array(bytes, BUILD_ID_AT)?),
            created_at: u64::from_le_bytes(array(bytes, CREATED_AT)?),
            payload_len: u64::from_le_bytes(array(bytes, PAYLOAD_LEN_AT)?),
            payload_sha256: array(bytes, PAYLOAD_SHA256_AT)?,
        };
        if header.payload_len > MAX_PAYLOAD_LEN {
            return Err(ImageError::TooLarge);
        }
        Ok(header)
    }

    /// SHA-256 of the encoded header: what the release key signs, and what boot measures.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The length of the whole signed image this header describes.
    pub fn image_len(&self) -> u64 {
        // payload_len <= MAX_PAYLOAD_LEN for a decoded header; saturate for built ones.
        (HEADER_LEN as u64)
            .saturating_add(self.payload_len)
            .saturating_add(TRAILER_LEN as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ImageHeader {
        ImageHeader {
            product: ProductId::new("warden-gw").expect("product"),
            version: SemanticVersion::new(1, 2, 3),
            security_counter: 7,
            build_id: BuildId([0xab; 16]),
            created_at: 1_800_000_000,
            payload_len: 5,
            payload_sha256: [9; 32],
        }
    }

    #[test]
    fn header_round_trips_and_layout_matches_the_readme() {
        let bytes = header().encode();
        assert_eq!(&bytes[..4], b"WIM1");
        assert_eq!(bytes[4..6], [1, 0]);
        assert_eq!(bytes[6..8], [112, 0]);
        assert_eq!(bytes[40], 7);
        assert_eq!(bytes[72], 5);
        assert_eq!(ImageHeader::decode(&bytes), Ok(header()));
        assert_eq!(TRAILER_LEN, 211);
    }

    #[test]
    fn decode_reports_the_first_framing_problem() {
        assert_eq!(ImageHeader::decode(b""), Err(ImageError::Truncated));
        assert_eq!(ImageHeader::decode(b"WI"), Err(ImageError::Truncated));
        assert_eq!(ImageHeader::decode(b"WX"), Err(ImageError::BadMagic));
        let mut bytes = header().encode();
        assert_eq!(
            ImageHeader::decode(&bytes[..100]),
            Err(ImageError::Truncated)
        );
        bytes[36] = 1;
        assert_eq!(ImageHeader::decode(&bytes), Err(ImageError::ReservedFlags));
        bytes[6] = 113;
        assert_eq!(
            ImageHeader::decode(&bytes),
            Err(ImageError::BadHeaderLength)
        );
        bytes[4] = 2;
        assert_eq!(
            ImageHeader::decode(&bytes),
            Err(ImageError::UnsupportedFormat)
        );
        let mut big = header();
        big.payload_len = MAX_PAYLOAD_LEN + 1;
        assert_eq!(
            ImageHeader::decode(&big.encode()),
            Err(ImageError::TooLarge)
        );
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!("1.2.3".parse(), Ok(SemanticVersion::new(1, 2, 3)));
        for bad in [
            "", "1", "1.2", "1.2.3.4", "1.-2.3", "a.b.c", "1..3", "1.2.+3",
        ] {
            assert_eq!(
                bad.parse::<SemanticVersion>(),
                Err(VersionParseError),
                "{bad}"
            );
        }
        assert!(SemanticVersion::new(1, 10, 0) > SemanticVersion::new(1, 9, 9));
    }

    #[test]
    fn the_fuzz_harness_runs_on_a_header_and_a_whole_image() {
        let bytes = header().encode();
        crate::fuzz_harness::image_header(&bytes);
        let mut image = bytes.to_vec();
        image.extend([0; 5]);
        image.extend([0; TRAILER_LEN]);
        crate::fuzz_harness::image_header(&image);
        crate::fuzz_harness::image_header(b"");
    }

    proptest::proptest! {
        /// The fuzz target's harness (`os/fuzz`, target `image_header`) on random input,
        /// and on a valid header with one byte changed.
        #[test]
        fn the_fuzz_harness_holds(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            at in 0..HEADER_LEN,
            value in proptest::num::u8::ANY,
        ) {
            crate::fuzz_harness::image_header(&bytes);
            let mut mutated = header().encode();
            mutated[at] = value;
            crate::fuzz_harness::image_header(&mutated);
        }
    }
}
