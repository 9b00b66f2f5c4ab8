//! Firmware images and deltas between them: verified on upload against the vendor
//! roots, stored by SHA-256, served with HTTP range support.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warden_image::{ChainError, ImageHeader, ImageTrust, RootKey, verify_image};
use warden_wire::topics::{from_hex, to_hex};

use warden_image::delta::{DeltaHeader, verify_delta};
use warden_wire::fleet_api::{DeltaRecord, ImageRecord};

/// The subdirectory of the image directory that holds deltas.
const DELTA_DIR: &str = "deltas";

/// Where images live and whom they must be signed by.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    roots: Vec<RootKey>,
}

/// Why an image was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The image did not verify (or names an unknown product).
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the image directory failed.
    #[error("image directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A configured vendor root that is not a usable key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VendorRootError {
    /// Not hex.
    #[error("images.vendor_roots[{index}] is not hex")]
    NotHex {
        /// Its position in `images.vendor_roots`, from 0.
        index: usize,
    },
    /// Hex, but not an uncompressed SEC1 P-256 public key.
    #[error("images.vendor_roots[{index}] is not a P-256 public key: {reason:?}")]
    NotAKey {
        /// Its position in `images.vendor_roots`, from 0.
        index: usize,
        /// Why the key was refused.
        reason: ChainError,
    },
}

impl VendorRootError {
    /// The config key at fault, as a TOML path.
    pub fn field(&self) -> String {
        let (Self::NotHex { index } | Self::NotAKey { index, .. }) = self;
        format!("images.vendor_roots[{index}]")
    }
}

/// The keys of `vendor_roots` (hex of uncompressed SEC1 P-256 keys, as in the config's
/// `images.vendor_roots`).
pub fn vendor_root_keys(vendor_roots: &[String]) -> Result<Vec<RootKey>, VendorRootError> {
    vendor_roots
        .iter()
        .enumerate()
        .map(|(index, hex)| {
            let bytes = from_hex(hex).ok_or(VendorRootError::NotHex { index })?;
            RootKey::from_public_key(&bytes)
                .map_err(|reason| VendorRootError::NotAKey { index, reason })
        })
        .collect()
}

impl ImageStore {
    /// Images under `dir`, trusted when signed under one of `vendor_roots` (hex of
    /// uncompressed SEC1 P-256 keys, as in the config's `images.vendor_roots`).
    pub fn new(dir: PathBuf, vendor_roots: &[String]) -> Result<Self, VendorRootError> {
        Ok(Self {
            dir,
            roots: vendor_root_keys(vendor_roots)?,
        })
    }

    /// The vendor roots uploads must be signed under (`images.vendor_roots`); release-key
    /// revocation lists are verified against them too (`crate::revocations`).
    pub fn vendor_roots(&self) -> &[RootKey] {
        &self.roots
    }

    /// Verifies an uploaded image: framing, the release-key chain to a vendor root,
    /// the header signature and the payload hash; its product must be one of
    /// `products`.
    pub fn verify(
        &self,
        bytes: &[u8],
        products: &[String],
        now_ms: i64,
    ) -> Result<ImageRecord, ImageStoreError> {
        let refused = |why: String| ImageStoreError::Refused(why);
        if self.roots.is_empty() {
            return Err(refused(
                "the fleet has no vendor roots configured (images.vendor_roots); it accepts no image"
                    .into(),
            ));
        }
        let header = ImageHeader::decode(bytes).map_err(|e| refused(format!("image: {e}")))?;
        let product = header.product.as_str().to_owned();
        if !products.contains(&product) {
            return Err(refused(format!(
                "image is for product {product:?}, which the fleet does not know"
            )));
        }
        let trust = ImageTrust {
            roots: &self.roots,
            revoked: &[],
            product: header.product,
            min_security_counter: 0,
        };
        let verified = verify_image(bytes, &trust).map_err(|e| refused(format!("image: {e}")))?;
        Ok(ImageRecord {
            sha256: to_hex(&Sha256::digest(bytes)),
            product,
            version: verified.header().version.to_string(),
            size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            security_counter: i64::try_from(verified.header().security_counter).unwrap_or(i64::MAX),
            measurement: to_hex(&verified.measurement()),
            uploaded_ms: now_ms,
        })
    }

