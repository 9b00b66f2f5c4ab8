//! The link agent against real files, a real TLS stack and a scripted broker.
//!
//! Faults the agent must outlive: an identity or fleet CA that is not there yet, an
//! outbox that refuses, a kill without shutdown, a broker that freezes after CONNACK,
//! a fleet that comes back after a long outage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::control::ControlQueue;
use warden_link::outbox::{FsyncPolicy, Outbox, OutboxConfig, OverflowPolicy};
use warden_link::topics::event_kind;
use warden_link::{
    ControlMessage, LinkAgent, LinkConfig, LinkState, LinkStatus, Reading, TelemetryBatch,
};

/// A throwaway PKI: fleet CA, broker certificate for 127.0.0.1, device certificate.
struct Pki {
    fleet_ca_pem: String,
    server: rustls::ServerConfig,
    device_cert: PathBuf,
    device_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test fleet CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let server =
            rustls::ServerConfig::builder_with_provider(warden_link::tls::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls 1.3")
                .with_no_client_auth()
                .with_single_cert(
                    vec![server_cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
                )
                .expect("server config");

        let device_key = KeyPair::generate().expect("device key");
        let mut device_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        device_params
            .distinguished_name
            .push(DnType::CommonName, "device-under-test");
        let device = device_params
            .signed_by(&device_key, &issuer)
            .expect("device cert");
        let device_cert = dir.join("device.pem");
        let device_key_path = dir.join("device.key");
        std::fs::write(&device_cert, device.pem()).expect("write cert");
        std::fs::write(&device_key_path, device_key.serialize_pem()).expect("write key");
        Self {
            fleet_ca_pem: ca_cert.pem(),
            server,
            device_cert,
            device_key: device_key_path,
        }
    }
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn config(dir: &Path, pki: &Pki, port: u16) -> LinkConfig {
    LinkConfig {
        broker_host: "127.0.0.1".into(),
        broker_port: port,
        fleet_ca: dir.join("fleet-ca.pem"),
        device_cert: pki.device_cert.clone(),
        device_key: Some(pki.device_key.clone()),
        pluton_socket: None,
        batch_interval_ms: 100,
        max_send_per_second: 500,
        outbox: OutboxConfig {
            fsync: FsyncPolicy::Never,
            ..OutboxConfig::in_dir(dir.join("outbox"))
        },
    }
}

fn reading(n: u64) -> Reading {
    Reading::number(format!("plc/p{}", n % 7), n as f64, "bar".into(), 1_000 + n)
}

fn snapshot(status: &Arc<Mutex<LinkStatus>>) -> LinkStatus {
    status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Waits until `check` holds for the status, at most `limit`; returns how long it took.
async fn wait_for(
    status: &Arc<Mutex<LinkStatus>>,
    limit: Duration,
    what: &str,
    check: impl Fn(&LinkStatus) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = snapshot(status);
        if check(&now) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; status {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `readings`, one batch each, each within a second (the agent must never block
/// the bridges).
async fn send_all(tx: &mpsc::Sender<Vec<Reading>>, readings: impl IntoIterator<Item = Reading>) {
    for reading in readings {
        tokio::time::timeout(Duration::from_secs(1), tx.send(vec![reading]))
            .await
            .expect("the agent takes readings without blocking the sender")
            .expect("the agent is running");
    }
}

/// Every telemetry reading the outbox in `dir` holds, in sequence order.
fn outbox_readings(dir: &Path) -> Vec<(u64, usize, Vec<Reading>)> {
    let outbox = Outbox::open(OutboxConfig::in_dir(dir)).expect("open outbox");
    let mut records = Vec::new();
    let mut next = outbox.next_pending(0);
    while let Some(seq) = next {
        let payload = outbox.read(seq).expect("read");
        let batch = TelemetryBatch::decode(&payload).expect("decode");
        assert_eq!(batch.seq, seq);
        records.push((seq, payload.len(), batch.readings));
        next = outbox.next_pending(seq + 1);
    }
    records
}

fn overflow_events(dir: &Path) -> Vec<String> {
    let queue = ControlQueue::open(&dir.join("control")).expect("control queue");
    let mut details = Vec::new();
    let mut next = queue.outbox().next_pending(0);
    while let Some(seq) = next {
        if let Ok(ControlMessage::Event(event)) = queue.message(seq)
            && event.kind == event_kind::OUTBOX_OVERFLOW
        {
            details.push(event.detail);
        }
        next = queue.outbox().next_pending(seq + 1);
    }
    details
}

#[tokio::test]
async fn a_missing_fleet_ca_makes_the_link_unavailable_until_it_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let config = config(dir.path(), &pki, free_port());
    let fleet_ca = config.fleet_ca.clone();
    let agent = LinkAgent::new("device-under-test".into(), config);
    let status = agent.status();
    let (tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));

    wait_for(&status, Duration::from_secs(5), "unavailable", |s| {
        s.state == LinkState::Unavailable
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(&fleet_ca.display().to_string()))
    })
    .await;
    // The bridges are never blocked: a channel of one takes every reading at once.
    send_all(&tx, (0..2000).map(reading)).await;
    assert!(!run.is_finished(), "run never ends on a missing file");

    std::fs::write(&fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    wait_for(&status, Duration::from_secs(15), "past unavailable", |s| {
        matches!(s.state, LinkState::Connecting | LinkState::Disconnected)
    })
    .await;
    assert!(snapshot(&status).restarts >= 1);

    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    let stored: Vec<Reading> = outbox_readings(&dir.path().join("outbox"))
        .into_iter()
        .flat_map(|(_, _, readings)| readings)
        .collect();
    assert_eq!(stored, (0..2000).map(reading).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_unreachable_pluton_makes_the_link_unavailable_and_readings_keep_flowing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let socket = dir.path().join("pluton.sock");
    let config = LinkConfig {
        device_key: None,
        pluton_socket: Some(socket.clone()),
        ..config(dir.path(), &pki, free_port())
    };
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    let agent = LinkAgent::new("device-under-test".into(), config);
    let status = agent.status();
    let (tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));

    wait_for(&status, Duration::from_secs(5), "unavailable", |s| {
        s.state == LinkState::Unavailable
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(&socket.display().to_string()))
    })
    .await;
    send_all(&tx, (0..500).map(reading)).await;
    // Still retrying, still unavailable, still running.
    wait_for(&status, Duration::from_secs(15), "retried", |s| {
        s.restarts >= 2 && s.state == LinkState::Unavailable
    })
    .await;
    assert!(!run.is_finished());
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    let stored: usize = outbox_readings(&dir.path().join("outbox"))
        .iter()
        .map(|(_, _, readings)| readings.len())
        .sum();
    assert_eq!(stored, 500, "the outbox works without the identity");
}

#[tokio::test]
async fn only_an_impossible_identity_config_ends_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let config = LinkConfig {
        pluton_socket: Some(dir.path().join("pluton.sock")),
        ..config(dir.path(), &pki, free_port())
    };
    let (_tx, rx) = mpsc::channel(1);
    let outcome = LinkAgent::new("device-under-test".into(), config)
        .run(rx, CancellationToken::new())
        .await;
    assert!(matches!(
        outcome,
        Err(warden_link::agent::LinkError::Identity)
    ));
}

#[tokio::test]
async fn a_refusing_outbox_keeps_readings_to_the_pending_bound_then_drops_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let mut config = config(dir.path(), &pki, free_port());
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    // An outbox that refuses every batch.
    config.outbox.max_bytes = 16;
    config.outbox.overflow = OverflowPolicy::Refuse;
    let one = warden_link::journal::estimated_json_len(&reading(0));
    let agent =
        LinkAgent::new("device-under-test".into(), config.clone()).with_pending_bound(20 * one);
    let status = agent.status();
    let (tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));

