//! End-to-end scenarios that run the `warden` binary as a process.
//!
//! `hil` never links the appliance: a scenario takes the path of a built `warden`
//! binary (tests in `appliance/tests` pass `CARGO_BIN_EXE_warden`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warden_bridges::modbus::pdu::{FunctionCode, Request};
use warden_bridges::modbus::tcp_client::{Answer, TcpClient};
use warden_wire::fleet_api::{
    Attestation, CommandView, DesiredRequest, StoredReading, TelemetryQuery, TelemetryResponse,
    TwinView, WriteRequest, device_path, telemetry_path,
};

/// The addresses `warden demo` printed.
#[derive(Debug, Clone, Default)]
pub struct DemoUrls {
    /// `http://host:port` of the fleet.
    pub fleet: String,
    /// `https://host:port` of the status page.
    pub status_page: String,
    /// The status page's operator password (the demo prints it as its "label").
    pub status_password: String,
    /// SHA-256 fingerprint of the status page's certificate (`AA:BB:…`).
    pub status_fingerprint: String,
    /// `http://host:port/metrics`, if the demo printed it.
    pub metrics: String,
    /// `host:port` of the simulated device.
    pub equipment: String,
    /// The device ID.
    pub device_id: String,
    /// The fleet API token (admin role) from `pki/fleet-api.token`.
    pub fleet_token: String,
}

