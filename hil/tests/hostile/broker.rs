//! Attacks on the fleet's MQTT broker and device identity (issue #22 items 1, 6, 7).
//!
//! Each case starts a real `warden-fleet` (the load tools' child process on SQLite,
//! `warden_fleet::loadtest`), registers its devices through the API and talks raw MQTT
//! over mutual TLS to the broker, so malformed and abusive packets reach it as sent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::tokio_rustls::client::TlsStream;
use rumqttc::tokio_rustls::rustls::pki_types::ServerName;
use rumqttc::{
    ConnectReturnCode, Packet, Publish, QoS, Subscribe, SubscribeFilter, SubscribeReasonCode,
    Unsubscribe,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use warden_fleet::loadtest::{Api, FleetProcess, Pki, TOKEN};
use warden_wire::fleet_api::{EnrollmentRequest, PRODUCTS_PATH, ProductRequest};
use warden_wire::tls::{ClientIdentity, client_config};

use super::tally::{Row, record};

/// The product the fleet's own devices are registered in.
const PRODUCT: &str = "press";

/// Largest packet the test client reads.
const MAX_PACKET: usize = 1024 * 1024;

/// How long any single answer may take.
const ANSWER: Duration = Duration::from_secs(5);

/// `warden-fleet` of this workspace build (beside this test's `deps/`).
fn fleet_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    dir.join("warden-fleet")
}

/// A fleet with product [`PRODUCT`] (the PKI's maker CA) and `devices` registered.
struct Fleet {
    _dir: tempfile::TempDir,
    pki: Pki,
    process: FleetProcess,
    api: Api,
}

impl Fleet {
    async fn start(devices: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::create(dir.path()).expect("pki");
        let process = FleetProcess::start(&fleet_binary(), &pki, "")
            .await
            .expect("warden-fleet starts (build it: cargo build -p warden-fleet --bins)");
        let api = Api::new(&process.http);
        api.create_product(PRODUCT, &pki).await.expect("product");
        let ids: Vec<String> = devices.iter().map(|d| (*d).to_owned()).collect();
        api.register_devices(&pki, PRODUCT, &ids)
            .await
            .expect("registered");
        Self {
            _dir: dir,
            pki,
            process,
            api,
        }
    }

    fn broker(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.process.mqtt_port))
    }
}

/// TCP to the broker from `local` (another loopback address stands for another host).
async fn tcp_from(local: IpAddr, broker: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(broker).await
}

/// A raw MQTT client over mutual TLS.
struct Client {
    stream: TlsStream<TcpStream>,
    inbound: BytesMut,
}

