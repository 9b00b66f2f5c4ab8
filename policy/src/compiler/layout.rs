//! Table layout: turns checked rules into the sorted, non-overlapping tables the
//! evaluator reads, assigns rate buckets, and enforces the capacities.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::compiler::checker::Compiler;
use crate::compiler::compiled::CompiledPolicy;
use crate::compiler::diagnostic::Severity;
use crate::request::{FunctionKind, Source, function_kind, function_name};
use crate::tables::{
    self, BridgeEntry, ConnectRule, ListenRule, ModbusGroup, ModbusSegment, NO_SLOT, NameRef,
    UnitLimit, group_key,
};

impl Compiler<'_> {
    /// Builds the tables from the interpreted rules; errors on capacity.
    pub(super) fn finish(&mut self, policy_name: Option<String>) -> Result<CompiledPolicy, ()> {
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

    pub(super) fn rule_span(&self, rule: u16) -> Range<usize> {
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
