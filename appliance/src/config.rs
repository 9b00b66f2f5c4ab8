//! The integrator's TOML config: device, policy, bridges, link and status page.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_link::LinkConfig;

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
    pub bridges: BridgesConfig,
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

/// All bridges, by kind, and the gateway facade (defined and validated by the bridges).
pub use warden_bridges::BridgesConfig;

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
        config.validate(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.policy.file = base.join(&config.policy.file);
        config.policy.bundle_dir = config.policy.bundle_dir.as_ref().map(|dir| base.join(dir));
        config.link.fleet_ca = base.join(&config.link.fleet_ca);
        config.link.device_cert = base.join(&config.link.device_cert);
        config.link.device_key = config.link.device_key.as_ref().map(|key| base.join(key));
        config.link.pluton_socket = config
            .link
            .pluton_socket
            .as_ref()
            .map(|socket| base.join(socket));
        config.link.outbox.dir = base.join(&config.link.outbox.dir);
        config.status_page.password_file = base.join(&config.status_page.password_file);
        config.status_page.state_dir = base.join(&config.status_page.state_dir);
        if let Some(reports) = &mut config.reports {
            reports.dir = base.join(&reports.dir);
        }
        if let Some(updates) = &mut config.updates {
            updates.state_dir = base.join(&updates.state_dir);
            updates.download_dir = base.join(&updates.download_dir);
            updates.capability_file = base.join(&updates.capability_file);
        }
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if self.device.id.is_empty()
            || !self
                .device
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "device.id".into(),
                format!(
                    "{:?} must be non-empty letters, digits, '-' or '_'",
                    self.device.id
                ),
            ));
        }
        if self.link.device_key.is_some() == self.link.pluton_socket.is_some() {
            return Err(invalid(
                "link.pluton_socket".into(),
                "set exactly one of `pluton_socket` (the key stays in pluton) and `device_key` (a key file)".into(),
            ));
        }
        if let Some(metrics) = &self.status_page.metrics_listen {
            let loopback = metrics
                .parse::<std::net::SocketAddr>()
                .map(|address| address.ip().is_loopback());
            if loopback != Ok(true) {
                return Err(invalid(
                    "status_page.metrics_listen".into(),
                    format!(
                        "{metrics:?} must be a loopback address and port (`127.0.0.1:9464`): /metrics has no authentication"
                    ),
                ));
            }
        }
        if self.status_page.session_idle_secs == 0 {
            return Err(invalid(
                "status_page.session_idle_secs".into(),
                "must be at least 1".into(),
            ));
        }
        self.bridges
            .validate()
            .map_err(|problem| invalid(problem.field, problem.message))?;
        Ok(())
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

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
