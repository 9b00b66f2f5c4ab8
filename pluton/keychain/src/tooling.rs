//! Release tooling (std): key generation, PEM key files, issuing and signing.
//!
//! Used by the provisioning station and release tooling, never by the device verifier.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::MultipartSigner;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};

use crate::certificate::{CERT_SIGNING_PREFIX, ReleaseKeyCert};
use crate::error::ChainError;
use crate::keys::{
    KeyId, PUBLIC_KEY_LEN, PublicKeyBytes, Purpose, RELEASE_SIGNING_PREFIX, SIGNATURE_LEN,
    domain_len_byte, parse_public_key,
};
use crate::revocation::{LIST_MAGIC, LIST_SIGNING_PREFIX, LIST_VERSION, MAX_REVOKED, list_len};

/// What went wrong in release tooling; file errors name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file's PEM/DER contents could not be decoded or encoded.
    #[error("key file {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why decoding or encoding failed.
        reason: String,
    },
    /// A revocation list would name more keys than a list may hold.
    #[error("a revocation list names at most {max} keys, not {count}", max = MAX_REVOKED)]
    TooManyRevoked {
        /// How many were asked for.
        count: usize,
    },
    /// An argument broke a rule of the signing chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// A P-256 private key for a vendor root or a release key, zeroized on drop.
///
/// Its `Debug` shows only the key identifier.
pub struct SecretSigningKey {
    key: SigningKey,
}

impl SecretSigningKey {
    /// Generate a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, ToolError> {
        let key = SigningKey::try_generate().map_err(|_| ToolError::Random)?;
        Ok(Self { key })
    }

    /// The uncompressed SEC1 public key.
    pub fn public_key(&self) -> PublicKeyBytes {
        public_key_bytes(self.key.verifying_key())
    }

    /// The public key's identifier.
    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(&self.public_key())
    }

    /// The key as PKCS#8 PEM (zeroized when dropped).
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, ToolError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| ToolError::Pem {
                path: PathBuf::new(),
                reason: error.to_string(),
            })
    }

    /// A key from PKCS#8 PEM.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, ToolError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|error| ToolError::Pem {
            path: PathBuf::new(),
            reason: error.to_string(),
        })?;
        Ok(Self { key })
    }
}

impl std::fmt::Debug for SecretSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// The uncompressed SEC1 encoding of a verifying key.
pub fn public_key_bytes(key: &VerifyingKey) -> PublicKeyBytes {
    let point = key.to_sec1_point(false);
    let mut bytes = [0u8; PUBLIC_KEY_LEN];
    bytes.copy_from_slice(point.as_bytes());
    bytes
}

/// Write a secret key as PKCS#8 PEM to `path`, created with mode 0600.
///
/// An existing file is replaced and its mode reset to 0600.
pub fn save_secret_key(path: &Path, key: &SecretSigningKey) -> Result<(), ToolError> {
    let io_error = |source| ToolError::Io {
        path: path.to_owned(),
        source,
    };
    let pem = key.to_pkcs8_pem().map_err(|error| with_path(error, path))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    // `mode` applies only when the file is created; force it on an existing file too.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error)?;
    file.write_all(pem.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// Read a PKCS#8 PEM secret key from `path`.
pub fn load_secret_key(path: &Path) -> Result<SecretSigningKey, ToolError> {
    let pem =
        zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|source| ToolError::Io {
            path: path.to_owned(),
            source,
        })?);
    SecretSigningKey::from_pkcs8_pem(&pem).map_err(|error| with_path(error, path))
}

/// An uncompressed SEC1 public key as SPKI PEM (`PUBLIC KEY`).
pub fn public_key_pem(public_key: &PublicKeyBytes) -> Result<String, ToolError> {
    let key = parse_public_key(public_key)?;
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|error| ToolError::Pem {
            path: PathBuf::new(),
            reason: error.to_string(),
        })
}

