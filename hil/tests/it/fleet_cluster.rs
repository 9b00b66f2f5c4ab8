//! One fleet across three `warden-fleet` processes on one PostgreSQL, behind HAProxy in
//! TCP mode (TLS ends at the instances: mutual TLS stays end to end), with simulated
//! devices (the load tools' PKI, batches and quote signer) connected through it.
//!
//! Checked: sessions spread over the instances; a command posted to instance 1
//! reaches a device held by instance 3; a rollout is stepped once (one offer per
//! device, one `wave-started`); instance 2 SIGKILLed under load, its devices are back
//! through the balancer within 10 s, and attestation and commands work for them; the
//! leader SIGKILLed, another instance steps the rollout; every acknowledged batch is
//! stored exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;
use warden_fleet::loadtest::{Api, FleetProcess, Pki, QuoteSigner, telemetry_batch};
use warden_keychain::tooling::SecretSigningKey;
use warden_test_support::ports::free_port;
use warden_test_support::postgres::TemporaryPostgres;
use warden_wire::fleet_api::{DEFAULT_GROUP, DEPLOYMENTS_PATH, DeploymentRequest, WaveSize};
use warden_wire::topics::{
    Ack, AttestationChallenge, AttestationQuote, Command, PROTOCOL_VERSION, UpdateOffer,
    UpdateStatus, ack_topic, attestation_challenge_topic, attestation_quote_topic, commands_topic,
    encode, from_hex, telemetry_topic, to_hex, update_offer_topic, update_status_topic,
};

use super::rollout::{PRODUCT, image_with_counter};

/// Simulated devices (`WARDEN_CLUSTER_DEVICES` overrides).
const DEFAULT_DEVICES: usize = 300;
/// Devices of the rollout's first wave.
const FIRST_WAVE: u32 = 20;
/// Seconds between two telemetry batches of one device.
const BATCH_EVERY: Duration = Duration::from_secs(2);

/// What one simulated device saw.
#[derive(Default)]
struct Seen {
    acked: BTreeSet<u64>,
    sent: u64,
    commands: Vec<String>,
    offers: Vec<String>,
    confirmed: BTreeSet<String>,
    connects: u32,
}

struct SimDevice {
    id: String,
    seen: Mutex<Seen>,
}

/// What every simulated device shares.
struct Control {
    pki: Pki,
    port: u16,
    /// The image register a quote reports: release 1.0.0's.
    register: [u8; 32],
    /// Devices confirm the offers they got once this is set.
    confirm_offers: AtomicBool,
    /// Devices stop sending telemetry once this is set.
    quiet: AtomicBool,
    stop: CancellationToken,
}

/// The `warden-fleet` binary of this workspace build.
fn fleet_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = dir.join("warden-fleet");
    assert!(
        binary.exists(),
        "{} is missing: cargo build -p warden-fleet",
        binary.display()
    );
    binary
}

