//! The evaluator: one decision per request, no allocation, bounded work.

use crate::decision::{Decision, Reason};
use crate::rate::{RateState, gcra_take};
use crate::request::{BleRequest, FunctionKind, ModbusRequest, Request, RuleId, function_kind};
use crate::tables::{
    BridgeKind, ModbusSegment, NO_SLOT, PolicyTables, RateLimit, ValueCheck, group_key,
};

/// Decides `request` against `tables` at time `now_ms` (any monotonic millisecond
/// clock). Rate-limited writes consume from `rate` only when allowed.
///
/// Never allocates, never panics on any tables or request; work is bounded by the
/// request's `count` and the table sizes.
pub fn evaluate<S: AsMut<[u64]>>(
    tables: &PolicyTables<'_>,
    rate: &mut RateState<S>,
    request: &Request<'_>,
    now_ms: u64,
) -> Decision {
    match request {
        Request::Modbus(modbus) => evaluate_modbus(tables, rate, modbus, now_ms),
        Request::Ble(ble) => evaluate_ble(tables, ble),
        Request::Connect {
            compartment,
            host,
            port,
        } => evaluate_connect(tables, compartment.0, host, *port),
        Request::Listen { compartment, port } => evaluate_listen(tables, compartment.0, *port),
    }
}

fn rule_id(rule: u16) -> Option<RuleId> {
    Some(RuleId(rule))
}

/// Checks the request against the protocol; returns whether it writes.
fn check_modbus_shape(request: &ModbusRequest<'_>) -> Result<Option<bool>, Reason> {
    let kind = function_kind(request.function).ok_or(Reason::UnsupportedFunction)?;
    let in_range =
        request.count >= 1 && u32::from(request.address) + u32::from(request.count) <= 0x1_0000;
    match kind {
        FunctionKind::Read { max_count } => {
            if !in_range || request.count > max_count || !request.values.is_empty() {
                return Err(Reason::MalformedRequest);
            }
            Ok(Some(false))
        }
        FunctionKind::Write { max_count, coils } => {
            if !in_range
                || request.count > max_count
                || request.values.len() != usize::from(request.count)
                || (coils && request.values.iter().any(|v| *v > 1))
            {
                return Err(Reason::MalformedRequest);
            }
            Ok(Some(true))
        }
        FunctionKind::Addressless => Ok(None),
        #[allow(unreachable_patterns)]
        _ => Err(Reason::UnsupportedFunction),
    }
}

/// Reason for a missing group: the deepest of unit, function, source that matched.
fn missing_group_reason(tables: &PolicyTables<'_>, key: u64) -> Reason {
    let groups = tables.modbus_groups;
    let at = groups.partition_point(|g| g.key < (key & !0xFFFF));
    match groups.get(at) {
        Some(g) if g.key >> 16 == key >> 16 => {
            let at = groups.partition_point(|g| g.key < (key & !0xFF));
            match groups.get(at) {
                Some(g) if g.key >> 8 == key >> 8 => Reason::SourceNotAllowed,
                _ => Reason::FunctionNotAllowed,
            }
        }
        _ => Reason::UnitNotAllowed,
    }
}

/// True if `check` lets `value` be written; `pool` is the tables' value pool.
pub(crate) fn value_allowed_in(pool: &[u16], check: ValueCheck, value: u16) -> bool {
    match check {
        ValueCheck::Any => true,
        ValueCheck::Range { min, max, signed } => {
            let v = if signed {
                i32::from(value as i16)
            } else {
                i32::from(value)
            };
            min <= v && v <= max
        }
        ValueCheck::Set { offset, len } => {
            let start = offset as usize;
            let set = pool
                .get(start..start.saturating_add(len as usize))
                .unwrap_or(&[]);
            set.binary_search(&value).is_ok()
        }
        _ => false,
    }
}