impl Client {
    /// TLS with the certificate `{cert_dir}/{device}.pem` (trusting `fleet`'s CA).
    async fn tls(fleet: &Fleet, cert_dir: &Path, device: &str) -> std::io::Result<Self> {
        let identity = ClientIdentity::from_pem_files(
            &cert_dir.join(format!("{device}.pem")),
            &cert_dir.join(format!("{device}.key")),
        )
        .map_err(std::io::Error::other)?;
        let config = client_config(&fleet.pki.dir.join("fleet-ca.pem"), identity)
            .map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(fleet.broker()).await?;
        let name = ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into());
        let stream = tokio::time::timeout(
            ANSWER,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("tls handshake timed out"))??;
        Ok(Self {
            stream,
            inbound: BytesMut::new(),
        })
    }

    /// TLS and CONNECT as `device`; the CONNACK's code (an error when the broker
    /// closed the connection instead).
    async fn connect(
        fleet: &Fleet,
        cert_dir: &Path,
        device: &str,
    ) -> std::io::Result<(Self, ConnectReturnCode)> {
        let mut client = Self::tls(fleet, cert_dir, device).await?;
        client
            .send(Packet::Connect(rumqttc::Connect::new(device)))
            .await?;
        match client.receive(ANSWER).await? {
            Some(Packet::ConnAck(ack)) => Ok((client, ack.code)),
            other => Err(std::io::Error::other(format!("no CONNACK: {other:?}"))),
        }
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        packet
            .write(&mut buf, MAX_PACKET)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        self.stream.write_all(&buf).await?;
        self.stream.flush().await
    }

    /// The next packet within `wait` (`None` when none came).
    async fn receive(&mut self, wait: Duration) -> std::io::Result<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Packet::read(&mut self.inbound, MAX_PACKET) {
                Ok(packet) => return Ok(Some(packet)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.inbound)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn subscribe(&mut self, pkid: u16, filters: &[String]) -> Vec<SubscribeReasonCode> {
        let mut subscribe = Subscribe::new_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce)),
        );
        subscribe.pkid = pkid;
        self.send(Packet::Subscribe(subscribe)).await.expect("send");
        loop {
            match self.receive(ANSWER).await.expect("read") {
                Some(Packet::SubAck(ack)) if ack.pkid == pkid => return ack.return_codes,
                Some(_) => {}
                None => panic!("no SUBACK within {ANSWER:?}"),
            }
        }
    }

    async fn publish(&mut self, topic: &str) {
        self.send(Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            b"x".to_vec(),
        )))
        .await
        .expect("publish");
    }

    /// Publishes on `topic` and counts the copies of it delivered back before the
    /// answer to a ping (the broker writes in order, so all copies come before it).
    async fn echo(&mut self, topic: &str) -> usize {
        self.publish(topic).await;
        self.send(Packet::PingReq).await.expect("ping");
        let mut copies = 0;
        loop {
            match self.receive(ANSWER).await.expect("read") {
                Some(Packet::Publish(p)) if p.topic == topic => copies += 1,
                Some(Packet::PingResp) => return copies,
                Some(_) => {}
                None => panic!("no PINGRESP within {ANSWER:?}"),
            }
        }
    }
}

fn echo_topic(device: &str, leaf: &str) -> String {
    format!("warden/v1/devices/{device}/echo/{leaf}")
}

fn successes(codes: &[SubscribeReasonCode]) -> usize {
    codes
        .iter()
        .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .count()
}

fn verdict(ok: bool, why: &str) -> String {
    if ok {
        "pass".into()
    } else {
        format!("FAIL: {why}")
    }
}

