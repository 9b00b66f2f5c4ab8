//! The evaluator's answer: a verdict, a reason code and the deciding rule.

use core::fmt;

use crate::request::RuleId;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The request may pass.
    Allow,
    /// The request must be dropped (and answered with a Modbus exception or an error).
    Deny,
}

/// Why the evaluator decided as it did. Codes are stable: they go into telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Reason {
    /// A rule allows the request.
    Allowed = 0,
    /// The bridge id is not in the policy.
    UnknownBridge = 1,
    /// The Modbus function code is one the policy does not support (22, 23, ...).
    UnsupportedFunction = 2,
    /// The request breaks the protocol: count 0 or too large, range past 65535,
    /// values that do not match count, a coil value other than 0 or 1.
    MalformedRequest = 3,
    /// No rule names this unit on this bridge.
    UnitNotAllowed = 4,
    /// No rule names this function code for the unit.
    FunctionNotAllowed = 5,
    /// Rules name the function for the unit, but not for this source.
    SourceNotAllowed = 6,
    /// Part of the address range is outside every allowed range.
    AddressNotAllowed = 7,
    /// A value to write is outside the rule's bounds or allowed values.
    ValueNotAllowed = 8,
    /// A rate limit (per point, per unit or per source) is exhausted.
    RateLimited = 9,
    /// The caller's rate-limit storage is smaller than the policy needs.
    RateStateTooSmall = 10,
    /// No BLE rule names this device on this bridge.
    DeviceNotAllowed = 11,
    /// No BLE rule names this service for the device.
    ServiceNotAllowed = 12,
    /// No BLE rule names this characteristic in the service.
    CharacteristicNotAllowed = 13,
    /// The characteristic is named but not for this operation.
    OperationNotAllowed = 14,
    /// The compartment id is not in the policy.
    UnknownCompartment = 15,
    /// No rule lets the compartment connect to this host.
    HostNotAllowed = 16,
    /// The host (or the listener) is named, but not this port.
    PortNotAllowed = 17,
    /// A Modbus request at a BLE bridge, or the other way round.
    WrongBridgeKind = 18,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 19] = [
        Reason::Allowed,
        Reason::UnknownBridge,
        Reason::UnsupportedFunction,
        Reason::MalformedRequest,
        Reason::UnitNotAllowed,
        Reason::FunctionNotAllowed,
        Reason::SourceNotAllowed,
        Reason::AddressNotAllowed,
        Reason::ValueNotAllowed,
        Reason::RateLimited,
        Reason::RateStateTooSmall,
        Reason::DeviceNotAllowed,
        Reason::ServiceNotAllowed,
        Reason::CharacteristicNotAllowed,
        Reason::OperationNotAllowed,
        Reason::UnknownCompartment,
        Reason::HostNotAllowed,
        Reason::PortNotAllowed,
        Reason::WrongBridgeKind,
    ];

    /// Stable numeric code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Reason for a code, if the code is known.
    pub fn from_code(code: u8) -> Option<Self> {
        Reason::ALL.get(usize::from(code)).copied()
    }

    /// Kebab-case name used in text output and telemetry.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::UnknownBridge => "unknown-bridge",
            Reason::UnsupportedFunction => "unsupported-function",
            Reason::MalformedRequest => "malformed-request",
            Reason::UnitNotAllowed => "unit-not-allowed",
            Reason::FunctionNotAllowed => "function-not-allowed",
            Reason::SourceNotAllowed => "source-not-allowed",
            Reason::AddressNotAllowed => "address-not-allowed",
            Reason::ValueNotAllowed => "value-not-allowed",
            Reason::RateLimited => "rate-limited",
            Reason::RateStateTooSmall => "rate-state-too-small",
            Reason::DeviceNotAllowed => "device-not-allowed",
            Reason::ServiceNotAllowed => "service-not-allowed",
            Reason::CharacteristicNotAllowed => "characteristic-not-allowed",
            Reason::OperationNotAllowed => "operation-not-allowed",
            Reason::UnknownCompartment => "unknown-compartment",
            Reason::HostNotAllowed => "host-not-allowed",
            Reason::PortNotAllowed => "port-not-allowed",
            Reason::WrongBridgeKind => "wrong-bridge-kind",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The evaluator's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why (`Reason::Allowed` when allowed).
    pub reason: Reason,
    /// The rule that allowed the request, or the rule whose constraint (values, rate)
    /// denied it; `None` when no rule matched at all.
    pub rule: Option<RuleId>,
}

impl Decision {
    /// An allow by `rule`.
    pub const fn allow(rule: RuleId) -> Self {
        Decision {
            verdict: Verdict::Allow,
            reason: Reason::Allowed,
            rule: Some(rule),
        }
    }

    /// A deny for `reason`, by `rule` if one applied.
    pub const fn deny(reason: Reason, rule: Option<RuleId>) -> Self {
        Decision {
            verdict: Verdict::Deny,
            reason,
            rule,
        }
    }

    /// True if the request may pass.
    pub const fn is_allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow)
    }
}
