//! Checks `[[ble]]` rules: device, service, characteristics, operations.

use crate::compiler::checker::{Compiler, Field};
use crate::compiler::document::RawBle;
use crate::compiler::syntax::{
    SyntaxError, format_device, format_uuid, parse_device, parse_uuid, string_list,
};
use crate::request::{BleOperation, Source};
use crate::tables::{BleRule, BridgeKind};

impl Compiler<'_> {
    pub(super) fn ble_rule(&mut self, rule: u16, raw: &RawBle) -> Field<()> {
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
                    .collect::<Result<Vec<u128>, SyntaxError>>()
            });
        let characteristics = self.field(
            rule,
            raw.characteristics.span(),
            "characteristics",
            characteristics,
        );
        let operations = string_list(raw.operations.get_ref(), "operation").and_then(|list| {
            list.into_iter().try_fold(0u8, |mask, name| {
                BleOperation::from_name(name)
                    .map(|op| mask | op.bit())
                    .ok_or_else(|| SyntaxError::UnknownBleOperation {
                        name: name.to_owned(),
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
}
