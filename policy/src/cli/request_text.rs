//! The request language of `explain`: parses one request written as text.
//!
//! The request text of `warden policy explain --request`: one request per line,
//! `key=value` words:
//!
//! ```text
//! modbus bridge=line1 unit=1 fn=6 addr=5 value=25 source=cloud
//! modbus bridge=line1 unit=1 fn=read_holding_registers ref=40001 count=10 source=poll
//! modbus bridge=line1 unit=1 fn=16 addr=5 values=1,2,3 source=facade
//! ble bridge=ble0 device=C0:FF:EE:00:00:01 service=180F char=2A19 op=read source=poll
//! connect compartment=link host=fleet.example port=8883
//! listen compartment=web port=8443
//! ```
//!
//! `addr` is the 0-based protocol address; `ref` is the reference number (40001 is
//! holding register 0). `count` defaults to the number of values, or 1. `function`,
//! `address`, `characteristic`, `operation` are accepted for `fn`, `addr`, `char`, `op`.

use std::fmt;

use crate::compiler::CompiledPolicy;
use crate::compiler::syntax::{
    format_device, format_uuid, parse_device, parse_int, parse_uuid, split_reference,
};
use crate::request::{
    BleOperation, BleRequest, BridgeId, CompartmentId, FunctionKind, MODBUS_FUNCTIONS,
    ModbusRequest, Request, Source, function_kind,
};

/// Request text that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestTextError {
    /// Nothing given.
    #[error("the request is empty; start it with modbus, ble, connect or listen")]
    Empty,
    /// First word is not a request kind.
    #[error("unknown request kind \"{0}\" (modbus, ble, connect or listen)")]
    UnknownKind(String),
    /// A word without `=`.
    #[error("\"{0}\" is not key=value")]
    NotKeyValue(String),
    /// A key the kind does not take.
    #[error("a {kind} request has no key \"{key}\"")]
    UnknownKey {
        /// Request kind.
        kind: &'static str,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("key \"{0}\" is given twice")]
    Duplicate(String),
    /// A required key is missing.
    #[error("a {kind} request needs {key}=")]
    Missing {
        /// Request kind.
        kind: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A value does not parse.
    #[error("{key}={value}: expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// A request parsed from text, owning its values and host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    pub(super) kind: ParsedKind,
    pub(super) values: Vec<u16>,
    pub(super) host: String,
    /// Bridge or compartment name as written.
    pub(super) target: String,
    /// Canonical text of the request.
    pub(super) canonical: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ParsedKind {
    Modbus {
        bridge: BridgeId,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        source: Source,
    },
    Ble(BleRequest),
    Connect {
        compartment: CompartmentId,
        port: u16,
    },
    Listen {
        compartment: CompartmentId,
        port: u16,
    },
}

impl ParsedRequest {
    /// The request to evaluate. Unknown bridge or compartment names become ids the
    /// policy does not have (so they are denied as unknown).
    pub fn as_request(&self) -> Request<'_> {
        match &self.kind {
            ParsedKind::Modbus {
                bridge,
                unit,
                function,
                address,
                count,
                source,
            } => Request::Modbus(ModbusRequest {
                bridge: *bridge,
                unit: *unit,
                function: *function,
                address: *address,
                count: *count,
                values: &self.values,
                source: *source,
            }),
            ParsedKind::Ble(ble) => Request::Ble(*ble),
            ParsedKind::Connect { compartment, port } => Request::Connect {
                compartment: *compartment,
                host: &self.host,
                port: *port,
            },
            ParsedKind::Listen { compartment, port } => Request::Listen {
                compartment: *compartment,
                port: *port,
            },
        }
    }
}

impl fmt::Display for ParsedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

struct Words<'t> {
    kind: &'static str,
    pairs: Vec<(&'t str, &'t str, bool)>,
}

impl<'t> Words<'t> {
    fn take(&mut self, keys: &[&str]) -> Option<(&'t str, &'t str)> {
        let found = self
            .pairs
            .iter_mut()
            .find(|(k, _, used)| !used && keys.contains(k))?;
        found.2 = true;
        Some((found.0, found.1))
    }

