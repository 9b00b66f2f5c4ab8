//! A staged rollout of an image that crashes on start halts by itself, and the devices
//! of its first wave roll back by themselves.
//!
//! Real pieces only: the fleet service (embedded broker, SQLite), and per device its
//! own pluton identity (key held by a `warden pluton` process), device certificate, A/B
//! state and `warden boot … -- run --config …` (the boot stage: pluton, slot selection,
//! verification, measurement, trial boots, crash reports, rollback). The test plays the
//! factory (identity, vendor root, image 1.0.0 into slot A) and the fleet operator
//! (uploads, deployment). Images are small: a script entry point that execs the real
//! `warden` binary (1.0.0) or fails at once (2.0.0).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_hil::fleet_operator::FleetApi;
use warden_hil::script_images::{ImageSigner, crashes, runs_warden, script_image};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, load_secret_key};
use warden_os::image::ProductId;
use warden_os::slots::{BootState, FailureReason, Slot, SlotStatus};
use warden_wire::fleet_api::{
    DEFAULT_GROUP, DEPLOYMENTS_PATH, DEVICES_PATH, DeploymentRequest, PRODUCTS_PATH,
    ProductRequest, RegisterRequest, ReportsQuery, StoredDeployment, StoredReport, WaveSize,
    deployment_path,
};

pub(super) const PRODUCT: &str = "warden-demo";
const DEVICES: usize = 4;
const FIRST_WAVE: usize = 2;
/// Everything after the deployment is created must happen within this.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);

