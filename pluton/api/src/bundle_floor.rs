//! The policy bundles' anti-rollback floor, kept in pluton's `PolicyBundleFloor` counter.
//!
//! `current.bundle` lives on a disk the bridges compartment writes, so the floor that
//! makes a rolled-back file useless cannot live there. The appliance, with a connection
//! of the role that owns the counter (`bridges`):
//! - at start, after opening the bundle store: [`check_stored_bundle`] with the stored
//!   bundle's version, and refuses the bundle on [`BundleFloorError::RolledBack`]; then
//!   gives the floor to `BundleStore::set_rollback_floor`;
//! - after `BundleStore::apply` has written a bundle: [`record_applied_bundle`] with its
//!   version. Written first, floor second: a crash in between leaves the floor below the
//!   stored bundle (still accepted), never above it.

use crate::{ClientError, CounterName, PlutonClient};

/// Why a stored bundle is refused or the floor could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleFloorError {
    /// The stored bundle is older than one already applied on this unit.
    #[error("stored policy bundle version {stored} is below pluton's bundle floor {floor}")]
    RolledBack {
        /// The stored bundle's version.
        stored: u64,
        /// Pluton's floor.
        floor: u64,
    },
    /// Pluton could not be asked.
    #[error("policy bundle floor: {0}")]
    Pluton(#[from] ClientError),
}

/// Pluton's policy bundle floor; `Err(RolledBack)` if `stored_version` (the version of
/// `current.bundle`, if there is one) is below it.
pub fn check_stored_bundle(
    client: &mut PlutonClient,
    stored_version: Option<u64>,
) -> Result<u64, BundleFloorError> {
    let floor = client.named_counter(CounterName::PolicyBundleFloor)?;
    match stored_version {
        Some(stored) if stored < floor => Err(BundleFloorError::RolledBack { stored, floor }),
        _ => Ok(floor),
    }
}

/// Raise the floor to `applied_version` (equal or lower than the floor is a no-op, not
/// an error: the floor never goes down). Durable when this returns.
pub fn record_applied_bundle(
    client: &mut PlutonClient,
    applied_version: u64,
) -> Result<u64, BundleFloorError> {
    let floor = client.named_counter(CounterName::PolicyBundleFloor)?;
    if applied_version <= floor {
        return Ok(floor);
    }
    Ok(client.advance_named_counter(CounterName::PolicyBundleFloor, applied_version)?)
}
