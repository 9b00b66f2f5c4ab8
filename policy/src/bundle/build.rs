//! Bundle tooling (std): compile a policy file and sign it into a bundle.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warden_keychain::tooling::{SecretSigningKey, ToolError, load_secret_key, sign};
use warden_keychain::{Purpose, SIGNATURE_LEN};

use super::{
    BUNDLE_DOMAIN, BUNDLE_FORMAT, BundleHeader, CERT_LEN, HEADER_LEN, MAX_BODY_LEN, ProductId,
};
use crate::compiler::{CompileErrors, CompiledPolicy, Diagnostic, compile};
use crate::tables::TABLES_FORMAT;

/// Building or signing a bundle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleBuildError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy file does not compile.
    #[error("{0}")]
    Compile(#[from] CompileErrors),
    /// The release key could not be loaded or used.
    #[error("release key: {0}")]
    Key(#[from] ToolError),
    /// The certificate is not a release-key certificate for this key and purpose.
    #[error("certificate {path}: {reason}")]
    Certificate {
        /// The certificate file (or `<memory>`).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The compiled tables are larger than a device accepts.
    #[error("compiled tables are {0} bytes; a device accepts at most {MAX_BODY_LEN}")]
    TooLarge(usize),
}

/// Signs `policy` as bundle `version` for `product` with `release_key`, whose
/// certificate `cert` (147 bytes, WKC1) must certify it for policy bundles.
pub fn build_bundle(
    policy: &CompiledPolicy,
    product: ProductId,
    version: u64,
    release_key: &SecretSigningKey,
    cert: &[u8],
) -> Result<Vec<u8>, BundleBuildError> {
    let cert_error = |reason: String| BundleBuildError::Certificate {
        path: "<memory>".into(),
        reason,
    };
    let decoded =
        warden_keychain::ReleaseKeyCert::decode(cert).map_err(|e| cert_error(e.to_string()))?;
    if decoded.release_key_id() != release_key.key_id() {
        return Err(cert_error(format!(
            "certifies key {}, not the release key {}",
            decoded.release_key_id(),
            release_key.key_id()
        )));
    }
    if !decoded.purposes.contains(Purpose::POLICY) {
        return Err(cert_error(
            "does not grant the policy-bundle purpose".into(),
        ));
    }
    let body = policy.encode();
    if body.len() > MAX_BODY_LEN {
        return Err(BundleBuildError::TooLarge(body.len()));
    }
    let header = BundleHeader {
        format: BUNDLE_FORMAT,
        tables_format: TABLES_FORMAT,
        product,
        version,
        body_len: body.len() as u32,
        body_sha256: Sha256::digest(&body).into(),
    };
    let signature = sign(release_key, BUNDLE_DOMAIN, &header.digest())?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CERT_LEN + SIGNATURE_LEN);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
    out.extend_from_slice(cert);
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Compiles `policy_file` and signs it with the PKCS#8 PEM `release_key_file` and the
/// raw certificate `cert_file`. Returns the bundle and the compiler's warnings.
pub fn build_bundle_from_files(
    policy_file: &Path,
    product: ProductId,
    version: u64,
    release_key_file: &Path,
    cert_file: &Path,
) -> Result<(Vec<u8>, Vec<Diagnostic>), BundleBuildError> {
    let source = std::fs::read_to_string(policy_file).map_err(|source| BundleBuildError::Read {
        path: policy_file.into(),
        source,
    })?;
    let compiled = compile(&source, &policy_file.display().to_string())?;
    let key = load_secret_key(release_key_file)?;
    let cert = std::fs::read(cert_file).map_err(|source| BundleBuildError::Read {
        path: cert_file.into(),
        source,
    })?;
    let bundle =
        build_bundle(&compiled.policy, product, version, &key, &cert).map_err(|e| match e {
            BundleBuildError::Certificate { reason, .. } => BundleBuildError::Certificate {
                path: cert_file.into(),
                reason,
            },
            other => other,
        })?;
    Ok((bundle, compiled.warnings))
}
