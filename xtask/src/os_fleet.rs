//! The development unit's fleet: a `warden-fleet` on the host's loopback, made by the
//! factory step (`os-image --dev-unit`) and started by `os-run`, so the guest's link has
//! a broker to connect to over mutual TLS and the fleet attests it.
//!
//! It lives in `target/os/work/fleet` (a new unit, a new fleet: `os-image` starts the
//! work directory afresh): `warden-fleet init`'s config, fleet CA, server certificate
//! (for `fleet.example.com`, the name the unit's config and manifest use, and
//! `127.0.0.1`), SQLite database, plus `admin-token` (mode 0600: a development fleet's
//! token, kept so the test and the operator can use the API) and `fleet.log`. Its three
//! listeners are loopback ports picked free when it is made. The guest reaches the
//! broker and HTTPS through QEMU user-network forwards ([`DevFleet::guest_forwards`]).
//!
//! The API is spoken with `curl --cacert fleet-ca.pem` (as the fleet README's quick
//! start does), so xtask needs no HTTP client of its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::package::target_dir;

/// The fleet's host name on the unit (`xtask/src/os_unit/hosts`, the config's
/// `link.broker_host`, the manifest's link `connect` grants).
pub const FLEET_HOST: &str = "fleet.example.com";
/// The guest address [`FLEET_HOST`] resolves to: QEMU forwards its ports to the fleet.
/// Not `10.0.2.2` (QEMU's own host address, which forwards every port to the host's
/// 127.0.0.1 as it is): a forward names exactly the two listeners the unit may reach.
pub const FLEET_GUEST_ADDRESS: &str = "10.0.2.100";
/// The broker port the unit connects to (the config's `link.broker_port`; the
/// manifest's link grants it).
pub const GUEST_MQTT_PORT: u16 = 8883;
/// The HTTPS port the unit downloads images from (the manifest's link grants it).
pub const GUEST_HTTPS_PORT: u16 = 443;
/// How `warden-fleet` is built (`os-image` and `os-run` run it first).
pub const FLEET_BUILD: &[&str] = &["build", "-p", "warden-fleet"];
/// How long the fleet may take to answer its API after it starts.
const START_BOUND: Duration = Duration::from_secs(60);

/// A made development fleet (not necessarily running).
#[derive(Debug, Clone)]
pub struct DevFleet {
    /// Its directory.
    pub dir: PathBuf,
    /// `127.0.0.1:port` of its HTTPS API.
    pub http: String,
    /// `127.0.0.1:port` of its MQTT broker.
    pub mqtt: String,
}

/// The `warden-fleet` binary of this build.
pub fn fleet_binary() -> PathBuf {
    target_dir().join("debug").join("warden-fleet")
}

/// Where the development fleet is (under `os-image`'s work directory).
pub fn fleet_dir(os_dir: &Path) -> PathBuf {
    os_dir.join("work").join("fleet")
}

