//! The bridges' part of the appliance config (`[bridges]` in `warden.toml`), and its
//! validation with errors that name the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::modbus::rtu_bus::{Parity, SerialLine};
use crate::point::{DataType, PointConfig};

/// All bridges, by kind, and the gateway facade.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgesConfig {
    /// Modbus TCP devices.
    #[serde(default)]
    pub modbus_tcp: Vec<ModbusTcpBridgeConfig>,
    /// Modbus RTU lines (one bridge per serial port, any number of units on it).
    #[serde(default)]
    pub modbus_rtu: Vec<ModbusRtuBridgeConfig>,
    /// The plant-side Modbus TCP server forwarding permitted requests downstream.
    #[serde(default)]
    pub facade: Option<FacadeConfig>,
}

/// A Modbus TCP bridge as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTcpBridgeConfig {
    /// Bridge name, used by the policy and in telemetry (`line1`).
    pub name: String,
    /// Device address, `host:port`.
    pub address: String,
    /// Modbus unit identifier of points that name none.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Per-request and connect timeout, in milliseconds.
    #[serde(default = "default_tcp_timeout_ms")]
    pub timeout_ms: u64,
    /// Most connections open to the device at once (field gateways accept 3 to 16).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest gap, in registers or bits, bridged when merging points into one read.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// The points read from the device.
    pub points: Vec<PointConfig>,
}

/// A Modbus RTU line as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRtuBridgeConfig {
    /// Bridge name, used by the policy and in telemetry (`line2`).
    pub name: String,
    /// Serial device (`/dev/ttyUSB0`); one bridge per port.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// `none`, `even` (default) or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Modbus unit of points that name none.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Per-attempt response timeout in milliseconds, from the end of the request.
    #[serde(default = "default_rtu_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a timeout or garbled answer.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Backoff of a failing unit after its first failure, doubling up to 5 s.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Largest gap, in registers or bits, bridged when merging points into one read.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// `native` (default: this process drives `port`) or `rtcore` (the real-time
    /// core drives the line; see `crate::rtcore`).
    #[serde(default)]
    pub transport: RtuTransport,
    /// `rtcore`: the mailbox device of the real-time core.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// `rtcore`: the signed policy bundle uploaded to (and verified by) the core.
    #[serde(default)]
    pub policy_bundle: Option<std::path::PathBuf>,
    /// The points read from the units on the line.
    pub points: Vec<PointConfig>,
}

impl ModbusRtuBridgeConfig {
    /// The mailbox device of a line the real-time core drives; `None` for a native one.
    pub fn mailbox_path(&self) -> Option<&str> {
        match self.transport {
            RtuTransport::Rtcore => self.mailbox.as_deref(),
            RtuTransport::Native => None,
        }
    }

    /// The serial line settings.
    pub fn line(&self) -> SerialLine {
        SerialLine {
            port: self.port.clone(),
            baud: self.baud,
            parity: self.parity,
            stop_bits: self.stop_bits,
        }
    }
}

fn default_unit() -> u8 {
    1
}
fn default_tcp_timeout_ms() -> u64 {
    1000
}
fn default_rtu_timeout_ms() -> u64 {
    200
}
fn default_max_connections() -> usize {
    4
}
fn default_max_gap() -> u16 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u64 {
    100
}

/// A config value that is not acceptable: the field (as a TOML path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigProblem {
    /// The field, as a TOML path (`bridges.modbus_rtu[0].baud`).
    pub field: String,
    /// What was wrong.
    pub message: String,
}

fn problem(field: String, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        field,
        message: message.into(),
    }
}

