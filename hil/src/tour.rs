//! `warden demo`'s guided tour: one unit provisioned by the station's own code path,
//! booted through the boot stage, updated by a staged rollout that confirms and by one
//! that crashes on trial, rolls back, reports and halts.
//!
//! Real pieces only: the fleet service (embedded broker, SQLite), the station's library
//! (`warden-provision`: product, manufacturer CA, pluton identity, self-test, lock,
//! registration) and `warden boot … -- run` (pluton, slot selection, verification,
//! measurement, trial boots, crash reports, rollback). The tour plays the vendor
//! (release key, signed images) and the fleet operator (uploads, deployments).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, load_secret_key, save_public_key, save_secret_key,
};
use warden_provision::layout::UnitLayout;
use warden_wire::fleet_api::{
    DEFAULT_GROUP, DEPLOYMENTS_PATH, DeploymentRequest, ReportsQuery, StoredDeployment,
    StoredReport, WaveSize, deployment_path,
};

use crate::demo::{DemoPorts, start_equipment};
use crate::demo_pki::DemoPki;
use crate::fleet_operator::FleetApi;
use crate::modbus_tcp_slave::SimulatedSlave;
use crate::script_images::{ImageSigner, crashes, runs_warden, script_image};

/// The tour unit's product (images and the station name it).
pub const PRODUCT: &str = "warden-demo";
/// The tour unit's serial number.
pub const SERIAL: &str = "DEMO-0001";
/// The images' security counter (one for all: the tour never raises the floor).
const SECURITY_COUNTER: u64 = 1;
/// The manufacturer CA's passphrase (throwaway, like every key of the demo).
const CA_PASSPHRASE: &str = "warden demo station passphrase";
/// The longest any one step may take before the tour gives up and says which.
const STEP_LIMIT: Duration = Duration::from_secs(90);
/// The hidden `warden` command that serves the station's pluton for the tour's unit
/// (`warden-provision pluton` in a factory).
pub const STATION_PLUTON_COMMAND: &str = "demo-station-pluton";
/// The release that confirms on its trial boot.
pub const GOOD_UPDATE: [u32; 3] = [1, 1, 0];
/// The release that crashes on every trial boot.
pub const BAD_UPDATE: [u32; 3] = [1, 2, 0];

/// One step of the tour, reported as it is reached.
#[derive(Debug, Clone)]
pub struct TourStep {
    /// 1-based step number (0: the world is up).
    pub number: u32,
    /// What happened.
    pub what: String,
    /// The dashboard page (or API URL) that shows it.
    pub url: String,
}

/// The running tour: fleet, equipment and the unit's boot stage.
pub struct Tour {
    /// The fleet's PKI, API token and vendor root (throwaway).
    pub pki: DemoPki,
    /// The fleet service.
    pub fleet: warden_fleet::RunningFleet,
    /// The simulated device the unit polls.
    pub equipment: SimulatedSlave,
    /// The unit's root file system, as the station wrote it.
    pub unit: UnitLayout,
    /// The unit's device ID.
    pub device_id: String,
    /// The status page the unit serves.
    pub status_listen: SocketAddr,
    /// The status page's password, from the unit's label.
    pub status_password: String,
    /// `warden boot`, the unit's boot stage (its output in `boot.log`).
    boot: tokio::process::Child,
    api: FleetApi,
    signer_key: SecretSigningKey,
    signer_cert: Vec<u8>,
    warden: PathBuf,
    state_dir: PathBuf,
}

