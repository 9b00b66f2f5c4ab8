//! Control messages (command results, reported state, events, failure reports) are
//! durable: produced while the broker is down, the device SIGKILLed before it could
//! publish them, they arrive after the restart, once per delivery, and leave the
//! device's queue when acknowledged.
//!
//! The device is this test binary run again as a child process
//! (`device_process`, active only with `WARDEN_CONTROL_CHILD` set), so it can be
//! killed with SIGKILL like the real link compartment. The broker is Mosquitto with
//! `require_certificate` and the per-device ACLs; the fleet side is a plain MQTT client
//! with the fleet's certificate that acknowledges what it stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_link::outbox::OutboxConfig;
use warden_link::{ControlMessage, ControlQueue, LinkAgent, LinkConfig};
use warden_test_support::mosquitto;
use warden_test_support::ports::free_port;
use warden_wire::tls::{ClientIdentity, client_config};
use warden_wire::topics::{
    CommandResult, CommandStatus, Delivery, DeviceEvent, FailureReportMessage, PROTOCOL_VERSION,
    TOPIC_ROOT, TwinReported, ack_topic,
};

/// Mosquitto from the fleet's config template on `port` (warden-test-support's).
fn start_mosquitto(dir: &Path, pki: &DemoPki, port: u16) -> mosquitto::Mosquitto {
    let files = mosquitto::BrokerPki {
        client_ca: pki.manufacturer_ca.clone(),
        server_cert: pki.server_cert.clone(),
        server_key: pki.server_key.clone(),
    };
    mosquitto::start(dir, &files, port)
}

const CHILD_ENV: &str = "WARDEN_CONTROL_CHILD";

/// What the child needs of the parent's PKI (regenerating it would make a new device).
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildSpec {
    mode: String,
    dir: std::path::PathBuf,
    port: u16,
    device_id: String,
    fleet_ca: std::path::PathBuf,
    device_cert: std::path::PathBuf,
    device_key: std::path::PathBuf,
}

fn link_config(spec: &ChildSpec) -> LinkConfig {
    LinkConfig {
        broker_host: "127.0.0.1".into(),
        broker_port: spec.port,
        fleet_ca: spec.fleet_ca.clone(),
        device_cert: spec.device_cert.clone(),
        device_key: Some(spec.device_key.clone()),
        pluton_socket: None,
        batch_interval_ms: 50,
        max_send_per_second: 1000,
        outbox: OutboxConfig::in_dir(spec.dir.join("outbox")),
    }
}

fn control_messages() -> Vec<ControlMessage> {
    let reported = |version| {
        ControlMessage::TwinReported(TwinReported {
            v: PROTOCOL_VERSION,
            policy_name: Some("plant".into()),
            policy_version: Some(version),
            ..TwinReported::default()
        })
    };
    vec![
        reported(1),
        ControlMessage::CommandResult(CommandResult {
            v: PROTOCOL_VERSION,
            id: "cmd-17".into(),
            status: CommandStatus::Written,
            detail: String::new(),
        }),
        ControlMessage::Event(DeviceEvent::now("policy-applied", "version 2")),
        ControlMessage::FailureReport(FailureReportMessage {
            v: PROTOCOL_VERSION,
            id: "7".into(),
            ts_ms: 1,
            compartment: "bridges".into(),
            kind: "panic".into(),
            image_version: "1.0.0".into(),
            signature: "bridges/panic/x".into(),
            message: "panicked: x".into(),
        }),
        reported(2),
    ]
}

/// The device: in mode `produce` it queues the control messages and runs the link; in
/// mode `resume` it only runs the link. It never returns on its own: the parent kills
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // run as an ordinary test: nothing to do
    };
    let spec: ChildSpec = serde_json::from_str(&spec).expect("child spec");
    let mut agent = LinkAgent::new(spec.device_id.clone(), link_config(&spec));
    let channel = agent.command_channel().expect("control queue opens");
    if spec.mode == "produce" {
        for message in control_messages() {
            channel.control.send(&message).expect("queued durably");
        }
    }
    if spec.mode == "settings" {
        // What the appliance's twin does at every start.
        let running = control_messages().pop().expect("a reported state");
        channel.control.send(&running).expect("queued durably");
    }
    println!("\ndevice-link-running");
    let (_readings, readings_rx) = tokio::sync::mpsc::channel(1);
    let _ = agent.run(readings_rx, CancellationToken::new()).await;
}

