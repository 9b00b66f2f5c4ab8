//! The integrator's TOML config: device, policy, bridges, network, link, status page.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_link::LinkConfig;
use warden_toml_position::line_and_column;

/// The whole appliance config (`warden.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// This unit.
    pub device: DeviceConfig,
    /// The policy every bridge request passes.
    pub policy: PolicyConfig,
    /// Equipment bridges.
    #[serde(default)]
    pub bridges: ApplianceBridges,
    /// The private equipment network on the downstream port (absent: none).
    #[serde(default)]
    pub privnet: Option<PrivnetConfig>,
    /// The cloud link.
    pub link: LinkConfig,
    /// The local status page.
    pub status_page: StatusPageConfig,
    /// The monitor's failure reports, uploaded to the fleet (absent: none uploaded).
    #[serde(default)]
    pub reports: Option<ReportsConfig>,
    /// Updates offered by the fleet (absent: every offer is answered `failed`).
    #[serde(default)]
    pub updates: Option<UpdatesConfig>,
}

/// Where updates are downloaded and installed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesConfig {
    /// The boot monitor's state directory (A/B slots and the boot state).
    pub state_dir: PathBuf,
    /// Partial and staged downloads.
    pub download_dir: PathBuf,
    /// Pluton's provisioning capability (32 bytes) that the boot monitor's root of
    /// trust needs; images are verified against pluton's vendor roots.
    pub capability_file: PathBuf,
    /// The largest image taken from a file (`warden update install`, the status page's
    /// upload), MiB.
    #[serde(default = "default_max_local_image_mib")]
    pub max_local_image_mib: u64,
}

/// The default of `[updates] max_local_image_mib`: room for the appliance's image with
/// a large margin, far below what the download directory's partition holds.
pub const DEFAULT_MAX_LOCAL_IMAGE_MIB: u64 = 256;

fn default_max_local_image_mib() -> u64 {
    DEFAULT_MAX_LOCAL_IMAGE_MIB
}

/// Where the monitor keeps its failure reports (its manifest's `report_dir`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// The report ring's directory, relative to the config file's directory.
    pub dir: PathBuf,
    /// How often the ring is looked at for new reports, in seconds.
    #[serde(default = "default_report_scan_secs")]
    pub scan_interval_secs: u64,
}

fn default_report_scan_secs() -> u64 {
    5
}

/// The unit's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device ID; must equal the common name of the device certificate.
    pub id: String,
    /// Product identifier (policy bundles and images must name it).
    #[serde(default = "default_product")]
    pub product: String,
}

fn default_product() -> String {
    "warden".to_owned()
}

/// Where the policy comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy TOML file, relative to the config file's directory; used until a
    /// signed bundle from the fleet has been applied.
    pub file: PathBuf,
    /// Where verified policy bundles from the fleet are kept (the last good one is
    /// used at start). Without it, the unit refuses remote policy.
    #[serde(default)]
    pub bundle_dir: Option<PathBuf>,
}

/// One `[[bridges.ble]]` sensor (defined and validated by `warden-ble`).
pub use warden_ble::BleBridgeConfig;
/// The Modbus bridges and the gateway facade (defined and validated by the bridges).
pub use warden_bridges::BridgesConfig;
/// The `[privnet]` section (defined and validated by `warden-privnet`).
pub use warden_privnet::config::PrivnetConfig;

/// `[bridges]`: every bridge kind the appliance runs. The Modbus kinds and the facade
/// are `warden-bridges`' [`BridgesConfig`]; BLE sensors are `warden-ble`'s (that crate
/// builds on `warden-bridges`, so the one list of kinds lives here).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceBridges {
    /// Modbus TCP devices.
    #[serde(default)]
    pub modbus_tcp: Vec<warden_bridges::ModbusTcpBridgeConfig>,
    /// Modbus RTU lines.
    #[serde(default)]
    pub modbus_rtu: Vec<warden_bridges::ModbusRtuBridgeConfig>,
    /// The plant-side Modbus TCP server.
    #[serde(default)]
    pub facade: Option<warden_bridges::config::FacadeConfig>,
    /// BLE sensors (GATT over an HCI controller).
    #[serde(default)]
    pub ble: Vec<BleBridgeConfig>,
}