impl Tour {
    /// Starts the fleet and the equipment under `state_dir` (emptied first: the tour
    /// provisions a new unit each time), then provisions the unit and boots it. Every
    /// step reached is passed to `report`.
    pub async fn start(
        state_dir: &Path,
        ports: DemoPorts,
        warden: &Path,
        shutdown: CancellationToken,
        report: &mut (dyn FnMut(TourStep) + Send),
    ) -> anyhow::Result<Self> {
        if state_dir.exists() {
            std::fs::remove_dir_all(state_dir)
                .with_context(|| format!("cannot empty {}", state_dir.display()))?;
        }
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let state_dir = std::path::absolute(state_dir)
            .with_context(|| format!("{} has no absolute path", state_dir.display()))?;
        check_socket_paths(&state_dir)?;
        let pki = DemoPki::generate(&state_dir.join("pki"))?;

        let equipment = start_equipment(ports.equipment, shutdown.clone()).await?;
        // Quick rollout steps and attestation at every connect: the tour is short.
        let mut fleet_config = pki.fleet_config(&state_dir, ports.fleet_http, ports.fleet_mqtt);
        fleet_config.rollouts.tick_ms = 200;
        fleet_config.rollouts.attestation_interval_secs = 0;
        let fleet = warden_fleet::start(&fleet_config, shutdown).await?;
        let base = format!("http://{}", fleet.http_address);
        let api = FleetApi {
            base: base.clone(),
            token: pki.fleet_token()?,
            http: reqwest::Client::new(),
        };
        report(TourStep {
            number: 0,
            what: "fleet and simulated equipment are up; no unit registered yet".into(),
            url: format!("{base}/"),
        });

        // The vendor: a release key certified by the vendor root for images and
        // policy bundles; the factory image 1.0.0 runs this very `warden`.
        let vendor_root = load_secret_key(&pki.vendor_root_key).context("the vendor root key")?;
        let signer_key = SecretSigningKey::generate().context("a release key")?;
        let signer_cert = issue_release_cert(
            &vendor_root,
            &signer_key.public_key(),
            Purpose::IMAGE | Purpose::POLICY,
            1,
        )
        .context("the release certificate")?;
        let status_listen = status_address(ports.status_page)?;
        let factory = Factory::write(
            &state_dir.join("factory"),
            &pki,
            &signer_key,
            &signer_cert,
            warden,
            FactoryAddresses {
                fleet_http: fleet.http_address,
                fleet_mqtt: fleet.mqtt_address,
                equipment: equipment.address(),
                status_page: status_listen,
            },
        )?;

        // 1. The station, through its library: product and manufacturer CA at the
        // fleet, the unit's identity in its pluton, self-test, lock, registration.
        report(TourStep {
            number: 1,
            what: format!(
                "the provisioning station provisions unit {SERIAL} (its self-test boots the \
                 factory image from slot A, B, then A: each prints its version)"
            ),
            url: format!("{base}/"),
        });
        let started = Instant::now();
        let station_file = factory.station_file.clone();
        let pluton_exe = factory.station_pluton.clone();
        let provisioned =
            tokio::task::spawn_blocking(move || provision(&station_file, &pluton_exe)).await??;
        let unit = provisioned.layout;
        let device_id = provisioned.device_id;
        report(TourStep {
            number: 1,
            what: format!(
                "unit {SERIAL} provisioned by the station in {:.1} s: identity {device_id} in its pluton, \
                 certificate from the manufacturer CA, product {PRODUCT}, registered (1 registered)",
                started.elapsed().as_secs_f64()
            ),
            url: format!("{base}/devices/{device_id}"),
        });

        // 2. The boot stage boots the factory image; the fleet knows 1.0.0 as a release,
        // so the unit's measured image attests as that release.
        api.upload(factory.first_image.clone()).await?;
        let boot = start_boot(warden, &unit, &state_dir)?;
        let status_password = label_password(&unit)?;
        let tour = Self {
            pki,
            fleet,
            equipment,
            unit,
            device_id,
            status_listen,
            status_password,
            boot,
            api,
            signer_key,
            signer_cert,
            warden: warden.to_owned(),
            state_dir,
        };
        tour.wait_for(
            "the unit to boot 1.0.0 and attest as trusted",
            async |tour| {
                let record = tour.api.registered(&tour.device_id).await?;
                (record.attestation == "trusted" && record.image_version == "1.0.0").then_some(())
            },
        )
        .await?;
        report(TourStep {
            number: 2,
            what: "unit booted by `warden boot` from slot A (signed image 1.0.0, measured), \
                   connected, attested: trusted, release 1.0.0"
                .into(),
            url: format!("{base}/devices/{}", tour.device_id),
        });
        Ok(tour)
    }

