//! Where the CA passphrase comes from: an environment variable or a file, never argv.

use std::path::PathBuf;

use zeroize::Zeroizing;

/// Default environment variable holding the CA passphrase.
pub const DEFAULT_PASSPHRASE_ENV: &str = "WARDEN_CA_PASSPHRASE";

/// Shortest passphrase `ca init` accepts.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Where to read the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// An environment variable.
    Env(String),
    /// A file (its first line; the trailing newline is dropped).
    File(PathBuf),
}

/// The passphrase could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// The environment variable is unset or empty.
    #[error("the CA passphrase is not set: environment variable {0} is empty or unset")]
    EnvUnset(String),
    /// The file could not be read.
    #[error("cannot read the CA passphrase file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The passphrase is empty or too short.
    #[error("the CA passphrase from {0} is shorter than {MIN_PASSPHRASE_LEN} characters")]
    TooShort(String),
}

impl PassphraseSource {
    /// Read the passphrase (kept in zeroized memory).
    pub fn read(&self) -> Result<Zeroizing<String>, PassphraseError> {
        let passphrase = match self {
            Self::Env(name) => Zeroizing::new(
                std::env::var(name)
                    .ok()
                    .filter(|value| !value.is_empty())
                    .ok_or_else(|| PassphraseError::EnvUnset(name.clone()))?,
            ),
            Self::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    PassphraseError::File {
                        path: path.clone(),
                        source,
                    }
                })?);
                Zeroizing::new(text.lines().next().unwrap_or("").to_owned())
            }
        };
        Ok(passphrase)
    }

    /// Read a passphrase for a new key: at least [`MIN_PASSPHRASE_LEN`] characters.
    pub fn read_new(&self) -> Result<Zeroizing<String>, PassphraseError> {
        let passphrase = self.read()?;
        if passphrase.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(PassphraseError::TooShort(self.describe()));
        }
        Ok(passphrase)
    }

    /// Where it comes from, for messages (never the value).
    pub fn describe(&self) -> String {
        match self {
            Self::Env(name) => format!("environment variable {name}"),
            Self::File(path) => format!("file {}", path.display()),
        }
    }
}
