//! Every bridge the appliance runs (Modbus, real-time core, BLE) behind one set.
//!
//! The single-process runtime and the bridges compartment both start their bridges
//! here, in one order: the private network first (its loopback forwards are what the
//! Modbus TCP bridges on it connect to), then the Modbus bridges and the facade, then
//! the BLE sensors. Cloud commands and newly applied signed policies reach every kind
//! through [`BridgeSet`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_ble::{BleBridgeHandle, BleHealth, BlePolicyGate};
use warden_bridges::request_policy::{PolicyGate, RequestSource};
use warden_bridges::rtcore::{RtCoreBus, RtCoreError};
use warden_bridges::{BridgeHandle, BridgeHealth, Sample, WriteOutcome, WriteTarget, WriteValue};
use warden_policy::CompiledPolicy;
use warden_privnet::PrivnetHandle;

use crate::config::{ApplianceBridges, PrivnetConfig};
use crate::state::BridgeView;

/// How often a BLE bridge's counters are copied into its [`BridgeHealth`].
const BLE_HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// The handles of every started bridge; cheap to clone.
#[derive(Clone, Default)]
pub struct BridgeSet {
    modbus: Vec<BridgeHandle>,
    ble: Vec<BleBridgeHandle>,
    cores: Vec<(String, RtCoreBus)>,
}

/// What [`start`] started.
pub struct StartedBridgeSet {
    /// Handles for commands and policy changes.
    pub set: BridgeSet,
    /// Every bridge in config order: Modbus TCP, Modbus RTU, then BLE.
    pub listings: Vec<BridgeView>,
    /// The private network's port, if configured.
    pub privnet: Option<PrivnetHandle>,
    /// The facade's address and counters, if configured.
    pub facade: Option<(
        std::net::SocketAddr,
        Arc<Mutex<warden_bridges::FacadeHealth>>,
    )>,
}

