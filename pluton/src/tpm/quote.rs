//! Making a `WPT1` quote: TPM2_Quote by the attestation key, wrapped and signed by the
//! identity key (format and checks in [`crate::quote::tpm`]).

use tss_esapi::Context;
use tss_esapi::structures::{Data, SignatureScheme};
use tss_esapi::traits::Marshall;

use crate::PlutonError;
use crate::counters::COUNTER_COUNT;
use crate::identity::SIGNATURE_LEN;
use crate::quote::attest::MAX_ATTEST_LEN;
use crate::quote::tpm::{TpmQuoteParts, attestation_key_binding_digest, envelope_digest};
use crate::quote::{AttestationQuote, MAX_NONCE_LEN, MIN_NONCE_LEN};
use crate::tpm::context::{failed, with_password};
use crate::tpm::keys::{LoadedKey, sign_digest, signature_bytes};
use crate::tpm::pcrs;

/// The attestation key and the identity's signature vouching for it (made once per
/// start: the AK is the same key for as long as the device seed is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundAttestationKey {
    pub(crate) key: LoadedKey,
    pub(crate) binding: [u8; SIGNATURE_LEN],
}

impl BoundAttestationKey {
    /// Bind `key` to the identity: sign [`attestation_key_binding_digest`] with it.
    pub(crate) fn bind(
        context: &mut Context,
        identity: &LoadedKey,
        key: LoadedKey,
    ) -> Result<Self, PlutonError> {
        let binding = sign_digest(
            context,
            identity,
            &attestation_key_binding_digest(&key.public_key),
        )?;
        Ok(Self { key, binding })
    }
}

/// What a quote reports besides the TPM's own attestation.
pub(crate) struct QuoteInputs<'a> {
    pub(crate) nonce: &'a [u8],
    pub(crate) firmware_version: u32,
    pub(crate) counters: &'a [u64; COUNTER_COUNT],
}

/// Quote into `out`, returning the quote's length.
pub(crate) fn quote(
    context: &mut Context,
    identity: &LoadedKey,
    attestation: &BoundAttestationKey,
    inputs: &QuoteInputs<'_>,
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&inputs.nonce.len()) {
        return Err(PlutonError::InvalidNonceLength);
    }
    let registers = pcrs::read(context)?;
    let qualifying_data =
        Data::try_from(inputs.nonce.to_vec()).map_err(|_| PlutonError::InvalidNonceLength)?;
    let selection = pcrs::all_registers()?;
    let (attest, signature) = with_password(context, |context| {
        context.quote(
            attestation.key.handle,
            qualifying_data,
            SignatureScheme::Null,
            selection,
        )
    })
    .map_err(failed("TPM2_Quote"))?;
    let attest = attest.marshall().map_err(failed("marshal TPMS_ATTEST"))?;
    if attest.len() > MAX_ATTEST_LEN {
        tracing::error!(
            length = attest.len(),
            "TPMS_ATTEST longer than a quote carries"
        );
        return Err(PlutonError::TpmFailed);
    }
    let attest_signature = signature_bytes(&signature)?;
    let report = AttestationQuote {
        device_id: identity.device_id(),
        firmware_version: inputs.firmware_version,
        nonce: heapless::Vec::from_slice(inputs.nonce)
            .map_err(|_| PlutonError::InvalidNonceLength)?,
        registers,
        counters: *inputs.counters,
    };
    let body_len = TpmQuoteParts {
        report: &report,
        attestation_key: &attestation.key.public_key,
        attestation_key_binding: &attestation.binding,
        attest: &attest,
        attest_signature: &attest_signature,
    }
    .encode_body(out)?;
    let envelope = sign_digest(context, identity, &envelope_digest(&out[..body_len]))?;
    out[body_len..body_len + SIGNATURE_LEN].copy_from_slice(&envelope);
    Ok(body_len + SIGNATURE_LEN)
}
