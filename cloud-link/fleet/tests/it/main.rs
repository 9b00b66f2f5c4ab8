//! The fleet against real clients: rumqttc over rustls with client certificates.

mod attestation;
mod dashboard;
mod deltas;
mod openapi;
mod operations;
mod postgres;
mod registry;
mod renewal;
mod reports;
mod revocations;
mod rollout;
mod store_failure;
mod telemetry;
mod twin;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;
use warden_wire::tls::{ClientIdentity, client_config};
use warden_wire::topics::telemetry_topic;
use warden_wire::topics::{Reading, TelemetryBatch};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// Issues a device certificate valid from an hour ago until `valid_for` from now.
    fn issue_expiring(&self, dir: &Path, file: &str, common_name: &str, valid_for: Duration) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + valid_for).into();
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }

    /// Issues a device certificate that expired long ago.
    fn issue_expired(&self, dir: &Path, file: &str, common_name: &str) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }

    fn issue(&self, dir: &Path, file: &str, common_name: &str, server: bool) {
        let key = KeyPair::generate().expect("key");
        let names = if server {
            vec!["127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    fleet: warden_fleet::RunningFleet,
    shutdown: CancellationToken,
    database_url: String,
    maker: Ca,
    rogue: Ca,
    vendor_root: warden_keychain::tooling::SecretSigningKey,
    config: warden_fleet::FleetConfig,
}

/// API tokens of the test fleet, by role.
const VIEWER: &str = "viewer-secret";
const OPERATOR: &str = "operator-secret";
const PROVISIONER: &str = "provisioner-secret";
const ADMIN: &str = "admin-secret";

async fn fleet() -> Fixture {
    fleet_on(None).await
}

/// A fleet on SQLite in a temporary directory, or on `database_url`.
async fn fleet_on(database_url: Option<String>) -> Fixture {
    fleet_with(database_url, |_| {}).await
}

/// [`fleet_on`], its config changed by `adjust` before it starts.
async fn fleet_with(
    database_url: Option<String>,
    adjust: impl FnOnce(&mut warden_fleet::FleetConfig),
) -> Fixture {
    use warden_fleet::auth::{ApiConfig, Role, TokenConfig, hash_token};
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let fleet_ca = Ca::new(p, "fleet-ca");
    fleet_ca.issue(p, "server", "fleet", true);
    let maker = Ca::new(p, "maker-ca");
    maker.issue(p, "wd-good", "wd-good", false);
    maker.issue(p, "wd-other", "wd-other", false);
    let rogue = Ca::new(p, "rogue-ca");
    rogue.issue(p, "wd-rogue", "wd-good", false);
    let vendor_root = warden_keychain::tooling::SecretSigningKey::generate().expect("rng");
    let token = |name: &str, role, secret: &str| TokenConfig {
        name: name.into(),
        role,
        sha256: hash_token(secret),
    };
    let database_url =
        database_url.unwrap_or_else(|| format!("sqlite://{}", p.join("fleet.db").display()));
    let config = warden_fleet::FleetConfig {
        http_listen: "127.0.0.1:0".into(),
        mqtt_listen: "127.0.0.1:0".into(),
        database_url: database_url.clone(),
        database_read_connections: None,
        database_replica_url: None,
        server_cert: p.join("server.pem"),
        server_key: p.join("server.key"),
        manufacturer_ca: Some(p.join("maker-ca.pem")),
        http: warden_fleet::http_listener::HttpConfig::default(),
        broker: warden_fleet::broker::BrokerConfig::default(),
        api: ApiConfig {
            tokens: vec![
                token("viewer", Role::Viewer, VIEWER),
                token("ops", Role::Operator, OPERATOR),
                token("station", Role::Provisioner, PROVISIONER),
                token("admin", Role::Admin, ADMIN),
            ],
            anonymous_role: None,
        },
        images: warden_fleet::ImagesConfig {
            vendor_roots: vec![warden_wire::topics::to_hex(&vendor_root.public_key())],
            dir: Some(p.join("images")),
            public_url: None,
        },
        rollouts: warden_fleet::RolloutConfig {
            tick_ms: 50,
            reoffer_after_s: 30,
            attestation_interval_secs: 3600,
            attestation_valid_secs: None,
        },
        telemetry: warden_fleet::TelemetryConfig::default(),
        metrics: warden_fleet::MetricsConfig::default(),
        instance_id: None,
        certificates: Default::default(),
    };
    let mut config = config;
    adjust(&mut config);
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet starts");
    Fixture {
        dir,
        fleet,
        shutdown,
        database_url,
        maker,
        rogue,
        vendor_root,
        config,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.fleet.http_address)
    }

    /// GET with a token; the status and the JSON body (`null` if none).
    async fn get(&self, token: &str, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// POST JSON with a token; the status and the JSON body.
    async fn post(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::POST, token, path, body)
            .await
    }

    /// PUT JSON with a token; the status and the JSON body.
    async fn put(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::PUT, token, path, body)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{file}.pem"))).expect("pem")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.fleet.stopped().await;
    }

    /// Stops the fleet and starts it again on the same config and database (new ports).
    async fn restart(self) -> Self {
        self.shutdown.cancel();
        self.fleet.stopped().await;
        let shutdown = CancellationToken::new();
        let fleet = warden_fleet::start(&self.config, shutdown.clone())
            .await
            .expect("fleet restarts");
        Self {
            fleet,
            shutdown,
            ..self
        }
    }
}

