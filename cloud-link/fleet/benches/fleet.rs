//! Fleet figures: the `warden-fleet` binary as its own process, loaded by simulated
//! devices (rumqttc over mutual TLS) and API clients from this one.
//!
//! Prints the fleet process's RSS before and after a device load, and the rate of
//! registry lookups (`GET /api/v1/devices/{id}`: token check, SQLite query, JSON) per
//! second of fleet CPU. `FLEET_BENCH_DEVICES` (default 1000) sets the device count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::io::AsyncBufReadExt as _;
use warden_link::tls::{ClientIdentity, client_config};
use warden_link::{Reading, TelemetryBatch};

const TOKEN: &str = "bench-token";

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed");
    (Issuer::new(params, key), cert.pem())
}

fn issue(issuer: &Issuer<'static, KeyPair>, cn: &str, server: bool) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let names = if server {
        vec!["127.0.0.1".to_owned()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// `(VmRSS kB, utime + stime seconds)` of process `pid`.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let seconds = ticks as f64 / 100.0;
    (rss, seconds)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices: usize = std::env::var("FLEET_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let write = |name: &str, text: &str| std::fs::write(p.join(name), text).expect("write");
    let (fleet_ca, fleet_ca_pem) = ca("bench fleet CA");
    let (server_cert, server_key) = issue(&fleet_ca, "fleet", true);
    let (maker, maker_pem) = ca("bench maker CA");
    write("fleet-ca.pem", &fleet_ca_pem);
    write("server.pem", &server_cert);
    write("server.key", &server_key);
    write("maker-ca.pem", &maker_pem);
    write(
        "fleet.toml",
        &format!(
            "http_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n\
             database_url = \"sqlite://{db}\"\nserver_cert = \"{d}/server.pem\"\n\
             server_key = \"{d}/server.key\"\nmanufacturer_ca = \"{d}/maker-ca.pem\"\n\
             [api]\ntokens = [{{ name = \"bench\", role = \"admin\", sha256 = \"{hash}\" }}]\n",
            db = p.join("fleet.db").display(),
            d = p.display(),
            hash = warden_fleet::auth::hash_token(TOKEN),
        ),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden-fleet"))
        .arg("--config")
        .arg(p.join("fleet.toml"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start warden-fleet");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut http, mut mqtt) = (String::new(), 0u16);
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(v) = line.strip_prefix("fleet dashboard: http://") {
            http = v.trim_end_matches('/').to_owned();
        }
        if let Some(v) = line.strip_prefix("fleet broker:    mqtts://") {
            mqtt = v
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_idle, _) = usage(pid);

    // Registry: a product and `devices` registered devices.
    let api = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        api.post(format!("http://{http}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let status = post(
        "/api/v1/products",
        serde_json::json!({ "name": "bench", "manufacturer_ca_pem": maker_pem }),
    )
    .await
    .expect("product")
    .status();
    assert_eq!(status, 201);
    let mut identities = Vec::with_capacity(devices);
    for i in 0..devices {
        let id = format!("wd-{i:05}");
        let (cert, key) = issue(&maker, &id, false);
        let status = post(
            "/api/v1/devices",
            serde_json::json!({ "device_id": id, "serial": id, "product": "bench",
                                "certificate_pem": cert, "image_version": "1.0.0" }),
        )
        .await
        .expect("register")
        .status();
        assert_eq!(status, 201);
        write(&format!("{id}.pem"), &cert);
        write(&format!("{id}.key"), &key);
        identities.push(id);
    }
    let (rss_registered, _) = usage(pid);

    // Devices: connect all, each sends 10 telemetry batches (QoS 1) and stays connected.
    let connect_started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(devices);
    for id in &identities {
        let identity = ClientIdentity::from_pem_files(
            &p.join(format!("{id}.pem")),
            &p.join(format!("{id}.key")),
        )
        .expect("identity");
        let tls = client_config(&p.join("fleet-ca.pem"), identity).expect("tls");
        let mut options = MqttOptions::new(id, "127.0.0.1", mqtt);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, mut eventloop) = AsyncClient::new(options, 32);
        let topic = warden_link::topics::telemetry_topic(id);
        for seq in 0..10u64 {
            let batch = TelemetryBatch {
                v: 1,
                stream: "telemetry".into(),
                epoch: 1,
                seq,
                readings: (0..10)
                    .map(|r| Reading {
                        point: format!("line1/p{r}"),
                        value: f64::from(r),
                        unit: "bar".into(),
                        ts_ms: 1_700_000_000_000 + seq,
                    })
                    .collect(),
            };
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
    let requests = Arc::new(AtomicU64::new(0));
    let (_, cpu_before) = usage(pid);
    let started = Instant::now();
    let stop = started + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let api = api.clone();
        let http = http.clone();
        let ids = identities.clone();
        let requests = Arc::clone(&requests);
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < stop {
                let id = &ids[i % ids.len()];
                let ok = api
                    .get(format!("http://{http}/api/v1/devices/{id}"))
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
    let (rss_after_api, cpu_after) = usage(pid);
    let served = requests.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let served_f = served as f64;
    let fleet_cpu = (cpu_after - cpu_before).max(0.01);

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
    drop(clients);
    let _ = child.kill().await;
}