/// Write an uncompressed SEC1 public key as SPKI PEM (`PUBLIC KEY`) to `path`.
pub fn save_public_key(path: &Path, public_key: &PublicKeyBytes) -> Result<(), ToolError> {
    let pem = public_key_pem(public_key).map_err(|error| with_path(error, path))?;
    fs::write(path, pem).map_err(|source| ToolError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Read an SPKI PEM public key from `path`, as uncompressed SEC1 bytes.
pub fn load_public_key(path: &Path) -> Result<PublicKeyBytes, ToolError> {
    let pem = fs::read_to_string(path).map_err(|source| ToolError::Io {
        path: path.to_owned(),
        source,
    })?;
    let key = VerifyingKey::from_public_key_pem(&pem).map_err(|error| ToolError::Pem {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    Ok(public_key_bytes(&key))
}

/// Issue a version-1 release-key certificate: `root` certifies `release_public_key` for
/// `purposes` under `serial`.
pub fn issue_release_cert(
    root: &SecretSigningKey,
    release_public_key: &PublicKeyBytes,
    purposes: Purpose,
    serial: u32,
) -> Result<Vec<u8>, ToolError> {
    parse_public_key(release_public_key)?;
    let mut cert = ReleaseKeyCert {
        purposes,
        serial,
        release_public_key: *release_public_key,
        issuer: root.key_id(),
        signature: [0u8; SIGNATURE_LEN],
    };
    let body = cert.body();
    let signature: Signature = root.key.multipart_sign(&[CERT_SIGNING_PREFIX, &body]);
    cert.signature = signature.to_bytes().into();
    Ok(cert.encode().to_vec())
}

/// Make a version-1 revocation list: `root` withdraws the keys `revoked` (release keys
/// or roots, by [`KeyId`]) under `sequence`, which must be above the sequence of every
/// list the devices already hold.
pub fn sign_revocation_list(
    root: &SecretSigningKey,
    sequence: u64,
    revoked: &[KeyId],
) -> Result<Vec<u8>, ToolError> {
    if revoked.len() > MAX_REVOKED {
        return Err(ToolError::TooManyRevoked {
            count: revoked.len(),
        });
    }
    let count = u16::try_from(revoked.len()).map_err(|_| ToolError::TooManyRevoked {
        count: revoked.len(),
    })?;
    let mut list = Vec::with_capacity(list_len(revoked.len()));
    list.extend_from_slice(&LIST_MAGIC);
    list.push(LIST_VERSION);
    list.extend_from_slice(&sequence.to_le_bytes());
    list.extend_from_slice(&root.key_id().0);
    list.extend_from_slice(&count.to_le_bytes());
    for id in revoked {
        list.extend_from_slice(&id.0);
    }
    let signature: Signature = root.key.multipart_sign(&[LIST_SIGNING_PREFIX, &list]);
    list.extend_from_slice(&signature.to_bytes());
    Ok(list)
}

/// Sign `message_digest` (SHA-256 of the signed object) in `domain` with a release key,
/// in the form [`crate::VerifiedReleaseKey::verify`] checks.
pub fn sign(
    release: &SecretSigningKey,
    domain: &[u8],
    message_digest: &[u8; 32],
) -> Result<[u8; SIGNATURE_LEN], ToolError> {
    let domain_len = domain_len_byte(domain)?;
    let signature: Signature = release.key.multipart_sign(&[
        RELEASE_SIGNING_PREFIX,
        &[domain_len],
        domain,
        message_digest,
    ]);
    Ok(signature.to_bytes().into())
}

fn with_path(error: ToolError, path: &Path) -> ToolError {
    match error {
        ToolError::Pem { reason, .. } => ToolError::Pem {
            path: path.to_owned(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.pem");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let key = SecretSigningKey::generate().expect("rng");
        save_secret_key(&path, &key).expect("save");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_secret_key(&path).expect("load");
        assert_eq!(loaded.public_key(), key.public_key());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not-a-key.pem");
        fs::write(&path, "garbage").expect("write");
        let message = load_secret_key(&path).expect_err("garbage").to_string();
        assert!(message.contains("not-a-key.pem"), "{message}");
        let missing = dir.path().join("missing.pem");
        let message = load_public_key(&missing).expect_err("missing").to_string();
        assert!(message.contains("missing.pem"), "{message}");
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let key = SecretSigningKey::generate().expect("rng");
        let secret_hex: String = key
            .key
            .to_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&secret_hex));
        assert!(debug.contains(&key.key_id().to_string()));
    }
}