impl ApplianceBridges {
    /// The Modbus bridges and the facade, as `warden-bridges` takes them.
    pub fn modbus(&self) -> BridgesConfig {
        BridgesConfig {
            modbus_tcp: self.modbus_tcp.clone(),
            modbus_rtu: self.modbus_rtu.clone(),
            facade: self.facade.clone(),
        }
    }

    /// Decimal places of every point that sets `decimals`, by reading point name
    /// (`bridge/point`, as readings name it): what the twin reports so the fleet's
    /// dashboard shows each value as configured.
    pub fn point_decimals(&self) -> std::collections::BTreeMap<String, u8> {
        let modbus = self
            .modbus_tcp
            .iter()
            .map(|bridge| (&bridge.name, &bridge.points))
            .chain(
                self.modbus_rtu
                    .iter()
                    .map(|bridge| (&bridge.name, &bridge.points)),
            )
            .flat_map(|(bridge, points)| {
                points
                    .iter()
                    .filter_map(move |point| Some((bridge, &point.name, point.decimals?)))
            });
        let ble = self.ble.iter().flat_map(|bridge| {
            bridge
                .points
                .iter()
                .filter_map(move |point| Some((&bridge.name, &point.name, point.decimals?)))
        });
        modbus
            .chain(ble)
            .map(|(bridge, point, decimals)| (format!("{bridge}/{point}"), decimals))
            .collect()
    }

    /// The same bridges, with every real-time core line (`transport = "rtcore"`)
    /// given `bundle` (the stored signed policy bundle, newer than the configured
    /// file) when there is one.
    pub fn with_core_bundle(mut self, bundle: Option<&Path>) -> Self {
        if let Some(bundle) = bundle {
            for line in &mut self.modbus_rtu {
                if line.transport == warden_bridges::config::RtuTransport::Rtcore {
                    line.policy_bundle = Some(bundle.to_path_buf());
                }
            }
        }
        self
    }

    /// Checks every bridge: the Modbus ones and the facade by `warden-bridges`, the BLE
    /// ones by `warden-ble`, and that names are unique across kinds and no two BLE
    /// bridges share a controller. Errors name the field (`bridges.ble[1].hci`).
    pub fn validate(&self) -> Result<(), warden_bridges::config::ConfigProblem> {
        use warden_bridges::config::ConfigProblem;
        self.modbus().validate()?;
        let mut names: std::collections::BTreeMap<&str, String> =
            self.modbus_tcp
                .iter()
                .enumerate()
                .map(|(b, bridge)| (bridge.name.as_str(), format!("bridges.modbus_tcp[{b}]")))
                .chain(
                    self.modbus_rtu.iter().enumerate().map(|(b, bridge)| {
                        (bridge.name.as_str(), format!("bridges.modbus_rtu[{b}]"))
                    }),
                )
                .collect();
        let mut controllers: std::collections::BTreeMap<&str, String> = Default::default();
        for (b, bridge) in self.ble.iter().enumerate() {
            let at = format!("bridges.ble[{b}]");
            bridge.validate(&at).map_err(|error| ConfigProblem {
                field: error.field,
                message: error.message,
            })?;
            if let Some(first) = names.get(bridge.name.as_str()) {
                return Err(ConfigProblem {
                    field: format!("{at}.name"),
                    message: format!(
                        "bridge name {:?} is used twice (first at {first})",
                        bridge.name
                    ),
                });
            }
            names.insert(&bridge.name, at.clone());
            if let Some(first) = controllers.get(bridge.hci.as_str()) {
                return Err(ConfigProblem {
                    field: format!("{at}.hci"),
                    message: format!(
                        "controller {:?} is already used by {first}; one BLE bridge per controller",
                        bridge.hci
                    ),
                });
            }
            controllers.insert(&bridge.hci, at);
        }
        Ok(())
    }
}

/// The local status page (HTTPS, password login) and the metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// Address to listen on for HTTPS (`127.0.0.1:8081`).
    pub listen: String,
    /// The operator password's salted hash (an Argon2id PHC string), set at
    /// provisioning; the password itself is printed on the unit's label. Required:
    /// there is no default password, and the page does not start without it.
    pub password_file: PathBuf,
    /// Where the page's TLS key (`web-key.pem`, mode 0600) and self-signed
    /// certificate (`web-cert.pem`) live; both are made on first start.
    pub state_dir: PathBuf,
    /// Plain-HTTP Prometheus `/metrics`, unauthenticated, so loopback only
    /// (`127.0.0.1:9464`); absent means no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// A session ends after this many seconds without a request.
    #[serde(default = "default_session_idle_secs")]
    pub session_idle_secs: u64,
}

