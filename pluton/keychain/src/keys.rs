//! Root keys, release keys, key IDs and signing purposes: what a chain is made of.

use core::fmt;

use crate::error::ChainError;
use core::ops::BitOr;

use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Length of an uncompressed SEC1 P-256 public key: `0x04 || X (32) || Y (32)`.
pub const PUBLIC_KEY_LEN: usize = 65;

/// Length of a fixed-size ECDSA P-256 signature: `r (32) || s (32)`, big-endian.
pub const SIGNATURE_LEN: usize = 64;

/// Longest domain-separation label accepted by [`VerifiedReleaseKey::verify`].
pub const MAX_DOMAIN_LEN: usize = 64;

/// Prefix of every message a release key signs (see the README's "release signatures").
pub const RELEASE_SIGNING_PREFIX: &[u8] = b"warden-release-sig-v1\0";

/// An uncompressed SEC1 P-256 public key.
pub type PublicKeyBytes = [u8; PUBLIC_KEY_LEN];

/// Domain-separation labels for the things release keys sign.
///
/// The label is part of the signed message, so a signature made for one domain never
/// verifies in another (an image signature cannot be replayed as a policy-bundle signature).
pub mod domain {
    /// Firmware images (owned by `warden-os`'s image format).
    pub const IMAGE: &[u8] = b"warden-image-v1";
    /// Policy bundles (owned by `warden-policy`'s bundle format).
    pub const POLICY_BUNDLE: &[u8] = b"warden-policy-bundle-v1";
    /// Delta images (owned by `warden-os`'s delta format, `os/src/delta`).
    pub const IMAGE_DELTA: &[u8] = b"warden-image-delta-v1";
}

/// Identifier of a public key: the first 8 bytes of SHA-256 of its uncompressed SEC1 form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The identifier of an uncompressed SEC1 public key.
    pub fn of_public_key(public_key: &PublicKeyBytes) -> Self {
        let digest = Sha256::digest(public_key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    /// The identifier's bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What a release key (or a root) may sign: a bitmask of uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Purpose(u8);

impl Purpose {
    /// Firmware images.
    pub const IMAGE: Self = Self(1);
    /// Policy bundles.
    pub const POLICY: Self = Self(2);
    /// Every purpose format version 1 defines.
    pub const ALL: Self = Self(3);

    /// The purpose for a bitmask, or `None` if it is empty or has undefined bits.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits == 0 || bits & !Self::ALL.0 != 0 {
            None
        } else {
            Some(Self(bits))
        }
    }

    /// The bitmask.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every use in `other` is also in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Purpose {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_set();
        if self.contains(Self::IMAGE) {
            list.entry(&"image");
        }
        if self.contains(Self::POLICY) {
            list.entry(&"policy");
        }
        list.finish()
    }
}

/// Parse an uncompressed SEC1 P-256 public key; compressed and identity encodings are refused.
pub(crate) fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, ChainError> {
    if bytes.len() != PUBLIC_KEY_LEN || bytes[0] != 0x04 {
        return Err(ChainError::InvalidPublicKey);
    }
    VerifyingKey::from_sec1_bytes(bytes).map_err(|_| ChainError::InvalidPublicKey)
}

/// A vendor root public key installed at provisioning, trusted to issue release keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootKey {
    key: VerifyingKey,
    public_key: PublicKeyBytes,
    id: KeyId,
    purposes: Purpose,
}

impl RootKey {
    /// A root from its uncompressed SEC1 public key, allowed for every purpose.
    pub fn from_public_key(public_key: &[u8]) -> Result<Self, ChainError> {
        let key = parse_public_key(public_key)?;
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(public_key);
        Ok(Self {
            key,
            public_key: bytes,
            id: KeyId::of_public_key(&bytes),
            purposes: Purpose::ALL,
        })
    }

    /// The same root, restricted to certifying release keys for `purposes` only.
    pub fn with_purposes(mut self, purposes: Purpose) -> Self {
        self.purposes = purposes;
        self
    }

    /// The root's key identifier (what certificates name as their issuer).
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// What this root may certify.
    pub fn purposes(&self) -> Purpose {
        self.purposes
    }

    /// The uncompressed SEC1 public key.
    pub fn public_key(&self) -> &PublicKeyBytes {
        &self.public_key
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("id", &self.id)
            .field("purposes", &self.purposes)
            .finish()
    }
}

