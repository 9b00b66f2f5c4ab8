//! Image building and signing (std): the release side of the format.

use sha2::{Digest, Sha256};
use warden_keychain::tooling::{SecretSigningKey, ToolError, sign};
use warden_keychain::{CERT_LEN, Purpose, ReleaseKeyCert};

use crate::{IMAGE_DOMAIN, ImageHeader, TRAILER_LEN};

/// Signing an image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The certificate is not a valid release-key certificate.
    #[error("release-key certificate does not decode: {0}")]
    CertificateInvalid(warden_keychain::ChainError),
    /// The certificate certifies another key than the one signing.
    #[error("release-key certificate certifies key {certified}, not the signing key {signing}")]
    CertificateForOtherKey {
        /// The key the certificate names.
        certified: warden_keychain::KeyId,
        /// The key that was to sign.
        signing: warden_keychain::KeyId,
    },
    /// The certificate does not grant the image purpose.
    #[error("release-key certificate does not grant the image-signing purpose")]
    CertificateNotForImages,
    /// The keychain's signing failed.
    #[error("signing: {0}")]
    Key(#[from] ToolError),
}

/// Check that `cert` (147 bytes, `WKC1`) certifies `release_key` for images.
pub fn check_release_cert(release_key: &SecretSigningKey, cert: &[u8]) -> Result<(), SignError> {
    let decoded = ReleaseKeyCert::decode(cert).map_err(SignError::CertificateInvalid)?;
    if decoded.release_key_id() != release_key.key_id() {
        return Err(SignError::CertificateForOtherKey {
            certified: decoded.release_key_id(),
            signing: release_key.key_id(),
        });
    }
    if !decoded.purposes.contains(Purpose::IMAGE) {
        return Err(SignError::CertificateNotForImages);
    }
    Ok(())
}

/// The trailer (certificate then signature) that makes `header` a signed image.
pub fn sign_header(
    header: &ImageHeader,
    release_key: &SecretSigningKey,
    cert: &[u8],
) -> Result<[u8; TRAILER_LEN], SignError> {
    check_release_cert(release_key, cert)?;
    let signature = sign(release_key, IMAGE_DOMAIN, &header.digest())?;
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[..CERT_LEN].copy_from_slice(cert);
    trailer[CERT_LEN..].copy_from_slice(&signature);
    Ok(trailer)
}

/// The header for `payload` with the given identity fields (size and SHA-256 filled in).
pub fn header_for_payload(template: ImageHeader, payload: &[u8]) -> ImageHeader {
    ImageHeader {
        payload_len: payload.len() as u64,
        payload_sha256: Sha256::digest(payload).into(),
        ..template
    }
}

/// Build a signed image in memory: header, payload, certificate, signature.
pub fn build_signed_image(
    template: ImageHeader,
    payload: &[u8],
    release_key: &SecretSigningKey,
    cert: &[u8],
) -> Result<Vec<u8>, SignError> {
    let header = header_for_payload(template, payload);
    let trailer = sign_header(&header, release_key, cert)?;
    let mut image = Vec::with_capacity(crate::HEADER_LEN + payload.len() + TRAILER_LEN);
    image.extend_from_slice(&header.encode());
    image.extend_from_slice(payload);
    image.extend_from_slice(&trailer);
    Ok(image)
}
