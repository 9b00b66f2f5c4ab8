//! The root-of-trust trait every backend implements, and the software backend.

use rand_core::TryCryptoRng;
use serde::{Deserialize, Serialize};

use crate::PlutonError;
use crate::byte_array::ByteArray;
use crate::capability::ProvisioningCapability;
use crate::counters::COUNTER_COUNT;
use crate::identity::{
    DeviceId, IdentityKey, PUBLIC_KEY_LEN, PublicKeyBytes, SIGNATURE_LEN,
    is_certificate_request_info_for, is_tls13_client_certificate_verify,
};
use crate::quote::MAX_QUOTE_LEN;
use crate::quote::software::sign_quote;
use crate::registers::{MeasurementRegisters, REGISTER_COUNT, Sha256Digest};
use crate::sealing::{self, SealContext, SealOwner};
use crate::store::{InstalledRootKey, MAX_ROOT_KEYS, PersistentState, StateStore};
use crate::store::{load_or_create_state, persist};

/// The identity's public half: what provisioning needs to issue the device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// Uncompressed SEC1 P-256 public key.
    pub public_key: ByteArray<PUBLIC_KEY_LEN>,
    /// The device ID derived from it.
    pub device_id: DeviceId,
}

/// A summary of pluton's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The device ID, once an identity exists.
    pub device_id: Option<DeviceId>,
    /// Whether manufacturing state is locked.
    pub manufacturing_locked: bool,
    /// The firmware version reported at start.
    pub firmware_version: u32,
    /// How many root keys are installed.
    pub root_key_count: u8,
}

/// The operations of a root of trust. The software backend ([`SoftwarePluton`])
/// implements them in this process; a TPM 2.0 or secure-element backend can implement
/// the same trait (see the README's backend mapping), and the IPC server and clients do
/// not change.
pub trait RootOfTrust {
    /// A summary of the state.
    fn status(&self) -> StatusInfo;
    /// The identity's public key and device ID.
    fn identity(&self) -> Result<IdentityInfo, PlutonError>;
    /// Create the identity. Refused if one exists or manufacturing is locked, unless the
    /// provisioning capability is presented, in which case this is a factory reset.
    fn create_identity(
        &mut self,
        factory_reset: Option<&ProvisioningCapability>,
    ) -> Result<IdentityInfo, PlutonError>;
    /// Install (or re-purpose) a vendor root public key. Refused once locked.
    fn install_root_key(
        &mut self,
        capability: &ProvisioningCapability,
        root: InstalledRootKey,
    ) -> Result<(), PlutonError>;
    /// The installed root keys.
    fn root_keys(&self) -> heapless::Vec<InstalledRootKey, MAX_ROOT_KEYS>;
    /// Lock manufacturing state (idempotent).
    fn lock_manufacturing(
        &mut self,
        capability: &ProvisioningCapability,
    ) -> Result<(), PlutonError>;
    /// Check a presented provisioning capability (constant time): `CapabilityInvalid`
    /// if it is not the one this device minted.
    fn check_provisioning_capability(
        &self,
        capability: &ProvisioningCapability,
    ) -> Result<(), PlutonError>;
    /// Extend measurement register `index` with `measurement`. Registers
    /// `0..roles::BOOT_REGISTERS` refuse with `CapabilityRequired` after [`Self::end_boot`].
    fn extend_register(&mut self, index: u8, measurement: &Sha256Digest)
    -> Result<(), PlutonError>;
    /// Latch the boot registers until pluton restarts (the image is running).
    fn end_boot(&mut self);
    /// Whether the boot registers are latched.
    fn boot_latched(&self) -> bool;
    /// The measurement registers.
    fn registers(&self) -> [Sha256Digest; REGISTER_COUNT];
    /// The monotonic counters.
    fn counters(&self) -> [u64; COUNTER_COUNT];
    /// Advance counter `index` to `value` (never down); durable before it returns.
    fn advance_counter(
        &mut self,
        capability: &ProvisioningCapability,
        index: u8,
        value: u64,
    ) -> Result<u64, PlutonError>;
    /// Advance counter `index` to `value` (never down) for a caller whose right to do so
    /// the caller of this method checked (the protocol core's named-counter table);
    /// durable before it returns.
    fn advance_owned_counter(&mut self, index: u8, value: u64) -> Result<u64, PlutonError>;
    /// A signed attestation quote over `nonce` into `out`; returns its length.
    fn quote(&mut self, nonce: &[u8], out: &mut [u8; MAX_QUOTE_LEN]) -> Result<usize, PlutonError>;
    /// Sign a TLS 1.3 client CertificateVerify content (and nothing else).
    fn sign_tls13_client_certificate_verify(
        &mut self,
        message: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], PlutonError>;
    /// Sign a PKCS#10 CertificationRequestInfo for the identity key (and nothing else:
    /// [`crate::identity::is_certificate_request_info_for`]).
    fn sign_certificate_request(&mut self, info: &[u8])
    -> Result<[u8; SIGNATURE_LEN], PlutonError>;
    /// Seal `plaintext` for `owner` under `label`, bound to the registers in
    /// `register_mask`; returns the blob length written to `out`.
    fn seal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        register_mask: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError>;
    /// Open a sealed blob; returns the plaintext length written to `out`.
    fn unseal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError>;
}

/// The software root of trust: keys and state in a [`StateStore`], randomness from `R`.
pub struct SoftwarePluton<S, R> {
    store: S,
    rng: R,
    state: PersistentState,
    identity: Option<IdentityKey>,
    registers: MeasurementRegisters,
    firmware_version: u32,
}