fn evaluate_modbus<S: AsMut<[u64]>>(
    tables: &PolicyTables<'_>,
    rate: &mut RateState<S>,
    request: &ModbusRequest<'_>,
    now_ms: u64,
) -> Decision {
    match tables.bridges.get(usize::from(request.bridge.0)) {
        None => return Decision::deny(Reason::UnknownBridge, None),
        Some(b) if b.kind != BridgeKind::Modbus => {
            return Decision::deny(Reason::WrongBridgeKind, None);
        }
        Some(_) => {}
    }
    let writes = match check_modbus_shape(request) {
        Ok(w) => w,
        Err(reason) => return Decision::deny(reason, None),
    };
    let (address, last) = match writes {
        Some(_) => (
            request.address,
            request.address.wrapping_add(request.count - 1),
        ),
        None => (0, 0),
    };
    let key = group_key(
        request.bridge.0,
        request.unit,
        request.function,
        request.source.index() as u8,
    );
    let groups = tables.modbus_groups;
    let Ok(g) = groups.binary_search_by_key(&key, |g| g.key) else {
        return Decision::deny(missing_group_reason(tables, key), None);
    };
    let group = groups[g];
    let first = group.first as usize;
    let Some(segments) = tables
        .modbus_segments
        .get(first..first.saturating_add(group.len as usize))
    else {
        return Decision::deny(Reason::AddressNotAllowed, None);
    };
    // The segment holding `address`: the last one starting at or before it.
    let at = segments.partition_point(|s| s.start <= address);
    if at == 0 {
        return Decision::deny(Reason::AddressNotAllowed, None);
    }
    let covering = &segments[at - 1..];
    let deciding = covering[0].rule;
    // Pass 1: coverage and values, address by address in segment order.
    let mut cursor = address;
    let mut covered = false;
    let mut rate_limited = false;
    for segment in covering {
        if segment.start > cursor || segment.end < cursor {
            return Decision::deny(Reason::AddressNotAllowed, None);
        }
        let stop = segment.end.min(last);
        if writes == Some(true) {
            let Some(rule) = tables.rules.get(usize::from(segment.rule)) else {
                return Decision::deny(Reason::AddressNotAllowed, None);
            };
            rate_limited |= rule.rate.is_limited() && segment.slot != NO_SLOT;
            let from = usize::from(cursor - address);
            let to = usize::from(stop - address) + 1;
            let values = request.values.get(from..to).unwrap_or(&[]);
            if !values
                .iter()
                .all(|v| value_allowed_in(tables.values, rule.values, *v))
            {
                return Decision::deny(Reason::ValueNotAllowed, rule_id(segment.rule));
            }
        }
        if stop == last {
            covered = true;
            break;
        }
        cursor = stop + 1;
    }
    if !covered {
        return Decision::deny(Reason::AddressNotAllowed, None);
    }
    if writes != Some(true) {
        return Decision::allow(RuleId(deciding));
    }
    let limit = unit_limit(tables, request.bridge.0, request.unit);
    if !rate_limited && limit.is_none() {
        return Decision::allow(RuleId(deciding));
    }
    let slots = rate.bind(tables);
    // Pass 2: every bucket must have room; pass 3: take from every bucket.
    for commit in [false, true] {
        if let Some(denied) =
            walk_point_buckets(tables, covering, address, last, slots, now_ms, commit)
        {
            return denied;
        }
        if let Some(limit) = limit {
            let source_limit = limit.per_source[request.source.index()];
            let buckets = [
                (limit.writes, limit.slot),
                (
                    source_limit,
                    limit.slot.saturating_add(1 + request.source.index() as u32),
                ),
            ];
            for (rate_limit, slot) in buckets {
                if !rate_limit.is_limited() {
                    continue;
                }
                let Some(bucket) = slots.get_mut(slot as usize) else {
                    return Decision::deny(Reason::RateStateTooSmall, rule_id(limit.rule));
                };
                match gcra_take(rate_limit, *bucket, now_ms) {
                    Some(next) if commit => *bucket = next,
                    Some(_) => {}
                    None => return Decision::deny(Reason::RateLimited, rule_id(limit.rule)),
                }
            }
        }
    }
    Decision::allow(RuleId(deciding))
}

/// Checks (or, with `commit`, takes from) the per-point buckets of `address..=last`.
fn walk_point_buckets(
    tables: &PolicyTables<'_>,
    covering: &[ModbusSegment],
    address: u16,
    last: u16,
    slots: &mut [u64],
    now_ms: u64,
    commit: bool,
) -> Option<Decision> {
    for segment in covering {
        if segment.start > last {
            break;
        }
        let rate_limit = match tables.rules.get(usize::from(segment.rule)) {
            Some(rule) if rule.rate.is_limited() && segment.slot != NO_SLOT => rule.rate,
            _ => continue,
        };
        let from = segment.start.max(address);
        let to = segment.end.min(last);
        for point in from..=to {
            let slot = segment.slot as usize + usize::from(point - segment.start);
            let Some(bucket) = slots.get_mut(slot) else {
                return Some(Decision::deny(
                    Reason::RateStateTooSmall,
                    rule_id(segment.rule),
                ));
            };
            match gcra_take(rate_limit, *bucket, now_ms) {
                Some(next) if commit => *bucket = next,
                Some(_) => {}
                None => return Some(Decision::deny(Reason::RateLimited, rule_id(segment.rule))),
            }
        }
    }
    None
}

