//! Quote format `WPT1`: a TPM 2.0 `TPM2_Quote` inside an envelope the identity key signs.
//!
//! All integers little-endian except inside the `TPMS_ATTEST` (the TPM's big-endian
//! encoding, [`crate::quote::attest`]). *L* = nonce length (32..=64), *A* = attest length
//! (at most [`MAX_ATTEST_LEN`]); length = 607 + *L* + *A*.
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WPT1"` |
//! | 4 | 1 | format version `1` |
//! | 5 | 1 | register count *R* (`8`) |
//! | 6 | 1 | counter count *C* (`8`) |
//! | 7 | 1 | nonce length *L* |
//! | 8 | 16 | device ID |
//! | 24 | 4 | firmware version (u32) |
//! | 28 | *L* | nonce |
//! | 28 + *L* | 256 | registers 0..8 (PCRs 8..16 of the SHA-256 bank, as read) |
//! | 284 + *L* | 64 | counters 0..8 (u64, as read from TPM NV) |
//! | 348 + *L* | 65 | attestation key (AK): uncompressed SEC1 P-256 public key |
//! | 413 + *L* | 64 | AK binding: identity signature `r ‖ s` over `b"warden-tpm-ak-v1\0"` ‖ AK |
//! | 477 + *L* | 2 | attest length *A* (u16) |
//! | 479 + *L* | *A* | `TPMS_ATTEST` from `TPM2_Quote` (qualifying data = the nonce) |
//! | 479 + *L* + *A* | 64 | AK signature `r ‖ s` (ECDSA P-256 / SHA-256) over the `TPMS_ATTEST` |
//! | end − 64 | 64 | identity signature `r ‖ s` over `b"warden-tpm-quote-v1\0"` ‖ all preceding bytes |
//!
//! The AK is a restricted signing key: the TPM signs with it only structures it made
//! itself (starting with `TPM_GENERATED_VALUE`), so its signature over the attest means
//! the TPM quoted those PCRs with that nonce. The identity key (which the provisioning
//! station certified) vouches for the AK with the binding signature, and covers the
//! reported registers and counters with the envelope signature. [`verify`] checks, in
//! order: the device ID against the key, the envelope signature, the AK binding, the AK
//! signature, the attest's magic and type, the nonce (in the report and as the attest's
//! `extraData`, both constant-time), the PCR selection (exactly SHA-256 PCRs 8..16), and
//! that `pcrDigest` = SHA-256 of the reported registers in PCR order.

use p256::ecdsa::VerifyingKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::identity::{PUBLIC_KEY_LEN, PublicKeyBytes, SIGNATURE_LEN, verify_parts};
use crate::quote::attest::{MAX_ATTEST_LEN, QuoteAttest, TPM_ALG_SHA256};
use crate::quote::contents::{
    AttestationQuote, MAX_NONCE_LEN, MIN_NONCE_LEN, identity_key_of, report_len,
};
use crate::registers::REGISTER_COUNT;
use crate::{PlutonError, QuoteError};

/// First four bytes of a TPM quote.
pub const TPM_QUOTE_MAGIC: [u8; 4] = *b"WPT1";
/// Prefix of the message the identity key signs over a whole TPM quote.
pub const TPM_QUOTE_SIGNING_PREFIX: &[u8] = b"warden-tpm-quote-v1\0";
/// Prefix of the message the identity key signs to vouch for an attestation key.
pub const ATTESTATION_KEY_BINDING_PREFIX: &[u8] = b"warden-tpm-ak-v1\0";
/// The PCR that holds measurement register 0; register *i* is PCR `FIRST_REGISTER_PCR + i`
/// (8..16: the OS range, not reset while the platform runs).
pub const FIRST_REGISTER_PCR: u8 = 8;
/// The SHA-256 bank bitmap a TPM quote must select: exactly PCRs 8..16.
pub const QUOTED_PCR_BITMAP: [u8; 3] = [0x00, 0xff, 0x00];

const _: () = assert!(REGISTER_COUNT == 8 && FIRST_REGISTER_PCR == 8);

/// Length of a TPM quote with a nonce of `nonce_len` and an attest of `attest_len` bytes.
pub const fn tpm_quote_len(nonce_len: usize, attest_len: usize) -> usize {
    report_len(nonce_len) + PUBLIC_KEY_LEN + SIGNATURE_LEN + 2 + attest_len + 2 * SIGNATURE_LEN
}

