//! The bridge with no controller behind its transport: it keeps retrying and says why.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_ble::{BleBridgeConfig, LinkState};
use warden_bridges::bridge::WriteOutcome;
use warden_bridges::point::WriteValue;
use warden_bridges::request_policy::RequestSource;

struct DenyAll;

impl warden_ble::BleRequestPolicy for DenyAll {
    fn check(
        &mut self,
        _request: &warden_ble::BleGatedRequest<'_>,
    ) -> Result<(), warden_ble::BleDenial> {
        Err(warden_ble::BleDenial {
            reason: "test".into(),
        })
    }
}

#[tokio::test]
async fn a_missing_controller_is_reported_and_writes_fail_fast() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let text = format!(
        r#"
name = "greenhouse"
hci = "tcp:127.0.0.1:{port}"
address = "F0:F1:F2:F3:F4:F5"
reconnect_delay_ms = 50
max_reconnect_delay_ms = 200
[[points]]
name = "setpoint"
service = "5741524E-0000-4000-8000-00805F9B34FB"
characteristic = "5741524E-0001-4000-8000-00805F9B34FB"
access = "none"
type = "u16"
"#
    );
    let spec = BleBridgeConfig::from_toml(&text, "test.toml")
        .expect("parses")
        .validate("ble[0]")
        .expect("valid");
    let (samples, _receiver) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let bridge =
        warden_ble::start(spec, Box::new(DenyAll), samples, shutdown.clone()).expect("starts");
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = bridge.health();
        if health.last_error.is_some() {
            break health;
        }
        assert!(Instant::now() < deadline, "no error reported: {health:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = health.last_error.expect("checked");
    assert!(error.contains(&format!("tcp:127.0.0.1:{port}")), "{error}");
    assert_ne!(health.state, LinkState::Connected);

    let started = Instant::now();
    let outcome = bridge
        .write("setpoint", WriteValue::Number(5.0), RequestSource::Cloud)
        .await;
    assert!(
        matches!(&outcome, WriteOutcome::Failed { error } if error.contains("not connected")),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let unknown = bridge
        .write("nope", WriteValue::Number(5.0), RequestSource::Cloud)
        .await;
    assert!(matches!(&unknown, WriteOutcome::Failed { error } if error.contains("no point")));
    shutdown.cancel();
}
