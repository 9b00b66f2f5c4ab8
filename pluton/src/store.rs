//! Persistent state, its record format, and the store trait backends implement.
//!
//! State record, format version 1:
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `b"WPS1"` |
//! | 4 | 1 | format version `1` |
//! | 5 | 2 | body length *n* (u16 LE) |
//! | 7 | *n* | postcard body: identity secret (option of 32 bytes), device seed (32), capability digest (32), 8 counters (varint u64), root keys (count, then 65-byte key + purpose byte each), manufacturing-locked flag |
//! | 7 + *n* | 32 | SHA-256(`"warden-pluton-state-v1\0"` ‖ bytes 0..7+n) |
//!
//! The body holds the identity secret scalar, the device seed, the capability digest,
//! the counters, the installed root keys and the manufacturing-lock flag. On real
//! hardware the first two live in fuses or a secure element; the software backend keeps
//! them here and relies on file permissions (0600, its own uid) and the compartment
//! sandbox.

use rand_core::TryCryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::PlutonError;
use crate::byte_array::ByteArray;
use crate::capability::{self, ProvisioningCapability};
use crate::counters::MonotonicCounters;
use crate::identity::{PUBLIC_KEY_LEN, parse_public_key};

/// Largest state record.
pub const MAX_STATE_RECORD_LEN: usize = 1024;
/// How many vendor root keys pluton holds.
pub const MAX_ROOT_KEYS: usize = 4;

const MAGIC: &[u8; 4] = b"WPS1";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 7;
const CHECKSUM_LEN: usize = 32;

/// Where pluton keeps its state. Implementations must replace the record atomically: after
/// a crash at any instant, [`StateStore::load`] returns the old or the new record, never a
/// mix, and a completed [`StateStore::save`] is durable.
pub trait StateStore {
    /// Read the stored record into `buffer`; `Ok(None)` when nothing was ever stored.
    fn load(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, PlutonError>;
    /// Durably replace the stored record.
    fn save(&mut self, record: &[u8]) -> Result<(), PlutonError>;
}

/// A vendor root public key installed at provisioning, with the purposes it may certify
/// (bitmask of [`warden_keychain::Purpose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRootKey {
    /// Uncompressed SEC1 public key.
    pub public_key: ByteArray<PUBLIC_KEY_LEN>,
    /// Purpose bitmask (`1` images, `2` policy bundles).
    pub purposes: u8,
}

impl InstalledRootKey {
    /// The key in the form `warden_keychain::verify_release_key` takes.
    pub fn to_root_key(&self) -> Result<warden_keychain::RootKey, PlutonError> {
        let purposes = warden_keychain::Purpose::from_bits(self.purposes)
            .ok_or(PlutonError::InvalidPurpose)?;
        let key = warden_keychain::RootKey::from_public_key(&self.public_key.0)
            .map_err(|_| PlutonError::InvalidPublicKey)?;
        Ok(key.with_purposes(purposes))
    }

    pub(crate) fn validate(&self) -> Result<(), PlutonError> {
        parse_public_key(&self.public_key.0)?;
        warden_keychain::Purpose::from_bits(self.purposes).ok_or(PlutonError::InvalidPurpose)?;
        Ok(())
    }
}

/// Everything pluton persists. Secrets are wiped when a copy is dropped.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PersistentState {
    pub(crate) identity_secret: Option<ByteArray<32>>,
    pub(crate) device_seed: ByteArray<32>,
    pub(crate) capability_digest: ByteArray<32>,
    pub(crate) counters: MonotonicCounters,
    pub(crate) roots: heapless::Vec<InstalledRootKey, MAX_ROOT_KEYS>,
    pub(crate) manufacturing_locked: bool,
}

impl Drop for PersistentState {
    fn drop(&mut self) {
        if let Some(secret) = self.identity_secret.as_mut() {
            secret.zeroize();
        }
        self.device_seed.zeroize();
    }
}

fn checksum(prefix_and_body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"warden-pluton-state-v1\0")
        .chain_update(prefix_and_body)
        .finalize()
        .into()
}