/// Length of the longest TPM quote.
pub const MAX_TPM_QUOTE_LEN: usize = tpm_quote_len(MAX_NONCE_LEN, MAX_ATTEST_LEN);

/// The parts of a TPM quote before the envelope signature.
#[derive(Debug, Clone, Copy)]
pub struct TpmQuoteParts<'a> {
    /// What the quote reports (device ID, firmware version, nonce, registers, counters).
    pub report: &'a AttestationQuote,
    /// The attestation key's public key.
    pub attestation_key: &'a PublicKeyBytes,
    /// The identity's signature over [`ATTESTATION_KEY_BINDING_PREFIX`] ‖ the AK.
    pub attestation_key_binding: &'a [u8; SIGNATURE_LEN],
    /// The `TPMS_ATTEST` the TPM returned.
    pub attest: &'a [u8],
    /// The AK's signature over `attest`.
    pub attest_signature: &'a [u8; SIGNATURE_LEN],
}

impl TpmQuoteParts<'_> {
    /// Write everything the envelope signature covers into `out`; returns its length.
    /// The identity's signature over [`envelope_digest`] of those bytes goes after them.
    pub fn encode_body(&self, out: &mut [u8]) -> Result<usize, PlutonError> {
        let nonce_len = self.report.nonce.len();
        if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce_len) {
            return Err(PlutonError::InvalidNonceLength);
        }
        let attest_len = u16::try_from(self.attest.len())
            .ok()
            .filter(|&length| usize::from(length) <= MAX_ATTEST_LEN)
            .ok_or(PlutonError::BufferTooSmall)?;
        let total = tpm_quote_len(nonce_len, self.attest.len());
        if out.len() < total {
            return Err(PlutonError::BufferTooSmall);
        }
        let mut at = self.report.encode_report(TPM_QUOTE_MAGIC, out);
        for part in [
            &self.attestation_key[..],
            self.attestation_key_binding,
            &attest_len.to_le_bytes(),
            self.attest,
            self.attest_signature,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(at)
    }
}

/// The digest the identity key signs to vouch for attestation key `ak`.
pub fn attestation_key_binding_digest(ak: &PublicKeyBytes) -> [u8; 32] {
    Sha256::new()
        .chain_update(ATTESTATION_KEY_BINDING_PREFIX)
        .chain_update(ak)
        .finalize()
        .into()
}

/// The digest the identity key signs over a TPM quote's body.
pub fn envelope_digest(body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(TPM_QUOTE_SIGNING_PREFIX)
        .chain_update(body)
        .finalize()
        .into()
}

/// The digest of the registers a quote's `pcrDigest` must equal: SHA-256 of the values
/// concatenated in PCR order (what `TPM2_Quote` hashes).
fn registers_digest(report: &AttestationQuote) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for register in &report.registers {
        hasher.update(register);
    }
    hasher.finalize().into()
}

fn signature_at(bytes: &[u8], at: usize) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&bytes[at..at + SIGNATURE_LEN]);
    signature
}

