//! The device twin: signed policy bundles from the fleet, applied only after
//! verification, and the state the unit reports back.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_keychain::{Purpose, RootKey};
use warden_link::topics::{
    DeviceEvent, PROTOCOL_VERSION, TwinDesired, TwinReported, event_kind, from_hex,
};
use warden_link::{ControlMessage, ControlSender};
use warden_policy::CompiledPolicy;
use warden_policy::bundle::ProductId;
use warden_policy::bundle::store::BundleStore;

/// The vendor roots pluton holds for policy bundles (none without pluton).
pub fn policy_roots(pluton_socket: Option<&Path>) -> anyhow::Result<Vec<RootKey>> {
    let Some(socket) = pluton_socket else {
        return Ok(Vec::new());
    };
    let mut client = warden_pluton_api::PlutonClient::connect(socket)
        .map_err(|e| anyhow::anyhow!("pluton {}: {e}", socket.display()))?;
    let installed = client
        .root_keys()
        .map_err(|e| anyhow::anyhow!("pluton root keys: {e}"))?;
    Ok(installed
        .iter()
        .filter_map(|root| root.to_root_key().ok())
        .filter(|root| root.purposes().bits() & Purpose::POLICY.bits() != 0)
        .collect())
}

/// Opens the unit's bundle store: the last good bundle, verified again.
pub fn open_store(dir: &Path, roots: &[RootKey], product: &str) -> anyhow::Result<BundleStore> {
    let product = ProductId::new(product)
        .ok_or_else(|| anyhow::anyhow!("product {product:?} is not a valid product id"))?;
    BundleStore::open(dir, roots, &[], product)
        .map_err(|e| anyhow::anyhow!("policy bundle store {}: {e}", dir.display()))
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

/// Applies desired states until shutdown: a bundle that verifies replaces the policy
/// of every bridge; one that does not changes nothing and is reported. Reported states
/// and `policy-applied` / `policy-refused` events go through the durable control queue.
pub async fn run(
    mut desired: mpsc::Receiver<TwinDesired>,
    control: ControlSender,
    mut store: Option<BundleStore>,
    bridges: crate::bridge_set::BridgeSet,
    mut current: TwinReported,
    shutdown: CancellationToken,
) {
    control.send_or_log(&ControlMessage::TwinReported(current.clone()));
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = desired.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Some(hex) = next.policy_bundle else {
            continue;
        };
        let outcome = match (&mut store, from_hex(&hex)) {
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
        let event;
        current = match outcome {
            Ok((policy, version, bundle)) => {
                let policy = Arc::new(policy);
                let cores = bridges.apply_policy(&policy, bundle).await;
                tracing::info!(version, "applied a verified policy bundle");
                event = DeviceEvent::now(
                    event_kind::POLICY_APPLIED,
                    format!(
                        "policy bundle version {version} ({}) verified and applied to {} bridges{cores}",
                        policy.policy_name().unwrap_or("unnamed"),
                        bridges.len()
                    ),
                );
                reported_for(&policy, Some(version), None)
            }
            Err(error) => {
                tracing::warn!(%error, "policy bundle refused; the running policy stays");
                event = DeviceEvent::now(
                    event_kind::POLICY_REFUSED,
                    format!("policy bundle refused, the running policy stays: {error}"),
                );
                TwinReported {
                    last_error: Some(error),
                    ..current
                }
            }
        };
        control.send_or_log(&ControlMessage::Event(event));
        control.send_or_log(&ControlMessage::TwinReported(current.clone()));
    }
}
