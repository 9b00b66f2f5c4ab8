//! The policy file as TOML gives it: raw tables with source spans.

use serde::Deserialize;
use toml::{Spanned, Value};

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDocument {
    pub policy: Option<RawHeader>,
    #[serde(default)]
    pub modbus: Vec<Spanned<RawModbus>>,
    #[serde(default)]
    pub modbus_limit: Vec<Spanned<RawModbusLimit>>,
    #[serde(default)]
    pub ble: Vec<Spanned<RawBle>>,
    #[serde(default)]
    pub connect: Vec<Spanned<RawConnect>>,
    #[serde(default)]
    pub listen: Vec<Spanned<RawListen>>,
}

/// `[policy]`: informational.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub name: Option<String>,
    #[allow(dead_code)]
    pub description: Option<String>,
}

/// `[[modbus]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModbus {
    pub name: Option<Spanned<String>>,
    pub bridge: Spanned<String>,
    pub units: Spanned<Value>,
    pub functions: Spanned<Value>,
    pub addresses: Option<Spanned<Value>>,
    pub references: Option<Spanned<Value>>,
    pub sources: Spanned<Value>,
    pub values: Option<Spanned<Value>>,
    pub signed: Option<Spanned<bool>>,
    pub rate: Option<Spanned<String>>,
}

/// `[[modbus_limit]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModbusLimit {
    pub name: Option<Spanned<String>>,
    pub bridge: Spanned<String>,
    pub units: Spanned<Value>,
    pub writes: Option<Spanned<String>>,
    pub poll_writes: Option<Spanned<String>>,
    pub cloud_writes: Option<Spanned<String>>,
    pub facade_writes: Option<Spanned<String>>,
}

/// `[[ble]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBle {
    pub name: Option<Spanned<String>>,
    pub bridge: Spanned<String>,
    pub device: Spanned<String>,
    pub service: Spanned<String>,
    pub characteristics: Spanned<Value>,
    pub operations: Spanned<Value>,
    pub sources: Spanned<Value>,
}

/// `[[connect]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnect {
    pub name: Option<Spanned<String>>,
    pub compartment: Spanned<String>,
    pub host: Spanned<String>,
    pub ports: Spanned<Value>,
}

/// `[[listen]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub name: Option<Spanned<String>>,
    pub compartment: Spanned<String>,
    pub ports: Spanned<Value>,
}
