//! Compiled rule tables: the signed, deterministic form the evaluator reads.
//!
//! The wire form is postcard of [`PolicyTables`] in field order (sequences as a varint
//! length and elements). The compiler produces it (std); [`BoundedTables`], the one
//! decoder, decodes it on a device into fixed-capacity vectors with no allocation, at
//! the application processor's capacities ([`DecodedTables`], names borrowed from the
//! input) or at the real-time core's ([`CoreTables`], names copied).

use core::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::request::{BridgeId, CompartmentId};

/// Version of the table encoding; the first field of every encoding.
pub const TABLES_FORMAT: u16 = 1;

/// Most bridges a policy may name: a gateway in front of a cell of 100 Modbus TCP
/// devices (one bridge each), with room for RTU buses and BLE bridges.
pub const MAX_BRIDGES: usize = 128;
/// Most compartments a policy may name.
pub const MAX_COMPARTMENTS: usize = 16;
/// Most rules (of every kind, limits included) in one policy.
pub const MAX_RULES: usize = 512;
/// Most entries in the pool of allowed write values.
pub const MAX_VALUES: usize = 512;
/// Most (bridge, unit, function, source) groups.
pub const MAX_GROUPS: usize = 1024;
/// Most address segments over all groups.
pub const MAX_SEGMENTS: usize = 2048;
/// Most per-unit limit entries.
pub const MAX_UNIT_LIMITS: usize = 128;
/// Most BLE rules.
pub const MAX_BLE_RULES: usize = 128;
/// Most outbound-connection rules.
pub const MAX_CONNECT_RULES: usize = 64;
/// Most listening-port rules.
pub const MAX_LISTEN_RULES: usize = 32;
/// Most rate-limit buckets (8 bytes each in `RateState` (the `rate` module)).
pub const MAX_RATE_SLOTS: u32 = 65_536;

/// A string in the tables' name pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRef {
    /// Byte offset in the pool.
    pub offset: u32,
    /// Byte length.
    pub len: u32,
}

/// Which protocol a bridge speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BridgeKind {
    /// Modbus RTU or TCP.
    Modbus,
    /// BLE GATT.
    Ble,
}

/// A bridge named in the policy; its index is its [`BridgeId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeEntry {
    /// Name in the policy file.
    pub name: NameRef,
    /// Protocol.
    pub kind: BridgeKind,
}

/// The kind of a rule; also says which table refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RuleKind {
    /// A `[[modbus]]` rule.
    Modbus,
    /// A `[[modbus_limit]]` entry.
    ModbusLimit,
    /// A `[[ble]]` rule.
    Ble,
    /// A `[[connect]]` rule.
    Connect,
    /// A `[[listen]]` rule.
    Listen,
}

/// A token-bucket rate: `count` events per `period_ms`, bursts up to `count`.
/// `count == 0` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateLimit {
    /// Events per period (and the burst size).
    pub count: u32,
    /// Period in milliseconds.
    pub period_ms: u32,
}

impl RateLimit {
    /// No limit.
    pub const NONE: RateLimit = RateLimit {
        count: 0,
        period_ms: 0,
    };

    /// True if this limits anything.
    pub const fn is_limited(&self) -> bool {
        self.count != 0
    }
}

/// What values a write rule accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ValueCheck {
    /// Read rules and addressless functions: no values.
    NotApplicable,
    /// Any value (the file said `values = "any"`).
    Any,
    /// An inclusive range; values compared as `i16` when `signed`, else as `u16`.
    Range {
        /// Lowest allowed value.
        min: i32,
        /// Highest allowed value.
        max: i32,
        /// Compare as two's-complement `i16`.
        signed: bool,
    },
    /// One of `len` values at `offset` in the value pool (sorted, as raw `u16`).
    Set {
        /// Offset in [`PolicyTables::values`].
        offset: u32,
        /// Number of values.
        len: u32,
    },
}

/// One rule: its name and the constraints that apply after its addresses match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    /// Name in the policy file (or a generated `modbus#2` style label).
    pub name: NameRef,
    /// Kind.
    pub kind: RuleKind,
    /// Values check for Modbus writes.
    pub values: ValueCheck,
    /// Per-point rate limit for Modbus writes (one bucket per unit and address).
    pub rate: RateLimit,
}