    send_all(&tx, (0..100).map(reading)).await;
    wait_for(&status, Duration::from_secs(10), "80 dropped", |s| {
        s.readings_dropped == 80 && s.readings_pending == 20
    })
    .await;
    // Several refused batch ticks go by.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    assert!(
        snapshot(&status).outbox.refused >= 3,
        "{:?}",
        snapshot(&status).outbox
    );
    let events = overflow_events(&config.outbox.dir);
    assert_eq!(
        events.len(),
        2,
        "one event for the refusals, one for the drops, not one per batch: {events:#?}"
    );

    // The 20 kept readings wait in the journal; with room they go out, once each.
    config.outbox.max_bytes = 64 * 1024 * 1024;
    let agent = LinkAgent::new("device-under-test".into(), config.clone());
    let status = agent.status();
    let (_tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));
    wait_for(&status, Duration::from_secs(10), "appended", |s| {
        s.batches_queued >= 1
    })
    .await;
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    let stored: Vec<Reading> = outbox_readings(&config.outbox.dir)
        .into_iter()
        .flat_map(|(_, _, readings)| readings)
        .collect();
    assert_eq!(stored, (0..20).map(reading).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_larger_than_one_record_is_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let mut config = config(dir.path(), &pki, free_port());
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    config.batch_interval_ms = 60_000; // everything lands in one batch, at shutdown
    let agent = LinkAgent::new("device-under-test".into(), config.clone());
    let (tx, rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));
    let text = |n: u64| {
        Reading::text(
            format!("plc/log{n}"),
            "x".repeat(8 * 1024),
            String::new(),
            n,
        )
    };
    send_all(&tx, (0..100).map(text)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");

    let records = outbox_readings(&config.outbox.dir);
    assert!(
        records.len() >= 4,
        "about 820 KiB in records of at most 256 KiB"
    );
    for (seq, size, _) in &records {
        assert!(*size <= 260 * 1024, "record {seq} has {size} bytes");
    }
    let points: Vec<String> = records
        .into_iter()
        .flat_map(|(_, _, readings)| readings)
        .map(|r| r.point)
        .collect();
    assert_eq!(
        points,
        (0..100).map(|n| format!("plc/log{n}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn readings_gathered_for_a_batch_survive_a_kill_and_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let mut config = config(dir.path(), &pki, free_port());
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    // Batches only at start (the interval's first tick), so what is sent afterwards
    // is gathered and not yet batched when the agent is killed.
    config.batch_interval_ms = 60_000;

    // Aborting the task drops the agent at an await point without its shutdown path:
    // nothing gathered is appended or flushed, as with SIGKILL.
    async fn run_then_kill(config: &LinkConfig, readings: std::ops::Range<u64>) -> LinkStatus {
        let agent = LinkAgent::new("device-under-test".into(), config.clone());
        let status = agent.status();
        let (tx, rx) = mpsc::channel(16);
        let run = tokio::spawn(agent.run(rx, CancellationToken::new()));
        // What the journal held is appended by the first batch.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = readings.end - readings.start;
        send_all(&tx, readings.map(reading)).await;
        wait_for(&status, Duration::from_secs(10), "gathered", |s| {
            s.readings_pending == count
        })
        .await;
        run.abort();
        let _ = run.await;
        snapshot(&status)
    }
    let first = run_then_kill(&config, 0..30).await;
    assert_eq!(first.batches_queued, 0);
    let second = run_then_kill(&config, 30..60).await;
    assert_eq!(
        second.batches_queued, 1,
        "the first run's readings, from the journal"
    );

    // A clean run appends the rest.
    let agent = LinkAgent::new("device-under-test".into(), config.clone());
    let (_tx, rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    let stored: Vec<Reading> = outbox_readings(&config.outbox.dir)
        .into_iter()
        .flat_map(|(_, _, readings)| readings)
        .collect();
    assert_eq!(
        stored,
        (0..60).map(reading).collect::<Vec<_>>(),
        "each once, in order"
    );
}

/// A broker that completes TLS and CONNECT/CONNACK, then never sends another byte
/// (as a broker under SIGSTOP, or behind a dead NAT entry): one thread per connection.
fn start_frozen_broker(listener: TcpListener, server: rustls::ServerConfig) {
    let server = Arc::new(server);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let server = Arc::clone(&server);
            std::thread::spawn(move || serve_then_freeze(stream, server));
        }
    });
}

fn serve_then_freeze(stream: TcpStream, server: Arc<rustls::ServerConfig>) {
    let Ok(connection) = rustls::ServerConnection::new(server) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    // CONNECT: a type byte, the remaining length (varint), the rest.
    let mut byte = [0u8; 1];
    if tls.read_exact(&mut byte).is_err() {
        return;
    }
    let (mut remaining, mut shift) = (0usize, 0);
    loop {
        if tls.read_exact(&mut byte).is_err() {
            return;
        }
        remaining |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 || shift > 21 {
            break;
        }
        shift += 7;
    }
    let mut connect = vec![0; remaining];
    if tls.read_exact(&mut connect).is_err() {
        return;
    }
    // CONNACK, session not present, accepted.
    if tls.write_all(&[0x20, 0x02, 0x00, 0x00]).is_err() || tls.flush().is_err() {
        return;
    }
    // Frozen: take everything, answer nothing, until the client hangs up.
    let mut sink = [0u8; 4096];
    while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_is_declared_dead_within_two_keep_alives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    start_frozen_broker(listener, pki.server.clone());
    let config = config(dir.path(), &pki, port);
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    let keep_alive = Duration::from_secs(1);
    let agent = LinkAgent::new("device-under-test".into(), config).with_keep_alive(keep_alive);
    let status = agent.status();
    let (tx, rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));
    // Telemetry flows all along, as on a working unit.
    let producer = tokio::spawn(async move {
        for n in 0.. {
            if tx.send(vec![reading(n)]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    wait_for(&status, Duration::from_secs(15), "connected", |s| {
        s.state == LinkState::Connected
    })
    .await;
    let connected_ms = snapshot(&status).last_connected_ms;
    assert!(connected_ms.is_some());
    // Two keep-alives are 2 s; allow four times that.
    let took = wait_for(&status, 8 * keep_alive, "declared dead", |s| {
        s.state == LinkState::Disconnected && s.last_error.is_some()
    })
    .await;
    let error = snapshot(&status).last_error.unwrap_or_default();
    eprintln!("frozen broker noticed after {took:?}: {error}");
    // And it reconnects (to the same frozen broker) at once.
    wait_for(&status, Duration::from_secs(10), "reconnected", |s| {
        s.state == LinkState::Connected
    })
    .await;
    shutdown.cancel();
    producer.abort();
    run.await.expect("join").expect("run ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_is_back_within_seconds_of_the_fleets_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let port = free_port();
    let config = config(dir.path(), &pki, port);
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    let agent = LinkAgent::new("device-under-test".into(), config);
    let status = agent.status();
    let (_tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));

    // A long outage: every attempt refused, the backoff at its cap.
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(snapshot(&status).state, LinkState::Disconnected);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    start_frozen_broker(listener, pki.server.clone());
    // A probe every 2.5 s at most: back well within 5 s (allow 6).
    let took = wait_for(&status, Duration::from_secs(6), "back", |s| {
        s.state == LinkState::Connected
    })
    .await;
    eprintln!("reconnected {took:?} after the fleet came back");
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
}

#[tokio::test]
async fn an_unusable_outbox_is_retried_while_readings_wait_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(dir.path());
    let config = config(dir.path(), &pki, free_port());
    std::fs::write(&config.fleet_ca, &pki.fleet_ca_pem).expect("write CA");
    // A file where the outbox directory should be: the outbox cannot open.
    let outbox_dir = config.outbox.dir.clone();
    std::fs::write(&outbox_dir, b"in the way").expect("block the outbox");
    let agent = LinkAgent::new("device-under-test".into(), config.clone());
    let status = agent.status();
    let (tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(rx, shutdown.clone()));

    wait_for(&status, Duration::from_secs(5), "unavailable", |s| {
        s.state == LinkState::Unavailable
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(&outbox_dir.display().to_string()))
    })
    .await;
    send_all(&tx, (0..300).map(reading)).await;
    std::fs::remove_file(&outbox_dir).expect("unblock");
    wait_for(&status, Duration::from_secs(15), "outbox back", |s| {
        s.state != LinkState::Unavailable && s.readings_pending == 0 && s.batches_queued >= 1
    })
    .await;
    assert!(snapshot(&status).restarts >= 1);
    shutdown.cancel();
    run.await.expect("join").expect("run ends cleanly");
    let stored: Vec<Reading> = outbox_readings(&outbox_dir)
        .into_iter()
        .flat_map(|(_, _, readings)| readings)
        .collect();
    assert_eq!(stored, (0..300).map(reading).collect::<Vec<_>>());
}
