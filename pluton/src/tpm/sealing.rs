//! Sealing in the TPM: a per-blob key in a sealed data object bound to a PCR policy.
//!
//! Sealed blob, TPM format (`WTS1`):
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WTS1"` |
//! | 4 | 1 | register mask (bit *i* = bound to register *i*, PCR 8 + *i*) |
//! | 5 | 2 | private length *P* (u16 LE, ≤ 192) |
//! | 7 | *P* | `TPM2B_PRIVATE` buffer of the sealed object (encrypted by the storage key) |
//! | 7 + *P* | 2 | public length *Q* (u16 LE, ≤ 112) |
//! | 9 + *P* | *Q* | the sealed object's `TPMT_PUBLIC` (its `authPolicy` is the policy) |
//! | 9 + *P* + *Q* | *n* | a software-format blob ([`crate::sealing`], `WSB1`) under the sealed key |
//!
//! Seal: 32 random bytes become the data of a keyed-hash sealed object created
//! (`TPM2_Create`) under the storage key, with `userWithAuth` clear and `authPolicy` =
//! PolicyPCR(current values of the masked registers' PCRs) then
//! PolicyCommandCode(`TPM2_Unseal`), computed in a trial session. The plaintext is sealed
//! with that key in the software format, whose associated data binds owner, label,
//! mask and the registers' values. Unseal: load the object, satisfy the policy in a real
//! policy session (the TPM refuses if a bound PCR changed), `TPM2_Unseal` the key, open
//! the inner blob. Every refusal is `UnsealFailed`, as in the software backend.
//!
//! The storage key is derived from the device seed, so a factory reset (new seed) makes
//! old blobs unreadable here too. Sessions are unsalted: the 32-byte key crosses the
//! bus between CPU and TPM in clear (a discrete TPM's bus can be probed; a firmware
//! TPM's cannot).

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CommandCode, SessionType};
use tss_esapi::handles::{ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::PlutonError;
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::sealing::{self, MAX_SEALED_LEN, SEALED_ENVELOPE_ROOM, SealContext};
use crate::tpm::context::{failed, with_password};
use crate::tpm::keys::LoadedKey;
use crate::tpm::pcrs;

const MAGIC: &[u8; 4] = b"WTS1";
const MAX_PRIVATE_LEN: usize = 192;
const MAX_PUBLIC_LEN: usize = 112;
const ENVELOPE_MAX: usize = 9 + MAX_PRIVATE_LEN + MAX_PUBLIC_LEN;
const _: () = assert!(ENVELOPE_MAX <= SEALED_ENVELOPE_ROOM);

/// Start a policy session (`trial` only computes the digest) and run the policy: the
/// masked PCRs' current values, then "only for TPM2_Unseal".
fn policy_session(
    context: &mut Context,
    register_mask: u8,
    trial: bool,
) -> Result<AuthSession, PlutonError> {
    let session_type = if trial {
        SessionType::Trial
    } else {
        SessionType::Policy
    };
    let session = context
        .start_auth_session(
            None,
            None,
            None,
            session_type,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(failed("TPM2_StartAuthSession"))?
        .ok_or(PlutonError::TpmFailed)?;
    let result = (|| {
        let policy = PolicySession::try_from(session).map_err(failed("policy session"))?;
        if register_mask != 0 {
            context
                .policy_pcr(policy, Digest::default(), pcrs::selection(register_mask)?)
                .map_err(failed("TPM2_PolicyPCR"))?;
        }
        context
            .policy_command_code(policy, CommandCode::Unseal)
            .map_err(failed("TPM2_PolicyCommandCode"))
    })();
    match result {
        Ok(()) => Ok(session),
        Err(error) => {
            flush_session(context, session);
            Err(error)
        }
    }
}

fn flush_session(context: &mut Context, session: AuthSession) {
    let handle: ObjectHandle = SessionHandle::from(session).into();
    if let Err(error) = context.flush_context(handle) {
        tracing::warn!(%error, "flushing a policy session failed");
    }
}

fn sealed_object_template(policy: Digest) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_no_da(true)
                .with_admin_with_policy(true)
                .with_user_with_auth(false)
                .build()?,
        )
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// Seal `plaintext` under `storage` (loaded by the caller) into `out`.
pub(crate) fn seal(
    context: &mut Context,
    storage: &LoadedKey,
    sealing_context: SealContext<'_>,
    register_mask: u8,
    registers: &[Sha256Digest; REGISTER_COUNT],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    let mut rng = getrandom::SysRng;
    let key = Zeroizing::new(crate::store::random_seed(&mut rng)?);
    let trial = policy_session(context, register_mask, true)?;
    let policy = context
        .policy_get_digest(PolicySession::try_from(trial).map_err(failed("policy session"))?);
    flush_session(context, trial);
    let policy = policy.map_err(failed("TPM2_PolicyGetDigest"))?;
    let template = sealed_object_template(policy).map_err(failed("sealed object template"))?;
    let data = SensitiveData::try_from(key.to_vec()).map_err(failed("sensitive data"))?;
    let created = with_password(context, |context| {
        context.create(storage.handle, template, None, Some(data), None, None)
    })
    .map_err(failed("TPM2_Create (sealed object)"))?;
    let private = created.out_private.value().to_vec();
    let public = created
        .out_public
        .marshall()
        .map_err(failed("marshal sealed object public"))?;
    if private.len() > MAX_PRIVATE_LEN || public.len() > MAX_PUBLIC_LEN {
        tracing::error!(
            private = private.len(),
            public = public.len(),
            "sealed object larger than the blob format allows"
        );
        return Err(PlutonError::TpmFailed);
    }
    let header_len = 9 + private.len() + public.len();
    if out.len() < header_len {
        return Err(PlutonError::BufferTooSmall);
    }
    out[..4].copy_from_slice(MAGIC);
    out[4] = register_mask;
    let mut at = 5;
    for part in [&private, &public] {
        out[at..at + 2].copy_from_slice(&(part.len() as u16).to_le_bytes());
        out[at + 2..at + 2 + part.len()].copy_from_slice(part);
        at += 2 + part.len();
    }
    let inner = sealing::seal(
        &key,
        &mut rng,
        sealing_context,
        register_mask,
        registers,
        plaintext,
        &mut out[header_len..],
    )?;
    Ok(header_len + inner)
}

/// The parts of a `WTS1` blob.
struct SealedParts<'a> {
    register_mask: u8,
    private: &'a [u8],
    public: &'a [u8],
    inner: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<SealedParts<'_>, PlutonError> {
    if sealed.len() > MAX_SEALED_LEN || sealed.len() < 9 || &sealed[..4] != MAGIC {
        return Err(PlutonError::SealedBlobMalformed);
    }
    let register_mask = sealed[4];
    let mut at = 5;
    let mut take = |max: usize| -> Result<&[u8], PlutonError> {
        let length_bytes = sealed
            .get(at..at + 2)
            .ok_or(PlutonError::SealedBlobMalformed)?;
        let length = usize::from(u16::from_le_bytes([length_bytes[0], length_bytes[1]]));
        let part = sealed
            .get(at + 2..at + 2 + length)
            .filter(|_| length <= max)
            .ok_or(PlutonError::SealedBlobMalformed)?;
        at += 2 + length;
        Ok(part)
    };
    let private = take(MAX_PRIVATE_LEN)?;
    let public = take(MAX_PUBLIC_LEN)?;
    Ok(SealedParts {
        register_mask,
        private,
        public,
        inner: &sealed[at..],
    })
}

