//! The TPM 2.0 backend: [`TpmPluton`], the same [`RootOfTrust`] on a TPM (or swtpm).
//!
//! What lives where (the README's "TPM 2.0 backend" has the reasons):
//!
//! - in the TPM: the identity key, the attestation key and the storage key (primary keys
//!   of the owner hierarchy, [`keys`]), the measurement registers (PCRs 8..16,
//!   [`pcrs`]), the counters (NV indices, [`nv_counters`]), the sealed keys
//!   ([`sealing`]);
//! - in pluton's state file ([`crate::store`], the same record as the software
//!   backend): the `unique` seed of the identity key's template (in the record's
//!   identity field: whoever has it and the TPM can re-create the key), the device seed
//!   (seeds the attestation and storage keys' templates), the provisioning capability's
//!   digest, the vendor roots and the manufacturing lock. The record's counters stay 0.
//! - in pluton's memory: the boot latch (a TPM locality would be the hardware's way,
//!   but swtpm's socket TCTI and `/dev/tpmrm0` both give locality 0 only).

mod context;
mod error;
mod keys;
pub mod nv_counters;
mod pcrs;
mod quote;
mod sealing;

use std::sync::{Mutex, PoisonError};

use sha2::{Digest as _, Sha256};
use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::structures::CapabilityData;

use crate::PlutonError;
use crate::backend::{IdentityInfo, RootOfTrust, StatusInfo};
use crate::byte_array::ByteArray;
use crate::capability::ProvisioningCapability;
use crate::counters::COUNTER_COUNT;
use crate::identity::{
    SIGNATURE_LEN, is_certificate_request_info_for, is_tls13_client_certificate_verify,
};
use crate::quote::MAX_QUOTE_LEN;
use crate::registers::{REGISTER_COUNT, Sha256Digest, check_extend};
use crate::sealing::{SealContext, SealOwner};
use crate::store::{
    InstalledRootKey, MAX_ROOT_KEYS, PersistentState, StateStore, load_or_create_state, persist,
    random_seed,
};
pub use error::TpmError;
use keys::{KeyRole, LoadedKey};
use nv_counters::NvCounters;
use quote::{BoundAttestationKey, QuoteInputs};

/// The TPM session: the ESAPI context and the registers as last read.
struct Tpm {
    context: Context,
    last_registers: [Sha256Digest; REGISTER_COUNT],
}

/// The root of trust on a TPM 2.0: keys, registers, counters and sealing in the TPM;
/// the non-secret provisioning state in a [`StateStore`].
pub struct TpmPluton<S> {
    tpm: Mutex<Tpm>,
    store: S,
    state: PersistentState,
    identity: Option<LoadedKey>,
    attestation: Option<BoundAttestationKey>,
    counters: NvCounters,
    counter_values: [u64; COUNTER_COUNT],
    boot_latched: bool,
    firmware_version: u32,
}

impl<S> core::fmt::Debug for TpmPluton<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TpmPluton")
            .field(
                "device_id",
                &self.identity.as_ref().map(LoadedKey::device_id),
            )
            .field("firmware_version", &self.firmware_version)
            .finish_non_exhaustive()
    }
}

