//! The policy gate every GATT operation of a BLE bridge passes before it reaches a sensor.

use std::sync::Arc;

use warden_bridges::request_policy::RequestSource;
use warden_policy::BleOperation;

use crate::ble_uuid::BleUuid;
use crate::device_address::DeviceAddress;

/// One GATT operation as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct BleGatedRequest<'a> {
    /// Bridge name from the config.
    pub bridge: &'a str,
    /// The connected sensor.
    pub device: DeviceAddress,
    /// Service UUID.
    pub service: BleUuid,
    /// Characteristic UUID.
    pub characteristic: BleUuid,
    /// Read, write, notify, ...
    pub operation: BleOperation,
    /// Who asked.
    pub source: RequestSource,
}

/// A refusal, with the reason a person reads in logs and reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy: {reason}")]
pub struct BleDenial {
    /// Why the policy refused the operation.
    pub reason: String,
}

/// Decides whether a GATT operation may reach the sensor. Deny by default.
pub trait BleRequestPolicy: Send {
    /// Checks one operation; `Err` means it must not be sent.
    fn check(&mut self, request: &BleGatedRequest<'_>) -> Result<(), BleDenial>;
}

/// The policy engine as a BLE bridge's gate, with its own rate-limit state.
pub struct BlePolicyGate {
    policy: Arc<warden_policy::CompiledPolicy>,
    rate: warden_policy::RateState<Vec<u64>>,
}

impl BlePolicyGate {
    /// A gate over `policy` (one per bridge).
    pub fn new(policy: Arc<warden_policy::CompiledPolicy>) -> Self {
        let rate = warden_policy::RateState::for_tables(&policy.tables());
        Self { policy, rate }
    }
}

impl BleRequestPolicy for BlePolicyGate {
    fn check(&mut self, gated: &BleGatedRequest<'_>) -> Result<(), BleDenial> {
        let Some(bridge) = self.policy.bridge_id(gated.bridge) else {
            return Err(BleDenial {
                reason: format!("the policy names no bridge {:?}", gated.bridge),
            });
        };
        let request = warden_policy::Request::Ble(warden_policy::BleRequest {
            bridge,
            device: gated.device.bytes,
            service: gated.service.0,
            characteristic: gated.characteristic.0,
            operation: gated.operation,
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
            warden_bridges::clock::unix_millis(),
        );
        match decision.verdict {
            warden_policy::Verdict::Allow => Ok(()),
            _ => {
                let rule = decision
                    .rule
                    .and_then(|rule| self.policy.rule(rule))
                    .map(|info| format!(" ({})", info.label))
                    .unwrap_or_default();
                Err(BleDenial {
                    reason: format!(
                        "{}{rule}: {} {} of {} on {}",
                        decision.reason,
                        gated.operation.name(),
                        gated.characteristic,
                        gated.service,
                        gated.device
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_address::AddressKind;

    const POLICY: &str = r#"
[[ble]]
bridge = "greenhouse"
device = "F0:F1:F2:F3:F4:F5"
service = "181A"
characteristics = ["2A6E"]
operations = ["read", "notify"]
sources = ["poll"]
"#;

    fn request(operation: BleOperation, device: &str) -> BleGatedRequest<'static> {
        BleGatedRequest {
            bridge: "greenhouse",
            device: DeviceAddress::parse(device, AddressKind::Random).expect("address"),
            service: BleUuid::from_u16(0x181A),
            characteristic: BleUuid::from_u16(0x2A6E),
            operation,
            source: RequestSource::Poll,
        }
    }

    #[test]
    fn the_engine_decides_and_denies_by_default() {
        let compiled = warden_policy::compile(POLICY, "policy.toml").expect("compiles");
        let mut gate = BlePolicyGate::new(Arc::new(compiled.policy));
        assert_eq!(
            gate.check(&request(BleOperation::Read, "F0:F1:F2:F3:F4:F5")),
            Ok(())
        );
        assert_eq!(
            gate.check(&request(BleOperation::Notify, "F0:F1:F2:F3:F4:F5")),
            Ok(())
        );
        let denied = gate
            .check(&request(BleOperation::Write, "F0:F1:F2:F3:F4:F5"))
            .expect_err("writes are not allowed");
        assert!(
            denied
                .reason
                .contains("write 2A6E of 181A on F0:F1:F2:F3:F4:F5"),
            "{denied}"
        );
        assert!(
            gate.check(&request(BleOperation::Read, "F0:F1:F2:F3:F4:F6"))
                .is_err()
        );
        let mut other = request(BleOperation::Read, "F0:F1:F2:F3:F4:F5");
        other.bridge = "elsewhere";
        assert!(gate.check(&other).is_err());
    }
}
