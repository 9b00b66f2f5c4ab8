//! Signed policy bundles: format, parsing and verification (no_std).
//!
//! ```text
//! offset  length  field
//!      0       4  magic b"WPB1"
//!      4       2  bundle format version (1), u16 LE
//!      6       2  tables format version (TABLES_FORMAT), u16 LE
//!      8      16  product id, ASCII, NUL-padded
//!     24       8  bundle version, u64 LE (anti-rollback)
//!     32       4  body length n, u32 LE
//!     36      32  SHA-256 of the body
//!     68       n  body: the compiled tables (postcard, see `tables`)
//!   68+n     147  release-key certificate (warden-keychain WKC1)
//!  215+n      64  signature (r || s) by the release key over SHA-256 of bytes 0..68,
//!                 domain "warden-policy-bundle-v1"
//! ```
//!
//! The header carries the body's hash, so signing the header signs the body. The
//! certificate is not signed by the release key: it is authenticated by the chain.

#[cfg(feature = "std")]
pub mod build;
#[cfg(feature = "std")]
pub mod store;

use core::fmt;

use sha2::{Digest, Sha256};
use warden_keychain::{ChainError, KeyId, Purpose, RootKey, SIGNATURE_LEN, domain};

use crate::tables::{BoundedTables, NamePool, TABLES_FORMAT, TableError};

/// First four bytes of every bundle.
pub const BUNDLE_MAGIC: [u8; 4] = *b"WPB1";
/// Bundle format version this build reads and writes.
pub const BUNDLE_FORMAT: u16 = 1;
/// Length of the signed header.
pub const HEADER_LEN: usize = 68;
/// Length of the release-key certificate.
pub const CERT_LEN: usize = warden_keychain::CERT_LEN;
/// Largest body a device accepts.
pub const MAX_BODY_LEN: usize = 256 * 1024;
/// Signature domain of policy bundles.
pub const BUNDLE_DOMAIN: &[u8] = domain::POLICY_BUNDLE;

/// A product identifier: up to 16 ASCII bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductId(pub [u8; 16]);

impl ProductId {
    /// From a name of at most 16 printable ASCII bytes.
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > 16 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut id = [0u8; 16];
        id[..bytes.len()].copy_from_slice(bytes);
        Some(ProductId(id))
    }

    /// The name ("" if not ASCII).
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(16);
        core::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

impl fmt::Debug for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProductId({:?})", self.as_str())
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signed header of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleHeader {
    /// Bundle format version.
    pub format: u16,
    /// Tables format version of the body.
    pub tables_format: u16,
    /// Product the bundle is for.
    pub product: ProductId,
    /// Bundle version; a device never applies a lower one.
    pub version: u64,
    /// Body length.
    pub body_len: u32,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
}

impl BundleHeader {
    /// The 68 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&BUNDLE_MAGIC);
        out[4..6].copy_from_slice(&self.format.to_le_bytes());
        out[6..8].copy_from_slice(&self.tables_format.to_le_bytes());
        out[8..24].copy_from_slice(&self.product.0);
        out[24..32].copy_from_slice(&self.version.to_le_bytes());
        out[32..36].copy_from_slice(&self.body_len.to_le_bytes());
        out[36..68].copy_from_slice(&self.body_sha256);
        out
    }

    /// SHA-256 of the encoded header: what the release key signs.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// Why a bundle was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// Shorter than its header and lengths say.
    Truncated,
    /// Longer than its header and lengths say.
    TrailingBytes,
    /// Does not start with `WPB1`.
    BadMagic,
    /// A bundle format this build does not read.
    UnsupportedFormat,
    /// Tables in a format this build does not read.
    UnsupportedTablesFormat,
    /// Body longer than [`MAX_BODY_LEN`].
    TooLarge,
    /// For another product.
    WrongProduct,
    /// Older than the last applied bundle (anti-rollback).
    Rollback,
    /// The version equals the applied one but the content differs.
    VersionReused,
    /// The body does not hash to the header's digest.
    BodyHashMismatch,
    /// The release-key certificate does not chain to an installed root for policy.
    Certificate(ChainError),
    /// The release key's signature over the header does not verify.
    SignatureInvalid,
    /// The body does not decode as policy tables.
    Tables(TableError),
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Truncated => f.write_str("policy bundle is truncated"),
            BundleError::TrailingBytes => f.write_str("bytes follow the policy bundle's signature"),
            BundleError::BadMagic => f.write_str("not a policy bundle (magic is not WPB1)"),
            BundleError::UnsupportedFormat => {
                f.write_str("policy bundle format version is not supported")
            }
            BundleError::UnsupportedTablesFormat => {
                f.write_str("policy bundle tables format version is not supported")
            }
            BundleError::TooLarge => {
                f.write_str("policy bundle body is larger than a device accepts")
            }
            BundleError::WrongProduct => f.write_str("policy bundle is for another product"),
            BundleError::Rollback => f.write_str(
                "policy bundle version is lower than the applied one (rollback refused)",
            ),
            BundleError::VersionReused => {
                f.write_str("policy bundle reuses the applied version with different content")
            }
            BundleError::BodyHashMismatch => {
                f.write_str("policy bundle body does not match its hash")
            }
            BundleError::Certificate(e) => {
                write!(f, "policy bundle release-key certificate rejected: {e}")
            }
            BundleError::SignatureInvalid => f.write_str("policy bundle signature does not verify"),
            BundleError::Tables(e) => write!(f, "policy bundle body: {e}"),
        }
    }
}

