//! Prometheus `/metrics` of the fleet, in the text exposition format.
//!
//! Written by hand (a few counters need no client library), like the appliance's.
//! Served unauthenticated on the API's listener: it is read-only and shows only
//! counts about the fleet's store, no device data.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::store::{Store, StoreHealthSnapshot};

/// The `/metrics` route, on its own state so it can be merged into any router.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(store)
}

async fn metrics(State(store): State<Store>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&store.health()),
    )
        .into_response()
}

/// The metrics of `health` as Prometheus text.
pub fn render(health: &StoreHealthSnapshot) -> String {
    let families: [(&str, &str, &str, u64); 5] = [
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
    ];
    let mut out = String::new();
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}
