//! The bridge against Bumble: two virtual controllers, the emulated sensor on one, the
//! bridge's own host stack (trouble-host over H4/TCP) on the other. No mock at the
//! GATT level: discovery, reads, notifications and writes cross Bumble's link layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_ble::{BleBridgeConfig, BleBridgeHandle, BlePolicyGate, LinkState};
use warden_bridges::bridge::WriteOutcome;
use warden_bridges::point::WriteValue;
use warden_bridges::request_policy::RequestSource;
use warden_bridges::sample::Sample;

use crate::bumble::{Controllers, Sensor};

const NEEDS: &str = "needs bumble (pip install bumble)";
const SENSOR: &str = "F0:F1:F2:F3:F4:F5";

const POLICY: &str = r#"
[[ble]]
bridge = "greenhouse"
device = "F0:F1:F2:F3:F4:F5"
service = "181A"
characteristics = ["2A6E", "2A6F", "2A6D"]
operations = ["read", "notify", "indicate"]
sources = ["poll"]

[[ble]]
bridge = "greenhouse"
device = "F0:F1:F2:F3:F4:F5"
service = "5741524E-0000-4000-8000-00805F9B34FB"
characteristics = ["5741524E-0001-4000-8000-00805F9B34FB"]
operations = ["write"]
sources = ["cloud"]
"#;

fn bridge_config(hci_port: u16, sensor: &str) -> String {
    format!(
        r#"
name = "greenhouse"
hci = "tcp:127.0.0.1:{hci_port}"
{sensor}
reconnect_delay_ms = 200
max_reconnect_delay_ms = 1000

[[points]]
name = "temperature"
service = "181A"
characteristic = "2A6E"
access = "notify"
type = "i16"
scale = 0.01
unit = "°C"

[[points]]
name = "humidity"
service = "181A"
characteristic = "2A6F"
access = "read"
type = "u16"
scale = 0.01
unit = "%"
poll_interval_ms = 300

[[points]]
name = "pressure"
service = "181A"
characteristic = "2A6D"
access = "indicate"
type = "u32"
scale = 0.1
unit = "Pa"

[[points]]
name = "setpoint"
service = "5741524E-0000-4000-8000-00805F9B34FB"
characteristic = "5741524E-0001-4000-8000-00805F9B34FB"
access = "none"
type = "u16"
"#
    )
}