/// Verify a TPM quote (see the module documentation for the checks).
pub(crate) fn verify(
    quote: &[u8],
    public_key: &[u8],
    expected_nonce: &[u8],
) -> Result<AttestationQuote, QuoteError> {
    let nonce_len = AttestationQuote::decode_header(quote, TPM_QUOTE_MAGIC)?;
    let ak_at = report_len(nonce_len);
    let binding_at = ak_at + PUBLIC_KEY_LEN;
    let attest_len_at = binding_at + SIGNATURE_LEN;
    let attest_at = attest_len_at + 2;
    if quote.len() < attest_at {
        return Err(QuoteError::Truncated);
    }
    let attest_len = usize::from(u16::from_le_bytes([
        quote[attest_len_at],
        quote[attest_len_at + 1],
    ]));
    if attest_len > MAX_ATTEST_LEN {
        return Err(QuoteError::BadLayout);
    }
    let expected_len = tpm_quote_len(nonce_len, attest_len);
    if quote.len() < expected_len {
        return Err(QuoteError::Truncated);
    }
    if quote.len() > expected_len {
        return Err(QuoteError::TrailingBytes);
    }
    let report = AttestationQuote::decode_report(quote, nonce_len)?;
    let identity = identity_key_of(public_key, report.device_id)?;

    let envelope_at = expected_len - SIGNATURE_LEN;
    if !verify_parts(
        &identity,
        &[TPM_QUOTE_SIGNING_PREFIX, &quote[..envelope_at]],
        &signature_at(quote, envelope_at),
    ) {
        return Err(QuoteError::SignatureInvalid);
    }
    let ak_bytes = &quote[ak_at..binding_at];
    if !verify_parts(
        &identity,
        &[ATTESTATION_KEY_BINDING_PREFIX, ak_bytes],
        &signature_at(quote, binding_at),
    ) {
        return Err(QuoteError::AttestationKeyBindingInvalid);
    }
    let ak = VerifyingKey::from_sec1_bytes(ak_bytes)
        .map_err(|_| QuoteError::AttestationKeyBindingInvalid)?;
    let attest = &quote[attest_at..attest_at + attest_len];
    if !verify_parts(&ak, &[attest], &signature_at(quote, attest_at + attest_len)) {
        return Err(QuoteError::AttestSignatureInvalid);
    }
    let parsed = QuoteAttest::parse(attest)?;
    let extra_data_matches = parsed.extra_data.len() == expected_nonce.len()
        && bool::from(parsed.extra_data.ct_eq(expected_nonce));
    if !report.nonce_is(expected_nonce) || !extra_data_matches {
        return Err(QuoteError::NonceMismatch);
    }
    let selection_is_registers = matches!(
        parsed.pcr_selection.as_slice(),
        [bank] if bank.hash == TPM_ALG_SHA256 && bank.bitmap == QUOTED_PCR_BITMAP
    );
    if !selection_is_registers {
        return Err(QuoteError::PcrSelectionMismatch);
    }
    if parsed.pcr_digest != registers_digest(&report) {
        return Err(QuoteError::PcrDigestMismatch);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::{Signature, SigningKey};

    use super::*;
    use crate::identity::{DeviceId, public_key_bytes};
    use crate::quote::attest::{PcrBankSelection, encode_quote_attest};
    use crate::quote::verify_quote;

    const NONCE: [u8; 32] = [0x4e; 32];

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_slice(&[byte; 32]).expect("key")
    }

    fn sign(key: &SigningKey, digest: &[u8; 32]) -> [u8; 64] {
        let signature: Signature = key.sign_prehash(digest).expect("sign");
        signature.to_bytes().into()
    }

    /// What a test quote is made of; each test changes one thing and re-signs.
    struct Recipe {
        extra_data: heapless::Vec<u8, 64>,
        bitmap: [u8; 3],
        hash: u16,
        digest: [u8; 32],
        attest_magic_break: bool,
        ak_signer: u8,
        binding_signer: u8,
    }

    fn registers() -> [[u8; 32]; REGISTER_COUNT] {
        core::array::from_fn(|index| [index as u8 + 1; 32])
    }

    impl Recipe {
        fn good() -> Self {
            let report = AttestationQuote {
                device_id: DeviceId([0; 16]),
                firmware_version: 0,
                nonce: heapless::Vec::new(),
                registers: registers(),
                counters: [0; 8],
            };
            Self {
                extra_data: heapless::Vec::from_slice(&NONCE).expect("fits"),
                bitmap: QUOTED_PCR_BITMAP,
                hash: TPM_ALG_SHA256,
                digest: registers_digest(&report),
                attest_magic_break: false,
                ak_signer: 2,
                binding_signer: 1,
            }
        }

        fn build(&self) -> (Vec<u8>, PublicKeyBytes) {
            let identity = key(1);
            let identity_public = public_key_bytes(identity.verifying_key());
            let ak = key(2);
            let ak_public = public_key_bytes(ak.verifying_key());
            let mut pcr_selection = heapless::Vec::new();
            pcr_selection
                .push(PcrBankSelection {
                    hash: self.hash,
                    bitmap: &self.bitmap,
                })
                .expect("room");
            let mut attest = [0u8; MAX_ATTEST_LEN];
            let attest_len = encode_quote_attest(
                &QuoteAttest {
                    qualified_signer: &[0, 0x0b, 1, 2, 3],
                    extra_data: &self.extra_data,
                    clock: 5,
                    reset_count: 0,
                    restart_count: 0,
                    safe: true,
                    firmware_version: 1,
                    pcr_selection,
                    pcr_digest: &self.digest,
                },
                &mut attest,
            )
            .expect("attest");
            if self.attest_magic_break {
                attest[3] ^= 1;
            }
            let attest = &attest[..attest_len];
            let report = AttestationQuote {
                device_id: DeviceId::of_public_key(&identity_public),
                firmware_version: 7,
                nonce: heapless::Vec::from_slice(&NONCE).expect("fits"),
                registers: registers(),
                counters: [3; 8],
            };
            let binding = sign(
                &key(self.binding_signer),
                &attestation_key_binding_digest(&ak_public),
            );
            let attest_digest: [u8; 32] = Sha256::digest(attest).into();
            let attest_signature = sign(&key(self.ak_signer), &attest_digest);
            let mut out = vec![0u8; MAX_TPM_QUOTE_LEN];
            let body_len = TpmQuoteParts {
                report: &report,
                attestation_key: &ak_public,
                attestation_key_binding: &binding,
                attest,
                attest_signature: &attest_signature,
            }
            .encode_body(&mut out)
            .expect("encode");
            let envelope = sign(&identity, &envelope_digest(&out[..body_len]));
            out.truncate(body_len);
            out.extend_from_slice(&envelope);
            (out, identity_public)
        }
    }

    fn check(recipe: &Recipe) -> Result<AttestationQuote, QuoteError> {
        let (quote, public_key) = recipe.build();
        verify_quote(&quote, &public_key, &NONCE)
    }

    #[test]
    fn a_well_made_quote_verifies_and_reports_its_contents() {
        let (quote, public_key) = Recipe::good().build();
        assert_eq!(quote.len(), tpm_quote_len(32, quote.len() - 607 - 32));
        let report = verify_quote(&quote, &public_key, &NONCE).expect("verifies");
        assert_eq!(report.registers, registers());
        assert_eq!(report.counters, [3; 8]);
        assert_eq!(report.firmware_version, 7);
        assert_eq!(
            verify_quote(&quote, &public_key, &[0x4f; 32]),
            Err(QuoteError::NonceMismatch)
        );
        let other = public_key_bytes(key(9).verifying_key());
        assert_eq!(
            verify_quote(&quote, &other, &NONCE),
            Err(QuoteError::DeviceIdMismatch)
        );
    }

    #[test]
    fn each_check_refuses_its_own_fault() {
        let mut recipe = Recipe::good();
        recipe.binding_signer = 3;
        assert_eq!(
            check(&recipe),
            Err(QuoteError::AttestationKeyBindingInvalid)
        );
        let mut recipe = Recipe::good();
        recipe.ak_signer = 3;
        assert_eq!(check(&recipe), Err(QuoteError::AttestSignatureInvalid));
        let mut recipe = Recipe::good();
        recipe.attest_magic_break = true;
        assert_eq!(check(&recipe), Err(QuoteError::AttestNotTpmQuote));
        let mut recipe = Recipe::good();
        recipe.extra_data[0] ^= 1;
        assert_eq!(check(&recipe), Err(QuoteError::NonceMismatch));
        let mut recipe = Recipe::good();
        recipe.bitmap = [0xff, 0x00, 0x00];
        assert_eq!(check(&recipe), Err(QuoteError::PcrSelectionMismatch));
        let mut recipe = Recipe::good();
        recipe.hash = 0x0004;
        assert_eq!(check(&recipe), Err(QuoteError::PcrSelectionMismatch));
        let mut recipe = Recipe::good();
        recipe.digest[0] ^= 1;
        assert_eq!(check(&recipe), Err(QuoteError::PcrDigestMismatch));
    }

    #[test]
    fn every_bit_flip_and_truncation_is_refused() {
        let (quote, public_key) = Recipe::good().build();
        for bit in 0..quote.len() * 8 {
            let mut flipped = quote.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                verify_quote(&flipped, &public_key, &NONCE).is_err(),
                "bit {bit}"
            );
        }
        for cut in 0..quote.len() {
            assert!(verify_quote(&quote[..cut], &public_key, &NONCE).is_err());
        }
    }
}
