//! Characteristic bytes to points and back, with the Modbus points' typing and scaling.
//!
//! A field of a characteristic value is turned into 16-bit words (two bytes each, in
//! value order) and handed to [`warden_bridges::point::PointConfig`], so `type`,
//! `word_order`, `byte_order`, `scale` and `offset` mean exactly what they mean for a
//! Modbus point. BLE values are little endian, so both orders default to
//! `little_endian` here. Fields narrower than their type (`bytes`) are zero- or
//! sign-extended first.

use warden_bridges::point::{
    ByteOrder, DataType, PointConfig, PointError, RegisterKind, WordOrder, WriteValue,
};
use warden_bridges::sample::Value;

use crate::point_config::BlePointConfig;

/// How one point's field is cut out of a characteristic value and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueCodec {
    /// The Modbus-style point that does typing and scaling.
    point: PointConfig,
    /// First byte of the field.
    byte_offset: usize,
    /// Bytes of the field on the air (text: `None` = to the end of the value).
    field_len: Option<usize>,
    /// Bytes of the type (text: 0).
    type_len: usize,
}

/// Why a characteristic value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("point {point}: the value has {got} bytes, the field needs bytes {start}..{end}")]
pub struct ShortValue {
    /// Point name.
    pub point: String,
    /// Bytes received.
    pub got: usize,
    /// First byte of the field.
    pub start: usize,
    /// End of the field (exclusive).
    pub end: usize,
}

impl ValueCodec {
    /// Builds the codec of a configured point; on error, the field name and message.
    pub(crate) fn new(config: &BlePointConfig) -> Result<Self, (&'static str, String)> {
        let type_len = usize::from(config.data_type.register_count()) * 2;
        let is_text = config.data_type == DataType::String;
        let field_len = match (config.data_type, config.bytes) {
            (DataType::String, bytes) => bytes.map(usize::from),
            (DataType::Bool, None) => Some(1),
            (_, None) => Some(type_len),
            (DataType::Bool | DataType::F32 | DataType::F64, Some(_)) => {
                return Err((
                    "bytes",
                    format!(
                        "is only for integer and string types, not {}",
                        config.data_type.name()
                    ),
                ));
            }
            (_, Some(bytes)) => {
                let bytes = usize::from(bytes);
                if bytes == 0 || bytes > type_len {
                    return Err((
                        "bytes",
                        format!(
                            "{bytes} must be 1..={type_len} for a {}",
                            config.data_type.name()
                        ),
                    ));
                }
                if bytes < type_len && !uniform_order(config.word_order, config.byte_order) {
                    return Err((
                        "bytes",
                        "a narrow field needs word_order and byte_order both little_endian or \
                         both big_endian"
                            .into(),
                    ));
                }
                Some(bytes)
            }
        };
        if is_text && field_len == Some(0) {
            return Err(("bytes", "a text field needs at least 1 byte".into()));
        }
        let point = PointConfig {
            name: config.name.clone(),
            kind: RegisterKind::Holding,
            address: 0,
            unit_id: None,
            data_type: config.data_type,
            length: None,
            word_order: config.word_order,
            byte_order: config.byte_order,
            scale: config.scale,
            offset: config.offset,
            unit: config.unit.clone(),
            deadband: config.deadband,
            poll_interval_ms: config.poll_interval_ms,
            decimals: config.decimals,
        };
        Ok(Self {
            point,
            byte_offset: usize::from(config.byte_offset),
            field_len,
            type_len: if is_text { 0 } else { type_len },
        })
    }

    /// The point's type.
    pub fn data_type(&self) -> DataType {
        self.point.data_type
    }

    /// Decodes the point's field out of a whole characteristic value.
    pub fn decode(&self, value: &[u8]) -> Result<Value, ShortValue> {
        let start = self.byte_offset;
        let end = match self.field_len {
            Some(len) => start + len,
            None => value.len().max(start),
        };
        let field = value.get(start..end).ok_or_else(|| ShortValue {
            point: self.point.name.clone(),
            got: value.len(),
            start,
            end,
        })?;
        if self.point.data_type == DataType::Bool {
            return Ok(self.point.decode_bit(field.iter().any(|b| *b != 0)));
        }
        if self.point.data_type == DataType::String {
            // UTF-8 text, in value order (no word or byte swapping).
            let text = String::from_utf8_lossy(field);
            return Ok(Value::Text(text.trim_end_matches(['\0', ' ']).to_owned()));
        }
        let bytes = if field.len() < self.type_len {
            self.extend(field)
        } else {
            field.to_vec()
        };
        let words: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        // The word count matches the type by construction.
        Ok(self
            .point
            .decode_registers(&words)
            .unwrap_or(Value::Number(f64::NAN)))
    }

