//! `bridges-bench`: figures for BENCHMARKS.md (prints a table, asserts nothing).
//!
//! 1. RTU line efficiency: the bridge's RTU bus against the paced RTU simulator at
//!    9600 and 115200 baud, reading 10 registers, against the line-time model
//!    (11-bit characters, request 8 + response 25 characters, two 3.5-character gaps).
//! 2. Gateway facade: SCADA-like clients reading 10 registers directly from the TCP
//!    simulator, then through the facade (real policy engine in the path): once
//!    with a simulator that answers at once (the facade's raw cost on loopback),
//!    once with a 1 ms service time per answer (a fast controller).
//! 3. TCP simulator throughput on one core with pipelined clients.
//!
//! `cargo run --release -p warden-hil --bin bridges-bench [-- SECONDS]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warden_bridges::BridgeHealth;
use warden_bridges::bridge::{BridgeHandle, Downstream};
use warden_bridges::config::{FacadeConfig, FacadeRoute};
use warden_bridges::facade::start_facade;
use warden_bridges::modbus::fair_queue::BackoffPolicy;
use warden_bridges::modbus::pdu::{FunctionCode, Request};
use warden_bridges::modbus::rtu_bus::{BusOptions, Parity, RtuBus, SerialLine};
use warden_bridges::modbus::tcp_client::TcpClient;
use warden_bridges::modbus::tcp_frame::{MbapHeader, decode_frame, encode_frame};
use warden_bridges::modbus::tcp_pool::TcpDevice;
use warden_bridges::request_policy::PolicyGate;
use warden_hil::modbus_rtu_slave::{RtuLineModel, RtuSlaveSimulator};
use warden_hil::modbus_tcp_slave::{DeviceModel, SimulatedSlave};
use warden_hil::register_model::RegisterModel;
use warden_hil::simulated_device::Faults;

fn device() -> DeviceModel {
    let mut holding = BTreeMap::new();
    for address in 0..10 {
        holding.insert(
            address,
            RegisterModel::Counter {
                period_ms: 10 + u64::from(address),
            },
        );
    }
    DeviceModel {
        unit: 1,
        holding,
        faults: Faults::default(),
        ..DeviceModel::default()
    }
}

