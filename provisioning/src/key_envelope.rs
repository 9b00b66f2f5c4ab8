//! Passphrase-encrypted key files: Argon2id key derivation, XChaCha20-Poly1305.
//!
//! File format (`WCK1`), base64 inside PEM-style armour
//! (`-----BEGIN WARDEN ENCRYPTED KEY-----`):
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WCK1"` |
//! | 4 | 4 | Argon2id memory cost, KiB (u32 LE) |
//! | 8 | 4 | Argon2id time cost (u32 LE) |
//! | 12 | 4 | Argon2id parallelism (u32 LE) |
//! | 16 | 16 | salt (random) |
//! | 32 | 24 | XChaCha20 nonce (random) |
//! | 56 | n | ciphertext of the PKCS#8 DER key |
//! | 56 + n | 16 | Poly1305 tag |
//!
//! The first 56 bytes are the associated data, so the parameters cannot be changed
//! without the tag failing. A wrong passphrase and a damaged file look the same.

use base64::Engine as _;
use chacha20poly1305::{AeadInOut as _, KeyInit as _, Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"WCK1";
const HEADER_LEN: usize = 56;
const TAG_LEN: usize = 16;
const ARMOUR_BEGIN: &str = "-----BEGIN WARDEN ENCRYPTED KEY-----";
const ARMOUR_END: &str = "-----END WARDEN ENCRYPTED KEY-----";

/// Argon2id cost: 64 MiB, 3 passes, 1 lane (about a third of a second here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub time: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            time: 3,
            parallelism: 1,
        }
    }
}

/// Why a key file could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The armour, base64 or framing is wrong.
    #[error("not a Warden encrypted key file: {0}")]
    Malformed(&'static str),
    /// The passphrase is wrong (or the file was altered).
    #[error("wrong passphrase, or the key file was altered")]
    WrongPassphrase,
    /// The KDF parameters are outside what this station accepts.
    #[error("key derivation parameters refused: {0}")]
    Parameters(String),
    /// The random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    cost: KdfCost,
) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    // Refuse absurd parameters from a file before spending memory on them.
    if !(8 * 1024..=1024 * 1024).contains(&cost.memory_kib)
        || !(1..=16).contains(&cost.time)
        || !(1..=8).contains(&cost.parallelism)
    {
        return Err(EnvelopeError::Parameters(format!("{cost:?}")));
    }
    let params = argon2::Params::new(cost.memory_kib, cost.time, cost.parallelism, Some(32))
        .map_err(|error| EnvelopeError::Parameters(error.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|error| EnvelopeError::Parameters(error.to_string()))?;
    Ok(key)
}

/// Encrypt `secret` (a PKCS#8 DER key) under `passphrase`; returns the armoured file text.
pub fn seal(secret: &[u8], passphrase: &[u8], cost: KdfCost) -> Result<String, EnvelopeError> {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&cost.memory_kib.to_le_bytes());
    header[8..12].copy_from_slice(&cost.time.to_le_bytes());
    header[12..16].copy_from_slice(&cost.parallelism.to_le_bytes());
    getrandom::fill(&mut header[16..HEADER_LEN])
        .map_err(|error| EnvelopeError::Random(error.to_string()))?;
    let key = derive_key(passphrase, &header[16..32], cost)?;
    let nonce =
        XNonce::try_from(&header[32..HEADER_LEN]).map_err(|_| EnvelopeError::Malformed("nonce"))?;
    let mut body = Zeroizing::new(secret.to_vec());
    let tag = XChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(&nonce, &header, body.as_mut_slice().into())
        .map_err(|_| EnvelopeError::Malformed("key too large"))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    blob.extend_from_slice(&header);
    blob.extend_from_slice(&body);
    blob.extend_from_slice(&tag);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&blob);
    let mut text = String::from(ARMOUR_BEGIN);
    text.push('\n');
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(ARMOUR_END);
    text.push('\n');
    Ok(text)
}

/// Decrypt an armoured key file with `passphrase`; returns the PKCS#8 DER key.
pub fn open(text: &str, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let inner = text
        .trim()
        .strip_prefix(ARMOUR_BEGIN)
        .and_then(|rest| rest.strip_suffix(ARMOUR_END))
        .ok_or(EnvelopeError::Malformed("armour lines"))?;
    let compact: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| EnvelopeError::Malformed("base64"))?;
    if blob.len() < HEADER_LEN + TAG_LEN || &blob[..4] != MAGIC {
        return Err(EnvelopeError::Malformed("magic or length"));
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&blob[at..at + 4]);
        u32::from_le_bytes(bytes)
    };
    let cost = KdfCost {
        memory_kib: word(4),
        time: word(8),
        parallelism: word(12),
    };
    let (header, rest) = blob.split_at(HEADER_LEN);
    let key = derive_key(passphrase, &header[16..32], cost)?;
    let nonce =
        XNonce::try_from(&header[32..HEADER_LEN]).map_err(|_| EnvelopeError::Malformed("nonce"))?;
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let tag = Tag::try_from(tag).map_err(|_| EnvelopeError::Malformed("tag"))?;
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_inout_detached(&nonce, header, plain.as_mut_slice().into(), &tag)
        .map_err(|_| EnvelopeError::WrongPassphrase)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfCost = KdfCost {
        memory_kib: 8 * 1024,
        time: 1,
        parallelism: 1,
    };

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let text = seal(b"secret key bytes", b"correct horse", FAST).expect("seal");
        assert!(!text.contains("secret"));
        let opened = open(&text, b"correct horse").expect("open");
        assert_eq!(opened.as_slice(), b"secret key bytes");
        assert!(matches!(
            open(&text, b"wrong horse"),
            Err(EnvelopeError::WrongPassphrase)
        ));
    }

    #[test]
    fn altered_parameters_or_body_are_refused() {
        let text = seal(b"secret key bytes", b"pw", FAST).expect("seal");
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        for index in [9, 20, 40, HEADER_LEN + 2, blob.len() - 1] {
            blob[index] ^= 1;
            let altered = format!(
                "{ARMOUR_BEGIN}\n{}\n{ARMOUR_END}\n",
                base64::engine::general_purpose::STANDARD.encode(&blob)
            );
            assert!(open(&altered, b"pw").is_err(), "flip at {index} accepted");
            blob[index] ^= 1;
        }
    }
}
