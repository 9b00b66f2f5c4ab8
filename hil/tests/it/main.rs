//! End-to-end scenarios of hil's own binaries against a real fleet.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;

mod certificate_renewal;
mod control_durability;
mod fleet_cluster;
mod fleet_dashboard;
mod offline_update;
mod quickstart;
mod revocation_list;
mod rollout;
mod tour;

struct Fleet {
    shutdown: CancellationToken,
    running: warden_fleet::RunningFleet,
}

async fn start_fleet(dir: &Path, pki: &DemoPki, mqtt_port: u16) -> Fleet {
    let config = pki.fleet_config(dir, 0, mqtt_port);
    let shutdown = CancellationToken::new();
    let running = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet starts");
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
    device
        .kill()
        .await
        .expect("SIGKILL device while the broker is down");
    device = loadgen(&pki, port, dir.path(), COUNT);
    pause().await;
    let fleet = start_fleet(dir.path(), &pki, port).await;

    let finished = tokio::time::timeout(Duration::from_secs(90), device.wait())
        .await
        .expect("the device acknowledged everything within 90 s")
        .expect("wait");
    assert!(finished.success(), "loadgen exited with {finished}");
    fleet.stop().await;

    let store = warden_fleet::store::Store::open(&format!(
        "sqlite://{}",
        dir.path().join("fleet.db").display()
    ))
    .await
    .expect("store");
    let readings = store
        .telemetry(&pki.device_id, Some("load/n"), 100_000)
        .await
        .expect("query");
    store.close().await;
    let mut values: Vec<u64> = readings
        .iter()
        .map(|r| r.number().expect("a numeric reading") as u64)
        .collect();
    values.sort_unstable();
    let expected: Vec<u64> = (0..COUNT).collect();
    assert_eq!(
        values.len(),
        expected.len(),
        "count of readings at the fleet (duplicates or losses)"
    );
    assert_eq!(values, expected, "readings at the fleet");
}

mod real_broker {
    //! The link against brokers with real mutual TLS: the embedded one and Mosquitto.

    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    use tokio_util::sync::CancellationToken;
    use warden_hil::demo_pki::DemoPki;
    use warden_link::outbox::OutboxConfig;
    use warden_link::{LinkAgent, LinkConfig};
    use warden_test_support::mosquitto;
    use warden_test_support::ports::free_port;
    use warden_wire::tls::{ClientIdentity, client_config};
    use warden_wire::topics::Reading;
    use warden_wire::topics::{Ack, TelemetryBatch, ack_topic, telemetry_topic};

    fn client(
        pki: &DemoPki,
        id: &str,
        cert: &Path,
        key: &Path,
        port: u16,
    ) -> (AsyncClient, rumqttc::EventLoop) {
        let identity = ClientIdentity::from_pem_files(cert, key).expect("identity");
        let tls = client_config(&pki.fleet_ca, identity).expect("tls");
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        AsyncClient::new(options, 64)
    }

