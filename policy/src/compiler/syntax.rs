//! Value syntax inside rules: ranges, references, rates, UUIDs, device addresses.

use toml::Value;

use crate::tables::RateLimit;

/// Why a value inside a rule does not parse; the checker prefixes the key and places
/// it at the value's line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SyntaxError {
    /// One end of a range is not an integer.
    #[error("\"{text}\": \"{part}\" is not a number")]
    RangeEndNotANumber { text: String, part: String },
    /// A range whose low end is above its high end.
    #[error("\"{text}\" is an empty range ({low} > {high})")]
    EmptyRange { text: String, low: i64, high: i64 },
    /// A range written with `..` (exclusive) instead of `..=`.
    #[error("\"{text}\": write inclusive ranges as \"a..=b\"")]
    ExclusiveRange { text: String },
    /// A text that is neither a number nor a range.
    #[error("\"{text}\" is not a {what} (write 5, \"5\" or \"0..=9\")")]
    NotANumber { text: String, what: &'static str },
    /// A value of the wrong TOML type where a number or range belongs.
    #[error("expected a {what} or a range like \"0..=9\", found {found}")]
    NotARange {
        what: &'static str,
        found: &'static str,
    },
    /// An empty list where a rule must name at least one item.
    #[error("the list of {what}s is empty; a rule must name at least one")]
    EmptyList { what: &'static str },
    /// A number outside what the item allows.
    #[error("{number} is not a valid {what} ({min}..={max})")]
    OutOfRange {
        number: i64,
        what: &'static str,
        min: i64,
        max: i64,
    },
    /// A reference number of neither 5 nor 6 digits.
    #[error("{reference} is not a Modbus reference (like 40001 or 400001)")]
    NotAReference { reference: i64 },
    /// A reference whose first digit names no table.
    #[error("{reference} is not a Modbus reference: tables are 0, 1, 3 and 4")]
    UnknownReferenceTable { reference: i64 },
    /// A reference with offset 0 (references count from 1).
    #[error("{reference} is not a Modbus reference: numbering starts at 1")]
    ReferenceZero { reference: i64 },
    /// A reference past the 65,536th address.
    #[error("{reference} is past the last Modbus reference")]
    PastLastReference { reference: i64 },
    /// A rate not written as `COUNT/PERIOD`.
    #[error("\"{text}\": write a rate as \"COUNT/PERIOD\", e.g. \"10/min\", \"1/10s\", \"100/h\"")]
    RateSyntax { text: String },
    /// A rate's count outside 1..=1000000.
    #[error("\"{text}\": the count must be 1..=1000000")]
    RateCount { text: String },
    /// A rate's period in an unknown unit.
    #[error("\"{text}\": unknown period unit \"{unit}\" (ms, s, min, h, d)")]
    RateUnit { text: String, unit: String },
    /// A rate's period outside 1 ms..=1 day.
    #[error("\"{text}\": the period must be 1ms..=1d")]
    RatePeriod { text: String },
    /// Not a 16-, 32- or 128-bit BLE UUID.
    #[error("\"{text}\" is not a BLE UUID (\"180F\", or \"0000180f-0000-1000-8000-00805f9b34fb\")")]
    NotAUuid { text: String },
    /// Not six ':'-separated parts.
    #[error("\"{text}\" is not a BLE device address (like \"C0:FF:EE:00:00:01\") or \"*\"")]
    NotADevice { text: String },
    /// A part of a device address that is not two hex digits.
    #[error("\"{text}\" is not a BLE device address: \"{part}\" is not a hex byte")]
    NotAHexByte { text: String, part: String },
    /// A list item that is not a string where names belong.
    #[error("expected a {what} name (a string), found {found}")]
    NotAName {
        what: &'static str,
        found: &'static str,
    },
    /// A BLE operation name the policy does not know.
    #[error("unknown operation \"{name}\" (read, write, write_without_response, notify, indicate)")]
    UnknownBleOperation { name: String },
}

/// Parses an integer written as decimal or `0x` hex, with an optional `-`.
pub(crate) fn parse_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => i64::from_str_radix(&hex.replace('_', ""), 16).ok()?,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') => {
            digits.replace('_', "").parse().ok()?
        }
        None => return None,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// One inclusive range from `5`, `"5"`, `"0..=9"`; `what` names the item in errors.
