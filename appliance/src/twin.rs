//! The device twin: signed policy bundles from the fleet, applied only after
//! verification, and the state the unit reports back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use warden_keychain::{Purpose, RootKey};
use warden_link::topics::{
    DeviceEvent, PROTOCOL_VERSION, TwinDesired, TwinReported, event_kind, from_hex,
};
use warden_policy::CompiledPolicy;
use warden_policy::bundle::ProductId;
use warden_policy::bundle::store::BundleStore;

/// Why the bundle store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TwinError {
    /// Pluton's socket did not answer.
    #[error("pluton {}: {detail}", socket.display())]
    Pluton {
        /// The socket.
        socket: PathBuf,
        /// Why.
        detail: String,
    },
    /// Pluton did not list its root keys.
    #[error("pluton root keys: {0}")]
    RootKeys(String),
    /// The stored bundle is older than one this unit already applied (pluton's
    /// `PolicyBundleFloor`): `current.bundle` was rolled back on disk.
    #[error("policy bundle {}: {source}; the unit refuses to start on it (restore a bundle at or above the floor, or let the fleet send the current one)", file.display())]
    RolledBack {
        /// The stored bundle file.
        file: PathBuf,
        /// The versions.
        source: warden_pluton_api::bundle_floor::BundleFloorError,
    },
    /// The config's product is not a product ID.
    #[error("product {0:?} is not a valid product id")]
    Product(String),
    /// The store (or its last bundle) could not be opened.
    #[error("policy bundle store {}: {detail}", dir.display())]
    Store {
        /// The store's directory.
        dir: PathBuf,
        /// Why.
        detail: String,
    },
}

/// The vendor roots pluton holds for policy bundles (none without pluton).
pub fn policy_roots(pluton_socket: Option<&Path>) -> Result<Vec<RootKey>, TwinError> {
    let Some(socket) = pluton_socket else {
        return Ok(Vec::new());
    };
    let mut client = bridges_client(socket)?;
    let installed = client
        .root_keys()
        .map_err(|e| TwinError::RootKeys(e.to_string()))?;
    Ok(installed
        .iter()
        .filter_map(|root| root.to_root_key().ok())
        .filter(|root| root.purposes().bits() & Purpose::POLICY.bits() != 0)
        .collect())
}

/// A connection to pluton as the bridges (the role that reads the policy roots and owns
/// the bundle floor).
fn bridges_client(socket: &Path) -> Result<warden_pluton_api::PlutonClient, TwinError> {
    warden_pluton_api::launch_tokens::connect_for(socket, warden_pluton_api::Role::Bridges).map_err(
        |e| TwinError::Pluton {
            socket: socket.to_path_buf(),
            detail: e.to_string(),
        },
    )
}

/// Holds the stored bundle to pluton's bundle floor: refuses one below it (rolled back
/// on disk), then makes the floor the store's own rollback floor. Without pluton the
/// store keeps only the floor it finds on disk.
pub fn enforce_bundle_floor(
    store: &mut BundleStore,
    dir: &Path,
    pluton_socket: Option<&Path>,
) -> Result<(), TwinError> {
    let Some(socket) = pluton_socket else {
        return Ok(());
    };
    let mut client = bridges_client(socket)?;
    let stored = store.current().map(|applied| applied.header.version);
    let floor = warden_pluton_api::bundle_floor::check_stored_bundle(&mut client, stored).map_err(
        |source| match source {
            source @ warden_pluton_api::bundle_floor::BundleFloorError::RolledBack { .. } => {
                TwinError::RolledBack {
                    file: dir.join(warden_policy::bundle::store::CURRENT_FILE),
                    source,
                }
            }
            other => TwinError::Pluton {
                socket: socket.to_path_buf(),
                detail: other.to_string(),
            },
        },
    )?;
    store.set_rollback_floor(floor);
    Ok(())
}

/// Raises pluton's bundle floor to an applied bundle's version (blocking: one round
/// trip on pluton's socket).
pub fn record_applied_bundle(socket: &Path, version: u64) -> Result<u64, TwinError> {
    let mut client = bridges_client(socket)?;
    warden_pluton_api::bundle_floor::record_applied_bundle(&mut client, version).map_err(|e| {
        TwinError::Pluton {
            socket: socket.to_path_buf(),
            detail: e.to_string(),
        }
    })
}

/// Opens the unit's bundle store: the last good bundle, verified again.
pub fn open_store(dir: &Path, roots: &[RootKey], product: &str) -> Result<BundleStore, TwinError> {
    let product = ProductId::new(product).ok_or_else(|| TwinError::Product(product.to_owned()))?;
    BundleStore::open(dir, roots, &[], product).map_err(|e| TwinError::Store {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    })
}

