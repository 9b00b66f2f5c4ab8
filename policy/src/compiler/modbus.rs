//! Checks `[[modbus]]` rules: bridge, units, functions, addresses, values, rate.

use toml::{Spanned, Value};

use crate::compiler::checker::{Compiler, Field};
use crate::compiler::document::RawModbus;
use crate::compiler::spec::ModbusSpec;
use crate::compiler::syntax::{
    ReferenceTable, format_ranges, format_rate, merge_ranges, parse_int, parse_ranges, parse_rate,
    split_reference, type_name,
};
use crate::request::{FunctionKind, Source, function_kind, function_name};
use crate::tables::{self, BridgeKind, RateLimit, ValueCheck};

impl Compiler<'_> {
    pub(super) fn modbus_rule(&mut self, rule: u16, raw: &RawModbus) -> Field<()> {
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

    pub(super) fn value_check(
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
}
