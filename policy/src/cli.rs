//! Library side of `warden policy check FILE` and `warden policy explain FILE`.
//!
//! Request text (for `explain --request`), one request per line, `key=value` words:
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
use std::path::{Path, PathBuf};

use crate::compiler::syntax::{
    format_device, format_ranges, format_uuid, parse_device, parse_int, parse_uuid, split_reference,
};
use crate::compiler::{CompileErrors, CompiledPolicy, Diagnostic, RuleInfo, compile};
use crate::decision::{Decision, Reason};
use crate::request::{
    BleOperation, BleRequest, BridgeId, CompartmentId, FunctionKind, MODBUS_FUNCTIONS,
    ModbusRequest, Request, Source, function_kind, function_name,
};
use crate::tables::{BridgeKind, RuleKind, ValueCheck, group_key};
use crate::{RateState, evaluate};

/// What `warden policy check FILE` prints: diagnostics and a summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The file as named on the command line.
    pub file: String,
    /// Errors (the policy did not compile if any).
    pub errors: Vec<Diagnostic>,
    /// Warnings (shadowed, overlapping, unreachable rules).
    pub warnings: Vec<Diagnostic>,
    /// Summary of the compiled policy, when it compiled.
    pub summary: Option<String>,
}

impl CheckReport {
    /// True if the policy compiled (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in self.errors.iter().chain(&self.warnings) {
            writeln!(f, "{diagnostic}")?;
        }
        let warnings = plural(self.warnings.len(), "warning");
        match &self.summary {
            Some(summary) if self.is_ok() => {
                writeln!(f, "{}: ok: {summary}; {warnings}", self.file)
            }
            _ => writeln!(
                f,
                "{}: not compiled: {}, {warnings}",
                self.file,
                plural(self.errors.len(), "error")
            ),
        }
    }
}

/// The policy file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Reading failed.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Compiles `path` and reports every error and warning.
pub fn check_file(path: &Path) -> Result<CheckReport, CheckError> {
    let source = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(check_source(&source, &path.display().to_string()))
}

/// Compiles `source` (named `origin` in messages) and reports.
pub fn check_source(source: &str, origin: &str) -> CheckReport {
    match compile(source, origin) {
        Ok(compiled) => CheckReport {
            file: origin.to_string(),
            errors: Vec::new(),
            warnings: compiled.warnings,
            summary: Some(summarise(&compiled.policy)),
        },
        Err(CompileErrors { diagnostics }) => CheckReport {
            file: origin.to_string(),
            errors: diagnostics,
            warnings: Vec::new(),
            summary: None,
        },
    }
}

fn summarise(policy: &CompiledPolicy) -> String {
    let t = policy.tables();
    let mut kinds = Vec::new();
    for (kind, name) in [
        (RuleKind::Modbus, "modbus"),
        (RuleKind::ModbusLimit, "modbus_limit"),
        (RuleKind::Ble, "ble"),
        (RuleKind::Connect, "connect"),
        (RuleKind::Listen, "listen"),
    ] {
        let n = t.rules.iter().filter(|r| r.kind == kind).count();
        if n > 0 {
            kinds.push(format!("{n} {name}"));
        }
    }
    format!(
        "{} ({}), {}, {}, {} of tables, {}",
        plural(t.rules.len(), "rule"),
        if kinds.is_empty() {
            "everything is denied".to_string()
        } else {
            kinds.join(", ")
        },
        plural(t.bridges.len(), "bridge"),
        plural(t.compartments.len(), "compartment"),
        plural(policy.encode().len(), "byte"),
        plural(t.rate_slots as usize, "rate bucket"),
    )
}

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
    kind: ParsedKind,
    values: Vec<u16>,
    host: String,
    /// Bridge or compartment name as written.
    target: String,
    /// Canonical text of the request.
    canonical: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ParsedKind {
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

/// What `warden policy explain` prints: the request, the verdict, the rule that
/// decided and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Canonical request text.
    pub request: String,
    /// The evaluator's decision (fresh rate state, time 0).
    pub decision: Decision,
    /// The deciding rule, with its position.
    pub rule: Option<RuleInfo>,
    /// The origin file of the policy.
    pub file: String,
    /// Why, in words.
    pub why: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        if self.decision.is_allowed() {
            writeln!(f, "verdict: allow")?;
        } else {
            writeln!(f, "verdict: deny ({})", self.decision.reason)?;
        }
        if let Some(rule) = &self.rule {
            let at = if rule.line > 0 {
                format!(" at {}:{}:{}", self.file, rule.line, rule.column)
            } else {
                String::new()
            };
            writeln!(f, "rule:    {}{at}", rule.label)?;
            if !rule.summary.is_empty() {
                writeln!(f, "         {}", rule.summary)?;
            }
        }
        writeln!(f, "why:     {}", self.why)
    }
}