impl BridgesConfig {
    /// Checks names, ports, units, points and the facade's routes.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |name: &str, at: &str| -> Result<(), ConfigProblem> {
            if name.is_empty() {
                return Err(problem(format!("{at}.name"), "must not be empty"));
            }
            if let Some(first) = names.get(name) {
                return Err(problem(
                    format!("{at}.name"),
                    format!("bridge name {name:?} is used twice (first at {first})"),
                ));
            }
            names.insert(name.to_owned(), at.to_owned());
            Ok(())
        };
        for (b, bridge) in self.modbus_tcp.iter().enumerate() {
            let at = format!("bridges.modbus_tcp[{b}]");
            claim(&bridge.name, &at)?;
            if bridge.timeout_ms == 0 {
                return Err(problem(format!("{at}.timeout_ms"), "must be at least 1"));
            }
            if !(1..=64).contains(&bridge.max_connections) {
                return Err(problem(
                    format!("{at}.max_connections"),
                    format!("{} is outside 1..=64", bridge.max_connections),
                ));
            }
            check_unit(bridge.unit, &format!("{at}.unit"))?;
            check_points(&bridge.points, &bridge.name, &at)?;
        }
        let mut ports: BTreeMap<&str, String> = BTreeMap::new();
        for (b, bridge) in self.modbus_rtu.iter().enumerate() {
            let at = format!("bridges.modbus_rtu[{b}]");
            claim(&bridge.name, &at)?;
            if let Some(first) = ports.get(bridge.port.as_str()) {
                return Err(problem(
                    format!("{at}.port"),
                    format!(
                        "serial port {:?} is already owned by {first}; one bridge per line",
                        bridge.port
                    ),
                ));
            }
            if bridge.port.is_empty() {
                return Err(problem(format!("{at}.port"), "must name a serial device"));
            }
            ports.insert(&bridge.port, at.clone());
            if !(300..=4_000_000).contains(&bridge.baud) {
                return Err(problem(
                    format!("{at}.baud"),
                    format!("{} is outside 300..=4000000", bridge.baud),
                ));
            }
            if !(1..=2).contains(&bridge.stop_bits) {
                return Err(problem(
                    format!("{at}.stop_bits"),
                    format!("{} must be 1 or 2", bridge.stop_bits),
                ));
            }
            if bridge.timeout_ms == 0 {
                return Err(problem(format!("{at}.timeout_ms"), "must be at least 1"));
            }
            if bridge.retries > 10 {
                return Err(problem(
                    format!("{at}.retries"),
                    format!("{} is more than 10", bridge.retries),
                ));
            }
            check_unit(bridge.unit, &format!("{at}.unit"))?;
            check_transport(bridge, &at)?;
            check_points(&bridge.points, &bridge.name, &at)?;
        }
        if let Some(facade) = &self.facade {
            let known: Vec<&str> = self
                .modbus_tcp
                .iter()
                .map(|b| b.name.as_str())
                .chain(self.modbus_rtu.iter().map(|b| b.name.as_str()))
                .collect();
            facade.validate(&known)?;
        }
        Ok(())
    }
}

fn check_unit(unit: u8, field: &str) -> Result<(), ConfigProblem> {
    if !(1..=247).contains(&unit) {
        return Err(problem(
            field.to_owned(),
            format!("unit {unit} is outside 1..=247"),
        ));
    }
    Ok(())
}

fn check_points(points: &[PointConfig], bridge: &str, at: &str) -> Result<(), ConfigProblem> {
    if points.is_empty() {
        return Err(problem(
            format!("{at}.points"),
            "a bridge needs at least one point",
        ));
    }
    let mut point_names = std::collections::BTreeSet::new();
    for (p, point) in points.iter().enumerate() {
        let at = format!("{at}.points[{p}]");
        if !point_names.insert(point.name.as_str()) {
            return Err(problem(
                format!("{at}.name"),
                format!(
                    "point name {:?} is used twice in bridge {bridge}",
                    point.name
                ),
            ));
        }
        if let Some(unit) = point.unit_id {
            check_unit(unit, &format!("{at}.unit_id"))?;
        }
        if point.kind.is_bit() && point.data_type != DataType::Bool {
            return Err(problem(
                format!("{at}.type"),
                format!(
                    "a {} point must be of type bool, not {}",
                    point.kind.name(),
                    point.data_type.name()
                ),
            ));
        }
        match (point.data_type, point.length) {
            (DataType::String, None) => {
                return Err(problem(
                    format!("{at}.length"),
                    "a string point needs length (registers, 1..=125)",
                ));
            }
            (DataType::String, Some(length)) if !(1..=125).contains(&length) => {
                return Err(problem(
                    format!("{at}.length"),
                    format!("{length} is outside 1..=125"),
                ));
            }
            (DataType::String, Some(_)) => {}
            (other, Some(_)) => {
                return Err(problem(
                    format!("{at}.length"),
                    format!("only string points take length, not {}", other.name()),
                ));
            }
            (_, None) => {}
        }
        let last = u32::from(point.address) + u32::from(point.register_count()) - 1;
        if last > u32::from(u16::MAX) {
            return Err(problem(
                format!("{at}.address"),
                format!("{} runs past register 65535", point.address),
            ));
        }
        if point.poll_interval_ms == 0 {
            return Err(problem(
                format!("{at}.poll_interval_ms"),
                "must be at least 1",
            ));
        }
        if !point.scale.is_finite() || !point.offset.is_finite() {
            return Err(problem(
                format!("{at}.scale"),
                "scale and offset must be finite numbers",
            ));
        }
        if point.scale == 0.0 {
            return Err(problem(format!("{at}.scale"), "must not be 0"));
        }
        if !point.deadband.is_finite() || point.deadband < 0.0 {
            return Err(problem(
                format!("{at}.deadband"),
                format!("{} must be a finite number >= 0", point.deadband),
            ));
        }
        if let Some(message) = crate::point::decimals_problem(point.decimals, point.data_type) {
            return Err(problem(format!("{at}.decimals"), message));
        }
    }
    Ok(())
}