/// Open a `WTS1` blob under `storage` (loaded by the caller) into `out`.
pub(crate) fn unseal(
    context: &mut Context,
    storage: &LoadedKey,
    sealing_context: SealContext<'_>,
    registers: &[Sha256Digest; REGISTER_COUNT],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    let parts = parse(sealed)?;
    let private =
        Private::try_from(parts.private.to_vec()).map_err(|_| PlutonError::SealedBlobMalformed)?;
    let public = Public::unmarshall(parts.public).map_err(|_| PlutonError::SealedBlobMalformed)?;
    // A blob the TPM will not load (tampered, other TPM, other storage key) is as
    // unopenable as one whose policy fails.
    let object = with_password(context, |context| {
        context.load(storage.handle, private, public)
    })
    .map_err(|error| {
        tracing::warn!(%error, "TPM2_Load of a sealed object refused");
        PlutonError::UnsealFailed
    })?;
    let object: ObjectHandle = object.into();
    let key = match policy_session(context, parts.register_mask, false) {
        Ok(session) => {
            let key = context.execute_with_session(Some(session), |context| context.unseal(object));
            flush_session(context, session);
            key
        }
        Err(error) => {
            let _ = context.flush_context(object);
            return Err(error);
        }
    };
    if let Err(error) = context.flush_context(object) {
        tracing::warn!(%error, "flushing a sealed object failed");
    }
    let key = key.map_err(|error| {
        tracing::info!(%error, "TPM2_Unseal refused (policy not satisfied)");
        PlutonError::UnsealFailed
    })?;
    let key: Zeroizing<[u8; 32]> = Zeroizing::new(
        key.value()
            .try_into()
            .map_err(|_| PlutonError::UnsealFailed)?,
    );
    sealing::unseal(&key, sealing_context, registers, parts.inner, out)
}