impl core::error::Error for BundleError {}

/// A bundle split into its parts; nothing verified yet except framing.
#[derive(Clone, Copy, Debug)]
pub struct BundleParts<'a> {
    /// The header.
    pub header: BundleHeader,
    /// The compiled tables.
    pub body: &'a [u8],
    /// The release-key certificate.
    pub cert: &'a [u8],
    /// The signature.
    pub signature: &'a [u8; SIGNATURE_LEN],
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], BundleError> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(BundleError::Truncated)
}

/// Splits `bytes` into header, body, certificate and signature (framing checks only).
pub fn parse_bundle(bytes: &[u8]) -> Result<BundleParts<'_>, BundleError> {
    if bytes.len() < HEADER_LEN {
        return Err(BundleError::Truncated);
    }
    if array::<4>(bytes, 0)? != BUNDLE_MAGIC {
        return Err(BundleError::BadMagic);
    }
    let format = u16::from_le_bytes(array(bytes, 4)?);
    if format != BUNDLE_FORMAT {
        return Err(BundleError::UnsupportedFormat);
    }
    let tables_format = u16::from_le_bytes(array(bytes, 6)?);
    if tables_format != TABLES_FORMAT {
        return Err(BundleError::UnsupportedTablesFormat);
    }
    let header = BundleHeader {
        format,
        tables_format,
        product: ProductId(array(bytes, 8)?),
        version: u64::from_le_bytes(array(bytes, 24)?),
        body_len: u32::from_le_bytes(array(bytes, 32)?),
        body_sha256: array(bytes, 36)?,
    };
    let body_len = header.body_len as usize;
    if body_len > MAX_BODY_LEN {
        return Err(BundleError::TooLarge);
    }
    let total = HEADER_LEN + body_len + CERT_LEN + SIGNATURE_LEN;
    if bytes.len() < total {
        return Err(BundleError::Truncated);
    }
    if bytes.len() > total {
        return Err(BundleError::TrailingBytes);
    }
    let body = &bytes[HEADER_LEN..HEADER_LEN + body_len];
    let cert = &bytes[HEADER_LEN + body_len..HEADER_LEN + body_len + CERT_LEN];
    let signature = <&[u8; SIGNATURE_LEN]>::try_from(&bytes[total - SIGNATURE_LEN..])
        .map_err(|_| BundleError::Truncated)?;
    Ok(BundleParts {
        header,
        body,
        cert,
        signature,
    })
}

/// What a device trusts when it verifies a bundle.
#[derive(Clone, Copy, Debug)]
pub struct BundleTrust<'k> {
    /// Installed vendor roots.
    pub roots: &'k [RootKey],
    /// Revoked release keys and roots.
    pub revoked: &'k [KeyId],
    /// This device's product.
    pub product: ProductId,
    /// The applied bundle's version (or the anti-rollback counter): lower is refused.
    pub min_version: u64,
}