    /// Rolls out 1.1.0 (confirmed on its trial boot), then 1.2.0 (crashes on trial,
    /// rolled back, reported, the rollout halted), reporting each step.
    pub async fn run_rollouts(
        &mut self,
        report: &mut (dyn FnMut(TourStep) + Send),
    ) -> anyhow::Result<()> {
        let base = self.api.base.clone();
        // 3. A staged rollout of 1.1.0.
        let good = script_image(
            &self.signer(),
            PRODUCT,
            GOOD_UPDATE,
            SECURITY_COUNTER,
            &runs_warden(&self.warden),
        )?;
        let deployment = self.deploy(good).await?;
        report(TourStep {
            number: 3,
            what: format!(
                "staged rollout {} of 1.1.0 created: the unit downloads it into slot B and boots it on trial",
                deployment.id
            ),
            url: format!("{base}/deployments"),
        });
        self.wait_for("the 1.1.0 rollout to complete", async |tour| {
            let current: StoredDeployment = tour.api.get(&deployment_path(&deployment.id)).await?;
            (current.state == "completed").then_some(())
        })
        .await?;
        self.wait_for(
            "the unit to attest as trusted with release 1.1.0",
            async |tour| tour.attested_since("1.1.0", deployment.created_ms).await,
        )
        .await?;
        report(TourStep {
            number: 3,
            what: "1.1.0 confirmed itself on its trial boot; rollout complete; the unit attests: \
                   trusted, release 1.1.0"
                .into(),
            url: format!("{base}/devices/{}", self.device_id),
        });

        // 4. A 1.2.0 that cannot start.
        let bad = script_image(
            &self.signer(),
            PRODUCT,
            BAD_UPDATE,
            SECURITY_COUNTER,
            &crashes(BAD_UPDATE),
        )?;
        let deployment = self.deploy(bad).await?;
        report(TourStep {
            number: 4,
            what: format!(
                "staged rollout {} of 1.2.0 created: this image crashes as soon as it starts",
                deployment.id
            ),
            url: format!("{base}/deployments"),
        });
        self.wait_for(
            "the 1.2.0 rollout to halt with the unit rolled back",
            async |tour| {
                let current: StoredDeployment =
                    tour.api.get(&deployment_path(&deployment.id)).await?;
                let member = current
                    .members
                    .iter()
                    .find(|member| member.device_id == tour.device_id)?;
                (current.state == "halted" && member.state == "rolled-back").then_some(())
            },
        )
        .await?;
        let reports = self
            .wait_for("the unit's failure reports on 1.2.0", async |tour| {
                let query = ReportsQuery {
                    device: Some(tour.device_id.clone()),
                    ..ReportsQuery::default()
                };
                let reports: Vec<StoredReport> =
                    tour.api.get_with("/api/v1/reports", &query).await?;
                let crashes = reports
                    .iter()
                    .filter(|report| report.image_version == "1.2.0")
                    .count();
                (crashes > 0).then_some(crashes)
            })
            .await?;
        self.wait_for(
            "the unit to run 1.1.0 again and attest as trusted",
            async |tour| tour.attested_since("1.1.0", deployment.created_ms).await,
        )
        .await?;
        report(TourStep {
            number: 4,
            what: format!(
                "1.2.0 crashed on its trial boots and was given up; the unit rolled back to 1.1.0 \
                 (trusted), filed {reports} failure report(s) on 1.2.0, and the rollout halted"
            ),
            url: format!("{base}/reports"),
        });
        Ok(())
    }

    /// The boot stage's log (the unit's console).
    pub fn boot_log(&self) -> PathBuf {
        self.state_dir.join("boot.log")
    }

