//! What a quote reports, whatever its format: the contents verifiers judge.

use subtle::ConstantTimeEq;

use crate::QuoteError;
use crate::counters::COUNTER_COUNT;
use p256::ecdsa::VerifyingKey;

use crate::identity::{DeviceId, PUBLIC_KEY_LEN, PublicKeyBytes, parse_public_key};
use crate::registers::{REGISTER_COUNT, Sha256Digest};

/// Shortest nonce a quote accepts.
pub const MIN_NONCE_LEN: usize = 32;
/// Longest nonce a quote accepts.
pub const MAX_NONCE_LEN: usize = 64;

/// Bytes the registers take in a quote.
pub(crate) const REGISTERS_LEN: usize = 32 * REGISTER_COUNT;
/// Bytes the counters take in a quote.
pub(crate) const COUNTERS_LEN: usize = 8 * COUNTER_COUNT;

/// What a quote reports (the signed contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationQuote {
    /// The device's ID (bound to the verifying key by [`crate::quote::verify_quote`]).
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

/// Format version both quote formats carry at byte 4 (each format has its own magic).
pub(crate) const REPORT_VERSION: u8 = 1;
/// Bytes before the nonce: magic, version, R, C, L, device ID, firmware version.
pub(crate) const REPORT_HEADER_LEN: usize = 28;

/// Length of the report part (header, nonce, registers, counters) of either format.
pub(crate) const fn report_len(nonce_len: usize) -> usize {
    REPORT_HEADER_LEN + nonce_len + REGISTERS_LEN + COUNTERS_LEN
}

impl AttestationQuote {
    /// Write the report part (the table's rows from the magic to the counters) into
    /// `out`, which holds at least [`report_len`] bytes; returns its length.
    pub(crate) fn encode_report(&self, magic: [u8; 4], out: &mut [u8]) -> usize {
        let nonce_len = self.nonce.len();
        out[..4].copy_from_slice(&magic);
        out[4] = REPORT_VERSION;
        out[5] = REGISTER_COUNT as u8;
        out[6] = COUNTER_COUNT as u8;
        out[7] = nonce_len as u8;
        out[8..24].copy_from_slice(&self.device_id.0);
        out[24..28].copy_from_slice(&self.firmware_version.to_le_bytes());
        let mut at = REPORT_HEADER_LEN;
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

    /// Check a quote's header against `magic` and the layout rules; returns the nonce
    /// length. Does not check the total length.
    pub(crate) fn decode_header(quote: &[u8], magic: [u8; 4]) -> Result<usize, QuoteError> {
        let magic_len = quote.len().min(4);
        if quote[..magic_len] != magic[..magic_len] {
            return Err(QuoteError::BadMagic);
        }
        if quote.len() < REPORT_HEADER_LEN {
            return Err(QuoteError::Truncated);
        }
        if quote[4] != REPORT_VERSION {
            return Err(QuoteError::UnsupportedVersion);
        }
        let nonce_len = usize::from(quote[7]);
        if usize::from(quote[5]) != REGISTER_COUNT
            || usize::from(quote[6]) != COUNTER_COUNT
            || !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce_len)
        {
            return Err(QuoteError::BadLayout);
        }
        Ok(nonce_len)
    }

    /// Read the report part of a quote whose header [`Self::decode_header`] accepted and
    /// which is at least [`report_len`] bytes long.
    pub(crate) fn decode_report(quote: &[u8], nonce_len: usize) -> Result<Self, QuoteError> {
        if quote.len() < report_len(nonce_len) {
            return Err(QuoteError::Truncated);
        }
        let mut device_id = [0u8; 16];
        device_id.copy_from_slice(&quote[8..24]);
        let mut firmware_version = [0u8; 4];
        firmware_version.copy_from_slice(&quote[24..28]);
        let mut at = REPORT_HEADER_LEN;
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

    /// Whether the reported nonce is `expected` (constant-time in the contents).
    pub(crate) fn nonce_is(&self, expected: &[u8]) -> bool {
        self.nonce.len() == expected.len() && bool::from(self.nonce.as_slice().ct_eq(expected))
    }
}

/// The identity key a quote is verified with, after checking that the quote's device
/// ID is the one derived from it.
pub(crate) fn identity_key_of(
    public_key: &[u8],
    device_id: DeviceId,
) -> Result<VerifyingKey, QuoteError> {
    let key = parse_public_key(public_key).map_err(|_| QuoteError::InvalidPublicKey)?;
    let mut public_key_bytes: PublicKeyBytes = [0u8; PUBLIC_KEY_LEN];
    public_key_bytes.copy_from_slice(public_key);
    if device_id != DeviceId::of_public_key(&public_key_bytes) {
        return Err(QuoteError::DeviceIdMismatch);
    }
    Ok(key)
}