/// CPU seconds the fleet used while `work` ran.
async fn cpu_during<F: std::future::Future>(fleet: &Fleet, work: F) -> (F::Output, f64) {
    let before = fleet.process.usage().cpu_seconds;
    let output = work.await;
    (output, fleet.process.usage().cpu_seconds - before)
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn descriptor_exhaustion_does_not_spin_the_broker_accept_loop() {
    let fleet = Fleet::start(&["wd-1"]).await;
    let pid = fleet.process.pid.to_string();
    // A soft limit of 128 descriptors: the flood below exhausts it.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=128:"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(limited, "prlimit could not lower the fleet's RLIMIT_NOFILE");
    let attacker = IpAddr::from([127, 0, 0, 2]);
    let broker = fleet.broker();
    let (held, cpu) = cpu_during(&fleet, async {
        let mut held = Vec::new();
        for _ in 0..400 {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_millis(200), tcp_from(attacker, broker)).await
            {
                held.push(stream);
            }
        }
        // Hold them: with no backoff, the accept loop would spin on EMFILE here.
        tokio::time::sleep(Duration::from_secs(3)).await;
        held
    })
    .await;
    let opened = held.len();
    drop(held);
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:"])
        .status();
    // Once the flood is gone the broker accepts again (after at most its 1 s backoff).
    let started = Instant::now();
    let mut recovered = None;
    while started.elapsed() < Duration::from_secs(10) && recovered.is_none() {
        if let Ok((_client, ConnectReturnCode::Success)) =
            Client::connect(&fleet, &fleet.pki.dir, "wd-1").await
        {
            recovered = Some(started.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let cpu_share = cpu / 3.5;
    let ok = cpu_share < 0.25 && recovered.is_some();
    record(Row {
        attack: "1 fd exhaustion: broker accept loop (RLIMIT_NOFILE 128, 400 connections)".into(),
        outcome: format!(
            "{opened} connections opened; fleet CPU {:.0} % of a core while held; device \
             connected again {}",
            cpu_share * 100.0,
            recovered.map_or("never".into(), |d| format!(
                "after {:.1} s",
                d.as_secs_f64()
            ))
        ),
        bound: "CPU < 25 % of a core (no accept spin); device back within 10 s".into(),
        result: verdict(ok, "accept loop spun or never recovered"),
    });
    assert!(ok, "cpu {cpu_share:.2} of a core, recovered {recovered:?}");
    fleet.process.stop().await;
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn silent_connections_from_one_address_neither_lock_out_devices_nor_stay() {
    let fleet = Fleet::start(&["wd-1"]).await;
    let attacker = IpAddr::from([127, 0, 0, 2]);
    let mut silent = Vec::new();
    for _ in 0..600 {
        if let Ok(stream) = tcp_from(attacker, fleet.broker()).await {
            silent.push(stream);
        }
    }
    // A device from another address connects while the attacker holds its slots.
    let started = Instant::now();
    let connected = Client::connect(&fleet, &fleet.pki.dir, "wd-1").await;
    let device_in = started.elapsed();
    let connected = connected.map(|(_, code)| code);
    let device_ok = matches!(connected, Ok(ConnectReturnCode::Success));
    // Every silent connection is closed by the broker: the ones beyond the address's
    // pending limit at once, the others at the TLS handshake timeout (10 s).
    let deadline = Instant::now() + Duration::from_secs(14);
    let mut closed = 0;
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let wait = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(wait, stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    let ok = device_ok && device_in < ANSWER && closed == silent.len();
    record(Row {
        attack: "2 slowloris: 600 silent TCP connections to the broker from one address".into(),
        outcome: format!(
            "device from another address connected in {:.2} s; {closed} of {} silent \
             connections closed by the broker within 14 s",
            device_in.as_secs_f64(),
            silent.len()
        ),
        bound: "device connects < 5 s; all silent closed ≤ TLS timeout (10 s) + 4 s".into(),
        result: verdict(ok, "device locked out or silent connections kept"),
    });
    assert!(
        ok,
        "device {connected:?} in {device_in:?}, closed {closed}/{}",
        silent.len()
    );
    fleet.process.stop().await;
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn unsubscribe_is_real_and_subscriptions_are_validated_bounded_and_deduplicated() {
    let fleet = Fleet::start(&["wd-1"]).await;
    let (mut device, code) = Client::connect(&fleet, &fleet.pki.dir, "wd-1")
        .await
        .expect("connects");
    assert_eq!(code, ConnectReturnCode::Success);
    let all_echo = echo_topic("wd-1", "#");

    // UNSUBSCRIBE: acknowledged, and delivery stops.
    let subscribed = device.subscribe(1, std::slice::from_ref(&all_echo)).await;
    let before = device.echo(&echo_topic("wd-1", "a")).await;
    let mut unsubscribe = Unsubscribe::new(all_echo.clone());
    unsubscribe.pkid = 2;
    device
        .send(Packet::Unsubscribe(unsubscribe))
        .await
        .expect("send");
    let unsuback = matches!(
        device.receive(ANSWER).await.expect("read"),
        Some(Packet::UnsubAck(ack)) if ack.pkid == 2
    );
    let after = device.echo(&echo_topic("wd-1", "a")).await;
    let ok = successes(&subscribed) == 1 && before == 1 && unsuback && after == 0;
    record(Row {
        attack: "6 broker: UNSUBSCRIBE".into(),
        outcome: format!(
            "UNSUBACK {}; copies before {before}, after {after}",
            if unsuback { "received" } else { "missing" }
        ),
        bound: "UNSUBACK with the packet id; no delivery after it".into(),
        result: verdict(ok, "unsubscribe is not real"),
    });
    assert!(ok, "before {before}, unsuback {unsuback}, after {after}");

    // Invalid filters: every one refused with the failure code.
    let invalid: Vec<String> = [
        "warden/v1/devices/wd-1/#/x",
        "warden/v1/devices/wd-1/a+",
        "warden/v1/devices/wd-1/x#",
        "warden/v1/devices/wd-1/\0",
        "",
        "#",
        "warden/v1/devices/+/telemetry",
    ]
    .iter()
    .map(|f| (*f).to_owned())
    .chain([format!("warden/v1/devices/wd-1/{}", "a".repeat(300))])
    .collect();
    let codes = device.subscribe(3, &invalid).await;
    let refused = codes
        .iter()
        .filter(|c| **c == SubscribeReasonCode::Failure)
        .count();
    let ok = refused == invalid.len();
    record(Row {
        attack: "6 broker: invalid topic filters".into(),
        outcome: format!("{refused} of {} refused with SUBACK failure", invalid.len()),
        bound: "all refused (misplaced #/+, NUL, empty, > 256 bytes, other devices)".into(),
        result: verdict(ok, "an invalid filter was accepted"),
    });
    assert!(ok, "{codes:?}");

    // 2,000 distinct filters: the session keeps its limit, routing stays fast.
    let mut accepted = 0;
    for batch in 0..20u16 {
        let filters: Vec<String> = (0..100)
            .map(|i| echo_topic("wd-1", &format!("f{batch}-{i}")))
            .collect();
        accepted += successes(&device.subscribe(10 + batch, &filters).await);
    }
    let rss_mib = fleet.process.usage().rss_kib as f64 / 1024.0;
    let started = Instant::now();
    let copies = device.echo(&echo_topic("wd-1", "f0-0")).await;
    let routed = started.elapsed();
    let ok = accepted == warden_fleet::broker::MAX_SUBSCRIPTIONS_PER_SESSION
        && copies == 1
        && routed < Duration::from_millis(500);
    record(Row {
        attack: "6 broker: 2,000 SUBSCRIBEs on one session".into(),
        outcome: format!(
            "{accepted} accepted; a routed publish answered in {:.1} ms; fleet RSS {rss_mib:.0} MiB",
            routed.as_secs_f64() * 1000.0
        ),
        bound: format!(
            "≤ {} filters per session; publish round trip < 500 ms",
            warden_fleet::broker::MAX_SUBSCRIPTIONS_PER_SESSION
        ),
        result: verdict(ok, "subscriptions unbounded"),
    });
    assert!(
        ok,
        "accepted {accepted}, copies {copies}, routed in {routed:?}"
    );
    fleet.process.stop().await;
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn the_same_filter_many_times_delivers_one_copy() {
    let fleet = Fleet::start(&["wd-1"]).await;
    let (mut device, _) = Client::connect(&fleet, &fleet.pki.dir, "wd-1")
        .await
        .expect("connects");
    let filter = echo_topic("wd-1", "#");
    let mut accepted = 0;
    for batch in 0..10u16 {
        accepted += successes(
            &device
                .subscribe(batch + 1, &vec![filter.clone(); 100])
                .await,
        );
    }
    // An overlapping filter too.
    device.subscribe(20, &[echo_topic("wd-1", "a")]).await;
    let copies = device.echo(&echo_topic("wd-1", "a")).await;
    let ok = copies == 1;
    record(Row {
        attack: "6 broker: the same filter 1,000× (and an overlapping one)".into(),
        outcome: format!("{accepted} SUBACK successes; {copies} copy per publish"),
        bound: "one delivery per message per session".into(),
        result: verdict(ok, "duplicate deliveries"),
    });
    assert!(ok, "{copies} copies");
    fleet.process.stop().await;
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn a_bare_tls_handshake_with_a_devices_certificate_leaves_its_session_alone() {
    let fleet = Fleet::start(&["wd-1"]).await;
    let (mut device, _) = Client::connect(&fleet, &fleet.pki.dir, "wd-1")
        .await
        .expect("connects");
    device.subscribe(1, &[echo_topic("wd-1", "#")]).await;
    // The same certificate, a completed TLS handshake, no CONNECT.
    let bare = Client::tls(&fleet, &fleet.pki.dir, "wd-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let copies = device.echo(&echo_topic("wd-1", "alive")).await;
    drop(bare);
    let ok = copies == 1;
    record(Row {
        attack: "6 broker: bare TLS handshake with a connected device's certificate".into(),
        outcome: format!("live session still delivers ({copies} copy) 1 s after the handshake"),
        bound: "only a complete CONNECT replaces a live session".into(),
        result: verdict(ok, "the live session was ended"),
    });
    assert!(ok);
    fleet.process.stop().await;
}

#[tokio::test]
#[ignore = "needs warden-fleet binaries built"]
async fn a_provisioners_own_product_ca_cannot_pass_as_another_products_device() {
    let fleet = Fleet::start(&["wd-victim"]).await;
    let (mut victim, _) = Client::connect(&fleet, &fleet.pki.dir, "wd-victim")
        .await
        .expect("connects");
    victim.subscribe(1, &[echo_topic("wd-victim", "#")]).await;

    // The attacker's own CA, added as a product (what a provisioner may do).
    let evil_dir = tempfile::tempdir().expect("tempdir");
    let evil = Pki::create(evil_dir.path()).expect("pki");
    let (status, body) = fleet
        .api
        .post(
            PRODUCTS_PATH,
            Ok(serde_json::to_value(ProductRequest {
                name: "evil".into(),
                manufacturer_ca_pem: evil.maker_pem.clone(),
            })
            .expect("json")),
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "{body}");
    evil.issue_device("wd-victim").expect("forged");
    evil.issue_device("wd-fresh").expect("fresh");
    let admitted = |outcome: &std::io::Result<(Client, ConnectReturnCode)>| {
        matches!(outcome, Ok((_, ConnectReturnCode::Success)))
    };
    let as_victim = Client::connect(&fleet, evil_dir.path(), "wd-victim").await;
    let as_fresh = Client::connect(&fleet, evil_dir.path(), "wd-fresh").await;
    let victim_alive = victim.echo(&echo_topic("wd-victim", "alive")).await == 1;
    let ok = !admitted(&as_victim) && !admitted(&as_fresh) && victim_alive;
    record(Row {
        attack: "7 impersonation: provisioner's product CA as a registered / unregistered ID"
            .into(),
        outcome: format!(
            "as registered wd-victim: {}; as unregistered wd-fresh: {}; real device's session {}",
            if admitted(&as_victim) {
                "ADMITTED"
            } else {
                "refused"
            },
            if admitted(&as_fresh) {
                "ADMITTED"
            } else {
                "refused"
            },
            if victim_alive { "kept" } else { "LOST" },
        ),
        bound: "refused in the TLS handshake; the real device keeps its session".into(),
        result: verdict(ok, "impersonation admitted"),
    });
    assert!(ok);

    // Open enrollment (an operator's decision): the fresh ID is enrolled, and is then
    // under revocation like a registered device.
    let response = fleet
        .api
        .client()
        .put(fleet.api.url("/api/v1/products/evil/enrollment"))
        .bearer_auth(TOKEN)
        .json(&EnrollmentRequest { open: true })
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    let enrolled = Client::connect(&fleet, evil_dir.path(), "wd-fresh").await;
    let enrolled_ok = admitted(&enrolled);
    let record_status = fleet
        .api
        .client()
        .get(fleet.api.url("/api/v1/devices/wd-fresh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    let view: serde_json::Value = record_status.json().await.unwrap_or_default();
    let (revoke_status, _) = fleet
        .api
        .post("/api/v1/devices/wd-fresh/revoke", Ok(serde_json::json!({})))
        .await
        .expect("revoke");
    let after_revoke = Client::connect(&fleet, evil_dir.path(), "wd-fresh").await;
    let still_victim = Client::connect(&fleet, evil_dir.path(), "wd-victim").await;
    let ok = enrolled_ok
        && view["product"] == "evil"
        && revoke_status == 200
        && !admitted(&after_revoke)
        && !admitted(&still_victim);
    record(Row {
        attack: "7 open enrollment: enrolled device under revocation".into(),
        outcome: format!(
            "enrolled: {enrolled_ok} (product {}); revoke → {revoke_status}; after revoke {}; \
             registered ID of another product still {}",
            view["product"],
            if admitted(&after_revoke) {
                "ADMITTED"
            } else {
                "refused"
            },
            if admitted(&still_victim) {
                "ADMITTED"
            } else {
                "refused"
            },
        ),
        bound: "enrolled devices are registry rows: revoke works, refused after".into(),
        result: verdict(ok, "enrollment outside revocation"),
    });
    assert!(ok, "{view}");
    fleet.process.stop().await;
}
