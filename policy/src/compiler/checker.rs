//! The compiler's state and the walk over the rules: dispatches each rule to its
//! kind's checker and interprets the fields every kind shares.

use std::collections::HashMap;
use std::ops::Range;

use toml::{Spanned, Value};

use crate::compiler::compiled::RuleInfo;
use crate::compiler::diagnostic::{Diagnostic, LineIndex, Severity};
use crate::compiler::document::{
    RawBle, RawConnect, RawDocument, RawListen, RawModbus, RawModbusLimit,
};
use crate::compiler::spec::{ConnectSpec, LimitSpec, ListenSpec, ModbusSpec};
use crate::compiler::syntax::{
    SyntaxError, merge_ranges, parse_int, parse_ranges, string_list, type_name,
};
use crate::request::{MODBUS_FUNCTIONS, Source, function_kind};
use crate::tables::{
    self, BleRule, BridgeKind, NameRef, RateLimit, RuleEntry, RuleKind, ValueCheck,
};

pub(super) enum RawRule<'d> {
    Modbus(&'d Spanned<RawModbus>, usize),
    Limit(&'d Spanned<RawModbusLimit>, usize),
    Ble(&'d Spanned<RawBle>, usize),
    Connect(&'d Spanned<RawConnect>, usize),
    Listen(&'d Spanned<RawListen>, usize),
}

impl RawRule<'_> {
    pub(super) fn span(&self) -> Range<usize> {
        match self {
            RawRule::Modbus(r, _) => r.span(),
            RawRule::Limit(r, _) => r.span(),
            RawRule::Ble(r, _) => r.span(),
            RawRule::Connect(r, _) => r.span(),
            RawRule::Listen(r, _) => r.span(),
        }
    }

    pub(super) fn name(&self) -> Option<&Spanned<String>> {
        match self {
            RawRule::Modbus(r, _) => r.get_ref().name.as_ref(),
            RawRule::Limit(r, _) => r.get_ref().name.as_ref(),
            RawRule::Ble(r, _) => r.get_ref().name.as_ref(),
            RawRule::Connect(r, _) => r.get_ref().name.as_ref(),
            RawRule::Listen(r, _) => r.get_ref().name.as_ref(),
        }
    }

    pub(super) fn kind_and_index(&self) -> (&'static str, usize, RuleKind) {
        match self {
            RawRule::Modbus(_, n) => ("modbus", *n, RuleKind::Modbus),
            RawRule::Limit(_, n) => ("modbus_limit", *n, RuleKind::ModbusLimit),
            RawRule::Ble(_, n) => ("ble", *n, RuleKind::Ble),
            RawRule::Connect(_, n) => ("connect", *n, RuleKind::Connect),
            RawRule::Listen(_, n) => ("listen", *n, RuleKind::Listen),
        }
    }
}

pub(super) struct Compiler<'s> {
    pub(super) origin: String,
    pub(super) lines: LineIndex<'s>,
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
    pub(super) names: String,
    pub(super) name_offsets: HashMap<String, NameRef>,
    pub(super) bridges: Vec<(String, BridgeKind, Range<usize>)>,
    pub(super) compartments: Vec<String>,
    pub(super) labels: Vec<String>,
    pub(super) rule_info: Vec<RuleInfo>,
    pub(super) rules: Vec<RuleEntry>,
    pub(super) values: Vec<u16>,
    pub(super) modbus: Vec<ModbusSpec>,
    pub(super) limits: Vec<LimitSpec>,
    pub(super) ble: Vec<BleRule>,
    pub(super) connect: Vec<ConnectSpec>,
    pub(super) listen: Vec<ListenSpec>,
}

/// Result of interpreting one field: `Err(())` after an error was recorded.
pub(super) type Field<T> = Result<T, ()>;

impl<'s> Compiler<'s> {
    pub(super) fn new(source: &'s str, origin: &str) -> Self {
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

    pub(super) fn push(
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

    pub(super) fn error(&mut self, rule: u16, span: Range<usize>, message: String) {
        let label = self.labels.get(usize::from(rule)).cloned();
        self.push(Severity::Error, span, label, message);
    }

    pub(super) fn warn(&mut self, rule: u16, span: Range<usize>, message: String) {
        let label = self.labels.get(usize::from(rule)).cloned();
        self.push(Severity::Warning, span, label, message);
    }

    pub(super) fn field<T>(
        &mut self,
        rule: u16,
        span: Range<usize>,
        key: &str,
        result: Result<T, SyntaxError>,
    ) -> Field<T> {
        result.map_err(|message| self.error(rule, span, format!("{key}: {message}")))
    }

    pub(super) fn intern(&mut self, name: &str) -> NameRef {
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

    pub(super) fn run(&mut self, document: &RawDocument) {
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

    pub(super) fn bridge(
        &mut self,
        rule: u16,
        name: &Spanned<String>,
        kind: BridgeKind,
    ) -> Field<u16> {
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

    pub(super) fn compartment(&mut self, rule: u16, name: &Spanned<String>) -> Field<u16> {
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

    pub(super) fn units(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<u8>> {
        let ranges = parse_ranges(value.get_ref(), "Modbus unit id", 0, 255);
        let ranges = self.field(rule, value.span(), "units", ranges)?;
        Ok(merge_ranges(ranges)
            .into_iter()
            .flat_map(|(a, b)| a..=b)
            .map(|u| u as u8)
            .collect())
    }

    pub(super) fn sources(&mut self, rule: u16, value: &Spanned<Value>) -> Field<u8> {
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

    pub(super) fn functions(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<u8>> {
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

    pub(super) fn ports(&mut self, rule: u16, value: &Spanned<Value>) -> Field<Vec<(u16, u16)>> {
        let ranges = parse_ranges(value.get_ref(), "port", 1, 65_535);
        let ranges = self.field(rule, value.span(), "ports", ranges)?;
        Ok(merge_ranges(ranges)
            .into_iter()
            .map(|(a, b)| (a as u16, b as u16))
            .collect())
    }
}
