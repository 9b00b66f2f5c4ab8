//! Points: typed, scaled views of equipment registers.

use serde::Deserialize;

/// Which register table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Holding registers (read with function 0x03, writable).
    Holding,
    /// Input registers (read with function 0x04, read-only).
    Input,
}

/// How the registers of a point are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl DataType {
    /// Number of 16-bit registers the type spans.
    pub const fn register_count(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
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

/// One point as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Name, unique within its bridge (`boiler_temperature`).
    pub name: String,
    /// Register table.
    pub kind: RegisterKind,
    /// First register, 0-based protocol address.
    pub address: u16,
    /// Interpretation of the registers.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Word order for multi-register types.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// Engineering value = raw × scale + offset.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown to people (`°C`, `rpm`).
    #[serde(default)]
    pub unit: String,
    /// How often to read the point, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn one() -> f64 {
    1.0
}

fn default_poll_interval_ms() -> u64 {
    1000
}

/// A decoded point value in engineering units.
pub type PointValue = f64;

impl PointConfig {
    /// Decodes `registers` (exactly [`DataType::register_count`] of them) into the
    /// point's engineering value; `None` when the count is wrong.
    pub fn decode(&self, registers: &[u16]) -> Option<PointValue> {
        if registers.len() != usize::from(self.data_type.register_count()) {
            return None;
        }
        let raw = match self.data_type {
            DataType::U16 => f64::from(registers[0]),
            DataType::I16 => f64::from(registers[0] as i16),
            DataType::U32 | DataType::I32 | DataType::F32 => {
                let (high, low) = match self.word_order {
                    WordOrder::BigEndian => (registers[0], registers[1]),
                    WordOrder::LittleEndian => (registers[1], registers[0]),
                };
                let bits = (u32::from(high) << 16) | u32::from(low);
                match self.data_type {
                    DataType::U32 => f64::from(bits),
                    DataType::I32 => f64::from(bits as i32),
                    _ => f64::from(f32::from_bits(bits)),
                }
            }
        };
        Some(raw * self.scale + self.offset)
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
            data_type,
            word_order,
            scale,
            offset,
            unit: String::new(),
            poll_interval_ms: 1000,
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
}
