//! The release-key certificate format (`WKC1`) and chain verification.

use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{Signature, VerifyingKey};

use crate::error::ChainError;
use crate::keys::{
    KeyId, PUBLIC_KEY_LEN, PublicKeyBytes, Purpose, RootKey, SIGNATURE_LEN, VerifiedReleaseKey,
    parse_public_key,
};

/// First four bytes of every release-key certificate.
pub const CERT_MAGIC: [u8; 4] = *b"WKC1";

/// The certificate format version this build writes and reads.
pub const CERT_VERSION: u8 = 1;

/// Prefix prepended to the certificate body before the root signs it.
pub const CERT_SIGNING_PREFIX: &[u8] = b"warden-release-key-v1\0";

const BODY_LEN: usize = 4 + 1 + 1 + 4 + PUBLIC_KEY_LEN + 8;

/// Exact length of a version-1 certificate in bytes.
pub const CERT_LEN: usize = BODY_LEN + SIGNATURE_LEN;

const PURPOSE_AT: usize = 5;
const SERIAL_AT: usize = 6;
const PUBLIC_KEY_AT: usize = 10;
const ISSUER_AT: usize = PUBLIC_KEY_AT + PUBLIC_KEY_LEN;

/// A decoded (not yet verified) release-key certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReleaseKeyCert {
    /// What the release key may sign.
    pub purposes: Purpose,
    /// Serial number chosen by the issuer.
    pub serial: u32,
    /// The certified release key, uncompressed SEC1.
    pub release_public_key: PublicKeyBytes,
    /// The identifier of the root that signed this certificate.
    pub issuer: KeyId,
    /// The root's ECDSA P-256 signature, `r || s`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl core::fmt::Debug for ReleaseKeyCert {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReleaseKeyCert")
            .field("purposes", &self.purposes)
            .field("serial", &self.serial)
            .field(
                "release_key",
                &KeyId::of_public_key(&self.release_public_key),
            )
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl ReleaseKeyCert {
    /// Decode a certificate, checking its framing but not its signature.
    ///
    /// The input must be exactly [`CERT_LEN`] bytes; formats that embed a certificate
    /// split it off by that length.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChainError> {
        let magic_len = bytes.len().min(CERT_MAGIC.len());
        if bytes[..magic_len] != CERT_MAGIC[..magic_len] {
            return Err(ChainError::BadMagic);
        }
        match bytes.get(4) {
            None => return Err(ChainError::Truncated),
            Some(&CERT_VERSION) => {}
            Some(_) => return Err(ChainError::UnsupportedVersion),
        }
        if bytes.len() < CERT_LEN {
            return Err(ChainError::Truncated);
        }
        if bytes.len() > CERT_LEN {
            return Err(ChainError::TrailingBytes);
        }
        let purposes = Purpose::from_bits(bytes[PURPOSE_AT]).ok_or(ChainError::BadPurpose)?;
        let mut serial = [0u8; 4];
        serial.copy_from_slice(&bytes[SERIAL_AT..PUBLIC_KEY_AT]);
        let mut release_public_key = [0u8; PUBLIC_KEY_LEN];
        release_public_key.copy_from_slice(&bytes[PUBLIC_KEY_AT..ISSUER_AT]);
        parse_public_key(&release_public_key)?;
        let mut issuer = [0u8; 8];
        issuer.copy_from_slice(&bytes[ISSUER_AT..BODY_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[BODY_LEN..CERT_LEN]);
        Ok(Self {
            purposes,
            serial: u32::from_le_bytes(serial),
            release_public_key,
            issuer: KeyId(issuer),
            signature,
        })
    }

    /// The signed part of the certificate (everything before the signature).
    pub fn body(&self) -> [u8; BODY_LEN] {
        let mut body = [0u8; BODY_LEN];
        body[..4].copy_from_slice(&CERT_MAGIC);
        body[4] = CERT_VERSION;
        body[PURPOSE_AT] = self.purposes.bits();
        body[SERIAL_AT..PUBLIC_KEY_AT].copy_from_slice(&self.serial.to_le_bytes());
        body[PUBLIC_KEY_AT..ISSUER_AT].copy_from_slice(&self.release_public_key);
        body[ISSUER_AT..BODY_LEN].copy_from_slice(&self.issuer.0);
        body
    }

    /// The certificate's bytes.
    pub fn encode(&self) -> [u8; CERT_LEN] {
        let mut bytes = [0u8; CERT_LEN];
        bytes[..BODY_LEN].copy_from_slice(&self.body());
        bytes[BODY_LEN..].copy_from_slice(&self.signature);
        bytes
    }

    /// The certified release key's identifier.
    pub fn release_key_id(&self) -> KeyId {
        KeyId::of_public_key(&self.release_public_key)
    }
}