/// The `warden` binary of this workspace build (beside this test's `deps/`).
pub(super) fn warden_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let warden = dir.join("warden");
    assert!(
        warden.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p warden`)",
        warden.display()
    );
    warden
}

/// A signed image whose payload is one script, `bin/warden`.
fn image(vendor_root: &SecretSigningKey, version: (u32, u32, u32), script: &str) -> Vec<u8> {
    image_with_counter(vendor_root, version, script, 1)
}

/// [`image`] with its anti-rollback `security_counter`.
pub(super) fn image_with_counter(
    vendor_root: &SecretSigningKey,
    version: (u32, u32, u32),
    script: &str,
    security_counter: u64,
) -> Vec<u8> {
    let release = SecretSigningKey::generate().expect("rng");
    let cert =
        issue_release_cert(vendor_root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
    let signer = ImageSigner {
        release_key: &release,
        release_cert: &cert,
    };
    script_image(
        &signer,
        PRODUCT,
        [version.0, version.1, version.2],
        security_counter,
        script,
    )
    .expect("image")
}

/// One appliance: its directory, identity and (once started) its boot stage.
pub(super) struct Device {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) boot: Option<Child>,
}

impl Device {
    fn socket(&self) -> PathBuf {
        self.dir.join("pluton.sock")
    }

    pub(super) fn boot_state(&self) -> BootState {
        let bytes = std::fs::read(self.dir.join("boot/boot/state")).unwrap_or_default();
        BootState::decode(&bytes).unwrap_or_default()
    }

    pub(super) fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!("--- {} boot.log (tail) ---\n{}", self.id, &text[start..])
    }

    /// Stops the boot stage with SIGTERM (it stops the image and pluton first).
    pub(super) fn stop(&mut self) {
        if let Some(mut boot) = self.boot.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(boot.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = boot.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = boot.kill();
            let _ = boot.wait();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `warden pluton` on `dir/pluton` and waits until it answers.
fn start_pluton(warden: &Path, dir: &Path) -> (Child, warden_pluton_api::PlutonClient) {
    let socket = dir.join("pluton.sock");
    let mut child = Command::new(warden)
        .arg("pluton")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("pluton"))
        .stderr(Stdio::null())
        .spawn()
        .expect("pluton starts");
    for _ in 0..200 {
        if let Ok(client) = warden_pluton_api::PlutonClient::connect(&socket) {
            return (child, client);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pluton did not listen on {}", socket.display());
}

/// The factory: identity in pluton, the vendor root installed, image 1.0.0 in slot A
/// (pending its first, trial boot). Returns the device ID and its public key.
pub(super) fn manufacture(
    warden: &Path,
    dir: &Path,
    vendor_root: &[u8; 65],
    v1: &[u8],
) -> (String, [u8; 65]) {
    std::fs::create_dir_all(dir).expect("device dir");
    let (mut pluton, mut client) = start_pluton(warden, dir);
    let capability_file = dir.join("pluton/provisioning.capability");
    let capability =
        warden_pluton::server::read_capability_file(&capability_file).expect("capability");
    // The factory is the boot role: it holds the provisioning capability.
    client.authenticate_boot(&capability).expect("boot role");
    let identity = client.create_identity(None).expect("identity");
    client
        .install_root_key(
            &capability,
            vendor_root,
            warden_keychain::Purpose::ALL.bits(),
        )
        .expect("vendor root");
    drop(client);
    let root_of_trust =
        warden_os::PlutonRootOfTrust::connect(&dir.join("pluton.sock"), &capability_file, vec![])
            .expect("root of trust");
    let mut monitor = warden_os::BootMonitor::new(
        warden_os::file_system::StdFileSystem::new(dir.join("boot")),
        root_of_trust,
        warden_os::BootConfig::new(ProductId::new(PRODUCT).expect("product")),
    );
    let slot = monitor
        .install(&mut std::io::Cursor::new(v1), v1.len() as u64)
        .expect("install 1.0.0");
    assert_eq!(slot, Slot::A);
    drop(monitor);
    let _ = pluton.kill();
    let _ = pluton.wait();
    (identity.device_id.to_string(), identity.public_key.0)
}

fn password_hash() -> String {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(b"rollout-test-salt").expect("salt");
    argon2::Argon2::default()
        .hash_password(b"rollout test password", &salt)
        .expect("hash")
        .to_string()
}

pub(super) fn write_config(
    device: &Device,
    pki: &DemoPki,
    cert: &Path,
    broker_port: u16,
) -> PathBuf {
    let dir = &device.dir;
    std::fs::create_dir_all(dir.join("status-page")).expect("dir");
    std::fs::write(dir.join("status-page/password.phc"), password_hash()).expect("password");
    std::fs::write(dir.join("policy.toml"), warden_hil::demo::DEMO_POLICY).expect("policy");
    let config = format!(
        r#"[device]
id = "{id}"
product = "{PRODUCT}"

[policy]
file = "policy.toml"

[link]
broker_host = "127.0.0.1"
broker_port = {broker_port}
fleet_ca = "{fleet_ca}"
device_cert = "{cert}"
pluton_socket = "{socket}"
batch_interval_ms = 200

[link.outbox]
dir = "outbox"

[status_page]
listen = "127.0.0.1:0"
password_file = "status-page/password.phc"
state_dir = "status-page"

[reports]
dir = "reports"
scan_interval_secs = 1

[updates]
state_dir = "{boot}"
download_dir = "{downloads}"
capability_file = "{capability}"
"#,
        id = device.id,
        fleet_ca = pki.fleet_ca.display(),
        cert = cert.display(),
        socket = device.socket().display(),
        boot = dir.join("boot").display(),
        downloads = dir.join("downloads").display(),
        capability = dir.join("pluton/provisioning.capability").display(),
    );
    let path = dir.join("warden.toml");
    std::fs::write(&path, config).expect("config");
    path
}

pub(super) fn start_boot(warden: &Path, device: &mut Device, config: &Path) {
    let dir = &device.dir;
    let log = std::fs::File::create(dir.join("boot.log")).expect("log");
    let child = Command::new(warden)
        .arg("boot")
        .arg("--state-dir")
        .arg(dir.join("boot"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--product")
        .arg(PRODUCT)
        .arg("--pluton-state-dir")
        .arg(dir.join("pluton"))
        .arg("--pluton-socket")
        .arg(device.socket())
        .arg("--report-dir")
        .arg(dir.join("reports"))
        .arg("--trial-deadline-secs")
        .arg("60")
        .arg("--restart-backoff-initial-ms")
        .arg("200")
        .arg("--restart-backoff-max-ms")
        .arg("2000")
        .arg("--")
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,sqlx=warn,rumqttc=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("warden boot starts");
    device.boot = Some(child);
}

/// Issues the device certificate of `id` and registers it (running 1.0.0 in the
/// default group); the certificate's path.
pub(super) async fn register(
    api: &FleetApi,
    pki: &DemoPki,
    id: &str,
    public_key: &[u8; 65],
    serial: &str,
) -> PathBuf {
    let cert = pki
        .issue_device_certificate(id, public_key)
        .expect("device certificate");
    let (status, body) = api
        .post(
            DEVICES_PATH,
            &RegisterRequest {
                device_id: id.to_owned(),
                serial: serial.to_owned(),
                product: PRODUCT.to_owned(),
                group: DEFAULT_GROUP.to_owned(),
                certificate_pem: std::fs::read_to_string(&cert).expect("cert"),
                image_version: "1.0.0".to_owned(),
            },
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "register {id}: {body}");
    cert
}

/// The fleet's config for these tests: embedded broker, SQLite under `root`, quick
/// rollout steps, attestation on connect.
pub(super) fn fleet_config(
    pki: &DemoPki,
    root: &Path,
    http_port: u16,
    mqtt_port: u16,
) -> warden_fleet::FleetConfig {
    let mut config = pki.fleet_config(root, http_port, mqtt_port);
    config.rollouts.tick_ms = 200;
    config.rollouts.attestation_interval_secs = 0;
    config
}

/// Starts the fleet with `config` and registers [`PRODUCT`] with the manufacturer CA.
pub(super) async fn start_fleet_with_product(
    pki: &DemoPki,
    config: &warden_fleet::FleetConfig,
    shutdown: &CancellationToken,
) -> (warden_fleet::RunningFleet, FleetApi) {
    let fleet = warden_fleet::start(config, shutdown.clone())
        .await
        .expect("fleet starts");
    let api = FleetApi {
        base: format!("http://{}", fleet.http_address),
        token: pki.fleet_token().expect("token"),
        http: reqwest::Client::new(),
    };
    let manufacturer_ca = std::fs::read_to_string(&pki.manufacturer_ca).expect("ca");
    let (status, body) = api
        .post(
            PRODUCTS_PATH,
            &ProductRequest {
                name: PRODUCT.to_owned(),
                manufacturer_ca_pem: manufacturer_ca,
            },
        )
        .await
        .expect("post");
    assert!(status == 201 || status == 200, "product: {status} {body}");
    (fleet, api)
}

/// Polls `check` every 200 ms until it returns `Some`, or fails with `what` and the
/// devices' logs after `limit`.
pub(super) async fn wait_for<T>(
    what: &str,
    limit: Duration,
    devices: &[Device],
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = devices.iter().map(Device::log).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) fn confirmed_version(state: &BootState, slot: Slot) -> Option<[u32; 3]> {
    match state.slot(slot) {
        SlotStatus::Confirmed(image) => Some(image.version),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_wave_rolls_back_by_itself_and_halts_the_rollout() {
    let warden = warden_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = DemoPki::generate(&root.join("pki")).expect("pki");
    let vendor_root = load_secret_key(&pki.vendor_root_key).expect("vendor root key");
    let vendor_root_public = pki.vendor_root_public_key().expect("vendor root");

    let config = fleet_config(&pki, root, 0, 0);
    let shutdown = CancellationToken::new();
    let (fleet, api) = start_fleet_with_product(&pki, &config, &shutdown).await;

    // Image 1.0.0 runs the real appliance; 2.0.0 fails as soon as it starts.
    let v1 = image(&vendor_root, (1, 0, 0), &runs_warden(&warden));
    let v2 = image(&vendor_root, (2, 0, 0), &crashes([2, 0, 0]));
    api.upload(v1.clone()).await.expect("upload 1.0.0"); // a known release: devices running it attest

    // The factory, then registration, then the first boot of each unit.
    let mut devices = Vec::new();
    for index in 0..DEVICES {
        let device_dir = root.join(format!("unit{index}"));
        let (id, public_key) = manufacture(&warden, &device_dir, &vendor_root_public, &v1);
        let cert = register(&api, &pki, &id, &public_key, &format!("SN-{index}")).await;
        let mut device = Device {
            id,
            dir: device_dir,
            boot: None,
        };
        let config = write_config(&device, &pki, &cert, fleet.mqtt_address.port());
        start_boot(&warden, &mut device, &config);
        devices.push(device);
    }

    // 1.0.0 confirms itself on its trial boot (link up), and each unit attests.
    wait_for(
        "every unit to confirm 1.0.0 and attest as trusted",
        Duration::from_secs(60),
        &devices,
        async || {
            for device in &devices {
                if confirmed_version(&device.boot_state(), Slot::A) != Some([1, 0, 0]) {
                    return None;
                }
                let record = api.registered(&device.id).await?;
                if record.attestation != "trusted" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // The operator rolls 2.0.0 out: two devices first, then the rest.
    let v2_sha = api.upload(v2).await.expect("upload 2.0.0");
    let (status, deployment) = api
        .post(
            DEPLOYMENTS_PATH,
            &DeploymentRequest {
                waves: vec![
                    WaveSize::Count(u32::try_from(FIRST_WAVE).expect("a small wave")),
                    WaveSize::Percent(100),
                ],
                success_threshold: 1.0,
                failure_threshold: 0.5,
                ..DeploymentRequest::new(v2_sha, DEFAULT_GROUP)
            },
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "deployment: {deployment}");
    let deployment: StoredDeployment = serde_json::from_value(deployment).expect("a deployment");
    let deployment_id = deployment.id.clone();
    let wave_of = |device: &Device| {
        deployment
            .members
            .iter()
            .find(|m| m.device_id == device.id)
            .map(|member| member.wave)
    };
    let (first, second): (Vec<&Device>, Vec<&Device>) = devices
        .iter()
        .partition(|device| wave_of(device) == Some(0));
    assert_eq!(first.len(), FIRST_WAVE, "{deployment:?}");
    assert!(
        second.iter().all(|device| wave_of(device) == Some(1)),
        "{deployment:?}"
    );

    // Nobody touches anything from here: the rollout halts by itself.
    let halted = wait_for(
        "the deployment to halt",
        ROLLOUT_LIMIT,
        &devices,
        async || {
            let current: StoredDeployment = api.get(&deployment_path(&deployment_id)).await?;
            (current.state == "halted").then_some(current)
        },
    )
    .await;
    assert_eq!(halted.wave, 0, "it halted in the first wave: {halted:?}");

    let member_state = |device: &Device| {
        halted
            .members
            .iter()
            .find(|m| m.device_id == device.id)
            .map(|member| member.state.clone())
    };
    for device in &second {
        assert_eq!(
            member_state(device).as_deref(),
            Some("pending"),
            "{} of the second wave was never offered 2.0.0: {halted:?}",
            device.id
        );
        let state = device.boot_state();
        assert_eq!(*state.slot(Slot::B), SlotStatus::Empty, "{}", device.id);
        assert!(
            !device.dir.join("downloads/installed-offer.json").exists(),
            "{} installed nothing",
            device.id
        );
    }

    // The first wave: 2.0.0 installed into slot B, crashed on each trial boot until the
    // boot monitor gave it up, and 1.0.0 runs again from slot A, reporting.
    wait_for(
        "the first wave to report its rollback and its crashes",
        ROLLOUT_LIMIT,
        &devices,
        async || {
            for device in &first {
                let current: StoredDeployment = api.get(&deployment_path(&deployment_id)).await?;
                let state = current
                    .members
                    .iter()
                    .find(|m| m.device_id == device.id)
                    .map(|m| m.state.as_str());
                if state != Some("rolled-back") {
                    return None;
                }
                let query = ReportsQuery {
                    device: Some(device.id.clone()),
                    ..ReportsQuery::default()
                };
                let reports: Vec<StoredReport> = api.get_with("/api/v1/reports", &query).await?;
                let crashes = reports
                    .iter()
                    .filter(|r| r.image_version == "2.0.0" && r.kind == "exited")
                    .count();
                if crashes < 3 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for device in &first {
        let state = device.boot_state();
        assert_eq!(
            *state.slot(Slot::B),
            SlotStatus::Failed {
                image: state.slot(Slot::B).image().copied(),
                reason: FailureReason::CrashedTooOften(3),
            },
            "{}: 2.0.0 was given up after three crashes on trial",
            device.id
        );
        assert_eq!(
            state.slot(Slot::B).image().map(|image| image.version),
            Some([2, 0, 0])
        );
    }

    // Every unit is back on 1.0.0 from slot A, connected and attested again (after a
    // reboot the measurement register holds 1.0.0 alone, as a known release).
    let created_ms = deployment.created_ms;
    wait_for(
        "every unit to run 1.0.0 again and attest as trusted",
        Duration::from_secs(30),
        &devices,
        async || {
            for device in &devices {
                let state = device.boot_state();
                if state.primary() != Some(Slot::A)
                    || confirmed_version(&state, Slot::A) != Some([1, 0, 0])
                {
                    return None;
                }
                let record = api.registered(&device.id).await?;
                if record.attestation != "trusted" || record.image_version != "1.0.0" {
                    return None;
                }
                let rebooted = first.iter().any(|d| d.id == device.id);
                if rebooted && record.attested_ms.unwrap_or(0) < created_ms {
                    return None; // not attested since its reboot into 1.0.0 yet
                }
            }
            Some(())
        },
    )
    .await;
    let after: Option<StoredDeployment> = api.get(&deployment_path(&deployment_id)).await;
    assert_eq!(
        after.as_ref().map(|d| d.state.as_str()),
        Some("halted"),
        "it stays halted: {after:?}"
    );

    if std::env::var_os("WARDEN_ROLLOUT_LOGS").is_some() {
        for device in &first {
            eprintln!("{}", device.log());
        }
    }
    for device in &mut devices {
        device.stop();
    }
    shutdown.cancel();
    fleet.stopped().await;
}