fn read10() -> Request {
    Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address: 0,
        count: 10,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn rtu(baud: u32, seconds: f64) -> anyhow::Result<()> {
    let simulator = RtuSlaveSimulator::start(RtuLineModel {
        baud,
        parity: Parity::Even,
        stop_bits: 1,
        turnaround_us: 0,
        devices: vec![device()],
    })?;
    let line = SerialLine {
        port: simulator.path().to_owned(),
        baud,
        parity: Parity::Even,
        stop_bits: 1,
    };
    let options = BusOptions {
        timing: line.timing(),
        response_timeout: Duration::from_millis(500),
        retries: 0,
        backoff: BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
    };
    let shutdown = CancellationToken::new();
    let (bus, task) = RtuBus::for_serial_line(line, options, Arc::default(), shutdown.clone());
    tokio::spawn(task);
    let _ = bus.call(1, read10()).await; // warm-up: the port opens
    let started = Instant::now();
    let mut done = 0u64;
    let mut errors = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        match bus.call(1, read10()).await {
            Ok(_) => done += 1,
            Err(error) => {
                errors += 1;
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{:?} {error}", started.elapsed());
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let char_s = 11.0 / f64::from(baud);
    let gap_s = if baud > 19_200 { 0.00175 } else { 3.5 * char_s };
    let model = 1.0 / ((8.0 + 25.0) * char_s + 2.0 * gap_s);
    let achieved = done as f64 / elapsed;
    println!(
        "| RTU {baud} baud, read 10 regs | {achieved:.1} tx/s | model {model:.1} tx/s | {:.1} % | {done} tx, {errors} errors in {elapsed:.1} s |",
        100.0 * achieved / model
    );
    Ok(())
}

const POLICY: &str = r#"
[[modbus]]
bridge = "line1"
units = 1
functions = ["read_holding_registers"]
addresses = "0..=9"
sources = ["facade"]
"#;

async fn clients(target: std::net::SocketAddr, count: usize, seconds: f64) -> (f64, Vec<Duration>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        tasks.spawn(async move {
            let mut client = TcpClient::connect(&target.to_string(), Duration::from_secs(2))
                .await
                .ok()?;
            let mut latencies = Vec::new();
            let started = Instant::now();
            while started.elapsed().as_secs_f64() < seconds {
                let sent = Instant::now();
                // A failed call (a timeout on a very busy machine) is not counted.
                if client.call(1, &read10()).await.is_ok() {
                    latencies.push(sent.elapsed());
                }
            }
            Some(latencies)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(latencies)) = done {
            all.extend(latencies);
        }
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// Runs `future` on its own single-threaded runtime thread.
fn on_own_thread<F: std::future::Future<Output = ()> + Send + 'static>(
    name: &str,
    future: F,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(future);
            }
        })
        .expect("thread")
}

async fn facade(seconds: f64, client_count: usize, service_time: Duration) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (address_tx, address_rx) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    let sim = on_own_thread("tcp-sim", async move {
        let started = SimulatedSlave::start_with_service_time(
            "127.0.0.1:0",
            vec![device()],
            service_time,
            stop.clone(),
        )
        .await;
        if let Ok(slave) = started {
            let _ = address_tx.send(slave.address());
            stop.cancelled().await;
        }
    });
    let device_address = address_rx.await?;
    let (direct_rate, direct) = clients(device_address, client_count, seconds).await;

    let (facade_tx, facade_rx) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    let gateway = on_own_thread("facade", async move {
        let policy = match warden_policy::compile(POLICY, "bench.toml") {
            Ok(compiled) => compiled.policy,
            Err(_) => return,
        };
        let bridge = BridgeHandle::new(
            "line1".into(),
            device_address.to_string(),
            1,
            Vec::new(),
            Downstream::Tcp(Arc::new(TcpDevice::new(
                device_address.to_string(),
                client_count,
                Duration::from_secs(2),
            ))),
            Box::new(PolicyGate::new(Arc::new(policy))),
            Arc::new(std::sync::Mutex::new(BridgeHealth::default())),
        );
        let config = FacadeConfig {
            listen: "127.0.0.1:0".into(),
            max_clients: 64,
            units: vec![FacadeRoute {
                unit: 1,
                bridge: "line1".into(),
                target_unit: None,
            }],
        };
        if let Ok((running, task)) = start_facade(&config, &[bridge], stop.clone()).await {
            let _ = facade_tx.send(running.address);
            task.await;
        }
    });
    let facade_address = facade_rx.await?;
    let (via_rate, via) = clients(facade_address, client_count, seconds).await;
    shutdown.cancel();
    let _ = sim.join();
    let _ = gateway.join();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| facade, {client_count} clients, read 10 regs, device service time {} ms | direct {direct_rate:.0} req/s, p50 {:.0} us, p99 {:.0} us | via facade {via_rate:.0} req/s, p50 {:.0} us, p99 {:.0} us | {:.1} % of direct | added p50 {:.0} us, p99 {:.0} us |",
        service_time.as_millis(),
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99)),
        us(percentile(&via, 0.5)),
        us(percentile(&via, 0.99)),
        100.0 * via_rate / direct_rate,
        us(percentile(&via, 0.5)) - us(percentile(&direct, 0.5)),
        us(percentile(&via, 0.99)) - us(percentile(&direct, 0.99)),
    );
    Ok(())
}

async fn simulator_throughput(seconds: f64) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (address_tx, address_rx) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    let sim = on_own_thread("tcp-sim", async move {
        if let Ok(slave) = SimulatedSlave::start("127.0.0.1:0", device(), stop.clone()).await {
            let _ = address_tx.send(slave.address());
            stop.cancelled().await;
        }
    });
    let address = address_rx.await?;
    let mut frame = [0u8; 64];
    let mut pdu = [0u8; 8];
    let pdu_len = read10().encode(&mut pdu)?;
    let frame_len = encode_frame(
        MbapHeader {
            transaction_id: 1,
            unit_id: 1,
        },
        &pdu[..pdu_len],
        &mut frame,
    )?;
    let burst: Vec<u8> = frame[..frame_len].repeat(32);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..4 {
        let burst = burst.clone();
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
            let _ = stream.set_nodelay(true);
            let mut answered = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            let mut filled = 0;
            while started.elapsed().as_secs_f64() < seconds {
                stream.write_all(&burst).await.ok()?;
                let mut pending = 32;
                while pending > 0 {
                    let n = stream.read(&mut buf[filled..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    filled += n;
                    let mut used_total = 0;
                    while let Ok(Some((_, _, used))) = decode_frame(&buf[used_total..filled]) {
                        used_total += used;
                        pending -= 1;
                        answered += 1;
                    }
                    buf.copy_within(used_total..filled, 0);
                    filled -= used_total;
                }
            }
            Some(answered)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.ok().flatten().unwrap_or(0);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = sim.join();
    println!(
        "| TCP simulator, one core, 4 connections x 32 pipelined, read 10 regs | {rate:.0} req/s | target >= 100000 |"
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!("| what | figure | reference | ratio | notes |");
    println!("|---|---|---|---|---|");
    rtu(9600, seconds).await?;
    rtu(115_200, seconds).await?;
    facade(seconds, 4, Duration::ZERO).await?;
    facade(seconds, 4, Duration::from_millis(1)).await?;
    simulator_throughput(seconds).await?;
    Ok(())
}
