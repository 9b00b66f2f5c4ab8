//! Starting the configured bridges, their pollers and the facade inside the appliance.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bridge::{BridgeHandle, Downstream};
use crate::config::BridgesConfig;
use crate::facade::{FacadeHealth, start_facade};
use crate::modbus::fair_queue::BackoffPolicy;
use crate::modbus::rtu_bus::{BusOptions, RtuBus};
use crate::modbus::tcp_pool::TcpDevice;
use crate::poller::Poller;
use crate::request_policy::PolicyGate;
use crate::sample::Sample;

/// One started bridge.
#[derive(Debug, Clone)]
pub struct StartedBridge {
    /// The handle for writes (cloud commands) and counters.
    pub handle: BridgeHandle,
    /// The downstream, for people.
    pub address: String,
    /// Point names in config order.
    pub points: Vec<String>,
    /// The real-time core driving the line (`transport = "rtcore"`), to push newly
    /// applied signed policy bundles to it ([`crate::rtcore::RtCoreBus::load_bundle`]).
    pub rtcore: Option<crate::rtcore::RtCoreBus>,
}

/// Everything [`start`] started.
pub struct StartedBridges {
    /// Bridges in config order: Modbus TCP first, then Modbus RTU.
    pub bridges: Vec<StartedBridge>,
    /// The facade's address and counters, if configured.
    pub facade: Option<(SocketAddr, Arc<Mutex<FacadeHealth>>)>,
}

/// Why the bridges could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The facade could not listen.
    #[error("the gateway facade cannot listen on {listen}: {source}")]
    FacadeListen {
        /// The configured address.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line through the real-time core cannot start (its bundle is unreadable).
    #[error("bridge {bridge}: {source}")]
    RtCore {
        /// The bridge.
        bridge: String,
        /// Why.
        source: crate::rtcore::RtCoreError,
    },
}

/// Starts every bridge in `config` (each with its own policy gate over `policy`), its
/// poller sending to `samples`, and the facade; tasks go into `tasks` and stop on
/// `shutdown`. Serial ports open inside their bus task and reopen with backoff, so a
/// missing adapter does not stop the appliance.
pub async fn start(
    config: BridgesConfig,
    policy: Arc<warden_policy::CompiledPolicy>,
    samples: mpsc::Sender<Sample>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<StartedBridges, StartError> {
    let mut bridges = Vec::new();
    let mut pollers = Vec::new();
    let warn_unknown = |name: &str| {
        if policy.bridge_id(name).is_none() {
            tracing::warn!(bridge = %name, "the policy names no such bridge: every request will be denied");
        }
    };
    for bridge in config.modbus_tcp {
        warn_unknown(&bridge.name);
        let device = TcpDevice::new(
            bridge.address.clone(),
            bridge.max_connections,
            Duration::from_millis(bridge.timeout_ms),
        );
        let handle = BridgeHandle::new(
            bridge.name.clone(),
            bridge.address.clone(),
            bridge.unit,
            bridge.points,
            Downstream::Tcp(Arc::new(device)),
            Box::new(PolicyGate::new(Arc::clone(&policy))),
            Arc::default(),
        );
        pollers.push(Poller::for_bridge(handle.clone(), bridge.max_gap));
        bridges.push(started(handle));
    }
    for bridge in config.modbus_rtu {
        warn_unknown(&bridge.name);
        let line = bridge.line();
        let options = BusOptions {
            timing: line.timing(),
            response_timeout: Duration::from_millis(bridge.timeout_ms),
            retries: bridge.retries,
            backoff: BackoffPolicy {
                base: Duration::from_millis(bridge.backoff_ms),
                max: Duration::from_secs(5),
            },
        };
        let health = Arc::new(Mutex::new(crate::health::BridgeHealth::default()));
        let mut core = None;
        let (downstream, address) = match bridge.mailbox_path() {
            None => {
                let (bus, task) = RtuBus::for_serial_line(
                    line.clone(),
                    options,
                    Arc::clone(&health),
                    shutdown.clone(),
                );
                tasks.spawn(task);
                (Downstream::Rtu(bus), line.describe())
            }
            Some(mailbox) => {
                let setup = crate::rtcore::CoreSetup::from_config(&bridge).map_err(|source| {
                    StartError::RtCore {
                        bridge: bridge.name.clone(),
                        source,
                    }
                })?;
                let (bus, task) = crate::rtcore::RtCoreBus::for_mailbox_device(
                    mailbox.to_owned(),
                    setup,
                    Arc::clone(&health),
                    shutdown.clone(),
                );
                tasks.spawn(task);
                core = Some(bus.clone());
                (Downstream::RtCore(bus), crate::rtcore::describe(&bridge))
            }
        };
        let handle = BridgeHandle::new(
            bridge.name.clone(),
            address,
            bridge.unit,
            bridge.points,
            downstream,
            Box::new(PolicyGate::new(Arc::clone(&policy))),
            health,
        );
        pollers.push(Poller::for_bridge(handle.clone(), bridge.max_gap));
        bridges.push(StartedBridge {
            rtcore: core,
            ..started(handle)
        });
    }
    for poller in pollers {
        tasks.spawn(poller.run(samples.clone(), shutdown.clone()));
    }
    let facade = match config.facade {
        Some(facade) => {
            let handles: Vec<BridgeHandle> = bridges.iter().map(|b| b.handle.clone()).collect();
            let (running, task) = start_facade(&facade, &handles, shutdown.clone())
                .await
                .map_err(|source| StartError::FacadeListen {
                    listen: facade.listen.clone(),
                    source,
                })?;
            tasks.spawn(task);
            Some((running.address, running.health))
        }
        None => None,
    };
    Ok(StartedBridges { bridges, facade })
}

fn started(handle: BridgeHandle) -> StartedBridge {
    StartedBridge {
        address: handle.address().to_owned(),
        points: handle.points().iter().map(|p| p.name.clone()).collect(),
        handle,
        rtcore: None,
    }
}
