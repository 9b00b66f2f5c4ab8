//! The revocation list the unit holds: installed, kept and applied to every image.
//!
//! A list (`warden_keychain::RevocationList`, `WRL1`) signed by a vendor root names
//! release keys (or roots) that must no longer be trusted. The monitor keeps the newest
//! one that verified in its state directory ([`REVOCATION_LIST_FILE`], written atomically)
//! and adds its IDs to the root of trust's own (`BootRootOfTrust::revoked_keys`) every
//! time it verifies an image: at boot, at install, and for a staged offline file.
//!
//! The file is verified again against the vendor roots each time it is read, so an
//! altered list is never applied; one that does not verify any more refuses every image
//! (deny by default) with an error naming the file, until a valid list is installed.

use std::path::Path;

use warden_image::{KeyId, RootKey};
use warden_keychain::{RevocationError, RevocationList};

use crate::file_system::SlotFileSystem;
use crate::root_of_trust::BootRootOfTrust;

/// The held list, relative to the state directory.
pub const REVOCATION_LIST_FILE: &str = "boot/revocations.wrl";
pub(crate) const REVOCATION_LIST_TEMP: &str = "boot/revocations.wrl.tmp";

/// Why a revocation list was not installed, or the held one cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationStoreError {
    /// Reading or writing the list failed.
    #[error("revocation list {path}: {source}")]
    Io {
        /// The file, relative to the state directory.
        path: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The held list does not verify against the vendor roots any more.
    #[error(
        "the revocation list held in {file} does not verify ({0}); every image is refused until a valid list is installed",
        file = REVOCATION_LIST_FILE
    )]
    HeldListInvalid(RevocationError),
    /// The offered list does not verify.
    #[error("revocation list refused: {0}")]
    Refused(RevocationError),
    /// The offered list is not newer than the one held.
    #[error(
        "revocation list refused: its sequence {offered} is not above the sequence {held} of the list this unit holds"
    )]
    NotNewer {
        /// The offered list's sequence.
        offered: u64,
        /// The held list's sequence.
        held: u64,
    },
    /// The root of trust could not give its roots or revocations.
    #[error(transparent)]
    RootOfTrust(#[from] crate::root_of_trust::RootOfTrustError),
}

/// What the unit holds: the list's sequence and the keys it revokes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeldRevocations {
    /// The held list's sequence; `None` when no list was ever installed.
    pub sequence: Option<u64>,
    /// The keys it revokes.
    pub revoked: Vec<KeyId>,
}

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationInstall {
    /// The list is now held (replacing an older one, or none).
    Installed {
        /// Its sequence.
        sequence: u64,
        /// How many keys it revokes.
        revoked: usize,
    },
    /// The very same list was already held: nothing was written.
    AlreadyHeld {
        /// Its sequence.
        sequence: u64,
    },
}

pub(crate) fn io_error(path: &'static str) -> impl FnOnce(std::io::Error) -> RevocationStoreError {
    move |source| RevocationStoreError::Io { path, source }
}

pub(crate) fn read_held<F: SlotFileSystem>(
    fs: &F,
) -> Result<Option<Vec<u8>>, RevocationStoreError> {
    let path = Path::new(REVOCATION_LIST_FILE);
    if !fs.exists(path) {
        return Ok(None);
    }
    fs.read(path)
        .map(Some)
        .map_err(io_error(REVOCATION_LIST_FILE))
}

/// The list held on `fs`, verified against `roots` (its signer must not be revoked by
/// `revoked`, the root of trust's own list).
pub fn held_revocations<F: SlotFileSystem>(
    fs: &F,
    roots: &[RootKey],
    revoked: &[KeyId],
) -> Result<HeldRevocations, RevocationStoreError> {
    let Some(bytes) = read_held(fs)? else {
        return Ok(HeldRevocations::default());
    };
    let list = RevocationList::verify(&bytes, roots, revoked)
        .map_err(RevocationStoreError::HeldListInvalid)?;
    Ok(HeldRevocations {
        sequence: Some(list.sequence()),
        revoked: list.revoked().collect(),
    })
}

/// Every revoked key: the root of trust's and the held list's.
pub fn revoked_keys<F: SlotFileSystem, R: BootRootOfTrust>(
    fs: &F,
    root_of_trust: &mut R,
    roots: &[RootKey],
) -> Result<Vec<KeyId>, RevocationStoreError> {
    let mut revoked = root_of_trust.revoked_keys()?;
    let held = held_revocations(fs, roots, &revoked)?;
    revoked.extend(held.revoked);
    Ok(revoked)
}