    /// The bytes of the whole field for a write of `value` (the field must be the whole
    /// characteristic: a write replaces the value).
    pub fn encode(&self, value: &WriteValue) -> Result<Vec<u8>, PointError> {
        if self.point.data_type == DataType::Bool {
            let on = match value {
                WriteValue::Bool(on) => *on,
                WriteValue::Number(n) if *n == 0.0 || *n == 1.0 => *n == 1.0,
                WriteValue::Number(n) => {
                    return Err(PointError::OutOfRange {
                        point: self.point.name.clone(),
                        value: n.to_string(),
                        data_type: DataType::Bool,
                    });
                }
                WriteValue::Text(_) => {
                    return Err(PointError::WrongKind {
                        point: self.point.name.clone(),
                        data_type: DataType::Bool,
                        given: "text",
                    });
                }
            };
            return Ok(vec![u8::from(on)]);
        }
        if self.point.data_type == DataType::String {
            let WriteValue::Text(text) = value else {
                return Err(PointError::WrongKind {
                    point: self.point.name.clone(),
                    data_type: DataType::String,
                    given: "a number",
                });
            };
            let mut bytes = text.as_bytes().to_vec();
            if let Some(capacity) = self.field_len {
                if bytes.len() > capacity {
                    return Err(PointError::OutOfRange {
                        point: self.point.name.clone(),
                        value: format!("{text:?}"),
                        data_type: DataType::String,
                    });
                }
                bytes.resize(capacity, 0);
            }
            return Ok(bytes);
        }
        let point = &self.point;
        let words = point.encode_registers(value)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        match self.field_len {
            Some(len) if len < bytes.len() => self.narrow(&bytes, len, value),
            _ => Ok(bytes),
        }
    }

    /// True when the high end of the value is the first byte (big-endian layout).
    fn big_endian(&self) -> bool {
        self.point.byte_order == ByteOrder::BigEndian
    }

    fn signed(&self) -> bool {
        matches!(
            self.point.data_type,
            DataType::I16 | DataType::I32 | DataType::I64
        )
    }

    /// Zero- or sign-extends a narrow field to the type's width.
    fn extend(&self, field: &[u8]) -> Vec<u8> {
        let missing = self.type_len - field.len();
        let top = if self.big_endian() {
            field.first()
        } else {
            field.last()
        };
        let fill = match top {
            Some(byte) if self.signed() && byte & 0x80 != 0 => 0xFF,
            _ => 0x00,
        };
        let mut out = Vec::with_capacity(self.type_len);
        if self.big_endian() {
            out.resize(missing, fill);
            out.extend_from_slice(field);
        } else {
            out.extend_from_slice(field);
            out.resize(self.type_len, fill);
        }
        out
    }

    /// Cuts a full-width encoding down to `len` bytes, refusing values that do not fit.
    fn narrow(&self, bytes: &[u8], len: usize, value: &WriteValue) -> Result<Vec<u8>, PointError> {
        let (kept, dropped) = if self.big_endian() {
            let (high, low) = bytes.split_at(bytes.len() - len);
            (low, high)
        } else {
            let (low, high) = bytes.split_at(len);
            (low, high)
        };
        let out = kept.to_vec();
        // The value fits when extending the kept bytes gives back the full encoding.
        if self.extend(&out) != bytes || dropped.is_empty() {
            return Err(PointError::OutOfRange {
                point: self.point.name.clone(),
                value: format!("{value:?}"),
                data_type: self.point.data_type,
            });
        }
        Ok(out)
    }
}

