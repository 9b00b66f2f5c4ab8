//! A simulated Modbus TCP slave: holding and input registers driven by models.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use warden_bridges::modbus::MAX_PDU_LEN;
use warden_bridges::modbus::pdu::{self, ExceptionCode, FunctionCode, Request};
use warden_bridges::modbus::tcp_frame::{MAX_FRAME_LEN, decode_frame, encode_frame};

use crate::register_model::RegisterModel;

/// The registers of one simulated device, by 0-based address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceModel {
    /// Modbus unit identifier the device answers to.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Holding registers (function 0x03, writable with 0x06).
    #[serde(default)]
    pub holding: BTreeMap<u16, RegisterModel>,
    /// Input registers (function 0x04).
    #[serde(default)]
    pub input: BTreeMap<u16, RegisterModel>,
}

fn default_unit() -> u8 {
    1
}

struct DeviceState {
    model: DeviceModel,
    started: Instant,
    /// Values written by clients; they override the model until the simulator restarts.
    written: BTreeMap<u16, u16>,
    requests: u64,
}

/// A running simulated slave.
#[derive(Clone)]
pub struct SimulatedSlave {
    state: Arc<Mutex<DeviceState>>,
    address: SocketAddr,
}

impl SimulatedSlave {
    /// Binds `listen` (use port 0 for any free port) and serves until `shutdown`.
    pub async fn start(
        listen: &str,
        model: DeviceModel,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(DeviceState {
            model,
            started: Instant::now(),
            written: BTreeMap::new(),
            requests: 0,
        }));
        let slave = Self { state, address };
        let serving = slave.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _peer)) => {
                            let connection = serving.clone();
                            let stop = shutdown.clone();
                            tokio::spawn(async move { connection.serve(stream, stop).await });
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

    /// The current value of a holding register, as a client would read it now.
    pub async fn holding_register(&self, address: u16) -> Option<u16> {
        let state = self.state.lock().await;
        let elapsed = state.started.elapsed().as_millis() as u64;
        state.holding_value(address, elapsed)
    }

    /// How many requests the simulator has answered.
    pub async fn request_count(&self) -> u64 {
        self.state.lock().await.requests
    }

    async fn serve(self, mut stream: TcpStream, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_FRAME_LEN * 2);
        let mut chunk = [0u8; 4096];
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                read = stream.read(&mut chunk) => read,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            loop {
                let (header, pdu_len, used, response) = match decode_frame(&buf) {
                    Ok(None) => break,
                    Err(_) => return, // not Modbus: drop the connection, as a device would
                    Ok(Some((header, request_pdu, used))) => {
                        let mut response = [0u8; MAX_PDU_LEN];
                        let len = self
                            .answer(header.unit_id, request_pdu, &mut response)
                            .await;
                        (header, len, used, response)
                    }
                };
                buf.drain(..used);
                let mut frame = [0u8; MAX_FRAME_LEN];
                let Ok(frame_len) = encode_frame(header, &response[..pdu_len], &mut frame) else {
                    return;
                };
                if stream.write_all(&frame[..frame_len]).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn answer(&self, unit: u8, request_pdu: &[u8], out: &mut [u8]) -> usize {
        let mut state = self.state.lock().await;
        state.requests += 1;
        let function = request_pdu.first().copied().unwrap_or(0);
        let exception =
            |code, out: &mut [u8]| pdu::encode_exception(function, code, out).unwrap_or(0);
        if unit != state.model.unit {
            return exception(ExceptionCode(0x0B), out);
        }
        let request = match Request::decode(request_pdu) {
            Ok(request) => request,
            Err(pdu::PduError::UnsupportedFunction(_)) => {
                return exception(ExceptionCode::ILLEGAL_FUNCTION, out);
            }
            Err(_) => return exception(ExceptionCode::ILLEGAL_DATA_VALUE, out),
        };
        let elapsed = state.started.elapsed().as_millis() as u64;
        match request {
            Request::ReadRegisters {
                function,
                address,
                count,
            } => {
                let values: Option<Vec<u16>> = (address..address.saturating_add(count))
                    .map(|a| match function {
                        FunctionCode::ReadInputRegisters => {
                            state.model.input.get(&a).map(|m| m.value_at(elapsed))
                        }
                        _ => state.holding_value(a, elapsed),
                    })
                    .collect();
                match values {
                    Some(values) => pdu::encode_read_response(function, values.into_iter(), out)
                        .unwrap_or_else(|_| exception(ExceptionCode::SERVER_DEVICE_FAILURE, out)),
                    None => exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out),
                }
            }
            Request::WriteSingleRegister { address, value } => {
                if !state.model.holding.contains_key(&address) {
                    return exception(ExceptionCode::ILLEGAL_DATA_ADDRESS, out);
                }
                state.written.insert(address, value);
                request.encode(out).unwrap_or(0)
            }
        }
    }
}

impl DeviceState {
    fn holding_value(&self, address: u16, elapsed_ms: u64) -> Option<u16> {
        self.written.get(&address).copied().or_else(|| {
            self.model
                .holding
                .get(&address)
                .map(|m| m.value_at(elapsed_ms))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use warden_bridges::modbus::tcp_client::{Answer, TcpClient};

    fn model() -> DeviceModel {
        let mut holding = BTreeMap::new();
        holding.insert(0, RegisterModel::Constant { value: 215 });
        holding.insert(1, RegisterModel::Counter { period_ms: 60_000 });
        DeviceModel {
            unit: 1,
            holding,
            input: BTreeMap::new(),
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
        assert_eq!(slave.request_count().await, 3);
        shutdown.cancel();
    }
}
