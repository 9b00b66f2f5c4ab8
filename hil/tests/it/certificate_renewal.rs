//! Certificate renewal over the link, end to end: a real link agent whose key lives in
//! a real pluton (served in this process, the link holding only its role token), the
//! fleet with its embedded broker and an issuing CA, mutual TLS throughout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_link::agent::{RenewalState, renewed_certificate};
use warden_link::outbox::{FsyncPolicy, OutboxConfig};
use warden_link::{LinkAgent, LinkConfig, LinkState, LinkStatus};
use warden_pluton_api::launch_tokens::LaunchTokens;
use warden_wire::fleet_api::{DeviceDetail, certificate_renew_path};
use warden_wire::tls::{ClientIdentity, client_config, load_certificates};

/// Generous: the machine is shared; nothing here asserts a duration.
const WAIT: Duration = Duration::from_secs(60);

/// The role tokens of this test process: the link's is what the agent presents to
/// the plutons started here (a process installs its tokens once).
fn tokens() -> &'static LaunchTokens {
    static TOKENS: OnceLock<LaunchTokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let tokens = LaunchTokens::mint().expect("tokens");
        assert!(
            warden_pluton_api::launch_tokens::install(tokens.only(warden_pluton::Role::Link)),
            "nothing else in this test binary installs pluton tokens"
        );
        tokens
    })
}

