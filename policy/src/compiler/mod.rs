//! TOML policy compiler (std): source text to [`CompiledPolicy`] and diagnostics.

mod diagnostic;
mod document;
pub(crate) mod syntax;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::{Spanned, Value};

use diagnostic::LineIndex;
pub use diagnostic::{CompileErrors, Diagnostic, Severity};
use document::{RawBle, RawConnect, RawDocument, RawListen, RawModbus, RawModbusLimit};
use syntax::{
    ReferenceTable, format_device, format_ranges, format_rate, format_uuid, merge_ranges,
    parse_device, parse_int, parse_ranges, parse_rate, parse_uuid, split_reference, string_list,
    type_name,
};

use crate::request::{
    BleOperation, BridgeId, CompartmentId, FunctionKind, MODBUS_FUNCTIONS, RuleId, Source,
    function_kind, function_name,
};
use crate::tables::{
    self, BleRule, BridgeEntry, BridgeKind, ConnectRule, ListenRule, ModbusGroup, ModbusSegment,
    NO_SLOT, NameRef, PolicyTables, RateLimit, RuleEntry, RuleKind, TABLES_FORMAT, TableError,
    UnitLimit, ValueCheck, group_key,
};

/// What the compiler knows about one rule beyond the tables: where it is and what
/// it says, for `explain` and for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// `rule "setpoint" (modbus #2)` or `rule modbus #2`.
    pub label: String,
    /// Kind.
    pub kind: RuleKind,
    /// 1-based line of the rule's table (0 when decoded from a bundle).
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// One-line summary of what the rule allows.
    pub summary: String,
}

/// A compiled policy (std): the tables, owned, plus names and source positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    origin: String,
    policy_name: Option<String>,
    names: String,
    bridges: Vec<BridgeEntry>,
    compartments: Vec<NameRef>,
    rules: Vec<RuleEntry>,
    values: Vec<u16>,
    modbus_groups: Vec<ModbusGroup>,
    modbus_segments: Vec<ModbusSegment>,
    unit_limits: Vec<UnitLimit>,
    ble_rules: Vec<BleRule>,
    connect_rules: Vec<ConnectRule>,
    listen_rules: Vec<ListenRule>,
    rate_slots: u32,
    fingerprint: u64,
    rule_info: Vec<RuleInfo>,
}

/// A successful compilation: the policy and any warnings.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The policy.
    pub policy: CompiledPolicy,
    /// Shadowed, overlapping or unreachable rules, in source order.
    pub warnings: Vec<Diagnostic>,
}

impl CompiledPolicy {
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

    /// The canonical encoding of the tables (what a bundle signs).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain integers, strings and slices into a Vec cannot fail.
        postcard::to_allocvec(&self.tables()).unwrap_or_default()
    }

    /// Rebuilds a policy from encoded tables (from a bundle). Rule positions are
    /// unknown (line 0); labels are the rule names.
    pub fn from_encoded(bytes: &[u8], origin: &str) -> Result<Self, TableError> {
        let mut decoded = Box::new(tables::DecodedTables::new());
        decoded.decode_from(bytes)?;
        let t = decoded.tables();
        let rule_info = t
            .rules
            .iter()
            .map(|r| RuleInfo {
                label: format!("rule \"{}\"", t.name(r.name)),
                kind: r.kind,
                line: 0,
                column: 0,
                summary: String::new(),
            })
            .collect();
        Ok(CompiledPolicy {
            origin: origin.to_string(),
            policy_name: None,
            names: t.names.to_string(),
            bridges: t.bridges.to_vec(),
            compartments: t.compartments.to_vec(),
            rules: t.rules.to_vec(),
            values: t.values.to_vec(),
            modbus_groups: t.modbus_groups.to_vec(),
            modbus_segments: t.modbus_segments.to_vec(),
            unit_limits: t.unit_limits.to_vec(),
            ble_rules: t.ble_rules.to_vec(),
            connect_rules: t.connect_rules.to_vec(),
            listen_rules: t.listen_rules.to_vec(),
            rate_slots: t.rate_slots,
            fingerprint: t.fingerprint,
            rule_info,
        })
    }

    /// The origin file name given to the compiler.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `[policy] name`, if the file gave one.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy_name.as_deref()
    }

    /// Id of a bridge by name.
    pub fn bridge_id(&self, name: &str) -> Option<BridgeId> {
        self.tables().bridge_id(name)
    }

    /// Id of a compartment by name.
    pub fn compartment_id(&self, name: &str) -> Option<CompartmentId> {
        self.tables().compartment_id(name)
    }

    /// Names of all bridges, by id.
    pub fn bridge_names(&self) -> Vec<&str> {
        let t = self.tables();
        self.bridges.iter().map(|b| t.name(b.name)).collect()
    }

    /// Source information of a rule.
    pub fn rule(&self, rule: RuleId) -> Option<&RuleInfo> {
        self.rule_info.get(usize::from(rule.0))
    }

    /// Number of rules (limits included).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Rate buckets the policy needs (size of a `RateState`).
    pub fn rate_slots(&self) -> u32 {
        self.rate_slots
    }
}

/// Compiles policy `source`; `origin` (a file name) appears in every diagnostic.
pub fn compile(source: &str, origin: &str) -> Result<Compiled, CompileErrors> {
    let mut compiler = Compiler::new(source, origin);
    let document = match toml::from_str::<RawDocument>(source) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let rule = compiler
                .lines
                .enclosing_table(span.start)
                .map(|(kind, n)| format!("rule {kind} #{n}"));
            let message = error.message().trim_end().replace('\n', " ");
            compiler.push(Severity::Error, span, rule, message);
            return Err(CompileErrors {
                diagnostics: compiler.errors,
            });
        }
    };
    compiler.run(&document);
    if compiler.errors.is_empty() {
        let policy = compiler.finish(document.policy.and_then(|p| p.name));
        match policy {
            Ok(policy) => {
                let mut warnings = compiler.warnings;
                warnings.sort_by_key(|d| (d.line, d.column));
                Ok(Compiled { policy, warnings })
            }
            Err(()) => Err(CompileErrors {
                diagnostics: compiler.errors,
            }),
        }
    } else {
        compiler.errors.sort_by_key(|d| (d.line, d.column));
        Err(CompileErrors {
            diagnostics: compiler.errors,
        })
    }
}