/// What the unit reports about a policy.
pub fn reported_for(
    policy: &CompiledPolicy,
    version: Option<u64>,
    last_error: Option<String>,
) -> TwinReported {
    TwinReported {
        v: PROTOCOL_VERSION,
        policy_name: policy.policy_name().map(str::to_owned),
        policy_version: version,
        last_error,
        ..TwinReported::default()
    }
}

/// The unit's bundle store and what it reports about its policy (the bridges role
/// holds it: bundles are applied where the policy is enforced).
pub struct PolicyTwin {
    store: Option<BundleStore>,
    reported: Arc<Mutex<TwinReported>>,
    /// Pluton, whose bundle floor follows every applied bundle.
    pluton_socket: Option<PathBuf>,
}

impl PolicyTwin {
    /// Starts from `store` (if the unit takes bundles) and the policy it runs; each
    /// applied bundle raises the floor in the pluton at `pluton_socket`.
    pub fn new(
        store: Option<BundleStore>,
        current: TwinReported,
        pluton_socket: Option<PathBuf>,
    ) -> Self {
        Self {
            store,
            reported: Arc::new(Mutex::new(current)),
            pluton_socket,
        }
    }

    /// What the unit reports now (shared: a new link hears it first).
    pub fn reported(&self) -> Arc<Mutex<TwinReported>> {
        Arc::clone(&self.reported)
    }

    /// Raises pluton's bundle floor to `version` (the bundle is on disk already: a
    /// crash before this leaves the floor below it, still accepted). Returns what the
    /// applied event adds: nothing, or why the floor stayed where it was.
    async fn raise_floor(&self, version: u64) -> String {
        let Some(socket) = self.pluton_socket.clone() else {
            return String::new();
        };
        let raised =
            tokio::task::spawn_blocking(move || record_applied_bundle(&socket, version)).await;
        match raised {
            Ok(Ok(_)) => String::new(),
            Ok(Err(error)) => {
                tracing::error!(%error, version, "the policy bundle floor was not raised");
                format!("; the anti-rollback floor was not raised: {error}")
            }
            Err(error) => {
                tracing::error!(%error, version, "the policy bundle floor task failed");
                format!("; the anti-rollback floor was not raised: {error}")
            }
        }
    }

    /// Applies a desired state's bundle, if it carries one: a bundle that verifies
    /// replaces the policy of every bridge; one that does not changes nothing. Returns
    /// the new reported state and the `policy-applied` / `policy-refused` event.
    pub async fn apply(
        &mut self,
        desired: &TwinDesired,
        bridges: &crate::bridge_set::BridgeSet,
    ) -> Option<(TwinReported, DeviceEvent)> {
        let hex = desired.policy_bundle.as_ref()?;
        let outcome = match (&mut self.store, from_hex(hex)) {
            (None, _) => {
                Err("this unit takes no policy bundles (no [policy] bundle_dir)".to_owned())
            }
            (_, None) => Err("policy_bundle is not hex".to_owned()),
            (Some(store), Some(bytes)) => store
                .apply(&bytes)
                .map(|applied| (applied.policy.clone(), applied.header.version))
                .map(|(policy, version)| (policy, version, Arc::new(bytes)))
                .map_err(|e| e.to_string()),
        };
        let (reported, event) = match outcome {
            Ok((policy, version, bundle)) => {
                let policy = Arc::new(policy);
                let cores = bridges.apply_policy(&policy, bundle).await;
                tracing::info!(version, "applied a verified policy bundle");
                let floor = self.raise_floor(version).await;
                let event = DeviceEvent::now(
                    event_kind::POLICY_APPLIED,
                    format!(
                        "policy bundle version {version} ({}) verified and applied to {} bridges{cores}{floor}",
                        policy.policy_name().unwrap_or("unnamed"),
                        bridges.len()
                    ),
                );
                // The points' display settings come from the unit's config, not the
                // bundle: they stay as reported.
                let point_decimals = self
                    .reported
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .point_decimals
                    .clone();
                let reported = TwinReported {
                    point_decimals,
                    ..reported_for(&policy, Some(version), None)
                };
                (reported, event)
            }
            Err(error) => {
                tracing::warn!(%error, "policy bundle refused; the running policy stays");
                let event = DeviceEvent::now(
                    event_kind::POLICY_REFUSED,
                    format!("policy bundle refused, the running policy stays: {error}"),
                );
                let current = self
                    .reported
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let reported = TwinReported {
                    last_error: Some(error),
                    ..current
                };
                (reported, event)
            }
        };
        *self.reported.lock().unwrap_or_else(PoisonError::into_inner) = reported.clone();
        Some((reported, event))
    }
}