    /// Stops the boot stage with SIGTERM (it stops the image and pluton first), then
    /// the fleet and the equipment (`shutdown`).
    pub async fn stop(mut self, shutdown: &CancellationToken) {
        if let Some(pid) = self.boot.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.boot.wait())
            .await
            .is_err()
        {
            let _ = self.boot.kill().await;
        }
        shutdown.cancel();
        self.fleet.stopped().await;
    }

    /// `Some` once the unit runs `version` and attested as trusted after `since_ms` (so
    /// after the reboot the deployment made).
    async fn attested_since(&self, version: &str, since_ms: i64) -> Option<()> {
        let record = self.api.registered(&self.device_id).await?;
        (record.attestation == "trusted"
            && record.image_version == version
            && record.attested_ms.unwrap_or(0) >= since_ms)
            .then_some(())
    }

    fn signer(&self) -> ImageSigner<'_> {
        ImageSigner {
            release_key: &self.signer_key,
            release_cert: &self.signer_cert,
        }
    }

    /// Uploads `image` and deploys it to the default group in one wave of one unit.
    async fn deploy(&self, image: Vec<u8>) -> anyhow::Result<StoredDeployment> {
        let sha256 = self.api.upload(image).await?;
        let request = DeploymentRequest {
            waves: vec![WaveSize::Count(1)],
            success_threshold: 1.0,
            failure_threshold: 0.5,
            ..DeploymentRequest::new(sha256, DEFAULT_GROUP)
        };
        let (status, body) = self.api.post(DEPLOYMENTS_PATH, &request).await?;
        if status != 201 {
            bail!("the fleet refused the deployment: {status} {body}");
        }
        serde_json::from_value(body).context("the fleet's deployment record")
    }

    /// Polls `check` every 200 ms until it gives a value; after [`STEP_LIMIT`], fails
    /// naming `what` with the tail of the unit's console.
    async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            if let Some(value) = check(self).await {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {} s waiting for {what}; the unit's console ({}) ends:\n{}",
                    STEP_LIMIT.as_secs(),
                    self.boot_log().display(),
                    log_tail(&self.boot_log())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last few KiB of `path`.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// `127.0.0.1:port`; port 0 picks a free port now (the unit's config needs a number).
fn status_address(port: u16) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("the status page's port {port} is taken"))?;
    listener.local_addr().context("the status page's address")
}

/// The status page password printed on the unit's label by the station.
fn label_password(unit: &UnitLayout) -> anyhow::Result<String> {
    let label = std::fs::read_to_string(unit.label_text())
        .with_context(|| format!("the unit's label {}", unit.label_text().display()))?;
    label
        .lines()
        .find_map(|line| line.trim().strip_prefix("STATUS PAGE PASSWORD "))
        .map(|password| password.trim().to_owned())
        .with_context(|| format!("no status page password on {}", unit.label_text().display()))
}

/// Where the factory's inputs are.
struct Factory {
    station_file: PathBuf,
    /// What the station starts as `<exe> pluton --socket … --state-dir …`.
    station_pluton: PathBuf,
    first_image: Vec<u8>,
}

/// Addresses the unit's config template names.
struct FactoryAddresses {
    fleet_http: SocketAddr,
    fleet_mqtt: SocketAddr,
    equipment: SocketAddr,
    status_page: SocketAddr,
}

