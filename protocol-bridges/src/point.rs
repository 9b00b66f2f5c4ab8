//! Points: typed, scaled views of equipment coils and registers.

use serde::Deserialize;
pub use warden_wire::topics::MAX_POINT_DECIMALS;

use crate::sample::Value;

/// Which table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Coils (read with 0x01, written with 0x05/0x0F).
    Coil,
    /// Discrete inputs (read with 0x02, read-only).
    DiscreteInput,
    /// Holding registers (read with 0x03, written with 0x06/0x10).
    Holding,
    /// Input registers (read with 0x04, read-only).
    Input,
}

impl RegisterKind {
    /// True for the one-bit tables (coils and discrete inputs).
    pub const fn is_bit(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }

    /// The function that reads this table.
    pub const fn read_function(self) -> crate::modbus::pdu::FunctionCode {
        use crate::modbus::pdu::FunctionCode;
        match self {
            Self::Coil => FunctionCode::ReadCoils,
            Self::DiscreteInput => FunctionCode::ReadDiscreteInputs,
            Self::Holding => FunctionCode::ReadHoldingRegisters,
            Self::Input => FunctionCode::ReadInputRegisters,
        }
    }

    /// The name used in config files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Coil => "coil",
            Self::DiscreteInput => "discrete_input",
            Self::Holding => "holding",
            Self::Input => "input",
        }
    }
}

/// How the registers of a point are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// One coil or discrete input; on a register, true when it is non-zero.
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned (values above 2^53 lose precision as numbers).
    U64,
    /// Four registers, two's complement.
    I64,
    /// Two registers, IEEE 754 single precision.
    F32,
    /// Four registers, IEEE 754 double precision.
    F64,
    /// `length` registers of text, two bytes per register (trailing NULs and spaces
    /// trimmed).
    String,
}

impl DataType {
    /// Number of 16-bit registers the type spans (for `string`, see
    /// [`PointConfig::register_count`]; 1 here).
    pub const fn register_count(self) -> u16 {
        match self {
            Self::Bool | Self::U16 | Self::I16 | Self::String => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
        }
    }

    /// The name used in config files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::String => "string",
        }
    }
}

/// Order of the 16-bit words of a multi-register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// Most significant word first (the Modbus convention).
    #[default]
    BigEndian,
    /// Least significant word first ("word swapped").
    LittleEndian,
}

/// Order of the two bytes inside each register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    /// Most significant byte first (the Modbus convention).
    #[default]
    BigEndian,
    /// Least significant byte first ("byte swapped").
    LittleEndian,
}

/// One point as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Name, unique within its bridge (`boiler_temperature`).
    pub name: String,
    /// Register table.
    pub kind: RegisterKind,
    /// First register or bit, 0-based protocol address.
    pub address: u16,
    /// Modbus unit of the point; the bridge's `unit` when absent.
    #[serde(default)]
    pub unit_id: Option<u8>,
    /// Interpretation of the registers.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Registers of a `string` point.
    #[serde(default)]
    pub length: Option<u16>,
    /// Word order for multi-register types.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Byte order inside each register.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// Engineering value = raw × scale + offset.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown to people (`°C`, `rpm`).
    #[serde(default)]
    pub unit: String,
    /// A new number is reported only when it differs from the last reported one by at
    /// least this much (engineering units), a bool or a text only when it changed; 0
    /// reports every number and bool ([`crate::deadband`]).
    #[serde(default)]
    pub deadband: f64,
    /// How often to read the point, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Decimal places the value is shown with on the status page and the fleet's
    /// dashboard (numbers only, 0..=[`MAX_POINT_DECIMALS`]); absent: as read, float
    /// noise trimmed. Display only: readings carry the full value.
    #[serde(default)]
    pub decimals: Option<u8>,
}

/// Why a point's `decimals` cannot be taken, or nothing: it is for number points only,
/// and at most [`MAX_POINT_DECIMALS`]. Shared by every kind of bridge.
pub fn decimals_problem(decimals: Option<u8>, data_type: DataType) -> Option<String> {
    let decimals = decimals?;
    if matches!(data_type, DataType::Bool | DataType::String) {
        return Some(format!(
            "only number points take decimals, not {}",
            data_type.name()
        ));
    }
    (decimals > MAX_POINT_DECIMALS)
        .then(|| format!("{decimals} is more than the {MAX_POINT_DECIMALS} allowed"))
}

