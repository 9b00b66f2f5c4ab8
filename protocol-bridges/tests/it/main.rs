//! Integration tests: the bridges against an independent Modbus implementation
//! (tokio-modbus), over TCP and over a pseudo-terminal pair, and the facade with
//! the real policy engine in the path.

use std::collections::BTreeMap;
use std::future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::prelude::{
    ExceptionCode as TmException, Request as TmRequest, Response as TmResponse, SlaveRequest,
};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_util::sync::CancellationToken;
use warden_bridges::bridge::{BridgeHandle, Downstream};
use warden_bridges::config::{FacadeConfig, FacadeRoute};
use warden_bridges::facade::start_facade;
use warden_bridges::modbus::Answer;
use warden_bridges::modbus::fair_queue::BackoffPolicy;
use warden_bridges::modbus::pdu::{
    CoilValues, ExceptionCode, FunctionCode, RegisterValues, Request,
};
use warden_bridges::modbus::rtu::CharTiming;
use warden_bridges::modbus::rtu_bus::{BusOptions, RtuBus};
use warden_bridges::modbus::tcp_pool::TcpDevice;
use warden_bridges::request_policy::{PolicyGate, RequestSource};
use warden_bridges::{PointConfig, WriteOutcome, WriteTarget, WriteValue};

/// Registers and coils of a tokio-modbus test server; unknown addresses answer 02.
#[derive(Clone, Default)]
struct Store {
    registers: Arc<Mutex<BTreeMap<u16, u16>>>,
    coils: Arc<Mutex<BTreeMap<u16, bool>>>,
}

impl Store {
    fn with_registers(range: std::ops::Range<u16>) -> Self {
        let store = Self::default();
        {
            let mut registers = store.registers.lock().expect("lock");
            let mut coils = store.coils.lock().expect("lock");
            for a in range {
                registers.insert(a, a * 10);
                coils.insert(a, a % 2 == 0);
            }
        }
        store
    }

    fn answer(&self, request: TmRequest<'static>) -> Result<TmResponse, TmException> {
        let mut registers = self.registers.lock().expect("lock");
        let mut coils = self.coils.lock().expect("lock");
        let read = |map: &BTreeMap<u16, u16>, a: u16, n: u16| -> Result<Vec<u16>, TmException> {
            (a..a + n)
                .map(|i| map.get(&i).copied().ok_or(TmException::IllegalDataAddress))
                .collect()
        };
        match request {
            TmRequest::ReadHoldingRegisters(a, n) => {
                Ok(TmResponse::ReadHoldingRegisters(read(&registers, a, n)?))
            }
            TmRequest::ReadInputRegisters(a, n) => {
                Ok(TmResponse::ReadInputRegisters(read(&registers, a, n)?))
            }
            TmRequest::ReadCoils(a, n) => Ok(TmResponse::ReadCoils(
                (a..a + n)
                    .map(|i| {
                        coils
                            .get(&i)
                            .copied()
                            .ok_or(TmException::IllegalDataAddress)
                    })
                    .collect::<Result<_, _>>()?,
            )),
            TmRequest::WriteSingleRegister(a, v) => {
                read(&registers, a, 1)?;
                registers.insert(a, v);
                Ok(TmResponse::WriteSingleRegister(a, v))
            }
            TmRequest::WriteMultipleRegisters(a, values) => {
                read(&registers, a, values.len() as u16)?;
                for (i, v) in values.iter().enumerate() {
                    registers.insert(a + i as u16, *v);
                }
                Ok(TmResponse::WriteMultipleRegisters(a, values.len() as u16))
            }
            TmRequest::ReadWriteMultipleRegisters(read_at, read_count, write_at, values) => {
                read(&registers, read_at, read_count)?;
                read(&registers, write_at, values.len() as u16)?;
                for (i, v) in values.iter().enumerate() {
                    registers.insert(write_at + i as u16, *v);
                }
                Ok(TmResponse::ReadWriteMultipleRegisters(read(
                    &registers, read_at, read_count,
                )?))
            }
            TmRequest::WriteSingleCoil(a, v) => {
                coils.insert(a, v);
                Ok(TmResponse::WriteSingleCoil(a, v))
            }
            TmRequest::WriteMultipleCoils(a, values) => {
                for (i, v) in values.iter().enumerate() {
                    coils.insert(a + i as u16, *v);
                }
                Ok(TmResponse::WriteMultipleCoils(a, values.len() as u16))
            }
            _ => Err(TmException::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for Store {
    type Request = SlaveRequest<'static>;
    type Response = TmResponse;
    type Exception = TmException;
    type Future = future::Ready<Result<TmResponse, TmException>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(self.answer(request.request))
    }
}

/// Starts a tokio-modbus TCP server over `store`; counts connections accepted.
async fn tokio_modbus_tcp_server(store: Store) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, socket_addr| {
            counted.fetch_add(1, Ordering::SeqCst);
            let store = store.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(store.clone()))) }
        };
        let _ = server.serve(&on_connected, |_error| {}).await;
    });
    (address, connections)
}

