//! Modbus TCP round trips to equipment on the private network, in one process:
//! through the loopback forward (what the Modbus TCP bridge uses) and through
//! `PrivnetHandle::connect` directly (no loopback hop). Prints a table.
//!
//! `cargo bench -p warden-privnet --bench modbus_round_trips`

#[path = "../tests/it/equipment.rs"]
#[allow(dead_code)]
mod equipment;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use warden_bridges::modbus::pdu::{FunctionCode, Request};
use warden_bridges::modbus::tcp_client::TcpClient;
use warden_bridges::modbus::tcp_frame::{MAX_FRAME_LEN, MbapHeader, decode_frame, encode_frame};
use warden_bridges::modbus::{Answer, MAX_PDU_LEN};
use warden_privnet::{PortDevice, PrivnetConfig, frame_wire_pair};

const ROUND_TRIPS: u32 = 2000;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let config: PrivnetConfig = toml::from_str(
        r#"
interface = "bench0"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"
[[dhcp.static_leases]]
mac = "02:00:00:00:00:10"
ip = "10.77.0.10"
[[forward]]
listen = "127.0.0.1:0"
to = "10.77.0.10:502"
"#,
    )
    .expect("config");
    let shutdown = CancellationToken::new();
    let (ours, theirs) = frame_wire_pair();
    let port = warden_privnet::start(
        config.validate("privnet").expect("valid"),
        PortDevice::Wire(ours),
        shutdown.clone(),
    )
    .expect("port");
    let equipment = equipment::Equipment::start([2, 0, 0, 0, 0, 0x10], theirs, (0..100).collect());
    let equipment = tokio::task::spawn_blocking(move || {
        equipment
            .lease
            .recv_timeout(Duration::from_secs(30))
            .expect("lease");
        equipment
    })
    .await
    .expect("join");
    let request = Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address: 0,
        count: 10,
    };
    let (listen, to) = port.forwards()[0];

    let mut client = TcpClient::connect(&listen.to_string(), Duration::from_secs(5))
        .await
        .expect("connect through the forward");
    for _ in 0..100 {
        client.call(1, &request).await.expect("warm-up");
    }
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        let answer = client.call(1, &request).await.expect("read");
        assert!(matches!(answer, Answer::Registers(ref r) if r.len() == 10));
    }
    let forwarded = started.elapsed();

    // The simulated equipment serves one connection at a time.
    drop(client);
    let mut attempts = 0;
    let mut stream = loop {
        match port.connect(to).await {
            Ok(stream) => break stream,
            Err(error) if attempts < 50 => {
                attempts += 1;
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("connect directly: {error}"),
        }
    };
    let mut pdu = [0u8; MAX_PDU_LEN];
    let pdu_len = request.encode(&mut pdu).expect("encode");
    let mut frame = [0u8; MAX_FRAME_LEN];
    let mut reply = Vec::with_capacity(MAX_FRAME_LEN);
    let mut chunk = [0u8; MAX_FRAME_LEN];
    let mut direct = Duration::ZERO;
    for round in 0..(ROUND_TRIPS + 100) {
        if round == 100 {
            direct = Duration::ZERO;
        }
        let started = Instant::now();
        let header = MbapHeader {
            transaction_id: round as u16,
            unit_id: 1,
        };
        let len = encode_frame(header, &pdu[..pdu_len], &mut frame).expect("frame");
        stream.write_all(&frame[..len]).await.expect("write");
        reply.clear();
        loop {
            if let Some((got, _, _)) = decode_frame(&reply).expect("decode") {
                assert_eq!(got.transaction_id, round as u16);
                break;
            }
            let read = stream.read(&mut chunk).await.expect("read");
            assert!(read > 0, "closed");
            reply.extend_from_slice(&chunk[..read]);
        }
        direct += started.elapsed();
    }
    drop(equipment);
    shutdown.cancel();

    let row = |name: &str, total: Duration| {
        println!(
            "| {name:<38} | {:>8.1} | {:>9.0} |",
            total.as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS),
            f64::from(ROUND_TRIPS) / total.as_secs_f64()
        );
    };
    println!("{ROUND_TRIPS} sequential reads of 10 holding registers, one connection");
    println!("| path                                   | µs/read  | reads/s   |");
    println!("|----------------------------------------|----------|-----------|");
    row("bridge TcpClient -> loopback forward", forwarded);
    row("PrivnetHandle::connect stream (direct)", direct);
    println!(
        "ratio forward/direct: {:.2}",
        forwarded.as_secs_f64() / direct.as_secs_f64()
    );
}
