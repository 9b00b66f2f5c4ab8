//! Checks `[[connect]]` rules: outbound connections a compartment may open.

use crate::compiler::checker::{Compiler, Field};
use crate::compiler::document::RawConnect;
use crate::compiler::spec::ConnectSpec;
use crate::compiler::syntax::format_ranges;

impl Compiler<'_> {
    pub(super) fn connect_rule(&mut self, rule: u16, raw: &RawConnect) -> Field<()> {
        let compartment = self.compartment(rule, &raw.compartment);
        let ports = self.ports(rule, &raw.ports);
        let text = raw.host.get_ref().to_ascii_lowercase();
        let (subdomains, host) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, text.clone()),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
            && !host.starts_with('.')
            && !host.ends_with('.');
        if !valid {
            let message = format!(
                "host: \"{}\" is not a host name, IP address or \"*.domain\" pattern",
                raw.host.get_ref()
            );
            self.error(rule, raw.host.span(), message);
        }
        let (compartment, ports) = (compartment?, ports?);
        if !valid {
            return Err(());
        }
        for earlier in &self.connect {
            let host_covered = earlier.compartment == compartment
                && ((earlier.host == host && earlier.subdomains == subdomains)
                    || (earlier.subdomains && host.ends_with(&format!(".{}", earlier.host))));
            let ports_covered = ports
                .iter()
                .all(|(a, b)| earlier.ports.iter().any(|(x, y)| x <= a && b <= y));
            if host_covered && ports_covered {
                let message = format!(
                    "shadowed: {} already allows {} to every port this rule names",
                    self.labels[usize::from(earlier.rule)],
                    raw.host.get_ref()
                );
                self.warn(rule, raw.host.span(), message);
                break;
            }
        }
        self.rule_info[usize::from(rule)].summary = format!(
            "compartment {} connects to {} ports {}",
            raw.compartment.get_ref(),
            raw.host.get_ref(),
            format_ranges(&ports)
        );
        self.connect.push(ConnectSpec {
            rule,
            compartment,
            host,
            subdomains,
            ports,
        });
        Ok(())
    }
}