/// Who drives an RTU line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtuTransport {
    /// This process opens the serial port (tokio-serial) and runs the master.
    #[default]
    Native,
    /// The real-time core owns the port; this process talks to it over `mailbox`.
    Rtcore,
}
/// Checks the transport fields of an RTU bridge at `at` (`bridges.modbus_rtu[0]`).
fn check_transport(bridge: &ModbusRtuBridgeConfig, at: &str) -> Result<(), ConfigProblem> {
    let problem = |field: &str, message: &str| ConfigProblem {
        field: format!("{at}.{field}"),
        message: message.to_owned(),
    };
    match bridge.transport {
        RtuTransport::Native => {
            if bridge.mailbox.is_some() {
                return Err(problem(
                    "mailbox",
                    "only a transport = \"rtcore\" line has a mailbox",
                ));
            }
            if bridge.policy_bundle.is_some() {
                return Err(problem(
                    "policy_bundle",
                    "only a transport = \"rtcore\" line takes a policy bundle",
                ));
            }
        }
        RtuTransport::Rtcore => {
            if bridge.mailbox.as_deref().is_none_or(str::is_empty) {
                return Err(problem(
                    "mailbox",
                    "transport = \"rtcore\" needs the mailbox device of the real-time core",
                ));
            }
            if bridge.policy_bundle.is_none() {
                return Err(problem(
                    "policy_bundle",
                    "transport = \"rtcore\" needs the signed policy bundle the core verifies",
                ));
            }
            if !(1200..=921_600).contains(&bridge.baud) {
                return Err(problem(
                    "baud",
                    &format!(
                        "{} is outside what the real-time core drives (1200..=921600)",
                        bridge.baud
                    ),
                ));
            }
            if bridge.timeout_ms > u64::from(u32::MAX) {
                return Err(problem("timeout_ms", "is too large"));
            }
        }
    }
    Ok(())
}

/// The facade as the integrator configures it (`[bridges.facade]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacadeConfig {
    /// Address to listen on, plant side (`0.0.0.0:502`).
    pub listen: String,
    /// Most SCADA clients served at once; further connections are closed at once.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Unit IDs clients may address, each mapped to a bridge and a unit behind it.
    pub units: Vec<FacadeRoute>,
}

/// One unit ID of the facade.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacadeRoute {
    /// The unit ID SCADA uses.
    pub unit: u8,
    /// The bridge requests go to.
    pub bridge: String,
    /// The unit behind that bridge; the same as `unit` when absent.
    #[serde(default)]
    pub target_unit: Option<u8>,
}

fn default_max_clients() -> usize {
    16
}

