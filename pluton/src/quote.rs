//! Attestation quotes: the signed, versioned report of identity and boot state.
//!
//! Quote, format version 1 (all integers little-endian):
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WPQ1"` |
//! | 4 | 1 | format version `1` |
//! | 5 | 1 | register count *R* (`8` in v1) |
//! | 6 | 1 | counter count *C* (`8` in v1) |
//! | 7 | 1 | nonce length *L* (`32..=64`) |
//! | 8 | 16 | device ID |
//! | 24 | 4 | firmware version (u32) |
//! | 28 | *L* | nonce (chosen by the verifier, fresh per challenge) |
//! | 28 + *L* | 32 × *R* | measurement registers 0..R |
//! | 28 + *L* + 32*R* | 8 × *C* | monotonic counters 0..C (u64) |
//! | end − 64 | 64 | signature `r ‖ s` |
//!
//! The signature is ECDSA P-256 / SHA-256 by the identity key over
//! `b"warden-quote-v1\0" ‖ every byte before the signature`. Nothing else pluton signs
//! starts with that prefix, so a quote signature cannot be obtained through another
//! operation, nor another signature passed off as a quote.

use subtle::ConstantTimeEq;

use crate::counters::COUNTER_COUNT;
use crate::identity::{
    DeviceId, IdentityKey, PublicKeyBytes, SIGNATURE_LEN, parse_public_key, verify_parts,
};
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::{PlutonError, QuoteError};

/// First four bytes of every quote.
pub const QUOTE_MAGIC: [u8; 4] = *b"WPQ1";
/// The quote format version this build writes and reads.
pub const QUOTE_VERSION: u8 = 1;
/// Prefix of the message the identity key signs for a quote.
pub const QUOTE_SIGNING_PREFIX: &[u8] = b"warden-quote-v1\0";
/// Shortest nonce a quote accepts.
pub const MIN_NONCE_LEN: usize = 32;
/// Longest nonce a quote accepts.
pub const MAX_NONCE_LEN: usize = 64;

const FIXED_HEADER_LEN: usize = 28;
const REGISTERS_LEN: usize = 32 * REGISTER_COUNT;
const COUNTERS_LEN: usize = 8 * COUNTER_COUNT;

/// Length of a quote carrying a nonce of `nonce_len` bytes.
pub const fn quote_len(nonce_len: usize) -> usize {
    FIXED_HEADER_LEN + nonce_len + REGISTERS_LEN + COUNTERS_LEN + SIGNATURE_LEN
}

/// Length of the longest quote (64-byte nonce).
pub const MAX_QUOTE_LEN: usize = quote_len(MAX_NONCE_LEN);

/// What a quote reports (the signed contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationQuote {
    /// The device's ID (bound to the verifying key by [`verify_quote`]).
    pub device_id: DeviceId,
    /// The firmware version the security monitor reported when pluton started.
    pub firmware_version: u32,
    /// The verifier's nonce.
    pub nonce: heapless::Vec<u8, MAX_NONCE_LEN>,
    /// The measurement registers when the quote was made.
    pub registers: [Sha256Digest; REGISTER_COUNT],
    /// The monotonic counters when the quote was made.
    pub counters: [u64; COUNTER_COUNT],
}

impl AttestationQuote {
    /// Encode the signed body into `out`, returning its length (signature not included).
    fn encode_body(&self, out: &mut [u8; MAX_QUOTE_LEN]) -> usize {
        let nonce_len = self.nonce.len();
        out[..4].copy_from_slice(&QUOTE_MAGIC);
        out[4] = QUOTE_VERSION;
        out[5] = REGISTER_COUNT as u8;
        out[6] = COUNTER_COUNT as u8;
        out[7] = nonce_len as u8;
        out[8..24].copy_from_slice(&self.device_id.0);
        out[24..28].copy_from_slice(&self.firmware_version.to_le_bytes());
        let mut at = FIXED_HEADER_LEN;
        out[at..at + nonce_len].copy_from_slice(&self.nonce);
        at += nonce_len;
        for register in &self.registers {
            out[at..at + 32].copy_from_slice(register);
            at += 32;
        }
        for counter in &self.counters {
            out[at..at + 8].copy_from_slice(&counter.to_le_bytes());
            at += 8;
        }
        at
    }