impl PersistentState {
    /// The next state for creating an identity (the caller sets `identity_secret`).
    /// Refused if one exists or manufacturing is locked, unless the provisioning
    /// capability is presented: a factory reset, with a new device seed (old sealed
    /// blobs become unreadable), roots and lock cleared, and counters kept, so rollback
    /// protection survives.
    pub(crate) fn for_new_identity<R: TryCryptoRng + ?Sized>(
        &self,
        factory_reset: Option<&ProvisioningCapability>,
        identity_exists: bool,
        rng: &mut R,
    ) -> Result<Self, PlutonError> {
        let mut next = self.clone();
        match factory_reset {
            Some(capability) => {
                capability.check(&self.capability_digest.0)?;
                next.device_seed = ByteArray(random_seed(rng)?);
                next.roots.clear();
                next.manufacturing_locked = false;
            }
            None if self.manufacturing_locked => return Err(PlutonError::ManufacturingLocked),
            None if identity_exists => return Err(PlutonError::IdentityExists),
            None => {}
        }
        Ok(next)
    }

    /// The state with `root` installed (or its purposes replaced), after checking the
    /// capability and the manufacturing lock.
    pub(crate) fn with_root_key(
        &self,
        capability: &ProvisioningCapability,
        root: InstalledRootKey,
    ) -> Result<Self, PlutonError> {
        capability.check(&self.capability_digest.0)?;
        if self.manufacturing_locked {
            return Err(PlutonError::ManufacturingLocked);
        }
        root.validate()?;
        let mut next = self.clone();
        match next
            .roots
            .iter_mut()
            .find(|installed| installed.public_key == root.public_key)
        {
            Some(installed) => installed.purposes = root.purposes,
            None => next
                .roots
                .push(root)
                .map_err(|_| PlutonError::RootKeySlotsFull)?,
        }
        Ok(next)
    }

    /// The state locked, after checking the capability; `None` if it already is.
    pub(crate) fn locked(
        &self,
        capability: &ProvisioningCapability,
    ) -> Result<Option<Self>, PlutonError> {
        capability::require(Some(capability), &self.capability_digest.0)?;
        if self.manufacturing_locked {
            return Ok(None);
        }
        let mut next = self.clone();
        next.manufacturing_locked = true;
        Ok(Some(next))
    }

    /// Encode the state as a record into `out`, returning the record length.
    pub(crate) fn encode(
        &self,
        out: &mut [u8; MAX_STATE_RECORD_LEN],
    ) -> Result<usize, PlutonError> {
        let body_len = postcard::to_slice(
            self,
            &mut out[PREFIX_LEN..MAX_STATE_RECORD_LEN - CHECKSUM_LEN],
        )
        .map_err(|_| PlutonError::BufferTooSmall)?
        .len();
        let body_len_u16 = u16::try_from(body_len).map_err(|_| PlutonError::BufferTooSmall)?;
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5..PREFIX_LEN].copy_from_slice(&body_len_u16.to_le_bytes());
        let end = PREFIX_LEN + body_len;
        let sum = checksum(&out[..end]);
        out[end..end + CHECKSUM_LEN].copy_from_slice(&sum);
        Ok(end + CHECKSUM_LEN)
    }

    /// Decode and check a record.
    pub(crate) fn decode(record: &[u8]) -> Result<Self, PlutonError> {
        if record.len() < PREFIX_LEN + CHECKSUM_LEN || &record[..4] != MAGIC || record[4] != VERSION
        {
            return Err(PlutonError::StoreCorrupt);
        }
        let body_len = usize::from(u16::from_le_bytes([record[5], record[6]]));
        let end = PREFIX_LEN + body_len;
        if record.len() != end + CHECKSUM_LEN {
            return Err(PlutonError::StoreCorrupt);
        }
        let expected = checksum(&record[..end]);
        if expected != record[end..] {
            return Err(PlutonError::StoreCorrupt);
        }
        let (state, rest): (Self, &[u8]) = postcard::take_from_bytes(&record[PREFIX_LEN..end])
            .map_err(|_| PlutonError::StoreCorrupt)?;
        if !rest.is_empty() {
            return Err(PlutonError::StoreCorrupt);
        }
        Ok(state)
    }
}