fn client(fx: &Fixture, client_id: &str, cert: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let p = fx.dir.path();
    let identity = ClientIdentity::from_pem_files(
        &p.join(format!("{cert}.pem")),
        &p.join(format!("{cert}.key")),
    )
    .expect("identity");
    let tls = client_config(&p.join("fleet-ca.pem"), identity).expect("tls");
    let mut options = MqttOptions::new(client_id, "127.0.0.1", fx.fleet.mqtt_address.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    AsyncClient::new(options, 16)
}

/// Polls the event loop until the broker acknowledges the connection, or returns the error.
async fn connect(eventloop: &mut rumqttc::EventLoop) -> Result<(), String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Err(_) => return Err("timeout".into()),
            Ok(Err(error)) => return Err(error.to_string()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

fn batch(seq: u64, value: f64) -> Vec<u8> {
    TelemetryBatch {
        v: 1,
        stream: "line1".into(),
        epoch: 9,
        seq,
        readings: vec![Reading::number(
            "line1/t".into(),
            value,
            "°C".into(),
            1_000 + seq,
        )],
    }
    .encode()
}

async fn devices(fx: &Fixture) -> serde_json::Value {
    let (status, body) = fx.get(VIEWER, "/api/v1/devices").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn telemetry_from_an_enrolled_device_is_stored_once() {
    let fx = fleet().await;
    let (client, mut eventloop) = client(&fx, "wd-good", "wd-good");
    connect(&mut eventloop)
        .await
        .expect("enrolled device connects");
    let topic = telemetry_topic("wd-good");
    for (seq, value) in [(0, 20.5), (0, 20.5), (1, 21.0)] {
        client
            .publish(&topic, QoS::AtLeastOnce, false, batch(seq, value))
            .await
            .expect("queue");
    }
    let mut acks = 0;
    while acks < 3 {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
            acks += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = devices(&fx).await;
    assert_eq!(listed[0]["id"], "wd-good");
    assert_eq!(listed[0]["latest"][0]["value"], 21.0);
    let (_, series) = fx.get(VIEWER, "/api/v1/devices/wd-good/telemetry").await;
    assert_eq!(
        series["readings"].as_array().map(Vec::len),
        Some(2),
        "duplicate batch stored twice: {series}"
    );
    // Pages of the device list.
    let (_, rest) = fx.get(VIEWER, "/api/v1/devices?offset=1").await;
    assert_eq!(rest.as_array().map(Vec::len), Some(0), "{rest}");
    let (status, refused) = fx.get(VIEWER, "/api/v1/devices?limit=0").await;
    assert_eq!(status, 400, "{refused}");
    // A read-time range: from inclusive, to exclusive; an empty range is refused.
    let (_, later) = fx
        .get(
            VIEWER,
            "/api/v1/devices/wd-good/telemetry?from_ms=1001&to_ms=5000",
        )
        .await;
    assert_eq!(later["readings"][0]["value"], 21.0, "{later}");
    assert_eq!(
        later["readings"].as_array().map(Vec::len),
        Some(1),
        "{later}"
    );
    let (_, earlier) = fx
        .get(VIEWER, "/api/v1/devices/wd-good/telemetry?to_ms=1001")
        .await;
    assert_eq!(earlier["readings"][0]["value"], 20.5, "{earlier}");
    assert_eq!(
        earlier["readings"].as_array().map(Vec::len),
        Some(1),
        "{earlier}"
    );
    let (status, refused) = fx
        .get(
            VIEWER,
            "/api/v1/devices/wd-good/telemetry?from_ms=9&to_ms=9",
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        fx.get(VIEWER, "/api/v1/devices/wd-nobody/telemetry")
            .await
            .0,
        404
    );
    fx.shutdown.cancel();
    fx.fleet.stopped().await;
}

/// A command ID names one command: posted again with the same body it is answered
/// with the command's state (200), with another body it is refused (409); the
/// command's `request` is the JSON sent to the device, not a string of it.
#[tokio::test]
async fn a_command_id_names_one_command() {
    let fx = fleet().await;
    let (client, mut eventloop) = client(&fx, "wd-good", "wd-good");
    connect(&mut eventloop)
        .await
        .expect("enrolled device connects");
    client
        .publish(
            telemetry_topic("wd-good"),
            QoS::AtLeastOnce,
            false,
            batch(0, 1.0),
        )
        .await
        .expect("queue");
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    eventually(Duration::from_secs(10), || async {
        (fx.get(VIEWER, "/api/v1/devices/wd-good/telemetry").await.0 == 200).then_some(())
    })
    .await
    .expect("telemetry stored");
    let write = |value: f64| serde_json::json!({"bridge": "line1", "point": "setpoint", "value": value, "id": "set-1"});
    let path = "/api/v1/devices/wd-good/commands";
    let (status, sent) = fx.post(OPERATOR, path, &write(21.5)).await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["request"]["action"]["value"], 21.5, "{sent}");
    assert_eq!(sent["request"]["id"], "set-1", "{sent}");
    let (status, again) = fx.post(OPERATOR, path, &write(21.5)).await;
    assert_eq!(status, 200, "the same command again is idempotent: {again}");
    assert_eq!(again["request"], sent["request"]);
    let (status, refused) = fx.post(OPERATOR, path, &write(99.0)).await;
    assert_eq!(status, 409, "another body under a used ID: {refused}");
    let (_, stored) = fx.get(VIEWER, &format!("{path}/set-1")).await;
    assert_eq!(stored["request"]["action"]["value"], 21.5, "{stored}");
    driver.abort();
    fx.shutdown.cancel();
    fx.fleet.stopped().await;
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let fx = fleet().await;
    let (_client, mut eventloop) = client(&fx, "wd-good", "wd-rogue");
    let error = connect(&mut eventloop)
        .await
        .expect_err("rogue certificate must be refused");
    assert!(!error.is_empty());
    assert_eq!(devices(&fx).await, serde_json::json!([]));
}

#[tokio::test]
async fn a_client_id_other_than_the_certificate_name_is_refused() {
    let fx = fleet().await;
    let (_client, mut eventloop) = client(&fx, "wd-other", "wd-good");
    let error = connect(&mut eventloop)
        .await
        .expect_err("spoofed client id must be refused");
    assert!(
        error.contains("BadClientId") || error.contains("refused"),
        "{error}"
    );
}

#[tokio::test]
async fn publishing_under_another_device_closes_the_session_and_stores_nothing() {
    let fx = fleet().await;
    let (client, mut eventloop) = client(&fx, "wd-good", "wd-good");
    connect(&mut eventloop).await.expect("connects");
    client
        .publish(
            telemetry_topic("wd-other"),
            QoS::AtLeastOnce,
            false,
            batch(0, 1.0),
        )
        .await
        .expect("queue");
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Err(_) => break "timeout".to_owned(),
            Ok(Err(error)) => break error.to_string(),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break "acknowledged".to_owned(),
            Ok(Ok(_)) => {}
        }
    };
    assert_ne!(outcome, "acknowledged");
    assert_ne!(outcome, "timeout");
    assert_eq!(devices(&fx).await, serde_json::json!([]));
}

/// An independent MQTT client (Mosquitto's) talks to the embedded broker: it publishes
/// under its own ID with its certificate, and is refused a subscription elsewhere.
#[tokio::test]
#[ignore = "needs mosquitto-clients (Debian package; .ci/run installs it)"]
async fn mosquitto_clients_interoperate_with_the_embedded_broker() {
    let fx = fleet().await;
    let p = fx.dir.path();
    let port = fx.fleet.mqtt_address.port().to_string();
    let tls_args = |cert: &str| {
        vec![
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.clone(),
            "--cafile".to_owned(),
            p.join("fleet-ca.pem").display().to_string(),
            "--cert".to_owned(),
            p.join(format!("{cert}.pem")).display().to_string(),
            "--key".to_owned(),
            p.join(format!("{cert}.key")).display().to_string(),
            "--tls-version".to_owned(),
            "tlsv1.3".to_owned(),
            "-i".to_owned(),
            cert.to_owned(),
        ]
    };
    let payload = String::from_utf8(batch(0, 42.5)).expect("utf8");
    let published = tokio::process::Command::new("mosquitto_pub")
        .args(tls_args("wd-good"))
        .args(["-q", "1", "-t", &telemetry_topic("wd-good"), "-m", &payload])
        .output()
        .await
        .expect("run mosquitto_pub");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(devices(&fx).await[0]["latest"][0]["value"], 42.5);

    let refused = tokio::process::Command::new("mosquitto_sub")
        .args(tls_args("wd-good"))
        .args(["-t", "warden/v1/devices/+/telemetry", "-C", "1", "-W", "3"])
        .output()
        .await
        .expect("run mosquitto_sub");
    let said = String::from_utf8_lossy(&refused.stderr).to_string()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(
        said.contains("denied"),
        "mosquitto_sub said ({}): {said}",
        refused.status
    );
}

/// A simulated device: an MQTT client subscribed to its own topics.
struct SimulatedDevice {
    id: String,
    client: AsyncClient,
    incoming: tokio::sync::mpsc::Receiver<rumqttc::Publish>,
    closed: tokio::sync::oneshot::Receiver<String>,
}

impl SimulatedDevice {
    /// Connects as `id` with the certificate in `cert`.pem and subscribes to
    /// `warden/v1/devices/{id}/#`.
    async fn connect(fx: &Fixture, id: &str, cert: &str) -> Result<Self, String> {
        let (client, mut eventloop) = client(fx, id, cert);
        connect(&mut eventloop).await?;
        client
            .subscribe(format!("warden/v1/devices/{id}/#"), QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => return Err("no SUBACK".into()),
            }
        }
        let (tx, incoming) = tokio::sync::mpsc::channel(256);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = tx.send(publish).await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = closed_tx.send(error.to_string());
                        return;
                    }
                }
            }
        });
        Ok(Self {
            id: id.to_owned(),
            client,
            incoming,
            closed,
        })
    }

    /// Publishes `payload` (JSON) under the device's `suffix` topic, QoS 1.
    async fn publish(&self, suffix: &str, payload: &serde_json::Value) {
        self.client
            .publish(
                format!("warden/v1/devices/{}/{suffix}", self.id),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(payload).expect("json"),
            )
            .await
            .expect("queue");
    }

    /// The next message on the device's `suffix` topic (others are skipped), or
    /// `None` after `wait`.
    async fn next_on(&mut self, suffix: &str, wait: Duration) -> Option<serde_json::Value> {
        let topic = format!("warden/v1/devices/{}/{suffix}", self.id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let publish = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .ok()??;
            if publish.topic == topic {
                return serde_json::from_slice(&publish.payload).ok();
            }
        }
    }

    /// Waits until the broker closes the connection; the error text.
    async fn closed_within(self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.closed).await.ok()?.ok()
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `wait`.
async fn eventually<T, F, Fut>(wait: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[http.tls]`: the API answers over HTTPS (rustls, the broker's stack) to a client
/// that trusts the fleet's CA, and a plain-HTTP request on that port gets no answer.
#[tokio::test]
async fn the_api_serves_https_when_configured() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fx = fleet_with(None, |config| {
        config.http.tls = Some(warden_fleet::http_listener::HttpTlsConfig {
            cert: config.server_cert.clone(),
            key: config.server_key.clone(),
        });
    })
    .await;
    assert_eq!(fx.fleet.http_scheme, "https");
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        warden_wire::tls::load_certificates(&fx.dir.path().join("fleet-ca.pem")).expect("fleet CA")
    {
        roots.add(cert).expect("root");
    }
    let client = rustls::ClientConfig::builder_with_provider(warden_wire::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(fx.fleet.http_address)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls handshake");
    tls.write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-content-type-options: nosniff"),
        "{answer}"
    );

    let plain = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/openapi.json",
            fx.fleet.http_address
        ))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on the HTTPS port: {plain:?}");
    fx.stop().await;
}