/// Verify a release-key certificate against the installed roots and revocation list, for
/// one purpose, and return the release key it certifies.
///
/// Checks, in order: framing ([`ReleaseKeyCert::decode`]), issuer among `roots`, the
/// root's signature, the root allowed for `purpose`, the certificate granting `purpose`,
/// and neither the release key nor its root listed in `revoked`.
pub fn verify_release_key(
    cert_bytes: &[u8],
    roots: &[RootKey],
    revoked: &[KeyId],
    purpose: Purpose,
) -> Result<VerifiedReleaseKey, ChainError> {
    let cert = ReleaseKeyCert::decode(cert_bytes)?;
    let root = roots
        .iter()
        .find(|root| root.id() == cert.issuer)
        .ok_or(ChainError::UnknownRoot)?;
    let signature = Signature::from_bytes(&cert.signature.into())
        .map_err(|_| ChainError::RootSignatureInvalid)?;
    root.verifying_key()
        .multipart_verify(&[CERT_SIGNING_PREFIX, &cert_bytes[..BODY_LEN]], &signature)
        .map_err(|_| ChainError::RootSignatureInvalid)?;
    if !root.purposes().contains(purpose) {
        return Err(ChainError::RootNotAllowed);
    }
    if !cert.purposes.contains(purpose) {
        return Err(ChainError::WrongPurpose);
    }
    let id = cert.release_key_id();
    if revoked.contains(&id) || revoked.contains(&root.id()) {
        return Err(ChainError::Revoked);
    }
    let key: VerifyingKey = parse_public_key(&cert.release_public_key)?;
    Ok(VerifiedReleaseKey {
        key,
        id,
        issuer: cert.issuer,
        serial: cert.serial,
        purposes: cert.purposes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reports_the_first_framing_problem() {
        assert_eq!(ReleaseKeyCert::decode(b""), Err(ChainError::Truncated));
        assert_eq!(ReleaseKeyCert::decode(b"WK"), Err(ChainError::Truncated));
        assert_eq!(ReleaseKeyCert::decode(b"WKX"), Err(ChainError::BadMagic));
        assert_eq!(ReleaseKeyCert::decode(b"WKC1"), Err(ChainError::Truncated));
        assert_eq!(
            ReleaseKeyCert::decode(b"WKC1\x02"),
            Err(ChainError::UnsupportedVersion)
        );
        assert_eq!(
            ReleaseKeyCert::decode(b"WKC1\x01\x01"),
            Err(ChainError::Truncated)
        );
        let mut long = [0u8; CERT_LEN + 1];
        long[..5].copy_from_slice(b"WKC1\x01");
        assert_eq!(
            ReleaseKeyCert::decode(&long),
            Err(ChainError::TrailingBytes)
        );
        let mut zero_purpose = [0u8; CERT_LEN];
        zero_purpose[..5].copy_from_slice(b"WKC1\x01");
        assert_eq!(
            ReleaseKeyCert::decode(&zero_purpose),
            Err(ChainError::BadPurpose)
        );
        zero_purpose[PURPOSE_AT] = 1;
        assert_eq!(
            ReleaseKeyCert::decode(&zero_purpose),
            Err(ChainError::InvalidPublicKey)
        );
    }

    #[test]
    fn layout_offsets_match_the_readme_table() {
        assert_eq!(BODY_LEN, 83);
        assert_eq!(CERT_LEN, 147);
        assert_eq!(ISSUER_AT, 75);
    }
}