impl<S, R> core::fmt::Debug for SoftwarePluton<S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftwarePluton")
            .field(
                "device_id",
                &self.identity.as_ref().map(IdentityKey::device_id),
            )
            .field("firmware_version", &self.firmware_version)
            .finish_non_exhaustive()
    }
}

impl<S: StateStore, R: TryCryptoRng> SoftwarePluton<S, R> {
    /// Start pluton ("boot"): load the state, or create it on first start.
    ///
    /// Registers start at zero. On first start a device seed and the provisioning
    /// capability are generated; `on_new_capability` receives the capability *before* the
    /// state is persisted (so it is never lost by a crash in between) and must deliver it
    /// to the monitor.
    pub fn open(
        mut store: S,
        mut rng: R,
        firmware_version: u32,
        on_new_capability: impl FnOnce(&ProvisioningCapability) -> Result<(), PlutonError>,
    ) -> Result<Self, PlutonError> {
        let state = load_or_create_state(&mut store, &mut rng, on_new_capability)?;
        let identity = match &state.identity_secret {
            Some(secret) => Some(IdentityKey::from_secret_bytes(&secret.0)?),
            None => None,
        };
        Ok(Self {
            store,
            rng,
            state,
            identity,
            registers: MeasurementRegisters::at_boot(),
            firmware_version,
        })
    }

    /// Persist `next`, and only then make it the current state.
    fn commit(&mut self, next: PersistentState) -> Result<(), PlutonError> {
        persist(&mut self.store, &next)?;
        self.state = next;
        Ok(())
    }

    fn identity_key(&self) -> Result<&IdentityKey, PlutonError> {
        self.identity.as_ref().ok_or(PlutonError::NoIdentity)
    }

    /// The store (for tests and diagnostics).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (for failure-injection tests).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

impl<S: StateStore, R: TryCryptoRng> RootOfTrust for SoftwarePluton<S, R> {
    fn status(&self) -> StatusInfo {
        StatusInfo {
            device_id: self.identity.as_ref().map(IdentityKey::device_id),
            manufacturing_locked: self.state.manufacturing_locked,
            firmware_version: self.firmware_version,
            root_key_count: self.state.roots.len() as u8,
        }
    }

    fn identity(&self) -> Result<IdentityInfo, PlutonError> {
        let identity = self.identity_key()?;
        Ok(IdentityInfo {
            public_key: ByteArray(*identity.public_key()),
            device_id: identity.device_id(),
        })
    }

    fn create_identity(
        &mut self,
        factory_reset: Option<&ProvisioningCapability>,
    ) -> Result<IdentityInfo, PlutonError> {
        let mut next =
            self.state
                .for_new_identity(factory_reset, self.identity.is_some(), &mut self.rng)?;
        let identity = IdentityKey::generate(&mut self.rng)?;
        next.identity_secret = Some(ByteArray(*identity.secret_bytes()));
        self.commit(next)?;
        self.identity = Some(identity);
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
        self.registers.extend(index, measurement)
    }

    fn end_boot(&mut self) {
        self.registers.latch_boot();
    }

    fn boot_latched(&self) -> bool {
        self.registers.boot_latched()
    }

    fn registers(&self) -> [Sha256Digest; REGISTER_COUNT] {
        *self.registers.values()
    }

    fn counters(&self) -> [u64; COUNTER_COUNT] {
        *self.state.counters.values()
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
        let counters = self.state.counters.advanced(index, value)?;
        if counters != self.state.counters {
            let mut next = self.state.clone();
            next.counters = counters;
            self.commit(next)?;
        }
        Ok(value)
    }

    fn quote(&mut self, nonce: &[u8], out: &mut [u8; MAX_QUOTE_LEN]) -> Result<usize, PlutonError> {
        let identity = self.identity_key()?;
        sign_quote(
            identity,
            nonce,
            self.firmware_version,
            self.registers.values(),
            self.state.counters.values(),
            out,
        )
    }

    fn sign_tls13_client_certificate_verify(
        &mut self,
        message: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
        let identity = self.identity_key()?;
        if !is_tls13_client_certificate_verify(message) {
            return Err(PlutonError::NotTls13ClientCertificateVerify);
        }
        Ok(identity.sign_parts(&[message]))
    }

    fn sign_certificate_request(
        &mut self,
        info: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], PlutonError> {
        let identity = self.identity_key()?;
        if !is_certificate_request_info_for(info, identity.public_key()) {
            return Err(PlutonError::NotCertificateRequest);
        }
        Ok(identity.sign_parts(&[info]))
    }

    fn seal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        register_mask: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError> {
        sealing::seal(
            &self.state.device_seed.0,
            &mut self.rng,
            SealContext { owner, label },
            register_mask,
            self.registers.values(),
            plaintext,
            out,
        )
    }

    fn unseal(
        &mut self,
        owner: SealOwner,
        label: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PlutonError> {
        sealing::unseal(
            &self.state.device_seed.0,
            SealContext { owner, label },
            self.registers.values(),
            sealed,
            out,
        )
    }
}

/// The public key of an identity, as bytes (helper for callers holding [`IdentityInfo`]).
impl IdentityInfo {
    /// The uncompressed SEC1 public key.
    pub fn public_key_bytes(&self) -> &PublicKeyBytes {
        &self.public_key.0
    }
}