fn unit_limit<'t>(
    tables: &PolicyTables<'t>,
    bridge: u16,
    unit: u8,
) -> Option<&'t crate::tables::UnitLimit> {
    let limits = tables.unit_limits;
    if limits.is_empty() {
        return None;
    }
    let at = limits
        .binary_search_by_key(&(bridge, unit), |l| (l.bridge, l.unit))
        .ok()?;
    let limit = limits.get(at)?;
    let limited = limit.writes.is_limited() || limit.per_source.iter().any(RateLimit::is_limited);
    limited.then_some(limit)
}

fn evaluate_ble(tables: &PolicyTables<'_>, request: &BleRequest) -> Decision {
    match tables.bridges.get(usize::from(request.bridge.0)) {
        None => return Decision::deny(Reason::UnknownBridge, None),
        Some(b) if b.kind != BridgeKind::Ble => {
            return Decision::deny(Reason::WrongBridgeKind, None);
        }
        Some(_) => {}
    }
    let rules = tables.ble_rules;
    let start = rules.partition_point(|r| r.bridge < request.bridge.0);
    // Depth reached by the best-matching rule: device, service, characteristic,
    // operation, source.
    let mut depth = 0u8;
    for rule in rules[start..]
        .iter()
        .take_while(|r| r.bridge == request.bridge.0)
    {
        if rule.device.is_some_and(|d| d != request.device) {
            continue;
        }
        depth = depth.max(1);
        if rule.service != request.service {
            continue;
        }
        depth = depth.max(2);
        if rule.characteristic != request.characteristic {
            continue;
        }
        depth = depth.max(3);
        if rule.operations & request.operation.bit() == 0 {
            continue;
        }
        depth = depth.max(4);
        if rule.sources & request.source.bit() == 0 {
            continue;
        }
        return Decision::allow(RuleId(rule.rule));
    }
    let reason = match depth {
        0 => Reason::DeviceNotAllowed,
        1 => Reason::ServiceNotAllowed,
        2 => Reason::CharacteristicNotAllowed,
        3 => Reason::OperationNotAllowed,
        _ => Reason::SourceNotAllowed,
    };
    Decision::deny(reason, None)
}

/// True if `host` equals `pattern` (ASCII case-insensitive), or with `subdomains`
/// ends in `.pattern` with at least one more label before it.
pub(crate) fn host_matches(pattern: &str, subdomains: bool, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if !subdomains {
        return host.eq_ignore_ascii_case(pattern);
    }
    let (h, p) = (host.as_bytes(), pattern.as_bytes());
    if h.len() < p.len() + 2 {
        return false;
    }
    let split = h.len() - p.len();
    h[split..].eq_ignore_ascii_case(p) && h[split - 1] == b'.'
}

fn evaluate_connect(
    tables: &PolicyTables<'_>,
    compartment: u16,
    host: &str,
    port: u16,
) -> Decision {
    if usize::from(compartment) >= tables.compartments.len() {
        return Decision::deny(Reason::UnknownCompartment, None);
    }
    let rules = tables.connect_rules;
    let start = rules.partition_point(|r| r.compartment < compartment);
    let mut host_named = false;
    for rule in rules[start..]
        .iter()
        .take_while(|r| r.compartment == compartment)
    {
        if !host_matches(tables.name(rule.host), rule.subdomains, host) {
            continue;
        }
        host_named = true;
        if rule.port_min <= port && port <= rule.port_max {
            return Decision::allow(RuleId(rule.rule));
        }
    }
    let reason = if host_named {
        Reason::PortNotAllowed
    } else {
        Reason::HostNotAllowed
    };
    Decision::deny(reason, None)
}

fn evaluate_listen(tables: &PolicyTables<'_>, compartment: u16, port: u16) -> Decision {
    if usize::from(compartment) >= tables.compartments.len() {
        return Decision::deny(Reason::UnknownCompartment, None);
    }
    let rules = tables.listen_rules;
    let start = rules.partition_point(|r| r.compartment < compartment);
    for rule in rules[start..]
        .iter()
        .take_while(|r| r.compartment == compartment)
    {
        if rule.port_min <= port && port <= rule.port_max {
            return Decision::allow(RuleId(rule.rule));
        }
    }
    Decision::deny(Reason::PortNotAllowed, None)
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn host_patterns() {
        assert!(host_matches("fleet.example", false, "FLEET.example."));
        assert!(!host_matches("fleet.example", false, "a.fleet.example"));
        assert!(host_matches("example", true, "a.example"));
        assert!(!host_matches("example", true, "example"));
        assert!(!host_matches("example", true, "aexample"));
        assert!(!host_matches("example", true, ".example"));
    }
}
