//! The vendor's signing keys from the command line (`warden-provision keys …`,
//! `warden-provision bundle sign`): a vendor root, a release key certified by it, and
//! the signed policy bundle, so a vendor needs no program of its own to make what the
//! station installs. Images are signed by `warden image sign` (the appliance binary).
//!
//! Private keys are PKCS#8 PEM written atomically with mode 0600; nothing existing is
//! overwritten (a lost root key cannot be re-made, so replacing one by mistake must
//! not be possible); no secret is ever printed.

use std::path::{Path, PathBuf};

use warden_keychain::tooling::{self, SecretSigningKey, ToolError};
use warden_keychain::{KeyId, Purpose};

use crate::files::{FileError, write_atomically};

/// Why a list of key purposes is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurposeError {
    /// A purpose other than `image` and `policy`.
    #[error("unknown purpose {0:?} (image, policy)")]
    Unknown(String),
    /// The list is empty.
    #[error("at least one purpose is required")]
    Empty,
}

/// The purposes named `image` and `policy`, as the signing chain's [`Purpose`].
pub fn purposes_from_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Purpose, PurposeError> {
    let mut bits = 0u8;
    for name in names {
        bits |= match name {
            "image" => Purpose::IMAGE.bits(),
            "policy" => Purpose::POLICY.bits(),
            other => return Err(PurposeError::Unknown(other.to_string())),
        };
    }
    Purpose::from_bits(bits).ok_or(PurposeError::Empty)
}

/// A key, certificate or bundle could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseKeyError {
    /// The file to write exists.
    #[error("{} exists; refusing to overwrite it (move it away or pick another path)", .0.display())]
    Exists(PathBuf),
    /// Two outputs name the same file.
    #[error("{} is named for two outputs", .0.display())]
    SameFile(PathBuf),
    /// Reading a file or writing one failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Key generation, a key file or the signing chain failed (the file is named).
    #[error(transparent)]
    Key(#[from] ToolError),
    /// `--purposes`.
    #[error("--purposes: {0}")]
    Purposes(#[from] PurposeError),
    /// The policy bundle could not be compiled or signed.
    #[error(transparent)]
    Bundle(#[from] warden_policy::bundle::build::BundleBuildError),
    /// A key ID that is not 16 hex digits.
    #[error("key ID {0:?} is not 16 hex digits")]
    KeyId(String),
    /// A release-key certificate that does not decode.
    #[error("{}: not a release-key certificate: {error}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        error: warden_keychain::ChainError,
    },
    /// `--product`.
    #[error("--product {0:?}: 1 to 16 printable ASCII characters")]
    Product(String),
}

/// What `keys root` made.
#[derive(Debug)]
pub struct RootKey {
    /// The root's key ID (what the signing chain names).
    pub key_id: KeyId,
    /// The public key, uncompressed SEC1 hex: the form the fleet's
    /// `images.vendor_roots` takes.
    pub public_hex: String,
}

/// What `keys release` made.
#[derive(Debug)]
pub struct ReleaseKey {
    /// The release key's ID.
    pub key_id: KeyId,
    /// The root that certified it.
    pub issuer: KeyId,
    /// What it may sign.
    pub purposes: Purpose,
}

fn refuse_existing(paths: &[&Path]) -> Result<(), ReleaseKeyError> {
    for (index, path) in paths.iter().enumerate() {
        if paths[..index].contains(path) {
            return Err(ReleaseKeyError::SameFile(path.to_path_buf()));
        }
        if path.exists() {
            return Err(ReleaseKeyError::Exists(path.to_path_buf()));
        }
    }
    Ok(())
}

fn write_secret_key(path: &Path, key: &SecretSigningKey) -> Result<(), ReleaseKeyError> {
    let pem = key.to_pkcs8_pem()?;
    write_atomically(path, pem.as_bytes(), 0o600)?;
    Ok(())
}

/// A new vendor root: its private key to `key` (0600) and its SPKI PEM public key to
/// `public` (what `station.toml`'s `[[vendor_root]] public_key` names).
pub fn create_root(key: &Path, public: &Path) -> Result<RootKey, ReleaseKeyError> {
    refuse_existing(&[key, public])?;
    let root = SecretSigningKey::generate()?;
    let public_key = root.public_key();
    // The public key first: a key file exists only with its public half beside it.
    let pem = tooling::public_key_pem(&public_key)?;
    write_atomically(public, pem.as_bytes(), 0o644)?;
    write_secret_key(key, &root)?;
    Ok(RootKey {
        key_id: root.key_id(),
        public_hex: hex::encode(public_key),
    })
}

/// A new release key certified by the root in `root_key` for `purposes` under `serial`:
/// the key to `key` (0600), the certificate (147 bytes, WKC1) to `cert`.
pub fn create_release(
    root_key: &Path,
    key: &Path,
    cert: &Path,
    purposes: Purpose,
    serial: u32,
) -> Result<ReleaseKey, ReleaseKeyError> {
    refuse_existing(&[key, cert])?;
    let root = tooling::load_secret_key(root_key)?;
    let release = SecretSigningKey::generate()?;
    let certificate = tooling::issue_release_cert(&root, &release.public_key(), purposes, serial)?;
    write_atomically(cert, &certificate, 0o644)?;
    write_secret_key(key, &release)?;
    Ok(ReleaseKey {
        key_id: release.key_id(),
        issuer: root.key_id(),
        purposes,
    })
}

/// A key to revoke, as `keys revoke` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokedKey {
    /// A release key by its certificate file (WKC1).
    Certificate(PathBuf),
    /// A release key or root by its key ID (16 hex digits).
    KeyId(KeyId),
}