/// A `warden demo` process; killed if dropped while running.
pub struct DemoProcess {
    child: Child,
    /// What it printed.
    pub urls: DemoUrls,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl DemoProcess {
    /// Starts `warden demo --quick --ephemeral-ports` (the minimal demo, no tour) and
    /// waits (up to 60 s) for its URLs.
    pub async fn start(warden_bin: &Path, state_dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(warden_bin)
            .args(["demo", "--quick", "--ephemeral-ports", "--state-dir"])
            .arg(state_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", warden_bin.display()))?;
        let stdout = child.stdout.take().context("demo stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = DemoUrls::default();
        let read = async {
            while let Some(line) = lines.next_line().await? {
                let value = |label: &str| line.split_once(label).map(|(_, v)| v.trim().to_owned());
                if let Some(v) = value("fleet dashboard:") {
                    urls.fleet = v.trim_end_matches('/').to_owned();
                } else if let Some(v) = value("status page:") {
                    urls.status_page = v.trim_end_matches('/').to_owned();
                } else if let Some(v) = value("status password:") {
                    urls.status_password =
                        v.split_whitespace().next().unwrap_or_default().to_owned();
                } else if let Some(v) = value("status page cert: SHA-256") {
                    urls.status_fingerprint =
                        v.split_whitespace().next().unwrap_or_default().to_owned();
                } else if let Some(v) = value("metrics:") {
                    urls.metrics = v;
                } else if let Some(v) = value("simulated device:") {
                    let address = v.trim_start_matches("modbus-tcp://");
                    urls.equipment = address
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                } else if let Some(v) = value("device telemetry:") {
                    let id = v
                        .trim_end_matches("/telemetry")
                        .rsplit('/')
                        .next()
                        .unwrap_or_default();
                    urls.device_id = id.to_owned();
                }
                if line.contains("Ctrl-C stops") {
                    return anyhow::Ok(());
                }
            }
            bail!("the demo exited before printing its URLs")
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .context("the demo printed no URLs within 60 s")??;
        // Keep draining stdout so the demo never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ensure!(
            !urls.fleet.is_empty() && !urls.equipment.is_empty() && !urls.device_id.is_empty(),
            "incomplete demo output: {urls:?}"
        );
        let token_file = state_dir.join("pki").join("fleet-api.token");
        urls.fleet_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(Self {
            child,
            urls,
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// Sends SIGTERM and waits (up to 20 s) for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("the demo already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .context("the demo did not stop within 20 s of SIGTERM")??;
        ensure!(exit.success(), "the demo exited with {exit}");
        Ok(())
    }
}

/// A point of the appliance config, as far as a scenario needs it.
#[derive(Debug, Clone, Deserialize)]
struct ConfiguredPoint {
    name: String,
    address: u16,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
}

fn one() -> f64 {
    1.0
}

/// Finds a point of the first Modbus TCP bridge in the config the demo wrote.
fn configured_point(state_dir: &Path, name: &str) -> anyhow::Result<ConfiguredPoint> {
    let path = state_dir.join("warden.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: toml::Value = toml::from_str(&text)?;
    let points = config
        .get("bridges")
        .and_then(|b| b.get("modbus_tcp"))
        .and_then(|b| b.get(0))
        .and_then(|b| b.get("points"))
        .cloned()
        .context("the demo config has no Modbus TCP points")?;
    let points: Vec<ConfiguredPoint> = points.try_into()?;
    points
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("no point {name} in the demo config"))
}

/// Latest readings of `point` from the fleet API, newest first (empty while unknown).
async fn fleet_readings(
    http: &reqwest::Client,
    urls: &DemoUrls,
    point: &str,
) -> anyhow::Result<Vec<StoredReading>> {
    let url = format!("{}{}", urls.fleet, telemetry_path(&urls.device_id));
    let query = TelemetryQuery {
        point: Some(point.to_owned()),
        limit: Some(20),
        ..TelemetryQuery::default()
    };
    let response = http.get(&url).query(&query).send().await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    Ok(response
        .error_for_status()?
        .json::<TelemetryResponse>()
        .await?
        .readings)
}

/// Reads one holding register straight from the simulated device.
async fn read_register(equipment: &str, address: u16) -> anyhow::Result<u16> {
    let mut client = TcpClient::connect(equipment, Duration::from_secs(2)).await?;
    let request = Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address,
        count: 1,
    };
    match client.call(1, &request).await? {
        Answer::Registers(values) if values.len() == 1 => Ok(values[0]),
        other => bail!("unexpected answer {other:?} for register {address}"),
    }
}

/// What [`telemetry_reaches_fleet`] observed.
#[derive(Debug)]
pub struct TelemetryReport {
    /// The value the fleet stored for the constant point.
    pub setpoint: f64,
    /// Distinct values of the ramping point seen at the fleet.
    pub temperatures: Vec<f64>,
}

/// The walking skeleton, end to end: a register value of the simulated device
/// arrives at the fleet API with the configured scaling, values keep changing, and
/// the demo stops cleanly on SIGTERM with its store intact.
pub async fn telemetry_reaches_fleet(
    warden_bin: &Path,
    state_dir: &Path,
) -> anyhow::Result<TelemetryReport> {
    let demo = DemoProcess::start(warden_bin, state_dir).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    // A constant register: the fleet must hold exactly raw × scale + offset.
    let setpoint = configured_point(state_dir, "spindle_setpoint")?;
    let raw = read_register(&demo.urls.equipment, setpoint.address).await?;
    let expected = f64::from(raw) * setpoint.scale + setpoint.offset;
    let stored = poll_until(Duration::from_secs(30), || async {
        Ok(fleet_readings(&http, &demo.urls, "line1/spindle_setpoint")
            .await?
            .first()
            .and_then(StoredReading::number))
    })
    .await
    .context("no spindle_setpoint reading reached the fleet within 30 s")?;
    ensure!(
        stored == expected,
        "fleet holds {stored}, device register {raw} scaled is {expected}"
    );

    // A ramping register: the fleet must see it change, each value scaled from a raw
    // register value the device really produces.
    let temperature = configured_point(state_dir, "oil_temperature")?;
    let mut seen: Vec<f64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        for reading in fleet_readings(&http, &demo.urls, "line1/oil_temperature").await? {
            let value = reading
                .number()
                .with_context(|| format!("oil_temperature holds no number: {reading:?}"))?;
            let raw = (value - temperature.offset) / temperature.scale;
            ensure!(
                (raw - raw.round()).abs() < 1e-6,
                "value {value} at {} is not a scaled register value",
                reading.ts_ms
            );
            if !seen.contains(&value) {
                seen.push(value);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ensure!(
        seen.len() >= 2,
        "the fleet saw oil_temperature stay at {seen:?} for 30 s"
    );

    demo.stop().await?;
    let store = warden_fleet::store::Store::open(&format!(
        "sqlite://{}",
        state_dir.join("fleet.db").display()
    ))
    .await?;
    let devices = store.devices().await?;
    store.close().await;
    ensure!(
        devices.len() == 1 && !devices[0].latest.is_empty(),
        "store after shutdown: {devices:?}"
    );
    Ok(TelemetryReport {
        setpoint: stored,
        temperatures: seen,
    })
}

async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("gave up after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the fleet holds a reading of `point` for the demo's device.
pub async fn wait_for_reading(demo: &DemoProcess, point: &str) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    poll_until(Duration::from_secs(30), || async {
        Ok(fleet_readings(&http, &demo.urls, point)
            .await?
            .first()
            .and_then(StoredReading::number))
    })
    .await
    .with_context(|| format!("no {point} reading reached the fleet within 30 s"))
}

/// A write request for `point` of `bridge`, with a command ID if given.
fn write(bridge: &str, point: &str, value: f64, id: Option<String>) -> WriteRequest {
    WriteRequest {
        bridge: bridge.to_owned(),
        point: point.to_owned(),
        value,
        id,
    }
}

/// Sends a write command through the fleet API and waits (up to 20 s) for its result.
async fn command(
    http: &reqwest::Client,
    urls: &DemoUrls,
    body: WriteRequest,
) -> anyhow::Result<CommandView> {
    let url = format!("{}{}/commands", urls.fleet, device_path(&urls.device_id));
    let sent: CommandView = http
        .post(&url)
        .bearer_auth(&urls.fleet_token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let status_url = format!("{url}/{}", sent.id);
    poll_until(Duration::from_secs(20), || async {
        let view: CommandView = http
            .get(&status_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((view.status != "sent").then_some(view))
    })
    .await
    .with_context(|| format!("command {} got no result", sent.id))
}

/// Commands, end to end: a write the policy allows reaches the equipment; one it
/// denies never does; a repeated command ID is not executed twice.
pub async fn commands_pass_the_policy(warden_bin: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let demo = DemoProcess::start(warden_bin, state_dir).await?;
    wait_for_reading(&demo, "line1/spindle_setpoint").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let setpoint = configured_point(state_dir, "spindle_setpoint")?;

    let allowed = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 1200.0, Some("set-1200".into())),
    )
    .await?;
    ensure!(
        allowed.status == "written",
        "allowed write ended {allowed:?}"
    );
    ensure!(
        read_register(&demo.urls.equipment, setpoint.address).await? == 1200,
        "the register did not change"
    );

    let denied = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 5000.0, None),
    )
    .await?;
    ensure!(
        denied.status == "denied",
        "out-of-range write ended {denied:?}"
    );
    ensure!(!denied.detail.is_empty(), "a denial must say why");
    ensure!(
        read_register(&demo.urls.equipment, setpoint.address).await? == 1200,
        "a denied write reached the equipment"
    );

    // Another write moves the register on, so a re-executed `set-1200` would show.
    let other = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 1100.0, Some("set-1100".into())),
    )
    .await?;
    ensure!(other.status == "written", "second write ended {other:?}");
    let repeated = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 1200.0, Some("set-1200".into())),
    )
    .await?;
    ensure!(
        repeated.status == "written" && repeated.id == "set-1200",
        "repeated id answered {repeated:?}"
    );
    ensure!(
        read_register(&demo.urls.equipment, setpoint.address).await? == 1100,
        "a repeated command id was executed again"
    );
    // The same ID with another body is a conflict, not the old command.
    let url = format!(
        "{}{}/commands",
        demo.urls.fleet,
        device_path(&demo.urls.device_id)
    );
    let reused = http
        .post(&url)
        .bearer_auth(&demo.urls.fleet_token)
        .json(&write(
            "line1",
            "spindle_setpoint",
            900.0,
            Some("set-1200".into()),
        ))
        .send()
        .await?
        .status();
    ensure!(
        reused == reqwest::StatusCode::CONFLICT,
        "an ID reused with another body answered {reused}"
    );
    ensure!(
        read_register(&demo.urls.equipment, setpoint.address).await? == 1100,
        "a conflicting command reached the equipment"
    );

