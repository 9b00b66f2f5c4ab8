//! Devices heard from and their readings, as the fleet's telemetry endpoints show them.

use serde::de::Deserializer;
use serde::ser::{SerializeMap as _, Serializer};
use serde::{Deserialize, Serialize};

use crate::value::Value;

/// One item of `GET /api/v1/devices`: a device the fleet has received telemetry from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device ID (certificate common name).
    pub id: String,
    /// First telemetry received, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last telemetry received, ms since the epoch.
    pub last_seen_ms: i64,
    /// Latest value of each point.
    pub latest: Vec<StoredReading>,
}

/// One reading as the fleet stored it.
///
/// In JSON (the API's `Reading`): `value` is the number, `null` for a text, a flag or a
/// number that is not finite; `text` is there only for a text, `flag` only for a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Point name, `bridge/point`.
    pub point: String,
    /// The value as read.
    pub value: Value,
    /// Engineering unit.
    pub unit: String,
    /// When the device read it, ms since the epoch.
    pub ts_ms: i64,
}

impl StoredReading {
    /// The number, if it is one.
    pub fn number(&self) -> Option<f64> {
        match self.value {
            Value::Number(number) => Some(number),
            _ => None,
        }
    }

    /// The text, if it is one.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl Serialize for StoredReading {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("point", &self.point)?;
        // JSON has no NaN: a number that is not finite is `null`.
        map.serialize_entry("value", &self.number().filter(|n| n.is_finite()))?;
        match &self.value {
            Value::Number(_) => {}
            Value::Text(text) => map.serialize_entry("text", text)?,
            Value::Bool(flag) => map.serialize_entry("flag", flag)?,
        }
        map.serialize_entry("unit", &self.unit)?;
        map.serialize_entry("ts_ms", &self.ts_ms)?;
        map.end()
    }
}

/// The JSON shape of [`StoredReading`], read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingFields {
    point: String,
    value: Option<f64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    flag: Option<bool>,
    unit: String,
    ts_ms: i64,
}

impl<'de> Deserialize<'de> for StoredReading {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = ReadingFields::deserialize(deserializer)?;
        let value = match (fields.text, fields.flag, fields.value) {
            (Some(text), _, _) => Value::Text(text),
            (None, Some(flag), _) => Value::Bool(flag),
            // `null` for a number: one that was not finite.
            (None, None, number) => Value::Number(number.unwrap_or(f64::NAN)),
        };
        Ok(Self {
            point: fields.point,
            value,
            unit: fields.unit,
            ts_ms: fields.ts_ms,
        })
    }
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesQuery {
    /// Devices skipped, by ID (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// At most this many (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Query of `GET /api/v1/devices/{id}/telemetry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryQuery {
    /// Only this point (`bridge/point`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// At most this many readings, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Only readings read at or after this time (ms since the epoch, device time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Only readings read before this time (ms since the epoch, device time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
}

/// `GET /api/v1/devices/{id}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryResponse {
    /// The device asked about.
    pub device: String,
    /// Readings, newest first.
    pub readings: Vec<StoredReading>,
}

/// The path of a device's telemetry endpoint.
pub fn telemetry_path(device_id: &str) -> String {
    format!("{}/telemetry", super::registry::device_path(device_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_json() {
        for value in [
            Value::Number(21.5),
            Value::Text("AB-17".into()),
            Value::Bool(true),
        ] {
            let reading = StoredReading {
                point: "line1/x".into(),
                value,
                unit: "°C".into(),
                ts_ms: 5,
            };
            let json = serde_json::to_string(&reading).expect("serialises");
            let back: StoredReading = serde_json::from_str(&json).expect("reads back");
            assert_eq!(back, reading, "{json}");
        }
        let text = serde_json::to_value(StoredReading {
            point: "line1/serial".into(),
            value: Value::Text("AB-17".into()),
            unit: String::new(),
            ts_ms: 1,
        })
        .expect("serialises");
        assert_eq!(text["value"], serde_json::Value::Null);
        assert_eq!(text["text"], "AB-17");
    }
}
