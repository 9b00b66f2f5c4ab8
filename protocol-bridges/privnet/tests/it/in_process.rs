//! Two embassy-net stacks in one process over a channel-driver cable (no root): the
//! appliance's port and simulated equipment.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_bridges::config::ModbusTcpBridgeConfig;
use warden_bridges::poller::Poller;
use warden_bridges::request_policy::AllowAll;
use warden_privnet::{PortDevice, PrivnetConfig, PrivnetHandle, frame_wire_pair};

use crate::equipment::{Equipment, address_of};

const PRESS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

fn port_config() -> PrivnetConfig {
    toml::from_str(
        r#"
interface = "warden-eq0"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"

[dhcp]
lease_secs = 600
[[dhcp.static_leases]]
mac = "02:00:00:00:00:10"
ip = "10.77.0.10"
name = "press-7"

[[forward]]
listen = "127.0.0.1:0"
to = "10.77.0.10:502"
"#,
    )
    .expect("parses")
}

fn start_port(wire: warden_privnet::FrameWire, shutdown: &CancellationToken) -> PrivnetHandle {
    let spec = port_config().validate("privnet").expect("valid");
    warden_privnet::start(spec, PortDevice::Wire(wire), shutdown.clone()).expect("starts")
}

#[tokio::test]
async fn dhcp_lease_then_modbus_polling_over_the_private_network() {
    let shutdown = CancellationToken::new();
    let (appliance_end, equipment_end) = frame_wire_pair();
    let port = start_port(appliance_end, &shutdown);
    let equipment = Equipment::start(PRESS, equipment_end, vec![215, 0xFFFE, 0x4120, 0x0000]);

    // The static lease, with no router: the equipment cannot leave the private network.
    let lease = tokio::task::spawn_blocking(move || {
        equipment
            .lease
            .recv_timeout(Duration::from_secs(30))
            .map(|lease| (lease, equipment))
    })
    .await
    .expect("joins")
    .expect("the equipment got a lease");
    let (config, _equipment) = lease;
    assert_eq!(address_of(&config), Ipv4Addr::new(10, 77, 0, 10));
    assert_eq!(config.address.prefix_len(), 24);
    assert_eq!(config.gateway, None);
    let counters = port.counters();
    assert!(
        counters.dhcp.offers >= 1 && counters.dhcp.acks >= 1,
        "{counters:?}"
    );

    // The Modbus TCP bridge's own poller, through the loopback forward, polls the
    // equipment at its leased address.
    let (listen, to) = port.forwards()[0];
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 10), 502));
    let bridge: ModbusTcpBridgeConfig = toml::from_str(&format!(
        r#"
name = "press"
address = "{listen}"
unit = 1
timeout_ms = 2000
[[points]]
name = "oil_temperature"
kind = "holding"
address = 0
type = "u16"
scale = 0.1
poll_interval_ms = 50
[[points]]
name = "offset"
kind = "holding"
address = 1
type = "i16"
poll_interval_ms = 50
[[points]]
name = "pressure"
kind = "holding"
address = 2
type = "f32"
poll_interval_ms = 50
"#
    ))
    .expect("bridge config");
    let (samples_tx, mut samples) = mpsc::channel(64);
    let poller = Poller::new(bridge, Box::new(AllowAll));
    tokio::spawn(poller.run(samples_tx, shutdown.clone()));
    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        let sample = tokio::time::timeout_at(deadline, samples.recv())
            .await
            .expect("samples in time")
            .expect("poller running");
        seen.insert(
            sample.point.clone(),
            sample.value.as_number().unwrap_or(f64::NAN),
        );
    }
    assert!((seen["oil_temperature"] - 21.5).abs() < 1e-9, "{seen:?}");
    assert_eq!(seen["offset"], -2.0);
    assert_eq!(seen["pressure"], 10.0); // 0x41200000
    assert!(port.counters().connections >= 1);
    shutdown.cancel();
}

#[tokio::test]
async fn sntp_queries_are_answered_with_the_appliance_clock() {
    let shutdown = CancellationToken::new();
    let (appliance_end, equipment_end) = frame_wire_pair();
    let port = start_port(appliance_end, &shutdown);
    let equipment = Equipment::start(PRESS, equipment_end, vec![0]);
    let equipment = tokio::task::spawn_blocking(move || {
        equipment
            .lease
            .recv_timeout(Duration::from_secs(30))
            .expect("lease");
        equipment
    })
    .await
    .expect("joins");
    let asked = SystemTime::now();
    let (reply, arrived) = equipment
        .sntp(SocketAddrV4::new(port.address(), 123))
        .await
        .expect("an SNTP reply");
    assert_eq!(reply[0] & 0x07, 4, "server mode");
    assert_eq!(reply[1], 3, "stratum");
    let transmit: [u8; 8] = reply[40..48].try_into().expect("8 bytes");
    let server_time = warden_privnet::sntp::from_ntp_timestamp(transmit);
    assert!(
        server_time >= asked - Duration::from_millis(5),
        "{server_time:?} before {asked:?}"
    );
    assert!(
        server_time <= arrived + Duration::from_millis(5),
        "{server_time:?} after {arrived:?}"
    );
    assert_eq!(port.counters().sntp_answers, 1);
    shutdown.cancel();
}

#[tokio::test]
async fn equipment_without_a_lease_gets_no_address() {
    let shutdown = CancellationToken::new();
    let (appliance_end, equipment_end) = frame_wire_pair();
    let port = start_port(appliance_end, &shutdown);
    let equipment = Equipment::start(STRANGER, equipment_end, vec![0]);
    let lease =
        tokio::task::spawn_blocking(move || equipment.lease.recv_timeout(Duration::from_secs(3)))
            .await
            .expect("joins");
    assert!(lease.is_err(), "a stranger got {lease:?}");
    // On a loaded machine the stranger's first DISCOVER may not have been handled yet
    // when its 3 s wait ends: wait (bounded) until the port has seen it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut counters = port.counters();
    while counters.dhcp.unknown_clients == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counters = port.counters();
    }
    assert!(counters.dhcp.unknown_clients >= 1, "{counters:?}");
    assert_eq!(counters.dhcp.offers, 0);
    // And nothing answers for it: connecting to an unleased address fails.
    let error = port
        .connect(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 66), 502))
        .await
        .expect_err("nobody there");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::ConnectionRefused
        ),
        "{error}"
    );
    shutdown.cancel();
}