/// `explain` of a file: reading, compiling or request text failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// Reading the file failed.
    #[error(transparent)]
    Read(#[from] CheckError),
    /// The policy does not compile.
    #[error("{0}")]
    Compile(#[from] CompileErrors),
    /// The request text is not understood.
    #[error("request: {0}")]
    Request(#[from] RequestTextError),
}

/// Compiles `path` and explains `request_text` against it.
pub fn explain_file(path: &Path, request_text: &str) -> Result<Explanation, ExplainError> {
    let source = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let compiled = compile(&source, &path.display().to_string())?;
    Ok(explain(&compiled.policy, request_text)?)
}

/// Evaluates `request_text` against `policy` (fresh rate state, time 0) and says
/// which rule matched or why the request is denied.
pub fn explain(
    policy: &CompiledPolicy,
    request_text: &str,
) -> Result<Explanation, RequestTextError> {
    let parsed = parse_request(policy, request_text)?;
    let tables = policy.tables();
    let mut rate = RateState::for_tables(&tables);
    let request = parsed.as_request();
    let decision = evaluate(&tables, &mut rate, &request, 0);
    let rule = decision.rule.and_then(|r| policy.rule(r)).cloned();
    let why = why(policy, &parsed, &request, &decision);
    Ok(Explanation {
        request: parsed.canonical.clone(),
        decision,
        rule,
        file: policy.origin().to_string(),
        why,
    })
}

fn fn_label(function: u8) -> String {
    format!(
        "{function} ({})",
        function_name(function).unwrap_or("unsupported")
    )
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn why(
    policy: &CompiledPolicy,
    parsed: &ParsedRequest,
    request: &Request<'_>,
    decision: &Decision,
) -> String {
    let t = policy.tables();
    let target = &parsed.target;
    let bridges = || {
        list_or_none(
            policy
                .bridge_names()
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect(),
        )
    };
    let compartments = || {
        list_or_none(
            t.compartments
                .iter()
                .map(|c| format!("\"{}\"", t.name(*c)))
                .collect(),
        )
    };
    match (request, decision.reason) {
        (_, Reason::UnknownBridge) => format!(
            "the policy names no bridge \"{target}\" (bridges: {})",
            bridges()
        ),
        (_, Reason::UnknownCompartment) => {
            format!(
                "the policy names no compartment \"{target}\" (compartments: {})",
                compartments()
            )
        }
        (_, Reason::WrongBridgeKind) => {
            let kind = t
                .bridge_id(target)
                .and_then(|b| t.bridges.get(usize::from(b.0)))
                .map(|b| b.kind);
            let kind = if kind == Some(BridgeKind::Ble) {
                "a BLE"
            } else {
                "a Modbus"
            };
            format!("bridge \"{target}\" is {kind} bridge")
        }
        (Request::Modbus(m), reason) => {
            let groups = |filter: &dyn Fn(u64) -> bool| -> Vec<u64> {
                t.modbus_groups
                    .iter()
                    .map(|g| g.key)
                    .filter(|k| filter(*k))
                    .collect()
            };
            let unit_prefix = group_key(m.bridge.0, m.unit, 0, 0) >> 16;
            let fn_prefix = group_key(m.bridge.0, m.unit, m.function, 0) >> 8;
            let last = u32::from(m.address) + u32::from(m.count.max(1)) - 1;
            let span = if last == u32::from(m.address) {
                format!("address {} of unit {} is", m.address, m.unit)
            } else {
                format!("addresses {}..={last} of unit {} are", m.address, m.unit)
            };
            match reason {
                Reason::Allowed => match function_kind(m.function) {
                    Some(FunctionKind::Addressless) => {
                        format!(
                            "function {} is allowed for unit {} from source {}",
                            fn_label(m.function),
                            m.unit,
                            m.source
                        )
                    }
                    Some(FunctionKind::Write { .. }) => {
                        format!("{span} inside the allowed ranges and every value is within bounds")
                    }
                    _ => format!("{span} inside the allowed ranges"),
                },
                Reason::UnsupportedFunction => format!(
                    "function {} is not one the policy engine supports (codes {})",
                    m.function,
                    MODBUS_FUNCTIONS
                        .iter()
                        .map(|(c, _)| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Reason::MalformedRequest => {
                    let detail = match function_kind(m.function) {
                        Some(FunctionKind::Read { max_count }) => {
                            format!(
                                "a read takes count 1..={max_count}, no values, and must end by address 65535"
                            )
                        }
                        Some(FunctionKind::Write { max_count, coils }) => format!(
                            "a write takes count 1..={max_count} and exactly count values{}, ending by address 65535",
                            if coils { " of 0 or 1" } else { "" }
                        ),
                        _ => "the request does not fit the function".to_string(),
                    };
                    format!(
                        "the request breaks the Modbus protocol for function {}: {detail}",
                        fn_label(m.function)
                    )
                }
                Reason::UnitNotAllowed => {
                    let mut units: Vec<u64> = groups(&|k| k >> 24 == u64::from(m.bridge.0))
                        .iter()
                        .map(|k| (k >> 16) & 0xFF)
                        .collect();
                    units.dedup();
                    format!(
                        "no rule names unit {} on bridge \"{target}\" (units named: {})",
                        m.unit,
                        list_or_none(units.iter().map(u64::to_string).collect())
                    )
                }
                Reason::FunctionNotAllowed => {
                    let mut functions: Vec<u64> = groups(&|k| k >> 16 == unit_prefix)
                        .iter()
                        .map(|k| (k >> 8) & 0xFF)
                        .collect();
                    functions.dedup();
                    format!(
                        "no rule names function {} for unit {} on bridge \"{target}\" (functions named: {})",
                        fn_label(m.function),
                        m.unit,
                        list_or_none(functions.iter().map(|f| fn_label(*f as u8)).collect())
                    )
                }
                Reason::SourceNotAllowed => {
                    let sources: Vec<String> = groups(&|k| k >> 8 == fn_prefix)
                        .iter()
                        .filter_map(|k| {
                            Source::ALL
                                .get((k & 0xFF) as usize)
                                .map(|s| s.name().to_string())
                        })
                        .collect();
                    format!(
                        "function {} of unit {} on bridge \"{target}\" is allowed to sources {}, not {}",
                        fn_label(m.function),
                        m.unit,
                        list_or_none(sources),
                        m.source
                    )
                }
                Reason::AddressNotAllowed => {
                    let key = group_key(m.bridge.0, m.unit, m.function, m.source.index() as u8);
                    let ranges: Vec<(i64, i64)> = t
                        .modbus_groups
                        .iter()
                        .find(|g| g.key == key)
                        .map(|g| {
                            let first = g.first as usize;
                            t.modbus_segments[first..first + g.len as usize]
                                .iter()
                                .map(|s| (i64::from(s.start), i64::from(s.end)))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "{span} not inside the ranges allowed for function {} from source {} on bridge \"{target}\": {}",
                        fn_label(m.function),
                        m.source,
                        format_ranges(&crate::compiler::syntax::merge_ranges(ranges))
                    )
                }
                Reason::ValueNotAllowed => {
                    let rule = decision.rule.and_then(|r| t.rules.get(usize::from(r.0)));
                    let bounds = match rule.map(|r| r.values) {
                        Some(ValueCheck::Range { min, max, .. }) => format!("{min}..={max}"),
                        Some(ValueCheck::Set { offset, len }) => {
                            let set = t
                                .values
                                .get(offset as usize..(offset + len) as usize)
                                .unwrap_or(&[]);
                            format!(
                                "[{}]",
                                set.iter()
                                    .map(u16::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                        _ => "nothing".to_string(),
                    };
                    let values: Vec<String> = m.values.iter().map(u16::to_string).collect();
                    format!(
                        "values [{}] are not all within what the rule allows: {bounds}",
                        values.join(", ")
                    )
                }
                Reason::RateLimited => "the rule's rate limit has no budget left".to_string(),
                Reason::RateStateTooSmall => {
                    "the rate-limit storage is smaller than the policy needs".to_string()
                }
                other => format!("denied: {other}"),
            }
        }
        (Request::Ble(b), reason) => {
            let what = format!(
                "device {} service {} characteristic {} operation {} source {}",
                format_device(b.device),
                format_uuid(b.service),
                format_uuid(b.characteristic),
                b.operation.name(),
                b.source
            );
            match reason {
                Reason::Allowed => format!("the rule allows {what}"),
                Reason::DeviceNotAllowed => format!(
                    "no rule on bridge \"{target}\" names device {}",
                    format_device(b.device)
                ),
                Reason::ServiceNotAllowed => format!(
                    "no rule names service {} for device {}",
                    format_uuid(b.service),
                    format_device(b.device)
                ),
                Reason::CharacteristicNotAllowed => {
                    format!(
                        "no rule names characteristic {} in service {}",
                        format_uuid(b.characteristic),
                        format_uuid(b.service)
                    )
                }
                Reason::OperationNotAllowed => format!(
                    "characteristic {} is named, but not for operation {}",
                    format_uuid(b.characteristic),
                    b.operation.name()
                ),
                Reason::SourceNotAllowed => {
                    format!("no rule allows {what}: the source is not named")
                }
                other => format!("denied: {other}"),
            }
        }
        (Request::Connect { host, port, .. }, reason) => match reason {
            Reason::Allowed => {
                format!("compartment \"{target}\" may connect to {host} port {port}")
            }
            Reason::HostNotAllowed => {
                format!("no rule lets compartment \"{target}\" connect to host {host}")
            }
            Reason::PortNotAllowed => {
                format!("compartment \"{target}\" may connect to {host}, but not to port {port}")
            }
            other => format!("denied: {other}"),
        },
        (Request::Listen { port, .. }, reason) => match reason {
            Reason::Allowed => format!("compartment \"{target}\" may listen on port {port}"),
            _ => format!("no rule lets compartment \"{target}\" listen on port {port}"),
        },
    }
}
