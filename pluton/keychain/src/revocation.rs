//! The release-key revocation list (`WRL1`): key IDs a vendor root withdraws.
//!
//! A vendor root signs a list of [`KeyId`]s (release keys or roots) with a sequence
//! number. A device keeps the newest list that verifies against its installed roots
//! and passes its IDs as `revoked` to [`crate::verify_release_key`], so an image or
//! bundle signed by a listed key is refused. A list never shrinks by replay: a device
//! takes a list only when its sequence is above the one it holds
//! ([`RevocationList::supersedes`]).

use p256::ecdsa::Signature;
use p256::ecdsa::signature::MultipartVerifier;

use crate::keys::{KeyId, RootKey, SIGNATURE_LEN};

/// First four bytes of every revocation list.
pub const LIST_MAGIC: [u8; 4] = *b"WRL1";

/// The list format version this build writes and reads.
pub const LIST_VERSION: u8 = 1;

/// Prefix prepended to the list body before the root signs it (a list signature is
/// never valid as any other Warden signature).
pub const LIST_SIGNING_PREFIX: &[u8] = b"warden-revocation-list-v1\0";

/// Most key IDs one list may name.
pub const MAX_REVOKED: usize = 256;

/// magic, version, sequence (u64), issuer (`KeyId`), count (u16).
const HEADER_LEN: usize = 4 + 1 + 8 + 8 + 2;
const SEQUENCE_AT: usize = 5;
const ISSUER_AT: usize = SEQUENCE_AT + 8;
const COUNT_AT: usize = ISSUER_AT + 8;
const ID_LEN: usize = 8;

/// Length of a list naming `count` keys.
pub const fn list_len(count: usize) -> usize {
    HEADER_LEN + count * ID_LEN + SIGNATURE_LEN
}

/// Why a revocation list is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RevocationError {
    /// It does not start with the `WRL1` magic.
    BadMagic,
    /// Its format version is not one this build reads.
    UnsupportedVersion,
    /// Its length is not the one its count of keys gives.
    BadLength,
    /// It names more than [`MAX_REVOKED`] keys.
    TooManyKeys,
    /// Its signer is not an installed root key.
    UnknownRoot,
    /// Its signer is itself revoked by the list the device holds.
    SignerRevoked,
    /// The root's signature over it does not verify.
    SignatureInvalid,
}

impl core::fmt::Display for RevocationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadMagic => "revocation list does not start with the WRL1 magic",
            Self::UnsupportedVersion => "revocation list format version is not supported",
            Self::BadLength => "revocation list length does not match its count of keys",
            Self::TooManyKeys => "revocation list names more keys than a list may hold",
            Self::UnknownRoot => "revocation list is not signed by an installed root key",
            Self::SignerRevoked => "revocation list is signed by a revoked root key",
            Self::SignatureInvalid => "root signature over the revocation list is invalid",
        })
    }
}

impl core::error::Error for RevocationError {}

/// A revocation list whose framing was checked and whose signature verified.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RevocationList<'a> {
    sequence: u64,
    issuer: KeyId,
    ids: &'a [u8],
}

impl core::fmt::Debug for RevocationList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RevocationList")
            .field("sequence", &self.sequence)
            .field("issuer", &self.issuer)
            .field("revoked", &self.len())
            .finish()
    }
}

impl<'a> RevocationList<'a> {
    /// Verifies `bytes` against the installed `roots`: framing, the signer among
    /// `roots` and not in `revoked` (the list the device holds), then its signature.
    pub fn verify(
        bytes: &'a [u8],
        roots: &[RootKey],
        revoked: &[KeyId],
    ) -> Result<Self, RevocationError> {
        let (list, body_len) = Self::decode(bytes)?;
        let root = roots
            .iter()
            .find(|root| root.id() == list.issuer)
            .ok_or(RevocationError::UnknownRoot)?;
        if revoked.contains(&list.issuer) {
            return Err(RevocationError::SignerRevoked);
        }
        let signature = Signature::from_slice(&bytes[body_len..])
            .map_err(|_| RevocationError::SignatureInvalid)?;
        root.verifying_key()
            .multipart_verify(&[LIST_SIGNING_PREFIX, &bytes[..body_len]], &signature)
            .map_err(|_| RevocationError::SignatureInvalid)?;
        Ok(list)
    }

    /// Checks the framing only; returns the list and the length of its signed body.
    fn decode(bytes: &'a [u8]) -> Result<(Self, usize), RevocationError> {
        let magic_len = bytes.len().min(LIST_MAGIC.len());
        if bytes[..magic_len] != LIST_MAGIC[..magic_len] {
            return Err(RevocationError::BadMagic);
        }
        match bytes.get(4) {
            None => return Err(RevocationError::BadLength),
            Some(&LIST_VERSION) => {}
            Some(_) => return Err(RevocationError::UnsupportedVersion),
        }
        if bytes.len() < HEADER_LEN {
            return Err(RevocationError::BadLength);
        }
        let count = usize::from(u16::from_le_bytes([bytes[COUNT_AT], bytes[COUNT_AT + 1]]));
        if count > MAX_REVOKED {
            return Err(RevocationError::TooManyKeys);
        }
        if bytes.len() != list_len(count) {
            return Err(RevocationError::BadLength);
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&bytes[SEQUENCE_AT..ISSUER_AT]);
        let mut issuer = [0u8; 8];
        issuer.copy_from_slice(&bytes[ISSUER_AT..COUNT_AT]);
        let body_len = HEADER_LEN + count * ID_LEN;
        Ok((
            Self {
                sequence: u64::from_le_bytes(sequence),
                issuer: KeyId(issuer),
                ids: &bytes[HEADER_LEN..body_len],
            },
            body_len,
        ))
    }

    /// The list's sequence number (a newer list has a higher one).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The root that signed it.
    pub fn issuer(&self) -> KeyId {
        self.issuer
    }

    /// How many keys it revokes.
    pub fn len(&self) -> usize {
        self.ids.len() / ID_LEN
    }

    /// Whether it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The revoked key IDs, in the list's order.
    pub fn revoked(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.ids.chunks_exact(ID_LEN).map(|chunk| {
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(chunk);
            KeyId(id)
        })
    }

    /// Whether it revokes `key`.
    pub fn revokes(&self, key: KeyId) -> bool {
        self.revoked().any(|id| id == key)
    }

    /// Whether a device holding `held` (if any) should take this list: only a higher
    /// sequence replaces the one held, so an old list cannot be replayed to un-revoke.
    pub fn supersedes(&self, held: Option<&RevocationList<'_>>) -> bool {
        held.is_none_or(|held| self.sequence > held.sequence)
    }
}
