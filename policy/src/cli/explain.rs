//! `warden policy explain`: evaluate one request and say which rule decided and why.

use std::fmt;
use std::path::Path;

use crate::cli::check::CheckError;
use crate::cli::request_text::{ParsedRequest, RequestTextError, parse_request};
use crate::compiler::syntax::{format_device, format_ranges, format_uuid};
use crate::compiler::{CompileErrors, CompiledPolicy, RuleInfo, compile};
use crate::decision::{Decision, Reason};
use crate::evaluate::evaluate;
use crate::rate::RateState;
use crate::request::{
    FunctionKind, MODBUS_FUNCTIONS, Request, Source, function_kind, function_name,
};
use crate::tables::{BridgeKind, ValueCheck, group_key};

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
