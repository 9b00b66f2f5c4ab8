//! `link-bench`: telemetry throughput through the real link (mutual TLS, durable
//! outbox, fleet acknowledgements) into the fleet's embedded broker and SQLite store,
//! and the replay rate after an outage. Prints a table.
//!
//! `cargo run --release -p warden-hil --bin link-bench`

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_link::outbox::{FsyncPolicy, Outbox, OutboxConfig};
use warden_link::{LinkAgent, LinkConfig};
use warden_wire::topics::{PROTOCOL_VERSION, TELEMETRY_STREAM};
use warden_wire::topics::{Reading, TelemetryBatch};

const READINGS_PER_BATCH: usize = 100;

async fn fleet(
    dir: &std::path::Path,
    pki: &DemoPki,
    port: u16,
) -> (CancellationToken, warden_fleet::RunningFleet) {
    let config = pki.fleet_config(dir, 0, port);
    let shutdown = CancellationToken::new();
    let running = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet");
    (shutdown, running)
}

fn batch(seq: u64, epoch: u64) -> Vec<u8> {
    let readings = (0..READINGS_PER_BATCH)
        .map(|i| Reading::number(format!("bench/p{i}"), seq as f64, String::new(), seq))
        .collect();
    TelemetryBatch {
        v: PROTOCOL_VERSION,
        stream: TELEMETRY_STREAM.into(),
        epoch,
        seq,
        readings,
    }
    .encode()
}

async fn wait_drained(outbox: &Arc<Mutex<Outbox>>, target: u64) -> Duration {
    let started = Instant::now();
    loop {
        let stats = outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats();
        if stats.next_seq >= target && stats.depth == 0 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let pki = DemoPki::generate(&dir.join("pki"))?;
    let (stop, running) = fleet(&dir, &pki, 0).await;
    let port = running.mqtt_address.port();
    let outbox_config = OutboxConfig {
        fsync: FsyncPolicy::EveryMillis(200),
        ..OutboxConfig::in_dir(dir.join("outbox"))
    };
    let outbox = Arc::new(Mutex::new(Outbox::open(outbox_config.clone())?));
    let config = LinkConfig {
        broker_host: "127.0.0.1".into(),
        broker_port: port,
        fleet_ca: pki.fleet_ca.clone(),
        device_cert: pki.device_cert.clone(),
        device_key: Some(pki.device_key.clone()),
        pluton_socket: None,
        batch_interval_ms: 100,
        max_send_per_second: 1_000_000,
        outbox: outbox_config,
    };
    let shutdown = CancellationToken::new();
    let (_readings, readings_rx) = tokio::sync::mpsc::channel(1);
    let agent = LinkAgent::new(pki.device_id.clone(), config).with_outbox(Arc::clone(&outbox));
    let link = tokio::spawn(agent.run(readings_rx, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Live: append as fast as the link drains (window-limited), until N batches are stored.
    const LIVE: u64 = 2_000;
    let started = Instant::now();
    let mut appended = 0;
    while appended < LIVE {
        {
            let mut queue = outbox.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.stats().depth < 256 {
                queue.append(batch)?;
                appended += 1;
            }
        }
        tokio::task::yield_now().await;
    }
    wait_drained(&outbox, LIVE).await;
    let live = started.elapsed();

    // 2. Outage: the fleet is down while M batches pile up, then comes back.
    stop.cancel();
    running.stopped().await;
    const BACKLOG: u64 = 3_000;
    {
        let mut queue = outbox.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..BACKLOG {
            queue.append(batch)?;
        }
        queue.sync()?;
    }
    let (stop, running) = fleet(&dir, &pki, port).await;
    let replay = wait_drained(&outbox, LIVE + BACKLOG).await;

    shutdown.cancel();
    link.await??;
    stop.cancel();
    running.stopped().await;
    let _ = std::fs::remove_dir_all(&dir);

    let per_second = |count: u64, took: Duration| count as f64 / took.as_secs_f64();
    println!("| phase | batches | readings/batch | time | batches/s | readings/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (phase, count, took) in [
        ("live, acknowledged end to end", LIVE, live),
        ("replay after outage", BACKLOG, replay),
    ] {
        println!(
            "| {phase} | {count} | {READINGS_PER_BATCH} | {:.2} s | {:.0} | {:.0} |",
            took.as_secs_f64(),
            per_second(count, took),
            per_second(count * READINGS_PER_BATCH as u64, took)
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("warden-link-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
