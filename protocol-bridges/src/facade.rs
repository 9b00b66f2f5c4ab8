//! The gateway facade: a plant-side Modbus TCP server in front of the bridges.
//!
//! SCADA clients address unit IDs; each configured unit maps to a bridge and a unit
//! behind it. Every request is decoded with the shared codec, checked by the bridge's
//! policy gate with source `facade`, and only then forwarded. A denied request is
//! answered with exception 02 (addresses refused) or 01 (anything else) and counted;
//! an unknown unit gets 0x0A, a downstream that does not answer 0x0B.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_listeners::{AcceptBackoff, AdmissionGate, Deadlines, GuardedStream, Limits};

use crate::bridge::{BridgeHandle, RequestError};
use crate::config::FacadeConfig;
use crate::modbus::pdu::{self, ExceptionCode, PduError, Request};
use crate::modbus::tcp_frame::MAX_FRAME_LEN;
use crate::modbus::tcp_server::{ModbusService, ServeError, serve_stream};
use crate::modbus::{Answer, ClientError};
use crate::request_policy::RequestSource;

/// The facade's counters, for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FacadeHealth {
    /// Clients connected now.
    pub clients: u64,
    /// Connections refused because `max_clients` were connected (or the client's
    /// address held its share), all busy: idle or unanswered ones yield instead.
    pub refused_connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests forwarded and answered downstream (normal or exception).
    pub forwarded: u64,
    /// Requests the policy refused.
    pub denied: u64,
    /// Requests that could not be forwarded (unknown unit, bad request, no answer).
    pub failed: u64,
    /// The last denial, for people.
    pub last_denial: Option<String>,
}

/// A SCADA client's request must be complete and answered within 15 s (a downstream
/// timeout is seconds); a client silent for 120 s (longer than any sane poll period)
/// is closed.
const FACADE_DEADLINES: Deadlines = Deadlines {
    request: std::time::Duration::from_secs(15),
    idle: std::time::Duration::from_secs(120),
};

/// `max_clients` in total, half of them (at least one) per client address, so one
/// host cannot take every slot.
fn facade_limits(max_clients: usize) -> Limits {
    let total = max_clients.max(1);
    Limits {
        total,
        per_address: total.div_ceil(2),
    }
}

/// A started facade.
pub struct RunningFacade {
    /// The address it listens on.
    pub address: SocketAddr,
    /// Its counters.
    pub health: Arc<Mutex<FacadeHealth>>,
}

struct Route {
    bridge: BridgeHandle,
    target_unit: u8,
}

/// Binds `config.listen` and serves until `shutdown`; `bridges` are the bridges the
/// routes may name. Returns the running facade and the server task to spawn.
pub async fn start_facade(
    config: &FacadeConfig,
    bridges: &[BridgeHandle],
    shutdown: CancellationToken,
) -> std::io::Result<(RunningFacade, impl Future<Output = ()> + Send + 'static)> {
    let mut routes = BTreeMap::new();
    for route in &config.units {
        let Some(bridge) = bridges.iter().find(|b| b.name() == route.bridge) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "facade unit {} names no bridge {:?}",
                    route.unit, route.bridge
                ),
            ));
        };
        routes.insert(
            route.unit,
            Route {
                bridge: bridge.clone(),
                target_unit: route.target_unit.unwrap_or(route.unit),
            },
        );
    }
    let listener = TcpListener::bind(&config.listen).await?;
    let address = listener.local_addr()?;
    let health = Arc::new(Mutex::new(FacadeHealth::default()));
    let routes = Arc::new(routes);
    let gate = AdmissionGate::new(facade_limits(config.max_clients));
    let serving_health = Arc::clone(&health);
    let task = async move {
        tracing::info!(%address, "gateway facade listening");
        let mut backoff = AcceptBackoff::new("gateway facade");
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    let wait = backoff.failed(&error);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            backoff.succeeded();
            let slot = match gate.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refused) => {
                    tracing::warn!(%peer, %refused, "facade client refused");
                    update(&serving_health, |h| h.refused_connections += 1);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let stream = GuardedStream::new(stream, slot, FACADE_DEADLINES);
            let connection = Connection {
                routes: Arc::clone(&routes),
                health: Arc::clone(&serving_health),
                peer,
            };
            let stop = shutdown.clone();
            tokio::spawn(async move {
                update(&connection.health, |h| h.clients += 1);
                let ended = serve_stream(stream, &connection, MAX_FRAME_LEN * 4, &stop).await;
                if let Err(error @ ServeError::NotModbus(_)) = ended {
                    tracing::warn!(peer = %connection.peer, %error, "facade client closed");
                }
                update(&connection.health, |h| h.clients -= 1);
            });
        }
    };
    Ok((RunningFacade { address, health }, task))
}

fn update(health: &Mutex<FacadeHealth>, change: impl FnOnce(&mut FacadeHealth)) {
    change(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

struct Connection {
    routes: Arc<BTreeMap<u8, Route>>,
    health: Arc<Mutex<FacadeHealth>>,
    peer: SocketAddr,
}

impl ModbusService for Connection {
    async fn answer(&self, unit: u8, request_pdu: &[u8], out: &mut [u8]) -> usize {
        update(&self.health, |h| h.requests += 1);
        let function = request_pdu.first().copied().unwrap_or(0);
        let exception = |code: ExceptionCode, out: &mut [u8]| {
            pdu::encode_exception(function & 0x7F, code, out).unwrap_or(0)
        };
        let Some(route) = self.routes.get(&unit) else {
            update(&self.health, |h| h.failed += 1);
            return exception(ExceptionCode::GATEWAY_PATH_UNAVAILABLE, out);
        };
        let request = match Request::decode(request_pdu) {
            Ok(request) => request,
            Err(PduError::UnsupportedFunction(_)) => {
                update(&self.health, |h| h.failed += 1);
                return exception(ExceptionCode::ILLEGAL_FUNCTION, out);
            }
            Err(_) => {
                update(&self.health, |h| h.failed += 1);
                return exception(ExceptionCode::ILLEGAL_DATA_VALUE, out);
            }
        };
        let result = route
            .bridge
            .request(route.target_unit, request.clone(), RequestSource::Facade)
            .await;
        let encoded = match result {
            Ok(answer) => {
                update(&self.health, |h| h.forwarded += 1);
                match answer {
                    Answer::Registers(values) => {
                        pdu::encode_read_response(request.function(), values.into_iter(), out)
                    }
                    Answer::Bits(bits) => {
                        pdu::encode_bits_response(request.function(), bits.into_iter(), out)
                    }
                    Answer::Written => pdu::encode_write_response(&request, out),
                    Answer::Exception(code) => Ok(exception(code, out)),
                }
            }
            Err(RequestError::Denied(denial)) => {
                let text = format!(
                    "{} unit {unit} -> {} unit {}: {denial}",
                    self.peer,
                    route.bridge.name(),
                    route.target_unit
                );
                update(&self.health, |h| {
                    h.denied += 1;
                    h.last_denial = Some(text);
                });
                Ok(exception(denial.exception, out))
            }
            Err(RequestError::Failed { error, .. }) => {
                update(&self.health, |h| h.failed += 1);
                let code = match error {
                    ClientError::Timeout | ClientError::Corrupted => {
                        ExceptionCode::GATEWAY_TARGET_FAILED
                    }
                    _ => ExceptionCode::GATEWAY_PATH_UNAVAILABLE,
                };
                Ok(exception(code, out))
            }
        };
        encoded.unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out))
    }
}
