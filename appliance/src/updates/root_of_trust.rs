//! Pluton as the link compartment may use it: roots and counters, read only.

use std::path::{Path, PathBuf};

use warden_os::BootRootOfTrust;
use warden_os::root_of_trust::{IMAGE_SECURITY_COUNTER, RootOfTrustError};

/// Pluton without the provisioning capability: roots and counters, read only.
#[derive(Debug)]
pub struct UnprivilegedRootOfTrust {
    client: warden_pluton_api::PlutonClient,
}

impl UnprivilegedRootOfTrust {
    /// Connects to pluton's socket as the link (today the update agent).
    pub fn connect(socket: &Path) -> Result<Self, RootOfTrustError> {
        Ok(Self {
            client: warden_pluton_api::launch_tokens::connect_for(
                socket,
                warden_pluton_api::Role::Link,
            )?,
        })
    }

    fn refused(what: &str) -> RootOfTrustError {
        RootOfTrustError::Capability {
            path: PathBuf::from("(none)"),
            reason: format!(
                "{what} needs the provisioning capability, which this compartment does not hold"
            ),
        }
    }
}

impl BootRootOfTrust for UnprivilegedRootOfTrust {
    fn vendor_roots(&mut self) -> Result<Vec<warden_os::image::RootKey>, RootOfTrustError> {
        self.client
            .root_keys()?
            .iter()
            .map(|root| {
                root.to_root_key()
                    .map_err(|error| RootOfTrustError::InvalidRoot(error.to_string()))
            })
            .collect()
    }
    fn revoked_keys(&mut self) -> Result<Vec<warden_os::image::KeyId>, RootOfTrustError> {
        Ok(Vec::new())
    }
    fn extend_measurement(&mut self, _: &[u8; 32]) -> Result<(), RootOfTrustError> {
        Err(Self::refused("measuring an image"))
    }
    fn read_counter(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self.client.counters()?[usize::from(IMAGE_SECURITY_COUNTER)])
    }
    fn raise_counter(&mut self, _: u64) -> Result<u64, RootOfTrustError> {
        Err(Self::refused("raising the anti-rollback counter"))
    }
    fn read_revocation_floor(&mut self) -> Result<u64, RootOfTrustError> {
        Ok(self
            .client
            .named_counter(warden_pluton_api::CounterName::RevocationListFloor)?)
    }
    fn raise_revocation_floor(&mut self, _: u64) -> Result<u64, RootOfTrustError> {
        Err(Self::refused("raising the revocation list floor"))
    }
}