/// A Modbus rule after interpretation.
struct ModbusSpec {
    rule: u16,
    bridge: u16,
    units: Vec<u8>,
    functions: Vec<u8>,
    /// Merged, sorted; empty when every function is addressless.
    ranges: Vec<(u16, u16)>,
    sources: u8,
}

struct LimitSpec {
    rule: u16,
    bridge: u16,
    units: Vec<u8>,
    units_span: Range<usize>,
    writes: RateLimit,
    per_source: [RateLimit; 3],
}

struct ConnectSpec {
    rule: u16,
    compartment: u16,
    host: String,
    subdomains: bool,
    ports: Vec<(u16, u16)>,
}

struct ListenSpec {
    rule: u16,
    compartment: u16,
    ports: Vec<(u16, u16)>,
}

enum RawRule<'d> {
    Modbus(&'d Spanned<RawModbus>, usize),
    Limit(&'d Spanned<RawModbusLimit>, usize),
    Ble(&'d Spanned<RawBle>, usize),
    Connect(&'d Spanned<RawConnect>, usize),
    Listen(&'d Spanned<RawListen>, usize),
}

impl RawRule<'_> {
    fn span(&self) -> Range<usize> {
        match self {
            RawRule::Modbus(r, _) => r.span(),
            RawRule::Limit(r, _) => r.span(),
            RawRule::Ble(r, _) => r.span(),
            RawRule::Connect(r, _) => r.span(),
            RawRule::Listen(r, _) => r.span(),
        }
    }

    fn name(&self) -> Option<&Spanned<String>> {
        match self {
            RawRule::Modbus(r, _) => r.get_ref().name.as_ref(),
            RawRule::Limit(r, _) => r.get_ref().name.as_ref(),
            RawRule::Ble(r, _) => r.get_ref().name.as_ref(),
            RawRule::Connect(r, _) => r.get_ref().name.as_ref(),
            RawRule::Listen(r, _) => r.get_ref().name.as_ref(),
        }
    }

    fn kind_and_index(&self) -> (&'static str, usize, RuleKind) {
        match self {
            RawRule::Modbus(_, n) => ("modbus", *n, RuleKind::Modbus),
            RawRule::Limit(_, n) => ("modbus_limit", *n, RuleKind::ModbusLimit),
            RawRule::Ble(_, n) => ("ble", *n, RuleKind::Ble),
            RawRule::Connect(_, n) => ("connect", *n, RuleKind::Connect),
            RawRule::Listen(_, n) => ("listen", *n, RuleKind::Listen),
        }
    }
}

struct Compiler<'s> {
    origin: String,
    lines: LineIndex<'s>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    names: String,
    name_offsets: HashMap<String, NameRef>,
    bridges: Vec<(String, BridgeKind, Range<usize>)>,
    compartments: Vec<String>,
    labels: Vec<String>,
    rule_info: Vec<RuleInfo>,
    rules: Vec<RuleEntry>,
    values: Vec<u16>,
    modbus: Vec<ModbusSpec>,
    limits: Vec<LimitSpec>,
    ble: Vec<BleRule>,
    connect: Vec<ConnectSpec>,
    listen: Vec<ListenSpec>,
}

/// Result of interpreting one field: `Err(())` after an error was recorded.
type Field<T> = Result<T, ()>;

impl<'s> Compiler<'s> {
    fn new(source: &'s str, origin: &str) -> Self {
        Compiler {
            origin: origin.to_string(),
            lines: LineIndex::new(source),
            errors: Vec::new(),
            warnings: Vec::new(),
            names: String::new(),
            name_offsets: HashMap::new(),
            bridges: Vec::new(),
            compartments: Vec::new(),
            labels: Vec::new(),
            rule_info: Vec::new(),
            rules: Vec::new(),
            values: Vec::new(),
            modbus: Vec::new(),
            limits: Vec::new(),
            ble: Vec::new(),
            connect: Vec::new(),
            listen: Vec::new(),
        }
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        rule: Option<String>,
        message: String,
    ) {
        let (line, column) = self.lines.position(span.start);
        let diagnostic = Diagnostic {
            severity,
            file: self.origin.clone(),
            line,
            column,
            rule,
            message,
        };
        match severity {
            Severity::Error => self.errors.push(diagnostic),
            Severity::Warning => self.warnings.push(diagnostic),
        }
    }

    fn error(&mut self, rule: u16, span: Range<usize>, message: String) {
        let label = self.labels.get(usize::from(rule)).cloned();
        self.push(Severity::Error, span, label, message);
    }

    fn warn(&mut self, rule: u16, span: Range<usize>, message: String) {
        let label = self.labels.get(usize::from(rule)).cloned();
        self.push(Severity::Warning, span, label, message);
    }

    fn field<T>(
        &mut self,
        rule: u16,
        span: Range<usize>,
        key: &str,
        result: Result<T, String>,
    ) -> Field<T> {
        result.map_err(|message| self.error(rule, span, format!("{key}: {message}")))
    }

    fn intern(&mut self, name: &str) -> NameRef {
        if let Some(r) = self.name_offsets.get(name) {
            return *r;
        }
        let r = NameRef {
            offset: u32::try_from(self.names.len()).unwrap_or(u32::MAX),
            len: u32::try_from(name.len()).unwrap_or(u32::MAX),
        };
        self.names.push_str(name);
        self.name_offsets.insert(name.to_string(), r);
        r
    }

    fn run(&mut self, document: &RawDocument) {
        let mut raw: Vec<RawRule<'_>> = Vec::new();
        raw.extend(
            document
                .modbus
                .iter()
                .enumerate()
                .map(|(i, r)| RawRule::Modbus(r, i + 1)),
        );
        raw.extend(
            document
                .modbus_limit
                .iter()
                .enumerate()
                .map(|(i, r)| RawRule::Limit(r, i + 1)),
        );
        raw.extend(
            document
                .ble
                .iter()
                .enumerate()
                .map(|(i, r)| RawRule::Ble(r, i + 1)),
        );
        raw.extend(
            document
                .connect
                .iter()
                .enumerate()
                .map(|(i, r)| RawRule::Connect(r, i + 1)),
        );
        raw.extend(
            document
                .listen
                .iter()
                .enumerate()
                .map(|(i, r)| RawRule::Listen(r, i + 1)),
        );
        raw.sort_by_key(|r| r.span().start);
        if raw.len() > tables::MAX_RULES {
            self.push(
                Severity::Error,
                0..0,
                None,
                format!(
                    "the policy has {} rules; a device holds at most {}",
                    raw.len(),
                    tables::MAX_RULES
                ),
            );
            return;
        }
        // Labels and names first, so every later message can name its rule.
        let mut seen_names: HashMap<String, Range<usize>> = HashMap::new();
        for (index, rule) in raw.iter().enumerate() {
            let (kind, n, rule_kind) = rule.kind_and_index();
            let (label, name) = match rule.name() {
                Some(name) => (
                    format!("rule \"{}\" ({kind} #{n})", name.get_ref()),
                    name.get_ref().clone(),
                ),
                None => (format!("rule {kind} #{n}"), format!("{kind}#{n}")),
            };
            self.labels.push(label.clone());
            let (line, column) = self
                .lines
                .position(self.lines.header_before(rule.span().start));
            self.rule_info.push(RuleInfo {
                label,
                kind: rule_kind,
                line,
                column,
                summary: String::new(),
            });
            let name_ref = self.intern(&name);
            self.rules.push(RuleEntry {
                name: name_ref,
                kind: rule_kind,
                values: ValueCheck::NotApplicable,
                rate: RateLimit::NONE,
            });
            if let Some(spanned) = rule.name() {
                if let Some(first) = seen_names.get(&name).cloned() {
                    let (l, c) = self.lines.position(first.start);
                    let message = format!(
                        "name \"{name}\" is already used by the rule at {}:{l}:{c}; rule names must be unique",
                        self.origin
                    );
                    self.error(index as u16, spanned.span(), message);
                } else if name.is_empty()
                    || name.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    self.error(
                        index as u16,
                        spanned.span(),
                        "name: must be non-empty, without spaces".into(),
                    );
                } else {
                    seen_names.insert(name, spanned.span());
                }
            }
        }
        for (index, rule) in raw.iter().enumerate() {
            let id = index as u16;
            let _ = match rule {
                RawRule::Modbus(r, _) => self.modbus_rule(id, r.get_ref()),
                RawRule::Limit(r, _) => self.limit_rule(id, r.get_ref()),
                RawRule::Ble(r, _) => self.ble_rule(id, r.get_ref()),
                RawRule::Connect(r, _) => self.connect_rule(id, r.get_ref()),
                RawRule::Listen(r, _) => self.listen_rule(id, r.get_ref()),
            };
        }
    }

    fn bridge(&mut self, rule: u16, name: &Spanned<String>, kind: BridgeKind) -> Field<u16> {
        let text = name.get_ref();
        if let Some(index) = self.bridges.iter().position(|(n, _, _)| n == text) {
            let (_, existing, first) = self.bridges[index].clone();
            if existing != kind {
                let (l, c) = self.lines.position(first.start);
                let describe = |k: BridgeKind| {
                    if k == BridgeKind::Modbus {
                        "a Modbus"
                    } else {
                        "a BLE"
                    }
                };
                let message = format!(
                    "bridge: \"{text}\" is {} bridge (first named at {}:{l}:{c}) and cannot also be {} bridge",
                    describe(existing),
                    self.origin,
                    describe(kind)
                );
                self.error(rule, name.span(), message);
                return Err(());
            }
            return Ok(index as u16);
        }
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '=') {
            self.error(
                rule,
                name.span(),
                format!("bridge: \"{text}\" is not a valid bridge name"),
            );
            return Err(());
        }
        if self.bridges.len() >= tables::MAX_BRIDGES {
            self.error(
                rule,
                name.span(),
                format!(
                    "bridge: a device holds at most {} bridges",
                    tables::MAX_BRIDGES
                ),
            );
            return Err(());
        }
        self.bridges.push((text.clone(), kind, name.span()));
        Ok((self.bridges.len() - 1) as u16)
    }

    fn compartment(&mut self, rule: u16, name: &Spanned<String>) -> Field<u16> {
        let text = name.get_ref();
        if let Some(index) = self.compartments.iter().position(|n| n == text) {
            return Ok(index as u16);
        }
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '=') {
            self.error(
                rule,
                name.span(),
                format!("compartment: \"{text}\" is not a valid compartment name"),
            );
            return Err(());
        }
        if self.compartments.len() >= tables::MAX_COMPARTMENTS {
            let message = format!(
                "compartment: a device holds at most {} compartments",
                tables::MAX_COMPARTMENTS
            );
            self.error(rule, name.span(), message);
            return Err(());
        }
        self.compartments.push(text.clone());
        Ok((self.compartments.len() - 1) as u16)
    }

    fn units(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<u8>> {
        let ranges = parse_ranges(value.get_ref(), "Modbus unit id", 0, 255);
        let ranges = self.field(rule, value.span(), "units", ranges)?;
        Ok(merge_ranges(ranges)
            .into_iter()
            .flat_map(|(a, b)| a..=b)
            .map(|u| u as u8)
            .collect())
    }

    fn sources(&mut self, rule: u16, value: &Spanned<Value>) -> Field<u8> {
        let names = string_list(value.get_ref(), "source");
        let names = self.field(rule, value.span(), "sources", names)?;
        let mut mask = 0;
        for name in names {
            match Source::from_name(name) {
                Some(source) => mask |= source.bit(),
                None => {
                    let message =
                        format!("sources: unknown source \"{name}\" (poll, cloud or facade)");
                    self.error(rule, value.span(), message);
                    return Err(());
                }
            }
        }
        Ok(mask)
    }

    fn functions(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<u8>> {
        let items: Vec<&Value> = match value.get_ref() {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        if items.is_empty() {
            self.error(
                rule,
                value.span(),
                "functions: the list is empty; a rule must name at least one".into(),
            );
            return Err(());
        }
        let mut functions = Vec::new();
        for item in items {
            let code = match item {
                Value::Integer(n) => u8::try_from(*n)
                    .ok()
                    .filter(|c| function_kind(*c).is_some()),
                Value::String(name) => MODBUS_FUNCTIONS
                    .iter()
                    .find(|(_, n)| n == name)
                    .map(|(c, _)| *c)
                    .or_else(|| {
                        parse_int(name)
                            .and_then(|n| u8::try_from(n).ok())
                            .filter(|c| function_kind(*c).is_some())
                    }),
                other => {
                    let message = format!(
                        "functions: expected a function code or name, found {}",
                        type_name(other)
                    );
                    self.error(rule, value.span(), message);
                    return Err(());
                }
            };
            match code {
                Some(code) => functions.push(code),
                None => {
                    let shown = match item {
                        Value::String(s) => format!("\"{s}\""),
                        other => other.to_string(),
                    };
                    let supported: Vec<String> = MODBUS_FUNCTIONS
                        .iter()
                        .map(|(c, _)| c.to_string())
                        .collect();
                    let message = format!(
                        "functions: {shown} is not a supported Modbus function (codes {} or their names, e.g. \"read_holding_registers\")",
                        supported.join(", ")
                    );
                    self.error(rule, value.span(), message);
                    return Err(());
                }
            }
        }
        functions.sort_unstable();
        functions.dedup();
        Ok(functions)
    }

    fn modbus_rule(&mut self, rule: u16, raw: &RawModbus) -> Field<()> {
        let bridge = self.bridge(rule, &raw.bridge, BridgeKind::Modbus);
        let units = self.units(rule, &raw.units);
        let functions = self.functions(rule, &raw.functions);
        let sources = self.sources(rule, &raw.sources);
        let (bridge, units, functions, sources) = (bridge?, units?, functions?, sources?);
        let addressed: Vec<u8> = functions
            .iter()
            .copied()
            .filter(|f| !matches!(function_kind(*f), Some(FunctionKind::Addressless)))
            .collect();
        let writes: Vec<u8> = functions
            .iter()
            .copied()
            .filter(|f| matches!(function_kind(*f), Some(FunctionKind::Write { .. })))
            .collect();
        let fn_label = |f: u8| format!("{f} ({})", function_name(f).unwrap_or("?"));
        let ranges: Vec<(i64, i64)> = match (&raw.addresses, &raw.references) {
            (Some(a), Some(_)) => {
                self.error(
                    rule,
                    a.span(),
                    "give either addresses (0-based) or references (like 40001), not both".into(),
                );
                return Err(());
            }
            (Some(a), None) => {
                let parsed = parse_ranges(a.get_ref(), "Modbus address", 0, 65_535);
                self.field(rule, a.span(), "addresses", parsed)?
            }
            (None, Some(r)) => {
                let parsed = parse_ranges(r.get_ref(), "Modbus reference", 1, 999_999);
                let parsed = self.field(rule, r.span(), "references", parsed)?;
                let mut ranges = Vec::new();
                for (low, high) in parsed {
                    let (table, start) =
                        self.field(rule, r.span(), "references", split_reference(low))?;
                    let (end_table, end) =
                        self.field(rule, r.span(), "references", split_reference(high))?;
                    if table != end_table {
                        let message =
                            format!("references: {low}..={high} spans two reference tables");
                        self.error(rule, r.span(), message);
                        return Err(());
                    }
                    for f in &addressed {
                        if ReferenceTable::of_function(*f) != Some(table) {
                            let message = format!(
                                "references: {low} names {}, but function {} does not use that table",
                                table.describe(),
                                fn_label(*f)
                            );
                            self.error(rule, r.span(), message);
                            return Err(());
                        }
                    }
                    ranges.push((i64::from(start), i64::from(end)));
                }
                ranges
            }
            (None, None) if addressed.is_empty() => Vec::new(),
            (None, None) => {
                let message = format!(
                    "function {} needs addresses (0-based, like \"0..=9\") or references (like \"40001..=40010\")",
                    fn_label(addressed[0])
                );
                self.error(rule, raw.functions.span(), message);
                return Err(());
            }
        };
        if addressed.is_empty() && !ranges.is_empty() {
            let span = raw
                .addresses
                .as_ref()
                .or(raw.references.as_ref())
                .map_or(0..0, Spanned::span);
            self.error(
                rule,
                span,
                "addresses: the rule's functions have no addresses; remove the key".into(),
            );
            return Err(());
        }
        let ranges = merge_ranges(ranges);
        // Values and rate: writes only.
        let signed = raw.signed.as_ref().is_some_and(|s| *s.get_ref());
        let mut check = ValueCheck::NotApplicable;
        match (&raw.values, writes.is_empty()) {
            (Some(v), true) => {
                let message =
                    "values: only write functions (5, 6, 15, 16) take values; this rule has none"
                        .into();
                self.error(rule, v.span(), message);
                return Err(());
            }
            (None, false) => {
                let message = format!(
                    "function {} writes, so the rule needs values (a range like \"0..=500\", a list like [0, 1], or \"any\")",
                    fn_label(writes[0])
                );
                self.error(rule, raw.functions.span(), message);
                return Err(());
            }
            (Some(v), false) => {
                check = self.value_check(rule, v, signed)?;
                let coils_only = writes.iter().all(|f| matches!(f, 5 | 15));
                let allows = |x: u16| crate::evaluate::value_allowed_in(&self.values, check, x);
                let allows_nothing = match check {
                    ValueCheck::Set { len: 0, .. } => true,
                    _ => coils_only && !allows(0) && !allows(1),
                };
                if allows_nothing {
                    let message =
                        "unreachable: the values allow nothing the write functions can send".into();
                    self.warn(rule, v.span(), message);
                }
            }
            (None, true) => {}
        }
        if let (Some(s), true) = (&raw.signed, raw.values.is_none()) {
            self.error(rule, s.span(), "signed: only meaningful with values".into());
            return Err(());
        }
        let mut rate = RateLimit::NONE;
        if let Some(text) = &raw.rate {
            if writes.is_empty() {
                let message =
                    "rate: rate limits count writes; this rule has no write function".into();
                self.error(rule, text.span(), message);
                return Err(());
            }
            rate = self.field(rule, text.span(), "rate", parse_rate(text.get_ref()))?;
        }
        let entry = &mut self.rules[usize::from(rule)];
        entry.values = check;
        entry.rate = rate;
        let mut summary = format!(
            "bridge {}, units {}, functions {}",
            raw.bridge.get_ref(),
            format_ranges(&merge_ranges(
                units
                    .iter()
                    .map(|u| (i64::from(*u), i64::from(*u)))
                    .collect()
            )),
            functions
                .iter()
                .map(|f| fn_label(*f))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if !ranges.is_empty() {
            summary.push_str(&format!(", addresses {}", format_ranges(&ranges)));
        }
        let source_names: Vec<&str> = Source::ALL
            .iter()
            .filter(|s| sources & s.bit() != 0)
            .map(|s| s.name())
            .collect();
        summary.push_str(&format!(", sources {}", source_names.join(", ")));
        match check {
            ValueCheck::Any => summary.push_str(", any value"),
            ValueCheck::Range { min, max, signed } => summary.push_str(&format!(
                ", values {min}..={max}{}",
                if signed { " (signed)" } else { "" }
            )),
            ValueCheck::Set { offset, len } => {
                let pool = &self.values[offset as usize..(offset + len) as usize];
                let shown: Vec<String> = pool
                    .iter()
                    .map(|v| {
                        if signed {
                            (*v as i16).to_string()
                        } else {
                            v.to_string()
                        }
                    })
                    .collect();
                summary.push_str(&format!(", values [{}]", shown.join(", ")));
            }
            _ => {}
        }
        if rate.is_limited() {
            summary.push_str(&format!(", rate {} per point", format_rate(rate)));
        }
        self.rule_info[usize::from(rule)].summary = summary;
        self.modbus.push(ModbusSpec {
            rule,
            bridge,
            units,
            functions,
            ranges: ranges
                .into_iter()
                .map(|(a, b)| (a as u16, b as u16))
                .collect(),
            sources,
        });
        Ok(())
    }

    fn value_check(
        &mut self,
        rule: u16,
        value: &Spanned<Value>,
        signed: bool,
    ) -> Field<ValueCheck> {
        let (min, max) = if signed {
            (-32_768, 32_767)
        } else {
            (0, 65_535)
        };
        let what = if signed {
            "signed 16-bit value"
        } else {
            "16-bit value"
        };
        match value.get_ref() {
            Value::String(text) if text == "any" => Ok(ValueCheck::Any),
            Value::String(text) if text.contains("..") => {
                let ranges = parse_ranges(value.get_ref(), what, min, max);
                let ranges = self.field(rule, value.span(), "values", ranges)?;
                let (low, high) = ranges[0];
                let _ = text;
                Ok(ValueCheck::Range {
                    min: low as i32,
                    max: high as i32,
                    signed,
                })
            }
            Value::Array(items) if items.is_empty() => Ok(ValueCheck::Set {
                offset: self.values.len() as u32,
                len: 0,
            }),
            Value::Integer(_) | Value::String(_) | Value::Array(_) => {
                let items: Vec<&Value> = match value.get_ref() {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                let mut set = Vec::new();
                for item in items {
                    let n = match item {
                        Value::Integer(n) => Some(*n),
                        Value::String(s) if !s.contains("..") => parse_int(s),
                        _ => None,
                    };
                    let Some(n) = n else {
                        let message = "values: list allowed values one by one (integers), or give one range like \"0..=500\"".into();
                        self.error(rule, value.span(), message);
                        return Err(());
                    };
                    if n < min || n > max {
                        self.error(
                            rule,
                            value.span(),
                            format!("values: {n} is not a valid {what} ({min}..={max})"),
                        );
                        return Err(());
                    }
                    set.push(if signed { n as i16 as u16 } else { n as u16 });
                }
                set.sort_unstable();
                set.dedup();
                let offset = self.values.len() as u32;
                let len = set.len() as u32;
                self.values.extend(set);
                if self.values.len() > tables::MAX_VALUES {
                    let message = format!(
                        "values: the policy lists more than {} allowed values in all",
                        tables::MAX_VALUES
                    );
                    self.error(rule, value.span(), message);
                    return Err(());
                }
                Ok(ValueCheck::Set { offset, len })
            }
            other => {
                let message = format!(
                    "values: expected \"any\", a range like \"0..=500\" or a list of integers, found {}",
                    type_name(other)
                );
                self.error(rule, value.span(), message);
                Err(())
            }
        }
    }

    fn limit_rule(&mut self, rule: u16, raw: &RawModbusLimit) -> Field<()> {
        let bridge = self.bridge(rule, &raw.bridge, BridgeKind::Modbus);
        let units = self.units(rule, &raw.units);
        let (bridge, units) = (bridge?, units?);
        let parse =
            |this: &mut Self, key: &str, text: &Option<Spanned<String>>| -> Field<RateLimit> {
                match text {
                    None => Ok(RateLimit::NONE),
                    Some(t) => this.field(rule, t.span(), key, parse_rate(t.get_ref())),
                }
            };
        let writes = parse(self, "writes", &raw.writes)?;
        let poll = parse(self, "poll_writes", &raw.poll_writes)?;
        let cloud = parse(self, "cloud_writes", &raw.cloud_writes)?;
        let facade = parse(self, "facade_writes", &raw.facade_writes)?;
        let per_source = [poll, cloud, facade];
        if !writes.is_limited() && !per_source.iter().any(RateLimit::is_limited) {
            let message =
                "the limit sets no rate: give writes, poll_writes, cloud_writes or facade_writes"
                    .into();
            self.error(rule, raw.bridge.span(), message);
            return Err(());
        }
        let mut parts = Vec::new();
        for (name, r) in [
            ("writes", writes),
            ("poll_writes", poll),
            ("cloud_writes", cloud),
            ("facade_writes", facade),
        ] {
            if r.is_limited() {
                parts.push(format!("{name} {}", format_rate(r)));
            }
        }
        self.rule_info[usize::from(rule)].summary = format!(
            "bridge {}, units {}, {}",
            raw.bridge.get_ref(),
            format_ranges(&merge_ranges(
                units
                    .iter()
                    .map(|u| (i64::from(*u), i64::from(*u)))
                    .collect()
            )),
            parts.join(", ")
        );
        self.limits.push(LimitSpec {
            rule,
            bridge,
            units,
            units_span: raw.units.span(),
            writes,
            per_source,
        });
        Ok(())
    }

    fn ble_rule(&mut self, rule: u16, raw: &RawBle) -> Field<()> {
        let bridge = self.bridge(rule, &raw.bridge, BridgeKind::Ble);
        let device = if raw.device.get_ref() == "*" {
            Ok(None)
        } else {
            self.field(
                rule,
                raw.device.span(),
                "device",
                parse_device(raw.device.get_ref()).map(Some),
            )
        };
        let service = self.field(
            rule,
            raw.service.span(),
            "service",
            parse_uuid(raw.service.get_ref()),
        );
        let characteristics = string_list(raw.characteristics.get_ref(), "characteristic")
            .and_then(|list| {
                list.into_iter()
                    .map(parse_uuid)
                    .collect::<Result<Vec<u128>, String>>()
            });
        let characteristics = self.field(
            rule,
            raw.characteristics.span(),
            "characteristics",
            characteristics,
        );
        let operations = string_list(raw.operations.get_ref(), "operation").and_then(|list| {
            list.into_iter().try_fold(0u8, |mask, name| {
                BleOperation::from_name(name).map(|op| mask | op.bit()).ok_or_else(|| {
                    format!("unknown operation \"{name}\" (read, write, write_without_response, notify, indicate)")
                })
            })
        });
        let operations = self.field(rule, raw.operations.span(), "operations", operations);
        let sources = self.sources(rule, &raw.sources);
        let (bridge, device, service, characteristics, operations, sources) = (
            bridge?,
            device?,
            service?,
            characteristics?,
            operations?,
            sources?,
        );
        for characteristic in &characteristics {
            let candidate = BleRule {
                bridge,
                device,
                service,
                characteristic: *characteristic,
                operations,
                sources,
                rule,
            };
            let shadowing = self.ble.iter().find(|e| {
                e.bridge == bridge
                    && (e.device.is_none() || e.device == device)
                    && e.service == service
                    && e.characteristic == *characteristic
                    && e.operations & operations == operations
                    && e.sources & sources == sources
            });
            if let Some(earlier) = shadowing {
                let message = format!(
                    "shadowed: {} already allows every operation and source this rule names for characteristic {}",
                    self.labels[usize::from(earlier.rule)],
                    format_uuid(*characteristic)
                );
                self.warn(rule, raw.characteristics.span(), message);
            }
            self.ble.push(candidate);
        }
        let ops: Vec<&str> = BleOperation::ALL
            .iter()
            .filter(|o| operations & o.bit() != 0)
            .map(|o| o.name())
            .collect();
        let srcs: Vec<&str> = Source::ALL
            .iter()
            .filter(|s| sources & s.bit() != 0)
            .map(|s| s.name())
            .collect();
        self.rule_info[usize::from(rule)].summary = format!(
            "bridge {}, device {}, service {}, characteristics {}, operations {}, sources {}",
            raw.bridge.get_ref(),
            device.map_or("*".to_string(), format_device),
            format_uuid(service),
            characteristics
                .iter()
                .map(|c| format_uuid(*c))
                .collect::<Vec<_>>()
                .join(", "),
            ops.join(", "),
            srcs.join(", ")
        );
        Ok(())
    }

    fn ports(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<(u16, u16)>> {
        let ranges = parse_ranges(value.get_ref(), "port", 1, 65_535);
        let ranges = self.field(rule, value.span(), "ports", ranges)?;
        Ok(merge_ranges(ranges)
            .into_iter()
            .map(|(a, b)| (a as u16, b as u16))
            .collect())
    }

    fn connect_rule(&mut self, rule: u16, raw: &RawConnect) -> Field<()> {
        let compartment = self.compartment(rule, &raw.compartment);
        let ports = self.ports(rule, &raw.ports);
        let text = raw.host.get_ref().to_ascii_lowercase();
        let (subdomains, host) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, text.clone()),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
            && !host.starts_with('.')
            && !host.ends_with('.');
        if !valid {
            let message = format!(
                "host: \"{}\" is not a host name, IP address or \"*.domain\" pattern",
                raw.host.get_ref()
            );
            self.error(rule, raw.host.span(), message);
        }
        let (compartment, ports) = (compartment?, ports?);
        if !valid {
            return Err(());
        }
        for earlier in &self.connect {
            let host_covered = earlier.compartment == compartment
                && ((earlier.host == host && earlier.subdomains == subdomains)
                    || (earlier.subdomains && host.ends_with(&format!(".{}", earlier.host))));
            let ports_covered = ports
                .iter()
                .all(|(a, b)| earlier.ports.iter().any(|(x, y)| x <= a && b <= y));
            if host_covered && ports_covered {
                let message = format!(
                    "shadowed: {} already allows {} to every port this rule names",
                    self.labels[usize::from(earlier.rule)],
                    raw.host.get_ref()
                );
                self.warn(rule, raw.host.span(), message);
                break;
            }
        }
        let port_list: Vec<(i64, i64)> = ports
            .iter()
            .map(|(a, b)| (i64::from(*a), i64::from(*b)))
            .collect();
        self.rule_info[usize::from(rule)].summary = format!(
            "compartment {} connects to {} ports {}",
            raw.compartment.get_ref(),
            raw.host.get_ref(),
            format_ranges(&port_list)
        );
        self.connect.push(ConnectSpec {
            rule,
            compartment,
            host,
            subdomains,
            ports,
        });
        Ok(())
    }

    fn listen_rule(&mut self, rule: u16, raw: &RawListen) -> Field<()> {
        let compartment = self.compartment(rule, &raw.compartment);
        let ports = self.ports(rule, &raw.ports);
        let (compartment, ports) = (compartment?, ports?);
        for earlier in &self.listen {
            let covered = earlier.compartment == compartment
                && ports
                    .iter()
                    .all(|(a, b)| earlier.ports.iter().any(|(x, y)| x <= a && b <= y));
            if covered {
                let message = format!(
                    "shadowed: {} already allows every port this rule names",
                    self.labels[usize::from(earlier.rule)]
                );
                self.warn(rule, raw.ports.span(), message);
                break;
            }
        }
        let port_list: Vec<(i64, i64)> = ports
            .iter()
            .map(|(a, b)| (i64::from(*a), i64::from(*b)))
            .collect();
        self.rule_info[usize::from(rule)].summary = format!(
            "compartment {} listens on ports {}",
            raw.compartment.get_ref(),
            format_ranges(&port_list)
        );
        self.listen.push(ListenSpec {
            rule,
            compartment,
            ports,
        });
        Ok(())
    }

    /// Builds the tables from the interpreted rules; errors on capacity.
    fn finish(&mut self, policy_name: Option<String>) -> Result<CompiledPolicy, ()> {
        let mut next_slot: u64 = 0;
        // Modbus segments: for each (bridge, unit, function, source), earlier rules
        // keep the addresses they name; later rules get the gaps.
        #[derive(Clone, Copy)]
        struct Piece {
            start: u32,
            end: u32,
            rule: u16,
            slot: u32,
        }
        let mut groups: BTreeMap<u64, Vec<Piece>> = BTreeMap::new();
        let mut overlap_reported: Vec<(u16, u16)> = Vec::new();
        let specs = std::mem::take(&mut self.modbus);
        for spec in &specs {
            let rate = self.rules[usize::from(spec.rule)].rate;
            let width: u64 = spec.ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
            let mut gained = false;
            let mut shadowing: Vec<u16> = Vec::new();
            let mut overlap_warnings: Vec<String> = Vec::new();
            for unit in &spec.units {
                let base = if rate.is_limited() {
                    let base = next_slot;
                    next_slot += width;
                    Some(base)
                } else {
                    None
                };
                for function in &spec.functions {
                    let kind = function_kind(*function);
                    let ranges: Vec<(u16, u16)> = match kind {
                        Some(FunctionKind::Addressless) => vec![(0, u16::MAX)],
                        _ => spec.ranges.clone(),
                    };
                    let writes = matches!(kind, Some(FunctionKind::Write { .. }));
                    for source in Source::ALL {
                        if spec.sources & source.bit() == 0 {
                            continue;
                        }
                        let key = group_key(spec.bridge, *unit, *function, source.index() as u8);
                        let pieces = groups.entry(key).or_default();
                        let mut fresh = Vec::new();
                        for (low, high) in &ranges {
                            let (low, high) = (u32::from(*low), u32::from(*high));
                            let mut cursor = low;
                            for existing in pieces.iter() {
                                if existing.end < low || existing.start > high {
                                    continue;
                                }
                                if !shadowing.contains(&existing.rule) {
                                    shadowing.push(existing.rule);
                                }
                                if !overlap_reported.contains(&(spec.rule, existing.rule)) {
                                    overlap_reported.push((spec.rule, existing.rule));
                                    let (a, b) = (existing.start.max(low), existing.end.min(high));
                                    let shown = if a == b {
                                        a.to_string()
                                    } else {
                                        format!("{a}..={b}")
                                    };
                                    let message = format!(
                                        "overlaps {} on unit {unit}, function {} ({}), source {source}, addresses {shown}; the earlier rule decides there",
                                        self.labels[usize::from(existing.rule)],
                                        function,
                                        function_name(*function).unwrap_or("?")
                                    );
                                    overlap_warnings.push(message);
                                }
                                if existing.start > cursor {
                                    fresh.push((cursor, existing.start - 1));
                                }
                                cursor = cursor.max(existing.end + 1);
                            }
                            if cursor <= high {
                                fresh.push((cursor, high));
                            }
                        }
                        for (start, end) in fresh {
                            gained = true;
                            let slot = match (base, writes) {
                                (Some(base), true) => {
                                    let rank = rank_in(&spec.ranges, start as u16);
                                    u32::try_from(base + rank).unwrap_or(NO_SLOT - 1)
                                }
                                _ => NO_SLOT,
                            };
                            pieces.push(Piece {
                                start,
                                end,
                                rule: spec.rule,
                                slot,
                            });
                        }
                        pieces.sort_by_key(|p| p.start);
                    }
                }
            }
            if !gained {
                let names: Vec<&str> = shadowing
                    .iter()
                    .map(|r| self.labels[usize::from(*r)].as_str())
                    .collect();
                let message = format!(
                    "shadowed: every unit, function, source and address this rule names is already decided by {}",
                    names.join(", ")
                );
                let span = self.rule_span(spec.rule);
                self.warn(spec.rule, span, message);
            } else {
                for message in overlap_warnings {
                    let span = self.rule_span(spec.rule);
                    self.warn(spec.rule, span, message);
                }
            }
            if next_slot > u64::from(tables::MAX_RATE_SLOTS) {
                let message = format!(
                    "rate: per-point limits need {next_slot} buckets so far (units × addresses); a device holds at most {}",
                    tables::MAX_RATE_SLOTS
                );
                let span = self.rule_span(spec.rule);
                self.error(spec.rule, span, message);
                return Err(());
            }
        }
        let mut modbus_groups = Vec::new();
        let mut modbus_segments: Vec<ModbusSegment> = Vec::new();
        for (key, pieces) in groups {
            let first = modbus_segments.len() as u32;
            for piece in pieces {
                let segment = ModbusSegment {
                    start: piece.start as u16,
                    end: piece.end as u16,
                    rule: piece.rule,
                    slot: piece.slot,
                };
                let in_group = modbus_segments.len() as u32 > first;
                if let Some(last) = modbus_segments.last_mut().filter(|_| in_group) {
                    let contiguous = u32::from(last.end) + 1 == u32::from(segment.start)
                        && last.rule == segment.rule
                        && (last.slot == NO_SLOT && segment.slot == NO_SLOT
                            || last.slot != NO_SLOT
                                && u64::from(last.slot) + u64::from(last.end - last.start) + 1
                                    == u64::from(segment.slot));
                    if contiguous {
                        last.end = segment.end;
                        continue;
                    }
                }
                modbus_segments.push(segment);
            }
            let len = modbus_segments.len() as u32 - first;
            if len > 0 {
                modbus_groups.push(ModbusGroup { key, first, len });
            }
        }
        // Unit limits.
        let mut unit_limits: Vec<UnitLimit> = Vec::new();
        let limits = std::mem::take(&mut self.limits);
        for limit in &limits {
            for unit in &limit.units {
                if let Some(existing) = unit_limits
                    .iter()
                    .find(|l| l.bridge == limit.bridge && l.unit == *unit)
                {
                    let message = format!(
                        "units: unit {unit} of bridge \"{}\" already has a limit ({}); give each unit one modbus_limit",
                        self.bridges[usize::from(limit.bridge)].0,
                        self.labels[usize::from(existing.rule)]
                    );
                    self.error(limit.rule, limit.units_span.clone(), message);
                    return Err(());
                }
                let has_write_rule = specs.iter().any(|s| {
                    s.bridge == limit.bridge
                        && s.units.contains(unit)
                        && s.functions
                            .iter()
                            .any(|f| matches!(function_kind(*f), Some(FunctionKind::Write { .. })))
                });
                if !has_write_rule {
                    let message = format!(
                        "unreachable: no rule allows writes to unit {unit} of bridge \"{}\", so this limit never applies there",
                        self.bridges[usize::from(limit.bridge)].0
                    );
                    self.warn(limit.rule, limit.units_span.clone(), message);
                }
                unit_limits.push(UnitLimit {
                    bridge: limit.bridge,
                    unit: *unit,
                    rule: limit.rule,
                    writes: limit.writes,
                    per_source: limit.per_source,
                    slot: next_slot as u32,
                });
                next_slot += 4;
            }
        }
        unit_limits.sort_by_key(|l| (l.bridge, l.unit));
        let mut ble_rules = std::mem::take(&mut self.ble);
        ble_rules.sort_by_key(|r| r.bridge);
        let mut connect_rules = Vec::new();
        for spec in std::mem::take(&mut self.connect) {
            let host = self.intern(&spec.host);
            for (port_min, port_max) in spec.ports {
                connect_rules.push(ConnectRule {
                    compartment: spec.compartment,
                    host,
                    subdomains: spec.subdomains,
                    port_min,
                    port_max,
                    rule: spec.rule,
                });
            }
        }
        connect_rules.sort_by_key(|r| r.compartment);
        let mut listen_rules = Vec::new();
        for spec in std::mem::take(&mut self.listen) {
            for (port_min, port_max) in spec.ports {
                listen_rules.push(ListenRule {
                    compartment: spec.compartment,
                    port_min,
                    port_max,
                    rule: spec.rule,
                });
            }
        }
        listen_rules.sort_by_key(|r| r.compartment);
        let bridges: Vec<BridgeEntry> = std::mem::take(&mut self.bridges)
            .into_iter()
            .map(|(name, kind, _)| BridgeEntry {
                name: self.intern(&name),
                kind,
            })
            .collect();
        let compartments: Vec<NameRef> = std::mem::take(&mut self.compartments)
            .iter()
            .map(|name| self.intern(name))
            .collect();
        let capacity = [
            (
                "address segments",
                modbus_segments.len(),
                tables::MAX_SEGMENTS,
            ),
            (
                "(bridge, unit, function, source) groups",
                modbus_groups.len(),
                tables::MAX_GROUPS,
            ),
            ("unit limits", unit_limits.len(), tables::MAX_UNIT_LIMITS),
            (
                "BLE characteristic rules",
                ble_rules.len(),
                tables::MAX_BLE_RULES,
            ),
            (
                "connection port ranges",
                connect_rules.len(),
                tables::MAX_CONNECT_RULES,
            ),
            (
                "listening port ranges",
                listen_rules.len(),
                tables::MAX_LISTEN_RULES,
            ),
            (
                "rate buckets",
                next_slot as usize,
                tables::MAX_RATE_SLOTS as usize,
            ),
        ];
        for (what, used, max) in capacity {
            if used > max {
                let message =
                    format!("the policy compiles to {used} {what}; a device holds at most {max}");
                self.push(Severity::Error, 0..0, None, message);
            }
        }
        if !self.errors.is_empty() {
            return Err(());
        }
        let mut policy = CompiledPolicy {
            origin: self.origin.clone(),
            policy_name,
            names: std::mem::take(&mut self.names),
            bridges,
            compartments,
            rules: std::mem::take(&mut self.rules),
            values: std::mem::take(&mut self.values),
            modbus_groups,
            modbus_segments,
            unit_limits,
            ble_rules,
            connect_rules,
            listen_rules,
            rate_slots: next_slot as u32,
            fingerprint: 0,
            rule_info: std::mem::take(&mut self.rule_info),
        };
        policy.fingerprint = tables::fnv1a64(&policy.encode());
        if let Err(error) = policy.tables().validate() {
            self.push(
                Severity::Error,
                0..0,
                None,
                format!("internal: compiled tables are invalid: {error}"),
            );
            return Err(());
        }
        Ok(policy)
    }

    fn rule_span(&self, rule: u16) -> Range<usize> {
        // Rule positions were stored as line/column; recover an offset for them.
        let info = &self.rule_info[usize::from(rule)];
        let offset = self.lines.offset_of(info.line, info.column);
        offset..offset
    }
}

/// Position of `address` among the addresses of sorted `ranges` (0-based).
fn rank_in(ranges: &[(u16, u16)], address: u16) -> u64 {
    let mut rank = 0u64;
    for (low, high) in ranges {
        if address > *high {
            rank += u64::from(high - low) + 1;
        } else {
            return rank + u64::from(address.saturating_sub(*low));
        }
    }
    rank
}
