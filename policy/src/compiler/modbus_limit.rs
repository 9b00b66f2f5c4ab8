//! Checks `[[modbus_limit]]` entries: per-unit write limits.

use toml::Spanned;

use crate::compiler::checker::{Compiler, Field};
use crate::compiler::document::RawModbusLimit;
use crate::compiler::spec::LimitSpec;
use crate::compiler::syntax::{format_ranges, format_rate, merge_ranges, parse_rate};
use crate::tables::{BridgeKind, RateLimit};

impl Compiler<'_> {
    pub(super) fn limit_rule(&mut self, rule: u16, raw: &RawModbusLimit) -> Field<()> {
        let bridge = self.bridge(rule, &raw.bridge, BridgeKind::Modbus);
        let units = self.units(rule, &raw.units);
        let (bridge, units) = (bridge?, units?);
        let parse =
            |this: &mut Self, key: &str, text: &Option<Spanned<String>>| -> Field<RateLimit> {
                match text {
                    None => Ok(RateLimit::NONE),
                    Some(t) => this.field(rule, t.span(), key, parse_rate(t.get_ref())),
                }
            };
        let writes = parse(self, "writes", &raw.writes)?;
        let poll = parse(self, "poll_writes", &raw.poll_writes)?;
        let cloud = parse(self, "cloud_writes", &raw.cloud_writes)?;
        let facade = parse(self, "facade_writes", &raw.facade_writes)?;
        let per_source = [poll, cloud, facade];
        if !writes.is_limited() && !per_source.iter().any(RateLimit::is_limited) {
            let message =
                "the limit sets no rate: give writes, poll_writes, cloud_writes or facade_writes"
                    .into();
            self.error(rule, raw.bridge.span(), message);
            return Err(());
        }
        let mut parts = Vec::new();
        for (name, r) in [
            ("writes", writes),
            ("poll_writes", poll),
            ("cloud_writes", cloud),
            ("facade_writes", facade),
        ] {
            if r.is_limited() {
                parts.push(format!("{name} {}", format_rate(r)));
            }
        }
        self.rule_info[usize::from(rule)].summary = format!(
            "bridge {}, units {}, {}",
            raw.bridge.get_ref(),
            format_ranges(&merge_ranges(
                units
                    .iter()
                    .map(|u| (i64::from(*u), i64::from(*u)))
                    .collect()
            )),
            parts.join(", ")
        );
        self.limits.push(LimitSpec {
            rule,
            bridge,
            units,
            units_span: raw.units.span(),
            writes,
            per_source,
        });
        Ok(())
    }
}
