//! Prometheus `/metrics` of the fleet, in the text exposition format, on its own
//! listener (`[metrics] listen`).
//!
//! Written by hand (a few counters need no client library), like the appliance's
//! (whose helpers live in the appliance crate, above the fleet: not shareable without
//! a crate of their own). Unauthenticated: it shows only counts, no device data, and
//! is served apart from the API so it can stay on loopback or a private network.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::broker::LocalPublisher;
use crate::cluster::Leadership;
use crate::store::{INGEST_SECONDS_BUCKETS, Store, StoreHealthSnapshot};

/// Where the metrics come from: the store's counters and, with a broker, its sessions.
#[derive(Clone)]
struct Sources {
    store: Store,
    devices: Option<LocalPublisher>,
    leadership: Option<Leadership>,
}

/// The `/metrics` route. `devices`: the broker whose connected devices are counted
/// (none: the gauge is left out).
pub fn router(store: Store, devices: Option<LocalPublisher>) -> Router {
    instance_router(store, devices, None)
}

/// [`router`] of one fleet instance, with whether it leads (`warden_fleet_leader`).
/// Every instance of a cluster serves its own: its sessions, its writes, its ingest.
pub fn instance_router(
    store: Store,
    devices: Option<LocalPublisher>,
    leadership: Option<Leadership>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Sources {
            store,
            devices,
            leadership,
        })
}

async fn metrics(State(sources): State<Sources>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(
            &sources.store.health(),
            sources
                .devices
                .as_ref()
                .map(LocalPublisher::connected_devices),
        ) + &sources
            .leadership
            .as_ref()
            .map(render_leadership)
            .unwrap_or_default(),
    )
        .into_response()
}

/// `warden_fleet_leader`: 1 on the instance that steps rollouts and prunes telemetry.
fn render_leadership(leadership: &Leadership) -> String {
    let mut out = String::new();
    let name = "warden_fleet_leader";
    family(
        &mut out,
        name,
        "gauge",
        "1 while this instance leads (steps rollouts, prunes telemetry, reaps dead instances).",
    );
    let _ = writeln!(out, "{name} {}", u8::from(leadership.is_leader()));
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics of `health` (and the connected devices, if known) as Prometheus text.
pub fn render(health: &StoreHealthSnapshot, connected_devices: Option<usize>) -> String {
    let families: [(&str, &str, &str, u64); 6] = [
        (
            "warden_fleet_store_writable",
            "gauge",
            "1 while the store's writes commit, 0 from a failed write until one commits again.",
            u64::from(health.writable),
        ),
        (
            "warden_fleet_store_write_failures_total",
            "counter",
            "Write transactions of the store that failed (a refused constraint excluded).",
            health.write_failures,
        ),
        (
            "warden_fleet_store_failure_episodes_total",
            "counter",
            "Times the store's writes started failing after succeeding.",
            health.failure_episodes,
        ),
        (
            "warden_fleet_telemetry_batches_stored_total",
            "counter",
            "Telemetry batches committed as new (duplicates are acknowledged, not counted).",
            health.batches_stored,
        ),
        (
            "warden_fleet_telemetry_batches_withheld_total",
            "counter",
            "Telemetry batches not acknowledged because they were not committed (resent by the device).",
            health.batches_withheld,
        ),
        (
            "warden_fleet_ingest_queue_depth",
            "gauge",
            "Telemetry messages waiting for ingest when it last took a group.",
            health.ingest_queue_depth,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in families {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(connected) = connected_devices {
        let name = "warden_fleet_connected_devices";
        family(
            &mut out,
            name,
            "gauge",
            "Devices with a live MQTT session on the broker.",
        );
        let _ = writeln!(out, "{name} {connected}");
    }

    let name = "warden_fleet_ingest_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Seconds from taking the store's writer to the commit of a group of telemetry batches.",
    );
    let histogram = &health.ingest_seconds;
    let mut cumulative = 0;
    for (bound, count) in INGEST_SECONDS_BUCKETS.iter().zip(histogram.buckets) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
    let _ = writeln!(out, "{name}_sum {}", histogram.sum);
    let _ = writeln!(out, "{name}_count {}", histogram.count);

    let name = "warden_fleet_attestations_total";
    family(
        &mut out,
        name,
        "counter",
        "Attestation verdicts recorded: trusted (quote verified), untrusted (refused), unanswered (no quote in time: unverified).",
    );
    let counts = &health.attestations;
    for (outcome, count) in [
        ("trusted", counts.trusted),
        ("untrusted", counts.untrusted),
        ("unanswered", counts.unanswered),
    ] {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {count}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_every_family_has_help_and_type() {
        let mut health = StoreHealthSnapshot {
            writable: true,
            write_failures: 0,
            failure_episodes: 0,
            batches_stored: 3,
            batches_withheld: 0,
            ingest_seconds: crate::store::Histogram::default(),
            ingest_queue_depth: 2,
            attestations: crate::store::AttestationCounts {
                trusted: 1,
                untrusted: 0,
                unanswered: 4,
            },
        };
        health.ingest_seconds.observe(0.002);
        health.ingest_seconds.observe(0.2);
        health.ingest_seconds.observe(60.0);
        let text = render(&health, Some(7));
        for line in [
            "warden_fleet_connected_devices 7",
            "warden_fleet_ingest_queue_depth 2",
            "warden_fleet_ingest_seconds_bucket{le=\"0.001\"} 0",
            "warden_fleet_ingest_seconds_bucket{le=\"0.0025\"} 1",
            "warden_fleet_ingest_seconds_bucket{le=\"0.25\"} 2",
            "warden_fleet_ingest_seconds_bucket{le=\"5\"} 2",
            "warden_fleet_ingest_seconds_bucket{le=\"+Inf\"} 3",
            "warden_fleet_ingest_seconds_count 3",
            "warden_fleet_attestations_total{outcome=\"unanswered\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for name in &names {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(!render(&health, None).contains("connected_devices"));
    }
}