fn parse_one_range(value: &Value, what: &'static str) -> Result<(i64, i64), SyntaxError> {
    match value {
        Value::Integer(n) => Ok((*n, *n)),
        Value::String(text) => {
            let end = |part: &str| {
                parse_int(part).ok_or_else(|| SyntaxError::RangeEndNotANumber {
                    text: text.clone(),
                    part: part.to_owned(),
                })
            };
            if let Some((a, b)) = text.split_once("..=") {
                let (low, high) = (end(a)?, end(b)?);
                if low > high {
                    return Err(SyntaxError::EmptyRange {
                        text: text.clone(),
                        low,
                        high,
                    });
                }
                Ok((low, high))
            } else if text.contains("..") {
                Err(SyntaxError::ExclusiveRange { text: text.clone() })
            } else {
                let n = parse_int(text).ok_or_else(|| SyntaxError::NotANumber {
                    text: text.clone(),
                    what,
                })?;
                Ok((n, n))
            }
        }
        other => Err(SyntaxError::NotARange {
            what,
            found: type_name(other),
        }),
    }
}

/// A list of inclusive ranges from a scalar or an array, each inside `min..=max`.
pub(crate) fn parse_ranges(
    value: &Value,
    what: &'static str,
    min: i64,
    max: i64,
) -> Result<Vec<(i64, i64)>, SyntaxError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        return Err(SyntaxError::EmptyList { what });
    }
    let mut ranges = Vec::with_capacity(items.len());
    for item in items {
        let (low, high) = parse_one_range(item, what)?;
        for number in [low, high] {
            if number < min || number > max {
                return Err(SyntaxError::OutOfRange {
                    number,
                    what,
                    min,
                    max,
                });
            }
        }
        ranges.push((low, high));
    }
    Ok(ranges)
}

/// Sorted, merged copy of inclusive ranges.
pub(crate) fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if low <= last.1 + 1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    merged
}

/// The address table a Modbus reference number (`40001`, `300001`) points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReferenceTable {
    Coils,
    DiscreteInputs,
    InputRegisters,
    HoldingRegisters,
}

impl ReferenceTable {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ReferenceTable::Coils => "a coil (0xxxx)",
            ReferenceTable::DiscreteInputs => "a discrete input (1xxxx)",
            ReferenceTable::InputRegisters => "an input register (3xxxx)",
            ReferenceTable::HoldingRegisters => "a holding register (4xxxx)",
        }
    }

    /// The table a function code works on, if it has an address.
    pub(crate) fn of_function(function: u8) -> Option<Self> {
        match function {
            1 | 5 | 15 => Some(ReferenceTable::Coils),
            2 => Some(ReferenceTable::DiscreteInputs),
            4 => Some(ReferenceTable::InputRegisters),
            3 | 6 | 16 => Some(ReferenceTable::HoldingRegisters),
            _ => None,
        }
    }
}

/// Splits a reference number into its table and 0-based address: 5 digits
/// (`40001` → holding register 0) or 6 digits (`400001` → holding register 0).
pub(crate) fn split_reference(reference: i64) -> Result<(ReferenceTable, u16), SyntaxError> {
    let (digit, offset) = if (1..100_000).contains(&reference) {
        (reference / 10_000, reference % 10_000)
    } else if (100_000..1_000_000).contains(&reference) {
        (reference / 100_000, reference % 100_000)
    } else {
        return Err(SyntaxError::NotAReference { reference });
    };
    let table = match digit {
        0 => ReferenceTable::Coils,
        1 => ReferenceTable::DiscreteInputs,
        3 => ReferenceTable::InputRegisters,
        4 => ReferenceTable::HoldingRegisters,
        _ => return Err(SyntaxError::UnknownReferenceTable { reference }),
    };
    if offset == 0 || offset > 65_536 {
        return Err(SyntaxError::ReferenceZero { reference });
    }
    let address =
        u16::try_from(offset - 1).map_err(|_| SyntaxError::PastLastReference { reference })?;
    Ok((table, address))
}