/// Packs a (bridge, unit, function, source) group key; groups sort by it.
pub const fn group_key(bridge: u16, unit: u8, function: u8, source: u8) -> u64 {
    ((bridge as u64) << 24) | ((unit as u64) << 16) | ((function as u64) << 8) | source as u64
}

/// All segments of one (bridge, unit, function, source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModbusGroup {
    /// [`group_key`] of the group.
    pub key: u64,
    /// Index of the first segment.
    pub first: u32,
    /// Number of segments.
    pub len: u32,
}

/// A contiguous address range decided by one rule. Segments of a group are sorted
/// and do not overlap; where rules overlap, the earlier rule in the file decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModbusSegment {
    /// First address (inclusive).
    pub start: u16,
    /// Last address (inclusive).
    pub end: u16,
    /// Deciding rule.
    pub rule: u16,
    /// Rate bucket of `start` for the rule's per-point limit (`start + k` uses
    /// `slot + k`), or [`NO_SLOT`].
    pub slot: u32,
}

/// Marks a segment without a per-point rate limit.
pub const NO_SLOT: u32 = u32::MAX;

/// Write limits of one unit of one bridge (a `[[modbus_limit]]` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLimit {
    /// Bridge.
    pub bridge: u16,
    /// Unit.
    pub unit: u8,
    /// The `[[modbus_limit]]` rule.
    pub rule: u16,
    /// All writes to the unit, any source (bucket `slot`).
    pub writes: RateLimit,
    /// Writes to the unit per source (bucket `slot + 1 + source index`).
    pub per_source: [RateLimit; 3],
    /// First of four buckets.
    pub slot: u32,
}

/// A BLE rule: operations on one characteristic of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BleRule {
    /// Bridge.
    pub bridge: u16,
    /// Device address, or `None` for any device on the bridge.
    pub device: Option<[u8; 6]>,
    /// Service UUID.
    pub service: u128,
    /// Characteristic UUID.
    pub characteristic: u128,
    /// Mask of [`crate::request::BleOperation::bit`].
    pub operations: u8,
    /// Mask of [`crate::request::Source::bit`].
    pub sources: u8,
    /// The rule.
    pub rule: u16,
}

/// An outbound connection a compartment may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRule {
    /// Compartment.
    pub compartment: u16,
    /// Host (lowercase); with `subdomains`, the suffix after `*.`.
    pub host: NameRef,
    /// The file said `*.host`: any strict subdomain of `host` matches.
    pub subdomains: bool,
    /// Lowest port.
    pub port_min: u16,
    /// Highest port.
    pub port_max: u16,
    /// The rule.
    pub rule: u16,
}

/// A port a compartment may listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenRule {
    /// Compartment.
    pub compartment: u16,
    /// Lowest port.
    pub port_min: u16,
    /// Highest port.
    pub port_max: u16,
    /// The rule.
    pub rule: u16,
}

/// Borrowed view of compiled tables: what the evaluator reads. Serialising it gives
/// the canonical encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyTables<'a> {
    /// [`TABLES_FORMAT`].
    pub format: u16,
    /// Name pool (bridge, compartment, rule and host names).
    pub names: &'a str,
    /// Bridges by [`BridgeId`].
    pub bridges: &'a [BridgeEntry],
    /// Compartments by [`CompartmentId`].
    pub compartments: &'a [NameRef],
    /// Rules by [`crate::request::RuleId`].
    pub rules: &'a [RuleEntry],
    /// Pool of allowed write values ([`ValueCheck::Set`]).
    pub values: &'a [u16],
    /// Modbus groups, sorted by key.
    pub modbus_groups: &'a [ModbusGroup],
    /// Modbus segments, grouped.
    pub modbus_segments: &'a [ModbusSegment],
    /// Unit write limits, sorted by (bridge, unit).
    pub unit_limits: &'a [UnitLimit],
    /// BLE rules, sorted by bridge, file order within a bridge.
    pub ble_rules: &'a [BleRule],
    /// Connection rules, sorted by compartment, file order within one.
    pub connect_rules: &'a [ConnectRule],
    /// Listening rules, sorted by compartment, file order within one.
    pub listen_rules: &'a [ListenRule],
    /// Rate buckets the policy needs.
    pub rate_slots: u32,
    /// FNV-1a of the encoding; binds `RateState` (the `rate` module) to this policy.
    #[serde(skip)]
    pub fingerprint: u64,
}