fn one() -> f64 {
    1.0
}

fn default_poll_interval_ms() -> u64 {
    1000
}

/// A decoded point value in engineering units.
pub type PointValue = f64;

/// A value to write to a point.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteValue {
    /// Engineering value (scaled back to raw before writing).
    Number(f64),
    /// On or off (coils and `bool` points).
    Bool(bool),
    /// Text for a `string` point.
    Text(String),
}

/// Why a value cannot be written to a point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PointError {
    /// The point's table cannot be written.
    #[error("point {point} is a {} and cannot be written", kind.name())]
    ReadOnly {
        /// Point name.
        point: String,
        /// Its table.
        kind: RegisterKind,
    },
    /// The value does not fit the point's type after scaling.
    #[error("value {value} is outside what {point} ({}) can hold after scaling", data_type.name())]
    OutOfRange {
        /// Point name.
        point: String,
        /// Value asked for.
        value: String,
        /// The point's type.
        data_type: DataType,
    },
    /// The value's kind does not match the point's type.
    #[error("point {point} ({}) cannot take {given}", data_type.name())]
    WrongKind {
        /// Point name.
        point: String,
        /// The point's type.
        data_type: DataType,
        /// What was given.
        given: &'static str,
    },
}

impl PointConfig {
    /// Registers (or bits) the point spans.
    pub fn register_count(&self) -> u16 {
        if self.kind.is_bit() {
            return 1;
        }
        match self.data_type {
            DataType::String => self.length.unwrap_or(1).max(1),
            other => other.register_count(),
        }
    }

    /// Decodes `registers` (exactly [`Self::register_count`] of them) into the
    /// point's engineering value (a `bool` as 0 or 1); `None` when the count is wrong
    /// or it is a string.
    pub fn decode(&self, registers: &[u16]) -> Option<PointValue> {
        self.decode_registers(registers)?.as_number()
    }

    /// Decodes a bit read from a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }

    /// Decodes `registers` (exactly [`Self::register_count`] of them).
    pub fn decode_registers(&self, registers: &[u16]) -> Option<Value> {
        if registers.len() != usize::from(self.register_count()) {
            return None;
        }
        let word = |i: usize| -> u16 {
            let raw = registers[i];
            match self.byte_order {
                ByteOrder::BigEndian => raw,
                ByteOrder::LittleEndian => raw.swap_bytes(),
            }
        };
        if self.data_type == DataType::String {
            let mut bytes = Vec::with_capacity(registers.len() * 2);
            for i in 0..registers.len() {
                bytes.extend_from_slice(&word(i).to_be_bytes());
            }
            let text = String::from_utf8_lossy(&bytes);
            return Some(Value::Text(text.trim_end_matches(['\0', ' ']).to_owned()));
        }
        // Assemble the words most significant first.
        let n = registers.len();
        let mut bits = 0u64;
        for k in 0..n {
            let index = match self.word_order {
                WordOrder::BigEndian => k,
                WordOrder::LittleEndian => n - 1 - k,
            };
            bits = (bits << 16) | u64::from(word(index));
        }
        let raw = match self.data_type {
            DataType::Bool => return Some(Value::Bool(bits != 0)),
            DataType::U16 => bits as u16 as f64,
            DataType::I16 => f64::from(bits as u16 as i16),
            DataType::U32 => f64::from(bits as u32),
            DataType::I32 => f64::from(bits as u32 as i32),
            DataType::F32 => f64::from(f32::from_bits(bits as u32)),
            DataType::U64 => bits as f64,
            DataType::I64 => bits as i64 as f64,
            DataType::F64 => f64::from_bits(bits),
            DataType::String => return None,
        };
        Some(Value::Number(raw * self.scale + self.offset))
    }

