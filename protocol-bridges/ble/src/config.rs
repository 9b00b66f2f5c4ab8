//! The `[[ble]]` config of a BLE bridge, and its validation into a [`BleBridgeSpec`].

use std::time::Duration;

use serde::Deserialize;

use crate::ble_uuid::BleUuid;
use crate::characteristic_value::ValueCodec;
use crate::device_address::{AddressKind, DeviceAddress};
use crate::hci_transport::HciTransportSpec;
use crate::point_config::{BleAccess, BlePointConfig};
use warden_toml_position::line_and_column;

/// One BLE bridge as the integrator configures it (`[[ble]]` in `warden.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleBridgeConfig {
    /// Bridge name: the policy's `bridge` for this sensor's rules.
    pub name: String,
    /// HCI transport to the controller: `tcp:HOST:PORT` (H4 over TCP, e.g. a Bumble
    /// virtual controller) or `serial:/dev/ttyACM0:1000000` (H4 over a UART).
    pub hci: String,
    /// Sensor address, most significant byte first (`C0:FF:EE:00:00:01`).
    #[serde(default)]
    pub address: Option<String>,
    /// Kind of `address`: `public` or `random` (default `random`, what most sensors use).
    #[serde(default)]
    pub address_type: AddressKind,
    /// Complete or shortened local name the sensor advertises, when no `address` is
    /// given (the first advertiser with this name is used and its address kept).
    #[serde(default)]
    pub device_name: Option<String>,
    /// First delay before reconnecting after the sensor went away; doubles up to
    /// `max_reconnect_delay_ms`.
    #[serde(default = "default_reconnect_delay_ms")]
    pub reconnect_delay_ms: u64,
    /// Longest delay between reconnection attempts.
    #[serde(default = "default_max_reconnect_delay_ms")]
    pub max_reconnect_delay_ms: u64,
    /// The characteristics read, subscribed to or written.
    #[serde(default)]
    pub points: Vec<BlePointConfig>,
}

fn default_reconnect_delay_ms() -> u64 {
    500
}

fn default_max_reconnect_delay_ms() -> u64 {
    30_000
}

/// A config value that is wrong, naming the field (`ble[0].points[2].service`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// How the bridge finds its sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorSelector {
    /// Connect to this address directly.
    Address(DeviceAddress),
    /// Scan for an advertiser with this local name, then connect to it.
    Name(String),
}

/// A validated point: parsed UUIDs and a value codec.
#[derive(Debug, Clone, PartialEq)]
pub struct BlePointSpec {
    /// Point name.
    pub name: String,
    /// Service UUID.
    pub service: BleUuid,
    /// Characteristic UUID.
    pub characteristic: BleUuid,
    /// How the value is obtained.
    pub access: BleAccess,
    /// Typing and scaling.
    pub codec: ValueCodec,
    /// Engineering unit.
    pub unit: String,
    /// Deadband in engineering units.
    pub deadband: f64,
    /// Read period of `read` points.
    pub poll_interval: Duration,
}

/// A validated BLE bridge, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct BleBridgeSpec {
    /// Bridge name (the policy's bridge).
    pub name: String,
    /// Where the controller is.
    pub transport: HciTransportSpec,
    /// Which sensor.
    pub sensor: SensorSelector,
    /// First reconnection delay.
    pub reconnect_delay: Duration,
    /// Longest reconnection delay.
    pub max_reconnect_delay: Duration,
    /// Points, in config order.
    pub points: Vec<BlePointSpec>,
}

impl BleBridgeSpec {
    /// The point called `name`.
    pub fn point(&self, name: &str) -> Option<&BlePointSpec> {
        self.points.iter().find(|point| point.name == name)
    }
}