/// Why compiled tables could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// The bytes are not a postcard encoding of the tables.
    Malformed,
    /// Bytes follow the tables.
    TrailingBytes,
    /// The format field is not [`TABLES_FORMAT`].
    UnsupportedFormat,
    /// A table has more entries than its `MAX_*` capacity.
    TooLarge,
    /// An index, name or range points outside its table, or tables are unsorted.
    Inconsistent,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableError::Malformed => "policy tables are not a valid encoding",
            TableError::TrailingBytes => "bytes follow the policy tables",
            TableError::UnsupportedFormat => "policy tables use an unsupported format version",
            TableError::TooLarge => "a policy table exceeds its device capacity",
            TableError::Inconsistent => "policy tables refer outside themselves",
        })
    }
}

impl core::error::Error for TableError {}

/// 64-bit FNV-1a, used as the tables' fingerprint (not a security function).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl<'a> PolicyTables<'a> {
    /// Name of a pool reference ("" if it points outside the pool).
    pub fn name(&self, name: NameRef) -> &'a str {
        let start = name.offset as usize;
        let end = start.saturating_add(name.len as usize);
        self.names.get(start..end).unwrap_or("")
    }

    /// Id of a bridge by its policy name.
    pub fn bridge_id(&self, name: &str) -> Option<BridgeId> {
        let index = self
            .bridges
            .iter()
            .position(|b| self.name(b.name) == name)?;
        u16::try_from(index).ok().map(BridgeId)
    }

    /// Id of a compartment by its policy name.
    pub fn compartment_id(&self, name: &str) -> Option<CompartmentId> {
        let index = self
            .compartments
            .iter()
            .position(|c| self.name(*c) == name)?;
        u16::try_from(index).ok().map(CompartmentId)
    }

    /// Name of a rule ("" if the id is not in the tables).
    pub fn rule_name(&self, rule: crate::request::RuleId) -> &'a str {
        self.rules
            .get(usize::from(rule.0))
            .map(|r| self.name(r.name))
            .unwrap_or("")
    }

    /// Checks that every index, name and range stays inside the tables, so that
    /// decoded tables from a bundle cannot make the evaluator read elsewhere.
    pub fn validate(&self) -> Result<(), TableError> {
        let bad = Err(TableError::Inconsistent);
        if self.format != TABLES_FORMAT {
            return Err(TableError::UnsupportedFormat);
        }
        if self.bridges.len() > MAX_BRIDGES
            || self.compartments.len() > MAX_COMPARTMENTS
            || self.rules.len() > MAX_RULES
            || self.values.len() > MAX_VALUES
            || self.modbus_groups.len() > MAX_GROUPS
            || self.modbus_segments.len() > MAX_SEGMENTS
            || self.unit_limits.len() > MAX_UNIT_LIMITS
            || self.ble_rules.len() > MAX_BLE_RULES
            || self.connect_rules.len() > MAX_CONNECT_RULES
            || self.listen_rules.len() > MAX_LISTEN_RULES
            || self.rate_slots > MAX_RATE_SLOTS
        {
            return Err(TableError::TooLarge);
        }
        let name_ok = |n: NameRef| {
            let start = n.offset as usize;
            start
                .checked_add(n.len as usize)
                .is_some_and(|end| self.names.get(start..end).is_some())
        };
        let rule_ok = |r: u16| usize::from(r) < self.rules.len();
        let rate_ok = |r: RateLimit| r.count == 0 || r.period_ms != 0;
        let slot_ok = |slot: u32, extent: u32| {
            slot.checked_add(extent)
                .is_some_and(|end| end <= self.rate_slots)
        };
        if !self.bridges.iter().all(|b| name_ok(b.name))
            || !self.compartments.iter().all(|c| name_ok(*c))
        {
            return bad;
        }
        for rule in self.rules {
            if !name_ok(rule.name) || !rate_ok(rule.rate) {
                return bad;
            }
            match rule.values {
                ValueCheck::Set { offset, len } => {
                    let end = offset.checked_add(len).ok_or(TableError::Inconsistent)?;
                    if end as usize > self.values.len() {
                        return bad;
                    }
                }
                ValueCheck::Range { min, max, .. } if min > max => return bad,
                _ => {}
            }
        }
        let mut previous_key = None;
        let mut next_segment = 0u32;
        for group in self.modbus_groups {
            if previous_key.is_some_and(|k| k >= group.key)
                || group.first != next_segment
                || group.len == 0
            {
                return bad;
            }
            previous_key = Some(group.key);
            next_segment = group
                .first
                .checked_add(group.len)
                .ok_or(TableError::Inconsistent)?;
            if next_segment as usize > self.modbus_segments.len()
                || (group.key >> 24) as usize >= self.bridges.len()
            {
                return bad;
            }
            let segments = &self.modbus_segments[group.first as usize..next_segment as usize];
            let mut previous_end: Option<u16> = None;
            for segment in segments {
                if segment.start > segment.end
                    || previous_end.is_some_and(|end| end >= segment.start)
                    || !rule_ok(segment.rule)
                    || (segment.slot != NO_SLOT
                        && !slot_ok(segment.slot, u32::from(segment.end - segment.start) + 1))
                {
                    return bad;
                }
                previous_end = Some(segment.end);
            }
        }
        if next_segment as usize != self.modbus_segments.len() {
            return bad;
        }
        let mut previous_unit = None;
        for limit in self.unit_limits {
            let key = (limit.bridge, limit.unit);
            if previous_unit.is_some_and(|p| p >= key)
                || !rule_ok(limit.rule)
                || usize::from(limit.bridge) >= self.bridges.len()
                || !slot_ok(limit.slot, 4)
                || !rate_ok(limit.writes)
                || !limit.per_source.iter().all(|r| rate_ok(*r))
            {
                return bad;
            }
            previous_unit = Some(key);
        }
        if !self
            .ble_rules
            .windows(2)
            .all(|w| w[0].bridge <= w[1].bridge)
            || !self
                .ble_rules
                .iter()
                .all(|r| rule_ok(r.rule) && usize::from(r.bridge) < self.bridges.len())
            || !self
                .connect_rules
                .windows(2)
                .all(|w| w[0].compartment <= w[1].compartment)
            || !self.connect_rules.iter().all(|r| {
                rule_ok(r.rule)
                    && name_ok(r.host)
                    && r.port_min <= r.port_max
                    && usize::from(r.compartment) < self.compartments.len()
            })
            || !self
                .listen_rules
                .windows(2)
                .all(|w| w[0].compartment <= w[1].compartment)
            || !self.listen_rules.iter().all(|r| {
                rule_ok(r.rule)
                    && r.port_min <= r.port_max
                    && usize::from(r.compartment) < self.compartments.len()
            })
        {
            return bad;
        }
        Ok(())
    }
}

