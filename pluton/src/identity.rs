//! The device identity key pair, the device ID, and ECDSA P-256 verification.

use core::fmt;

use p256::ecdsa::signature::{MultipartSigner, MultipartVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use rand_core::TryCryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::PlutonError;

/// Length of an uncompressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;

/// Length of a fixed-size ECDSA P-256 signature (`r || s`).
pub const SIGNATURE_LEN: usize = 64;

/// An uncompressed SEC1 P-256 public key (`0x04 || X || Y`).
pub type PublicKeyBytes = [u8; PUBLIC_KEY_LEN];

/// Prefix hashed before the public key to derive the device ID.
const DEVICE_ID_PREFIX: &[u8] = b"warden-device-id-v1\0";

/// The TLS 1.3 context string of a client CertificateVerify (RFC 8446, section 4.4.3).
const TLS13_CLIENT_CONTEXT: &[u8] = b"TLS 1.3, client CertificateVerify";

/// The device's stable identifier: the first 16 bytes of
/// SHA-256(`"warden-device-id-v1\0"` || uncompressed public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceId(pub [u8; 16]);

impl DeviceId {
    /// The device ID belonging to an identity public key.
    pub fn of_public_key(public_key: &PublicKeyBytes) -> Self {
        let digest = Sha256::new()
            .chain_update(DEVICE_ID_PREFIX)
            .chain_update(public_key)
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// The identity key pair held inside pluton. No method returns the private key, except
/// the crate-private one used to persist it in the store.
pub(crate) struct IdentityKey {
    key: SigningKey,
    public_key: PublicKeyBytes,
    device_id: DeviceId,
}

impl IdentityKey {
    /// A fresh identity from pluton's random number generator.
    pub(crate) fn generate<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<Self, PlutonError> {
        let key = SigningKey::try_generate_from_rng(rng).map_err(|_| PlutonError::RandomFailed)?;
        Ok(Self::from_signing_key(key))
    }

    /// The identity stored as a 32-byte big-endian scalar.
    pub(crate) fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, PlutonError> {
        let key = SigningKey::from_slice(secret).map_err(|_| PlutonError::StoreCorrupt)?;
        Ok(Self::from_signing_key(key))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let public_key = public_key_bytes(key.verifying_key());
        Self {
            key,
            device_id: DeviceId::of_public_key(&public_key),
            public_key,
        }
    }

    /// The private scalar, for persisting in the store only.
    pub(crate) fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&self.key.to_bytes());
        bytes
    }

    pub(crate) fn public_key(&self) -> &PublicKeyBytes {
        &self.public_key
    }

    pub(crate) fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// ECDSA P-256 / SHA-256 over the concatenation of `parts`.
    ///
    /// Crate-private: every caller prefixes its own domain, so pluton is never a generic
    /// signing oracle.
    pub(crate) fn sign_parts(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        let signature: Signature = self.key.multipart_sign(parts);
        signature.to_bytes().into()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// The uncompressed SEC1 encoding of a verifying key.
pub(crate) fn public_key_bytes(key: &VerifyingKey) -> PublicKeyBytes {
    let point = key.to_sec1_point(false);
    let mut bytes = [0u8; PUBLIC_KEY_LEN];
    bytes.copy_from_slice(point.as_bytes());
    bytes
}

/// Parse an uncompressed SEC1 P-256 public key.
pub(crate) fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, PlutonError> {
    if bytes.len() != PUBLIC_KEY_LEN || bytes[0] != 0x04 {
        return Err(PlutonError::InvalidPublicKey);
    }
    VerifyingKey::from_sec1_bytes(bytes).map_err(|_| PlutonError::InvalidPublicKey)
}

/// Verify an ECDSA P-256 / SHA-256 signature (`r || s`) over the concatenation of `parts`.
pub(crate) fn verify_parts(
    key: &VerifyingKey,
    parts: &[&[u8]],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    match Signature::from_bytes(signature.into()) {
        Ok(signature) => key.multipart_verify(parts, &signature).is_ok(),
        Err(_) => false,
    }
}

/// Verify a plain ECDSA P-256 / SHA-256 signature (`r || s`, 64 bytes) over `message`
/// with an uncompressed SEC1 public key. Needs no secret; usable anywhere.
pub fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<bool, PlutonError> {
    let key = parse_public_key(public_key)?;
    Ok(verify_parts(&key, &[message], signature))
}

/// Whether `message` is exactly a TLS 1.3 client CertificateVerify content: 64 bytes of
/// 0x20, the context string `TLS 1.3, client CertificateVerify`, one 0x00, and a
/// transcript hash of 32 (SHA-256) or 48 (SHA-384) bytes.
pub fn is_tls13_client_certificate_verify(message: &[u8]) -> bool {
    let fixed = 64 + TLS13_CLIENT_CONTEXT.len() + 1;
    let hash_len = message.len().saturating_sub(fixed);
    message.len() > fixed
        && (hash_len == 32 || hash_len == 48)
        && message[..64].iter().all(|&byte| byte == 0x20)
        && &message[64..64 + TLS13_CLIENT_CONTEXT.len()] == TLS13_CLIENT_CONTEXT
        && message[fixed - 1] == 0
}

/// DER `SubjectPublicKeyInfo` of an uncompressed P-256 key, up to the key's 65 bytes:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (no unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// One DER element at the start of `bytes`: tag, contents, rest. Single-byte tags and
/// definite lengths of at most two length bytes (all a certification request needs).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Whether `info` is exactly a DER PKCS#10 CertificationRequestInfo (RFC 2986) of
/// version 0 whose subjectPublicKeyInfo is `public_key` (P-256): SEQUENCE { INTEGER 0,
/// Name, SubjectPublicKeyInfo, [0] attributes }, nothing before or after. Pluton signs
/// such a request and nothing else with the identity key, so the key's signatures stay
/// TLS handshakes and requests to certify that very key.
pub fn is_certificate_request_info_for(info: &[u8], public_key: &PublicKeyBytes) -> bool {
    const SEQUENCE: u8 = 0x30;
    const ATTRIBUTES: u8 = 0xa0;
    let Some((SEQUENCE, body, [])) = der_element(info) else {
        return false;
    };
    let Some(rest) = body.strip_prefix(&[0x02, 0x01, 0x00]) else {
        return false;
    };
    let Some((SEQUENCE, _subject, rest)) = der_element(rest) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(&P256_SPKI_PREFIX) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(public_key.as_slice()) else {
        return false;
    };
    matches!(der_element(rest), Some((ATTRIBUTES, _, [])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (index, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).expect("hex");
        }
        out
    }

    // RFC 6979, appendix A.2.5: ECDSA, 256 bits (prime field), SHA-256.
    const RFC6979_X: &str = "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721";
    const RFC6979_UX: &str = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6";
    const RFC6979_UY: &str = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299";

    fn rfc6979_public_key() -> PublicKeyBytes {
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key[0] = 4;
        key[1..33].copy_from_slice(&hex(RFC6979_UX));
        key[33..].copy_from_slice(&hex(RFC6979_UY));
        key
    }

    fn rs(r: &str, s: &str) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&hex(r));
        signature[32..].copy_from_slice(&hex(s));
        signature
    }

    #[test]
    fn rfc6979_known_answers_sign_and_verify() {
        let identity = IdentityKey::from_secret_bytes(&hex(RFC6979_X)).expect("key");
        assert_eq!(identity.public_key(), &rfc6979_public_key());
        let cases = [
            (
                &b"sample"[..],
                "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
                "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
            ),
            (
                &b"test"[..],
                "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
                "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
            ),
        ];
        for (message, r, s) in cases {
            let expected = rs(r, s);
            // Deterministic (RFC 6979) signing reproduces the published signature...
            assert_eq!(identity.sign_parts(&[message]), expected);
            // ...and the public verifier accepts it, and rejects a flipped bit.
            assert_eq!(
                verify_signature(&rfc6979_public_key(), message, &expected),
                Ok(true)
            );
            let mut flipped = expected;
            flipped[40] ^= 0x10;
            assert_eq!(
                verify_signature(&rfc6979_public_key(), message, &flipped),
                Ok(false)
            );
        }
    }

    #[test]
    fn device_id_is_derived_from_the_public_key() {
        let key = rfc6979_public_key();
        let mut other = key;
        other[64] ^= 1;
        assert_ne!(
            DeviceId::of_public_key(&key),
            DeviceId::of_public_key(&other)
        );
        assert_eq!(DeviceId::of_public_key(&key), DeviceId::of_public_key(&key));
    }

    /// A CertificationRequestInfo as rcgen writes one: version 0, CN = `wd-1`, the key,
    /// no attributes.
    fn request_info(public_key: &PublicKeyBytes) -> Vec<u8> {
        let subject = [
            0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b'w',
            b'd', b'-', b'1',
        ];
        let mut body = vec![0x02, 0x01, 0x00];
        body.extend_from_slice(&subject);
        body.extend_from_slice(&P256_SPKI_PREFIX);
        body.extend_from_slice(public_key);
        body.extend_from_slice(&[0xa0, 0x00]);
        let mut info = vec![0x30, 0x81, u8::try_from(body.len()).expect("short")];
        info.extend_from_slice(&body);
        info
    }

    #[test]
    fn only_a_request_for_the_identity_key_is_a_certificate_request() {
        let key = rfc6979_public_key();
        let info = request_info(&key);
        assert!(is_certificate_request_info_for(&info, &key));
        // Another key, trailing or missing bytes, another version, a TLS message: no.
        let mut other = key;
        other[64] ^= 1;
        assert!(!is_certificate_request_info_for(&info, &other));
        let mut trailing = info.clone();
        trailing.push(0);
        assert!(!is_certificate_request_info_for(&trailing, &key));
        assert!(!is_certificate_request_info_for(
            &info[..info.len() - 1],
            &key
        ));
        let mut version = info.clone();
        version[5] = 1;
        assert!(!is_certificate_request_info_for(&version, &key));
        let mut tls = vec![0x20; 64];
        tls.extend_from_slice(TLS13_CLIENT_CONTEXT);
        tls.push(0);
        tls.extend_from_slice(&[7; 32]);
        assert!(!is_certificate_request_info_for(&tls, &key));
        assert!(!is_certificate_request_info_for(b"", &key));
    }

    #[test]
    fn tls13_client_certificate_verify_shape_is_enforced() {
        let mut message = [0x20u8; 64 + 33 + 1 + 32].to_vec();
        message[64..97].copy_from_slice(TLS13_CLIENT_CONTEXT);
        message[97] = 0;
        assert!(is_tls13_client_certificate_verify(&message));
        let mut sha384 = message.clone();
        sha384.extend_from_slice(&[1u8; 16]);
        assert!(is_tls13_client_certificate_verify(&sha384));
        let mut server = message.clone();
        server[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
        assert!(!is_tls13_client_certificate_verify(&server));
        let mut bad_pad = message.clone();
        bad_pad[3] = 0x21;
        assert!(!is_tls13_client_certificate_verify(&bad_pad));
        let mut no_zero = message.clone();
        no_zero[97] = 1;
        assert!(!is_tls13_client_certificate_verify(&no_zero));
        assert!(!is_tls13_client_certificate_verify(
            &message[..message.len() - 1]
        ));
        assert!(!is_tls13_client_certificate_verify(&[0u8; 32]));
        assert!(!is_tls13_client_certificate_verify(b""));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let identity = IdentityKey::from_secret_bytes(&hex(RFC6979_X)).expect("key");
        let debug = format!("{identity:?}");
        assert!(
            !debug
                .to_lowercase()
                .contains(&RFC6979_X.to_lowercase()[..16])
        );
        assert!(debug.contains("device_id"));
    }
}