    /// Decode a quote's contents without verifying it (see [`verify_quote`]).
    pub fn decode(quote: &[u8]) -> Result<Self, QuoteError> {
        let magic_len = quote.len().min(4);
        if quote[..magic_len] != QUOTE_MAGIC[..magic_len] {
            return Err(QuoteError::BadMagic);
        }
        if quote.len() < FIXED_HEADER_LEN {
            return Err(QuoteError::Truncated);
        }
        if quote[4] != QUOTE_VERSION {
            return Err(QuoteError::UnsupportedVersion);
        }
        let nonce_len = usize::from(quote[7]);
        if usize::from(quote[5]) != REGISTER_COUNT
            || usize::from(quote[6]) != COUNTER_COUNT
            || !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce_len)
        {
            return Err(QuoteError::BadLayout);
        }
        let expected_len = quote_len(nonce_len);
        if quote.len() < expected_len {
            return Err(QuoteError::Truncated);
        }
        if quote.len() > expected_len {
            return Err(QuoteError::TrailingBytes);
        }
        let mut device_id = [0u8; 16];
        device_id.copy_from_slice(&quote[8..24]);
        let mut firmware_version = [0u8; 4];
        firmware_version.copy_from_slice(&quote[24..28]);
        let mut at = FIXED_HEADER_LEN;
        let nonce = heapless::Vec::from_slice(&quote[at..at + nonce_len])
            .map_err(|_| QuoteError::BadLayout)?;
        at += nonce_len;
        let mut registers = [[0u8; 32]; REGISTER_COUNT];
        for register in &mut registers {
            register.copy_from_slice(&quote[at..at + 32]);
            at += 32;
        }
        let mut counters = [0u64; COUNTER_COUNT];
        for counter in &mut counters {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&quote[at..at + 8]);
            *counter = u64::from_le_bytes(bytes);
            at += 8;
        }
        Ok(Self {
            device_id: DeviceId(device_id),
            firmware_version: u32::from_le_bytes(firmware_version),
            nonce,
            registers,
            counters,
        })
    }
}

/// Make and sign a quote into `out`, returning its length.
pub(crate) fn sign_quote(
    identity: &IdentityKey,
    nonce: &[u8],
    firmware_version: u32,
    registers: &[Sha256Digest; REGISTER_COUNT],
    counters: &[u64; COUNTER_COUNT],
    out: &mut [u8; MAX_QUOTE_LEN],
) -> Result<usize, PlutonError> {
    if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        return Err(PlutonError::InvalidNonceLength);
    }
    let contents = AttestationQuote {
        device_id: identity.device_id(),
        firmware_version,
        nonce: heapless::Vec::from_slice(nonce).map_err(|_| PlutonError::InvalidNonceLength)?,
        registers: *registers,
        counters: *counters,
    };
    let body_len = contents.encode_body(out);
    let signature = identity.sign_parts(&[QUOTE_SIGNING_PREFIX, &out[..body_len]]);
    out[body_len..body_len + SIGNATURE_LEN].copy_from_slice(&signature);
    Ok(body_len + SIGNATURE_LEN)
}

/// Verify a quote with only the device's public key and the nonce the verifier sent.
///
/// Checks the framing, that the device ID is the one derived from `public_key`, that the
/// nonce equals `expected_nonce`, and the signature; returns the quoted contents. What
/// the registers and counters *should* be is the verifier's policy.
pub fn verify_quote(
    quote: &[u8],
    public_key: &[u8],
    expected_nonce: &[u8],
) -> Result<AttestationQuote, QuoteError> {
    let contents = AttestationQuote::decode(quote)?;
    let key = parse_public_key(public_key).map_err(|_| QuoteError::InvalidPublicKey)?;
    let mut public_key_bytes: PublicKeyBytes = [0u8; 65];
    public_key_bytes.copy_from_slice(public_key);
    if contents.device_id != DeviceId::of_public_key(&public_key_bytes) {
        return Err(QuoteError::DeviceIdMismatch);
    }
    let body_len = quote.len() - SIGNATURE_LEN;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&quote[body_len..]);
    if !verify_parts(
        &key,
        &[QUOTE_SIGNING_PREFIX, &quote[..body_len]],
        &signature,
    ) {
        return Err(QuoteError::SignatureInvalid);
    }
    let nonce_matches = contents.nonce.len() == expected_nonce.len()
        && bool::from(contents.nonce.as_slice().ct_eq(expected_nonce));
    if !nonce_matches {
        return Err(QuoteError::NonceMismatch);
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documented_table() {
        assert_eq!(quote_len(32), 28 + 32 + 256 + 64 + 64);
        assert_eq!(MAX_QUOTE_LEN, 476);
    }

    #[test]
    fn decode_reports_framing_problems() {
        assert_eq!(AttestationQuote::decode(b"WPX"), Err(QuoteError::BadMagic));
        assert_eq!(
            AttestationQuote::decode(b"WPQ1\x01"),
            Err(QuoteError::Truncated)
        );
        let mut header = [0u8; FIXED_HEADER_LEN];
        header[..4].copy_from_slice(&QUOTE_MAGIC);
        header[4] = 2;
        assert_eq!(
            AttestationQuote::decode(&header),
            Err(QuoteError::UnsupportedVersion)
        );
        header[4] = 1;
        header[5] = 8;
        header[6] = 8;
        header[7] = 31;
        assert_eq!(
            AttestationQuote::decode(&header),
            Err(QuoteError::BadLayout)
        );
        header[7] = 32;
        assert_eq!(
            AttestationQuote::decode(&header),
            Err(QuoteError::Truncated)
        );
        header[5] = 9;
        assert_eq!(
            AttestationQuote::decode(&header),
            Err(QuoteError::BadLayout)
        );
    }
}