    /// Verifies an uploaded delta (`warden image delta`'s `WDL1` file): framing, the
    /// release-key chain to a vendor root, the header signature and the patch hash; its
    /// product must be one of `products`. Whether its base and result are images the
    /// fleet knows is the caller's check (the store's).
    pub fn verify_delta(
        &self,
        bytes: &[u8],
        products: &[String],
        now_ms: i64,
    ) -> Result<(DeltaRecord, DeltaHeader), ImageStoreError> {
        let refused = |why: String| ImageStoreError::Refused(why);
        if self.roots.is_empty() {
            return Err(refused(
                "the fleet has no vendor roots configured (images.vendor_roots); it accepts no delta"
                    .into(),
            ));
        }
        let header = DeltaHeader::decode(bytes).map_err(|e| refused(e.to_string()))?;
        let product = header.product.to_string();
        if !products.contains(&product) {
            return Err(refused(format!(
                "delta is for product {product:?}, which the fleet does not know"
            )));
        }
        let trust = ImageTrust {
            roots: &self.roots,
            revoked: &[],
            product: header.product,
            min_security_counter: 0,
        };
        let header = verify_delta(bytes, &trust).map_err(|e| refused(e.to_string()))?;
        Ok((
            DeltaRecord {
                sha256: to_hex(&Sha256::digest(bytes)),
                product,
                base_sha256: to_hex(&header.base_sha256),
                result_sha256: to_hex(&header.result_sha256),
                result_version: header.result_version.to_string(),
                size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
                uploaded_ms: now_ms,
            },
            header,
        ))
    }

    /// Stores `bytes` as image `sha256` (atomically: a temporary file renamed into place).
    pub async fn save(&self, sha256: &str, bytes: &[u8]) -> Result<(), ImageStoreError> {
        save_in(&self.dir, sha256, bytes).await
    }

    /// Stores `bytes` as delta `sha256`, as [`Self::save`] does an image.
    pub async fn save_delta(&self, sha256: &str, bytes: &[u8]) -> Result<(), ImageStoreError> {
        save_in(&self.dir.join(DELTA_DIR), sha256, bytes).await
    }

    /// The file of delta `sha256` (the caller checked it is 64 hex digits).
    pub fn delta_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(DELTA_DIR).join(sha256)
    }

    /// The file of image `sha256` (the caller checked it is 64 hex digits).
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Stores `bytes` as `dir/sha256`, atomically (a temporary file renamed into place).
async fn save_in(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<(), ImageStoreError> {
    let io = |e| ImageStoreError::Io(dir.to_owned(), e);
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let temporary = dir.join(format!(".{sha256}.tmp"));
    tokio::fs::write(&temporary, bytes).await.map_err(io)?;
    tokio::fs::rename(&temporary, dir.join(sha256))
        .await
        .map_err(io)
}

/// A byte range asked for with `Range: bytes=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: the whole file.
    Whole,
    /// Bytes `start..=end` of the file.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A range outside the file (416).
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `size` bytes (one range; several ranges
/// are answered with the whole file, which RFC 9110 allows).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => last
            .parse::<u64>()
            .ok()
            .map(|n| (size.saturating_sub(n), size.saturating_sub(1), n == 0)),
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|start| (start, size.saturating_sub(1), false)),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => {
                Some((start, end.min(size.saturating_sub(1)), false))
            }
            _ => return RangeRequest::Whole,
        },
        (true, true) => return RangeRequest::Whole,
    };
    match parsed {
        Some((start, end, empty)) if !empty && size > 0 && start < size => {
            RangeRequest::Part { start, end }
        }
        Some(_) => RangeRequest::Unsatisfiable,
        None => RangeRequest::Whole,
    }
}

/// Whether `text` is a SHA-256 in lowercase hex.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            RangeRequest::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100),
            RangeRequest::Part { start: 50, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=9-3"), 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeRequest::Whole);
    }

    #[test]
    fn only_lowercase_sha256_hex_names_an_image() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("../etc/passwd"));
        assert!(!is_sha256_hex(&"a".repeat(63)));
    }
}