    /// The registers that hold `value` (engineering units scaled back to raw and
    /// rounded), in the point's word and byte order.
    pub fn encode_registers(&self, value: &WriteValue) -> Result<Vec<u16>, PointError> {
        let out_of_range = || PointError::OutOfRange {
            point: self.name.clone(),
            value: match value {
                WriteValue::Number(v) => v.to_string(),
                WriteValue::Bool(b) => b.to_string(),
                WriteValue::Text(t) => format!("{t:?}"),
            },
            data_type: self.data_type,
        };
        let wrong = |given| PointError::WrongKind {
            point: self.name.clone(),
            data_type: self.data_type,
            given,
        };
        let words: Vec<u16> = match (self.data_type, value) {
            (DataType::String, WriteValue::Text(text)) => {
                let capacity = usize::from(self.register_count()) * 2;
                if text.len() > capacity {
                    return Err(out_of_range());
                }
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(capacity, 0);
                bytes
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                    .collect()
            }
            (DataType::String, _) => return Err(wrong("a number")),
            (_, WriteValue::Text(_)) => return Err(wrong("text")),
            (DataType::Bool, WriteValue::Bool(b)) => vec![u16::from(*b)],
            (DataType::Bool, WriteValue::Number(v)) if *v == 0.0 || *v == 1.0 => {
                vec![*v as u16]
            }
            (DataType::Bool, WriteValue::Number(_)) => return Err(out_of_range()),
            (data_type, value) => {
                let engineering = match value {
                    WriteValue::Number(v) => *v,
                    WriteValue::Bool(b) => f64::from(u8::from(*b)),
                    WriteValue::Text(_) => return Err(wrong("text")),
                };
                let raw = (engineering - self.offset) / self.scale;
                if !raw.is_finite() {
                    return Err(out_of_range());
                }
                let integer = |min: f64, max: f64| -> Result<u64, PointError> {
                    let rounded = raw.round();
                    if rounded < min || rounded > max {
                        return Err(out_of_range());
                    }
                    Ok(rounded as i64 as u64)
                };
                let (bits, words) = match data_type {
                    DataType::U16 => (integer(0.0, 65_535.0)?, 1),
                    DataType::I16 => (integer(-32_768.0, 32_767.0)? & 0xFFFF, 1),
                    DataType::U32 => (integer(0.0, 4_294_967_295.0)?, 2),
                    DataType::I32 => (integer(-2_147_483_648.0, 2_147_483_647.0)? & 0xFFFF_FFFF, 2),
                    DataType::U64 => {
                        if !(0.0..18_446_744_073_709_551_616.0).contains(&raw) {
                            return Err(out_of_range());
                        }
                        (raw.round() as u64, 4)
                    }
                    DataType::I64 => (
                        integer(-9.223_372_036_854_776e18, 9.223_372_036_854_775e18)?,
                        4,
                    ),
                    DataType::F32 => {
                        let single = raw as f32;
                        if !single.is_finite() {
                            return Err(out_of_range());
                        }
                        (u64::from(single.to_bits()), 2)
                    }
                    DataType::F64 => (raw.to_bits(), 4),
                    DataType::Bool | DataType::String => return Err(out_of_range()),
                };
                let mut big_first: Vec<u16> = (0..words)
                    .rev()
                    .map(|k| (bits >> (16 * k)) as u16)
                    .collect();
                if self.word_order == WordOrder::LittleEndian {
                    big_first.reverse();
                }
                big_first
            }
        };
        Ok(match self.byte_order {
            ByteOrder::BigEndian => words,
            ByteOrder::LittleEndian => words.into_iter().map(u16::swap_bytes).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(data_type: DataType, word_order: WordOrder, scale: f64, offset: f64) -> PointConfig {
        PointConfig {
            name: "p".into(),
            kind: RegisterKind::Holding,
            address: 0,
            unit_id: None,
            data_type,
            length: None,
            word_order,
            byte_order: ByteOrder::BigEndian,
            scale,
            offset,
            unit: String::new(),
            deadband: 0.0,
            poll_interval_ms: 1000,
            decimals: None,
        }
    }

    #[test]
    fn scaling_and_signedness() {
        assert_eq!(
            point(DataType::U16, WordOrder::BigEndian, 0.1, 0.0).decode(&[215]),
            Some(21.5)
        );
        assert_eq!(
            point(DataType::I16, WordOrder::BigEndian, 1.0, 0.0).decode(&[0xFFFE]),
            Some(-2.0)
        );
        assert_eq!(
            point(DataType::U16, WordOrder::BigEndian, 2.0, -10.0).decode(&[5]),
            Some(0.0)
        );
    }

    #[test]
    fn word_order_of_two_register_values() {
        let big = point(DataType::U32, WordOrder::BigEndian, 1.0, 0.0);
        let little = point(DataType::U32, WordOrder::LittleEndian, 1.0, 0.0);
        assert_eq!(big.decode(&[0x0001, 0x0002]), Some(65_538.0));
        assert_eq!(little.decode(&[0x0002, 0x0001]), Some(65_538.0));
        let float = point(DataType::F32, WordOrder::BigEndian, 1.0, 0.0);
        let bits = 1.5f32.to_bits();
        assert_eq!(float.decode(&[(bits >> 16) as u16, bits as u16]), Some(1.5));
        assert_eq!(float.decode(&[1]), None);
    }

    #[test]
    fn sixty_four_bit_types_and_byte_order() {
        let mut double = point(DataType::F64, WordOrder::BigEndian, 1.0, 0.0);
        let bits = (-1234.5f64).to_bits();
        let words: Vec<u16> = (0..4).rev().map(|k| (bits >> (16 * k)) as u16).collect();
        assert_eq!(double.decode(&words), Some(-1234.5));
        double.byte_order = ByteOrder::LittleEndian;
        double.word_order = WordOrder::LittleEndian;
        let swapped: Vec<u16> = words.iter().rev().map(|w| w.swap_bytes()).collect();
        assert_eq!(double.decode(&swapped), Some(-1234.5));
        let signed = point(DataType::I64, WordOrder::BigEndian, 1.0, 0.0);
        assert_eq!(signed.decode(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD]), Some(-3.0));
        let unsigned = point(DataType::U64, WordOrder::BigEndian, 1.0, 0.0);
        assert_eq!(unsigned.decode(&[0, 0, 1, 0]), Some(65_536.0));
    }

    #[test]
    fn strings_decode_and_encode() {
        let mut text = point(DataType::String, WordOrder::BigEndian, 1.0, 0.0);
        text.length = Some(4);
        let words = text
            .encode_registers(&WriteValue::Text("PRESS-7".into()))
            .expect("fits 8 bytes");
        assert_eq!(words.len(), 4);
        assert_eq!(
            text.decode_registers(&words),
            Some(Value::Text("PRESS-7".into()))
        );
        assert!(
            text.encode_registers(&WriteValue::Text("TOO LONG!".into()))
                .is_err()
        );
    }

    #[test]
    fn writes_scale_back_and_round_trip() {
        for (data_type, word_order, value) in [
            (DataType::U16, WordOrder::BigEndian, 21.5),
            (DataType::I16, WordOrder::BigEndian, -3.2),
            (DataType::I32, WordOrder::LittleEndian, -100_000.0),
            (DataType::U32, WordOrder::BigEndian, 4_000_000.0),
            (DataType::F32, WordOrder::LittleEndian, 12.25),
            (DataType::I64, WordOrder::BigEndian, -5.0e12),
            (DataType::F64, WordOrder::LittleEndian, 1.0e-3),
        ] {
            let p = point(data_type, word_order, 0.1, 0.0);
            let words = p
                .encode_registers(&WriteValue::Number(value))
                .expect("in range");
            let back = p.decode(&words).expect("decodes");
            assert!(
                (back - value).abs() < 1e-6 * value.abs().max(1.0),
                "{data_type:?}: {back} vs {value}"
            );
        }
        let small = point(DataType::U16, WordOrder::BigEndian, 1.0, 0.0);
        assert!(matches!(
            small.encode_registers(&WriteValue::Number(70_000.0)),
            Err(PointError::OutOfRange { .. })
        ));
        assert!(matches!(
            small.encode_registers(&WriteValue::Number(-1.0)),
            Err(PointError::OutOfRange { .. })
        ));
    }
}