impl Factory {
    /// Writes the station's inputs under `dir`: vendor root, signed factory image
    /// (1.0.0), policy bundle, appliance config template, manufacturer CA, station.toml.
    fn write(
        dir: &Path,
        pki: &DemoPki,
        release_key: &SecretSigningKey,
        release_cert: &[u8],
        warden: &Path,
        addresses: FactoryAddresses,
    ) -> anyhow::Result<Self> {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        save_public_key(
            &keys.join("vendor-root.pub.pem"),
            &pki.vendor_root_public_key()?,
        )?;
        save_secret_key(&keys.join("release.pem"), release_key)?;
        write(&keys.join("release.cert"), release_cert)?;

        let signer = ImageSigner {
            release_key,
            release_cert,
        };
        let first_image = script_image(
            &signer,
            PRODUCT,
            [1, 0, 0],
            SECURITY_COUNTER,
            &runs_warden(warden),
        )?;
        write(&dir.join("factory.wim"), &first_image)?;

        write(
            &dir.join("policy.toml"),
            crate::demo::DEMO_POLICY.as_bytes(),
        )?;
        let (bundle, _) = warden_policy::bundle::build::build_bundle_from_files(
            &dir.join("policy.toml"),
            warden_policy::bundle::ProductId::new(PRODUCT)
                .with_context(|| format!("{PRODUCT:?} is not a bundle product ID"))?,
            1,
            &keys.join("release.pem"),
            &keys.join("release.cert"),
        )
        .context("building the factory policy bundle")?;
        write(&dir.join("policy.bundle"), &bundle)?;
        write(
            &dir.join("warden.toml"),
            unit_template(&addresses)?.as_bytes(),
        )?;

        warden_provision::ca::init(
            &dir.join("ca"),
            &warden_provision::ca::CaSubject {
                common_name: "Warden demo manufacturer CA",
                organization: "Warden demo",
                valid_years: warden_provision::ca::CA_VALID_YEARS,
            },
            CA_PASSPHRASE.as_bytes(),
            warden_provision::key_envelope::KdfCost::default(),
        )?;
        let station = format!(
            r#"# The demo's provisioning station (the one `warden-provision unit` reads).
product = "{PRODUCT}"
group = "{DEFAULT_GROUP}"
ca_dir = "ca"
units_dir = "{units}"
factory_image = "factory.wim"
policy_bundle = "policy.bundle"
config_template = "warden.toml"
policy_file = "policy.toml"
fleet_ca = "{fleet_ca}"

[[vendor_root]]
public_key = "keys/vendor-root.pub.pem"
purposes = ["image", "policy"]

[selftest]
probe_args = ["--version"]
probe_timeout_secs = 20

[fleet]
url = "http://{fleet_http}"
token_file = "{token}"
timeout_secs = 10
"#,
            units = units_dir(dir).display(),
            fleet_ca = pki.fleet_ca.display(),
            fleet_http = addresses.fleet_http,
            token = pki.fleet_api_token.display(),
        );
        let station_file = dir.join("station.toml");
        write(&station_file, station.as_bytes())?;
        // The station runs each unit's pluton as `<exe> pluton …`, which in a factory is
        // `warden-provision pluton`; here this `warden` serves it (exec: the station
        // stays its parent, as the role checks).
        let station_pluton = dir.join("station-pluton");
        let script = format!(
            "#!/bin/sh\n# `pluton --socket … --state-dir …` from the station.\nshift\nexec '{}' {STATION_PLUTON_COMMAND} \"$@\"\n",
            warden.display()
        );
        warden_files::write_file_atomically_with_mode(&station_pluton, script.as_bytes(), 0o755)
            .with_context(|| format!("cannot write {}", station_pluton.display()))?;
        Ok(Self {
            station_file,
            station_pluton,
            first_image,
        })
    }
}

/// The appliance config template: the quick demo's config, with the unit's paths
/// (relative to `etc/warden`) and the boot stage's updates and reports.
fn unit_template(addresses: &FactoryAddresses) -> anyhow::Result<String> {
    let text = crate::demo::APPLIANCE_CONFIG_TEMPLATE
        .replace("{{DEVICE_ID}}", "set-by-station")
        .replace("{{DEVICE_CERT}}", "set-by-station.pem")
        .replace("{{EQUIPMENT}}", &addresses.equipment.to_string())
        .replace("{{BROKER_PORT}}", &addresses.fleet_mqtt.port().to_string())
        .replace("{{STATUS_LISTEN}}", &addresses.status_page.to_string())
        .replace(
            "{{DEVICE_KEY}}",
            &format!("pluton_socket = \"../../{PLUTON_SOCKET}\""),
        );
    let mut table: toml::Table = toml::from_str(&text).context("the demo's config template")?;
    let set = |table: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        if let Some(section) = table.get_mut(section).and_then(toml::Value::as_table_mut) {
            section.insert(key.into(), value);
        }
    };
    set(
        &mut table,
        "policy",
        "bundle_dir",
        "../../var/lib/warden/policy-bundles".into(),
    );
    if let Some(link) = table.get_mut("link").and_then(toml::Value::as_table_mut) {
        link.insert("batch_interval_ms".into(), 200.into());
        if let Some(outbox) = link.get_mut("outbox").and_then(toml::Value::as_table_mut) {
            outbox.insert("dir".into(), "../../var/lib/warden/appliance/outbox".into());
        }
    }
    set(
        &mut table,
        "status_page",
        "password_file",
        "../../var/lib/warden/appliance/status-page/password.phc".into(),
    );
    // Its TLS key and control socket under run/: a socket path must stay under 108
    // bytes, and the unit's root is deep inside the demo's state directory.
    set(
        &mut table,
        "status_page",
        "state_dir",
        STATUS_PAGE_STATE.into(),
    );
    let mut updates = toml::Table::new();
    updates.insert("state_dir".into(), "../../var/lib/warden".into());
    updates.insert(
        "download_dir".into(),
        "../../var/lib/warden/downloads".into(),
    );
    updates.insert(
        "capability_file".into(),
        "../../var/lib/warden/pluton/provisioning.capability".into(),
    );
    table.insert("updates".into(), updates.into());
    let mut reports = toml::Table::new();
    reports.insert("dir".into(), REPORT_DIR.into());
    reports.insert("scan_interval_secs".into(), 1.into());
    table.insert("reports".into(), reports.into());
    toml::to_string(&table).context("the unit's config template")
}