fn read(function: FunctionCode, address: u16, count: u16) -> Request {
    Request::ReadRegisters {
        function,
        address,
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pool_talks_to_tokio_modbus_and_caps_its_connections() {
    let (address, connections) = tokio_modbus_tcp_server(Store::with_registers(0..20)).await;
    let device = Arc::new(TcpDevice::new(
        address.to_string(),
        3,
        Duration::from_secs(2),
    ));
    assert_eq!(
        device
            .call(1, &read(FunctionCode::ReadHoldingRegisters, 2, 3))
            .await,
        Ok(Answer::Registers(vec![20, 30, 40]))
    );
    let mut values = RegisterValues::new();
    values.extend([5u16, 6]);
    assert_eq!(
        device
            .call(
                1,
                &Request::WriteMultipleRegisters {
                    address: 10,
                    values
                }
            )
            .await,
        Ok(Answer::Written)
    );
    let coils = CoilValues::from_bools([true, true, false]).expect("coils");
    assert_eq!(
        device
            .call(
                1,
                &Request::WriteMultipleCoils {
                    address: 4,
                    values: coils
                }
            )
            .await,
        Ok(Answer::Written)
    );
    assert_eq!(
        device
            .call(
                1,
                &Request::ReadBits {
                    function: FunctionCode::ReadCoils,
                    address: 3,
                    count: 4
                }
            )
            .await,
        Ok(Answer::Bits(vec![false, true, true, false]))
    );
    assert_eq!(
        device
            .call(1, &read(FunctionCode::ReadHoldingRegisters, 10, 2))
            .await,
        Ok(Answer::Registers(vec![5, 6]))
    );
    assert_eq!(
        device
            .call(1, &read(FunctionCode::ReadHoldingRegisters, 30, 1))
            .await,
        Ok(Answer::Exception(ExceptionCode::ILLEGAL_DATA_ADDRESS))
    );
    // 40 concurrent callers share at most 3 connections.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u16 {
        let device = Arc::clone(&device);
        tasks.spawn(async move {
            device
                .call(1, &read(FunctionCode::ReadInputRegisters, i % 20, 1))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert!(matches!(result.expect("task"), Ok(Answer::Registers(_))));
    }
    assert!(
        connections.load(Ordering::SeqCst) <= 3,
        "{} connections",
        connections.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_bus_talks_to_a_tokio_modbus_rtu_server() {
    let (ours, theirs) = tokio_serial::SerialStream::pair().expect("pty pair");
    let store = Store::with_registers(0..20);
    let server = tokio_modbus::server::rtu::Server::new(theirs);
    tokio::spawn(async move {
        let _ = server.serve_forever(store).await;
    });
    let options = BusOptions {
        timing: CharTiming::for_line(19_200, 11),
        response_timeout: Duration::from_millis(300),
        retries: 0,
        backoff: BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
    };
    let shutdown = CancellationToken::new();
    let (bus, task) = RtuBus::over_stream(ours, options, Arc::default(), shutdown.clone());
    tokio::spawn(task);
    assert_eq!(
        bus.call(7, read(FunctionCode::ReadHoldingRegisters, 1, 4))
            .await,
        Ok(Answer::Registers(vec![10, 20, 30, 40]))
    );
    let mut values = RegisterValues::new();
    values.extend([77u16, 78, 79]);
    assert_eq!(
        bus.call(7, Request::WriteMultipleRegisters { address: 2, values })
            .await,
        Ok(Answer::Written)
    );
    assert_eq!(
        bus.call(
            7,
            Request::WriteSingleCoil {
                address: 1,
                value: true
            }
        )
        .await,
        Ok(Answer::Written)
    );
    assert_eq!(
        bus.call(
            7,
            Request::ReadBits {
                function: FunctionCode::ReadCoils,
                address: 0,
                count: 3
            }
        )
        .await,
        Ok(Answer::Bits(vec![true, true, true]))
    );
    assert_eq!(
        bus.call(7, read(FunctionCode::ReadHoldingRegisters, 2, 3))
            .await,
        Ok(Answer::Registers(vec![77, 78, 79]))
    );
    assert_eq!(
        bus.call(7, read(FunctionCode::ReadHoldingRegisters, 19, 2))
            .await,
        Ok(Answer::Exception(ExceptionCode::ILLEGAL_DATA_ADDRESS))
    );
    shutdown.cancel();
}

/// A reader that, like a task descheduled on a loaded machine, takes at most three
/// bytes at a time and then does not read again for 5 ms (more than 3.5 characters
/// at 19200 baud), while the bytes are long on the line.
struct DescheduledReader<S> {
    inner: S,
    asleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for DescheduledReader<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(sleep) = self.asleep.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
            self.asleep = None;
        }
        let mut small = [0u8; 3];
        let mut part = tokio::io::ReadBuf::new(&mut small);
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        if !part.filled().is_empty() {
            self.asleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(5))));
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for DescheduledReader<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Regression for the garbled answers on a loaded pty: a bus task that reads an
/// answer in pieces with long pauses between them (as a descheduled task does) saw
/// silences inside the frame and dropped good answers as noise. Now every answer
/// is exact with no retries, and nothing is counted as a CRC error or noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_bus_takes_answers_read_in_pieces_with_long_pauses() {
    let (ours, theirs) = tokio_serial::SerialStream::pair().expect("pty pair");
    let store = Store::with_registers(0..20);
    let server = tokio_modbus::server::rtu::Server::new(theirs);
    tokio::spawn(async move {
        let _ = server.serve_forever(store).await;
    });
    let options = BusOptions {
        timing: CharTiming::for_line(19_200, 11),
        response_timeout: Duration::from_millis(500),
        retries: 0,
        backoff: BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
    };
    let shutdown = CancellationToken::new();
    let health = Arc::new(Mutex::new(warden_bridges::BridgeHealth::default()));
    let slow = DescheduledReader {
        inner: ours,
        asleep: None,
    };
    let (bus, task) = RtuBus::over_stream(slow, options, Arc::clone(&health), shutdown.clone());
    tokio::spawn(task);
    for address in 0..5 {
        assert_eq!(
            bus.call(7, read(FunctionCode::ReadHoldingRegisters, address, 8))
                .await,
            Ok(Answer::Registers(
                (address..address + 8).map(|a| a * 10).collect()
            ))
        );
    }
    let health = health.lock().expect("health").clone();
    assert_eq!(
        (health.crc_errors, health.noise_bytes, health.retries),
        (0, 0, 0),
        "{health:?}"
    );
    shutdown.cancel();
}

const POLICY: &str = r#"
[[modbus]]
name = "reads"
bridge = "line1"
units = 1
functions = ["read_holding_registers", "read_coils"]
addresses = "0..=9"
sources = ["facade", "cloud", "poll"]

[[modbus]]
name = "setpoint"
bridge = "line1"
units = 1
functions = [6, 16]
addresses = "5..=6"
sources = ["facade", "cloud"]
values = "0..=500"
"#;

fn gated_bridge(address: SocketAddr) -> BridgeHandle {
    let policy = warden_policy::compile(POLICY, "policy.toml")
        .expect("policy compiles")
        .policy;
    let points: Vec<PointConfig> = toml::from_str::<BTreeMap<String, Vec<PointConfig>>>(
        r#"
points = [
  { name = "setpoint", kind = "holding", address = 5, type = "u16", scale = 0.5 },
  { name = "service", kind = "holding", address = 12, type = "u16" },
]
"#,
    )
    .expect("points")
    .remove("points")
    .expect("points");
    BridgeHandle::new(
        "line1".into(),
        address.to_string(),
        1,
        points,
        Downstream::Tcp(Arc::new(TcpDevice::new(
            address.to_string(),
            4,
            Duration::from_secs(2),
        ))),
        Box::new(PolicyGate::new(Arc::new(policy))),
        Arc::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_policy_and_report_their_outcome() {
    let store = Store::with_registers(0..20);
    let (address, _) = tokio_modbus_tcp_server(store.clone()).await;
    let bridge = gated_bridge(address);
    let point = WriteTarget::Point("setpoint".into());
    assert_eq!(
        bridge
            .write(&point, &WriteValue::Number(60.0), RequestSource::Cloud)
            .await,
        WriteOutcome::Written
    );
    assert_eq!(store.registers.lock().expect("lock").get(&5), Some(&120));
    let too_big = bridge
        .write(&point, &WriteValue::Number(400.0), RequestSource::Cloud)
        .await;
    assert!(
        matches!(too_big, WriteOutcome::Denied { ref reason } if reason.contains("value")),
        "{too_big:?}"
    );
    let from_poll = bridge
        .write(&point, &WriteValue::Number(1.0), RequestSource::Poll)
        .await;
    assert!(
        matches!(from_poll, WriteOutcome::Denied { .. }),
        "{from_poll:?}"
    );
    let service = bridge
        .write(
            &WriteTarget::Point("service".into()),
            &WriteValue::Number(1.0),
            RequestSource::Cloud,
        )
        .await;
    assert!(
        matches!(service, WriteOutcome::Denied { .. }),
        "{service:?}"
    );
    assert_eq!(store.registers.lock().expect("lock").get(&12), Some(&120));
    let health = bridge.health().lock().expect("health").clone();
    assert_eq!((health.writes_ok, health.denied), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_serves_tokio_modbus_clients_and_denies_with_exceptions() {
    use tokio_modbus::prelude::*;
    let store = Store::with_registers(0..20);
    let (downstream, _) = tokio_modbus_tcp_server(store.clone()).await;
    let bridge = gated_bridge(downstream);
    let config = FacadeConfig {
        listen: "127.0.0.1:0".into(),
        max_clients: 3,
        units: vec![FacadeRoute {
            unit: 11,
            bridge: "line1".into(),
            target_unit: Some(1),
        }],
    };
    let shutdown = CancellationToken::new();
    let (facade, task) = start_facade(&config, std::slice::from_ref(&bridge), shutdown.clone())
        .await
        .expect("listen");
    tokio::spawn(task);

    let mut scada = tcp::connect_slave(facade.address, Slave(11))
        .await
        .expect("connect");
    assert_eq!(
        scada.read_holding_registers(2, 3).await.expect("io"),
        Ok(vec![20, 30, 40])
    );
    assert_eq!(
        scada.read_coils(0, 3).await.expect("io"),
        Ok(vec![true, false, true])
    );
    assert_eq!(
        scada.write_single_register(5, 300).await.expect("io"),
        Ok(())
    );
    assert_eq!(store.registers.lock().expect("lock").get(&5), Some(&300));
    // Denied: an address outside the policy (02), a function it does not name (01),
    // a value outside the rule (01). None of them reaches the device.
    assert_eq!(
        scada.read_holding_registers(8, 4).await.expect("io"),
        Err(TmException::IllegalDataAddress)
    );
    assert_eq!(
        scada.read_input_registers(0, 1).await.expect("io"),
        Err(TmException::IllegalFunction)
    );
    assert_eq!(
        scada.write_single_register(6, 9999).await.expect("io"),
        Err(TmException::IllegalFunction)
    );
    assert_eq!(store.registers.lock().expect("lock").get(&6), Some(&60));
    // A multi-register write inside the rule.
    assert_eq!(
        scada
            .write_multiple_registers(5, &[1, 2])
            .await
            .expect("io"),
        Ok(())
    );
    // A unit the facade does not map.
    scada.set_slave(Slave(12));
    assert_eq!(
        scada.read_holding_registers(0, 1).await.expect("io"),
        Err(TmException::GatewayPathUnavailable)
    );

    // Several clients at once, up to the cap, each from its own loopback address: the
    // facade gives one address at most half the slots, and a newcomer from an address
    // at its share takes the slot of that address's unanswered connection.
    let mut clients = tokio::task::JoinSet::new();
    for last in [2u8, 3] {
        clients.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
                .expect("bind");
            let stream = socket.connect(facade.address).await.expect("connect");
            let mut c = tcp::attach_slave(stream, Slave(11));
            for _ in 0..50 {
                assert_eq!(
                    c.read_holding_registers(0, 2).await.expect("io"),
                    Ok(vec![0, 10])
                );
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    // With the cap reached by clients being answered, a further client is closed at
    // once and counted. Each client comes from its own loopback address (the facade
    // gives one address half the slots).
    for _ in 0..200 {
        if facade.health.lock().expect("health").clients == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
            .expect("bind");
        socket.connect(facade.address).await.expect("connect")
    };
    // Unit 9 is not routed: answered with 0x0A, nothing forwarded or denied.
    let answered_from = |last: u8| async move {
        let mut stream = connect_from(last).await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &[0, 1, 0, 0, 0, 6, 9, 3, 0, 0, 0, 1])
            .await
            .expect("request");
        let mut answer = [0u8; 9];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer)
            .await
            .expect("answer");
        assert_eq!(answer[7], 0x83, "an exception answer");
        stream
    };
    let _second = answered_from(2).await;
    let _third = answered_from(3).await;
    let mut fourth = connect_from(4).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut fourth, &mut byte),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    drop(scada);
    let health = facade.health.lock().expect("health").clone();
    assert_eq!(health.refused_connections, 1);
    assert_eq!(health.denied, 3);
    assert!(health.last_denial.is_some());
    assert_eq!(health.forwarded, 4 + 100);
    shutdown.cancel();
}

/// Function 23 (write, then read, multiple registers) through the facade: the read
/// part and the write part are each judged by the policy, and the request reaches
/// the device only if both are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_judges_both_parts_of_read_write_multiple_registers() {
    use tokio_modbus::prelude::*;
    let store = Store::with_registers(0..20);
    let (downstream, _) = tokio_modbus_tcp_server(store.clone()).await;
    let bridge = gated_bridge(downstream);
    let config = FacadeConfig {
        listen: "127.0.0.1:0".into(),
        max_clients: 2,
        units: vec![FacadeRoute {
            unit: 1,
            bridge: "line1".into(),
            target_unit: None,
        }],
    };
    let shutdown = CancellationToken::new();
    let (facade, task) = start_facade(&config, std::slice::from_ref(&bridge), shutdown.clone())
        .await
        .expect("listen");
    tokio::spawn(task);
    let mut scada = tcp::connect_slave(facade.address, Slave(1))
        .await
        .expect("connect");
    let registers = || store.registers.lock().expect("lock").clone();

    // Both parts allowed: write 5..=6 (the setpoint rule), read 4..=7 (the read rule).
    assert_eq!(
        scada
            .read_write_multiple_registers(4, 4, 5, &[100, 200])
            .await
            .expect("io"),
        Ok(vec![40, 100, 200, 70])
    );
    assert_eq!((registers()[&5], registers()[&6]), (100, 200));

    // Write part outside the rule's addresses (7): 02, nothing written.
    assert_eq!(
        scada
            .read_write_multiple_registers(0, 2, 6, &[1, 2])
            .await
            .expect("io"),
        Err(TmException::IllegalDataAddress)
    );
    // Write part with a value outside the rule: 01, nothing written.
    assert_eq!(
        scada
            .read_write_multiple_registers(0, 2, 5, &[501])
            .await
            .expect("io"),
        Err(TmException::IllegalFunction)
    );
    // Read part outside the read rule (8..=11), write part allowed: 02, and the
    // allowed write must not have happened either.
    assert_eq!(
        scada
            .read_write_multiple_registers(8, 4, 5, &[7])
            .await
            .expect("io"),
        Err(TmException::IllegalDataAddress)
    );
    let after = registers();
    assert_eq!(
        (after[&5], after[&6], after[&7]),
        (100, 200, 70),
        "a denied function 23 changed the device"
    );
    let health = facade.health.lock().expect("health").clone();
    assert_eq!((health.forwarded, health.denied), (1, 3), "{health:?}");
    shutdown.cancel();
}

/// A bridge named `line1` under [`POLICY`] over an RTU bus on `stream`.
fn rtu_bridge<S>(stream: S, options: BusOptions, shutdown: &CancellationToken) -> BridgeHandle
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let policy = warden_policy::compile(POLICY, "policy.toml")
        .expect("policy compiles")
        .policy;
    let health = Arc::new(Mutex::new(warden_bridges::BridgeHealth::default()));
    let (bus, task) = RtuBus::over_stream(stream, options, Arc::clone(&health), shutdown.clone());
    tokio::spawn(task);
    BridgeHandle::new(
        "line1".into(),
        "rtu".into(),
        1,
        Vec::new(),
        Downstream::Rtu(bus),
        Box::new(PolicyGate::new(Arc::new(policy))),
        health,
    )
}

/// A dead unit on an RTU line with a patient poller (3 retries, long backoff): a
/// SCADA client asking the facade for it gets exception 0x0B within the unit's
/// configured timeout, not after the poller's retry chain and backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_answers_a_dead_rtu_unit_with_0x0b_within_its_timeout() {
    use tokio_modbus::prelude::*;
    let timeout = Duration::from_millis(300);
    let options = BusOptions {
        timing: CharTiming::for_line(19_200, 11),
        response_timeout: timeout,
        retries: 3,
        backoff: BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        },
    };
    // The far end of the line is held open and never answers: the unit is dead.
    let (ours, _dead_line) = tokio::io::duplex(1024);
    let shutdown = CancellationToken::new();
    let bridge = rtu_bridge(ours, options, &shutdown);
    // The poller keeps the line busy with its retries and puts the unit in backoff.
    for _ in 0..3 {
        let poller = bridge.clone();
        tokio::spawn(async move {
            let _ = poller
                .request(
                    1,
                    read(FunctionCode::ReadHoldingRegisters, 0, 2),
                    RequestSource::Poll,
                )
                .await;
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let config = FacadeConfig {
        listen: "127.0.0.1:0".into(),
        max_clients: 2,
        units: vec![FacadeRoute {
            unit: 1,
            bridge: "line1".into(),
            target_unit: None,
        }],
    };
    let (facade, task) = start_facade(&config, std::slice::from_ref(&bridge), shutdown.clone())
        .await
        .expect("listen");
    tokio::spawn(task);
    let mut scada = tcp::connect_slave(facade.address, Slave(1))
        .await
        .expect("connect");
    for attempt in 0..3 {
        let asked = std::time::Instant::now();
        let answer = scada.read_holding_registers(0, 1).await.expect("io");
        let took = asked.elapsed();
        assert_eq!(
            answer,
            Err(TmException::GatewayTargetDevice),
            "attempt {attempt}"
        );
        assert!(
            took <= timeout + Duration::from_millis(150),
            "attempt {attempt}: answered after {took:?}, the unit's timeout is {timeout:?}"
        );
    }
    let health = facade.health.lock().expect("health").clone();
    assert_eq!((health.requests, health.failed), (3, 3), "{health:?}");
    shutdown.cancel();
}

/// A Modbus TCP peer that answers every request after `delay` with `unit` as the
/// answer's unit ID (one holding register, value 7); `None` never answers.
async fn scripted_tcp_peer(unit: u8, delay: Option<Duration>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 12];
                while stream.read_exact(&mut request).await.is_ok() {
                    let Some(delay) = delay else { continue };
                    tokio::time::sleep(delay).await;
                    let answer = [request[0], request[1], 0, 0, 0, 5, unit, 3, 2, 0, 7];
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn tcp_bridge(address: SocketAddr, timeout: Duration) -> BridgeHandle {
    BridgeHandle::new(
        "line1".into(),
        address.to_string(),
        1,
        Vec::new(),
        Downstream::Tcp(Arc::new(TcpDevice::new(address.to_string(), 2, timeout))),
        Box::new(PolicyGate::new(Arc::new(
            warden_policy::compile(POLICY, "policy.toml")
                .expect("policy compiles")
                .policy,
        ))),
        Arc::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_tcp_answer_from_another_unit_is_refused_and_counted() {
    let bridge = tcp_bridge(
        scripted_tcp_peer(9, Some(Duration::ZERO)).await,
        Duration::from_secs(2),
    );
    let answer = bridge
        .request(
            1,
            read(FunctionCode::ReadHoldingRegisters, 0, 1),
            RequestSource::Poll,
        )
        .await;
    assert!(
        matches!(
            answer,
            Err(warden_bridges::bridge::RequestError::Failed {
                error: warden_bridges::modbus::ClientError::WrongUnit {
                    expected: 1,
                    got: 9
                },
                ..
            })
        ),
        "{answer:?}"
    );
    let health = bridge.health().lock().expect("health").clone();
    assert_eq!(health.wrong_unit, 1, "{health:?}");
    assert_eq!(health.unit(1).map(|u| u.wrong_unit), Some(1));
    // The right unit is accepted.
    let bridge = tcp_bridge(
        scripted_tcp_peer(1, Some(Duration::ZERO)).await,
        Duration::from_secs(2),
    );
    assert_eq!(
        bridge
            .request(
                1,
                read(FunctionCode::ReadHoldingRegisters, 0, 1),
                RequestSource::Poll
            )
            .await,
        Ok(Answer::Registers(vec![7]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_timeouts_are_counted() {
    let bridge = tcp_bridge(scripted_tcp_peer(1, None).await, Duration::from_millis(200));
    for _ in 0..2 {
        let answer = bridge
            .request(
                1,
                read(FunctionCode::ReadHoldingRegisters, 0, 1),
                RequestSource::Poll,
            )
            .await;
        assert!(
            matches!(
                answer,
                Err(warden_bridges::bridge::RequestError::Failed {
                    error: warden_bridges::modbus::ClientError::Timeout,
                    ..
                })
            ),
            "{answer:?}"
        );
    }
    let health = bridge.health().lock().expect("health").clone();
    assert_eq!(health.timeouts, 2, "{health:?}");
}

/// pymodbus (from PyPI, `tests/pymodbus/requirements.txt`) as the SCADA client: the
/// facade answers a dead RTU unit with 0x0B within that line's timeout (pymodbus
/// would otherwise time out and mismatch transaction IDs later), and the live unit's
/// registers of a `string` point read as the text the poller decodes from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pymodbus"]
async fn facade_interop_with_pymodbus() {
    const TWO_LINES: &str = r#"
[[modbus]]
name = "live-reads"
bridge = "live"
units = 1
functions = ["read_holding_registers"]
addresses = "0..=19"
sources = ["facade", "poll"]

[[modbus]]
name = "dead-reads"
bridge = "dead"
units = 1
functions = ["read_holding_registers"]
addresses = "0..=19"
sources = ["facade", "poll"]
"#;
    let policy = Arc::new(
        warden_policy::compile(TWO_LINES, "policy.toml")
            .expect("policy compiles")
            .policy,
    );
    let timeout = Duration::from_millis(500);
    let options = BusOptions {
        timing: CharTiming::for_line(19_200, 11),
        response_timeout: timeout,
        retries: 3,
        backoff: BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        },
    };
    let shutdown = CancellationToken::new();
    // The live line: a tokio-modbus RTU server holding "AB-17" at 10..=12.
    let (ours, theirs) = tokio_serial::SerialStream::pair().expect("pty pair");
    let store = Store::with_registers(0..20);
    store.registers.lock().expect("lock").extend([
        (10, u16::from_be_bytes(*b"AB")),
        (11, u16::from_be_bytes(*b"-1")),
        (12, u16::from_be_bytes(*b"7\0")),
    ]);
    let server = tokio_modbus::server::rtu::Server::new(theirs);
    tokio::spawn(async move {
        let _ = server.serve_forever(store).await;
    });
    let points: Vec<PointConfig> = toml::from_str::<BTreeMap<String, Vec<PointConfig>>>(
        r#"points = [{ name = "batch", kind = "holding", address = 10, type = "string", length = 3, poll_interval_ms = 200 }]"#,
    )
    .expect("points")
    .remove("points")
    .expect("points");
    let bridge_over = |name: &str, downstream: Downstream, points: Vec<PointConfig>| {
        BridgeHandle::new(
            name.into(),
            name.into(),
            1,
            points,
            downstream,
            Box::new(PolicyGate::new(Arc::clone(&policy))),
            Arc::default(),
        )
    };
    let (live_bus, task) = RtuBus::over_stream(ours, options, Arc::default(), shutdown.clone());
    tokio::spawn(task);
    let live = bridge_over("live", Downstream::Rtu(live_bus), points.clone());
    // The dead line: held open, never answering, polled by a patient poller.
    let (dead_end, _held) = tokio::io::duplex(1024);
    let (dead_bus, task) = RtuBus::over_stream(dead_end, options, Arc::default(), shutdown.clone());
    tokio::spawn(task);
    let dead = bridge_over("dead", Downstream::Rtu(dead_bus), points);
    let (samples, mut received) = tokio::sync::mpsc::channel(16);
    for bridge in [&live, &dead] {
        let poller = warden_bridges::Poller::for_bridge(bridge.clone(), 0);
        tokio::spawn(poller.run(samples.clone(), shutdown.clone()));
    }
    let config = FacadeConfig {
        listen: "127.0.0.1:0".into(),
        max_clients: 2,
        units: vec![
            FacadeRoute {
                unit: 1,
                bridge: "live".into(),
                target_unit: Some(1),
            },
            FacadeRoute {
                unit: 2,
                bridge: "dead".into(),
                target_unit: Some(1),
            },
        ],
    };
    let (facade, task) = start_facade(&config, &[live.clone(), dead.clone()], shutdown.clone())
        .await
        .expect("listen");
    tokio::spawn(task);
    // Let the dead line's poller start its retries first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pymodbus/facade_client.py"
    );
    let output = tokio::process::Command::new("python3")
        .args([
            script,
            &facade.address.port().to_string(),
            "2",
            "1",
            "10",
            "3",
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "pymodbus client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(seen["dead_is_error"], true, "{seen}");
    assert_eq!(seen["dead_exception"], 0x0B, "{seen}");
    let took = seen["dead_ms"].as_f64().expect("ms");
    assert!(
        took <= (timeout + Duration::from_millis(200)).as_millis() as f64,
        "pymodbus waited {took} ms for the dead unit; its timeout is {timeout:?}"
    );
    assert_eq!(seen["string"], "AB-17", "{seen}");
    let sample = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("a sample in time")
        .expect("a sample");
    assert_eq!(
        (sample.bridge.as_str(), sample.value),
        ("live", warden_bridges::Value::Text("AB-17".into()))
    );
    shutdown.cancel();
}
