//! The file-backed state store: one file, replaced by fsync + atomic rename.
//!
//! A save writes `pluton.state.tmp` (mode 0600), fsyncs it, renames it over
//! `pluton.state`, then fsyncs the directory. A kill at any instant leaves either the old
//! or the new complete file (rename is atomic), and the record's own checksum catches
//! anything else. A leftover temporary file is ignored and removed at open.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::PlutonError;
use crate::store::StateStore;

/// Name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "pluton.state";

/// A file operation failed; names the file (the tree's one file error).
pub use warden_files::FileError as FileStoreError;
use warden_files::remove_leftover_temporary;
pub use warden_files::{create_private_directory, write_file_atomically};

/// The state store in a directory (`<dir>/pluton.state`).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// Open (creating the directory with mode 0700 if needed) and drop any leftover
    /// temporary file from an interrupted save.
    pub fn open(directory: &Path) -> Result<Self, FileStoreError> {
        create_private_directory(directory)?;
        let path = directory.join(STATE_FILE_NAME);
        remove_leftover_temporary(&path)?;
        Ok(Self { path })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore for FileStore {
    fn load(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, PlutonError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot open pluton state");
                return Err(PlutonError::StoreFailed);
            }
        };
        let mut length = 0;
        loop {
            if length == buffer.len() {
                // Full buffer: valid only if the file ends here.
                let mut probe = [0u8; 1];
                return match file.read(&mut probe) {
                    Ok(0) => Ok(Some(length)),
                    _ => Err(PlutonError::StoreCorrupt),
                };
            }
            match file.read(&mut buffer[length..]) {
                Ok(0) => return Ok(Some(length)),
                Ok(read) => length += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::error!(path = %self.path.display(), %error, "cannot read pluton state");
                    return Err(PlutonError::StoreFailed);
                }
            }
        }
    }

    fn save(&mut self, record: &[u8]) -> Result<(), PlutonError> {
        write_file_atomically(&self.path, record).map_err(|error| {
            tracing::error!(%error, "cannot save pluton state");
            PlutonError::StoreFailed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_and_permissions() {
        let directory = tempfile::tempdir().expect("tempdir");
        let state_dir = directory.path().join("state");
        let mut store = FileStore::open(&state_dir).expect("open");
        let mode = fs::metadata(&state_dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mut buffer = [0u8; 64];
        assert_eq!(store.load(&mut buffer), Ok(None));
        store.save(b"first").expect("save");
        store.save(b"second record").expect("save");
        assert_eq!(store.load(&mut buffer), Ok(Some(13)));
        assert_eq!(&buffer[..13], b"second record");
        let mode = fs::metadata(store.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A leftover temporary file from a crash is not the state and is cleaned up.
        fs::write(state_dir.join("pluton.state.tmp"), b"half-writ").expect("write");
        let mut reopened = FileStore::open(&state_dir).expect("reopen");
        assert_eq!(reopened.load(&mut buffer), Ok(Some(13)));
        assert!(!state_dir.join("pluton.state.tmp").exists());
    }

    #[test]
    fn oversized_file_is_corrupt_not_truncated() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut store = FileStore::open(directory.path()).expect("open");
        store.save(&[1u8; 100]).expect("save");
        let mut small = [0u8; 64];
        assert_eq!(store.load(&mut small), Err(PlutonError::StoreCorrupt));
    }
}