    fn require(&mut self, keys: &[&'static str]) -> Result<(&'t str, &'t str), RequestTextError> {
        self.take(keys).ok_or(RequestTextError::Missing {
            kind: self.kind,
            key: keys[0],
        })
    }

    fn finish(&self) -> Result<(), RequestTextError> {
        match self.pairs.iter().find(|(_, _, used)| !used) {
            Some((key, _, _)) => Err(RequestTextError::UnknownKey {
                kind: self.kind,
                key: key.to_string(),
            }),
            None => Ok(()),
        }
    }
}

fn bad(key: &str, value: &str, expected: &'static str) -> RequestTextError {
    RequestTextError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

fn number<T: TryFrom<i64>>(
    (key, value): (&str, &str),
    expected: &'static str,
) -> Result<T, RequestTextError> {
    parse_int(value)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| bad(key, value, expected))
}

fn source((key, value): (&str, &str)) -> Result<Source, RequestTextError> {
    Source::from_name(value).ok_or_else(|| bad(key, value, "poll, cloud or facade"))
}

/// Parses request text (syntax in the module docs) against `policy`'s names.
pub fn parse_request(
    policy: &CompiledPolicy,
    text: &str,
) -> Result<ParsedRequest, RequestTextError> {
    let mut words = text.split_whitespace();
    let kind = match words.next() {
        None => return Err(RequestTextError::Empty),
        Some("modbus") => "modbus",
        Some("ble") => "ble",
        Some("connect") => "connect",
        Some("listen") => "listen",
        Some(other) => return Err(RequestTextError::UnknownKind(other.to_string())),
    };
    let mut pairs: Vec<(&str, &str, bool)> = Vec::new();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| RequestTextError::NotKeyValue(word.to_string()))?;
        if pairs.iter().any(|(k, _, _)| *k == key) {
            return Err(RequestTextError::Duplicate(key.to_string()));
        }
        pairs.push((key, value, false));
    }
    let mut w = Words { kind, pairs };
    let unknown_bridge = BridgeId(u16::MAX);
    let unknown_compartment = CompartmentId(u16::MAX);
    let parsed = match kind {
        "modbus" => {
            let (_, bridge_name) = w.require(&["bridge"])?;
            let unit: u8 = number(w.require(&["unit"])?, "a unit id 0..=255")?;
            let (fk, fv) = w.require(&["fn", "function"])?;
            let function = MODBUS_FUNCTIONS
                .iter()
                .find(|(_, name)| *name == fv)
                .map(|(code, _)| *code)
                .or_else(|| parse_int(fv).and_then(|n| u8::try_from(n).ok()))
                .ok_or_else(|| bad(fk, fv, "a function code or name"))?;
            let address = match (w.take(&["addr", "address"]), w.take(&["ref", "reference"])) {
                (Some(a), None) => number::<u16>(a, "an address 0..=65535")?,
                (None, Some((rk, rv))) => {
                    let reference: i64 = number((rk, rv), "a reference like 40001")?;
                    split_reference(reference)
                        .map(|(_, address)| address)
                        .map_err(|_| bad(rk, rv, "a reference like 40001"))?
                }
                (Some((ak, _)), Some(_)) => {
                    return Err(RequestTextError::Duplicate(format!("{ak} (with ref)")));
                }
                (None, None)
                    if matches!(function_kind(function), Some(FunctionKind::Addressless)) =>
                {
                    0
                }
                (None, None) => return Err(RequestTextError::Missing { kind, key: "addr" }),
            };
            let values: Vec<u16> = match w.take(&["value", "values"]) {
                Some((vk, vv)) => vv
                    .split(',')
                    .map(|v| {
                        parse_int(v)
                            .and_then(|n| {
                                if n < 0 {
                                    i16::try_from(n).ok().map(|s| s as u16)
                                } else {
                                    u16::try_from(n).ok()
                                }
                            })
                            .ok_or_else(|| bad(vk, vv, "comma-separated 16-bit values"))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let count = match w.take(&["count"]) {
                Some(c) => number::<u16>(c, "a count 1..=65535")?,
                None => u16::try_from(values.len().max(1)).unwrap_or(u16::MAX),
            };
            let source = source(w.require(&["source"])?)?;
            let values_text = if values.is_empty() {
                String::new()
            } else {
                let shown: Vec<String> = values.iter().map(u16::to_string).collect();
                format!(" values={}", shown.join(","))
            };
            let canonical = format!(
                "modbus bridge={bridge_name} unit={unit} fn={function} addr={address} count={count}{values_text} source={source}"
            );
            ParsedRequest {
                kind: ParsedKind::Modbus {
                    bridge: policy.bridge_id(bridge_name).unwrap_or(unknown_bridge),
                    unit,
                    function,
                    address,
                    count,
                    source,
                },
                values,
                host: String::new(),
                target: bridge_name.to_string(),
                canonical,
            }
        }
        "ble" => {
            let (_, bridge_name) = w.require(&["bridge"])?;
            let (dk, dv) = w.require(&["device"])?;
            let device = parse_device(dv)
                .map_err(|_| bad(dk, dv, "a device address like C0:FF:EE:00:00:01"))?;
            let (sk, sv) = w.require(&["service"])?;
            let service = parse_uuid(sv).map_err(|_| bad(sk, sv, "a UUID like 180F"))?;
            let (ck, cv) = w.require(&["char", "characteristic"])?;
            let characteristic = parse_uuid(cv).map_err(|_| bad(ck, cv, "a UUID like 2A19"))?;
            let (ok, ov) = w.require(&["op", "operation"])?;
            let operation = BleOperation::from_name(ov).ok_or_else(|| {
                bad(
                    ok,
                    ov,
                    "read, write, write_without_response, notify or indicate",
                )
            })?;
            let source = source(w.require(&["source"])?)?;
            let canonical = format!(
                "ble bridge={bridge_name} device={} service={} char={} op={} source={source}",
                format_device(device),
                format_uuid(service),
                format_uuid(characteristic),
                operation.name()
            );
            ParsedRequest {
                kind: ParsedKind::Ble(BleRequest {
                    bridge: policy.bridge_id(bridge_name).unwrap_or(unknown_bridge),
                    device,
                    service,
                    characteristic,
                    operation,
                    source,
                }),
                values: Vec::new(),
                host: String::new(),
                target: bridge_name.to_string(),
                canonical,
            }
        }
        _ => {
            let (_, compartment_name) = w.require(&["compartment"])?;
            let compartment = policy
                .compartment_id(compartment_name)
                .unwrap_or(unknown_compartment);
            let host = if kind == "connect" {
                w.require(&["host"])?.1.to_string()
            } else {
                String::new()
            };
            let port: u16 = number(w.require(&["port"])?, "a port 0..=65535")?;
            if kind == "connect" {
                ParsedRequest {
                    canonical: format!(
                        "connect compartment={compartment_name} host={host} port={port}"
                    ),
                    kind: ParsedKind::Connect { compartment, port },
                    values: Vec::new(),
                    host,
                    target: compartment_name.to_string(),
                }
            } else {
                ParsedRequest {
                    canonical: format!("listen compartment={compartment_name} port={port}"),
                    kind: ParsedKind::Listen { compartment, port },
                    values: Vec::new(),
                    host,
                    target: compartment_name.to_string(),
                }
            }
        }
    };
    w.finish()?;
    Ok(parsed)
}