fn default_session_idle_secs() -> u64 {
    900
}

/// A config that could not be used, naming the file and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or missing field.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// The TOML is well-formed but a value is not acceptable.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as a TOML path (`bridges.modbus_tcp[0].points[1].name`).
        field: String,
        /// What was wrong.
        message: String,
    },
}

impl ApplianceConfig {
    /// Reads, parses and validates a config file. Relative paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text that came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text, path)?;
        match config.problems().into_iter().next() {
            Some((field, message)) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            }),
            None => Ok(config),
        }
    }

    /// Parses config text that came from `path` (syntax, types, unknown fields) and
    /// resolves its relative paths, without checking values ([`Self::problems`]).
    pub fn parse_unchecked(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.policy.file = resolve(base, &config.policy.file);
        config.policy.bundle_dir = config
            .policy
            .bundle_dir
            .as_ref()
            .map(|dir| resolve(base, dir));
        config.link.fleet_ca = resolve(base, &config.link.fleet_ca);
        config.link.device_cert = resolve(base, &config.link.device_cert);
        config.link.device_key = config
            .link
            .device_key
            .as_ref()
            .map(|key| resolve(base, key));
        config.link.pluton_socket = config
            .link
            .pluton_socket
            .as_ref()
            .map(|socket| resolve(base, socket));
        config.link.outbox.dir = resolve(base, &config.link.outbox.dir);
        config.status_page.password_file = resolve(base, &config.status_page.password_file);
        config.status_page.state_dir = resolve(base, &config.status_page.state_dir);
        if let Some(reports) = &mut config.reports {
            reports.dir = resolve(base, &reports.dir);
        }
        if let Some(updates) = &mut config.updates {
            updates.state_dir = resolve(base, &updates.state_dir);
            updates.download_dir = resolve(base, &updates.download_dir);
            updates.capability_file = resolve(base, &updates.capability_file);
        }
        Ok(config)
    }

    /// Every value that cannot work, as `(field, what is wrong)` in file order of
    /// sections; empty when the values are fine. Files are not looked at here
    /// (`warden check-config` does, in [`crate::config_check`]).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut invalid = |field: &str, message: String| found.push((field.to_owned(), message));
        if self.device.id.is_empty()
            || !self
                .device
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            invalid(
                "device.id",
                format!(
                    "{:?} must be non-empty letters, digits, '-' or '_'",
                    self.device.id
                ),
            );
        }
        if let Err(problem) = self.bridges.validate() {
            invalid(&problem.field, problem.message);
        }
        for (b, bridge) in self.bridges.modbus_tcp.iter().enumerate() {
            if let Some(why) = address_problem(&bridge.address, false) {
                invalid(&format!("bridges.modbus_tcp[{b}].address"), why);
            }
        }
        if let Some(facade) = &self.bridges.facade
            && let Some(why) = address_problem(&facade.listen, true)
        {
            invalid("bridges.facade.listen", why);
        }
        if let Some(privnet) = &self.privnet {
            if let Err(error) = privnet.validate("privnet") {
                invalid(&error.field, error.message);
            }
            for (f, forward) in privnet.forward.iter().enumerate() {
                if forward.listen.port() == 0 {
                    invalid(
                        &format!("privnet.forward[{f}].listen"),
                        format!(
                            "{} needs a fixed port: the Modbus TCP bridge that uses it names it in its address",
                            forward.listen
                        ),
                    );
                }
            }
        }
        let link = &self.link;
        if link.broker_host.trim().is_empty() {
            invalid("link.broker_host", "must name the fleet's broker".into());
        }
        if link.broker_port == 0 {
            invalid(
                "link.broker_port",
                "0 is no port: the broker's MQTT-over-TLS port (usually 8883)".into(),
            );
        }
        if link.device_key.is_some() == link.pluton_socket.is_some() {
            invalid(
                "link.pluton_socket",
                "set exactly one of `pluton_socket` (the key stays in pluton) and `device_key` (a key file)".into(),
            );
        }
        if link.batch_interval_ms == 0 {
            invalid("link.batch_interval_ms", "must be at least 1".into());
        }
        if link.max_send_per_second == 0 {
            invalid(
                "link.max_send_per_second",
                "must be at least 1: at 0 nothing is ever sent".into(),
            );
        }
        if link.outbox.max_bytes == 0 {
            invalid(
                "link.outbox.max_bytes",
                "must be at least 1: an outbox of 0 bytes refuses every batch".into(),
            );
        }
        if link.outbox.segment_bytes == 0 {
            invalid("link.outbox.segment_bytes", "must be at least 1".into());
        }
        if let Some(why) = address_problem(&self.status_page.listen, true) {
            invalid("status_page.listen", why);
        }
        if let Some(metrics) = &self.status_page.metrics_listen {
            let loopback = metrics
                .parse::<std::net::SocketAddr>()
                .map(|address| address.ip().is_loopback());
            if loopback != Ok(true) {
                invalid(
                    "status_page.metrics_listen",
                    format!(
                        "{metrics:?} must be a loopback address and port (`127.0.0.1:9464`): /metrics has no authentication"
                    ),
                );
            }
        }
        if self.status_page.session_idle_secs == 0 {
            invalid("status_page.session_idle_secs", "must be at least 1".into());
        }
        found
    }
}

