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
//!
//! The file lives on a disk anyone with the unit in hand can write, so deleting it, or
//! putting back an older list, must not un-revoke a key. The root of trust keeps a
//! floor (pluton's `RevocationListFloor`): whoever may raise it (the boot stage, the
//! single-process appliance) raises it to the held list's sequence each time that list
//! verifies, and a held list below the floor, or none when the floor is above 0, refuses
//! every image until a list at or above the floor is installed again.

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
    /// The held list is missing or older than the root of trust's floor: it was deleted
    /// or rolled back on disk.
    #[error(
        "the revocation list held in {file} ({held}) is below the root of trust's revocation list floor {floor}: it was deleted or replaced by an older one; every image is refused until a list with sequence {floor} or above is installed",
        file = REVOCATION_LIST_FILE,
        held = match .held { Some(sequence) => format!("sequence {sequence}"), None => "none".to_owned() }
    )]
    BelowFloor {
        /// The held list's sequence, if there is one.
        held: Option<u64>,
        /// The floor.
        floor: u64,
    },
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
/// `revoked`, the root of trust's own list) and at or above `floor` (the root of trust's
/// revocation list floor).
pub fn held_revocations<F: SlotFileSystem>(
    fs: &F,
    roots: &[RootKey],
    revoked: &[KeyId],
    floor: u64,
) -> Result<HeldRevocations, RevocationStoreError> {
    let Some(bytes) = read_held(fs)? else {
        if floor > 0 {
            return Err(RevocationStoreError::BelowFloor { held: None, floor });
        }
        return Ok(HeldRevocations::default());
    };
    let list = RevocationList::verify(&bytes, roots, revoked)
        .map_err(RevocationStoreError::HeldListInvalid)?;
    if list.sequence() < floor {
        return Err(RevocationStoreError::BelowFloor {
            held: Some(list.sequence()),
            floor,
        });
    }
    Ok(HeldRevocations {
        sequence: Some(list.sequence()),
        revoked: list.revoked().collect(),
    })
}

/// Every revoked key: the root of trust's and the held list's. The held list's sequence
/// is anchored in the root of trust's floor on the way, where the root of trust may
/// raise it (see the module docs).
pub fn revoked_keys<F: SlotFileSystem, R: BootRootOfTrust>(
    fs: &F,
    root_of_trust: &mut R,
    roots: &[RootKey],
) -> Result<Vec<KeyId>, RevocationStoreError> {
    let mut revoked = root_of_trust.revoked_keys()?;
    let floor = root_of_trust.read_revocation_floor()?;
    let held = held_revocations(fs, roots, &revoked, floor)?;
    if let Some(sequence) = held.sequence {
        anchor(root_of_trust, sequence, floor);
    }
    revoked.extend(held.revoked);
    Ok(revoked)
}

/// Raises the root of trust's floor to a held list's `sequence` that verified, if it
/// is above `floor` and this root of trust may (a compartment may not: the boot stage
/// does it at the next boot).
pub(crate) fn anchor<R: BootRootOfTrust>(root_of_trust: &mut R, sequence: u64, floor: u64) {
    if sequence <= floor {
        return;
    }
    match root_of_trust.raise_revocation_floor(sequence) {
        Ok(raised) => tracing::info!(floor = raised, "revocation list floor raised"),
        Err(error) => tracing::debug!(
            %error,
            sequence,
            "revocation list floor not raised here; the boot stage raises it"
        ),
    }
}
