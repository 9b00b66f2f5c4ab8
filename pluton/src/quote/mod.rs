//! Attestation quotes: the signed, versioned report of identity and boot state.
//!
//! Two formats, told apart by their first four bytes, both verified by [`verify_quote`]
//! with only the device's identity public key and the verifier's nonce, and both
//! reporting the same [`AttestationQuote`]:
//!
//! - `WPQ1` ([`software`]): the software backend's quote, one identity signature;
//! - `WPT1` ([`tpm`]): the TPM 2.0 backend's quote, a `TPM2_Quote` by the TPM's
//!   attestation key inside an envelope signed by the identity key.

pub mod attest;
mod contents;
pub mod software;
pub mod tpm;

pub use contents::{AttestationQuote, MAX_NONCE_LEN, MIN_NONCE_LEN};
pub use software::{
    MAX_SOFTWARE_QUOTE_LEN, QUOTE_MAGIC, QUOTE_SIGNING_PREFIX, QUOTE_VERSION, quote_len,
};

use crate::QuoteError;

/// Length of the longest quote of either format (the buffer a backend quotes into).
pub const MAX_QUOTE_LEN: usize = if tpm::MAX_TPM_QUOTE_LEN > MAX_SOFTWARE_QUOTE_LEN {
    tpm::MAX_TPM_QUOTE_LEN
} else {
    MAX_SOFTWARE_QUOTE_LEN
};

/// Verify a quote (either format) with only the device's public key and the nonce the
/// verifier sent.
///
/// Checks the framing, that the device ID is the one derived from `public_key`, that the
/// nonce equals `expected_nonce` (constant-time), and the signatures; for a TPM quote
/// also the attestation key's binding to the identity and the TPM's own attestation
/// structure (see [`tpm`]). Returns the quoted contents. What the registers and counters
/// *should* be is the verifier's policy.
pub fn verify_quote(
    quote: &[u8],
    public_key: &[u8],
    expected_nonce: &[u8],
) -> Result<AttestationQuote, QuoteError> {
    if quote.starts_with(&tpm::TPM_QUOTE_MAGIC) {
        tpm::verify(quote, public_key, expected_nonce)
    } else {
        software::verify(quote, public_key, expected_nonce)
    }
}
