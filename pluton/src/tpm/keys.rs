//! The TPM's keys: the identity (signs), the attestation key (quotes), the storage key.
//!
//! All three are primary keys of the owner hierarchy, re-created at every start from a
//! template whose `unique` field comes from pluton's state file: the TPM derives a
//! primary key from its hierarchy seed and the template, so the same template gives
//! the same key and no persistent handle or NV space is needed. A new `unique` (factory
//! reset) gives a new key; the old one cannot be re-created without the old value.

use sha2::{Digest as _, Sha256};
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{
    EccSchemeAlgorithm, HashingAlgorithm, PublicAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket,
    KeyDerivationFunctionScheme, Public, PublicBuilder, PublicEccParametersBuilder, Signature,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::PlutonError;
use crate::identity::{DeviceId, PUBLIC_KEY_LEN, PublicKeyBytes, SIGNATURE_LEN};
use crate::tpm::context::{failed, with_password};

/// Which of pluton's primary keys (each has its own template and `unique` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRole {
    /// The device identity: unrestricted ECDSA P-256 signing; pluton checks the purpose.
    Identity,
    /// The attestation key: restricted ECDSA P-256 signing (signs only TPM-made data).
    Attestation,
    /// The storage key: restricted decryption, parent of sealed objects.
    Storage,
}

impl KeyRole {
    fn unique_label(self) -> &'static [u8] {
        match self {
            Self::Identity => b"warden-tpm-identity-v1\0",
            Self::Attestation => b"warden-tpm-attestation-key-v1\0",
            Self::Storage => b"warden-tpm-storage-key-v1\0",
        }
    }
}

/// A key loaded in the TPM, with its public key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedKey {
    pub(crate) handle: KeyHandle,
    pub(crate) public_key: PublicKeyBytes,
}

impl LoadedKey {
    pub(crate) fn device_id(&self) -> DeviceId {
        DeviceId::of_public_key(&self.public_key)
    }
}

/// The template of `role`'s key, its `unique` derived from `seed` (from the state file).
fn template(role: KeyRole, seed: &[u8; 32]) -> tss_esapi::Result<Public> {
    let unique: [u8; 32] = Sha256::new()
        .chain_update(role.unique_label())
        .chain_update(seed)
        .finalize()
        .into();
    let ecdsa = EccScheme::create(
        EccSchemeAlgorithm::EcDsa,
        Some(HashingAlgorithm::Sha256),
        None,
    )?;
    let (attributes, parameters) = match role {
        KeyRole::Identity | KeyRole::Attestation => {
            let restricted = role == KeyRole::Attestation;
            (
                ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_sensitive_data_origin(true)
                    .with_user_with_auth(true)
                    .with_sign_encrypt(true)
                    .with_restricted(restricted)
                    .build()?,
                PublicEccParametersBuilder::new()
                    .with_ecc_scheme(ecdsa)
                    .with_curve(EccCurve::NistP256)
                    .with_is_signing_key(true)
                    .with_restricted(restricted)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .build()?,
            )
        }
        KeyRole::Storage => (
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_decrypt(true)
                .with_restricted(true)
                .with_no_da(true)
                .build()?,
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        ),
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(unique.to_vec())?,
            EccParameter::default(),
        ))
        .build()
}

/// Create (re-create) `role`'s primary key from `seed` and load it.
pub(crate) fn create_primary(
    context: &mut Context,
    role: KeyRole,
    seed: &[u8; 32],
) -> Result<LoadedKey, PlutonError> {
    let public = template(role, seed).map_err(failed("build key template"))?;
    let created = with_password(context, |context| {
        context.create_primary(Hierarchy::Owner, public, None, None, None, None)
    })
    .map_err(failed("TPM2_CreatePrimary"))?;
    Ok(LoadedKey {
        handle: created.key_handle,
        public_key: sec1_of(&created.out_public)?,
    })
}

/// Flush a loaded key (best effort: a failure is logged; the TPM frees it at reset).
pub(crate) fn flush(context: &mut Context, key: LoadedKey) {
    if let Err(error) = context.flush_context(key.handle.into()) {
        tracing::warn!(%error, "TPM2_FlushContext failed");
    }
}

/// The uncompressed SEC1 encoding of an ECC public area.
fn sec1_of(public: &Public) -> Result<PublicKeyBytes, PlutonError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(PlutonError::TpmFailed);
    };
    let mut bytes = [0u8; PUBLIC_KEY_LEN];
    bytes[0] = 0x04;
    left_pad(unique.x().value(), &mut bytes[1..33])?;
    left_pad(unique.y().value(), &mut bytes[33..])?;
    Ok(bytes)
}

/// Copy a big-endian integer into `out`, left-padded with zeroes (the TPM may strip them).
fn left_pad(value: &[u8], out: &mut [u8]) -> Result<(), PlutonError> {
    let start = out
        .len()
        .checked_sub(value.len())
        .ok_or(PlutonError::TpmFailed)?;
    out[..start].fill(0);
    out[start..].copy_from_slice(value);
    Ok(())
}

/// An ECDSA signature from the TPM as `r ‖ s`.
pub(crate) fn signature_bytes(signature: &Signature) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
    let Signature::EcDsa(ecdsa) = signature else {
        return Err(PlutonError::TpmFailed);
    };
    let mut bytes = [0u8; SIGNATURE_LEN];
    left_pad(ecdsa.signature_r().value(), &mut bytes[..32])?;
    left_pad(ecdsa.signature_s().value(), &mut bytes[32..])?;
    Ok(bytes)
}

/// TPM2_Sign a SHA-256 `digest` with an unrestricted key. Callers hash their own
/// purpose prefix into the digest: the TPM signs whatever digest it is given.
pub(crate) fn sign_digest(
    context: &mut Context,
    key: &LoadedKey,
    digest: &[u8; 32],
) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
    let digest = Digest::try_from(digest.to_vec()).map_err(failed("digest buffer"))?;
    let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(failed("null hashcheck ticket"))?;
    let scheme = SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
    };
    let signature = with_password(context, |context| {
        context.sign(key.handle, digest, scheme, validation)
    })
    .map_err(failed("TPM2_Sign"))?;
    signature_bytes(&signature)
}
