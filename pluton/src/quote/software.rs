//! Quote format 1 (`WPQ1`): the software backend's quote, signed by the identity key.
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

use crate::counters::COUNTER_COUNT;
use crate::identity::{IdentityKey, SIGNATURE_LEN, verify_parts};
use crate::quote::contents::{
    AttestationQuote, MAX_NONCE_LEN, MIN_NONCE_LEN, REPORT_VERSION, identity_key_of, report_len,
};
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::{PlutonError, QuoteError};

/// First four bytes of every quote.
pub const QUOTE_MAGIC: [u8; 4] = *b"WPQ1";
/// The quote format version this build writes and reads.
pub const QUOTE_VERSION: u8 = REPORT_VERSION;
/// Prefix of the message the identity key signs for a quote.
pub const QUOTE_SIGNING_PREFIX: &[u8] = b"warden-quote-v1\0";
/// Length of a quote carrying a nonce of `nonce_len` bytes.
pub const fn quote_len(nonce_len: usize) -> usize {
    report_len(nonce_len) + SIGNATURE_LEN
}

/// Length of the longest format-1 quote (64-byte nonce).
pub const MAX_SOFTWARE_QUOTE_LEN: usize = quote_len(MAX_NONCE_LEN);

impl AttestationQuote {
    /// Decode a format-1 quote's contents without verifying it (see
    /// [`crate::quote::verify_quote`]).
    pub fn decode(quote: &[u8]) -> Result<Self, QuoteError> {
        let nonce_len = Self::decode_header(quote, QUOTE_MAGIC)?;
        let expected_len = quote_len(nonce_len);
        if quote.len() < expected_len {
            return Err(QuoteError::Truncated);
        }
        if quote.len() > expected_len {
            return Err(QuoteError::TrailingBytes);
        }
        Self::decode_report(quote, nonce_len)
    }
}

/// Make and sign a quote into `out`, returning its length.
pub(crate) fn sign_quote(
    identity: &IdentityKey,
    nonce: &[u8],
    firmware_version: u32,
    registers: &[Sha256Digest; REGISTER_COUNT],
    counters: &[u64; COUNTER_COUNT],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    if out.len() < MAX_SOFTWARE_QUOTE_LEN {
        return Err(PlutonError::BufferTooSmall);
    }
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
    let body_len = contents.encode_report(QUOTE_MAGIC, out);
    let signature = identity.sign_parts(&[QUOTE_SIGNING_PREFIX, &out[..body_len]]);
    out[body_len..body_len + SIGNATURE_LEN].copy_from_slice(&signature);
    Ok(body_len + SIGNATURE_LEN)
}

/// Verify a format-1 quote (see [`crate::quote::verify_quote`]): framing, the device ID
/// derived from `public_key`, the signature, and the nonce (constant-time).
pub(crate) fn verify(
    quote: &[u8],
    public_key: &[u8],
    expected_nonce: &[u8],
) -> Result<AttestationQuote, QuoteError> {
    let contents = AttestationQuote::decode(quote)?;
    let key = identity_key_of(public_key, contents.device_id)?;
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
    if !contents.nonce_is(expected_nonce) {
        return Err(QuoteError::NonceMismatch);
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quote::contents::REPORT_HEADER_LEN;

    #[test]
    fn layout_matches_the_documented_table() {
        assert_eq!(quote_len(32), 28 + 32 + 256 + 64 + 64);
        assert_eq!(MAX_SOFTWARE_QUOTE_LEN, 476);
    }

    #[test]
    fn decode_reports_framing_problems() {
        assert_eq!(AttestationQuote::decode(b"WPX"), Err(QuoteError::BadMagic));
        assert_eq!(
            AttestationQuote::decode(b"WPQ1\x01"),
            Err(QuoteError::Truncated)
        );
        let mut header = [0u8; REPORT_HEADER_LEN];
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
