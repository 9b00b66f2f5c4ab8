//! Checks `[[listen]]` rules: ports a compartment may listen on.

use crate::compiler::checker::{Compiler, Field};
use crate::compiler::document::RawListen;
use crate::compiler::spec::ListenSpec;
use crate::compiler::syntax::format_ranges;

impl Compiler<'_> {
    pub(super) fn listen_rule(&mut self, rule: u16, raw: &RawListen) -> Field<()> {
        let compartment = self.compartment(rule, &raw.compartment);
        let ports = self.ports(rule, &raw.ports);
        let (compartment, ports) = (compartment?, ports?);
        for earlier in &self.listen {
            let covered = earlier.compartment == compartment
                && ports
                    .iter()
                    .all(|(a, b)| earlier.ports.iter().any(|(x, y)| x <= a && b <= y));
            if covered {
                let message = format!(
                    "shadowed: {} already allows every port this rule names",
                    self.labels[usize::from(earlier.rule)]
                );
                self.warn(rule, raw.ports.span(), message);
                break;
            }
        }
        self.rule_info[usize::from(rule)].summary = format!(
            "compartment {} listens on ports {}",
            raw.compartment.get_ref(),
            format_ranges(&ports)
        );
        self.listen.push(ListenSpec {
            rule,
            compartment,
            ports,
        });
        Ok(())
    }
}
