//! End-to-end scenarios of hil's own binaries against a real fleet.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;

struct Fleet {
    shutdown: CancellationToken,
    running: warden_fleet::RunningFleet,
}

async fn start_fleet(dir: &Path, pki: &DemoPki, mqtt_port: u16) -> Fleet {
    let config = warden_fleet::FleetConfig {
        http_listen: "127.0.0.1:0".into(),
        mqtt_listen: format!("127.0.0.1:{mqtt_port}"),
        database_url: format!("sqlite://{}", dir.join("fleet.db").display()),
        server_cert: pki.server_cert.clone(),
        server_key: pki.server_key.clone(),
        manufacturer_ca: pki.manufacturer_ca.clone(),
    };
    let shutdown = CancellationToken::new();
    let running = warden_fleet::start(&config, shutdown.clone()).await.expect("fleet starts");
    Fleet { shutdown, running }
}

impl Fleet {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.stopped().await;
    }
}

fn loadgen(pki: &DemoPki, port: u16, dir: &Path, count: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warden-link-loadgen"))
        .arg(&pki.device_id)
        .arg(port.to_string())
        .arg(dir.join("pki"))
        .arg(dir.join("outbox"))
        .arg(count.to_string())
        .arg("200")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("loadgen starts")
}

/// The loss test: readings published while the broker restarts several times and the
/// device process is SIGKILLed twice all arrive at the fleet, once each, no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_once_across_broker_restarts_and_device_kills() {
    const COUNT: u64 = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
    let fleet = start_fleet(dir.path(), &pki, 0).await;
    let port = fleet.running.mqtt_address.port();
    let mut device = loadgen(&pki, port, dir.path(), COUNT);
    let pause = || tokio::time::sleep(Duration::from_millis(700));

    pause().await;
    fleet.stop().await; // broker down: the device keeps appending to its outbox
    pause().await;
    let fleet = start_fleet(dir.path(), &pki, port).await;
    pause().await;
    device.kill().await.expect("SIGKILL device"); // kill -9 mid-stream
    device = loadgen(&pki, port, dir.path(), COUNT);
    pause().await;
    fleet.stop().await;
    pause().await;
    device.kill().await.expect("SIGKILL device while the broker is down");
    device = loadgen(&pki, port, dir.path(), COUNT);
    pause().await;
    let fleet = start_fleet(dir.path(), &pki, port).await;

    let finished = tokio::time::timeout(Duration::from_secs(90), device.wait())
        .await
        .expect("the device acknowledged everything within 90 s")
        .expect("wait");
    assert!(finished.success(), "loadgen exited with {finished}");
    fleet.stop().await;

    let store = warden_fleet::store::Store::open(&format!("sqlite://{}", dir.path().join("fleet.db").display()))
        .await
        .expect("store");
    let readings = store.telemetry(&pki.device_id, Some("load/n"), 100_000).await.expect("query");
    store.close().await;
    let mut values: Vec<u64> = readings.iter().map(|r| r.value as u64).collect();
    values.sort_unstable();
    let expected: Vec<u64> = (0..COUNT).collect();
    assert_eq!(values.len(), expected.len(), "count of readings at the fleet (duplicates or losses)");
    assert_eq!(values, expected, "readings at the fleet");
}