impl DevFleet {
    /// `warden-fleet init` in `dir` (which must not hold a fleet yet), trusting
    /// `vendor_root` (SPKI PEM) for images.
    pub fn init(dir: &Path, vendor_root: &Path) -> Result<Self, String> {
        let binary = fleet_binary();
        if !binary.exists() {
            return Err(format!(
                "{} is missing: `cargo build -p warden-fleet` first",
                binary.display()
            ));
        }
        let http = free_address()?;
        let mqtt = free_address()?;
        let metrics = free_address()?;
        let output = Command::new(&binary)
            .arg("init")
            .arg("--dir")
            .arg(dir)
            .args(["--hostname", FLEET_HOST, "--hostname", "127.0.0.1"])
            .arg("--vendor-root")
            .arg(vendor_root)
            .args(["--http-listen", &http, "--mqtt-listen", &mqtt])
            .args(["--metrics-listen", &metrics])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} init: {e}", binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "warden-fleet init --dir {} failed ({}): {}",
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let token = stdout
            .lines()
            .find_map(|line| line.strip_prefix("admin token:"))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| "warden-fleet init printed no admin token".to_owned())?;
        write_private(&dir.join("admin-token"), token)?;
        // Units download images from the name and port they are granted, through the
        // HTTPS forward (the fleet's own URL would be its host loopback address).
        let config = dir.join("fleet.toml");
        let text =
            std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
        let commented = "# public_url = \"http://fleet.example:8080\"";
        if !text.contains(commented) {
            return Err(format!(
                "{}: no `{commented}` line to set the units' download URL in",
                config.display()
            ));
        }
        let text = text.replace(
            commented,
            &format!("public_url = \"https://{FLEET_HOST}:{GUEST_HTTPS_PORT}\""),
        );
        write_private(&config, text.trim_end())?;
        Ok(Self {
            dir: dir.to_owned(),
            http,
            mqtt,
        })
    }

    /// The fleet made in `dir`, if any (its listeners read from its `fleet.toml`).
    pub fn load(dir: &Path) -> Result<Option<Self>, String> {
        let config = dir.join("fleet.toml");
        let Ok(text) = std::fs::read_to_string(&config) else {
            return Ok(None);
        };
        let value = |key: &str| {
            text.lines()
                .find_map(|line| {
                    let (name, value) = line.split_once('=')?;
                    (name.trim() == key).then(|| value.trim().trim_matches('"').to_owned())
                })
                .ok_or_else(|| format!("{}: no `{key}`", config.display()))
        };
        Ok(Some(Self {
            dir: dir.to_owned(),
            http: value("http_listen")?,
            mqtt: value("mqtt_listen")?,
        }))
    }

    /// The fleet CA the unit pins (and curl trusts).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("fleet-ca.pem")
    }

    /// The API's base URL on the host.
    pub fn url(&self) -> String {
        format!("https://{}", self.http)
    }

    fn port(address: &str) -> Result<u16, String> {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .ok_or_else(|| format!("{address:?} is not host:port"))
    }

    /// QEMU user-network `guestfwd` rules: the guest's [`FLEET_GUEST_ADDRESS`] broker
    /// and HTTPS ports to this fleet's loopback listeners. Each guest connection runs
    /// `relay os-relay 127.0.0.1:PORT` ([`relay`], this program), which QEMU starts with
    /// the connection as its standard input and output: a `guestfwd` to a character
    /// device instead would carry one connection for QEMU's whole life, and the unit
    /// opens a new one for every reconnect and download.
    pub fn guest_forwards(&self, relay: &Path) -> Result<Vec<String>, String> {
        let relay = relay.display().to_string();
        if relay.contains([' ', ',', '\'', '"']) {
            return Err(format!(
                "{relay}: QEMU's guestfwd cannot start a program whose path has spaces, commas or quotes"
            ));
        }
        Ok(vec![
            format!(
                "guestfwd=tcp:{FLEET_GUEST_ADDRESS}:{GUEST_MQTT_PORT}-cmd:{relay} os-relay 127.0.0.1:{}",
                Self::port(&self.mqtt)?
            ),
            format!(
                "guestfwd=tcp:{FLEET_GUEST_ADDRESS}:{GUEST_HTTPS_PORT}-cmd:{relay} os-relay 127.0.0.1:{}",
                Self::port(&self.http)?
            ),
        ])
    }

    /// Starts `warden-fleet --config …` (its log in `fleet.log`) and waits until its API
    /// answers.
    pub fn start(&self) -> Result<RunningFleet, String> {
        let binary = fleet_binary();
        let log_path = self.dir.join("fleet.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(self.dir.join("fleet.toml"))
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut running = RunningFleet {
            child,
            api: self.api()?,
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            if running.api.get("/api/v1/openapi.json").is_ok() {
                return Ok(running);
            }
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "warden-fleet exited ({status}) before its API answered; see {}",
                    log_path.display()
                ));
            }
            if Instant::now() > deadline {
                running.stop();
                return Err(format!(
                    "warden-fleet's API did not answer on {} within {START_BOUND:?}; see {}",
                    self.url(),
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client of its API with the admin token.
    pub fn api(&self) -> Result<FleetApi, String> {
        let token_file = self.dir.join("admin-token");
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| format!("{}: {e}", token_file.display()))?;
        Ok(FleetApi {
            base: self.url(),
            ca: self.ca(),
            token: token.trim().to_owned(),
        })
    }
}

/// A running development fleet; stopped when dropped.
pub struct RunningFleet {
    child: Child,
    /// Its API.
    pub api: FleetApi,
}

impl RunningFleet {
    /// Stops the fleet (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fleet's HTTP API through `curl`, trusting only the fleet CA.
#[derive(Debug, Clone)]
pub struct FleetApi {
    base: String,
    ca: PathBuf,
    token: String,
}

impl FleetApi {
    fn curl(&self, method: &str, path: &str) -> Command {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "60", "-X", method])
            .arg("--cacert")
            .arg(&self.ca)
            // The token goes through a header file on standard input, never argv.
            .args(["-H", "@-"])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{path}", self.base))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn send(&self, mut command: Command, what: &str) -> Result<serde_json::Value, String> {
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run curl (Debian: curl): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("Authorization: Bearer {}\n", self.token).as_bytes())
                .map_err(|e| format!("curl: {e}"))?;
        }
        let output = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{what}: curl failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status: u16 = status.trim().parse().unwrap_or(0);
        if !(200..300).contains(&status) {
            let body: String = body.chars().take(400).collect();
            return Err(format!("{what}: HTTP {status}: {body}"));
        }
        if body.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(body).map_err(|e| format!("{what}: not JSON ({e}): {body}"))
    }

    /// `GET path`, its JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        self.send(self.curl("GET", path), &format!("GET {path}"))
    }

    /// `POST path` with a JSON body.
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut command = self.curl("POST", path);
        command
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(body.to_string());
        self.send(command, &format!("POST {path}"))
    }

    /// `POST path` with a file's bytes.
    pub fn post_file(&self, path: &str, file: &Path) -> Result<serde_json::Value, String> {
        let mut command = self.curl("POST", path);
        command
            .args([
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()));
        self.send(command, &format!("POST {path} ({})", file.display()))
    }
}

