//! Which root of trust a state directory belongs to, recorded beside the state.
//!
//! The two backends keep different things in the same state record: the software backend
//! keeps the identity's private key, the TPM backend only the seed of a key template that
//! the TPM turns into the key. Opened by the wrong backend, a state would come up as
//! another device (a TPM seed read as a private key), so the first start writes the
//! backend's name to `<state_dir>/backend` and every later start must ask for the same
//! one. Hosts that do not name a backend use the recorded one ([`recorded`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::file_store::{FileStoreError, STATE_FILE_NAME, write_file_atomically};

/// The file in the state directory that names the backend (`software` or `tpm`).
pub const BACKEND_FILE_NAME: &str = "backend";

/// A backend, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Keys in the state directory.
    Software,
    /// Keys in a TPM 2.0.
    Tpm,
}

impl BackendKind {
    /// The name written to the record and taken on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Software => "software",
            Self::Tpm => "tpm",
        }
    }

    /// The backend named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "software" => Some(Self::Software),
            "tpm" => Some(Self::Tpm),
            _ => None,
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The record could not be read or does not match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendRecordError {
    /// The record could not be read or written.
    #[error(transparent)]
    File(#[from] FileStoreError),
    /// The record names no known backend.
    #[error("{path}: {found:?} is not a pluton backend (software, tpm)")]
    Unknown {
        /// The record file.
        path: PathBuf,
        /// What it holds.
        found: String,
    },
    /// The state belongs to another backend than the one asked for.
    #[error(
        "pluton state in {state_dir} belongs to the {recorded} backend, not {requested}: start pluton with --backend {recorded}"
    )]
    Mismatch {
        /// The state directory.
        state_dir: PathBuf,
        /// The backend the state belongs to.
        recorded: BackendKind,
        /// The backend asked for.
        requested: BackendKind,
    },
}

/// The backend `state_dir` belongs to: its record; for a state written before records
/// existed, the software backend (the only one then); `None` for a new state directory.
pub fn recorded(state_dir: &Path) -> Result<Option<BackendKind>, BackendRecordError> {
    let path = state_dir.join(BACKEND_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => BackendKind::from_name(text.trim())
            .map(Some)
            .ok_or_else(|| BackendRecordError::Unknown {
                path,
                found: text.trim().chars().take(64).collect(),
            }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(state_dir
            .join(STATE_FILE_NAME)
            .is_file()
            .then_some(BackendKind::Software)),
        Err(source) => Err(FileStoreError {
            operation: "read",
            path,
            source,
        }
        .into()),
    }
}

/// Claim `state_dir` for `requested`: refused if it belongs to another backend; the
/// record is written (atomically) when it is missing. Call before opening the state.
pub fn claim(state_dir: &Path, requested: BackendKind) -> Result<(), BackendRecordError> {
    let path = state_dir.join(BACKEND_FILE_NAME);
    let on_record = path.is_file();
    match recorded(state_dir)? {
        Some(recorded) if recorded != requested => Err(BackendRecordError::Mismatch {
            state_dir: state_dir.to_owned(),
            recorded,
            requested,
        }),
        _ if on_record => Ok(()),
        _ => {
            let mut line = requested.name().to_owned();
            line.push('\n');
            write_file_atomically(&path, line.as_bytes())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_directory_is_claimed_by_its_first_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(recorded(dir.path()).expect("read"), None);
        claim(dir.path(), BackendKind::Tpm).expect("claim");
        assert_eq!(recorded(dir.path()).expect("read"), Some(BackendKind::Tpm));
        claim(dir.path(), BackendKind::Tpm).expect("the same backend again");
        match claim(dir.path(), BackendKind::Software) {
            Err(BackendRecordError::Mismatch {
                recorded,
                requested,
                ..
            }) => assert_eq!(
                (recorded, requested),
                (BackendKind::Tpm, BackendKind::Software)
            ),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_state_without_a_record_is_the_software_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STATE_FILE_NAME), b"state").expect("state");
        assert_eq!(
            recorded(dir.path()).expect("read"),
            Some(BackendKind::Software)
        );
        assert!(matches!(
            claim(dir.path(), BackendKind::Tpm),
            Err(BackendRecordError::Mismatch { .. })
        ));
        claim(dir.path(), BackendKind::Software).expect("claim");
        assert!(dir.path().join(BACKEND_FILE_NAME).is_file());
    }

    #[test]
    fn an_unknown_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(BACKEND_FILE_NAME), b"hsm\n").expect("record");
        let error = recorded(dir.path()).expect_err("unknown");
        let message = error.to_string();
        assert!(
            message.contains(BACKEND_FILE_NAME) && message.contains("\"hsm\""),
            "{message}"
        );
    }
}
