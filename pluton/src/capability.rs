//! The provisioning capability: a token only the monitor and provisioning side hold.
//!
//! Privileged operations (replacing the identity, installing root keys, locking
//! manufacturing state, advancing anti-rollback counters) cross a process boundary, so a
//! Rust type alone cannot gate them: the caller must present a 32-byte random token.
//! Pluton mints it once, when its state is first created, hands it to its host (the std
//! server writes it to a 0600 file that only the security monitor can read; compartments'
//! sandboxes do not grant that path) and keeps only its SHA-256 digest. Presented tokens
//! are compared with the digest in constant time.

use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::PlutonError;
use crate::byte_array::ByteArray;

/// Length of the provisioning capability token.
pub const CAPABILITY_LEN: usize = 32;

/// The provisioning capability token. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct ProvisioningCapability(ByteArray<CAPABILITY_LEN>);

impl ProvisioningCapability {
    /// A capability from its token bytes (as read from the capability file).
    pub fn from_bytes(token: [u8; CAPABILITY_LEN]) -> Self {
        Self(ByteArray(token))
    }

    /// The token bytes (to write the capability file).
    pub fn as_bytes(&self) -> &[u8; CAPABILITY_LEN] {
        &self.0.0
    }

    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"warden-capability-v1\0")
            .chain_update(self.0.0)
            .finalize()
            .into()
    }

    /// Check this capability against the stored digest, in constant time.
    pub(crate) fn check(&self, stored_digest: &[u8; 32]) -> Result<(), PlutonError> {
        if bool::from(self.digest().ct_eq(stored_digest)) {
            Ok(())
        } else {
            Err(PlutonError::CapabilityInvalid)
        }
    }
}

impl fmt::Debug for ProvisioningCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProvisioningCapability(<redacted>)")
    }
}

/// Check an optional capability: `CapabilityRequired` when absent.
pub(crate) fn require(
    capability: Option<&ProvisioningCapability>,
    stored_digest: &[u8; 32],
) -> Result<(), PlutonError> {
    capability
        .ok_or(PlutonError::CapabilityRequired)?
        .check(stored_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_minted_token_passes() {
        let minted = ProvisioningCapability::from_bytes([7u8; CAPABILITY_LEN]);
        let digest = minted.digest();
        assert_eq!(require(Some(&minted), &digest), Ok(()));
        let mut other = [7u8; CAPABILITY_LEN];
        other[31] ^= 1;
        let forged = ProvisioningCapability::from_bytes(other);
        assert_eq!(
            require(Some(&forged), &digest),
            Err(PlutonError::CapabilityInvalid)
        );
        assert_eq!(require(None, &digest), Err(PlutonError::CapabilityRequired));
        // The digest itself is not a valid token.
        let digest_as_token = ProvisioningCapability::from_bytes(digest);
        assert_eq!(
            require(Some(&digest_as_token), &digest),
            Err(PlutonError::CapabilityInvalid)
        );
        assert_eq!(format!("{minted:?}"), "ProvisioningCapability(<redacted>)");
    }
}
