//! The policy gate every bridge request passes before it reaches equipment.

use crate::clock::unix_millis;
use crate::modbus::pdu::{ExceptionCode, Request};

/// Who asked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSource {
    /// The appliance's own poll schedule.
    Poll,
    /// A command from the fleet.
    Cloud,
    /// A SCADA client through the plant-side gateway facade.
    Facade,
}

/// One request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct GatedRequest<'a> {
    /// Bridge name from the config.
    pub bridge: &'a str,
    /// Modbus unit identifier.
    pub unit: u8,
    /// The request itself.
    pub request: &'a Request,
    /// Who asked.
    pub source: RequestSource,
}

/// A denial, with the reason a person reads in logs and reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy: {reason}")]
pub struct Denial {
    /// Why the policy refused the request.
    pub reason: String,
    /// The exception a Modbus server answers in its place: 02 (illegal data address)
    /// when the addresses were refused, 01 (illegal function) for everything else.
    pub exception: ExceptionCode,
}

/// Decides whether a request may reach the equipment. Deny by default.
pub trait RequestPolicy: Send {
    /// Checks one request; `Err` means it must not be sent.
    fn check(&mut self, request: &GatedRequest<'_>) -> Result<(), Denial>;
}

/// The policy engine as a bridge's gate: evaluates every request against compiled
/// tables, with its own rate-limit state.
pub struct PolicyGate {
    policy: std::sync::Arc<warden_policy::CompiledPolicy>,
    rate: warden_policy::RateState<Vec<u64>>,
}

impl PolicyGate {
    /// A gate over `policy` (one per bridge; rate state is per gate).
    pub fn new(policy: std::sync::Arc<warden_policy::CompiledPolicy>) -> Self {
        let rate = warden_policy::RateState::for_tables(&policy.tables());
        Self { policy, rate }
    }
}

impl RequestPolicy for PolicyGate {
    fn check(&mut self, gated: &GatedRequest<'_>) -> Result<(), Denial> {
        let Some(bridge) = self.policy.bridge_id(gated.bridge) else {
            return Err(Denial {
                reason: format!("the policy names no bridge {:?}", gated.bridge),
                exception: ExceptionCode::ILLEGAL_FUNCTION,
            });
        };
        let values: Vec<u16> = gated.request.write_values().collect();
        let request = warden_policy::Request::Modbus(warden_policy::ModbusRequest {
            bridge,
            unit: gated.unit,
            function: gated.request.function().code(),
            address: gated.request.address(),
            count: gated.request.count(),
            values: &values,
            source: match gated.source {
                RequestSource::Poll => warden_policy::Source::Poll,
                RequestSource::Cloud => warden_policy::Source::Cloud,
                RequestSource::Facade => warden_policy::Source::Facade,
            },
        });
        let decision = warden_policy::evaluate(
            &self.policy.tables(),
            &mut self.rate,
            &request,
            unix_millis(),
        );
        match decision.verdict {
            warden_policy::Verdict::Allow => Ok(()),
            _ => {
                let rule = decision
                    .rule
                    .and_then(|rule| self.policy.rule(rule))
                    .map(|info| format!(" ({})", info.label))
                    .unwrap_or_default();
                let exception = if decision.reason == warden_policy::Reason::AddressNotAllowed {
                    ExceptionCode::ILLEGAL_DATA_ADDRESS
                } else {
                    ExceptionCode::ILLEGAL_FUNCTION
                };
                Err(Denial {
                    reason: format!("{}{rule}", decision.reason),
                    exception,
                })
            }
        }
    }
}

/// A gate that allows everything: for tests and benchmarks only, never the appliance.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl RequestPolicy for AllowAll {
    fn check(&mut self, _request: &GatedRequest<'_>) -> Result<(), Denial> {
        Ok(())
    }
}