/// A release key whose certificate verified against an installed root, for one purpose.
///
/// Only [`verify_release_key`] constructs it, so holding one means the chain checked out.
#[derive(Clone, Copy)]
pub struct VerifiedReleaseKey {
    pub(crate) key: VerifyingKey,
    pub(crate) id: KeyId,
    pub(crate) issuer: KeyId,
    pub(crate) serial: u32,
    pub(crate) purposes: Purpose,
}

impl VerifiedReleaseKey {
    /// The release key's identifier (what revocation lists name).
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The identifier of the root that issued the certificate.
    pub fn issuer(&self) -> KeyId {
        self.issuer
    }

    /// The certificate's serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Every purpose the certificate grants (a superset of the one that was checked).
    pub fn purposes(&self) -> Purpose {
        self.purposes
    }

    /// Verify `signature` (`r || s`) over `message_digest` (the SHA-256 of the signed
    /// object) in the domain `domain` (for example [`domain::IMAGE`]).
    ///
    /// The signed message is `RELEASE_SIGNING_PREFIX || len(domain) as u8 || domain ||
    /// message_digest`, with ECDSA P-256 over SHA-256 of that message.
    pub fn verify(
        &self,
        domain: &[u8],
        message_digest: &[u8; 32],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), ChainError> {
        let domain_len = domain_len_byte(domain)?;
        let signature =
            Signature::from_bytes(signature.into()).map_err(|_| ChainError::SignatureInvalid)?;
        self.key
            .multipart_verify(
                &[
                    RELEASE_SIGNING_PREFIX,
                    &[domain_len],
                    domain,
                    message_digest,
                ],
                &signature,
            )
            .map_err(|_| ChainError::SignatureInvalid)
    }
}

impl fmt::Debug for VerifiedReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedReleaseKey")
            .field("key_id", &self.id)
            .field("issuer", &self.issuer)
            .field("serial", &self.serial)
            .field("purposes", &self.purposes)
            .finish()
    }
}

/// The domain label's length as the single byte that precedes it in a signed message.
pub(crate) fn domain_len_byte(domain: &[u8]) -> Result<u8, ChainError> {
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN {
        return Err(ChainError::BadDomain);
    }
    u8::try_from(domain.len()).map_err(|_| ChainError::BadDomain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_rejects_empty_and_undefined_bits() {
        assert_eq!(Purpose::from_bits(0), None);
        assert_eq!(Purpose::from_bits(4), None);
        assert_eq!(Purpose::from_bits(0x83), None);
        assert_eq!(
            Purpose::from_bits(3),
            Some(Purpose::IMAGE | Purpose::POLICY)
        );
        assert!(Purpose::ALL.contains(Purpose::IMAGE));
        assert!(!Purpose::IMAGE.contains(Purpose::POLICY));
        assert!(!Purpose::IMAGE.contains(Purpose::ALL));
    }

    #[test]
    fn key_id_is_sha256_prefix() {
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key[0] = 4;
        let digest = Sha256::digest(key);
        assert_eq!(KeyId::of_public_key(&key).0, digest[..8]);
        assert_eq!(
            format!("{}", KeyId([0xab, 1, 2, 3, 4, 5, 6, 0xff])),
            "ab010203040506ff"
        );
    }

    #[test]
    fn compressed_and_garbage_public_keys_are_refused() {
        let key = crate::tooling::SecretSigningKey::generate().expect("rng");
        let public = key.public_key();
        assert!(RootKey::from_public_key(&public).is_ok());
        let mut compressed = [0u8; 33];
        compressed[0] = 2 + (public[64] & 1);
        compressed[1..].copy_from_slice(&public[1..33]);
        assert_eq!(
            RootKey::from_public_key(&compressed),
            Err(ChainError::InvalidPublicKey)
        );
        let mut off_curve = public;
        off_curve[64] ^= 1;
        assert_eq!(
            RootKey::from_public_key(&off_curve),
            Err(ChainError::InvalidPublicKey)
        );
        assert_eq!(
            RootKey::from_public_key(&[0u8; 65]),
            Err(ChainError::InvalidPublicKey)
        );
    }

    #[test]
    fn domain_label_limits() {
        assert_eq!(domain_len_byte(b""), Err(ChainError::BadDomain));
        assert_eq!(
            domain_len_byte(&[b'x'; MAX_DOMAIN_LEN + 1]),
            Err(ChainError::BadDomain)
        );
        assert_eq!(domain_len_byte(domain::IMAGE), Ok(15));
    }
}
