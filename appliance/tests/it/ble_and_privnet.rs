//! BLE sensors and the private network inside the appliance: started from the
//! `[[bridges.ble]]` and `[privnet]` config sections by the appliance's bridge set,
//! readings on the same path as every bridge's, cloud writes through the policy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden::bridge_set::{self, StartedBridgeSet};
use warden::config::ApplianceConfig;
use warden_bridges::Sample;
use warden_link::topics::{Command, CommandAction, CommandStatus, PROTOCOL_VERSION};
use warden_test_support::network_namespaces::{self, Namespaces, ip};

// Bumble's controllers and the scripted sensor, shared with warden-ble's own tests
// (not every helper is used here).
#[allow(dead_code)]
#[path = "../../../protocol-bridges/ble/tests/it/bumble.rs"]
mod bumble;

const SENSOR: &str = "F0:F1:F2:F3:F4:F5";
const WRITE_SERVICE: &str = "5741524E-0000-4000-8000-00805F9B34FB";
const SETPOINT: &str = "5741524E-0001-4000-8000-00805F9B34FB";

/// The poll may read and subscribe; `cloud_writes` adds the fleet's setpoint writes.
fn policy(cloud_writes: bool) -> Arc<warden_policy::CompiledPolicy> {
    let mut text = format!(
        "[[ble]]\nbridge = \"greenhouse\"\ndevice = \"{SENSOR}\"\nservice = \"181A\"\n\
         characteristics = [\"2A6E\", \"2A6F\", \"2A6D\"]\n\
         operations = [\"read\", \"notify\", \"indicate\"]\nsources = [\"poll\"]\n"
    );
    if cloud_writes {
        text.push_str(&format!(
            "\n[[ble]]\nbridge = \"greenhouse\"\ndevice = \"{SENSOR}\"\nservice = \"{WRITE_SERVICE}\"\n\
             characteristics = [\"{SETPOINT}\"]\noperations = [\"write\"]\nsources = [\"cloud\"]\n"
        ));
    }
    Arc::new(
        warden_policy::compile(&text, "test-policy")
            .expect("policy compiles")
            .policy,
    )
}

/// An appliance config with one BLE sensor on the bridge's Bumble controller.
fn config(hci_port: u16) -> ApplianceConfig {
    let text = format!(
        r#"
[device]
id = "wd-ble"
[policy]
file = "policy.toml"
[[bridges.ble]]
name = "greenhouse"
hci = "tcp:127.0.0.1:{hci_port}"
address = "{SENSOR}"
reconnect_delay_ms = 200
max_reconnect_delay_ms = 1000
[[bridges.ble.points]]
name = "temperature"
service = "181A"
characteristic = "2A6E"
access = "notify"
type = "i16"
scale = 0.01
unit = "°C"
[[bridges.ble.points]]
name = "humidity"
service = "181A"
characteristic = "2A6F"
access = "read"
type = "u16"
scale = 0.01
unit = "%"
poll_interval_ms = 300
[[bridges.ble.points]]
name = "setpoint"
service = "{WRITE_SERVICE}"
characteristic = "{SETPOINT}"
access = "none"
type = "u16"
[link]
broker_host = "127.0.0.1"
broker_port = 8883
fleet_ca = "ca.pem"
device_cert = "device.pem"
device_key = "device.key"
outbox = {{ dir = "outbox" }}
[status_page]
listen = "127.0.0.1:0"
password_file = "password.phc"
state_dir = "status-page"
"#
    );
    ApplianceConfig::parse(&text, Path::new("/etc/warden/warden.toml")).expect("valid config")
}

fn write(value: f64, id: &str) -> Command {
    Command {
        v: PROTOCOL_VERSION,
        id: id.into(),
        action: CommandAction::Write {
            bridge: "greenhouse".into(),
            point: "setpoint".into(),
            value,
        },
    }
}