/// A key ID as 16 hex digits (what `keys release` and `keys root` print).
pub fn parse_key_id(text: &str) -> Result<KeyId, ReleaseKeyError> {
    let bytes = hex::decode(text.trim()).map_err(|_| ReleaseKeyError::KeyId(text.to_owned()))?;
    let id: [u8; 8] = bytes
        .try_into()
        .map_err(|_| ReleaseKeyError::KeyId(text.to_owned()))?;
    Ok(KeyId(id))
}

/// Makes a revocation list (WRL1) signed by the vendor root in `root_key`: the keys in
/// `revoked`, under `sequence` (above every list published before: units keep only a
/// newer one), written to `output` (never overwritten). Units take it as a file
/// (`warden update install`, the status page's upload form).
pub fn create_revocation_list(
    root_key: &Path,
    sequence: u64,
    revoked: &[RevokedKey],
    output: &Path,
) -> Result<Vec<KeyId>, ReleaseKeyError> {
    refuse_existing(&[output])?;
    let root = tooling::load_secret_key(root_key)?;
    let mut ids = Vec::with_capacity(revoked.len());
    for key in revoked {
        let id = match key {
            RevokedKey::KeyId(id) => *id,
            RevokedKey::Certificate(path) => {
                let bytes = crate::files::read_bytes(path)?;
                warden_keychain::ReleaseKeyCert::decode(&bytes)
                    .map_err(|error| ReleaseKeyError::Certificate {
                        path: path.clone(),
                        error,
                    })?
                    .release_key_id()
            }
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let list = tooling::sign_revocation_list(&root, sequence, &ids)?;
    write_atomically(output, &list, 0o644)?;
    Ok(ids)
}

/// What `bundle sign` is asked to do.
#[derive(Debug, Clone)]
pub struct BundleRequest<'a> {
    /// The policy source.
    pub policy: &'a Path,
    /// The product the bundle is for (the station's `product`).
    pub product: &'a str,
    /// The bundle's version (a unit accepts only newer ones).
    pub version: u64,
    /// The release key (PKCS#8 PEM).
    pub key: &'a Path,
    /// Its certificate (WKC1), certified for `policy`.
    pub cert: &'a Path,
    /// Where the bundle goes.
    pub output: &'a Path,
    /// Replace an existing bundle.
    pub force: bool,
}

/// Compiles and signs a policy bundle; returns the compiler's warnings (as text, with
/// file, line and column).
pub fn sign_bundle(request: &BundleRequest<'_>) -> Result<Vec<String>, ReleaseKeyError> {
    if !request.force {
        refuse_existing(&[request.output])?;
    }
    let product = warden_policy::bundle::ProductId::new(request.product)
        .ok_or_else(|| ReleaseKeyError::Product(request.product.to_owned()))?;
    let (bundle, warnings) = warden_policy::bundle::build::build_bundle_from_files(
        request.policy,
        product,
        request.version,
        request.key,
        request.cert,
    )?;
    write_atomically(request.output, &bundle, 0o644)?;
    Ok(warnings.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn purposes_are_named() {
        assert_eq!(
            purposes_from_names(["image", "policy"]),
            Ok(Purpose::IMAGE | Purpose::POLICY)
        );
        assert_eq!(
            purposes_from_names(["firmware"]),
            Err(PurposeError::Unknown("firmware".into()))
        );
        assert_eq!(purposes_from_names([]), Err(PurposeError::Empty));
    }

    #[test]
    fn root_and_release_keys_are_private_certified_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("keys/root.pem");
        let public = dir.path().join("keys/root.pub.pem");
        let root = create_root(&key, &public).expect("root");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&public), 0o644);
        let loaded = tooling::load_public_key(&public).expect("public key");
        assert_eq!(hex::encode(loaded), root.public_hex);
        assert_eq!(KeyId::of_public_key(&loaded), root.key_id);

        let before = std::fs::read(&key).expect("key");
        let refused = create_root(&key, &dir.path().join("other.pub.pem")).expect_err("exists");
        assert!(refused.to_string().contains("root.pem"), "{refused}");
        assert_eq!(std::fs::read(&key).expect("key"), before);
        assert!(!dir.path().join("other.pub.pem").exists());

        let release_key = dir.path().join("keys/release.pem");
        let cert = dir.path().join("keys/release.cert");
        let release =
            create_release(&key, &release_key, &cert, Purpose::POLICY, 7).expect("release");
        assert_eq!(mode(&release_key), 0o600);
        assert_eq!(release.issuer, root.key_id);
        let decoded = warden_keychain::ReleaseKeyCert::decode(&std::fs::read(&cert).expect("cert"))
            .expect("decode");
        assert_eq!(decoded.serial, 7);
        assert_eq!(decoded.purposes, Purpose::POLICY);
        assert!(matches!(
            create_release(&key, &release_key, &cert, Purpose::POLICY, 8),
            Err(ReleaseKeyError::Exists(_))
        ));
        // A missing root key is named.
        let missing = dir.path().join("no-root.pem");
        let error = create_release(
            &missing,
            &dir.path().join("r2.pem"),
            &dir.path().join("r2.cert"),
            Purpose::ALL,
            1,
        )
        .expect_err("no root");
        assert!(error.to_string().contains("no-root.pem"), "{error}");
    }

    #[test]
    fn a_revocation_list_names_the_keys_and_verifies_against_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let root = create_root(&path("root.pem"), &path("root.pub.pem")).expect("root");
        let release = create_release(
            &path("root.pem"),
            &path("release.pem"),
            &path("release.cert"),
            Purpose::IMAGE,
            1,
        )
        .expect("release");
        let other = parse_key_id("00112233445566ff").expect("hex id");
        let ids = create_revocation_list(
            &path("root.pem"),
            4,
            &[
                RevokedKey::Certificate(path("release.cert")),
                RevokedKey::KeyId(other),
                RevokedKey::KeyId(release.key_id),
            ],
            &path("revoked.wrl"),
        )
        .expect("list");
        assert_eq!(ids, [release.key_id, other], "named once each, in order");
        let bytes = std::fs::read(path("revoked.wrl")).expect("list");
        let root_key =
            warden_keychain::RootKey::from_public_key(&hex::decode(&root.public_hex).expect("hex"))
                .expect("root");
        let list = warden_keychain::RevocationList::verify(&bytes, &[root_key], &[])
            .expect("verifies against the root");
        assert_eq!(list.sequence(), 4);
        assert_eq!(list.revoked().collect::<Vec<_>>(), ids);
        // Never overwritten; bad key IDs and certificates are named.
        assert!(matches!(
            create_revocation_list(&path("root.pem"), 5, &[], &path("revoked.wrl")),
            Err(ReleaseKeyError::Exists(_))
        ));
        assert!(parse_key_id("xyz").is_err());
        assert!(parse_key_id("0011").is_err());
        let error = create_revocation_list(
            &path("root.pem"),
            5,
            &[RevokedKey::Certificate(path("root.pub.pem"))],
            &path("other.wrl"),
        )
        .expect_err("not a certificate");
        assert!(error.to_string().contains("root.pub.pem"), "{error}");
    }

    #[test]
    fn a_signed_bundle_verifies_against_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let root = create_root(&path("root.pem"), &path("root.pub.pem")).expect("root");
        create_release(
            &path("root.pem"),
            &path("release.pem"),
            &path("release.cert"),
            Purpose::ALL,
            1,
        )
        .expect("release");
        std::fs::write(
            path("policy.toml"),
            "[policy]\nname = \"p\"\ndescription = \"d\"\n",
        )
        .expect("policy");
        let request = BundleRequest {
            policy: &path("policy.toml"),
            product: "warden-gw",
            version: 3,
            key: &path("release.pem"),
            cert: &path("release.cert"),
            output: &path("policy.bundle"),
            force: false,
        };
        sign_bundle(&request).expect("bundle");
        assert!(matches!(
            sign_bundle(&request),
            Err(ReleaseKeyError::Exists(_))
        ));
        sign_bundle(&BundleRequest {
            force: true,
            ..request.clone()
        })
        .expect("forced");
        let bundle = std::fs::read(path("policy.bundle")).expect("bundle");
        let root_key =
            warden_keychain::RootKey::from_public_key(&hex::decode(&root.public_hex).expect("hex"))
                .expect("root");
        let verified = warden_policy::bundle::verify_bundle(
            &bundle,
            &warden_policy::bundle::BundleTrust {
                roots: &[root_key],
                revoked: &[],
                product: warden_policy::bundle::ProductId::new("warden-gw").expect("product"),
                min_version: 0,
            },
        )
        .expect("the bundle verifies against the root");
        assert_eq!(verified.header.version, 3);
    }
}
