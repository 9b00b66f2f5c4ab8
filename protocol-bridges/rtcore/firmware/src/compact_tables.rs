//! Policy tables sized for the real-time core.
//!
//! `warden_policy::DecodedTables` reserves the policy's full capacities (about
//! 70 KiB), more than the core's 64 KiB of RAM. This decodes the same postcard body
//! (field order of `warden_policy::PolicyTables`) into smaller fixed capacities, copies
//! the name pool so nothing borrows the upload buffer, and hands the evaluator the
//! same `PolicyTables` view, checked by the policy crate's own `validate`. A policy
//! larger than these capacities is refused as `TooLarge`.
//!
//! TODO(lead): move into `warden-policy` as `DecodedTables` with const-generic
//! capacities, so there is one decoder.

use core::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use warden_policy::tables::{
    BleRule, BridgeEntry, ConnectRule, ListenRule, ModbusGroup, ModbusSegment, NameRef,
    PolicyTables, RuleEntry, TABLES_FORMAT, TableError, UnitLimit, fnv1a64,
};

/// Bytes of names (bridges, rules, compartments, hosts).
pub const MAX_NAMES: usize = 1024;
/// Bridges.
pub const MAX_BRIDGES: usize = 8;
/// Compartments.
pub const MAX_COMPARTMENTS: usize = 8;
/// Rules of every kind.
pub const MAX_RULES: usize = 64;
/// Allowed write values (value sets).
pub const MAX_VALUES: usize = 128;
/// (bridge, unit, function, source) groups.
pub const MAX_GROUPS: usize = 128;
/// Address segments.
pub const MAX_SEGMENTS: usize = 256;
/// Per-unit write limits.
pub const MAX_UNIT_LIMITS: usize = 16;
/// BLE rules (the core only evaluates Modbus, but the tables carry them).
pub const MAX_BLE_RULES: usize = 8;
/// Connection rules.
pub const MAX_CONNECT_RULES: usize = 16;
/// Listening rules.
pub const MAX_LISTEN_RULES: usize = 16;

/// Decoded tables in fixed capacities; empty tables deny everything.
pub struct CompactTables {
    names: heapless::String<MAX_NAMES>,
    bridges: heapless::Vec<BridgeEntry, MAX_BRIDGES>,
    compartments: heapless::Vec<NameRef, MAX_COMPARTMENTS>,
    rules: heapless::Vec<RuleEntry, MAX_RULES>,
    values: heapless::Vec<u16, MAX_VALUES>,
    modbus_groups: heapless::Vec<ModbusGroup, MAX_GROUPS>,
    modbus_segments: heapless::Vec<ModbusSegment, MAX_SEGMENTS>,
    unit_limits: heapless::Vec<UnitLimit, MAX_UNIT_LIMITS>,
    ble_rules: heapless::Vec<BleRule, MAX_BLE_RULES>,
    connect_rules: heapless::Vec<ConnectRule, MAX_CONNECT_RULES>,
    listen_rules: heapless::Vec<ListenRule, MAX_LISTEN_RULES>,
    rate_slots: u32,
    fingerprint: u64,
}

struct PushInto<'v, T, const N: usize> {
    target: &'v mut heapless::Vec<T, N>,
    overflow: &'v mut bool,
}

impl<'de, T: Deserialize<'de>, const N: usize> DeserializeSeed<'de> for PushInto<'_, T, N> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for PushInto<'_, T, N> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {N} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.target.clear();
        while let Some(item) = seq.next_element()? {
            if self.target.push(item).is_err() {
                *self.overflow = true;
                return Err(de::Error::custom("too many entries"));
            }
        }
        Ok(())
    }
}

impl CompactTables {
    /// Empty tables: every request is denied.
    pub const fn new() -> Self {
        Self {
            names: heapless::String::new(),
            bridges: heapless::Vec::new(),
            compartments: heapless::Vec::new(),
            rules: heapless::Vec::new(),
            values: heapless::Vec::new(),
            modbus_groups: heapless::Vec::new(),
            modbus_segments: heapless::Vec::new(),
            unit_limits: heapless::Vec::new(),
            ble_rules: heapless::Vec::new(),
            connect_rules: heapless::Vec::new(),
            listen_rules: heapless::Vec::new(),
            rate_slots: 0,
            fingerprint: 0,
        }
    }

    /// Decodes and validates `body` in place; on error the tables are left empty.
    pub fn decode_from(&mut self, body: &[u8]) -> Result<(), TableError> {
        let result = self
            .decode_unchecked(body)
            .and_then(|()| self.tables().validate());
        if result.is_err() {
            *self = Self::new();
        }
        result
    }

    fn decode_unchecked(&mut self, body: &[u8]) -> Result<(), TableError> {
        let mut overflow = false;
        let mut de = postcard::Deserializer::from_bytes(body);
        let format = u16::deserialize(&mut de).map_err(|_| TableError::Malformed)?;
        if format != TABLES_FORMAT {
            return Err(TableError::UnsupportedFormat);
        }
        let names = <&str>::deserialize(&mut de).map_err(|_| TableError::Malformed)?;
        self.names.clear();
        self.names
            .push_str(names)
            .map_err(|_| TableError::TooLarge)?;
        macro_rules! list {
            ($field:ident) => {
                PushInto {
                    target: &mut self.$field,
                    overflow: &mut overflow,
                }
                .deserialize(&mut de)
                .map_err(|_| {
                    if overflow {
                        TableError::TooLarge
                    } else {
                        TableError::Malformed
                    }
                })?
            };
        }
        list!(bridges);
        list!(compartments);
        list!(rules);
        list!(values);
        list!(modbus_groups);
        list!(modbus_segments);
        list!(unit_limits);
        list!(ble_rules);
        list!(connect_rules);
        list!(listen_rules);
        self.rate_slots = u32::deserialize(&mut de).map_err(|_| TableError::Malformed)?;
        let rest = de.finalize().map_err(|_| TableError::Malformed)?;
        if !rest.is_empty() {
            return Err(TableError::TrailingBytes);
        }
        self.fingerprint = fnv1a64(body);
        Ok(())
    }

    /// The view the evaluator reads.
    pub fn tables(&self) -> PolicyTables<'_> {
        PolicyTables {
            format: TABLES_FORMAT,
            names: &self.names,
            bridges: &self.bridges,
            compartments: &self.compartments,
            rules: &self.rules,
            values: &self.values,
            modbus_groups: &self.modbus_groups,
            modbus_segments: &self.modbus_segments,
            unit_limits: &self.unit_limits,
            ble_rules: &self.ble_rules,
            connect_rules: &self.connect_rules,
            listen_rules: &self.listen_rules,
            rate_slots: self.rate_slots,
            fingerprint: self.fingerprint,
        }
    }
}
