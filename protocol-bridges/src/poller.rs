//! The poll scheduler of one Modbus TCP bridge: reads each point on its interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::modbus::pdu::{FunctionCode, Request};
use crate::modbus::tcp_client::{Answer, ClientError, TcpClient};
use crate::point::{PointConfig, PointValue, RegisterKind};
use crate::request_policy::{GatedRequest, RequestPolicy, RequestSource};

/// A Modbus TCP bridge as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTcpBridgeConfig {
    /// Bridge name, used by the policy and in telemetry (`line1`).
    pub name: String,
    /// Device address, `host:port`.
    pub address: String,
    /// Modbus unit identifier of the device.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Per-request and connect timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The points read from the device.
    pub points: Vec<PointConfig>,
}

fn default_unit() -> u8 {
    1
}

fn default_timeout_ms() -> u64 {
    1000
}

/// One reading of one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Bridge the point belongs to.
    pub bridge: String,
    /// Point name.
    pub point: String,
    /// Engineering value.
    pub value: PointValue,
    /// Engineering unit.
    pub unit: String,
    /// When the value was read, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Counters and state of one bridge, shared with the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BridgeHealth {
    /// True while the bridge holds a working connection.
    pub connected: bool,
    /// Requests answered with values.
    pub reads_ok: u64,
    /// Requests that failed (timeout, I/O, bad frame).
    pub errors: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
    /// Requests the policy refused (never sent).
    pub denied: u64,
    /// The last error, for people.
    pub last_error: Option<String>,
}

/// Polls the points of one Modbus TCP device and sends [`Sample`]s.
pub struct Poller {
    config: ModbusTcpBridgeConfig,
    policy: Box<dyn RequestPolicy>,
    health: Arc<Mutex<BridgeHealth>>,
}

impl Poller {
    /// A poller for `config` whose every request passes `policy`.
    pub fn new(config: ModbusTcpBridgeConfig, policy: Box<dyn RequestPolicy>) -> Self {
        Self {
            config,
            policy,
            health: Arc::default(),
        }
    }

    /// The bridge's health, updated as it runs.
    pub fn health(&self) -> Arc<Mutex<BridgeHealth>> {
        Arc::clone(&self.health)
    }

    /// Runs until `shutdown` fires or the sample receiver is dropped.
    pub async fn run(mut self, samples: mpsc::Sender<Sample>, shutdown: CancellationToken) {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let mut next_due: Vec<Instant> = vec![Instant::now(); self.config.points.len()];
        let mut client: Option<TcpClient> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(earliest) = next_due.iter().min().copied() else {
                shutdown.cancelled().await;
                return;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(earliest.into()) => {}
            }
            if client.is_none() {
                match TcpClient::connect(&self.config.address, timeout).await {
                    Ok(connected) => {
                        tracing::info!(bridge = %self.config.name, address = %self.config.address, "connected");
                        client = Some(connected);
                        backoff = Duration::from_millis(100);
                        self.update_health(|h| h.connected = true);
                    }
                    Err(error) => {
                        self.record_error(&error);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let now = Instant::now();
            for (index, due) in next_due.iter_mut().enumerate() {
                if *due > now {
                    continue;
                }
                let interval = self.config.points[index].poll_interval_ms.max(1);
                *due = now + Duration::from_millis(interval);
                let Some(connection) = client.as_mut() else {
                    break;
                };
                match self.poll_point(connection, index).await {
                    Ok(Some(sample)) => {
                        if samples.send(sample).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        self.record_error(&error);
                        client = None;
                        self.update_health(|h| h.connected = false);
                    }
                }
            }
        }
    }

    async fn poll_point(
        &mut self,
        client: &mut TcpClient,
        index: usize,
    ) -> Result<Option<Sample>, ClientError> {
        let point = &self.config.points[index];
        let function = match point.kind {
            RegisterKind::Holding => FunctionCode::ReadHoldingRegisters,
            RegisterKind::Input => FunctionCode::ReadInputRegisters,
        };
        let request = Request::ReadRegisters {
            function,
            address: point.address,
            count: point.data_type.register_count(),
        };
        let gated = GatedRequest {
            bridge: &self.config.name,
            unit: self.config.unit,
            request: &request,
            source: RequestSource::Poll,
        };
        if let Err(denial) = self.policy.check(&gated) {
            tracing::warn!(bridge = %self.config.name, point = %point.name, %denial, "request denied");
            self.update_health(|h| {
                h.denied += 1;
                h.last_error = Some(format!("point {}: {denial}", point.name));
            });
            return Ok(None);
        }
        match client.call(self.config.unit, &request).await? {
            Answer::Registers(registers) => {
                let point = &self.config.points[index];
                let Some(value) = point.decode(&registers) else {
                    return Err(ClientError::Pdu(crate::modbus::pdu::PduError::BadLength));
                };
                self.update_health(|h| h.reads_ok += 1);
                Ok(Some(Sample {
                    bridge: self.config.name.clone(),
                    point: point.name.clone(),
                    value,
                    unit: point.unit.clone(),
                    timestamp_ms: unix_millis(),
                }))
            }
            Answer::Exception(code) => {
                let name = self.config.points[index].name.clone();
                tracing::warn!(bridge = %self.config.name, point = %name, %code, "device exception");
                self.update_health(|h| {
                    h.exceptions += 1;
                    h.last_error = Some(format!("point {name}: {code}"));
                });
                Ok(None)
            }
            Answer::Written => Err(ClientError::Pdu(crate::modbus::pdu::PduError::BadLength)),
        }
    }

    fn record_error(&self, error: &ClientError) {
        tracing::warn!(bridge = %self.config.name, %error, "modbus error");
        self.update_health(|h| {
            h.errors += 1;
            h.last_error = Some(error.to_string());
        });
    }

    fn update_health(&self, change: impl FnOnce(&mut BridgeHealth)) {
        // A poisoned lock only means another holder panicked mid-update; counters stay usable.
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut health);
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
