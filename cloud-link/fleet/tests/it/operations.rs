//! Standing a fleet up and keeping it: `warden-fleet init` makes a fleet that starts,
//! and a backup taken under ingest restores every acknowledged batch.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use tokio_util::sync::CancellationToken;
use warden_wire::topics::{Ack, ack_topic, telemetry_topic};

const FLEET: &str = env!("CARGO_BIN_EXE_warden-fleet");

/// A `warden-fleet` process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `warden-fleet init` in `dir` on free loopback ports; its stdout.
fn init(dir: &Path) -> String {
    let output = Command::new(FLEET)
        .args(["init", "--dir"])
        .arg(dir)
        .args([
            "--hostname",
            "127.0.0.1",
            "--hostname",
            "localhost",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run warden-fleet init");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "init failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn init_makes_a_fleet_that_serves_its_openapi_and_refuses_unauthenticated_calls() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("fleet");
    let shown = init(&dir);
    let token = shown
        .lines()
        .find_map(|l| l.strip_prefix("admin token:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the admin token is printed")
        .to_owned();
    let config = std::fs::read_to_string(dir.join("fleet.toml")).expect("config");
    assert!(!config.contains(&token), "only the token's hash is kept");

    // Again: refused, nothing changed.
    let again = Command::new(FLEET)
        .args(["init", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists; init never overwrites"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("fleet.toml")).expect("config"),
        config
    );

    let mut child = Command::new(FLEET)
        .arg("--config")
        .arg(dir.join("fleet.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start warden-fleet");
    let stdout = child.stdout.take().expect("stdout");
    let _fleet = Process(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    let mut metrics = None;
    while url.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("the fleet prints its addresses")
            .expect("line");
        if let Some(rest) = line.strip_prefix("fleet dashboard: ") {
            url = Some(rest.trim().trim_end_matches('/').to_owned());
        }
        if let Some(rest) = line.strip_prefix("fleet metrics:   ") {
            metrics = Some(rest.trim().to_owned());
        }
    }
    let url = url.expect("url");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = std::fs::read(dir.join("fleet-ca.pem")).expect("fleet CA");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("PEM"))
        .build()
        .expect("client");

    let openapi = client
        .get(format!("{url}/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(openapi.status(), 200);
    let document: serde_json::Value = openapi.json().await.expect("json");
    assert!(document["openapi"].is_string(), "{document}");

    let anonymous = client
        .get(format!("{url}/api/v1/devices"))
        .send()
        .await
        .expect("devices");
    assert_eq!(anonymous.status(), 401);
    let wrong = client
        .get(format!("{url}/api/v1/products"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("products");
    assert_eq!(wrong.status(), 401);
    let admin = client
        .get(format!("{url}/api/v1/products"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("products");
    assert_eq!(admin.status(), 200);

    let scraped = reqwest::get(metrics.expect("metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        scraped.contains("\nwarden_fleet_connected_devices 0\n"),
        "{scraped}"
    );

    // A second fleet on the same database is refused (what keeps a restore off it).
    let second = Command::new(FLEET)
        .arg("--config")
        .arg(dir.join("fleet.toml"))
        .output()
        .expect("run");
    assert!(!second.status.success());
    let restore = Command::new(FLEET)
        .arg("--config")
        .arg(dir.join("fleet.toml"))
        .args(["restore", "--force", "--from"])
        .arg(dir.join("fleet.db"))
        .output()
        .expect("run");
    assert!(!restore.status.success());
    assert!(
        String::from_utf8_lossy(&restore.stderr).contains("a running warden-fleet holds"),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
}

#[test]
fn without_a_config_the_fleet_says_what_to_run() {
    let temp = tempfile::tempdir().expect("tempdir");
    let output = Command::new(FLEET)
        .current_dir(temp.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no fleet config at fleet.toml")
            && stderr.contains("warden-fleet init --dir DIR"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_backup_taken_under_ingest_restores_every_acknowledged_batch() {
    let fx = super::fleet().await;
    let (client, mut eventloop) = super::client(&fx, "wd-good", "wd-good");
    super::connect(&mut eventloop).await.expect("connects");
    client
        .subscribe(ack_topic("wd-good"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");

    // The device sends batches as fast as the broker takes them; acks are collected.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let stop = CancellationToken::new();
    let poller = tokio::spawn({
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            if let Ok(ack) = Ack::decode(&publish.payload) {
                                let _ = acked_tx.send(ack.seq);
                            }
                        }
                        Ok(_) => {}
                        Err(error) => panic!("device connection: {error}"),
                    }
                }
            }
        }
    });
    let sender = tokio::spawn({
        let stop = stop.clone();
        let client = client.clone();
        async move {
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                #[allow(clippy::cast_precision_loss, reason = "small test numbers")]
                let value = seq as f64;
                if client
                    .publish(
                        telemetry_topic("wd-good"),
                        QoS::AtLeastOnce,
                        false,
                        super::batch(seq, value),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    let mut acked = BTreeSet::new();
    // Ingest runs for a while before the backup.
    while acked.len() < 200 {
        let seq = tokio::time::timeout(Duration::from_secs(10), acked_rx.recv())
            .await
            .expect("acks keep coming")
            .expect("poller alive");
        acked.insert(seq);
    }
    while let Ok(seq) = acked_rx.try_recv() {
        acked.insert(seq);
    }
    let acked_before = acked.clone();
    let backup = fx.dir.path().join("backup.db");
    let copied = warden_fleet::backup::backup(&fx.database_url, &backup, false)
        .await
        .expect("backup under ingest");
    assert!(copied.bytes > 0);
    // Ingest went on during and after the backup: newer batches are acknowledged.
    let newest_before = acked_before.last().copied().unwrap_or_default();
    loop {
        let seq = tokio::time::timeout(Duration::from_secs(10), acked_rx.recv())
            .await
            .expect("acks after the backup")
            .expect("poller alive");
        if seq > newest_before {
            break;
        }
    }
    stop.cancel();
    let _ = sender.await;
    let _ = poller.await;
    // A second backup to the same file is refused without --force.
    let refused = warden_fleet::backup::backup(&fx.database_url, &backup, false)
        .await
        .expect_err("exists");
    assert!(
        matches!(refused, warden_fleet::backup::BackupError::Exists(_)),
        "{refused}"
    );
    let mut config = fx.config.clone();
    // Stopped, its directory (certificates, the backup) kept.
    fx.shutdown.cancel();
    fx.fleet.stopped().await;

    // Restore into a new database; refused over an existing one without force.
    let restored_db = backup.with_file_name("restored.db");
    let restored_url = format!("sqlite://{}", restored_db.display());
    warden_fleet::backup::restore(&restored_url, &backup, false)
        .await
        .expect("restore");
    let again = warden_fleet::backup::restore(&restored_url, &backup, false)
        .await
        .expect_err("exists");
    assert!(
        matches!(again, warden_fleet::backup::BackupError::Exists(_)),
        "{again}"
    );
    warden_fleet::backup::restore(&restored_url, &backup, true)
        .await
        .expect("forced restore");
    let not_a_database = backup.with_file_name("junk.db");
    std::fs::write(&not_a_database, b"not sqlite").expect("write");
    let junk = warden_fleet::backup::restore(&restored_url, &not_a_database, true)
        .await
        .expect_err("junk");
    assert!(
        matches!(
            junk,
            warden_fleet::backup::BackupError::NotAFleetDatabase { .. }
        ),
        "{junk}"
    );

    config.database_url = restored_url;
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("a fleet on the restored database");
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/devices/wd-good/telemetry?limit=10000",
            fleet.http_address
        ))
        .bearer_auth(super::VIEWER)
        .send()
        .await
        .expect("telemetry");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    let stored: BTreeSet<u64> = body["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|reading| reading["value"].as_f64())
        .map(|value| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "whole numbers sent above"
            )]
            let seq = value as u64;
            seq
        })
        .collect();
    let missing: Vec<u64> = acked_before.difference(&stored).copied().collect();
    assert!(
        missing.is_empty(),
        "{} of {} batches acknowledged before the backup are missing from it: {missing:?}",
        missing.len(),
        acked_before.len()
    );
    shutdown.cancel();
    fleet.stopped().await;
}
