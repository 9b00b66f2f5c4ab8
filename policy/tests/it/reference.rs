//! Property test: the compiled evaluator agrees with a naive reference model.
//!
//! Random policies are generated as plain structs, rendered to TOML, compiled and
//! evaluated; the reference model interprets the same structs directly (lists in
//! file order, first match, token buckets in a map). For random request sequences
//! with a monotonic clock, every decision (verdict, reason and rule) must be equal.

use std::collections::HashMap;

use proptest::prelude::*;
use warden_policy::{
    BleOperation, BleRequest, BridgeId, CompartmentId, Decision, DecodedTables, ModbusRequest,
    RateState, Reason, Request, RuleId, Source, compile, evaluate,
};

#[derive(Clone, Debug)]
enum Values {
    Any,
    Range { min: i64, max: i64, signed: bool },
    Set { items: Vec<i64>, signed: bool },
}

#[derive(Clone, Debug)]
struct ModbusRule {
    bridge: usize,
    units: Vec<u8>,
    functions: Vec<u8>,
    ranges: Vec<(u16, u16)>,
    sources: Vec<Source>,
    values: Option<Values>,
    rate: Option<(u32, u32)>,
}

#[derive(Clone, Debug)]
struct Limit {
    bridge: usize,
    unit: u8,
    writes: Option<(u32, u32)>,
    cloud: Option<(u32, u32)>,
}

#[derive(Clone, Debug)]
struct BleRule {
    device: Option<u8>,
    service: u16,
    characteristics: Vec<u16>,
    operations: Vec<BleOperation>,
    sources: Vec<Source>,
}

#[derive(Clone, Debug)]
struct ConnectRule {
    compartment: usize,
    host: &'static str,
    ports: Vec<(u16, u16)>,
}

#[derive(Clone, Debug)]
struct ListenRule {
    compartment: usize,
    ports: Vec<(u16, u16)>,
}

#[derive(Clone, Debug)]
enum Rule {
    Modbus(ModbusRule),
    Limit(Limit),
    Ble(BleRule),
    Connect(ConnectRule),
    Listen(ListenRule),
}

const BRIDGES: [&str; 2] = ["line1", "line2"];
const COMPARTMENTS: [&str; 2] = ["link", "web"];
const HOSTS: [&str; 4] = ["fleet.example", "FLEET.example", "*.example", "other.test"];
const FUNCTIONS: [u8; 9] = [1, 2, 3, 4, 5, 6, 15, 16, 8];

fn is_write(f: u8) -> bool {
    matches!(f, 5 | 6 | 15 | 16)
}

fn rate_text((count, period): (u32, u32)) -> String {
    format!("{count}/{period}ms")
}

