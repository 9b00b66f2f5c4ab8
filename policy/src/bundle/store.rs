//! On-disk store of the applied bundle (std): verify, refuse rollback, keep last good.

use std::fs;
use std::path::{Path, PathBuf};

use warden_keychain::{KeyId, RootKey};

use super::{BundleError, BundleHeader, BundleTrust, ProductId, verify_bundle};
use crate::compiler::CompiledPolicy;
use crate::tables::TableError;

/// File name of the applied bundle inside the store directory.
pub const CURRENT_FILE: &str = "current.bundle";

/// The store could not apply or load a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bundle failed verification; the applied policy is unchanged.
    #[error("bundle refused: {0}")]
    Refused(BundleError),
    /// A bundle version lower than the applied one (anti-rollback).
    #[error(
        "bundle version {offered} is lower than the applied version {applied}; rollback refused"
    )]
    Rollback {
        /// Offered version.
        offered: u64,
        /// Applied version (or the anti-rollback floor).
        applied: u64,
    },
    /// The body of a verified bundle does not decode.
    #[error("bundle version {version} verified but its tables do not decode: {error}")]
    Tables {
        /// The bundle version.
        version: u64,
        /// Why.
        error: TableError,
    },
    /// Reading or writing the store failed.
    #[error("policy store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stored bundle no longer verifies (corrupted, or its key was revoked).
    #[error("stored bundle {path} no longer verifies: {error}")]
    StoredInvalid {
        /// The file.
        path: PathBuf,
        /// Why.
        error: BundleError,
    },
}

/// The applied bundle.
#[derive(Clone, Debug)]
pub struct AppliedBundle {
    /// Its header.
    pub header: BundleHeader,
    /// The release key that signed it.
    pub signer: KeyId,
    /// The decoded policy.
    pub policy: CompiledPolicy,
}

/// Keeps the last good bundle in a directory and applies new ones only after
/// verification and the anti-rollback check.
///
/// Writes are atomic (`warden_files::write_file_atomically_with_mode`): temp file,
/// fsync, rename over `current.bundle`, fsync of the
/// directory. A refused bundle never touches the disk.
#[derive(Debug)]
pub struct BundleStore {
    dir: PathBuf,
    roots: Vec<RootKey>,
    revoked: Vec<KeyId>,
    product: ProductId,
    rollback_floor: u64,
    current: Option<AppliedBundle>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BundleStore {
    /// Opens (creating) the store in `dir` and loads the stored bundle, if any, after
    /// verifying it again against `roots` and `revoked`.
    ///
    /// A stored bundle that no longer verifies is an error: the caller decides whether
    /// to run with no policy (deny all) or stop.
    pub fn open(
        dir: &Path,
        roots: &[RootKey],
        revoked: &[KeyId],
        product: ProductId,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut store = BundleStore {
            dir: dir.to_path_buf(),
            roots: roots.to_vec(),
            revoked: revoked.to_vec(),
            product,
            rollback_floor: 0,
            current: None,
        };
        let path = dir.join(CURRENT_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let applied = store
                    .verify_and_decode(&bytes, 0)
                    .map_err(|error| match error {
                        StoreError::Refused(error) => StoreError::StoredInvalid {
                            path: path.clone(),
                            error,
                        },
                        other => other,
                    })?;
                store.current = Some(applied);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        Ok(store)
    }

    /// Raises the anti-rollback floor (e.g. from a pluton monotonic counter): bundles
    /// below it are refused even if no bundle is stored.
    pub fn set_rollback_floor(&mut self, floor: u64) {
        self.rollback_floor = self.rollback_floor.max(floor);
    }

    /// The applied bundle, if any.
    pub fn current(&self) -> Option<&AppliedBundle> {
        self.current.as_ref()
    }

    /// The lowest version `apply` accepts.
    pub fn min_version(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(0, |c| c.header.version)
            .max(self.rollback_floor)
    }

    fn verify_and_decode(
        &self,
        bytes: &[u8],
        min_version: u64,
    ) -> Result<AppliedBundle, StoreError> {
        let trust = BundleTrust {
            roots: &self.roots,
            revoked: &self.revoked,
            product: self.product,
            min_version: 0,
        };
        let verified = verify_bundle(bytes, &trust).map_err(StoreError::Refused)?;
        if verified.header.version < min_version {
            return Err(StoreError::Rollback {
                offered: verified.header.version,
                applied: min_version,
            });
        }
        let origin = format!("bundle v{}", verified.header.version);
        let policy = CompiledPolicy::from_encoded(verified.body, &origin).map_err(|error| {
            StoreError::Tables {
                version: verified.header.version,
                error,
            }
        })?;
        Ok(AppliedBundle {
            header: verified.header,
            signer: verified.signer,
            policy,
        })
    }

    /// Verifies `bytes`, refuses a lower version (and a reused version with different
    /// content), stores it atomically and makes it current. On any error the current
    /// bundle stays applied and on disk.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<&AppliedBundle, StoreError> {
        let min_version = self.min_version();
        let applied = self.verify_and_decode(bytes, min_version)?;
        let reused = self.current.as_ref().is_some_and(|current| {
            current.header.version == applied.header.version
                && current.header.body_sha256 != applied.header.body_sha256
        });
        if reused {
            return Err(StoreError::Refused(BundleError::VersionReused));
        }
        self.write_atomically(bytes)?;
        Ok(self.current.insert(applied))
    }

    fn write_atomically(&self, bytes: &[u8]) -> Result<(), StoreError> {
        // Not secret (it is signed, not sealed): readable by the compartments as before.
        warden_files::write_file_atomically_with_mode(&self.dir.join(CURRENT_FILE), bytes, 0o644)
            .map_err(|error| StoreError::Io {
                path: error.path,
                source: error.source,
            })
    }
}
