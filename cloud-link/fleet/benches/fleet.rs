//! Fleet figures: the `warden-fleet` binary as its own process, loaded by simulated
//! devices (rumqttc over mutual TLS) and API clients from this one.
//!
//! Prints the fleet process's RSS before and after a device load, and the rate of
//! registry lookups (`GET /api/v1/devices/{id}`: token check, SQLite query, JSON) per
//! second of fleet CPU, then the same lookups with every query on SQLite's one writer
//! connection and with the read pool, alternated, on the same database (their ratio).
//! `FLEET_BENCH_DEVICES` (default 1000) sets the device count. The PKI, the child
//! process and the registration are `warden_fleet::loadtest`, shared with hil's
//! `fleet-loadgen`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use warden_fleet::loadtest::{Api, FleetProcess, Pki, TOKEN, process_usage, telemetry_batch};

/// `(VmRSS kB, utime + stime seconds)` of process `pid`.
fn usage(pid: u32) -> (u64, f64) {
    let usage = process_usage(pid);
    (usage.rss_kib, usage.cpu_seconds)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices: usize = std::env::var("FLEET_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path()).expect("pki");
    let fleet = FleetProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_warden-fleet")),
        &pki,
        "",
    )
    .await
    .expect("start warden-fleet");
    let (pid, http, mqtt) = (fleet.pid, fleet.http.clone(), fleet.mqtt_port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_idle, _) = usage(pid);

    // Registry: a product and `devices` registered devices.
    let api = Api::new(&http);
    api.create_product("bench", &pki).await.expect("product");
    let identities: Vec<String> = (0..devices).map(|i| format!("wd-{i:05}")).collect();
    api.register_devices(&pki, "bench", &identities)
        .await
        .expect("register");
    let (rss_registered, _) = usage(pid);

    // Devices: connect all, each sends 10 telemetry batches (QoS 1) and stays connected.
    let connect_started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(devices);
    for id in &identities {
        let options = pki.mqtt_options(id, mqtt).expect("mqtt options");
        let (client, mut eventloop) = AsyncClient::new(options, 32);
        let topic = warden_wire::topics::telemetry_topic(id);
        for seq in 0..10u64 {
            let batch = telemetry_batch(seq);
            let _ = client.try_publish(&topic, QoS::AtLeastOnce, false, batch.encode());
        }
        let (acked, connected) = (Arc::clone(&acked), Arc::clone(&connected));
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
        clients.push(client);
    }
    let want = (devices * 10) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load_seconds = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_loaded, _) = usage(pid);

    // API: registry lookups from 32 concurrent keep-alive clients for 5 s.
    let (served, elapsed, fleet_cpu) = lookups(&api, &identities, pid).await;
    let (rss_after_api, _) = usage(pid);
    drop(clients);
    fleet.stop().await;

    // The same lookups on the same database, two layouts in turn: a baseline binary
    // (`FLEET_BENCH_BASELINE`, e.g. the previous commit's `warden-fleet`) or, without
    // one, this binary with every query on SQLite's one writer connection; then this
    // binary as configured by default.
    let current = std::path::PathBuf::from(env!("CARGO_BIN_EXE_warden-fleet"));
    let baseline = std::env::var_os("FLEET_BENCH_BASELINE").map(std::path::PathBuf::from);
    let before_label = if baseline.is_some() {
        "baseline binary"
    } else {
        "reads on the writer connection"
    };
    let mut compared = [(0u64, 0f64); 2];
    for round in 0..4 {
        let layout = round % 2;
        let (binary, extra) = match (layout, &baseline) {
            (0, Some(baseline)) => (baseline.clone(), ""),
            (0, None) => (current.clone(), "database_read_connections = 0\n"),
            _ => (current.clone(), ""),
        };
        let fleet = FleetProcess::start(&binary, &pki, extra)
            .await
            .expect("restart warden-fleet");
        let (served, _, cpu) = lookups(&Api::new(&fleet.http), &identities, fleet.pid).await;
        compared[layout].0 += served;
        compared[layout].1 += cpu;
        fleet.stop().await;
    }
    #[allow(clippy::cast_precision_loss)]
    let per_core = |(served, cpu): (u64, f64)| served as f64 / cpu.max(0.01);
    #[allow(clippy::cast_precision_loss)]
    let served_f = served as f64;

    println!("fleet bench ({devices} devices, warden-fleet as its own process, SQLite)");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| RSS idle | {:.1} MiB |", rss_idle as f64 / 1024.0);
    println!(
        "| RSS after {devices} registrations | {:.1} MiB |",
        rss_registered as f64 / 1024.0
    );
    println!(
        "| devices connected / batches acked | {} / {} of {want} in {load_seconds:.1} s |",
        connected.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed)
    );
    println!(
        "| RSS with {devices} devices connected after the load | {:.1} MiB |",
        rss_loaded as f64 / 1024.0
    );
    println!(
        "| RSS after the API load | {:.1} MiB |",
        rss_after_api as f64 / 1024.0
    );
    println!(
        "| GET /api/v1/devices/{{id}} (token + SQLite + JSON) | {:.0} req/s wall, fleet CPU {fleet_cpu:.2} s over {elapsed:.1} s = {:.0} req/s per fleet core |",
        served_f / elapsed,
        served_f / fleet_cpu
    );
    println!(
        "| same lookups, {before_label} / this build (2 rounds of 5 s each, alternated) | {:.0} / {:.0} req/s per fleet core = x{:.2} |",
        per_core(compared[0]),
        per_core(compared[1]),
        per_core(compared[1]) / per_core(compared[0])
    );
}

/// 32 keep-alive clients call `GET /api/v1/devices/{id}` for 5 s; `(answered 200,
/// seconds, fleet CPU seconds)`.
async fn lookups(api: &Api, identities: &[String], pid: u32) -> (u64, f64, f64) {
    let requests = Arc::new(AtomicU64::new(0));
    let (_, cpu_before) = usage(pid);
    let started = Instant::now();
    let stop = started + Duration::from_secs(5);
    let mut tasks = Vec::new();
    let ids: Arc<[String]> = identities.into();
    for worker in 0..32 {
        let client = api.client().clone();
        let api = api.clone();
        let ids = Arc::clone(&ids);
        let requests = Arc::clone(&requests);
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < stop {
                let id = &ids[i % ids.len()];
                let ok = client
                    .get(api.url(&format!("/api/v1/devices/{id}")))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                i += 32;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, cpu_after) = usage(pid);
    (
        requests.load(Ordering::Relaxed),
        elapsed,
        (cpu_after - cpu_before).max(0.01),
    )
}