    let unknown = command(&http, &demo.urls, write("line9", "x", 1.0, None)).await?;
    ensure!(
        unknown.status == "failed",
        "unknown bridge ended {unknown:?}"
    );

    // Attestation: the fleet's fresh nonce, pluton's quote, verified with the key the
    // device authenticated with.
    let url = format!(
        "{}/api/v1/devices/{}/attestation",
        demo.urls.fleet, demo.urls.device_id
    );
    let attested: Attestation = http
        .post(&url)
        .bearer_auth(&demo.urls.fleet_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(attested.verified, "attestation failed: {attested:?}");
    ensure!(
        attested.registers.len() >= 8,
        "quote carries no registers: {attested:?}"
    );
    let unknown = format!("{}/api/v1/devices/nobody/attestation", demo.urls.fleet);
    ensure!(
        http.post(&unknown)
            .bearer_auth(&demo.urls.fleet_token)
            .send()
            .await?
            .status()
            == reqwest::StatusCode::CONFLICT,
        "an unknown device cannot be attested"
    );
    demo.stop().await
}

async fn reported(http: &reqwest::Client, urls: &DemoUrls) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/api/v1/devices/{}/twin", urls.fleet, urls.device_id);
    let twin: TwinView = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(twin.reported.unwrap_or_default())
}