/// The status page's state (TLS key, control socket), relative to `etc/warden`.
const STATUS_PAGE_STATE: &str = "../../run/status-page";
/// Pluton's socket on the unit, relative to its root.
const PLUTON_SOCKET: &str = "run/warden/pluton.sock";
/// The failure-report ring, relative to `etc/warden` (the boot stage and the appliance
/// share it).
const REPORT_DIR: &str = "../../var/lib/warden/reports";

/// Where the station puts its units: beside the factory, not below it (short paths).
fn units_dir(factory: &Path) -> PathBuf {
    factory.parent().unwrap_or(factory).join("units")
}

/// The longest socket path the unit will bind (the status page's control socket),
/// checked before anything starts: a Unix socket path has at most 107 bytes.
fn check_socket_paths(state_dir: &Path) -> anyhow::Result<()> {
    let unit = UnitLayout::for_serial(&units_dir(&state_dir.join("factory")), SERIAL);
    let control = unit
        .config_dir()
        .join(STATUS_PAGE_STATE)
        .join("control.sock");
    let length = control.as_os_str().len();
    if length > 107 {
        bail!(
            "the unit's control socket would be {} ({length} bytes, over the 107 a socket \
             path may have): choose a shorter --state-dir",
            control.display()
        );
    }
    Ok(())
}

/// What the station made.
struct Provisioned {
    layout: UnitLayout,
    device_id: String,
}

/// The station's own code path: `warden-provision unit` without its command line.
fn provision(station_file: &Path, pluton_exe: &Path) -> anyhow::Result<Provisioned> {
    let config = warden_provision::station::StationConfig::load(station_file)?;
    let ca = warden_provision::ca::ManufacturerCa::open(&config.ca_dir, CA_PASSPHRASE.as_bytes())?;
    let station =
        warden_provision::station_context::Station::open(config, ca, pluton_exe.to_owned())?;
    let unit = warden_provision::unit::provision_unit(&station, SERIAL)?;
    let device_id = unit
        .record
        .device_id
        .context("the station's record names no device ID")?;
    Ok(Provisioned {
        layout: UnitLayout::for_serial(station.units_dir(), SERIAL),
        device_id,
    })
}

/// Serves the station's pluton for the tour's unit (software keys, one caller: the
/// station), until the station stops it.
pub fn run_station_pluton(socket: &Path, state_dir: &Path) -> anyhow::Result<()> {
    warden_provision::pluton_process::run_role(
        socket,
        state_dir,
        warden_pluton::server::Backend::Software,
    )
    .context("the station's pluton")
}

/// Starts `warden boot` on the unit's root, its output in `state_dir/boot.log`.
fn start_boot(
    warden: &Path,
    unit: &UnitLayout,
    state_dir: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let log_path = state_dir.join("boot.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let root = unit.root();
    tokio::process::Command::new(warden)
        .arg("boot")
        .arg("--state-dir")
        .arg(unit.boot_root())
        .arg("--run-dir")
        .arg(root.join("run/warden/image"))
        .arg("--product")
        .arg(PRODUCT)
        .arg("--pluton-state-dir")
        .arg(unit.pluton_state_dir())
        .arg("--pluton-socket")
        .arg(root.join(PLUTON_SOCKET))
        .arg("--report-dir")
        .arg(unit.config_dir().join(REPORT_DIR))
        .arg("--trial-deadline-secs")
        .arg("60")
        .arg("--restart-backoff-initial-ms")
        .arg("200")
        .arg("--restart-backoff-max-ms")
        .arg("2000")
        .arg("--")
        .arg("run")
        .arg("--config")
        .arg(unit.config_file())
        .env("RUST_LOG", "info,sqlx=warn,rumqttc=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("boot.log")?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `warden boot`")
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    warden_files::write_file_atomically(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
