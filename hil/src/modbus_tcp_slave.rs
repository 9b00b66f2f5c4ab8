//! A simulated Modbus TCP slave (or gateway of several units) driven by models.
//!
//! Built to never be the bottleneck of a benchmark: each connection runs the bridge's
//! own server loop ([`serve_connection`]: every complete frame of a read answered,
//! the answers written back in one write); device state sits behind a short-held
//! `std` mutex.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_bridges::modbus::pdu::{self, ExceptionCode};
use warden_bridges::modbus::tcp_server::{ModbusService, serve_connection};

pub use crate::simulated_device::DeviceModel;
use crate::simulated_device::SimulatedDevice;

struct Devices {
    started: Instant,
    devices: Vec<(u8, Mutex<SimulatedDevice>)>,
    /// While set, every request is answered "device failure" and nothing is read.
    paused: AtomicBool,
}

impl Devices {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn device(&self, unit: u8) -> Option<std::sync::MutexGuard<'_, SimulatedDevice>> {
        self.devices
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, d)| d.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A running simulated slave.
#[derive(Clone)]
pub struct SimulatedSlave {
    state: Arc<Devices>,
    address: SocketAddr,
    service_time: Duration,
}

impl SimulatedSlave {
    /// Binds `listen` (use port 0 for any free port) and serves one device until
    /// `shutdown`.
    pub async fn start(
        listen: &str,
        model: DeviceModel,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        Self::start_many(listen, vec![model], shutdown).await
    }

    /// Binds `listen` and serves several units, as a gateway would; a request for
    /// another unit is answered with exception 0x0B.
    pub async fn start_many(
        listen: &str,
        models: Vec<DeviceModel>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        Self::start_with_service_time(listen, models, Duration::ZERO, shutdown).await
    }

    /// Like [`Self::start_many`], but each answer takes `service_time` (at timer
    /// granularity, about a millisecond), as a real controller's scan does; the
    /// requests of one connection are served one after the other.
    pub async fn start_with_service_time(
        listen: &str,
        models: Vec<DeviceModel>,
        service_time: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Devices {
            started: Instant::now(),
            devices: models
                .iter()
                .map(|m| (m.unit, Mutex::new(SimulatedDevice::new(m))))
                .collect(),
            paused: AtomicBool::new(false),
        });
        let slave = Self {
            state,
            address,
            service_time,
        };
        let serving = slave.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _peer)) => {
                            let connection = serving.clone();
                            let stop = shutdown.clone();
                            tokio::spawn(async move {
                                // A non-Modbus client is dropped, as a device would.
                                let _ = serve_connection(stream, &connection, 64 * 1024, &stop).await;
                            });
                        }
                        Err(error) => tracing::warn!(%error, "simulator accept failed"),
                    }
                }
            }
        });
        tracing::info!(%address, "simulated modbus tcp slave listening");
        Ok(slave)
    }

    /// The address the simulator listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The current value of a holding register of the first device.
    pub async fn holding_register(&self, address: u16) -> Option<u16> {
        let elapsed = self.state.elapsed_ms();
        let mut device = self
            .state
            .devices
            .first()?
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        device.holding_register(address, elapsed)
    }

    /// How many times clients have read a holding register of the first device (for a
    /// `read_count` register: the last value it served).
    pub fn holding_reads(&self, address: u16) -> Option<u64> {
        self.state
            .devices
            .first()?
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holding_reads(address)
    }

    /// Stops (`true`) or resumes serving reads: while paused every request is answered
    /// with exception 0x04 and no register is read, so read counts stand still while
    /// connections stay open.
    pub fn set_paused(&self, paused: bool) {
        self.state.paused.store(paused, Ordering::SeqCst);
    }

    /// How many requests the simulator has answered (all units).
    pub async fn request_count(&self) -> u64 {
        self.state
            .devices
            .iter()
            .map(|(_, d)| d.lock().unwrap_or_else(PoisonError::into_inner).requests())
            .sum()
    }
}

impl ModbusService for SimulatedSlave {
    async fn answer(&self, unit: u8, request_pdu: &[u8], out: &mut [u8]) -> usize {
        if !self.service_time.is_zero() {
            tokio::time::sleep(self.service_time).await;
        }
        let elapsed = self.state.elapsed_ms();
        let function = request_pdu.first().copied().unwrap_or(0) & 0x7F;
        match self.state.device(unit) {
            // Checked under the device's lock: a read either counts and is answered,
            // or does not count.
            Some(_) if self.state.paused.load(Ordering::SeqCst) => {
                pdu::encode_exception(function, ExceptionCode::SERVER_DEVICE_FAILURE, out)
                    .unwrap_or(0)
            }
            Some(mut device) => device.answer(request_pdu, elapsed, out),
            None => pdu::encode_exception(function, ExceptionCode::GATEWAY_TARGET_FAILED, out)
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use warden_bridges::modbus::pdu::{FunctionCode, Request};
    use warden_bridges::modbus::tcp_client::{Answer, TcpClient};

    use crate::register_model::RegisterModel;

    fn model() -> DeviceModel {
        let mut holding = BTreeMap::new();
        holding.insert(0, RegisterModel::Constant { value: 215 });
        holding.insert(1, RegisterModel::Counter { period_ms: 60_000 });
        let mut coils = BTreeMap::new();
        coils.insert(4, RegisterModel::Constant { value: 1 });
        DeviceModel {
            unit: 1,
            holding,
            coils,
            ..DeviceModel::default()
        }
    }

    #[tokio::test]
    async fn answers_reads_writes_and_exceptions() {
        let shutdown = CancellationToken::new();
        let slave = SimulatedSlave::start("127.0.0.1:0", model(), shutdown.clone())
            .await
            .expect("bind");
        let mut client = TcpClient::connect(&slave.address().to_string(), Duration::from_secs(2))
            .await
            .expect("connect");
        let read = Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address: 0,
            count: 2,
        };
        assert_eq!(
            client.call(1, &read).await,
            Ok(Answer::Registers(vec![215, 0]))
        );
        let write = Request::WriteSingleRegister {
            address: 0,
            value: 300,
        };
        assert_eq!(client.call(1, &write).await, Ok(Answer::Written));
        assert_eq!(slave.holding_register(0).await, Some(300));
        let missing = Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address: 5,
            count: 1,
        };
        assert_eq!(
            client.call(1, &missing).await,
            Ok(Answer::Exception(ExceptionCode::ILLEGAL_DATA_ADDRESS))
        );
        let coils = Request::ReadBits {
            function: FunctionCode::ReadCoils,
            address: 4,
            count: 1,
        };
        assert_eq!(client.call(1, &coils).await, Ok(Answer::Bits(vec![true])));
        assert_eq!(
            client.call(9, &read).await,
            Ok(Answer::Exception(ExceptionCode::GATEWAY_TARGET_FAILED))
        );
        assert_eq!(slave.request_count().await, 4);
        shutdown.cancel();
    }
}
