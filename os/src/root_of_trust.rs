//! What boot needs from the root of trust: roots, revocations, measurement, counter.
//!
//! [`BootRootOfTrust`] is small on purpose; [`PlutonRootOfTrust`] implements it over
//! the pluton client, [`MemoryRootOfTrust`] in memory for tests.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use warden_keychain::{KeyId, RootKey};
use warden_pluton::capability::CAPABILITY_LEN;
use warden_pluton::{CounterName, ProvisioningCapability};
use warden_pluton_api::{ClientError, PlutonClient};

/// The measurement register boot extends with each image it runs (the image's header
/// digest).
pub const IMAGE_MEASUREMENT_REGISTER: u8 = 0;
/// The monotonic counter that holds the images' anti-rollback floor: pluton's
/// `CounterName::ImageFloor` (its rights table gives its index; a test holds them equal).
pub const IMAGE_SECURITY_COUNTER: u8 = 0;

/// The root of trust refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootOfTrustError {
    /// The pluton client failed.
    #[error("root of trust: {0}")]
    Pluton(#[from] ClientError),
    /// An installed root key is not usable.
    #[error("root of trust: installed root key is invalid: {0}")]
    InvalidRoot(String),
    /// The capability file could not be read.
    #[error("root of trust: capability file {path}: {reason}")]
    Capability {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The anti-rollback counter would go down.
    #[error("root of trust: counter would decrease from {current} to {requested}")]
    CounterWouldDecrease {
        /// The stored value.
        current: u64,
        /// The requested value.
        requested: u64,
    },
}

/// The operations of a root of trust that boot and update use.
pub trait BootRootOfTrust {
    /// Vendor root keys installed at provisioning.
    fn vendor_roots(&mut self) -> Result<Vec<RootKey>, RootOfTrustError>;
    /// Revoked release keys and roots.
    fn revoked_keys(&mut self) -> Result<Vec<KeyId>, RootOfTrustError>;
    /// Extend the image measurement register.
    fn extend_measurement(&mut self, measurement: &[u8; 32]) -> Result<(), RootOfTrustError>;
    /// The images' anti-rollback counter.
    fn read_counter(&mut self) -> Result<u64, RootOfTrustError>;
    /// Raise the anti-rollback counter to `value` (equal is a no-op); durable on return.
    fn raise_counter(&mut self, value: u64) -> Result<u64, RootOfTrustError>;
    /// The revocation list floor: the sequence of the newest revocation list this unit
    /// held and verified (pluton's `RevocationListFloor`; 0: none yet).
    fn read_revocation_floor(&mut self) -> Result<u64, RootOfTrustError>;
    /// Raise the revocation list floor to `sequence` (equal or lower is a no-op, never
    /// an error); durable on return. A root of trust without the right refuses.
    fn raise_revocation_floor(&mut self, sequence: u64) -> Result<u64, RootOfTrustError>;
}

#[derive(Debug, Default)]
struct MemoryInner {
    roots: Vec<RootKey>,
    revoked: Vec<KeyId>,
    measurements: Vec<[u8; 32]>,
    counter: u64,
    revocation_floor: u64,
}

/// An in-memory root of trust. Clones share state; [`Self::snapshot`] copies it.
#[derive(Debug, Clone, Default)]
pub struct MemoryRootOfTrust {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemoryRootOfTrust {
    /// Trusting `roots`, nothing revoked, counter at zero.
    pub fn new(roots: Vec<RootKey>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryInner {
                roots,
                ..MemoryInner::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An independent copy.
    pub fn snapshot(&self) -> Self {
        let inner = self.lock();
        Self {
            inner: Arc::new(Mutex::new(MemoryInner {
                roots: inner.roots.clone(),
                revoked: inner.revoked.clone(),
                measurements: inner.measurements.clone(),
                counter: inner.counter,
                revocation_floor: inner.revocation_floor,
            })),
        }
    }

    /// Revoke a key.
    pub fn revoke(&self, key: KeyId) {
        self.lock().revoked.push(key);
    }

    /// The measurements extended so far, in order.
    pub fn measurements(&self) -> Vec<[u8; 32]> {
        self.lock().measurements.clone()
    }

    /// The counter's value.
    pub fn counter(&self) -> u64 {
        self.lock().counter
    }

    /// The revocation list floor's value.
    pub fn revocation_floor(&self) -> u64 {
        self.lock().revocation_floor
    }
}

impl BootRootOfTrust for MemoryRootOfTrust {
    fn vendor_roots(&mut self) -> Result<Vec<RootKey>, RootOfTrustError> {
        Ok(self.lock().roots.clone())
    }
    fn revoked_keys(&mut self) -> Result<Vec<KeyId>, RootOfTrustError> {
        Ok(self.lock().revoked.clone())
    }
    fn extend_measurement(&mut self, measurement: &[u8; 32]) -> Result<(), RootOfTrustError> {
        self.lock().measurements.push(*measurement);
        Ok(())
    }
    fn read_counter(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self.lock().counter)
    }
    fn raise_counter(&mut self, value: u64) -> Result<u64, RootOfTrustError> {
        let mut inner = self.lock();
        if value < inner.counter {
            return Err(RootOfTrustError::CounterWouldDecrease {
                current: inner.counter,
                requested: value,
            });
        }
        inner.counter = value;
        Ok(value)
    }
    fn read_revocation_floor(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self.lock().revocation_floor)
    }
    fn raise_revocation_floor(&mut self, sequence: u64) -> Result<u64, RootOfTrustError> {
        let mut inner = self.lock();
        inner.revocation_floor = inner.revocation_floor.max(sequence);
        Ok(inner.revocation_floor)
    }
}

/// The root of trust over pluton's IPC client.
///
/// Roots come from pluton (installed at provisioning). Pluton does not hold a revocation
/// list yet, so the list is given here (from the monitor's configuration).
#[derive(Debug)]
pub struct PlutonRootOfTrust {
    client: PlutonClient,
    capability: ProvisioningCapability,
    revoked: Vec<KeyId>,
}

impl PlutonRootOfTrust {
    /// Over a connected client, with the provisioning capability (only the monitor has
    /// it) that advancing a counter requires.
    pub fn new(
        client: PlutonClient,
        capability: ProvisioningCapability,
        revoked: Vec<KeyId>,
    ) -> Self {
        Self {
            client,
            capability,
            revoked,
        }
    }

    /// Latch pluton's boot registers until it restarts: what the boot stage does once the
    /// image is measured and before it runs, so nothing the image runs can extend them.
    pub fn end_boot(&mut self) -> Result<(), RootOfTrustError> {
        Ok(self.client.end_boot()?)
    }

    /// Connect to pluton's socket and read the capability file (32 raw bytes).
    pub fn connect(
        socket: &Path,
        capability_file: &Path,
        revoked: Vec<KeyId>,
    ) -> Result<Self, RootOfTrustError> {
        let capability_error = |reason: String| RootOfTrustError::Capability {
            path: capability_file.to_owned(),
            reason,
        };
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(capability_file).map_err(|error| capability_error(error.to_string()))?,
        );
        let token: [u8; CAPABILITY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            capability_error(format!(
                "expected {CAPABILITY_LEN} bytes, found {}",
                bytes.len()
            ))
        })?;
        let capability = ProvisioningCapability::from_bytes(token);
        let mut client = PlutonClient::connect(socket)?;
        // The capability makes this connection the boot role (pluton's rights table):
        // reading the counters and the roots needs a role, measuring needs this one.
        client.authenticate_boot(&capability)?;
        Ok(Self::new(client, capability, revoked))
    }
}

