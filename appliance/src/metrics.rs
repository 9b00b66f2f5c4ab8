//! Prometheus `/metrics` in the text exposition format, on its own loopback port.
//!
//! Written by hand (a few counters need no client library). The endpoint has no
//! authentication, so the config accepts only a loopback address for it; a
//! Prometheus agent on the unit (or an SSH tunnel) scrapes it.

use std::fmt::Write as _;
use std::sync::PoisonError;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use warden_link::LinkState;

use crate::runtime::ApplianceState;

/// The routes of the metrics port.
pub fn router(state: ApplianceState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<ApplianceState>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(&state),
                    )
                        .into_response()
                },
            ),
        )
        .with_state(state)
}

/// One metric family: its help, type and samples.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
}

impl Family<'_> {
    fn header(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The current metrics as Prometheus text.
pub fn render(state: &ApplianceState) -> String {
    let mut out = String::new();
    let bridges: Vec<(String, warden_bridges::BridgeHealth)> = state
        .bridges
        .iter()
        .map(|bridge| {
            (
                label(&bridge.name),
                bridge
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            )
        })
        .collect();
    type Counter = fn(&warden_bridges::BridgeHealth) -> u64;
    let bridge_families: [(&str, &str, &str, Counter); 10] = [
        (
            "warden_bridge_connected",
            "1 if the bridge's bus or device connection is up.",
            "gauge",
            |h| u64::from(h.connected),
        ),
        (
            "warden_bridge_reads_ok_total",
            "Successful reads.",
            "counter",
            |h| h.reads_ok,
        ),
        (
            "warden_bridge_errors_total",
            "Failed requests (I/O, framing, timeouts).",
            "counter",
            |h| h.errors,
        ),
        (
            "warden_bridge_exceptions_total",
            "Modbus exception responses.",
            "counter",
            |h| h.exceptions,
        ),
        (
            "warden_bridge_policy_denials_total",
            "Requests the policy denied.",
            "counter",
            |h| h.denied,
        ),
        (
            "warden_bridge_writes_ok_total",
            "Successful writes.",
            "counter",
            |h| h.writes_ok,
        ),
        (
            "warden_bridge_timeouts_total",
            "Requests that timed out.",
            "counter",
            |h| h.timeouts,
        ),
        (
            "warden_bridge_retries_total",
            "Requests retried.",
            "counter",
            |h| h.retries,
        ),
        (
            "warden_bridge_crc_errors_total",
            "RTU frames with a bad CRC.",
            "counter",
            |h| h.crc_errors,
        ),
        (
            "warden_bridge_noise_bytes_total",
            "Bytes discarded as line noise.",
            "counter",
            |h| h.noise_bytes,
        ),
    ];
    for (name, help, kind, value) in bridge_families {
        Family { name, help, kind }.header(&mut out);
        for (bridge, health) in &bridges {
            let _ = writeln!(out, "{name}{{bridge=\"{bridge}\"}} {}", value(health));
        }
    }

    let link = state
        .link
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let link_families: [(&str, &str, &str, u64); 9] = [
        (
            "warden_link_connected",
            "1 if the cloud link is connected.",
            "gauge",
            u64::from(link.state == LinkState::Connected),
        ),
        (
            "warden_link_batches_queued_total",
            "Telemetry batches written to the outbox.",
            "counter",
            link.batches_queued,
        ),
        (
            "warden_link_batches_acknowledged_total",
            "Batches the fleet acknowledged.",
            "counter",
            link.batches_acknowledged,
        ),
        (
            "warden_link_messages_sent_total",
            "MQTT messages published.",
            "counter",
            link.messages_sent,
        ),
        (
            "warden_link_readings_dropped_total",
            "Readings dropped before the outbox.",
            "counter",
            link.readings_dropped,
        ),
        (
            "warden_outbox_depth",
            "Unacknowledged batches in store-and-forward.",
            "gauge",
            link.outbox.depth,
        ),
        (
            "warden_outbox_bytes",
            "Bytes of unacknowledged batches.",
            "gauge",
            link.outbox.bytes,
        ),
        (
            "warden_outbox_dropped_oldest_total",
            "Batches dropped by the drop_oldest overflow policy.",
            "counter",
            link.outbox.dropped_oldest,
        ),
        (
            "warden_outbox_refused_total",
            "Batches refused by the refuse overflow policy.",
            "counter",
            link.outbox.refused,
        ),
    ];
    for (name, help, kind, value) in link_families {
        Family { name, help, kind }.header(&mut out);
        let _ = writeln!(out, "{name} {value}");
    }
    Family {
        name: "warden_build_info",
        help: "The running software version.",
        kind: "gauge",
    }
    .header(&mut out);
    let _ = writeln!(
        out,
        "warden_build_info{{version=\"{}\",device=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        label(&state.device_id)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