/// Where decoded tables keep their name pool: borrowed from the decoded bytes
/// (`&str`, no copy) or copied into a bounded string (`heapless::String<N>`), so the
/// tables outlive the buffer they were decoded from.
pub trait NamePool<'a> {
    /// The empty pool (tables that deny everything).
    const EMPTY: Self;

    /// Takes `names` as the pool; [`TableError::TooLarge`] if it does not fit.
    fn fill(&mut self, names: &'a str) -> Result<(), TableError>;

    /// The pool's text.
    fn as_str(&self) -> &str;
}

impl<'a> NamePool<'a> for &'a str {
    const EMPTY: Self = "";

    fn fill(&mut self, names: &'a str) -> Result<(), TableError> {
        *self = names;
        Ok(())
    }

    fn as_str(&self) -> &str {
        self
    }
}

impl<'a, const N: usize> NamePool<'a> for heapless::String<N> {
    const EMPTY: Self = heapless::String::new();

    fn fill(&mut self, names: &'a str) -> Result<(), TableError> {
        self.clear();
        self.push_str(names).map_err(|_| TableError::TooLarge)
    }

    fn as_str(&self) -> &str {
        self
    }
}

/// Tables decoded on a device: the one decoder of compiled tables, generic over the
/// device's capacities. `Names` is the name pool ([`NamePool`]); each const parameter
/// is the capacity of the table of the same name. Tables larger than a capacity are
/// refused as [`TableError::TooLarge`]; every decoded set is checked by
/// [`PolicyTables::validate`].
///
/// Two capacity sets are named: [`DecodedTables`] (the application processor: the
/// policy's full `MAX_*` limits, names borrowed) and [`CoreTables`] (the real-time
/// core's 64 KiB of RAM, names copied).
#[derive(Clone, Debug)]
pub struct BoundedTables<
    Names,
    const BRIDGES: usize,
    const COMPARTMENTS: usize,
    const RULES: usize,
    const VALUES: usize,
    const GROUPS: usize,
    const SEGMENTS: usize,
    const UNIT_LIMITS: usize,
    const BLE_RULES: usize,
    const CONNECT_RULES: usize,
    const LISTEN_RULES: usize,