impl BootRootOfTrust for PlutonRootOfTrust {
    fn vendor_roots(&mut self) -> Result<Vec<RootKey>, RootOfTrustError> {
        self.client
            .root_keys()?
            .iter()
            .map(|root| {
                root.to_root_key()
                    .map_err(|error| RootOfTrustError::InvalidRoot(error.to_string()))
            })
            .collect()
    }
    fn revoked_keys(&mut self) -> Result<Vec<KeyId>, RootOfTrustError> {
        Ok(self.revoked.clone())
    }
    fn extend_measurement(&mut self, measurement: &[u8; 32]) -> Result<(), RootOfTrustError> {
        // The boot registers are the boot role's: the capability makes this connection it.
        self.client.authenticate_boot(&self.capability)?;
        Ok(self
            .client
            .extend_register(IMAGE_MEASUREMENT_REGISTER, measurement)?)
    }
    fn read_counter(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self.client.counters()?[usize::from(IMAGE_SECURITY_COUNTER)])
    }
    fn raise_counter(&mut self, value: u64) -> Result<u64, RootOfTrustError> {
        Ok(self
            .client
            .advance_counter(&self.capability, IMAGE_SECURITY_COUNTER, value)?)
    }
    fn read_revocation_floor(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self
            .client
            .named_counter(CounterName::RevocationListFloor)?)
    }
    fn raise_revocation_floor(&mut self, sequence: u64) -> Result<u64, RootOfTrustError> {
        let floor = self.read_revocation_floor()?;
        if sequence <= floor {
            return Ok(floor);
        }
        // The floor is the boot role's to raise: the capability makes this connection it.
        self.client.authenticate_boot(&self.capability)?;
        Ok(self
            .client
            .advance_named_counter(CounterName::RevocationListFloor, sequence)?)
    }
}

#[cfg(test)]
mod tests {
    use super::IMAGE_SECURITY_COUNTER;
    use warden_pluton::CounterName;

    #[test]
    fn the_image_floor_is_the_counter_pluton_names_image_floor() {
        assert_eq!(
            IMAGE_SECURITY_COUNTER,
            CounterName::ImageFloor.rights().index
        );
    }
}