/// Against Bumble's virtual controllers and the scripted sensor: the bridge set starts
/// the BLE bridge from the config, its readings arrive as samples that become
/// telemetry readings named `greenhouse/...`, its counters show in the bridge's
/// health like any bridge's, and a cloud command's write is denied by the running
/// policy (the sensor sees nothing) until a new policy allowing it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs bumble (pip install -r hil/ble/requirements.txt)"]
async fn ble_readings_flow_and_cloud_writes_pass_the_policy() {
    let controllers = bumble::Controllers::start();
    let sensor = bumble::Sensor::start(&controllers, &["--temperature", "21.5"]);
    let config = config(controllers.bridge_port);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (samples_tx, mut samples) = mpsc::channel::<Sample>(256);
    let StartedBridgeSet { set, listings, .. } = bridge_set::start(
        config.bridges,
        config.privnet,
        policy(false),
        samples_tx,
        shutdown.clone(),
        &mut tasks,
    )
    .await
    .expect("bridges start");
    assert_eq!(listings.len(), 1);
    assert_eq!(listings[0].name, "greenhouse");
    assert_eq!(listings[0].points, ["temperature", "humidity", "setpoint"]);

    // Readings: notified temperatures and read humidities, as telemetry.
    let mut points = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while points.len() < 2 {
        let sample = tokio::time::timeout_at(deadline, samples.recv())
            .await
            .expect("samples within 30 s")
            .expect("a sample");
        let reading = warden::roles::bridges::telemetry_reading(&sample).expect("numeric");
        if reading.point == "greenhouse/humidity" {
            let humidity = reading.value.as_number().expect("a number");
            assert!((humidity - 45.5).abs() < 1e-9, "{reading:?}");
        }
        points.insert(reading.point);
    }
    assert_eq!(
        points.into_iter().collect::<Vec<_>>(),
        ["greenhouse/humidity", "greenhouse/temperature"]
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let health = listings[0].health.lock().expect("health").clone();
    assert!(health.connected && health.reads_ok > 0, "{health:?}");

    // A cloud write the running policy does not allow: denied, never sent.
    let denied = warden::commands::execute(&set, &write(258.0, "c-1")).await;
    assert_eq!(denied.status, CommandStatus::Denied, "{denied:?}");
    // A newly applied policy allows it: the sensor sees the bytes.
    set.set_policy(&policy(true));
    let written = warden::commands::execute(&set, &write(258.0, "c-2")).await;
    assert_eq!(written.status, CommandStatus::Written, "{written:?}");
    let seen = sensor
        .events
        .wait_for(Duration::from_secs(5), |e| e["event"] == "write")
        .expect("the allowed write reached the sensor");
    assert_eq!(seen["value"], "0201"); // 258, little endian
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sensor.events.named("write").len(),
        1,
        "the denied write was sent"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let health = listings[0].health.lock().expect("health").clone();
    assert_eq!((health.denied, health.writes_ok), (1, 1), "{health:?}");

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

/// With no controller behind `hci`, the appliance still starts (the bridge retries),
/// the bridge is listed, not connected, with the transport error; a cloud write fails
/// with a reason instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ble_bridge_without_its_controller_is_listed_and_refuses_writes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = config(port);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (samples_tx, _samples) = mpsc::channel::<Sample>(16);
    let started = bridge_set::start(
        config.bridges,
        None,
        policy(true),
        samples_tx,
        shutdown.clone(),
        &mut tasks,
    )
    .await
    .expect("bridges start");
    let result = warden::commands::execute(&started.set, &write(1.0, "c-1")).await;
    assert_eq!(result.status, CommandStatus::Failed, "{result:?}");
    let mut health = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = started.listings[0].health.lock().expect("health").clone();
        if now.last_error.is_some() {
            health = Some(now);
            break;
        }
    }
    let health = health.expect("the transport error is shown");
    assert!(!health.connected, "{health:?}");
    let unknown = warden::commands::execute(
        &started.set,
        &Command {
            action: CommandAction::Write {
                bridge: "barn".into(),
                point: "x".into(),
                value: 1.0,
            },
            ..write(1.0, "c-2")
        },
    )
    .await;
    assert_eq!(unknown.status, CommandStatus::Failed);
    assert_eq!(unknown.detail, "no bridge named \"barn\"");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

/// `warden run --config` as root in a network namespace whose only way to the
/// equipment is the config's `[privnet]` port: a persistent TAP (no address) bridged to
/// an equipment namespace holding a Modbus TCP device at 10.77.0.10. The appliance
/// starts the userspace stack before its bridges, and the Modbus TCP bridge, pointed
/// at the `[[privnet.forward]]` loopback port, reads the device's registers
/// (`warden status` shows them), while the namespace's kernel has no route there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, iproute2 and /dev/net/tun"]
async fn the_appliance_reaches_equipment_only_through_its_private_network_port() {
    let tag = std::process::id() % 100_000;
    let (appliance_ns, equipment_ns) = (format!("wda{tag}"), format!("wde{tag}"));
    let _namespaces = Namespaces::create(&[appliance_ns.clone(), equipment_ns.clone()]);
    let tap = format!("wdtap{tag}");
    ip(&["-n", &appliance_ns, "link", "add", "br0", "type", "bridge"]);
    ip(&[
        "-n",
        &appliance_ns,
        "tuntap",
        "add",
        "dev",
        &tap,
        "mode",
        "tap",
    ]);
    ip(&[
        "-n",
        &appliance_ns,
        "link",
        "set",
        &tap,
        "master",
        "br0",
        "up",
    ]);
    ip(&["-n", &appliance_ns, "link", "set", "br0", "up"]);
    ip(&[
        "-n",
        &appliance_ns,
        "link",
        "add",
        "veq",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &equipment_ns,
    ]);
    ip(&[
        "-n",
        &appliance_ns,
        "link",
        "set",
        "veq",
        "master",
        "br0",
        "up",
    ]);
    ip(&[
        "-n",
        &equipment_ns,
        "addr",
        "add",
        "10.77.0.10/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &equipment_ns, "link", "set", "eth0", "up"]);

    // The equipment: the simulated Modbus device, its socket made inside its namespace.
    let stop = CancellationToken::new();
    let equipment_stop = stop.clone();
    let equipment_namespace = equipment_ns.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        network_namespaces::enter(&equipment_namespace);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let model: warden_hil::modbus_tcp_slave::DeviceModel =
                toml::from_str("unit = 1\n[holding.0]\nmodel = \"constant\"\nvalue = 1450\n")
                    .expect("model");
            let _device = warden_hil::modbus_tcp_slave::SimulatedSlave::start(
                "10.77.0.10:502",
                model,
                equipment_stop.clone(),
            )
            .await
            .expect("the device listens");
            let _ = ready_tx.send(());
            equipment_stop.cancelled().await;
        });
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("the equipment starts");

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let pki = warden_hil::demo_pki::DemoPki::generate(&state.join("pki")).expect("pki");
    let forward = 15020;
    let config = format!(
        r#"
[device]
id = "{device}"
[policy]
file = "policy.toml"
[privnet]
interface = "{tap}"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"
[[privnet.dhcp.static_leases]]
mac = "02:00:00:00:00:10"
ip = "10.77.0.10"
[[privnet.forward]]
listen = "127.0.0.1:{forward}"
to = "10.77.0.10:502"
[[bridges.modbus_tcp]]
name = "line1"
address = "127.0.0.1:{forward}"
[[bridges.modbus_tcp.points]]
name = "spindle_setpoint"
kind = "holding"
address = 0
type = "u16"
unit = "rpm"
poll_interval_ms = 200
[link]
broker_host = "127.0.0.1"
broker_port = 1
fleet_ca = "{ca}"
device_cert = "{cert}"
device_key = "{key}"
outbox = {{ dir = "outbox" }}
[status_page]
listen = "127.0.0.1:0"
password_file = "status-page/password.phc"
state_dir = "status-page"
"#,
        device = pki.device_id,
        ca = pki.fleet_ca.display(),
        cert = pki.device_cert.display(),
        key = pki.device_key.display(),
    );
    std::fs::write(state.join("warden.toml"), config).expect("config");
    std::fs::write(
        state.join("policy.toml"),
        "[[modbus]]\nbridge = \"line1\"\nunits = 1\nfunctions = [\"read_holding_registers\"]\naddresses = 0\nsources = [\"poll\"]\n",
    )
    .expect("policy");
    let hash = warden::status_page::auth::hash_password("privnet-check").expect("hash");
    warden::status_page::auth::write_password_hash(&state.join("status-page/password.phc"), &hash)
        .expect("password");

    let mut appliance = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &appliance_ns,
            env!("CARGO_BIN_EXE_warden"),
            "run",
            "--config",
        ])
        .arg(state.join("warden.toml"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("warden run");
    let mut status = serde_json::Value::Null;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["status", "--json", "--config"])
            .arg(state.join("warden.toml"))
            .output()
            .expect("warden status");
        if let Ok(now) = serde_json::from_slice::<serde_json::Value>(&output.stdout) {
            status = now;
            if !status["bridges"][0]["points"][0]["last"].is_null() {
                break;
            }
        }
    }
    let _ = appliance.kill();
    let _ = appliance.wait();
    stop.cancel();
    let last = &status["bridges"][0]["points"][0]["last"];
    assert_eq!(last["value"], 1450.0, "{status:#}");
    assert_eq!(
        status["bridges"][0]["address"],
        format!("127.0.0.1:{forward}")
    );
    // The namespace's kernel has no address on the equipment side and no route to it.
    let routes = std::process::Command::new("ip")
        .args(["-n", &appliance_ns, "route", "get", "10.77.0.10"])
        .output()
        .expect("ip route");
    assert!(
        !routes.status.success(),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );
}