/// Why `address` is not `host:port` (a listen address may use port 0: any free
/// port), or `None` when it is.
fn address_problem(address: &str, listen: bool) -> Option<String> {
    if let Ok(parsed) = address.parse::<std::net::SocketAddr>() {
        return (parsed.port() == 0 && !listen)
            .then(|| format!("{address:?} has port 0; the device's port is needed"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(format!("{address:?} is not host:port"));
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok {
        return Some(format!("{address:?} is not host:port (host {host:?})"));
    }
    match port.parse::<u16>() {
        Ok(0) if !listen => Some(format!(
            "{address:?} has port 0; the device's port is needed"
        )),
        Ok(_) => None,
        Err(_) => Some(format!(
            "{address:?} is not host:port (port {port:?} is not 0..=65535)"
        )),
    }
}

/// `relative` against the config's directory `base`, with each `dir/..` removed
/// (the station's templates name `../../var/lib/warden/…` from `etc/warden`): the paths
/// the appliance logs and binds are then the plain ones, and a Unix socket's path stays
/// within the 107 bytes `sun_path` holds also under a deep unit directory. Lexical, as
/// the station's layout has no symbolic links between `etc/warden` and its targets.
fn resolve(base: &Path, relative: &Path) -> PathBuf {
    use std::path::Component;
    let mut resolved = PathBuf::new();
    for component in base.join(relative).components() {
        match component {
            Component::ParentDir => match resolved.components().next_back() {
                Some(Component::Normal(_)) => {
                    resolved.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir) => {}
                _ => resolved.push(Component::ParentDir),
            },
            other => resolved.push(other),
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_lose_their_dot_dots() {
        let base = Path::new("/srv/units/WG1/etc/warden");
        assert_eq!(
            resolve(base, Path::new("../../var/lib/warden/x.sock")),
            Path::new("/srv/units/WG1/var/lib/warden/x.sock")
        );
        assert_eq!(
            resolve(base, Path::new("/abs/file")),
            Path::new("/abs/file")
        );
        assert_eq!(
            resolve(Path::new("etc"), Path::new("../../up")),
            Path::new("../up")
        );
        assert_eq!(resolve(Path::new("/"), Path::new("../x")), Path::new("/x"));
    }

    const GOOD: &str = r#"
[device]
id = "wd-1"
[policy]
file = "policy.toml"
[[bridges.modbus_tcp]]
name = "line1"
address = "127.0.0.1:5020"
[[bridges.modbus_tcp.points]]
name = "temperature"
kind = "holding"
address = 0
type = "u16"
scale = 0.1
[link]
broker_host = "127.0.0.1"
broker_port = 8883
fleet_ca = "pki/fleet-ca.pem"
device_cert = "pki/device.pem"
device_key = "pki/device.key"
outbox = { dir = "outbox" }
[status_page]
listen = "127.0.0.1:0"
password_file = "status-page/password.phc"
state_dir = "status-page"
metrics_listen = "127.0.0.1:0"
"#;

    #[test]
    fn good_config_loads_with_paths_beside_it() {
        let config =
            ApplianceConfig::parse(GOOD, Path::new("/etc/warden/warden.toml")).expect("valid");
        assert_eq!(config.bridges.modbus_tcp[0].points[0].scale, 0.1);
        assert_eq!(config.policy.file, Path::new("/etc/warden/policy.toml"));
        assert_eq!(
            config.link.device_key.as_deref(),
            Some(Path::new("/etc/warden/pki/device.key"))
        );
        assert_eq!(config.link.outbox.dir, Path::new("/etc/warden/outbox"));
        assert_eq!(
            config.status_page.password_file,
            Path::new("/etc/warden/status-page/password.phc")
        );
    }

    #[test]
    fn metrics_must_listen_on_loopback() {
        let bad = GOOD.replace(
            "metrics_listen = \"127.0.0.1:0\"",
            "metrics_listen = \"0.0.0.0:9464\"",
        );
        let error = ApplianceConfig::parse(&bad, Path::new("warden.toml")).expect_err("must fail");
        assert!(
            error.to_string().starts_with(
                "warden.toml: status_page.metrics_listen: \"0.0.0.0:9464\" must be a loopback"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_status_page_has_no_default_password() {
        let bad = GOOD.replace("password_file = \"status-page/password.phc\"\n", "");
        let error = ApplianceConfig::parse(&bad, Path::new("warden.toml")).expect_err("must fail");
        assert!(
            error.to_string().contains("missing field `password_file`"),
            "{error}"
        );
    }

    #[test]
    fn the_link_needs_exactly_one_key_source() {
        let both = GOOD.replace(
            "device_key = ",
            "pluton_socket = \"pluton.sock\"\ndevice_key = ",
        );
        let error = ApplianceConfig::parse(&both, Path::new("warden.toml")).expect_err("must fail");
        assert!(
            error
                .to_string()
                .starts_with("warden.toml: link.pluton_socket: set exactly one"),
            "{error}"
        );
        let pluton = GOOD.replace(
            "device_key = \"pki/device.key\"",
            "pluton_socket = \"pluton.sock\"",
        );
        let config =
            ApplianceConfig::parse(&pluton, Path::new("/etc/warden/warden.toml")).expect("valid");
        assert_eq!(
            config.link.pluton_socket.as_deref(),
            Some(Path::new("/etc/warden/pluton.sock"))
        );
    }

    #[test]
    fn unknown_field_names_file_line_and_column() {
        let bad = GOOD.replace("scale = 0.1", "scale = 0.1\nscael = 2");
        let error = ApplianceConfig::parse(&bad, Path::new("warden.toml")).expect_err("must fail");
        let text = error.to_string();
        assert!(
            text.starts_with("warden.toml:15:1: unknown field `scael`"),
            "{text}"
        );
    }

    const BLE: &str = r#"
[[bridges.ble]]
name = "greenhouse"
hci = "tcp:127.0.0.1:9001"
address = "F0:F1:F2:F3:F4:F5"
[[bridges.ble.points]]
name = "temperature"
service = "181A"
characteristic = "2A6E"
access = "notify"
type = "i16"
scale = 0.01
"#;

    const PRIVNET: &str = r#"
[privnet]
interface = "warden-eq0"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"
[[privnet.dhcp.static_leases]]
mac = "02:00:00:00:00:10"
ip = "10.77.0.10"
[[privnet.forward]]
listen = "127.0.0.1:15020"
to = "10.77.0.10:502"
"#;

    /// GOOD with `extra` inserted before `[link]`.
    fn with(extra: &str) -> String {
        GOOD.replace("[link]", &format!("{extra}[link]"))
    }

    fn error_of(text: &str) -> String {
        ApplianceConfig::parse(text, Path::new("warden.toml"))
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn ble_bridges_and_the_private_network_load() {
        let config = ApplianceConfig::parse(&with(&format!("{BLE}{PRIVNET}")), Path::new("w.toml"))
            .expect("valid");
        assert_eq!(config.bridges.ble[0].name, "greenhouse");
        assert_eq!(config.bridges.modbus().modbus_tcp.len(), 1);
        let privnet = config.privnet.expect("privnet");
        assert_eq!(privnet.forward[0].to.to_string(), "10.77.0.10:502");
    }

    #[test]
    fn ble_errors_name_the_field() {
        let cases = [
            (
                BLE.replace("\"2A6E\"", "\"2A6X\""),
                "warden.toml: bridges.ble[0].points[0].characteristic:",
            ),
            (
                BLE.replace("hci = \"tcp:127.0.0.1:9001\"", "hci = \"usb:0\""),
                "warden.toml: bridges.ble[0].hci:",
            ),
            (
                BLE.replace("name = \"greenhouse\"", "name = \"line1\""),
                "warden.toml: bridges.ble[0].name: bridge name \"line1\" is used twice (first at bridges.modbus_tcp[0])",
            ),
            (
                format!("{BLE}{}", BLE.replace("greenhouse", "barn")),
                "warden.toml: bridges.ble[1].hci: controller \"tcp:127.0.0.1:9001\" is already used by bridges.ble[0]",
            ),
        ];
        for (extra, expected) in cases {
            let error = error_of(&with(&extra));
            assert!(error.starts_with(expected), "{error}\nexpected {expected}");
        }
    }

    #[test]
    fn privnet_errors_name_the_field() {
        let cases = [
            (
                PRIVNET.replace("listen = \"127.0.0.1:15020\"", "listen = \"0.0.0.0:15020\""),
                "warden.toml: privnet.forward[0].listen:",
            ),
            (
                PRIVNET.replace("listen = \"127.0.0.1:15020\"", "listen = \"127.0.0.1:0\""),
                "warden.toml: privnet.forward[0].listen: 127.0.0.1:0 needs a fixed port",
            ),
            (
                PRIVNET.replace("ip = \"10.77.0.10\"", "ip = \"10.78.0.10\""),
                "warden.toml: privnet.dhcp.static_leases[0].ip:",
            ),
        ];
        for (extra, expected) in cases {
            let error = error_of(&with(&extra));
            assert!(error.starts_with(expected), "{error}\nexpected {expected}");
        }
    }

    #[test]
    fn unknown_ble_and_privnet_fields_name_the_line() {
        let text = with(&BLE.replace("scale = 0.01", "scale = 0.01\nscael = 2"));
        let line = text
            .lines()
            .position(|l| l.starts_with("scael"))
            .expect("line")
            + 1;
        let error = error_of(&text);
        assert!(
            error.starts_with(&format!("warden.toml:{line}:1: unknown field `scael`")),
            "{error}"
        );
        let text = with(&PRIVNET.replace("[privnet]\n", "[privnet]\ntap = \"x\"\n"));
        let line = text
            .lines()
            .position(|l| l.starts_with("tap ="))
            .expect("line")
            + 1;
        let error = error_of(&text);
        assert!(
            error.starts_with(&format!("warden.toml:{line}:1: unknown field `tap`")),
            "{error}"
        );
    }

    #[test]
    fn rtcore_lines_get_the_stored_bundle() {
        let rtu = r#"
[[bridges.modbus_rtu]]
name = "bus9"
port = "/dev/ttyRT0"
baud = 19200
transport = "rtcore"
mailbox = "/dev/ttyRPMSG0"
policy_bundle = "core.bundle"
[[bridges.modbus_rtu.points]]
name = "flow"
kind = "input"
address = 3
type = "u16"
"#;
        let config = ApplianceConfig::parse(&with(rtu), Path::new("w.toml")).expect("valid");
        let stored = Path::new("/var/lib/warden/policy-bundles/current.bundle");
        let bridges = config.bridges.clone().with_core_bundle(Some(stored));
        assert_eq!(bridges.modbus_rtu[0].policy_bundle.as_deref(), Some(stored));
        let unchanged = config.bridges.with_core_bundle(None);
        assert_eq!(
            unchanged.modbus_rtu[0].policy_bundle.as_deref(),
            Some(Path::new("core.bundle"))
        );
    }

    #[test]
    fn duplicate_point_names_field_path() {
        let bad = GOOD.replace(
            "[link]",
            "[[bridges.modbus_tcp.points]]\nname = \"temperature\"\nkind = \"input\"\naddress = 4\ntype = \"u16\"\n[link]",
        );
        let error = ApplianceConfig::parse(&bad, Path::new("warden.toml")).expect_err("must fail");
        assert_eq!(
            error.to_string(),
            "warden.toml: bridges.modbus_tcp[0].points[1].name: point name \"temperature\" is used twice in bridge line1"
        );
    }
}