struct Running {
    bridge: BleBridgeHandle,
    samples: mpsc::Receiver<Sample>,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start_bridge(hci_port: u16, sensor: &str) -> Running {
    let spec = BleBridgeConfig::from_toml(&bridge_config(hci_port, sensor), "test.toml")
        .expect("parses")
        .validate("ble[0]")
        .expect("valid");
    let policy = warden_policy::compile(POLICY, "policy.toml").expect("policy compiles");
    let gate = BlePolicyGate::new(Arc::new(policy.policy));
    let (sender, samples) = mpsc::channel(256);
    let shutdown = CancellationToken::new();
    let bridge = warden_ble::start(spec, Box::new(gate), sender, shutdown.clone()).expect("starts");
    Running {
        bridge,
        samples,
        shutdown,
    }
}

/// Collects samples of `point` until `enough` says so or the time is up.
async fn samples_of(
    running: &mut Running,
    point: &str,
    timeout: Duration,
    enough: impl Fn(&[f64]) -> bool,
) -> Vec<f64> {
    let deadline = Instant::now() + timeout;
    let mut values = Vec::new();
    while !enough(&values) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, running.samples.recv()).await {
            Ok(Some(sample)) if sample.point == point => {
                assert_eq!(sample.bridge, "greenhouse");
                values.push(sample.value.as_number().unwrap_or(f64::NAN));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    values
}

async fn wait_until(
    running: &Running,
    timeout: Duration,
    what: &str,
    done: impl Fn(&warden_ble::BleHealth) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let health = running.bridge.health();
        if done(&health) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test]
#[ignore = "needs bumble (pip install bumble)"]
async fn reads_and_subscribes_to_the_emulated_sensor() {
    let _ = NEEDS;
    let controllers = Controllers::start();
    let sensor = Sensor::start(
        &controllers,
        &["--temperature", "21.5", "--humidity", "45.5"],
    );
    let mut running = start_bridge(controllers.bridge_port, &format!("address = \"{SENSOR}\""));

    // Notifications: the sensor adds 0.01 °C every 200 ms, starting at 21.5.
    let temperatures = samples_of(&mut running, "temperature", Duration::from_secs(30), |v| {
        v.len() >= 6
    })
    .await;
    assert!(
        temperatures.len() >= 6,
        "too few notifications: {temperatures:?}"
    );
    assert!(
        temperatures[0] >= 21.5 - 1e-9 && temperatures[0] < 23.0,
        "{temperatures:?}"
    );
    // The read after subscribing may repeat the first notified value; after that,
    // every notification is the sensor's next scripted step.
    for pair in temperatures.windows(2) {
        let step = pair[1] - pair[0];
        assert!(
            step > -1e-9 && step < 0.1 + 1e-9,
            "not rising by scripted steps: {temperatures:?}"
        );
    }
    assert!(temperatures[5] > temperatures[1], "{temperatures:?}");
    // The notified values are the sensor's own (it logs every one it sends).
    let last = *temperatures.last().expect("some");
    let notified = sensor.events.wait_for(Duration::from_secs(5), |e| {
        e["event"] == "notified" && close(e["value"].as_f64().unwrap_or(0.0) / 100.0, last)
    });
    assert!(
        notified.is_some(),
        "{last} was never notified by the sensor: {temperatures:?}"
    );

    // Indications: 1 hPa more per period; the sensor sends the next one only after the
    // bridge confirmed the last, so several in a row prove the confirmations.
    let pressures = samples_of(&mut running, "pressure", Duration::from_secs(20), |v| {
        v.len() >= 4
    })
    .await;
    assert!(pressures.len() >= 4, "too few indications: {pressures:?}");
    for pair in pressures.windows(2) {
        assert!(
            close(pair[1] - pair[0], 100.0) || close(pair[1], pair[0]),
            "not rising by 100 Pa: {pressures:?}"
        );
    }
    assert!(close(pressures[3] - pressures[1], 200.0), "{pressures:?}");
    assert!(
        sensor
            .events
            .wait_for(Duration::from_secs(5), |e| e["event"] == "indicated"
                && close(e["value"].as_f64().unwrap_or(0.0) / 10.0, pressures[2]))
            .is_some(),
        "the sensor never saw the confirmation of {}",
        pressures[2]
    );

    // Reads: the constant humidity, periodically.
    let humidity = samples_of(&mut running, "humidity", Duration::from_secs(10), |v| {
        !v.is_empty()
    })
    .await;
    assert_eq!(humidity.len(), 1);
    assert!(close(humidity[0], 45.5), "{humidity:?}");
    let health = running.bridge.health();
    assert_eq!(health.state, LinkState::Connected);
    assert!(health.notifications >= 6 && health.reads >= 2, "{health:?}");
    assert_eq!(health.connections, 1);
    assert_eq!(health.disconnections, 0, "{health:?}");
    assert_eq!(health.last_error, None);
    assert!(health.missing_points.is_empty(), "{health:?}");
    assert!(sensor.events.named("connected").len() == 1);
    sensor.stop();
}

#[tokio::test]
#[ignore = "needs bumble (pip install bumble)"]
async fn survives_the_sensor_going_away_and_coming_back() {
    let controllers = Controllers::start();
    let sensor = Sensor::start(&controllers, &["--temperature", "10.0"]);
    // Found by its advertised name this time.
    let mut running = start_bridge(controllers.bridge_port, "device_name = \"warden-sensor\"");
    let before = samples_of(&mut running, "temperature", Duration::from_secs(30), |v| {
        v.len() >= 2
    })
    .await;
    assert!(
        before.len() >= 2 && before.iter().all(|t| *t < 20.0),
        "{before:?}"
    );
    assert_eq!(
        running
            .bridge
            .health()
            .sensor
            .map(|s| s.to_string())
            .as_deref(),
        Some(SENSOR)
    );

    sensor.stop();
    wait_until(
        &running,
        Duration::from_secs(20),
        "the disconnection",
        |h| h.disconnections >= 1 && h.state != LinkState::Connected,
    )
    .await;
    let outcome = running
        .bridge
        .write("setpoint", WriteValue::Number(7.0), RequestSource::Cloud)
        .await;
    assert!(
        matches!(outcome, WriteOutcome::Failed { .. }),
        "{outcome:?}"
    );
    while running.samples.try_recv().is_ok() {}

    // The sensor comes back (at a warmer temperature): the bridge reconnects by itself.
    let sensor = Sensor::start(&controllers, &["--temperature", "30.0"]);
    let after = samples_of(&mut running, "temperature", Duration::from_secs(30), |v| {
        v.iter().filter(|t| **t >= 30.0).count() >= 2
    })
    .await;
    assert!(
        after.iter().filter(|t| **t >= 30.0).count() >= 2,
        "no values after reconnecting: {after:?}"
    );
    let health = running.bridge.health();
    assert_eq!(health.connections, 2, "{health:?}");
    assert_eq!(health.state, LinkState::Connected);
    sensor.stop();
}

#[tokio::test]
#[ignore = "needs bumble (pip install bumble)"]
async fn a_denied_write_never_reaches_the_sensor() {
    let controllers = Controllers::start();
    let sensor = Sensor::start(&controllers, &[]);
    let mut running = start_bridge(controllers.bridge_port, &format!("address = \"{SENSOR}\""));
    samples_of(&mut running, "temperature", Duration::from_secs(30), |v| {
        !v.is_empty()
    })
    .await;

    // The policy lets only the fleet (cloud) write the setpoint.
    let denied = running
        .bridge
        .write("setpoint", WriteValue::Number(999.0), RequestSource::Facade)
        .await;
    assert!(
        matches!(&denied, WriteOutcome::Denied { reason } if reason.contains("write")),
        "{denied:?}"
    );
    // A write the policy allows is seen by the sensor: the denied one would have been too.
    let allowed = running
        .bridge
        .write("setpoint", WriteValue::Number(258.0), RequestSource::Cloud)
        .await;
    assert_eq!(allowed, WriteOutcome::Written);
    let write = sensor
        .events
        .wait_for(Duration::from_secs(5), |e| e["event"] == "write")
        .expect("the allowed write reached the sensor");
    assert_eq!(write["value"], "0201"); // 258 little endian
    // Give a stray write time to show up, then check there was exactly one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = sensor.events.named("write");
    assert_eq!(writes.len(), 1, "{writes:?}");
    let health = running.bridge.health();
    assert_eq!(health.writes, 1);
    assert!(health.denied >= 1, "{health:?}");
    sensor.stop();
}