/// HAProxy in TCP mode on `port` before `backends` (mqtt port, http port), checking
/// each instance's `/healthz`.
fn start_haproxy(dir: &Path, port: u16, backends: &[(u16, u16)]) -> std::process::Child {
    let mut config = format!(
        "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 120s\n  timeout server 120s\n  retries 3\n  option redispatch\n\
         frontend mqtt\n  bind 127.0.0.1:{port}\n  default_backend fleets\n\
         backend fleets\n  balance roundrobin\n  option httpchk GET /healthz\n"
    );
    for (n, (mqtt, http)) in backends.iter().enumerate() {
        config.push_str(&format!(
            "  server fleet{} 127.0.0.1:{mqtt} check port {http} inter 500 fall 2 rise 1\n",
            n + 1
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("haproxy config");
    std::process::Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy (Debian package haproxy)")
}

/// One device: connects through the balancer, reconnects whenever its session ends,
/// sends a batch every [`BATCH_EVERY`] (and again every batch not yet acknowledged
/// after a reconnect), answers challenges, records commands and offers.
async fn run_device(device: Arc<SimDevice>, control: Arc<Control>) {
    let key = control.pki.device_key_pem(&device.id).expect("key");
    let signer = QuoteSigner::from_pem(&key).expect("signer");
    let id = device.id.clone();
    while !control.stop.is_cancelled() {
        let mut options = control
            .pki
            .mqtt_options(&id, control.port)
            .expect("options");
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 256);
        let connected = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code == rumqttc::ConnectReturnCode::Success =>
                    {
                        return true;
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !connected {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        device.seen.lock().expect("seen").connects += 1;
        for topic in [
            ack_topic(&id),
            commands_topic(&id),
            attestation_challenge_topic(&id),
            update_offer_topic(&id),
        ] {
            let _ = client.try_subscribe(topic, QoS::AtMostOnce);
        }
        // Everything not acknowledged goes again (the fleet stores a batch once).
        let unacked: Vec<u64> = {
            let seen = device.seen.lock().expect("seen");
            (0..seen.sent).filter(|s| !seen.acked.contains(s)).collect()
        };
        for seq in unacked {
            let _ = client.try_publish(
                telemetry_topic(&id),
                QoS::AtLeastOnce,
                false,
                telemetry_batch(seq).encode(),
            );
        }
        let mut tick = tokio::time::interval(BATCH_EVERY);
        loop {
            tokio::select! {
                () = control.stop.cancelled() => return,
                _ = tick.tick() => {
                    if !control.quiet.load(Ordering::Relaxed) {
                        let seq = {
                            let mut seen = device.seen.lock().expect("seen");
                            seen.sent += 1;
                            seen.sent - 1
                        };
                        let _ = client.try_publish(
                            telemetry_topic(&id),
                            QoS::AtLeastOnce,
                            false,
                            telemetry_batch(seq).encode(),
                        );
                    }
                    if control.confirm_offers.load(Ordering::Relaxed) {
                        let pending: Vec<String> = {
                            let seen = device.seen.lock().expect("seen");
                            seen.offers.iter().filter(|o| !seen.confirmed.contains(*o)).cloned().collect()
                        };
                        for offer in pending {
                            let status = UpdateStatus {
                                v: PROTOCOL_VERSION,
                                id: offer.clone(),
                                state: "confirmed".into(),
                                detail: String::new(),
                                source: None,
                                version: None,
                            };
                            if client
                                .try_publish(update_status_topic(&id), QoS::AtLeastOnce, false, encode(&status))
                                .is_ok()
                            {
                                device.seen.lock().expect("seen").confirmed.insert(offer);
                            }
                        }
                    }
                }
                event = events.poll() => match event {
                    Err(_) => break,
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        handle(&device, &control, &signer, &client, &publish);
                    }
                    Ok(_) => {}
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn handle(
    device: &SimDevice,
    control: &Control,
    signer: &QuoteSigner,
    client: &AsyncClient,
    publish: &rumqttc::Publish,
) {
    let id = &device.id;
    let topic = publish.topic.as_str();
    if topic == ack_topic(id) {
        if let Ok(ack) = Ack::decode(&publish.payload) {
            device.seen.lock().expect("seen").acked.insert(ack.seq);
        }
    } else if topic == commands_topic(id) {
        if let Ok(command) = serde_json::from_slice::<Command>(&publish.payload) {
            device.seen.lock().expect("seen").commands.push(command.id);
        }
    } else if topic == attestation_challenge_topic(id) {
        if let Ok(challenge) = serde_json::from_slice::<AttestationChallenge>(&publish.payload)
            && let Some(nonce) = from_hex(&challenge.nonce)
            && let Ok(quote) = signer.quote(&nonce, control.register)
        {
            let answer = AttestationQuote {
                v: PROTOCOL_VERSION,
                nonce: challenge.nonce,
                quote: to_hex(&quote),
                error: None,
            };
            let _ = client.try_publish(
                attestation_quote_topic(id),
                QoS::AtLeastOnce,
                false,
                encode(&answer),
            );
        }
    } else if topic == update_offer_topic(id)
        && let Ok(offer) = serde_json::from_slice::<UpdateOffer>(&publish.payload)
    {
        device.seen.lock().expect("seen").offers.push(offer.id);
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics naming `what`.
async fn wait_for<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({limit:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which instance holds each device's session, by the presence table.
async fn holders(
    store: &warden_fleet::store::Store,
    devices: &[Arc<SimDevice>],
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for device in devices {
        if let Some(presence) = store.presence(&device.id).await.expect("presence") {
            out.insert(device.id.clone(), presence.instance_id);
        }
    }
    out
}

async fn health(api: &Api) -> Option<serde_json::Value> {
    let response = api.client().get(api.url("/healthz")).send().await.ok()?;
    response.json().await.ok()
}

async fn send_command(api: &Api, device: &str, id: &str) {
    let (status, body) = api
        .post(
            &format!("/api/v1/devices/{device}/commands"),
            Ok(serde_json::json!({"bridge": "b", "point": "p", "value": 1.0, "id": id})),
        )
        .await
        .expect("post command");
    assert_eq!(status, 202, "command {id} to {device}: {body}");
}

async fn command_arrives(device: &SimDevice, id: &str) {
    wait_for(
        &format!("command {id} at {}", device.id),
        Duration::from_secs(5),
        async || {
            device
                .seen
                .lock()
                .expect("seen")
                .commands
                .iter()
                .any(|c| c == id)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgresql and haproxy (Debian packages; .ci/run installs them)"]
async fn three_instances_behind_haproxy_share_one_fleet() {
    let count = std::env::var("WARDEN_CLUSTER_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_DEVICES);
    let binary = fleet_binary();
    let postgres = TemporaryPostgres::start();
    let database = postgres.create_database("fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path()).expect("pki");
    let vendor_root = SecretSigningKey::generate().expect("rng");
    let extra = |n: usize| {
        format!(
            "instance_id = \"i{n}\"\n[images]\nvendor_roots = [\"{}\"]\ndir = \"{}\"\n\
             [rollouts]\ntick_ms = 200\nreoffer_after_s = 600\n",
            to_hex(&vendor_root.public_key()),
            dir.path().join("images").display()
        )
    };
    let mut fleets = Vec::new();
    for n in 1..=3 {
        fleets.push(Some(
            FleetProcess::start_on(&binary, &pki, &format!("fleet{n}"), &database, &extra(n))
                .await
                .expect("fleet instance starts"),
        ));
    }
    let addresses: Vec<String> = fleets
        .iter()
        .map(|f| f.as_ref().expect("running").http.clone())
        .collect();
    let api = |n: usize| Api::new(&addresses[n - 1]);
    let store = warden_fleet::store::Store::open(&database)
        .await
        .expect("store");

    // The operator, through instance 1: product, devices, release 1.0.0 and 2.0.0.
    let first = api(1);
    first.create_product(PRODUCT, &pki).await.expect("product");
    let ids: Vec<String> = (0..count).map(|n| format!("wd-c{n:04}")).collect();
    first
        .register_devices(&pki, PRODUCT, &ids)
        .await
        .expect("register");
    let mut measurement = String::new();
    let mut v2 = String::new();
    for (version, counter) in [((1, 0, 0), 1), ((2, 0, 0), 2)] {
        let image = image_with_counter(&vendor_root, version, "#!/bin/sh\nexit 0\n", counter);
        let (status, body) = first
            .post("/api/v1/images", Err(image))
            .await
            .expect("upload");
        assert!(matches!(status, 200 | 201), "upload: {status} {body}");
        if version.0 == 1 {
            measurement = body["measurement"]
                .as_str()
                .expect("measurement")
                .to_owned();
        } else {
            v2 = body["sha256"].as_str().expect("sha256").to_owned();
        }
    }
    let measured: [u8; 32] = from_hex(&measurement)
        .and_then(|m| m.try_into().ok())
        .expect("32-byte measurement");

    // The balancer, then the devices through it.
    let balancer_port = free_port();
    let backends: Vec<(u16, u16)> = fleets
        .iter()
        .map(|f| {
            let f = f.as_ref().expect("running");
            let http_port = f
                .http
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
            (f.mqtt_port, http_port)
        })
        .collect();
    let mut haproxy = start_haproxy(dir.path(), balancer_port, &backends);
    let control = Arc::new(Control {
        pki,
        port: balancer_port,
        register: warden_fleet::attestation::image_register_after_boot(&measured),
        confirm_offers: AtomicBool::new(false),
        quiet: AtomicBool::new(false),
        stop: CancellationToken::new(),
    });
    let devices: Vec<Arc<SimDevice>> = ids
        .iter()
        .map(|id| {
            Arc::new(SimDevice {
                id: id.clone(),
                seen: Mutex::default(),
            })
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for device in &devices {
        tasks.spawn(run_device(Arc::clone(device), Arc::clone(&control)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let held = wait_for(
        "every device connected",
        Duration::from_secs(120),
        async || {
            let held = holders(&store, &devices).await;
            (held.len() == count).then_some(held)
        },
    )
    .await;
    println!("{count} devices connected in {:?}", started.elapsed());
    let per_instance = |held: &BTreeMap<String, String>| {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for instance in held.values() {
            *per.entry(instance.clone()).or_default() += 1;
        }
        per
    };
    let spread = per_instance(&held);
    println!("sessions per instance: {spread:?}");
    assert_eq!(spread.len(), 3, "every instance holds sessions: {spread:?}");
    // Everyone attested (on connect, by the instance holding it) before the rollout.
    wait_for(
        "every device trusted",
        Duration::from_secs(120),
        async || {
            for id in &ids {
                let device = store.registered_device(id).await.expect("device")?;
                if device.attestation != "trusted" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // A command posted to instance 1 reaches a device held by instance 3.
    let on_three = devices
        .iter()
        .find(|d| held.get(&d.id).map(String::as_str) == Some("i3"))
        .expect("a device on instance 3");
    send_command(&first, &on_three.id, "cross-1").await;
    command_arrives(on_three, "cross-1").await;
    // The dashboard's online count is fleet-wide on every instance.
    for n in 1..=3 {
        let summary: serde_json::Value = api(n)
            .client()
            .get(api(n).url("/api/v1/dashboard/summary"))
            .bearer_auth(warden_fleet::loadtest::TOKEN)
            .send()
            .await
            .expect("summary")
            .json()
            .await
            .expect("json");
        assert_eq!(
            summary["connectivity"]["online"].as_u64(),
            Some(count as u64),
            "instance {n}: {summary}"
        );
    }

    // A rollout, created through instance 2: stepped by the leader alone.
    let mut request = DeploymentRequest::new(v2.clone(), DEFAULT_GROUP);
    request.waves = vec![WaveSize::Count(FIRST_WAVE), WaveSize::Percent(100)];
    request.success_threshold = 1.0;
    let (status, created) = api(2)
        .post(
            DEPLOYMENTS_PATH,
            Ok(serde_json::to_value(&request).expect("json")),
        )
        .await
        .expect("deployment");
    assert!(
        matches!(status, 200 | 201),
        "deployment: {status} {created}"
    );
    let deployment_id = created["id"].as_str().expect("id").to_owned();
    let deployment = async || -> serde_json::Value {
        first
            .client()
            .get(first.url(&format!("{DEPLOYMENTS_PATH}/{deployment_id}")))
            .bearer_auth(warden_fleet::loadtest::TOKEN)
            .send()
            .await
            .expect("get deployment")
            .json()
            .await
            .expect("json")
    };
    let offered = |wave: u32| {
        devices
            .iter()
            .filter(|d| !d.seen.lock().expect("seen").offers.is_empty())
            .count()
            >= usize::try_from(wave).expect("usize")
    };
    wait_for(
        "the first wave's offers",
        Duration::from_secs(20),
        async || offered(FIRST_WAVE).then_some(()),
    )
    .await;
    // Several ticks of three instances later, still one offer per device, one start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offers: usize = devices
        .iter()
        .map(|d| d.seen.lock().expect("seen").offers.len())
        .sum();
    assert_eq!(
        offers, FIRST_WAVE as usize,
        "one offer per device of the first wave"
    );
    let events = deployment().await["events"].clone();
    let starts = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "wave-started")
        .count();
    assert_eq!(starts, 1, "the wave started once: {events}");

    // Instance 2 SIGKILLed under load: its devices are back within 10 s, elsewhere.
    let on_two: Vec<Arc<SimDevice>> = devices
        .iter()
        .filter(|d| held.get(&d.id).map(String::as_str) == Some("i2"))
        .cloned()
        .collect();
    fleets[1].take().expect("instance 2").stop().await;
    let killed = Instant::now();
    let moved = wait_for(
        "instance 2's devices back through the balancer",
        Duration::from_secs(10),
        async || {
            let now = holders(&store, &on_two).await;
            (now.len() == on_two.len() && now.values().all(|i| i != "i2")).then_some(now)
        },
    )
    .await;
    println!(
        "{} devices of the killed instance reconnected in {:?}",
        on_two.len(),
        killed.elapsed()
    );
    // Attestation and commands for a device that moved, asked of instance 1.
    let mover = &on_two[0];
    let holder = moved[&mover.id].clone();
    let (status, verdict) = first
        .post(
            &format!("/api/v1/devices/{}/attestation", mover.id),
            Ok(serde_json::json!({})),
        )
        .await
        .expect("attest");
    assert_eq!(
        status, 200,
        "attestation of {} (now on {holder}): {verdict}",
        mover.id
    );
    assert_eq!(verdict["verified"], true, "{verdict}");
    send_command(&first, &mover.id, "after-kill-1").await;
    command_arrives(mover, "after-kill-1").await;
    let other = on_two
        .iter()
        .find(|d| moved[&d.id] != "i1")
        .unwrap_or(mover);
    send_command(&first, &other.id, "after-kill-2").await;
    command_arrives(other, "after-kill-2").await;

    // The leader SIGKILLed: the other instance steps the rollout on.
    let mut leader = None;
    for n in [1, 3] {
        if health(&api(n)).await.is_some_and(|h| h["leader"] == true) {
            leader = Some(n);
        }
    }
    let leader = leader.expect("one of the survivors leads");
    let survivor = if leader == 1 { 3 } else { 1 };
    let survivor_api = api(survivor);
    fleets[leader - 1].take().expect("leader").stop().await;
    wait_for("the survivor to lead", Duration::from_secs(5), async || {
        health(&survivor_api).await.filter(|h| h["leader"] == true)
    })
    .await;
    control.confirm_offers.store(true, Ordering::Relaxed);
    wait_for(
        "the second wave's offers",
        Duration::from_secs(30),
        async || {
            let offered = devices
                .iter()
                .filter(|d| !d.seen.lock().expect("seen").offers.is_empty())
                .count();
            (offered > FIRST_WAVE as usize).then_some(())
        },
    )
    .await;

    // Every acknowledged batch stored exactly once.
    control.quiet.store(true, Ordering::Relaxed);
    wait_for(
        "every batch acknowledged",
        Duration::from_secs(60),
        async || {
            devices
                .iter()
                .all(|d| {
                    let seen = d.seen.lock().expect("seen");
                    seen.acked.len() as u64 == seen.sent
                })
                .then_some(())
        },
    )
    .await;
    control.stop.cancel();
    while tasks.join_next().await.is_some() {}
    let mut batches = 0;
    for device in &devices {
        let acked = device.seen.lock().expect("seen").acked.clone();
        let stored = store
            .telemetry(&device.id, Some("line1/p0"), 1_000_000)
            .await
            .expect("telemetry");
        let mut per_seq: BTreeMap<i64, usize> = BTreeMap::new();
        for reading in &stored {
            *per_seq
                .entry(reading.ts_ms - 1_700_000_000_000)
                .or_default() += 1;
        }
        assert!(
            per_seq.values().all(|&copies| copies == 1),
            "{}: a batch stored twice: {per_seq:?}",
            device.id
        );
        for seq in &acked {
            assert_eq!(
                per_seq.get(&i64::try_from(*seq).expect("seq")),
                Some(&1),
                "{} batch {seq}: acknowledged, stored once",
                device.id
            );
        }
        batches += acked.len();
    }
    println!("{batches} acknowledged batches, each stored once");
    store.close().await;
    for fleet in fleets.into_iter().flatten() {
        fleet.stop().await;
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    drop(postgres);
}