fn list<T: ToString>(items: &[T]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| format!("\"{}\"", i.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn ranges_text(ranges: &[(u16, u16)]) -> String {
    list(
        &ranges
            .iter()
            .map(|(a, b)| format!("{a}..={b}"))
            .collect::<Vec<_>>(),
    )
}

fn render(rules: &[Rule]) -> String {
    let mut out = String::new();
    for rule in rules {
        match rule {
            Rule::Modbus(r) => {
                out.push_str(&format!(
                    "[[modbus]]\nbridge = \"{}\"\nunits = {:?}\nfunctions = {:?}\nsources = {}\n",
                    BRIDGES[r.bridge],
                    r.units,
                    r.functions,
                    list(&r.sources.iter().map(|s| s.name()).collect::<Vec<_>>())
                ));
                if r.functions.iter().any(|f| *f != 8) {
                    out.push_str(&format!("addresses = {}\n", ranges_text(&r.ranges)));
                }
                match &r.values {
                    None => {}
                    Some(Values::Any) => out.push_str("values = \"any\"\n"),
                    Some(Values::Range { min, max, signed }) => {
                        out.push_str(&format!("values = \"{min}..={max}\"\nsigned = {signed}\n"))
                    }
                    Some(Values::Set { items, signed }) => {
                        out.push_str(&format!("values = {items:?}\nsigned = {signed}\n"))
                    }
                }
                if let Some(rate) = r.rate {
                    out.push_str(&format!("rate = \"{}\"\n", rate_text(rate)));
                }
            }
            Rule::Limit(l) => {
                out.push_str(&format!(
                    "[[modbus_limit]]\nbridge = \"{}\"\nunits = {}\n",
                    BRIDGES[l.bridge], l.unit
                ));
                if let Some(w) = l.writes {
                    out.push_str(&format!("writes = \"{}\"\n", rate_text(w)));
                }
                if let Some(c) = l.cloud {
                    out.push_str(&format!("cloud_writes = \"{}\"\n", rate_text(c)));
                }
            }
            Rule::Ble(b) => {
                let device = b
                    .device
                    .map_or("*".to_string(), |d| format!("C0:FF:EE:00:00:{d:02X}"));
                out.push_str(&format!(
                    "[[ble]]\nbridge = \"ble0\"\ndevice = \"{device}\"\nservice = \"{:04X}\"\ncharacteristics = {}\noperations = {}\nsources = {}\n",
                    b.service,
                    list(&b.characteristics.iter().map(|c| format!("{c:04X}")).collect::<Vec<_>>()),
                    list(&b.operations.iter().map(|o| o.name()).collect::<Vec<_>>()),
                    list(&b.sources.iter().map(|s| s.name()).collect::<Vec<_>>())
                ));
            }
            Rule::Connect(c) => out.push_str(&format!(
                "[[connect]]\ncompartment = \"{}\"\nhost = \"{}\"\nports = {}\n",
                COMPARTMENTS[c.compartment],
                c.host,
                ranges_text(&c.ports)
            )),
            Rule::Listen(l) => out.push_str(&format!(
                "[[listen]]\ncompartment = \"{}\"\nports = {}\n",
                COMPARTMENTS[l.compartment],
                ranges_text(&l.ports)
            )),
        }
        out.push('\n');
    }
    out
}

fn sources() -> impl Strategy<Value = Vec<Source>> {
    proptest::sample::subsequence(Source::ALL.to_vec(), 1..=3)
}

fn small_ranges(max: u16) -> impl Strategy<Value = Vec<(u16, u16)>> {
    proptest::collection::vec((0..max, 0..6u16).prop_map(|(a, w)| (a, a + w)), 1..3)
}

fn rate() -> impl Strategy<Value = (u32, u32)> {
    (1..4u32, prop_oneof![Just(100u32), Just(1_000), Just(250)])
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![
        Just(Values::Any),
        (0..4i64, 0..4i64).prop_map(|(a, w)| Values::Range {
            min: a,
            max: a + w,
            signed: false
        }),
        (-3..2i64, 0..4i64).prop_map(|(a, w)| Values::Range {
            min: a,
            max: a + w,
            signed: true
        }),
        proptest::collection::vec(0..4i64, 0..3).prop_map(|items| Values::Set {
            items,
            signed: false
        }),
        proptest::collection::vec(-2..2i64, 1..3).prop_map(|items| Values::Set {
            items,
            signed: true
        }),
    ]
}

fn modbus_rule() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
        proptest::sample::subsequence(vec![0u8, 1, 2, 3], 1..=2),
        proptest::sample::subsequence(FUNCTIONS.to_vec(), 1..=3),
        small_ranges(30),
        sources(),
        values(),
        prop_oneof![3 => rate().prop_map(Some), 1 => Just(None)],
    )
        .prop_map(
            |(bridge, units, functions, ranges, sources, values, rate)| {
                let writes = functions.iter().any(|f| is_write(*f));
                Rule::Modbus(ModbusRule {
                    bridge,
                    units,
                    functions,
                    ranges,
                    sources,
                    values: writes.then_some(values),
                    rate: if writes { rate } else { None },
                })
            },
        )
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        10 => modbus_rule(),
        1 => (0..2usize, 0..4u8, proptest::option::of(rate()), proptest::option::of(rate()))
            .prop_map(|(bridge, unit, writes, cloud)| Rule::Limit(Limit {
                bridge,
                unit,
                writes: writes.or(if cloud.is_none() { Some((2, 1000)) } else { None }),
                cloud,
            })),
        1 => (
            proptest::option::of(0..2u8),
            0x1800..0x1802u16,
            proptest::sample::subsequence(vec![0x2A00u16, 0x2A01, 0x2A02], 1..=2),
            proptest::sample::subsequence(BleOperation::ALL.to_vec(), 1..=3),
            sources(),
        )
            .prop_map(|(device, service, characteristics, operations, sources)| {
                Rule::Ble(BleRule { device, service, characteristics, operations, sources })
            }),
        1 => (0..2usize, proptest::sample::select(HOSTS.to_vec()), small_ranges(10).prop_map(|r| r.into_iter().map(|(a, b)| (a + 1, b + 1)).collect()))
            .prop_map(|(compartment, host, ports)| Rule::Connect(ConnectRule { compartment, host, ports })),
        1 => (0..2usize, small_ranges(10).prop_map(|r| r.into_iter().map(|(a, b)| (a + 1, b + 1)).collect()))
            .prop_map(|(compartment, ports)| Rule::Listen(ListenRule { compartment, ports })),
    ]
}