impl BleBridgeConfig {
    /// Parses one bridge from TOML text (`origin` names the file in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError {
            field: match error.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    format!("{origin}:{line}:{column}")
                }
                None => origin.to_owned(),
            },
            message: error.message().trim_end().to_owned(),
        })
    }

    /// Checks every field; `path` is where this bridge sits in the config file
    /// (`ble[0]`) and prefixes every error's field.
    pub fn validate(&self, path: &str) -> Result<BleBridgeSpec, ConfigError> {
        let error = |field: &str, message: String| ConfigError {
            field: format!("{path}.{field}"),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(error("name", "must not be empty".into()));
        }
        let transport =
            HciTransportSpec::parse(&self.hci).map_err(|e| error("hci", e.to_string()))?;
        let sensor = match (&self.address, &self.device_name) {
            (Some(address), None) => SensorSelector::Address(
                DeviceAddress::parse(address, self.address_type)
                    .map_err(|e| error("address", e.to_string()))?,
            ),
            (None, Some(name)) if !name.is_empty() && name.len() <= 29 => {
                SensorSelector::Name(name.clone())
            }
            (None, Some(name)) => {
                return Err(error(
                    "device_name",
                    format!("{name:?} must be 1 to 29 bytes (what fits an advertisement)"),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(error(
                    "address",
                    "give either address or device_name, not both".into(),
                ));
            }
            (None, None) => {
                return Err(error(
                    "address",
                    "missing: give the sensor's address or its device_name".into(),
                ));
            }
        };
        if self.reconnect_delay_ms == 0 || self.reconnect_delay_ms > self.max_reconnect_delay_ms {
            return Err(error(
                "reconnect_delay_ms",
                format!(
                    "{} must be at least 1 and at most max_reconnect_delay_ms ({})",
                    self.reconnect_delay_ms, self.max_reconnect_delay_ms
                ),
            ));
        }
        let mut points: Vec<BlePointSpec> = Vec::with_capacity(self.points.len());
        for (index, point) in self.points.iter().enumerate() {
            let field = |name: &str| format!("points[{index}].{name}");
            if point.name.trim().is_empty() {
                return Err(error(&field("name"), "must not be empty".into()));
            }
            if points.iter().any(|p| p.name == point.name) {
                return Err(error(
                    &field("name"),
                    format!(
                        "{:?} is used by an earlier point of this bridge",
                        point.name
                    ),
                ));
            }
            let service = BleUuid::parse(&point.service)
                .map_err(|e| error(&field("service"), e.to_string()))?;
            let characteristic = BleUuid::parse(&point.characteristic)
                .map_err(|e| error(&field("characteristic"), e.to_string()))?;
            if !point.scale.is_finite() || point.scale == 0.0 {
                return Err(error(
                    &field("scale"),
                    format!("{} must be a finite, non-zero number", point.scale),
                ));
            }
            if !point.offset.is_finite() {
                return Err(error(&field("offset"), "must be finite".into()));
            }
            if !point.deadband.is_finite() || point.deadband < 0.0 {
                return Err(error(
                    &field("deadband"),
                    format!("{} must be finite and not negative", point.deadband),
                ));
            }
            if let Some(message) =
                warden_bridges::point::decimals_problem(point.decimals, point.data_type)
            {
                return Err(error(&field("decimals"), message));
            }
            if point.access == BleAccess::Read && point.poll_interval_ms < 10 {
                return Err(error(
                    &field("poll_interval_ms"),
                    format!("{} is below the 10 ms minimum", point.poll_interval_ms),
                ));
            }
            let codec = ValueCodec::new(point).map_err(|(name, m)| error(&field(name), m))?;
            points.push(BlePointSpec {
                name: point.name.clone(),
                service,
                characteristic,
                access: point.access,
                codec,
                unit: point.unit.clone(),
                deadband: point.deadband,
                poll_interval: Duration::from_millis(point.poll_interval_ms),
            });
        }
        Ok(BleBridgeSpec {
            name: self.name.clone(),
            transport,
            sensor,
            reconnect_delay: Duration::from_millis(self.reconnect_delay_ms),
            max_reconnect_delay: Duration::from_millis(self.max_reconnect_delay_ms),
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "greenhouse"
hci = "tcp:127.0.0.1:9001"
address = "F0:F1:F2:F3:F4:F5"

[[points]]
name = "temperature"
service = "181A"
characteristic = "2A6E"
access = "notify"
type = "i16"
scale = 0.01
unit = "°C"

[[points]]
name = "battery"
service = "180F"
characteristic = "2a19"
type = "u16"
bytes = 1
"#;

    fn parse(text: &str) -> BleBridgeConfig {
        BleBridgeConfig::from_toml(text, "ble.toml").expect("parses")
    }

    #[test]
    fn a_good_bridge_validates() {
        let spec = parse(GOOD).validate("ble[0]").expect("valid");
        assert_eq!(spec.points.len(), 2);
        assert_eq!(spec.points[0].characteristic, BleUuid::from_u16(0x2A6E));
        assert!(matches!(spec.sensor, SensorSelector::Address(_)));
        assert_eq!(spec.points[1].access, BleAccess::Read);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_uuid = GOOD.replace("\"2a19\"", "\"2a1x\"");
        let error = parse(&bad_uuid).validate("ble[3]").expect_err("bad uuid");
        assert_eq!(error.field, "ble[3].points[1].characteristic");
        assert!(error.message.contains("2a1x"), "{error}");

        let both = GOOD.replace(
            "address = \"F0:F1:F2:F3:F4:F5\"",
            "address = \"F0:F1:F2:F3:F4:F5\"\ndevice_name = \"x\"",
        );
        assert_eq!(
            parse(&both).validate("ble[0]").expect_err("both").field,
            "ble[0].address"
        );

        let bad_address = GOOD.replace("F0:F1:F2:F3:F4:F5", "F0:F1:F2:F3:F4");
        assert_eq!(
            parse(&bad_address)
                .validate("ble[0]")
                .expect_err("short")
                .field,
            "ble[0].address"
        );

        let duplicate = GOOD.replace("name = \"battery\"", "name = \"temperature\"");
        let error = parse(&duplicate).validate("ble[0]").expect_err("duplicate");
        assert_eq!(error.field, "ble[0].points[1].name");

        let too_wide = GOOD.replace("bytes = 1", "bytes = 3");
        let error = parse(&too_wide)
            .validate("ble[0]")
            .expect_err("wider than u16");
        assert_eq!(error.field, "ble[0].points[1].bytes");

        let bad_transport = GOOD.replace("tcp:127.0.0.1:9001", "usb:1");
        assert_eq!(
            parse(&bad_transport)
                .validate("ble[0]")
                .expect_err("hci")
                .field,
            "ble[0].hci"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_line_and_column() {
        let text = GOOD.replace("unit = \"°C\"", "unit = \"°C\"\ncolour = \"red\"");
        let error = BleBridgeConfig::from_toml(&text, "ble.toml").expect_err("unknown");
        assert_eq!(error.field, "ble.toml:14:1");
        assert!(error.message.contains("colour"), "{error}");
    }
}
