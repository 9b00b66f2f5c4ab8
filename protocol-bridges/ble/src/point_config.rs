//! One BLE point as the integrator configures it (`[[ble.points]]`): below both the
//! bridge's config and the codec built from it.

use serde::Deserialize;
use warden_bridges::point::{ByteOrder, DataType, WordOrder};

/// How the bridge gets a point's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BleAccess {
    /// Read every `poll_interval_ms`.
    #[default]
    Read,
    /// Subscribe to notifications (and read once after connecting).
    Notify,
    /// Subscribe to indications (and read once after connecting).
    Indicate,
    /// Never read: a write-only point.
    None,
}

/// One characteristic (or a field inside it) as a typed, scaled point.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlePointConfig {
    /// Name, unique within its bridge.
    pub name: String,
    /// Service UUID: 16-bit (`181A`), 32-bit or 128-bit (`5741524e-0000-...`).
    pub service: String,
    /// Characteristic UUID.
    pub characteristic: String,
    /// How the value is obtained.
    #[serde(default)]
    pub access: BleAccess,
    /// Interpretation of the bytes, with the same names as Modbus points.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Bytes the field spans when narrower than the type (`u16` with `bytes = 1` is a
    /// uint8, `i32` with `bytes = 3` a sint24): zero- or sign-extended. Text: the
    /// length of the field (default: the rest of the value).
    #[serde(default)]
    pub bytes: Option<u16>,
    /// Where the field starts in the characteristic value.
    #[serde(default)]
    pub byte_offset: u16,
    /// Word order (BLE values are little endian: the default here).
    #[serde(default = "little_words")]
    pub word_order: WordOrder,
    /// Byte order inside each 16-bit word (little endian by default).
    #[serde(default = "little_bytes")]
    pub byte_order: ByteOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// Engineering value = raw × scale + offset.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown to people.
    #[serde(default)]
    pub unit: String,
    /// Report a number only when it moved by at least this much, a bool or a text when
    /// it changed; 0 reports every number and bool (`warden_bridges::deadband`).
    #[serde(default)]
    pub deadband: f64,
    /// Read period of `read` points, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Decimal places the value is shown with (numbers only; as Modbus points'
    /// `decimals`, [`warden_bridges::point::PointConfig::decimals`]).
    #[serde(default)]
    pub decimals: Option<u8>,
}

fn little_words() -> WordOrder {
    WordOrder::LittleEndian
}

fn little_bytes() -> ByteOrder {
    ByteOrder::LittleEndian
}

fn one() -> f64 {
    1.0
}

fn default_poll_interval_ms() -> u64 {
    1000
}
