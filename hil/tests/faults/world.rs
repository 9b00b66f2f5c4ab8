//! The world of one fault case: PKI, simulated device, fleet and appliance processes.
//!
//! Everything a case starts is owned by a guard whose `Drop` stops it: processes are
//! SIGKILLed (after a SIGCONT, in case a case froze them) and reaped, tmpfs mounts are
//! unmounted lazily, the simulator is cancelled. A panicking case leaves nothing behind.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warden_pluton_api::launch_tokens::LaunchTokens;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_hil::modbus_tcp_slave::{DeviceModel, SimulatedSlave};
use warden_hil::register_model::RegisterModel;
use warden_wire::fleet_api::{TelemetryQuery, TelemetryResponse, telemetry_path};

/// The bridge name the appliance config gives the simulated device.
pub const BRIDGE: &str = "line1";

/// Fails the run at once, with the reason, unless it runs as root.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "the fault suite mounts tmpfs file systems and signals real processes: run it as \
         root (effective uid is {uid}), e.g. `sudo -E cargo test -p warden-hil --test faults \
         -- --ignored --nocapture`"
    );
}

/// A binary of this workspace build (beside this test's `deps/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p warden -p warden-fleet --bins`",
        path.display()
    );
    path
}

/// A free loopback TCP port (bound, then released for the process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The last `bytes` of a log file, for failure messages and the report.
pub fn log_tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("--- {} (tail) ---\n{}", path.display(), &text[start..])
}