/// A bundle whose header, certificate chain, signature and body hash verified.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedBundle<'a> {
    /// The header.
    pub header: BundleHeader,
    /// The compiled tables, not yet decoded.
    pub body: &'a [u8],
    /// The release key that signed it.
    pub signer: KeyId,
}

/// Verifies a bundle: framing, product, anti-rollback, body hash, certificate chain
/// for [`Purpose::POLICY`], then the signature. Cheap checks come first.
pub fn verify_bundle<'a>(
    bytes: &'a [u8],
    trust: &BundleTrust<'_>,
) -> Result<VerifiedBundle<'a>, BundleError> {
    let parts = parse_bundle(bytes)?;
    if parts.header.product != trust.product {
        return Err(BundleError::WrongProduct);
    }
    if parts.header.version < trust.min_version {
        return Err(BundleError::Rollback);
    }
    let body_hash: [u8; 32] = Sha256::digest(parts.body).into();
    if body_hash != parts.header.body_sha256 {
        return Err(BundleError::BodyHashMismatch);
    }
    let release_key = warden_keychain::verify_release_key(
        parts.cert,
        trust.roots,
        trust.revoked,
        Purpose::POLICY,
    )
    .map_err(BundleError::Certificate)?;
    release_key
        .verify(BUNDLE_DOMAIN, &parts.header.digest(), parts.signature)
        .map_err(|_| BundleError::SignatureInvalid)?;
    Ok(VerifiedBundle {
        header: parts.header,
        body: parts.body,
        signer: release_key.key_id(),
    })
}

/// Verifies `bytes` and decodes its tables into `tables` (device path), at the
/// capacities of `tables`.
///
/// Nothing is decoded unless every check passed, so a forged or rolled-back bundle
/// leaves `tables` as they were. A correctly signed body that fails to decode (it
/// was validated by the signing tool, so this means a tooling bug) leaves `tables`
/// empty, which denies everything; the caller then reloads its last good bundle.
/// Decoding in place keeps one table set in memory, not two.
pub fn load_bundle<
    'a,
    Names: NamePool<'a>,
    const BRIDGES: usize,
    const COMPARTMENTS: usize,
    const RULES: usize,
    const VALUES: usize,
    const GROUPS: usize,
    const SEGMENTS: usize,
    const UNIT_LIMITS: usize,
    const BLE_RULES: usize,
    const CONNECT_RULES: usize,
    const LISTEN_RULES: usize,
>(
    bytes: &'a [u8],
    trust: &BundleTrust<'_>,
    tables: &mut BoundedTables<
        Names,
        BRIDGES,
        COMPARTMENTS,
        RULES,
        VALUES,
        GROUPS,
        SEGMENTS,
        UNIT_LIMITS,
        BLE_RULES,
        CONNECT_RULES,
        LISTEN_RULES,
    >,
) -> Result<BundleHeader, BundleError> {
    let verified = verify_bundle(bytes, trust)?;
    tables
        .decode_from(verified.body)
        .map_err(BundleError::Tables)?;
    Ok(verified.header)
}

/// Decodes a bundle without verifying it (for tooling that prints bundles, and for
/// fuzzing): framing and tables only.
pub fn decode_unverified<
    'a,
    Names: NamePool<'a>,
    const BRIDGES: usize,
    const COMPARTMENTS: usize,
    const RULES: usize,
    const VALUES: usize,
    const GROUPS: usize,
    const SEGMENTS: usize,
    const UNIT_LIMITS: usize,
    const BLE_RULES: usize,
    const CONNECT_RULES: usize,
    const LISTEN_RULES: usize,
>(
    bytes: &'a [u8],
    tables: &mut BoundedTables<
        Names,
        BRIDGES,
        COMPARTMENTS,
        RULES,
        VALUES,
        GROUPS,
        SEGMENTS,
        UNIT_LIMITS,
        BLE_RULES,
        CONNECT_RULES,
        LISTEN_RULES,
    >,
) -> Result<BundleHeader, BundleError> {
    let parts = parse_bundle(bytes)?;
    tables
        .decode_from(parts.body)
        .map_err(BundleError::Tables)?;
    Ok(parts.header)
}
