//! Installing a revocation list on the unit ([`crate::revocations`] holds the list's
//! rules; this is the boot monitor's side: where it is kept, atomically).

use std::path::Path;

use warden_keychain::RevocationList;

use crate::BootMonitor;
use crate::boot::BOOT_DIR;
use crate::file_system::SlotFileSystem;
use crate::revocations::{
    HeldRevocations, REVOCATION_LIST_FILE, REVOCATION_LIST_TEMP, RevocationInstall,
    RevocationStoreError, anchor, held_revocations, io_error, read_held,
};
use crate::root_of_trust::BootRootOfTrust;

impl<F: SlotFileSystem, R: BootRootOfTrust> BootMonitor<F, R> {
    /// The revocation list the unit holds (for the status page and `warden status`).
    pub fn held_revocations(&mut self) -> Result<HeldRevocations, RevocationStoreError> {
        let roots = self.root_of_trust().vendor_roots()?;
        let revoked = self.root_of_trust().revoked_keys()?;
        let floor = self.root_of_trust().read_revocation_floor()?;
        held_revocations(self.file_system(), &roots, &revoked, floor)
    }

    /// Installs `bytes` as the held revocation list if a vendor root signed it and its
    /// sequence is above the held one's: temp file, fsync, rename, fsync the directory.
    /// From then on images signed by a key it names are refused.
    pub fn install_revocation_list(
        &mut self,
        bytes: &[u8],
    ) -> Result<RevocationInstall, RevocationStoreError> {
        let roots = self.root_of_trust().vendor_roots()?;
        let own = self.root_of_trust().revoked_keys()?;
        let held_bytes = read_held(self.file_system())?;
        // A held list that no longer verifies is replaced by any valid one: refusing
        // that would leave the unit refusing every image for good.
        let held = held_bytes
            .as_deref()
            .and_then(|held| RevocationList::verify(held, &roots, &own).ok());
        let mut revoked = own.clone();
        if let Some(held) = &held {
            revoked.extend(held.revoked());
        }
        let offered = RevocationList::verify(bytes, &roots, &revoked)
            .map_err(RevocationStoreError::Refused)?;
        // Below the floor: an older list than this unit already held (the held file
        // may have been deleted); at the floor: the same list put back.
        let floor = self.root_of_trust().read_revocation_floor()?;
        if offered.sequence() < floor {
            return Err(RevocationStoreError::NotNewer {
                offered: offered.sequence(),
                held: floor,
            });
        }
        if held_bytes.as_deref() == Some(bytes) {
            return Ok(RevocationInstall::AlreadyHeld {
                sequence: offered.sequence(),
            });
        }
        if let Some(held) = &held
            && !offered.supersedes(Some(held))
        {
            return Err(RevocationStoreError::NotNewer {
                offered: offered.sequence(),
                held: held.sequence(),
            });
        }
        let fs = self.file_system();
        let temp = Path::new(REVOCATION_LIST_TEMP);
        fs.create_dir_all(Path::new(BOOT_DIR))
            .map_err(io_error(BOOT_DIR))?;
        fs.create(temp).map_err(io_error(REVOCATION_LIST_TEMP))?;
        fs.append(temp, bytes)
            .map_err(io_error(REVOCATION_LIST_TEMP))?;
        fs.sync_file(temp).map_err(io_error(REVOCATION_LIST_TEMP))?;
        fs.rename(temp, Path::new(REVOCATION_LIST_FILE))
            .map_err(io_error(REVOCATION_LIST_FILE))?;
        fs.sync_dir(Path::new(BOOT_DIR))
            .map_err(io_error(BOOT_DIR))?;
        tracing::info!(
            sequence = offered.sequence(),
            revoked = offered.len(),
            "revocation list installed"
        );
        // File first, floor second: a crash in between leaves the floor below the held
        // list (raised at the next verification), never above it.
        anchor(self.root_of_trust(), offered.sequence(), floor);
        Ok(RevocationInstall::Installed {
            sequence: offered.sequence(),
            revoked: offered.len(),
        })
    }
}