/// Load pluton's state from `store`, or create it on first start: a device seed and the
/// provisioning capability are generated; `on_new_capability` receives the capability
/// *before* the state is persisted (so it is never lost by a crash in between) and must
/// deliver it to the monitor. Every backend starts this way.
pub(crate) fn load_or_create_state<S: StateStore, R: TryCryptoRng>(
    store: &mut S,
    rng: &mut R,
    on_new_capability: impl FnOnce(&ProvisioningCapability) -> Result<(), PlutonError>,
) -> Result<PersistentState, PlutonError> {
    let mut buffer = [0u8; MAX_STATE_RECORD_LEN];
    let loaded = store.load(&mut buffer)?;
    if let Some(length) = loaded {
        let state = PersistentState::decode(buffer.get(..length).ok_or(PlutonError::StoreCorrupt)?);
        buffer.zeroize();
        return state;
    }
    let mut token = [0u8; 32];
    rng.try_fill_bytes(&mut token)
        .map_err(|_| PlutonError::RandomFailed)?;
    let capability = ProvisioningCapability::from_bytes(token);
    token.zeroize();
    on_new_capability(&capability)?;
    let state = PersistentState {
        identity_secret: None,
        device_seed: ByteArray(random_seed(rng)?),
        capability_digest: ByteArray(capability.digest()),
        counters: MonotonicCounters::default(),
        roots: heapless::Vec::new(),
        manufacturing_locked: false,
    };
    persist(store, &state)?;
    Ok(state)
}

/// 32 bytes from `rng`.
pub(crate) fn random_seed<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<[u8; 32], PlutonError> {
    let mut seed = [0u8; 32];
    rng.try_fill_bytes(&mut seed)
        .map_err(|_| PlutonError::RandomFailed)?;
    Ok(seed)
}

/// Encode and durably save `state`.
pub(crate) fn persist<S: StateStore>(
    store: &mut S,
    state: &PersistentState,
) -> Result<(), PlutonError> {
    let mut buffer = [0u8; MAX_STATE_RECORD_LEN];
    let result = state
        .encode(&mut buffer)
        .and_then(|length| store.save(&buffer[..length]));
    buffer.zeroize();
    result
}

/// A store in memory: for tests, the fuzz target and simulations. It can be told to fail
/// saves, to check that a failed save leaves pluton's state unchanged.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    record: Option<heapless::Vec<u8, MAX_STATE_RECORD_LEN>>,
    /// When set, every save fails with [`PlutonError::StoreFailed`].
    pub fail_saves: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored record, if any.
    pub fn record(&self) -> Option<&[u8]> {
        self.record.as_deref()
    }
}

impl StateStore for MemoryStore {
    fn load(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, PlutonError> {
        match &self.record {
            None => Ok(None),
            Some(record) => {
                let out = buffer
                    .get_mut(..record.len())
                    .ok_or(PlutonError::BufferTooSmall)?;
                out.copy_from_slice(record);
                Ok(Some(record.len()))
            }
        }
    }

    fn save(&mut self, record: &[u8]) -> Result<(), PlutonError> {
        if self.fail_saves {
            return Err(PlutonError::StoreFailed);
        }
        self.record =
            Some(heapless::Vec::from_slice(record).map_err(|_| PlutonError::BufferTooSmall)?);
        Ok(())
    }
}

impl<T: StateStore + ?Sized> StateStore for &mut T {
    fn load(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, PlutonError> {
        (**self).load(buffer)
    }
    fn save(&mut self, record: &[u8]) -> Result<(), PlutonError> {
        (**self).save(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistentState {
        PersistentState {
            identity_secret: Some(ByteArray([1u8; 32])),
            device_seed: ByteArray([2u8; 32]),
            capability_digest: ByteArray([3u8; 32]),
            counters: MonotonicCounters::default()
                .advanced(1, u64::MAX)
                .expect("advance"),
            roots: heapless::Vec::new(),
            manufacturing_locked: true,
        }
    }

    #[test]
    fn record_round_trip_and_every_bit_flip_is_detected() {
        let mut buffer = [0u8; MAX_STATE_RECORD_LEN];
        let len = sample().encode(&mut buffer).expect("encode");
        let decoded = PersistentState::decode(&buffer[..len]).expect("decode");
        assert_eq!(decoded.counters.values()[1], u64::MAX);
        assert!(decoded.manufacturing_locked);
        for bit in 0..len * 8 {
            let mut flipped = buffer;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                PersistentState::decode(&flipped[..len]).is_err(),
                "bit {bit}"
            );
        }
        for cut in 0..len {
            assert!(
                PersistentState::decode(&buffer[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn full_root_table_fits_in_a_record() {
        let mut state = sample();
        for _ in 0..MAX_ROOT_KEYS {
            state
                .roots
                .push(InstalledRootKey {
                    public_key: ByteArray([4u8; 65]),
                    purposes: 3,
                })
                .expect("room");
        }
        let mut buffer = [0u8; MAX_STATE_RECORD_LEN];
        assert!(state.encode(&mut buffer).is_ok());
    }
}
