//! The compiler's output: tables plus what it knows of each rule, for `explain`.

use crate::compiler::diagnostic::Diagnostic;
use crate::request::{BridgeId, CompartmentId, RuleId};
use crate::tables::{
    self, BleRule, BridgeEntry, ConnectRule, ListenRule, ModbusGroup, ModbusSegment, NameRef,
    PolicyTables, RuleEntry, RuleKind, TABLES_FORMAT, TableError, UnitLimit,
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
    pub(super) origin: String,
    pub(super) policy_name: Option<String>,
    pub(super) names: String,
    pub(super) bridges: Vec<BridgeEntry>,
    pub(super) compartments: Vec<NameRef>,
    pub(super) rules: Vec<RuleEntry>,
    pub(super) values: Vec<u16>,
    pub(super) modbus_groups: Vec<ModbusGroup>,
    pub(super) modbus_segments: Vec<ModbusSegment>,
    pub(super) unit_limits: Vec<UnitLimit>,
    pub(super) ble_rules: Vec<BleRule>,
    pub(super) connect_rules: Vec<ConnectRule>,
    pub(super) listen_rules: Vec<ListenRule>,
    pub(super) rate_slots: u32,
    pub(super) fingerprint: u64,
    pub(super) rule_info: Vec<RuleInfo>,
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