/// A pluton on `dir` answering the link's role (its token) and the factory (the
/// provisioning capability), with an identity made as the station would: its public
/// key and socket.
async fn start_pluton(dir: &Path) -> (tokio::task::JoinHandle<()>, PathBuf, [u8; 65]) {
    std::fs::create_dir_all(dir).expect("dir");
    let socket = dir.join("pluton.sock");
    let state = dir.join("pluton");
    let link_token = tokens()
        .token(warden_pluton::Role::Link)
        .expect("link token")
        .clone();
    let options = warden_pluton::server::ServeOptions {
        roles: warden_pluton::server::CallerRoles {
            by_capability: vec![(warden_pluton::Role::Link, link_token)],
            ..Default::default()
        },
        ..Default::default()
    };
    let serving = {
        let (socket, state) = (socket.clone(), state.clone());
        tokio::spawn(async move {
            if let Err(error) = warden_pluton::server::serve(&socket, &state, options).await {
                panic!("pluton: {error}");
            }
        })
    };
    let capability_file = state.join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME);
    let socket_for_factory = socket.clone();
    let public_key = tokio::task::spawn_blocking(move || {
        for _ in 0..400 {
            if let (Ok(mut client), Ok(capability)) = (
                warden_pluton_api::PlutonClient::connect(&socket_for_factory),
                warden_pluton::server::read_capability_file(&capability_file),
            ) {
                client.authenticate_boot(&capability).expect("boot role");
                return client.create_identity(None).expect("identity").public_key.0;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("pluton did not start");
    })
    .await
    .expect("factory");
    (serving, socket, public_key)
}

/// A CA of the fleet's own for renewed device certificates: (certificate, key) files.
fn issuing_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "Warden test fleet issuing CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("issuing CA");
    let (cert_path, key_path) = (dir.join("issuing-ca.pem"), dir.join("issuing-ca.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert_path, key_path)
}

fn link_config(dir: &Path, port: u16, pki: &DemoPki, device_cert: &Path) -> LinkConfig {
    LinkConfig {
        broker_host: "127.0.0.1".into(),
        broker_port: port,
        fleet_ca: pki.fleet_ca.clone(),
        device_cert: device_cert.to_owned(),
        device_key: None,
        pluton_socket: None,
        batch_interval_ms: 100,
        max_send_per_second: 1000,
        outbox: OutboxConfig {
            fsync: FsyncPolicy::Never,
            ..OutboxConfig::in_dir(dir.join("outbox"))
        },
    }
}

/// A link agent running until `shutdown`; its status.
fn run_agent(
    id: &str,
    config: LinkConfig,
    shutdown: &CancellationToken,
) -> (
    Arc<Mutex<LinkStatus>>,
    mpsc::Sender<Vec<warden_link::Reading>>,
) {
    let agent = LinkAgent::new(id.to_owned(), config);
    let status = agent.status();
    let (readings, rx) = mpsc::channel(16);
    let shutdown = shutdown.clone();
    tokio::spawn(async move { agent.run(rx, shutdown).await });
    (status, readings)
}

fn snapshot(status: &Mutex<LinkStatus>) -> LinkStatus {
    status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

async fn until(what: &str, status: &Mutex<LinkStatus>, check: impl Fn(&LinkStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = snapshot(status);
        if check(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}; the link: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn device_detail(base: &str, token: &str, id: &str) -> DeviceDetail {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/dashboard/devices/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("device detail")
}

/// Whether a fresh MQTT connection with `identity` gets in.
async fn connects(
    pki: &DemoPki,
    id: &str,
    identity: ClientIdentity,
    port: u16,
) -> Result<(), String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
    let tls = client_config(&pki.fleet_ca, identity).expect("tls");
    // The device's own client ID: the broker admits no other for its certificate (a
    // probe under another ID is refused as BadClientId whatever it presents). It takes
    // the agent's session over; the agent reconnects.
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Err(_) => return Err("timeout".into()),
            Ok(Err(error)) => return Err(error.to_string()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                if ack.code == rumqttc::ConnectReturnCode::Success =>
            {
                return Ok(());
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => return Err(format!("{:?}", ack.code)),
            Ok(Ok(_)) => {}
        }
    }
}

fn fingerprint(path: &Path) -> String {
    let chain = load_certificates(path).expect("certificate");
    warden_fleet::enrollment::fingerprint(&chain[0])
}

/// A unit whose certificate expires in 10 minutes asks for a new one, pluton signs the
/// CSR, the fleet attests the unit and issues from its issuing CA, and the unit
/// reconnects with the new certificate, which becomes its own; from then on the fleet
/// refuses the old one. A unit that cannot attest is refused, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_ten_minutes_from_expiry_renews_itself_and_an_unattested_unit_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
    let (issuing_cert, issuing_key) = issuing_ca(dir.path());
    let mut config = pki.fleet_config(dir.path(), 0, 0);
    config.rollouts.attestation_interval_secs = 0;
    config.certificates = warden_fleet::issuing::CertificatesConfig {
        issuing_ca_cert: Some(issuing_cert.clone()),
        issuing_ca_key: Some(issuing_key),
        device_certificate_days: 30,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet starts");
    let port = fleet.mqtt_address.port();
    let base = format!("http://{}", fleet.http_address);
    let token = pki.fleet_token().expect("token");

    // The unit: its key in pluton, its certificate issued 20 days ago and valid for 10
    // more minutes (renewal is due: far less than a third of its validity is left).
    let unit_dir = dir.path().join("unit");
    let (pluton, socket, public_key) = start_pluton(&unit_dir).await;
    let id = "wd-renewing";
    let now = SystemTime::now();
    let old_cert = pki
        .issue_device_certificate_valid(
            id,
            &public_key,
            Some((
                now - Duration::from_secs(20 * 86_400),
                now + Duration::from_secs(600),
            )),
        )
        .expect("certificate");
    let mut unit = link_config(&unit_dir, port, &pki, &old_cert);
    unit.pluton_socket = Some(socket.clone());
    let (status, _readings) = run_agent(id, unit, &shutdown);

    until("the unit renews its certificate", &status, |s| {
        s.certificate.state == RenewalState::Renewed
    })
    .await;
    until("the unit is connected with it", &status, |s| {
        s.state == LinkState::Connected
    })
    .await;
    let renewed = renewed_certificate(&unit_dir.join("outbox"));
    let (old_print, new_print) = (fingerprint(&old_cert), fingerprint(&renewed));
    assert_ne!(old_print, new_print);
    let chain = load_certificates(&renewed).expect("renewed");
    let (not_before, not_after) =
        warden_wire::certificate_fields::validity(&chain[0]).expect("validity");
    assert_eq!(
        not_after - not_before,
        30 * 86_400,
        "the fleet's validity, not the CSR's"
    );
    assert_eq!(
        warden_wire::certificate_fields::subject_public_key(&chain[0]),
        Some(public_key.as_slice()),
        "the same key, re-certified"
    );
    let shown = snapshot(&status).certificate;
    assert_eq!(shown.standing.as_deref(), Some("valid"), "{shown:?}");
    assert_eq!(
        shown.in_use.as_deref(),
        Some(renewed.display().to_string().as_str())
    );

    // The fleet pins the new certificate, shows the renewal, and refuses the old one.
    let detail = device_detail(&base, &token, id).await;
    let registered = detail.registered.expect("enrolled at its first connection");
    assert_eq!(registered.fingerprint, new_print);
    let certificate = detail.certificate.expect("certificate");
    assert_eq!(certificate.standing, "valid");
    let renewal = certificate.renewal.expect("renewal shown");
    assert_eq!(renewal.state, "completed", "{renewal:?}");
    assert_eq!(renewal.fingerprint.as_deref(), Some(new_print.as_str()));
    let pluton_key =
        || Arc::new(warden_pluton_api::PlutonSigningKey::connect(&socket).expect("pluton key"));
    let old = ClientIdentity::from_signer(load_certificates(&old_cert).expect("old"), pluton_key());
    let refused = connects(&pki, id, old, port).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|why| !why.contains("BadClientId")),
        "the old certificate must be refused after the switch, for itself: {refused:?}"
    );
    let new = ClientIdentity::from_signer(chain.clone(), pluton_key());
    connects(&pki, id, new, port)
        .await
        .expect("the new certificate connects");

    // A unit without pluton cannot attest: its request (ordered by an operator) is
    // refused with the reason, on the unit and on the fleet's device page.
    let plain_dir = dir.path().join("plain");
    let mut plain = link_config(&plain_dir, port, &pki, &pki.device_cert);
    plain.device_key = Some(pki.device_key.clone());
    let (plain_status, _plain_readings) = run_agent(&pki.device_id, plain, &shutdown);
    until("the plain unit connects", &plain_status, |s| {
        s.state == LinkState::Connected
    })
    .await;
    let ordered = reqwest::Client::new()
        .post(format!("{base}{}", certificate_renew_path(&pki.device_id)))
        .bearer_auth(&token)
        .send()
        .await
        .expect("post");
    assert_eq!(ordered.status(), 202, "{:?}", ordered.text().await);
    until("the plain unit is refused", &plain_status, |s| {
        s.certificate.state == RenewalState::Refused
    })
    .await;
    let shown = snapshot(&plain_status).certificate;
    let why = shown.detail.unwrap_or_default();
    assert!(why.contains("not attested"), "{why}");
    let detail = device_detail(&base, &token, &pki.device_id).await;
    let renewal = detail
        .certificate
        .and_then(|c| c.renewal)
        .expect("the refusal on the device page");
    assert_eq!(renewal.state, "refused");
    assert!(renewal.detail.contains("not attested"), "{renewal:?}");
    assert!(
        !renewed_certificate(&plain_dir.join("outbox")).exists()
            && !plain_dir
                .join("outbox/certificate/device-cert.pem.next")
                .exists(),
        "nothing was issued"
    );

    shutdown.cancel();
    fleet.stopped().await;
    pluton.abort();
}