> {
    names: Names,
    bridges: heapless::Vec<BridgeEntry, BRIDGES>,
    compartments: heapless::Vec<NameRef, COMPARTMENTS>,
    rules: heapless::Vec<RuleEntry, RULES>,
    values: heapless::Vec<u16, VALUES>,
    modbus_groups: heapless::Vec<ModbusGroup, GROUPS>,
    modbus_segments: heapless::Vec<ModbusSegment, SEGMENTS>,
    unit_limits: heapless::Vec<UnitLimit, UNIT_LIMITS>,
    ble_rules: heapless::Vec<BleRule, BLE_RULES>,
    connect_rules: heapless::Vec<ConnectRule, CONNECT_RULES>,
    listen_rules: heapless::Vec<ListenRule, LISTEN_RULES>,
    rate_slots: u32,
    fingerprint: u64,
}

/// Tables decoded on the application processor: the policy's full capacities, names
/// borrowed from the input. About 70 KiB; keep it in a `static` or a long-lived task,
/// not on a small stack.
pub type DecodedTables<'a> = BoundedTables<
    &'a str,
    MAX_BRIDGES,
    MAX_COMPARTMENTS,
    MAX_RULES,
    MAX_VALUES,
    MAX_GROUPS,
    MAX_SEGMENTS,
    MAX_UNIT_LIMITS,
    MAX_BLE_RULES,
    MAX_CONNECT_RULES,
    MAX_LISTEN_RULES,
>;

/// Capacities of the real-time core (`protocol-bridges/rtcore/firmware`), whose RAM
/// is 64 KiB: a line or two of RTU devices, not a cell of 100.
pub mod core_capacity {
    /// Bytes of names (bridges, rules, compartments, hosts).
    pub const NAMES: usize = 1024;
    /// Bridges.
    pub const BRIDGES: usize = 8;
    /// Compartments.
    pub const COMPARTMENTS: usize = 8;
    /// Rules of every kind.
    pub const RULES: usize = 64;
    /// Allowed write values (value sets).
    pub const VALUES: usize = 128;
    /// (bridge, unit, function, source) groups.
    pub const GROUPS: usize = 128;
    /// Address segments.
    pub const SEGMENTS: usize = 256;
    /// Per-unit write limits.
    pub const UNIT_LIMITS: usize = 16;
    /// BLE rules (the core only evaluates Modbus, but the tables carry them).
    pub const BLE_RULES: usize = 8;
    /// Connection rules.
    pub const CONNECT_RULES: usize = 16;
    /// Listening rules.
    pub const LISTEN_RULES: usize = 16;
}

/// Tables decoded on the real-time core: [`core_capacity`], names copied so the
/// tables do not borrow the upload buffer (the next upload reuses it).
pub type CoreTables = BoundedTables<
    heapless::String<{ core_capacity::NAMES }>,
    { core_capacity::BRIDGES },
    { core_capacity::COMPARTMENTS },
    { core_capacity::RULES },
    { core_capacity::VALUES },
    { core_capacity::GROUPS },
    { core_capacity::SEGMENTS },
    { core_capacity::UNIT_LIMITS },
    { core_capacity::BLE_RULES },
    { core_capacity::CONNECT_RULES },
    { core_capacity::LISTEN_RULES },
