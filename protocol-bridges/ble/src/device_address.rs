//! BLE device addresses: config text, the policy's byte order, the host stack's.

use std::fmt;

use serde::Deserialize;
use trouble_host::prelude::{AddrKind, BdAddr};

/// Whether an address is public (IEEE-assigned) or random (static or private).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// A public device address.
    Public,
    /// A random (usually static) address: what most sensors use.
    #[default]
    Random,
}

/// A device address, most significant byte first as people write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceAddress {
    /// Bytes, most significant first (`C0:FF:EE:00:00:01` is `[0xC0, .., 0x01]`).
    pub bytes: [u8; 6],
    /// Public or random.
    pub kind: AddressKind,
}

/// Why a text is not a device address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadAddress {
    /// Not six parts separated by `:`.
    #[error("{text:?} is not a device address (six hex bytes separated by ':')")]
    NotSixBytes {
        /// The text as given.
        text: String,
    },
    /// One part is not two hex digits.
    #[error("{text:?}: byte {byte:?} is not two hex digits")]
    BadByte {
        /// The text as given.
        text: String,
        /// The part that is wrong.
        byte: String,
    },
}

impl DeviceAddress {
    /// Parses `C0:FF:EE:00:00:01`.
    pub fn parse(text: &str, kind: AddressKind) -> Result<Self, BadAddress> {
        let mut bytes = [0u8; 6];
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(BadAddress::NotSixBytes {
                text: text.to_owned(),
            });
        }
        for (slot, part) in bytes.iter_mut().zip(&parts) {
            let bad_byte = || BadAddress::BadByte {
                text: text.to_owned(),
                byte: (*part).to_owned(),
            };
            if part.len() != 2 {
                return Err(bad_byte());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad_byte())?;
        }
        Ok(Self { bytes, kind })
    }

    /// The address as the host stack and HCI carry it (least significant byte first).
    pub fn to_host(self) -> trouble_host::Address {
        let mut raw = self.bytes;
        raw.reverse();
        trouble_host::Address {
            kind: match self.kind {
                AddressKind::Public => AddrKind::PUBLIC,
                AddressKind::Random => AddrKind::RANDOM,
            },
            addr: BdAddr::new(raw),
        }
    }

    /// The address of an advertiser or peer reported by the host stack.
    pub fn from_host(kind: AddrKind, addr: &BdAddr) -> Self {
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(addr.raw());
        bytes.reverse();
        Self {
            bytes,
            kind: if kind == AddrKind::PUBLIC {
                AddressKind::Public
            } else {
                AddressKind::Random
            },
        }
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_converts() {
        let address = DeviceAddress::parse("C0:FF:EE:00:00:01", AddressKind::Random).expect("ok");
        assert_eq!(address.bytes, [0xC0, 0xFF, 0xEE, 0, 0, 1]);
        assert_eq!(address.to_string(), "C0:FF:EE:00:00:01");
        let host = address.to_host();
        assert_eq!(host.addr.raw(), &[1, 0, 0, 0xEE, 0xFF, 0xC0]);
        assert_eq!(DeviceAddress::from_host(host.kind, &host.addr), address);
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "C0:FF:EE:00:00",
            "C0:FF:EE:00:00:01:02",
            "C0:FF:EE:00:00:G1",
            "C0:FF:EE:00:00:001",
        ] {
            assert!(
                DeviceAddress::parse(bad, AddressKind::Public).is_err(),
                "{bad:?}"
            );
        }
    }
}