/// Flush transient objects a previous pluton left loaded (killed before its `Drop`): a
/// TPM without a resource manager (swtpm's socket, `/dev/tpm0`) keeps them, and it
/// holds only a few (three in swtpm).
fn flush_leftover_objects(context: &mut Context) {
    let handles = match context.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 16) {
        Ok((CapabilityData::Handles(handles), _)) => handles.into_inner(),
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot list transient objects");
            return;
        }
    };
    for handle in handles {
        match context.tr_from_tpm_public(handle) {
            Ok(object) => {
                if let Err(error) = context.flush_context(object) {
                    tracing::warn!(%error, "cannot flush a leftover transient object");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot open a leftover transient object"),
        }
    }
}

impl<S: StateStore> TpmPluton<S> {
    /// Start pluton on the TPM behind `tcti`, with its state in `store` (created on
    /// first start; `on_new_capability` as for [`crate::SoftwarePluton::open`]).
    pub fn open(
        tcti: &str,
        mut store: S,
        firmware_version: u32,
        on_new_capability: impl FnOnce(&ProvisioningCapability) -> Result<(), PlutonError>,
    ) -> Result<Self, TpmError> {
        let mut context = context::open_context(tcti)?;
        flush_leftover_objects(&mut context);
        let state = load_or_create_state(&mut store, &mut getrandom::SysRng, on_new_capability)
            .map_err(TpmError::Start)?;
        let counters = NvCounters::open(&mut context).map_err(TpmError::Start)?;
        let counter_values = counters.read_all(&mut context).map_err(TpmError::Start)?;
        let identity = match &state.identity_secret {
            Some(unique) => Some(
                keys::create_primary(&mut context, KeyRole::Identity, &unique.0)
                    .map_err(TpmError::Start)?,
            ),
            None => None,
        };
        let last_registers = pcrs::read(&mut context).map_err(TpmError::Start)?;
        Ok(Self {
            tpm: Mutex::new(Tpm {
                context,
                last_registers,
            }),
            store,
            state,
            identity,
            attestation: None,
            counters,
            counter_values,
            boot_latched: false,
            firmware_version,
        })
    }

    fn context(&mut self) -> &mut Context {
        &mut self
            .tpm
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .context
    }

    fn identity_key(&self) -> Result<LoadedKey, PlutonError> {
        self.identity.ok_or(PlutonError::NoIdentity)
    }

    fn commit(&mut self, next: PersistentState) -> Result<(), PlutonError> {
        persist(&mut self.store, &next)?;
        self.state = next;
        Ok(())
    }

    /// Free the attestation key's slot (the TPM holds few objects; sealing needs two).
    fn unload_attestation_key(&mut self) {
        if let Some(attestation) = self.attestation.take() {
            keys::flush(self.context(), attestation.key);
        }
    }

    /// The attestation key, created and bound on first use.
    fn attestation_key(&mut self) -> Result<BoundAttestationKey, PlutonError> {
        if let Some(attestation) = self.attestation {
            return Ok(attestation);
        }
        let identity = self.identity_key()?;
        let seed = self.state.device_seed.0;
        let context = self.context();
        let key = keys::create_primary(context, KeyRole::Attestation, &seed)?;
        match BoundAttestationKey::bind(context, &identity, key) {
            Ok(bound) => {
                self.attestation = Some(bound);
                Ok(bound)
            }
            Err(error) => {
                keys::flush(context, key);
                Err(error)
            }
        }
    }

    /// Run `operation` with the storage key loaded (and the attestation key unloaded).
    fn with_storage_key<T>(
        &mut self,
        operation: impl FnOnce(
            &mut Context,
            &LoadedKey,
            &[Sha256Digest; REGISTER_COUNT],
        ) -> Result<T, PlutonError>,
    ) -> Result<T, PlutonError> {
        self.unload_attestation_key();
        let seed = self.state.device_seed.0;
        let context = self.context();
        let registers = pcrs::read(context)?;
        let storage = keys::create_primary(context, KeyRole::Storage, &seed)?;
        let result = operation(context, &storage, &registers);
        keys::flush(context, storage);
        result
    }
}

impl<S> Drop for TpmPluton<S> {
    fn drop(&mut self) {
        let tpm = self.tpm.get_mut().unwrap_or_else(PoisonError::into_inner);
        let loaded = self
            .identity
            .take()
            .into_iter()
            .chain(self.attestation.take().map(|attestation| attestation.key));
        for key in loaded {
            keys::flush(&mut tpm.context, key);
        }
    }
}

impl<S: StateStore> RootOfTrust for TpmPluton<S> {
    fn status(&self) -> StatusInfo {
        StatusInfo {
            device_id: self.identity.as_ref().map(LoadedKey::device_id),
            manufacturing_locked: self.state.manufacturing_locked,
            firmware_version: self.firmware_version,
            root_key_count: self.state.roots.len() as u8,
        }
    }

    fn identity(&self) -> Result<IdentityInfo, PlutonError> {
        let identity = self.identity_key()?;
        Ok(IdentityInfo {
            public_key: ByteArray(identity.public_key),
            device_id: identity.device_id(),
        })
    }

    fn create_identity(
        &mut self,
        factory_reset: Option<&ProvisioningCapability>,
    ) -> Result<IdentityInfo, PlutonError> {
        let mut rng = getrandom::SysRng;
        let mut next =
            self.state
                .for_new_identity(factory_reset, self.identity.is_some(), &mut rng)?;
        let unique = random_seed(&mut rng)?;
        next.identity_secret = Some(ByteArray(unique));
        let context = self.context();
        let key = keys::create_primary(context, KeyRole::Identity, &unique)?;
        if let Err(error) = self.commit(next) {
            keys::flush(self.context(), key);
            return Err(error);
        }
        // The old identity (and the AK it vouched for, whose seed may have changed) go.
        self.unload_attestation_key();
        if let Some(old) = self.identity.replace(key) {
            keys::flush(self.context(), old);
        }
        self.identity()
    }

    fn install_root_key(
        &mut self,
        capability: &ProvisioningCapability,
        root: InstalledRootKey,
    ) -> Result<(), PlutonError> {
        let next = self.state.with_root_key(capability, root)?;
        self.commit(next)
    }

    fn root_keys(&self) -> heapless::Vec<InstalledRootKey, MAX_ROOT_KEYS> {
        self.state.roots.clone()
    }

    fn lock_manufacturing(
        &mut self,
        capability: &ProvisioningCapability,
    ) -> Result<(), PlutonError> {
        match self.state.locked(capability)? {
            Some(next) => self.commit(next),
            None => Ok(()),
        }
    }

    fn check_provisioning_capability(
        &self,
        capability: &ProvisioningCapability,
    ) -> Result<(), PlutonError> {
        capability.check(&self.state.capability_digest.0)
    }

    fn extend_register(
        &mut self,
        index: u8,
        measurement: &Sha256Digest,
    ) -> Result<(), PlutonError> {
        check_extend(self.boot_latched, index)?;
        pcrs::extend(self.context(), index, measurement)
    }

    fn end_boot(&mut self) {
        self.boot_latched = true;
    }

    fn boot_latched(&self) -> bool {
        self.boot_latched
    }

    fn registers(&self) -> [Sha256Digest; REGISTER_COUNT] {
        let mut tpm = self.tpm.lock().unwrap_or_else(PoisonError::into_inner);
        match pcrs::read(&mut tpm.context) {
            Ok(registers) => {
                tpm.last_registers = registers;
                registers
            }
            // The trait has no error here; the last values read are the best answer
            // (a quote reads the PCRs itself and fails properly).
            Err(_) => tpm.last_registers,
        }
    }

    fn counters(&self) -> [u64; COUNTER_COUNT] {
        // Pluton is the indices' only writer: the values read at start and written since
        // are the NV contents.
        self.counter_values
    }

    fn advance_counter(
        &mut self,
        capability: &ProvisioningCapability,
        index: u8,
        value: u64,
    ) -> Result<u64, PlutonError> {
        capability.check(&self.state.capability_digest.0)?;
        self.advance_owned_counter(index, value)
    }

    fn advance_owned_counter(&mut self, index: u8, value: u64) -> Result<u64, PlutonError> {
        let tpm = self.tpm.get_mut().unwrap_or_else(PoisonError::into_inner);
        let advanced = self.counters.advance(&mut tpm.context, index, value)?;
        self.counter_values[usize::from(index)] = advanced;
        Ok(advanced)
    }

    fn quote(&mut self, nonce: &[u8], out: &mut [u8; MAX_QUOTE_LEN]) -> Result<usize, PlutonError> {
        let identity = self.identity_key()?;
        let attestation = self.attestation_key()?;
        let inputs = QuoteInputs {
            nonce,
            firmware_version: self.firmware_version,
            counters: &self.counter_values,
        };
        let tpm = self.tpm.get_mut().unwrap_or_else(PoisonError::into_inner);
        quote::quote(&mut tpm.context, &identity, &attestation, &inputs, out)
    }

    fn sign_tls13_client_certificate_verify(
        &mut self,
        message: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
        let identity = self.identity_key()?;
        if !is_tls13_client_certificate_verify(message) {
            return Err(PlutonError::NotTls13ClientCertificateVerify);
        }
        let digest: [u8; 32] = Sha256::digest(message).into();
        keys::sign_digest(self.context(), &identity, &digest)
    }

    fn sign_certificate_request(
        &mut self,
        info: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
        let identity = self.identity_key()?;
        if !is_certificate_request_info_for(info, &identity.public_key) {
            return Err(PlutonError::NotCertificateRequest);
        }
        let digest: [u8; 32] = Sha256::digest(info).into();
        keys::sign_digest(self.context(), &identity, &digest)
    }

    fn seal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        register_mask: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError> {
        self.with_storage_key(|context, storage, registers| {
            sealing::seal(
                context,
                storage,
                SealContext { owner, label },
                register_mask,
                registers,
                plaintext,
                out,
            )
        })
    }

    fn unseal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError> {
        self.with_storage_key(|context, storage, registers| {
            sealing::unseal(
                context,
                storage,
                SealContext { owner, label },
                registers,
                sealed,
                out,
            )
        })
    }
}