async fn push_bundle(http: &reqwest::Client, urls: &DemoUrls, bundle: &[u8]) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/v1/devices/{}/twin/desired",
        urls.fleet, urls.device_id
    );
    let hex = warden_wire::topics::to_hex(bundle);
    http.put(&url)
        .bearer_auth(&urls.fleet_token)
        .json(&DesiredRequest {
            policy_bundle: Some(hex),
        })
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Renewable policy, end to end: a signed bundle from the fleet replaces the running
/// policy only after the device verified it; a tampered one changes nothing.
pub async fn signed_policy_bundles_replace_the_policy(
    warden_bin: &Path,
    state_dir: &Path,
) -> anyhow::Result<()> {
    use warden_policy::bundle::ProductId;
    use warden_policy::bundle::build::build_bundle_from_files;

    let demo = DemoProcess::start(warden_bin, state_dir).await?;
    wait_for_reading(&demo, "line1/spindle_setpoint").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let first = poll_until(Duration::from_secs(10), || async {
        let now = reported(&http, &demo.urls).await?;
        Ok((!now.is_null()).then_some(now))
    })
    .await?;
    ensure!(
        first["policy_version"].is_null(),
        "the demo starts on its local policy file: {first}"
    );

    // A policy without the cloud setpoint rule, signed by the demo's release key.
    let read_only = state_dir.join("read-only-policy.toml");
    std::fs::write(
        &read_only,
        include_str!("../scenarios/demo/policy.toml")
            .split("# The fleet may change")
            .next()
            .unwrap_or_default(),
    )?;
    let pki = state_dir.join("pki");
    let product = ProductId::new("warden-demo").context("product id")?;
    let (bundle, _warnings) = build_bundle_from_files(
        &read_only,
        product,
        7,
        &pki.join("policy-release.key"),
        &pki.join("policy-release.cert"),
    )?;

    // Tampered first: refused, and the running policy still allows the setpoint.
    let mut tampered = bundle.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    push_bundle(&http, &demo.urls, &tampered).await?;
    let refused = poll_until(Duration::from_secs(10), || async {
        let now = reported(&http, &demo.urls).await?;
        Ok(now["last_error"].is_string().then_some(now))
    })
    .await
    .context("the tampered bundle was not reported as refused")?;
    ensure!(
        refused["policy_version"].is_null(),
        "a tampered bundle was applied: {refused}"
    );
    let allowed = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 1300.0, None),
    )
    .await?;
    ensure!(
        allowed.status == "written",
        "after a refused bundle the old policy must still allow the write: {allowed:?}"
    );

    // The genuine bundle: applied, reported, and enforced.
    push_bundle(&http, &demo.urls, &bundle).await?;
    poll_until(Duration::from_secs(10), || async {
        let now = reported(&http, &demo.urls).await?;
        Ok((now["policy_version"] == 7).then_some(()))
    })
    .await
    .context("the signed bundle was not reported as applied")?;
    let denied = command(
        &http,
        &demo.urls,
        write("line1", "spindle_setpoint", 1400.0, None),
    )
    .await?;
    ensure!(
        denied.status == "denied",
        "the new policy has no setpoint rule, yet: {denied:?}"
    );
    ensure!(
        read_register(&demo.urls.equipment, 2).await? == 1300,
        "a write the new policy denies reached the equipment"
    );
    demo.stop().await
}