/// Parses `"10/min"`, `"1/10s"`, `"100/h"`: events per period, period at most a day.
pub(crate) fn parse_rate(text: &str) -> Result<RateLimit, SyntaxError> {
    let syntax = || SyntaxError::RateSyntax {
        text: text.to_owned(),
    };
    let (count, period) = text.split_once('/').ok_or_else(syntax)?;
    let count: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|c| (1..=1_000_000).contains(c))
        .ok_or_else(|| SyntaxError::RateCount {
            text: text.to_owned(),
        })?;
    let period = period.trim();
    let split = period
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(period.len());
    let (multiplier, unit) = period.split_at(split);
    let multiplier: u64 = if multiplier.is_empty() {
        1
    } else {
        multiplier.parse().map_err(|_| syntax())?
    };
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(SyntaxError::RateUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let period_ms = multiplier.saturating_mul(unit_ms);
    if period_ms == 0 || period_ms > 86_400_000 {
        return Err(SyntaxError::RatePeriod {
            text: text.to_owned(),
        });
    }
    Ok(RateLimit {
        count,
        period_ms: period_ms as u32,
    })
}

/// Parses a BLE UUID: `"180F"` (16-bit), `"0000180F"` (32-bit) or the 36-character
/// 128-bit form.
pub(crate) fn parse_uuid(text: &str) -> Result<u128, SyntaxError> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let valid = hex.chars().all(|c| c.is_ascii_hexdigit());
    let not_a_uuid = || SyntaxError::NotAUuid {
        text: text.to_owned(),
    };
    match (hex.len(), valid) {
        (4 | 8, true) => {
            let short = u32::from_str_radix(&hex, 16).map_err(|_| not_a_uuid())?;
            Ok(0x0000_0000_0000_1000_8000_0080_5F9B_34FB | (u128::from(short) << 96))
        }
        (32, true) if text.len() == 36 || text.len() == 32 => {
            u128::from_str_radix(&hex, 16).map_err(|_| not_a_uuid())
        }
        _ => Err(not_a_uuid()),
    }
}

/// Formats a UUID: 16-bit form when it is one, else the 36-character form.
pub(crate) fn format_uuid(uuid: u128) -> String {
    let base = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB_u128;
    if uuid & !(0xFFFF_u128 << 96) == base {
        return format!("{:04X}", (uuid >> 96) as u16);
    }
    let h = format!("{uuid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses `"C0:FF:EE:00:00:01"`.
pub(crate) fn parse_device(text: &str) -> Result<[u8; 6], SyntaxError> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(SyntaxError::NotADevice {
            text: text.to_owned(),
        });
    }
    for (byte, part) in out.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)
            .ok()
            .filter(|_| part.len() == 2)
            .ok_or_else(|| SyntaxError::NotAHexByte {
                text: text.to_owned(),
                part: part.to_owned(),
            })?;
    }
    Ok(out)
}

/// Formats a device address.
pub(crate) fn format_device(device: [u8; 6]) -> String {
    device
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The strings of a string-or-array value.
pub(crate) fn string_list<'v>(
    value: &'v Value,
    what: &'static str,
) -> Result<Vec<&'v str>, SyntaxError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        return Err(SyntaxError::EmptyList { what });
    }
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            other => Err(SyntaxError::NotAName {
                what,
                found: type_name(other),
            }),
        })
        .collect()
}

/// TOML type name for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Formats merged ranges as `0..=9, 20` (addresses as `i64`, ports as `u16`).
pub(crate) fn format_ranges<T: core::fmt::Display + PartialEq>(ranges: &[(T, T)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Formats a rate back to its file form.
pub(crate) fn format_rate(rate: RateLimit) -> String {
    let period = match rate.period_ms {
        86_400_000 => "d".to_string(),
        3_600_000 => "h".to_string(),
        60_000 => "min".to_string(),
        1_000 => "s".to_string(),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    };
    format!("{}/{}", rate.count, period)
}