/// `cargo xtask os-relay 127.0.0.1:PORT` (hidden; QEMU runs it per forwarded guest
/// connection): copies standard input to a TCP connection to the address and that
/// connection to standard output, until both directions end. Standard error is the
/// guest's connection too, so nothing is printed; a failure is the exit status.
pub fn relay() -> Result<(), String> {
    use std::os::fd::AsFd as _;
    let address = std::env::args()
        .nth(2)
        .ok_or("usage: os-relay 127.0.0.1:PORT")?;
    if !address.starts_with("127.0.0.1:") {
        return Err(format!("os-relay {address}: only loopback addresses"));
    }
    let upstream = std::net::TcpStream::connect(&address).map_err(|e| format!("{address}: {e}"))?;
    let guest_in = std::fs::File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?,
    );
    let mut guest_out = std::fs::File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?,
    );
    let mut to_fleet = upstream.try_clone().map_err(|e| e.to_string())?;
    let uplink = std::thread::spawn(move || {
        let mut guest_in = guest_in;
        let copied = std::io::copy(&mut guest_in, &mut to_fleet);
        let _ = to_fleet.shutdown(std::net::Shutdown::Write);
        copied
    });
    let mut from_fleet = upstream;
    let _ = std::io::copy(&mut from_fleet, &mut guest_out);
    // The fleet closed its side. If the guest had closed its side already, the uplink
    // is done; otherwise the guest's connection ends with this process (its standard
    // descriptors are the connection), the uplink thread with it.
    if uplink.is_finished() {
        let _ = uplink.join();
    }
    Ok(())
}

/// A free loopback `127.0.0.1:port` (free now; the fleet binds it when it starts).
fn free_address() -> Result<String, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("no free loopback port: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    Ok(address.to_string())
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}