async fn spawn_device(mode: &str, dir: &Path, port: u16, pki: &DemoPki) -> Child {
    let spec = ChildSpec {
        mode: mode.to_owned(),
        dir: dir.to_path_buf(),
        port,
        device_id: pki.device_id.clone(),
        fleet_ca: pki.fleet_ca.clone(),
        device_cert: pki.device_cert.clone(),
        device_key: pki.device_key.clone(),
    };
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "control_durability::device_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&spec).expect("spec"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("device process starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("device-link-running") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        waited,
        Ok(true),
        "the device process did not start its link"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// The fleet side: a plain MQTT client with the fleet's certificate that records every
/// control message and acknowledges it as the fleet must.
fn observer(
    pki: &DemoPki,
    port: u16,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Delivery, Vec<u8>)>,
) {
    let identity =
        ClientIdentity::from_pem_files(&pki.fleet_client_cert, &pki.fleet_client_key).expect("id");
    let tls = client_config(&pki.fleet_ca, identity).expect("tls");
    let mut options = MqttOptions::new("fleet", "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let device = pki.device_id.clone();
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let publisher = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for suffix in ["command-results", "twin/reported", "events", "reports"] {
                        let topic = format!("{TOPIC_ROOT}/{device}/{suffix}");
                        let _ = client.try_subscribe(topic, QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Some(delivery) = Delivery::of_payload(&publish.payload) else {
                        continue;
                    };
                    let _ = client.try_publish(
                        ack_topic(&device),
                        QoS::AtLeastOnce,
                        false,
                        delivery.ack(),
                    );
                    let _ =
                        seen_tx.send((publish.topic.clone(), delivery, publish.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (publisher, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto (Debian package; .ci/run installs it)"]
async fn control_messages_survive_an_outage_and_sigkill_and_arrive_once() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
    let port = free_port();
    // Up, then down: the device produces while the broker is down.
    drop(start_mosquitto(dir.path(), &pki, port));

    let mut device = spawn_device("produce", dir.path(), port, &pki).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    device
        .kill()
        .await
        .expect("SIGKILL the device before it could publish");

    let _broker = start_mosquitto(dir.path(), &pki, port);
    let (fleet, mut seen) = observer(&pki, port);
    tokio::time::sleep(Duration::from_millis(500)).await; // the observer subscribes
    let mut device = spawn_device("resume", dir.path(), port, &pki).await;

    // Deduplicated by delivery, as the fleet stores them.
    let mut received: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
    let collect = async {
        while received.len() < 4 {
            let (topic, delivery, payload) = seen.recv().await.expect("observer runs");
            assert_eq!(delivery.stream, "control");
            received.insert(delivery.seq, (topic, payload));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("every control message arrived after the restart");
    // Give the device a moment for late duplicates or for anything else to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Ok((topic, delivery, payload)) = seen.try_recv() {
        received.insert(delivery.seq, (topic, payload));
    }
    let topics: Vec<&str> = received
        .values()
        .map(|(topic, _)| topic.rsplit_once(&pki.device_id).map_or("", |(_, s)| s))
        .collect();
    assert_eq!(
        topics,
        vec!["/command-results", "/events", "/reports", "/twin/reported"],
        "each message once (by delivery), the superseded reported state never"
    );
    let result = CommandResult::decode(&received.values().next().expect("result").1)
        .expect("an older peer reads the result as before");
    assert_eq!(result.id, "cmd-17");
    let reported =
        TwinReported::decode(&received.values().last().expect("reported").1).expect("reported");
    assert_eq!(reported.policy_version, Some(2), "only the newest state");

    // Acknowledged means gone: nothing is left to send after another kill -9.
    device.kill().await.expect("SIGKILL");
    let queue = ControlQueue::open(&dir.path().join("outbox/control")).expect("queue");
    assert_eq!(
        queue.stats().depth,
        0,
        "acknowledged control messages left the queue"
    );
    drop(queue);

    // Link settings through the twin: an out-of-bounds change is refused whole and
    // reported; a valid one runs and is reported with its version and digest.
    let mut device = spawn_device("settings", dir.path(), port, &pki).await;
    let desired_topic = warden_wire::topics::twin_desired_topic(&pki.device_id);
    let mut next_reported = async |wanted: &dyn Fn(&TwinReported) -> bool| {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (topic, _, payload) = seen.recv().await.expect("observer runs");
                if let Ok(state) = TwinReported::decode(&payload)
                    && topic.ends_with("/twin/reported")
                    && wanted(&state)
                {
                    return state;
                }
            }
        })
        .await
        .expect("the reported state arrives")
    };
    next_reported(&|state| state.policy_version == Some(2)).await;
    let bad = br#"{"v":1,"policy_bundle":null,"link":{"version":1,"batch_interval_ms":1,"max_send_per_second":100}}"#;
    fleet
        .publish(&desired_topic, QoS::AtLeastOnce, false, bad.to_vec())
        .await
        .expect("publish");
    let refused = next_reported(&|state| state.last_error.is_some()).await;
    assert!(
        refused
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("batch_interval_ms 1 is outside")),
        "{refused:?}"
    );
    assert_eq!(refused.link_settings_version, None, "nothing of it runs");
    let good = br#"{"v":1,"policy_bundle":null,"link":{"version":1,"batch_interval_ms":100,"max_send_per_second":100}}"#;
    fleet
        .publish(&desired_topic, QoS::AtLeastOnce, false, good.to_vec())
        .await
        .expect("publish");
    let applied = next_reported(&|state| state.link_settings_version == Some(1)).await;
    assert_eq!(applied.last_error, None);
    assert_eq!(applied.policy_version, Some(2), "the policy part is kept");
    let expected = warden_wire::topics::LinkSettings {
        version: 1,
        batch_interval_ms: 100,
        max_send_per_second: 100,
    };
    assert_eq!(applied.link_settings_sha256, Some(expected.digest()));
    device.kill().await.expect("SIGKILL");
}