fn uniform_order(words: WordOrder, bytes: ByteOrder) -> bool {
    matches!(
        (words, bytes),
        (WordOrder::LittleEndian, ByteOrder::LittleEndian)
            | (WordOrder::BigEndian, ByteOrder::BigEndian)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point_config::BleAccess;

    fn config(data_type: DataType, bytes: Option<u16>, scale: f64) -> BlePointConfig {
        BlePointConfig {
            name: "p".into(),
            service: "181A".into(),
            characteristic: "2A6E".into(),
            access: BleAccess::Read,
            data_type,
            bytes,
            byte_offset: 0,
            word_order: WordOrder::LittleEndian,
            byte_order: ByteOrder::LittleEndian,
            scale,
            offset: 0.0,
            unit: String::new(),
            deadband: 0.0,
            poll_interval_ms: 1000,
            decimals: None,
        }
    }

    fn number(codec: &ValueCodec, bytes: &[u8]) -> f64 {
        let value = codec.decode(bytes).expect("decodes");
        value
            .as_number()
            .unwrap_or_else(|| panic!("not a number: {value:?}"))
    }

    #[test]
    fn ble_temperature_is_little_endian_and_scaled() {
        let codec = ValueCodec::new(&config(DataType::I16, None, 0.01)).expect("codec");
        // 2150 = 0x0866 -> 21.50 °C; -1 -> -0.01 °C.
        assert!((number(&codec, &[0x66, 0x08]) - 21.5).abs() < 1e-9);
        assert!((number(&codec, &[0xFF, 0xFF]) + 0.01).abs() < 1e-9);
        assert_eq!(
            codec.encode(&WriteValue::Number(21.5)).expect("fits"),
            [0x66, 0x08]
        );
    }

    #[test]
    fn thirty_two_bit_and_float_values() {
        let codec = ValueCodec::new(&config(DataType::U32, None, 1.0)).expect("codec");
        assert_eq!(
            number(&codec, &[0x04, 0x03, 0x02, 0x01]),
            f64::from(0x0102_0304u32)
        );
        let float = ValueCodec::new(&config(DataType::F32, None, 1.0)).expect("codec");
        assert_eq!(number(&float, &1.25f32.to_le_bytes()), 1.25);
        assert_eq!(
            float.encode(&WriteValue::Number(1.25)).expect("fits"),
            1.25f32.to_le_bytes()
        );
    }

    #[test]
    fn narrow_fields_extend_by_signedness() {
        let uint8 = ValueCodec::new(&config(DataType::U16, Some(1), 1.0)).expect("codec");
        assert_eq!(number(&uint8, &[200]), 200.0);
        assert_eq!(
            uint8.encode(&WriteValue::Number(200.0)).expect("fits"),
            [200]
        );
        assert!(uint8.encode(&WriteValue::Number(300.0)).is_err());
        let sint24 = ValueCodec::new(&config(DataType::I32, Some(3), 1.0)).expect("codec");
        assert_eq!(number(&sint24, &[0xFE, 0xFF, 0xFF]), -2.0);
        assert_eq!(
            sint24.encode(&WriteValue::Number(-2.0)).expect("fits"),
            [0xFE, 0xFF, 0xFF]
        );
        assert!(sint24.encode(&WriteValue::Number(9_000_000.0)).is_err());
    }

    #[test]
    fn offsets_short_values_bools_and_text() {
        let mut at_two = config(DataType::U16, None, 1.0);
        at_two.byte_offset = 2;
        let codec = ValueCodec::new(&at_two).expect("codec");
        assert_eq!(number(&codec, &[9, 9, 0x34, 0x12]), 4660.0);
        let short = codec.decode(&[9, 9, 0x34]).expect_err("short");
        assert_eq!((short.got, short.start, short.end), (3, 2, 4));

        let flag = ValueCodec::new(&config(DataType::Bool, None, 1.0)).expect("codec");
        assert_eq!(number(&flag, &[1]), 1.0);
        assert_eq!(flag.decode(&[2]).expect("flag"), Value::Bool(true));
        assert_eq!(flag.decode(&[0]).expect("flag"), Value::Bool(false));
        assert_eq!(flag.encode(&WriteValue::Bool(true)).expect("bool"), [1]);

        let text = ValueCodec::new(&config(DataType::String, None, 1.0)).expect("codec");
        assert_eq!(
            text.decode(b"PRESS-7").expect("text"),
            Value::Text("PRESS-7".into())
        );
        assert_eq!(
            text.encode(&WriteValue::Text("abc".into())).expect("text"),
            b"abc"
        );
    }
}