>;

impl<
    'a,
    Names: NamePool<'a>,
    const BRIDGES: usize,
    const COMPARTMENTS: usize,
    const RULES: usize,
    const VALUES: usize,
    const GROUPS: usize,
    const SEGMENTS: usize,
    const UNIT_LIMITS: usize,
    const BLE_RULES: usize,
    const CONNECT_RULES: usize,
    const LISTEN_RULES: usize,
> Default
    for BoundedTables<
        Names,
        BRIDGES,
        COMPARTMENTS,
        RULES,
        VALUES,
        GROUPS,
        SEGMENTS,
        UNIT_LIMITS,
        BLE_RULES,
        CONNECT_RULES,
        LISTEN_RULES,
    >
{
    fn default() -> Self {
        Self::new()
    }
}

/// Deserialises a postcard sequence by pushing into an existing bounded vector.
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
        if seq.size_hint().is_some_and(|n| n > N) {
            *self.overflow = true;
            return Err(de::Error::custom("too many entries"));
        }
        while let Some(item) = seq.next_element()? {
            if self.target.push(item).is_err() {
                *self.overflow = true;
                return Err(de::Error::custom("too many entries"));
            }
        }
        Ok(())
    }
}

impl<
    Names,
    const BRIDGES: usize,
    const COMPARTMENTS: usize,
    const RULES: usize,
    const VALUES: usize,
    const GROUPS: usize,
    const SEGMENTS: usize,
    const UNIT_LIMITS: usize,
    const BLE_RULES: usize,
    const CONNECT_RULES: usize,
    const LISTEN_RULES: usize,
>
    BoundedTables<
        Names,
        BRIDGES,
        COMPARTMENTS,
        RULES,
        VALUES,
        GROUPS,
        SEGMENTS,
        UNIT_LIMITS,
        BLE_RULES,
        CONNECT_RULES,
        LISTEN_RULES,
    >
{
    /// Empty tables (deny everything); fill with [`BoundedTables::decode_from`].
    pub const fn new<'a>() -> Self
    where
        Names: NamePool<'a>,
    {
        BoundedTables {
            names: Names::EMPTY,
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

    /// Decodes and validates `bytes` in place. On error the tables are left empty,
    /// which denies everything.
    pub fn decode_from<'a>(&mut self, bytes: &'a [u8]) -> Result<(), TableError>
    where
        Names: NamePool<'a>,
    {
        let result = self
            .decode_unchecked(bytes)
            .and_then(|()| self.tables().validate());
        if result.is_err() {
            *self = Self::new();
        }
        result
    }

    fn decode_unchecked<'a>(&mut self, bytes: &'a [u8]) -> Result<(), TableError>
    where
        Names: NamePool<'a>,
    {
        let mut overflow = false;
        let mut de = postcard::Deserializer::from_bytes(bytes);
        let malformed = |overflow: bool| {
            if overflow {
                TableError::TooLarge
            } else {
                TableError::Malformed
            }
        };
        let format = u16::deserialize(&mut de).map_err(|_| TableError::Malformed)?;
        if format != TABLES_FORMAT {
            return Err(TableError::UnsupportedFormat);
        }
        let names = <&'a str>::deserialize(&mut de).map_err(|_| TableError::Malformed)?;
        self.names.fill(names)?;
        macro_rules! list {
            ($field:ident) => {
                PushInto {
                    target: &mut self.$field,
                    overflow: &mut overflow,
                }
                .deserialize(&mut de)
                .map_err(|_| malformed(overflow))?
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
        self.fingerprint = fnv1a64(bytes);
        Ok(())
    }

    /// The view the evaluator reads.
    pub fn tables<'a>(&self) -> PolicyTables<'_>
    where
        Names: NamePool<'a>,
    {
        PolicyTables {
            format: TABLES_FORMAT,
            names: self.names.as_str(),
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