    async fn connect(eventloop: &mut rumqttc::EventLoop) -> Result<(), String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
                Err(_) => return Err("timeout".into()),
                Ok(Err(error)) => return Err(error.to_string()),
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                    if ack.code == rumqttc::ConnectReturnCode::Success =>
                {
                    return Ok(());
                }
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    return Err(format!("{:?}", ack.code));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn an_expired_device_certificate_is_refused_by_the_embedded_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
        let fleet = super::start_fleet(dir.path(), &pki, 0).await;
        let port = fleet.running.mqtt_address.port();
        let (_c, mut good) = client(
            &pki,
            &pki.device_id,
            &pki.device_cert,
            &pki.device_key,
            port,
        );
        connect(&mut good)
            .await
            .expect("the valid certificate connects");
        let (_c, mut expired) = client(
            &pki,
            &pki.device_id,
            &pki.expired_device_cert,
            &pki.expired_device_key,
            port,
        );
        let error = connect(&mut expired)
            .await
            .expect_err("an expired certificate must be refused");
        assert!(!error.is_empty());
        fleet.stop().await;
    }

    /// Mosquitto from the fleet's config template on `port` (warden-test-support's).
    fn start_mosquitto(dir: &Path, pki: &DemoPki, port: u16) -> mosquitto::Mosquitto {
        let files = mosquitto::BrokerPki {
            client_ca: pki.manufacturer_ca.clone(),
            server_cert: pki.server_cert.clone(),
            server_key: pki.server_key.clone(),
        };
        mosquitto::start(dir, &files, port)
    }

    /// The device link through Mosquitto with `require_certificate` and per-device ACLs:
    /// readings arrive and are acknowledged by a fleet-side client; a publish outside
    /// the device's subtree never reaches anyone; an expired certificate is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs mosquitto (Debian package; .ci/run installs it)"]
    async fn the_link_delivers_through_mosquitto_with_mutual_tls_and_acls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
        let port = free_port();
        let _broker = start_mosquitto(dir.path(), &pki, port);

        // The fleet side: stores nothing, acknowledges every batch, records readings.
        let (fleet, mut fleet_loop) = client(
            &pki,
            "fleet",
            &pki.fleet_client_cert,
            &pki.fleet_client_key,
            port,
        );
        connect(&mut fleet_loop).await.expect("fleet connects");
        fleet
            .subscribe("warden/v1/devices/+/telemetry", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, f64)>();
        let fleet_task = tokio::spawn(async move {
            while let Ok(event) = fleet_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let device = warden_wire::topics::device_of_topic(&publish.topic)
                        .unwrap_or_default()
                        .to_owned();
                    if let Ok(batch) = TelemetryBatch::decode(&publish.payload) {
                        for reading in &batch.readings {
                            let _ = seen_tx.send((
                                device.clone(),
                                reading.value.as_number().unwrap_or(f64::NAN),
                            ));
                        }
                        let ack = Ack::encode(&batch.stream, batch.epoch, batch.seq);
                        let _ = fleet.try_publish(ack_topic(&device), QoS::AtLeastOnce, false, ack);
                    }
                }
            }
        });

        let config = LinkConfig {
            broker_host: "127.0.0.1".into(),
            broker_port: port,
            fleet_ca: pki.fleet_ca.clone(),
            device_cert: pki.device_cert.clone(),
            device_key: Some(pki.device_key.clone()),
            pluton_socket: None,
            batch_interval_ms: 50,
            max_send_per_second: 1000,
            outbox: OutboxConfig::in_dir(dir.path().join("outbox")),
        };
        let agent = LinkAgent::new(pki.device_id.clone(), config);
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let (readings, readings_rx) = tokio::sync::mpsc::channel(64);
        let link = tokio::spawn(agent.run(readings_rx, shutdown.clone()));
        for value in 0..50 {
            readings
                .send(vec![Reading::number(
                    "t/n".into(),
                    f64::from(value),
                    String::new(),
                    1,
                )])
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut values = Vec::new();
        while values.len() < 50 {
            let (device, value) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .expect("readings arrive")
                .expect("open");
            assert_eq!(device, pki.device_id);
            if !values.contains(&value) {
                values.push(value);
            }
        }
        for _ in 0..100 {
            if status.lock().expect("status").outbox.depth == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            status.lock().expect("status").outbox.depth,
            0,
            "every batch was acknowledged through mosquitto"
        );

        // ACL: the device may not publish under another device's ID.
        let (device, mut device_loop) = client(
            &pki,
            &pki.device_id,
            &pki.device_cert,
            &pki.device_key,
            port,
        );
        connect(&mut device_loop).await.expect("device connects");
        device
            .publish(
                telemetry_topic("wd-someone-else"),
                QoS::AtLeastOnce,
                false,
                b"{}".to_vec(),
            )
            .await
            .expect("queue");
        let poll = tokio::spawn(async move { while device_loop.poll().await.is_ok() {} });
        let leaked = tokio::time::timeout(Duration::from_secs(1), seen.recv()).await;
        assert!(
            leaked.is_err(),
            "a publish outside the device's subtree reached the fleet: {leaked:?}"
        );
        poll.abort();

        // An expired certificate is refused by Mosquitto too.
        let (_c, mut expired) = client(
            &pki,
            &pki.device_id,
            &pki.expired_device_cert,
            &pki.expired_device_key,
            port,
        );
        assert!(
            connect(&mut expired).await.is_err(),
            "mosquitto accepted an expired certificate"
        );

        shutdown.cancel();
        link.await.expect("join").expect("link ran");
        fleet_task.abort();
    }
}