impl FacadeConfig {
    /// Checks the listen address, the client cap and the routes against `bridges`.
    pub fn validate(&self, bridges: &[&str]) -> Result<(), ConfigProblem> {
        let at = "bridges.facade";
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigProblem {
                field: format!("{at}.listen"),
                message: format!("{:?} is not an ip:port address", self.listen),
            });
        }
        if !(1..=1024).contains(&self.max_clients) {
            return Err(ConfigProblem {
                field: format!("{at}.max_clients"),
                message: format!("{} is outside 1..=1024", self.max_clients),
            });
        }
        let mut seen = BTreeMap::new();
        for (r, route) in self.units.iter().enumerate() {
            let at = format!("{at}.units[{r}]");
            if let Some(first) = seen.insert(route.unit, r) {
                return Err(ConfigProblem {
                    field: format!("{at}.unit"),
                    message: format!("unit {} is already mapped by units[{first}]", route.unit),
                });
            }
            if !bridges.contains(&route.bridge.as_str()) {
                return Err(ConfigProblem {
                    field: format!("{at}.bridge"),
                    message: format!("no bridge is named {:?}", route.bridge),
                });
            }
            let target = route.target_unit.unwrap_or(route.unit);
            if !(1..=247).contains(&target) {
                return Err(ConfigProblem {
                    field: format!("{at}.target_unit"),
                    message: format!("unit {target} is outside 1..=247"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BridgesConfig {
        toml::from_str(text).expect("parses")
    }

    const RTU: &str = r#"
[[modbus_rtu]]
name = "line2"
port = "/dev/ttyUSB0"
baud = 19200
[[modbus_rtu.points]]
name = "flow"
kind = "input"
address = 3
unit_id = 4
type = "f32"
"#;

    #[test]
    fn rtu_defaults_follow_the_spec() {
        let config = parse(RTU);
        config.validate().expect("valid");
        let line = config.modbus_rtu[0].line();
        assert_eq!(line.parity, Parity::Even);
        assert_eq!(line.describe(), "/dev/ttyUSB0 19200 8E1");
        assert_eq!(config.modbus_rtu[0].retries, 2);
    }

    #[test]
    fn problems_name_the_field() {
        let cases = [
            (
                RTU.replace("baud = 19200", "baud = 12"),
                "bridges.modbus_rtu[0].baud: 12 is outside 300..=4000000",
            ),
            (
                RTU.replace("unit_id = 4", "unit_id = 250"),
                "bridges.modbus_rtu[0].points[0].unit_id: unit 250 is outside 1..=247",
            ),
            (
                RTU.replace("type = \"f32\"", "type = \"string\""),
                "bridges.modbus_rtu[0].points[0].length: a string point needs length (registers, 1..=125)",
            ),
            (
                RTU.replace("kind = \"input\"", "kind = \"coil\""),
                "bridges.modbus_rtu[0].points[0].type: a coil point must be of type bool, not f32",
            ),
            (
                format!("{RTU}{}", RTU.replace("line2", "line3")),
                "bridges.modbus_rtu[1].port: serial port \"/dev/ttyUSB0\" is already owned by bridges.modbus_rtu[0]; one bridge per line",
            ),
            (
                format!(
                    "{RTU}[facade]\nlisten = \"127.0.0.1:0\"\n[[facade.units]]\nunit = 1\nbridge = \"nope\"\n"
                ),
                "bridges.facade.units[0].bridge: no bridge is named \"nope\"",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).validate().expect_err(expected);
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn transport_fields_are_checked() {
        let base = r#"
name = "line2"
port = "core:uart0"
baud = 19200
[[points]]
name = "flow"
kind = "input"
address = 3
type = "u16"
"#;
        let parse = |extra: &str| -> ModbusRtuBridgeConfig {
            toml::from_str(&format!("{extra}\n{base}")).expect("parses")
        };
        let rtcore = parse("transport = \"rtcore\"");
        assert_eq!(
            check_transport(&rtcore, "bridges.modbus_rtu[0]")
                .expect_err("no mailbox")
                .to_string(),
            "bridges.modbus_rtu[0].mailbox: transport = \"rtcore\" needs the mailbox device of the real-time core"
        );
        let rtcore = parse("transport = \"rtcore\"\nmailbox = \"/dev/ttyS1\"");
        assert_eq!(
            check_transport(&rtcore, "bridges.modbus_rtu[0]")
                .expect_err("no bundle")
                .field,
            "bridges.modbus_rtu[0].policy_bundle"
        );
        let rtcore = parse(
            "transport = \"rtcore\"\nmailbox = \"/dev/ttyS1\"\npolicy_bundle = \"/var/lib/warden/policy.wpb\"",
        );
        check_transport(&rtcore, "bridges.modbus_rtu[0]").expect("complete");
        assert_eq!(rtcore.mailbox_path(), Some("/dev/ttyS1"));
        let native = parse("mailbox = \"/dev/ttyS1\"");
        assert_eq!(
            check_transport(&native, "x")
                .expect_err("stray mailbox")
                .field,
            "x.mailbox"
        );
        assert_eq!(native.mailbox_path(), None);
    }
}