/// A real process, SIGKILLed and reaped when dropped.
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Self {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let _ = writeln!(out, "===== {name} starts =====");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
        Self { child: Some(child) }
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string())
                .status();
        }
    }

    /// `None` while it runs, else how it ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits up to `grace`; SIGKILL after that. Returns how long it took
    /// to stop and whether it stopped by itself.
    pub fn terminate(&mut self, grace: Duration) -> (Duration, bool) {
        let started = Instant::now();
        self.signal("TERM");
        while started.elapsed() < grace {
            if self.exited().is_some() {
                self.child = None;
                return (started.elapsed(), true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        (started.elapsed(), false)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted on a directory, unmounted (lazily) when dropped.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4M`, `256k`) on `dir` (created).
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("mount(8) runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            dir.display()
        );
        Self {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    /// Bytes still free on it (statfs through stat(1)).
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.dir)
            .output()
            .expect("stat(1) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text
            .split_whitespace()
            .map(|w| w.parse::<u64>().unwrap_or(0));
        words.next().unwrap_or(0) * words.next().unwrap_or(0)
    }

    /// Writes `name` until the file system is full; returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let path = self.dir.join(name);
        let mut file = File::create(&path).expect("filler");
        let chunk = vec![0x5Au8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        // The last partial pages too.
        for size in [4096usize, 512, 1] {
            while file.write(&chunk[..size]).map(|n| n > 0).unwrap_or(false) {
                written += size as u64;
            }
        }
        let _ = file.sync_all();
        written
    }

    /// Deletes a filler written by [`Self::fill`].
    pub fn unfill(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            self.mounted = false;
        }
    }
}

/// What a case asks of its world.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// Counter registers (points `counter0`, `counter1`, … at addresses 0, 1, …).
    pub counters: u16,
    /// Poll interval of each counter.
    pub poll_interval_ms: u64,
    /// The link's batch interval.
    pub batch_interval_ms: u64,
    /// tmpfs size for the fleet's database directory (`None`: on the test's disk).
    pub fleet_tmpfs: Option<&'static str>,
    /// tmpfs size for the appliance's outbox (`None`: on the test's disk).
    pub outbox_tmpfs: Option<&'static str>,
    /// `[link.outbox]` settings besides `dir`, as TOML lines.
    pub outbox_settings: String,
    /// The device key is held by a `warden pluton` process (started by the case).
    pub pluton: bool,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            counters: 2,
            poll_interval_ms: 50,
            batch_interval_ms: 100,
            fleet_tmpfs: None,
            outbox_tmpfs: None,
            outbox_settings: "fsync = \"always\"\noverflow = \"refuse\"\n".to_owned(),
            pluton: false,
        }
    }
}

/// One case's world. Field order is drop order: processes before their mounts.
pub struct World {
    /// The appliance (`warden run`), when running.
    pub appliance: Option<Process>,
    /// The fleet (`warden-fleet`), when running.
    pub fleet: Option<Process>,
    /// `warden pluton`, when running.
    pub pluton: Option<Process>,
    /// The fleet's database tmpfs.
    pub fleet_tmpfs: Option<Tmpfs>,
    /// The outbox's tmpfs.
    pub outbox_tmpfs: Option<Tmpfs>,
    /// The simulated Modbus TCP device.
    pub device: SimulatedSlave,
    device_stop: CancellationToken,
    /// Options it was made with.
    pub options: WorldOptions,
    /// The unit's device ID.
    pub device_id: String,
    /// Fleet HTTP port.
    pub http_port: u16,
    /// Fleet MQTT port.
    pub mqtt_port: u16,
    /// The appliance's `/metrics` port.
    pub metrics_port: u16,
    /// The appliance's outbox directory.
    pub outbox_dir: PathBuf,
    /// The case's directory (logs, configs).
    pub dir: PathBuf,
    fleet_config: PathBuf,
    appliance_config: PathBuf,
    pluton_socket: PathBuf,
    /// The role tokens this world's pluton and appliance are launched with (as
    /// `warden boot` would mint them).
    pluton_tokens: LaunchTokens,
    http: reqwest::Client,
    _temp: tempfile::TempDir,
}

impl World {
    /// Makes the PKI, mounts, configs and the simulated device; starts nothing else.
    pub async fn new(case: &str, options: WorldOptions) -> Self {
        let temp = tempfile::Builder::new()
            .prefix(&format!(
                "warden-fault-{}-",
                case.split_whitespace().next().unwrap_or("case")
            ))
            .tempdir()
            .expect("tempdir");
        let dir = temp.path().to_path_buf();
        let mut pki = DemoPki::generate(&dir.join("pki")).expect("pki");

        let fleet_db_dir = dir.join("fleet-db");
        std::fs::create_dir_all(&fleet_db_dir).expect("fleet dir");
        let fleet_tmpfs = options
            .fleet_tmpfs
            .map(|size| Tmpfs::mount(&fleet_db_dir, size));
        let outbox_dir = dir.join("outbox");
        std::fs::create_dir_all(&outbox_dir).expect("outbox dir");
        let outbox_tmpfs = options
            .outbox_tmpfs
            .map(|size| Tmpfs::mount(&outbox_dir, size));

        let pluton_socket = dir.join("pluton.sock");
        let pluton_tokens = LaunchTokens::mint().expect("role tokens");
        if options.pluton {
            // The factory: pluton makes the identity; the certificate names its key.
            let mut pluton = start_pluton(&dir, &pluton_socket, &pluton_tokens);
            let capability = warden_pluton::server::read_capability_file(
                &dir.join("pluton")
                    .join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME),
            )
            .expect("capability");
            let mut client =
                warden_pluton_api::PlutonClient::connect_as_boot(&pluton_socket, &capability)
                    .expect("pluton");
            let identity = client.create_identity(None).expect("identity");
            let device_id = identity.device_id.to_string();
            let cert = pki
                .issue_device_certificate(&device_id, &identity.public_key.0)
                .expect("certificate");
            pki.device_id = device_id;
            pki.device_cert = cert;
            drop(client);
            pluton.kill();
            let _ = std::fs::remove_file(&pluton_socket);
        }

        let mut holding = std::collections::BTreeMap::new();
        for address in 0..options.counters {
            holding.insert(address, RegisterModel::ReadCount);
        }
        let model = DeviceModel {
            unit: 1,
            holding,
            ..DeviceModel::default()
        };
        let device_stop = CancellationToken::new();
        let device = SimulatedSlave::start("127.0.0.1:0", model, device_stop.clone())
            .await
            .expect("simulated device");

        let (http_port, mqtt_port, metrics_port) = (free_port(), free_port(), free_port());
        let fleet_config = dir.join("fleet.toml");
        std::fs::write(
            &fleet_config,
            format!(
                r#"http_listen = "127.0.0.1:{http_port}"
mqtt_listen = "127.0.0.1:{mqtt_port}"
database_url = "sqlite://{db}"
server_cert = "{server_cert}"
server_key = "{server_key}"
manufacturer_ca = "{manufacturer_ca}"

[api]
anonymous_role = "viewer"

[telemetry]
keep_days = 0
"#,
                db = fleet_db_dir.join("fleet.db").display(),
                server_cert = pki.server_cert.display(),
                server_key = pki.server_key.display(),
                manufacturer_ca = pki.manufacturer_ca.display(),
            ),
        )
        .expect("fleet config");

        std::fs::create_dir_all(dir.join("status-page")).expect("status dir");
        std::fs::write(dir.join("status-page/password.phc"), password_hash()).expect("password");
        std::fs::write(dir.join("policy.toml"), warden_hil::demo::DEMO_POLICY).expect("policy");
        let key_line = if options.pluton {
            format!("pluton_socket = \"{}\"", pluton_socket.display())
        } else {
            format!("device_key = \"{}\"", pki.device_key.display())
        };
        let mut points = String::new();
        for address in 0..options.counters {
            points += &format!(
                r#"
[[bridges.modbus_tcp.points]]
name = "counter{address}"
kind = "holding"
address = {address}
type = "u16"
poll_interval_ms = {poll}
"#,
                poll = options.poll_interval_ms
            );
        }
        let appliance_config = dir.join("warden.toml");
        std::fs::write(
            &appliance_config,
            format!(
                r#"[device]
id = "{id}"
product = "warden-demo"

[policy]
file = "{policy}"

[[bridges.modbus_tcp]]
name = "{BRIDGE}"
address = "{equipment}"
unit = 1
timeout_ms = 1000
{points}
[link]
broker_host = "127.0.0.1"
broker_port = {mqtt_port}
fleet_ca = "{fleet_ca}"
device_cert = "{cert}"
{key_line}
batch_interval_ms = {batch}

[link.outbox]
dir = "{outbox}"
{outbox_settings}
[status_page]
listen = "127.0.0.1:0"
password_file = "{status}/password.phc"
state_dir = "{status}"
metrics_listen = "127.0.0.1:{metrics_port}"
"#,
                id = pki.device_id,
                policy = dir.join("policy.toml").display(),
                equipment = device.address(),
                fleet_ca = pki.fleet_ca.display(),
                cert = pki.device_cert.display(),
                batch = options.batch_interval_ms,
                outbox = outbox_dir.display(),
                outbox_settings = options.outbox_settings,
                status = dir.join("status-page").display(),
            ),
        )
        .expect("appliance config");

        Self {
            appliance: None,
            fleet: None,
            pluton: None,
            fleet_tmpfs,
            outbox_tmpfs,
            device,
            device_stop,
            device_id: pki.device_id.clone(),
            options,
            http_port,
            mqtt_port,
            metrics_port,
            outbox_dir,
            dir,
            fleet_config,
            appliance_config,
            pluton_socket,
            pluton_tokens,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            _temp: temp,
        }
    }

    /// The fleet's log file.
    pub fn fleet_log(&self) -> PathBuf {
        self.dir.join("fleet.log")
    }

    /// The appliance's log file.
    pub fn appliance_log(&self) -> PathBuf {
        self.dir.join("appliance.log")
    }

    /// Starts the fleet and waits (at most 20 s) until its HTTP API answers.
    pub async fn start_fleet(&mut self) {
        assert!(self.fleet.is_none(), "the fleet is already running");
        let mut command = Command::new(workspace_binary("warden-fleet"));
        command
            .arg("--config")
            .arg(&self.fleet_config)
            .env("RUST_LOG", "info,sqlx=warn,rumqttc=warn");
        let mut fleet = Process::spawn("fleet", command, &self.fleet_log());
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://127.0.0.1:{}/api/v1/devices", self.http_port);
        loop {
            if let Some(status) = fleet.exited() {
                panic!(
                    "the fleet exited at start ({status})\n{}",
                    log_tail(&self.fleet_log(), 3000)
                );
            }
            let up = self.http.get(&url).send().await.is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok();
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not answer within 20 s\n{}",
                log_tail(&self.fleet_log(), 3000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.fleet = Some(fleet);
    }

    /// Stops the fleet with SIGTERM (SIGKILL after `grace`); whether it stopped by itself.
    pub fn stop_fleet(&mut self, grace: Duration) -> (Duration, bool) {
        let mut fleet = self.fleet.take().expect("the fleet runs");
        fleet.terminate(grace)
    }

    /// SIGKILLs the fleet.
    pub fn kill_fleet(&mut self) {
        if let Some(mut fleet) = self.fleet.take() {
            fleet.kill();
        }
    }

    /// Starts `warden run` (it is ready when its control socket answers, at most 20 s).
    pub async fn start_appliance(&mut self) {
        assert!(self.appliance.is_none(), "the appliance is already running");
        let mut command = Command::new(workspace_binary("warden"));
        self.pluton_tokens.hand_to(&mut command);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.appliance_config)
            .env("RUST_LOG", "info,sqlx=warn,rumqttc=warn");
        let mut appliance = Process::spawn("appliance", command, &self.appliance_log());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = appliance.exited() {
                panic!(
                    "the appliance exited at start ({status})\n{}",
                    log_tail(&self.appliance_log(), 3000)
                );
            }
            if self.status().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the appliance's control socket did not answer within 20 s\n{}",
                log_tail(&self.appliance_log(), 3000)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.appliance = Some(appliance);
    }

    /// Starts `warden run` without waiting for anything (restart loops).
    pub fn spawn_appliance(&mut self) {
        assert!(self.appliance.is_none(), "the appliance is already running");
        let mut command = Command::new(workspace_binary("warden"));
        self.pluton_tokens.hand_to(&mut command);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.appliance_config)
            .env("RUST_LOG", "info,sqlx=warn,rumqttc=warn");
        self.appliance = Some(Process::spawn("appliance", command, &self.appliance_log()));
    }

    /// SIGTERM to the appliance (SIGKILL after `grace`); whether it stopped by itself.
    pub fn stop_appliance(&mut self, grace: Duration) -> (Duration, bool) {
        let mut appliance = self.appliance.take().expect("the appliance runs");
        appliance.terminate(grace)
    }

    /// SIGKILLs the appliance.
    pub fn kill_appliance(&mut self) {
        if let Some(mut appliance) = self.appliance.take() {
            appliance.kill();
        }
    }

    /// Whether the appliance process is still alive.
    pub fn appliance_alive(&mut self) -> bool {
        self.appliance
            .as_mut()
            .is_some_and(|appliance| appliance.exited().is_none())
    }

    /// Whether the fleet process is still alive.
    pub fn fleet_alive(&mut self) -> bool {
        self.fleet
            .as_mut()
            .is_some_and(|fleet| fleet.exited().is_none())
    }

    /// Starts `warden pluton` on the socket the appliance config names.
    pub fn start_pluton(&mut self) {
        self.pluton = Some(start_pluton(
            &self.dir,
            &self.pluton_socket,
            &self.pluton_tokens,
        ));
    }

    /// The appliance's status (what `warden status --json` prints), if it answers.
    pub fn status(&self) -> Option<Value> {
        let socket = self.dir.join("status-page/control.sock");
        let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        serde_json::from_slice(&answer).ok()
    }

    /// A number from the status, e.g. `["link", "outbox", "depth"]`.
    pub fn status_number(&self, path: &[&str]) -> Option<u64> {
        let status = self.status()?;
        path.iter()
            .try_fold(&status, |value, key| value.get(key))
            .and_then(Value::as_u64)
    }

    /// The link state the status shows (`connected`, `disconnected`, …).
    pub fn link_state(&self) -> Option<String> {
        self.status()?
            .get("link")?
            .get("state")?
            .as_str()
            .map(str::to_owned)
    }

    /// The appliance's `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    /// One unlabelled sample of `/metrics`, by the first of `names` present.
    pub async fn metric(&self, names: &[&str]) -> Option<f64> {
        let text = self.metrics().await?;
        names.iter().find_map(|name| {
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .find_map(|line| {
                    let (key, value) = line.split_once(' ')?;
                    (key == *name).then(|| value.trim().parse().ok()).flatten()
                })
        })
    }

    /// Waits until `ready` holds, polling every 50 ms; the time it took, or `None`
    /// after `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if ready(self) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until the link reports `connected` (status); the time it took.
    pub async fn wait_connected(&self, limit: Duration) -> Option<Duration> {
        self.wait_for(limit, |world| {
            world.link_state().as_deref() == Some("connected")
        })
        .await
    }

    /// Every stored value of one point, through the fleet's API
    /// (`GET /api/v1/devices/{id}/telemetry`: newest first, at most
    /// `MAX_TELEMETRY_LIMIT` a call, no offset; so pages go back in time with `to_ms`,
    /// and the readings of the millisecond a page ends in are fetched on their own).
    pub async fn stored_values(&self, point: &str) -> Result<Vec<u64>, String> {
        const PAGE: usize = warden_fleet::api::MAX_TELEMETRY_LIMIT as usize;
        let mut values = Vec::new();
        let mut to_ms: Option<i64> = None;
        for _ in 0..1000 {
            let page = self.telemetry_page(point, None, to_ms).await?;
            if page.len() < PAGE {
                values.extend(page.iter().map(|(_, v)| *v));
                return Ok(values);
            }
            let oldest = page.iter().map(|(ts, _)| *ts).min().unwrap_or(0);
            values.extend(page.iter().filter(|(ts, _)| *ts > oldest).map(|(_, v)| *v));
            let tie = self
                .telemetry_page(point, Some(oldest), Some(oldest + 1))
                .await?;
            values.extend(tie.iter().map(|(_, v)| *v));
            to_ms = Some(oldest);
        }
        Err("more than 1000 pages of telemetry".into())
    }

    async fn telemetry_page(
        &self,
        point: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> Result<Vec<(i64, u64)>, String> {
        let url = format!(
            "http://127.0.0.1:{}{}",
            self.http_port,
            telemetry_path(&self.device_id)
        );
        let query = TelemetryQuery {
            point: Some(point.to_owned()),
            limit: Some(warden_fleet::api::MAX_TELEMETRY_LIMIT),
            from_ms,
            to_ms,
        };
        let response = self
            .http
            .get(&url)
            .query(&query)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new()); // the device has not been seen yet
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("GET {url}: {status} {body}"));
        }
        let body: TelemetryResponse = response
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok(body
            .readings
            .iter()
            .map(|r| (r.ts_ms, r.number().unwrap_or(-1.0) as u64))
            .collect())
    }

    /// Stops the device's reads (answers become exceptions): "produced" stands still.
    pub fn pause_device(&self) {
        self.device.set_paused(true);
    }

    /// Resumes the device's reads.
    pub fn resume_device(&self) {
        self.device.set_paused(false);
    }

    /// Readings the device served so far, per counter point.
    pub fn produced(&self) -> Vec<u64> {
        (0..self.options.counters)
            .map(|address| self.device.holding_reads(address).unwrap_or(0))
            .collect()
    }

    /// Bytes in the outbox directory's files.
    pub fn outbox_bytes_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.outbox_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The logs of both services, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            log_tail(&self.appliance_log(), 4000),
            log_tail(&self.fleet_log(), 2500)
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Processes first (their files are on the mounts), then the mounts.
        self.kill_appliance();
        self.kill_fleet();
        if let Some(mut pluton) = self.pluton.take() {
            pluton.kill();
        }
        self.device_stop.cancel();
        self.outbox_tmpfs.take();
        self.fleet_tmpfs.take();
    }
}

/// Starts `warden pluton` with its state in `dir/pluton` and waits until it answers.
fn start_pluton(dir: &Path, socket: &Path, tokens: &LaunchTokens) -> Process {
    let mut command = Command::new(workspace_binary("warden"));
    tokens.hand_to(&mut command);
    command
        .arg("pluton")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("pluton"));
    let pluton = Process::spawn("pluton", command, &dir.join("pluton.log"));
    for _ in 0..400 {
        if warden_pluton_api::PlutonClient::connect(socket).is_ok() {
            return pluton;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "pluton did not listen on {}\n{}",
        socket.display(),
        log_tail(&dir.join("pluton.log"), 2000)
    );
}

/// An Argon2id hash for the status page (its password is never used here).
fn password_hash() -> String {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(b"fault-suite-salt").expect("salt");
    argon2::Argon2::default()
        .hash_password(b"fault suite password", &salt)
        .expect("hash")
        .to_string()
}
