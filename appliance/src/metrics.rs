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

use crate::state::ApplianceState;

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
    render_at(state, crate::clock::now_ms())
}

/// Every state the link can be in, as `warden_link_state` labels them (the
/// serialised names the status shows).
const LINK_STATES: [LinkState; 4] = [
    LinkState::Connecting,
    LinkState::Connected,
    LinkState::Disconnected,
    LinkState::Unavailable,
];

/// The metrics as Prometheus text, with ages counted to `now_ms`.
pub fn render_at(state: &ApplianceState, now_ms: u64) -> String {
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
    let bridge_families: [(&str, &str, &str, Counter); 11] = [
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
            "Requests that timed out (Modbus TCP: each request; RTU: each attempt on the line).",
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
            "warden_bridge_wrong_unit_total",
            "Modbus TCP answers from another unit than the one asked (refused).",
            "counter",
            |h| h.wrong_unit,
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
    let link_families: [(&str, &str, &str, u64); 13] = [
        (
            "warden_link_up",
            "1 only while the cloud link is connected to the broker.",
            "gauge",
            u64::from(link.state == LinkState::Connected),
        ),
        (
            "warden_link_restarts_total",
            "Times the link agent started over after an error (identity, TLS, outbox).",
            "counter",
            link.restarts,
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
        (
            "warden_outbox_damaged_records_total",
            "Outbox records found damaged (checksum) when the outbox was opened; their batches are lost.",
            "counter",
            link.outbox.damaged_records,
        ),
        (
            "warden_link_readings_pending",
            "Readings taken by the link and waiting for the outbox (in memory and in the readings journal).",
            "gauge",
            link.readings_pending,
        ),
        (
            "warden_link_journal_damaged_total",
            "Readings journal records found damaged at start; their readings are lost.",
            "counter",
            link.journal_damaged,
        ),
    ];
    for (name, help, kind, value) in link_families {
        Family { name, help, kind }.header(&mut out);
        let _ = writeln!(out, "{name} {value}");
    }
    let facade = state
        .facade
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(facade) = facade {
        let facade_families: [(&str, &str, &str, u64); 6] = [
            (
                "warden_facade_clients",
                "SCADA clients connected to the gateway facade now.",
                "gauge",
                facade.clients,
            ),
            (
                "warden_facade_refused_connections_total",
                "Facade connections refused (all client slots busy).",
                "counter",
                facade.refused_connections,
            ),
            (
                "warden_facade_requests_total",
                "Requests the facade received.",
                "counter",
                facade.requests,
            ),
            (
                "warden_facade_forwarded_total",
                "Facade requests forwarded and answered downstream.",
                "counter",
                facade.forwarded,
            ),
            (
                "warden_facade_denied_total",
                "Facade requests the policy denied.",
                "counter",
                facade.denied,
            ),
            (
                "warden_facade_failed_total",
                "Facade requests not forwarded or not answered (unknown unit, bad request, no answer in time).",
                "counter",
                facade.failed,
            ),
        ];
        for (name, help, kind, value) in facade_families {
            Family { name, help, kind }.header(&mut out);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    Family {
        name: "warden_link_state",
        help: "1 for the state the cloud link is in (its cause is in `warden status`).",
        kind: "gauge",
    }
    .header(&mut out);
    for candidate in LINK_STATES {
        let _ = writeln!(
            out,
            "warden_link_state{{state=\"{}\"}} {}",
            crate::status_page::status::link_state_name(candidate),
            u64::from(link.state == candidate)
        );
    }
    Family {
        name: "warden_link_last_ack_age_seconds",
        help: "Seconds since the fleet last acknowledged a telemetry batch (absent: never since start).",
        kind: "gauge",
    }
    .header(&mut out);
    if let Some(age) = crate::status_page::status::age_secs(link.last_ack_ms, now_ms) {
        let _ = writeln!(out, "warden_link_last_ack_age_seconds {age}");
    }
    Family {
        name: "warden_task_restarts_total",
        help: "Times a restartable task of the appliance was started again after it failed.",
        kind: "counter",
    }
    .header(&mut out);
    let tasks = state
        .tasks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (task, health) in &tasks {
        let _ = writeln!(
            out,
            "warden_task_restarts_total{{task=\"{}\"}} {}",
            label(task),
            health.restarts
        );
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

    fn state_with(link: warden_link::LinkStatus) -> ApplianceState {
        ApplianceState {
            device_id: "wd-1".into(),
            bridges: Vec::new(),
            values: Default::default(),
            link: std::sync::Arc::new(std::sync::Mutex::new(link)),
            history: Default::default(),
            updates: Default::default(),
            unit: Default::default(),
            tasks: Default::default(),
            facade: Default::default(),
            point_decimals: Default::default(),
        }
    }

    fn sample<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .map(|line| &line[name.len() + 1..])
    }

    #[test]
    fn a_link_that_is_not_connected_is_not_up() {
        let state = state_with(warden_link::LinkStatus {
            state: LinkState::Unavailable,
            last_error: Some("fleet CA /etc/warden/fleet-ca.pem: not found".into()),
            restarts: 3,
            ..Default::default()
        });
        state.tasks.lock().expect("tasks").insert(
            "unit facts reader".into(),
            crate::supervision::TaskHealth {
                restarts: 2,
                last_failure: Some("panicked".into()),
            },
        );
        let text = render_at(&state, 10_000);
        assert_eq!(sample(&text, "warden_link_up"), Some("0"), "{text}");
        assert_eq!(
            sample(&text, "warden_link_state{state=\"unavailable\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "warden_link_state{state=\"connected\"}"),
            Some("0")
        );
        assert_eq!(sample(&text, "warden_link_restarts_total"), Some("3"));
        // Never acknowledged: no sample at all, so `absent()` alerts work.
        assert_eq!(sample(&text, "warden_link_last_ack_age_seconds"), None);
        assert_eq!(
            sample(
                &text,
                "warden_task_restarts_total{task=\"unit facts reader\"}"
            ),
            Some("2")
        );
    }

    #[test]
    fn facade_and_bridge_transport_counters_are_exported() {
        let state = state_with(warden_link::LinkStatus::default());
        let text = render_at(&state, 0);
        assert_eq!(
            sample(&text, "warden_facade_requests_total"),
            None,
            "no facade, no samples"
        );
        *state.facade.lock().expect("facade") = Some(warden_bridges::FacadeHealth {
            clients: 2,
            requests: 40,
            forwarded: 30,
            denied: 4,
            failed: 6,
            refused_connections: 1,
            last_denial: None,
        });
        let mut health = warden_bridges::BridgeHealth::default();
        health.record(Some(1), warden_bridges::health::HealthEvent::Timeout);
        health.record(Some(1), warden_bridges::health::HealthEvent::WrongUnit);
        let state = ApplianceState {
            bridges: vec![crate::state::BridgeView {
                name: "plc".into(),
                address: "10.0.0.2:502".into(),
                points: Vec::new(),
                health: std::sync::Arc::new(std::sync::Mutex::new(health)),
            }],
            ..state
        };
        let text = render_at(&state, 0);
        for (name, value) in [
            ("warden_facade_clients", "2"),
            ("warden_facade_requests_total", "40"),
            ("warden_facade_forwarded_total", "30"),
            ("warden_facade_denied_total", "4"),
            ("warden_facade_failed_total", "6"),
            ("warden_facade_refused_connections_total", "1"),
            ("warden_bridge_timeouts_total{bridge=\"plc\"}", "1"),
            ("warden_bridge_wrong_unit_total{bridge=\"plc\"}", "1"),
        ] {
            assert_eq!(sample(&text, name), Some(value), "{name} in {text}");
        }
    }

    #[test]
    fn a_connected_link_is_up_with_the_age_of_its_last_ack() {
        let state = state_with(warden_link::LinkStatus {
            state: LinkState::Connected,
            last_ack_ms: Some(4_000),
            ..Default::default()
        });
        let text = render_at(&state, 10_500);
        assert_eq!(sample(&text, "warden_link_up"), Some("1"), "{text}");
        assert_eq!(
            sample(&text, "warden_link_state{state=\"connected\"}"),
            Some("1")
        );
        assert_eq!(sample(&text, "warden_link_last_ack_age_seconds"), Some("6"));
    }
}