/// Starts the private network (if configured), then every bridge with its own policy
/// gate over `policy`; samples go to `samples`, tasks into `tasks`, all stop on
/// `shutdown`.
pub async fn start(
    bridges: ApplianceBridges,
    privnet: Option<PrivnetConfig>,
    policy: Arc<CompiledPolicy>,
    samples: mpsc::Sender<Sample>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<StartedBridgeSet> {
    let privnet = match privnet {
        Some(config) => {
            let spec = config
                .validate("privnet")
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            let port =
                warden_privnet::start(spec, warden_privnet::PortDevice::Tap, shutdown.clone())
                    .with_context(|| {
                        format!("cannot start the private network on {}", config.interface)
                    })?;
            for (listen, to) in port.forwards() {
                tracing::info!(%listen, %to, "private network forward");
            }
            Some(port)
        }
        None => None,
    };
    let started = warden_bridges::runtime::start(
        bridges.modbus(),
        Arc::clone(&policy),
        samples.clone(),
        shutdown.clone(),
        tasks,
    )
    .await
    .context("cannot start the bridges")?;
    let mut set = BridgeSet::default();
    let mut listings = Vec::new();
    for bridge in started.bridges {
        if let Some(core) = bridge.rtcore {
            set.cores.push((bridge.handle.name().to_owned(), core));
        }
        listings.push(BridgeView {
            name: bridge.handle.name().to_owned(),
            address: bridge.address,
            points: bridge.points,
            health: bridge.handle.health(),
        });
        set.modbus.push(bridge.handle);
    }
    for (b, config) in bridges.ble.into_iter().enumerate() {
        let spec = config
            .validate(&format!("bridges.ble[{b}]"))
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        if policy.bridge_id(&spec.name).is_none() {
            tracing::warn!(bridge = %spec.name, "the policy names no such bridge: every operation will be denied");
        }
        let sensor = match (&config.address, &config.device_name) {
            (Some(address), _) => address.clone(),
            (None, Some(name)) => format!("{name:?}"),
            (None, None) => String::new(),
        };
        let handle = warden_ble::start(
            spec,
            Box::new(BlePolicyGate::new(Arc::clone(&policy))),
            samples.clone(),
            shutdown.clone(),
        )?;
        let health = Arc::new(Mutex::new(BridgeHealth::default()));
        tasks.spawn(mirror_ble_health(
            handle.clone(),
            Arc::clone(&health),
            shutdown.clone(),
        ));
        listings.push(BridgeView {
            name: config.name.clone(),
            address: format!("BLE {sensor} via {}", config.hci),
            points: config.points.iter().map(|p| p.name.clone()).collect(),
            health,
        });
        set.ble.push(handle);
    }
    Ok(StartedBridgeSet {
        set,
        listings,
        privnet,
        facade: started.facade,
    })
}

/// A BLE bridge's counters in the shape every bridge shows: connected while the
/// sensor is, reads counting notifications too, errors counting undecodable values
/// and lost connections.
pub fn ble_bridge_health(ble: &BleHealth) -> BridgeHealth {
    BridgeHealth {
        connected: ble.state == warden_ble::LinkState::Connected,
        reads_ok: ble.reads + ble.notifications,
        errors: ble.decode_errors + ble.disconnections,
        denied: ble.denied,
        writes_ok: ble.writes,
        last_error: ble.last_error.clone(),
        ..BridgeHealth::default()
    }
}

async fn mirror_ble_health(
    handle: BleBridgeHandle,
    health: Arc<Mutex<BridgeHealth>>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(BLE_HEALTH_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        *health.lock().unwrap_or_else(PoisonError::into_inner) =
            ble_bridge_health(&handle.health());
    }
}

impl BridgeSet {
    /// How many bridges there are, of every kind.
    pub fn len(&self) -> usize {
        self.modbus.len() + self.ble.len()
    }

    /// True when no bridge is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Modbus bridges (the facade and the status control socket use them).
    pub fn modbus(&self) -> &[BridgeHandle] {
        &self.modbus
    }

    /// Writes `value` to `point` of `bridge` on behalf of `source`, through that
    /// bridge's policy gate; `None` when no bridge has that name.
    pub async fn write_point(
        &self,
        bridge: &str,
        point: &str,
        value: f64,
        source: RequestSource,
    ) -> Option<WriteOutcome> {
        if let Some(handle) = self.modbus.iter().find(|b| b.name() == bridge) {
            let target = WriteTarget::Point(point.to_owned());
            return Some(
                handle
                    .write(&target, &WriteValue::Number(value), source)
                    .await,
            );
        }
        let handle = self.ble.iter().find(|b| b.name() == bridge)?;
        Some(handle.write(point, WriteValue::Number(value), source).await)
    }

    /// Gives every bridge a gate over `policy` (a newly verified signed bundle).
    pub fn set_policy(&self, policy: &Arc<CompiledPolicy>) {
        for handle in &self.modbus {
            handle.set_policy(Box::new(PolicyGate::new(Arc::clone(policy))));
        }
        for handle in &self.ble {
            handle.set_policy(Box::new(BlePolicyGate::new(Arc::clone(policy))));
        }
    }

    /// Uploads the signed `bundle` to every real-time core (RTU lines with
    /// `transport = "rtcore"`), which verify it themselves before they apply it; the
    /// outcome per bridge (the version the core applied, or why not).
    pub async fn push_bundle_to_cores(
        &self,
        bundle: Arc<Vec<u8>>,
    ) -> Vec<(String, Result<u64, RtCoreError>)> {
        let mut outcomes = Vec::with_capacity(self.cores.len());
        for (name, core) in &self.cores {
            let outcome = core.load_bundle(Arc::clone(&bundle)).await;
            match &outcome {
                Ok(version) => {
                    tracing::info!(bridge = %name, version, "real-time core applied the new policy bundle")
                }
                Err(error) => {
                    tracing::warn!(bridge = %name, %error, "real-time core did not apply the new policy bundle")
                }
            }
            outcomes.push((name.clone(), outcome));
        }
        outcomes
    }

    /// Applies a verified signed policy to every bridge: the application's gates at
    /// once, then the cores (each verifies `bundle` again). Returns a sentence for the
    /// `policy-applied` event about the cores ("" without cores).
    pub async fn apply_policy(&self, policy: &Arc<CompiledPolicy>, bundle: Arc<Vec<u8>>) -> String {
        self.set_policy(policy);
        let outcomes = self.push_bundle_to_cores(bundle).await;
        describe_core_outcomes(&outcomes)
    }
}

/// "; real-time cores: line2 applied version 5, line3 refused: …" (empty for none).
pub fn describe_core_outcomes(outcomes: &[(String, Result<u64, RtCoreError>)]) -> String {
    if outcomes.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = outcomes
        .iter()
        .map(|(name, outcome)| match outcome {
            Ok(version) => format!("{name} applied version {version}"),
            Err(error) => format!("{name} did not: {error}"),
        })
        .collect();
    format!("; real-time cores: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ble_counters_map_onto_bridge_counters() {
        let ble = BleHealth {
            state: warden_ble::LinkState::Connected,
            reads: 3,
            notifications: 4,
            decode_errors: 1,
            disconnections: 2,
            denied: 5,
            writes: 6,
            last_error: Some("gone".into()),
            ..BleHealth::default()
        };
        let health = ble_bridge_health(&ble);
        assert!(health.connected);
        assert_eq!(
            (
                health.reads_ok,
                health.errors,
                health.denied,
                health.writes_ok
            ),
            (7, 3, 5, 6)
        );
        assert_eq!(health.last_error.as_deref(), Some("gone"));
        let waiting = BleHealth {
            state: warden_ble::LinkState::Waiting,
            ..ble
        };
        assert!(!ble_bridge_health(&waiting).connected);
    }

    #[test]
    fn core_outcomes_read_as_one_sentence() {
        assert_eq!(describe_core_outcomes(&[]), "");
        let outcomes = vec![
            ("line2".to_owned(), Ok(5)),
            ("line3".to_owned(), Err(RtCoreError::NoPolicy)),
        ];
        assert_eq!(
            describe_core_outcomes(&outcomes),
            "; real-time cores: line2 applied version 5, line3 did not: the real-time core has no verified policy bundle; every request is denied"
        );
    }
}