/// Drops limits that repeat a (bridge, unit): the language allows one per unit.
fn policy() -> impl Strategy<Value = Vec<Rule>> {
    proptest::collection::vec(rule(), 1..16).prop_map(|rules| {
        let mut seen = Vec::new();
        rules
            .into_iter()
            .filter(|r| match r {
                Rule::Limit(l) => {
                    let key = (l.bridge, l.unit);
                    let fresh = !seen.contains(&key);
                    seen.push(key);
                    fresh
                }
                _ => true,
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
enum TestRequest {
    Modbus {
        bridge: usize,
        unit: u8,
        function: u8,
        address: u16,
        count: u16,
        values: Vec<u16>,
        source: Source,
    },
    Ble {
        bridge: usize,
        device: u8,
        service: u16,
        characteristic: u16,
        operation: BleOperation,
        source: Source,
    },
    Connect {
        compartment: usize,
        host: &'static str,
        port: u16,
    },
    Listen {
        compartment: usize,
        port: u16,
    },
    /// Resolved against the policy: a Modbus request aimed at one of its rules.
    Targeted {
        pick: usize,
        choice: [usize; 4],
        offset: u16,
        count: u16,
        value: u16,
    },
}

/// Turns a targeted request into a Modbus request near the picked rule.
fn resolve(rules: &[Rule], request: &TestRequest) -> TestRequest {
    let TestRequest::Targeted {
        pick,
        choice,
        offset,
        count,
        value,
    } = request
    else {
        return request.clone();
    };
    let modbus: Vec<&ModbusRule> = rules
        .iter()
        .filter_map(|r| match r {
            Rule::Modbus(m) => Some(m),
            _ => None,
        })
        .collect();
    if modbus.is_empty() {
        return TestRequest::Listen {
            compartment: 0,
            port: 1,
        };
    }
    let m = modbus[pick % modbus.len()];
    let function = m.functions[choice[1] % m.functions.len()];
    let count = if matches!(function, 5 | 6) { 1 } else { *count };
    let range = m.ranges[choice[3] % m.ranges.len()];
    TestRequest::Modbus {
        bridge: m.bridge,
        unit: m.units[choice[0] % m.units.len()],
        function,
        address: range.0 + offset,
        count,
        values: if is_write(function) {
            vec![*value; usize::from(count)]
        } else {
            Vec::new()
        },
        source: m.sources[choice[2] % m.sources.len()],
    }
}

fn request() -> impl Strategy<Value = TestRequest> {
    let value = prop_oneof![4 => 0..3u16, 1 => any::<u16>()];
    prop_oneof![
        8 => (
            prop_oneof![6 => Just(0usize), 2 => Just(1usize), 1 => Just(2usize)],
            0..4u8,
            proptest::sample::select(vec![1u8, 2, 3, 4, 5, 6, 15, 16, 8, 23]),
            0..36u16,
            prop_oneof![6 => 1..4u16, 1 => 0..8u16],
            proptest::collection::vec(value, 0..8),
            proptest::sample::select(Source::ALL.to_vec()),
            proptest::bool::weighted(0.85),
        )
            .prop_map(|(bridge, unit, function, address, count, mut values, source, fit)| {
                if fit && is_write(function) {
                    values.resize(usize::from(count), 1);
                }
                let count = if matches!(function, 5 | 6) && fit { 1 } else { count };
                if fit && matches!(function, 5 | 6) { values.truncate(1); }
                if fit && !is_write(function) { values.clear(); }
                TestRequest::Modbus { bridge, unit, function, address, count, values, source }
            }),
        2 => (2..4usize, 0..3u8, 0x1800..0x1803u16, 0x2A00..0x2A03u16, proptest::sample::select(BleOperation::ALL.to_vec()), proptest::sample::select(Source::ALL.to_vec()))
            .prop_map(|(bridge, device, service, characteristic, operation, source)| TestRequest::Ble { bridge, device, service, characteristic, operation, source }),
        2 => (0..3usize, proptest::sample::select(vec!["fleet.example", "FLEET.EXAMPLE.", "a.fleet.example", "example", "other.test", "x.other.test"]), 0..13u16)
            .prop_map(|(compartment, host, port)| TestRequest::Connect { compartment, host, port }),
        1 => (0..3usize, 0..13u16).prop_map(|(compartment, port)| TestRequest::Listen { compartment, port }),
        12 => (any::<usize>(), any::<[usize; 4]>(), 0..7u16, 1..4u16, 0..3u16)
            .prop_map(|(pick, choice, offset, count, value)| TestRequest::Targeted { pick, choice, offset, count, value }),
    ]
}

/// The naive model: lists in file order, first match, token buckets in a map.
struct Reference<'p> {
    rules: &'p [Rule],
    buckets: HashMap<(usize, u8, u32), (u64, u64)>,
}

const ALL_UNIT: u32 = u32::MAX;

fn shape_ok(function: u8, address: u16, count: u16, values: &[u16]) -> Result<bool, Reason> {
    let (max, write, coils) = match function {
        1 | 2 => (2000, false, false),
        3 | 4 => (125, false, false),
        5 => (1, true, true),
        6 => (1, true, false),
        15 => (1968, true, true),
        16 => (123, true, false),
        8 => return Ok(false),
        _ => return Err(Reason::UnsupportedFunction),
    };
    let end = u32::from(address) + u32::from(count);
    let ok = count >= 1
        && count <= max
        && end <= 65_536
        && if write {
            values.len() == usize::from(count)
        } else {
            values.is_empty()
        }
        && (!coils || values.iter().all(|v| *v <= 1));
    if ok {
        Ok(write)
    } else {
        Err(Reason::MalformedRequest)
    }
}

fn value_ok(values: &Values, v: u16) -> bool {
    match values {
        Values::Any => true,
        Values::Range { min, max, signed } => {
            let x = if *signed {
                i64::from(v as i16)
            } else {
                i64::from(v)
            };
            *min <= x && x <= *max
        }
        Values::Set { items, signed } => {
            let x = if *signed {
                i64::from(v as i16)
            } else {
                i64::from(v)
            };
            items.contains(&x)
        }
    }
}

fn host_ok(pattern: &str, host: &str) -> bool {
    let host = host.to_lowercase();
    let host = host.trim_end_matches('.');
    let pattern = pattern.to_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

impl Reference<'_> {
    fn deny(reason: Reason, rule: Option<usize>) -> Decision {
        Decision::deny(reason, rule.map(|r| RuleId(r as u16)))
    }

    /// Token bucket of `count` per `period` ms, full at time 0, scaled by period.
    fn bucket_ok(
        &self,
        key: (usize, u8, u32),
        (count, period): (u32, u32),
        now: u64,
    ) -> Option<(u64, u64)> {
        let (count, period) = (u64::from(count), u64::from(period));
        let capacity = count * period;
        let (tokens, last) = self.buckets.get(&key).copied().unwrap_or((capacity, 0));
        let tokens = (tokens + now.saturating_sub(last) * count).min(capacity);
        (tokens >= period).then(|| (tokens - period, now.max(last)))
    }

    fn decide(&mut self, request: &TestRequest, now: u64) -> Decision {
        let modbus_bridge_named = |b: usize| {
            self.rules.iter().any(|r| {
                matches!(r, Rule::Modbus(m) if m.bridge == b)
                    || matches!(r, Rule::Limit(l) if l.bridge == b)
            })
        };
        let ble_named = self.rules.iter().any(|r| matches!(r, Rule::Ble(_)));
        let compartment_named = |c: usize| {
            self.rules.iter().any(|r| {
                matches!(r, Rule::Connect(x) if x.compartment == c)
                    || matches!(r, Rule::Listen(x) if x.compartment == c)
            })
        };
        match request {
            TestRequest::Modbus {
                bridge,
                unit,
                function,
                address,
                count,
                values,
                source,
            } => {
                let bridge_known = *bridge < 2 && modbus_bridge_named(*bridge);
                if !bridge_known {
                    return Self::deny(
                        if *bridge == 2 && ble_named {
                            Reason::WrongBridgeKind
                        } else {
                            Reason::UnknownBridge
                        },
                        None,
                    );
                }
                let write = match shape_ok(*function, *address, *count, values) {
                    Ok(w) => w,
                    Err(reason) => return Self::deny(reason, None),
                };
                let rules: Vec<(usize, &ModbusRule)> = self
                    .rules
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| match r {
                        Rule::Modbus(m) => Some((i, m)),
                        _ => None,
                    })
                    .filter(|(_, m)| m.bridge == *bridge && m.units.contains(unit))
                    .collect();
                if rules.is_empty() {
                    return Self::deny(Reason::UnitNotAllowed, None);
                }
                let rules: Vec<_> = rules
                    .into_iter()
                    .filter(|(_, m)| m.functions.contains(function))
                    .collect();
                if rules.is_empty() {
                    return Self::deny(Reason::FunctionNotAllowed, None);
                }
                let rules: Vec<_> = rules
                    .into_iter()
                    .filter(|(_, m)| m.sources.contains(source))
                    .collect();
                if rules.is_empty() {
                    return Self::deny(Reason::SourceNotAllowed, None);
                }
                if *function == 8 {
                    return Decision::allow(RuleId(rules[0].0 as u16));
                }
                let mut deciding = Vec::new();
                for (k, a) in
                    (u32::from(*address)..u32::from(*address) + u32::from(*count)).enumerate()
                {
                    let Some((i, m)) = rules.iter().find(|(_, m)| {
                        m.ranges
                            .iter()
                            .any(|(lo, hi)| u32::from(*lo) <= a && a <= u32::from(*hi))
                    }) else {
                        return Self::deny(Reason::AddressNotAllowed, None);
                    };
                    if write
                        && !value_ok(m.values.as_ref().expect("write rule has values"), values[k])
                    {
                        return Self::deny(Reason::ValueNotAllowed, Some(*i));
                    }
                    deciding.push((*i, *m, a));
                }
                let first = deciding[0].0;
                if !write {
                    return Decision::allow(RuleId(first as u16));
                }
                let mut updates = Vec::new();
                for (i, m, a) in &deciding {
                    if let Some(rate) = m.rate {
                        let key = (*i, *unit, *a);
                        match self.bucket_ok(key, rate, now) {
                            Some(state) => updates.push((key, state)),
                            None => return Self::deny(Reason::RateLimited, Some(*i)),
                        }
                    }
                }
                let limit = self.rules.iter().enumerate().find_map(|(i, r)| match r {
                    Rule::Limit(l) if l.bridge == *bridge && l.unit == *unit => {
                        Some((i, l.clone()))
                    }
                    _ => None,
                });
                if let Some((i, l)) = limit {
                    let per_source = if *source == Source::Cloud {
                        l.cloud
                    } else {
                        None
                    };
                    for (key, rate) in [
                        ((i, *unit, ALL_UNIT), l.writes),
                        ((i, *unit, source.index() as u32 + 70_000), per_source),
                    ] {
                        if let Some(rate) = rate {
                            match self.bucket_ok(key, rate, now) {
                                Some(state) => updates.push((key, state)),
                                None => return Self::deny(Reason::RateLimited, Some(i)),
                            }
                        }
                    }
                }
                for (key, state) in updates {
                    self.buckets.insert(key, state);
                }
                Decision::allow(RuleId(first as u16))
            }
            TestRequest::Ble {
                bridge,
                device,
                service,
                characteristic,
                operation,
                source,
            } => {
                if *bridge != 2 || !ble_named {
                    let modbus = *bridge < 2 && modbus_bridge_named(*bridge);
                    return Self::deny(
                        if modbus {
                            Reason::WrongBridgeKind
                        } else {
                            Reason::UnknownBridge
                        },
                        None,
                    );
                }
                let rules: Vec<(usize, &BleRule)> = self
                    .rules
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| match r {
                        Rule::Ble(b) => Some((i, b)),
                        _ => None,
                    })
                    .collect();
                let dev = |b: &BleRule| b.device.is_none_or(|d| d == *device);
                let svc = |b: &BleRule| dev(b) && b.service == *service;
                let chr = |b: &BleRule| svc(b) && b.characteristics.contains(characteristic);
                let op = |b: &BleRule| chr(b) && b.operations.contains(operation);
                if let Some((i, _)) = rules
                    .iter()
                    .find(|(_, b)| op(b) && b.sources.contains(source))
                {
                    return Decision::allow(RuleId(*i as u16));
                }
                let reason = if rules.iter().any(|(_, b)| op(b)) {
                    Reason::SourceNotAllowed
                } else if rules.iter().any(|(_, b)| chr(b)) {
                    Reason::OperationNotAllowed
                } else if rules.iter().any(|(_, b)| svc(b)) {
                    Reason::CharacteristicNotAllowed
                } else if rules.iter().any(|(_, b)| dev(b)) {
                    Reason::ServiceNotAllowed
                } else {
                    Reason::DeviceNotAllowed
                };
                Self::deny(reason, None)
            }
            TestRequest::Connect {
                compartment,
                host,
                port,
            } => {
                if *compartment >= 2 || !compartment_named(*compartment) {
                    return Self::deny(Reason::UnknownCompartment, None);
                }
                let mut host_named = false;
                for (i, r) in self.rules.iter().enumerate() {
                    if let Rule::Connect(c) = r
                        && c.compartment == *compartment
                        && host_ok(c.host, host)
                    {
                        {
                            host_named = true;
                            if c.ports.iter().any(|(a, b)| a <= port && port <= b) {
                                return Decision::allow(RuleId(i as u16));
                            }
                        }
                    }
                }
                Self::deny(
                    if host_named {
                        Reason::PortNotAllowed
                    } else {
                        Reason::HostNotAllowed
                    },
                    None,
                )
            }
            TestRequest::Targeted { .. } => unreachable!("resolved before deciding"),
            TestRequest::Listen { compartment, port } => {
                if *compartment >= 2 || !compartment_named(*compartment) {
                    return Self::deny(Reason::UnknownCompartment, None);
                }
                for (i, r) in self.rules.iter().enumerate() {
                    if let Rule::Listen(l) = r
                        && l.compartment == *compartment
                        && l.ports.iter().any(|(a, b)| a <= port && port <= b)
                    {
                        return Decision::allow(RuleId(i as u16));
                    }
                }
                Self::deny(Reason::PortNotAllowed, None)
            }
        }
    }
}

fn device(d: u8) -> [u8; 6] {
    [0xC0, 0xFF, 0xEE, 0, 0, d]
}

fn uuid(short: u16) -> u128 {
    warden_policy::ble_uuid16(short)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_agrees_with_reference(
        rules in policy(),
        requests in proptest::collection::vec((request(), prop_oneof![3 => 0..5u64, 1 => 0..400u64], prop_oneof![3 => Just(1usize), 1 => 2..6usize]), 1..60),
    ) {
        let source = render(&rules);
        let compiled = compile(&source, "random.toml").map_err(|e| TestCaseError::fail(format!("{e}\n{source}")))?;
        let policy = compiled.policy;
        let tables = policy.tables();
        let bytes = policy.encode();
        let mut decoded = DecodedTables::new();
        decoded.decode_from(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded.tables(), tables);
        let mut rate = RateState::for_tables(&tables);
        let mut reference = Reference { rules: &rules, buckets: HashMap::new() };
        let bridge_id = |i: usize| {
            let name = ["line1", "line2", "ble0", "ble9"][i];
            policy.bridge_id(name).unwrap_or(BridgeId(999))
        };
        let compartment_id = |i: usize| {
            let name = ["link", "web", "monitor"][i];
            policy.compartment_id(name).unwrap_or(CompartmentId(999))
        };
        let mut now = 0u64;
        let repeated = requests.iter().flat_map(|(request, dt, times)| std::iter::repeat_n((request, dt), *times));
        for (request, dt) in repeated {
            now += dt;
            let request = &resolve(&rules, request);
            let evaluated = match request {
                TestRequest::Modbus { bridge, unit, function, address, count, values, source } => {
                    let r = Request::Modbus(ModbusRequest { bridge: bridge_id(*bridge), unit: *unit, function: *function, address: *address, count: *count, values, source: *source });
                    evaluate(&tables, &mut rate, &r, now)
                }
                TestRequest::Ble { bridge, device: d, service, characteristic, operation, source } => {
                    let r = Request::Ble(BleRequest { bridge: bridge_id(*bridge), device: device(*d), service: uuid(*service), characteristic: uuid(*characteristic), operation: *operation, source: *source });
                    evaluate(&tables, &mut rate, &r, now)
                }
                TestRequest::Connect { compartment, host, port } => {
                    evaluate(&tables, &mut rate, &Request::Connect { compartment: compartment_id(*compartment), host, port: *port }, now)
                }
                TestRequest::Targeted { .. } => unreachable!("resolved before evaluating"),
                TestRequest::Listen { compartment, port } => {
                    evaluate(&tables, &mut rate, &Request::Listen { compartment: compartment_id(*compartment), port: *port }, now)
                }
            };
            let expected = reference.decide(request, now);
            prop_assert_eq!(evaluated, expected, "request {:?} at {} ms\npolicy:\n{}", request, now, source);
        }
    }
}
