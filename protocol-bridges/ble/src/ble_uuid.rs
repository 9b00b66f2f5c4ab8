//! Bluetooth UUIDs as config text, as the policy sees them, and as the host stack does.

use std::fmt;

/// The Bluetooth base UUID (`0000xxxx-0000-1000-8000-00805F9B34FB`).
const BASE: u128 = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB;

/// A service or characteristic UUID, held as its 128-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BleUuid(pub u128);

/// A text that is not a BLE UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a UUID (4 or 8 hex digits, or xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
pub struct NotAUuid {
    /// The text as given.
    pub text: String,
}

impl BleUuid {
    /// A 16-bit UUID expanded with the base UUID.
    pub const fn from_u16(short: u16) -> Self {
        Self(warden_policy::ble_uuid16(short))
    }

    /// Parses `181A`, `0x181A`, `0000181a` (32-bit) or
    /// `5741524e-0000-4000-8000-00805f9b34fb`.
    pub fn parse(text: &str) -> Result<Self, NotAUuid> {
        let trimmed = text.trim();
        let hex = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let bad = || NotAUuid {
            text: text.to_owned(),
        };
        let digits: String = hex.chars().filter(|c| *c != '-').collect();
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match (hex.len(), digits.len()) {
            (4, 4) | (8, 8) => {
                let value = u32::from_str_radix(&digits, 16).map_err(|_| bad())?;
                Ok(Self(BASE | (u128::from(value) << 96)))
            }
            (36, 32) if is_dashed(hex) => {
                Ok(Self(u128::from_str_radix(&digits, 16).map_err(|_| bad())?))
            }
            _ => Err(bad()),
        }
    }

    /// The 16-bit short form, when this UUID has one.
    pub fn as_u16(self) -> Option<u16> {
        let short = (self.0 >> 96) as u32;
        (self.0 & !(0xFFFF_FFFFu128 << 96) == BASE && short <= 0xFFFF).then_some(short as u16)
    }

    /// The UUID as trouble-host takes it (16-bit when possible, else 128-bit little endian).
    pub fn to_host(self) -> trouble_host::prelude::Uuid {
        match self.as_u16() {
            Some(short) => trouble_host::prelude::Uuid::new_short(short),
            None => trouble_host::prelude::Uuid::new_long(self.0.to_le_bytes()),
        }
    }
}

fn is_dashed(text: &str) -> bool {
    text.char_indices()
        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'))
}

impl fmt::Display for BleUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(short) = self.as_u16() {
            return write!(f, "{short:04X}");
        }
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let temperature = BleUuid::parse("2A6E").expect("16-bit");
        assert_eq!(temperature, BleUuid::parse("0x2a6e").expect("0x"));
        assert_eq!(
            temperature,
            BleUuid::parse("00002a6e-0000-1000-8000-00805f9b34fb").expect("long")
        );
        assert_eq!(temperature.as_u16(), Some(0x2A6E));
        assert_eq!(temperature.to_string(), "2A6E");
        let custom = BleUuid::parse("5741524E-0001-4000-8000-00805F9B34FB").expect("custom");
        assert_eq!(custom.as_u16(), None);
        assert_eq!(custom.to_string(), "5741524e-0001-4000-8000-00805f9b34fb");
        assert_eq!(BleUuid::parse(&custom.to_string()), Ok(custom));
    }

    #[test]
    fn malformed_uuids_are_refused() {
        for bad in [
            "",
            "2A6",
            "2A6EE",
            "zz6e",
            "5741524E00014000800000805F9B34FB",
            "5741524E-0001-4000-8000-00805F9B34F-",
        ] {
            assert!(BleUuid::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
