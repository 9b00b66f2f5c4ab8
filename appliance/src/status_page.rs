//! The operator's local status page: bridges, points, last values and link state.

use std::sync::PoisonError;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use warden_bridges::BridgeHealth;
use warden_link::LinkStatus;

use crate::runtime::{ApplianceState, LiveValue};

const STATUS_HTML: &str = include_str!("../assets/status.html");

/// The status page's routes.
pub fn router(state: ApplianceState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .with_state(state)
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(STATUS_HTML),
    )
        .into_response()
}

/// The status as JSON.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This unit.
    pub device_id: String,
    /// The cloud link.
    pub link: LinkStatus,
    /// Bridges in config order.
    pub bridges: Vec<BridgeStatus>,
}

/// One bridge.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    /// Name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Counters.
    pub health: BridgeHealth,
    /// Points with their last values (`null` before the first read).
    pub points: Vec<PointStatus>,
}

/// One point.
#[derive(Debug, Serialize)]
pub struct PointStatus {
    /// Name.
    pub name: String,
    /// Last value, if any.
    pub last: Option<LiveValue>,
}

async fn status(State(state): State<ApplianceState>) -> Json<Status> {
    let values = state
        .values
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let bridges = state
        .bridges
        .iter()
        .map(|bridge| BridgeStatus {
            name: bridge.name.clone(),
            address: bridge.address.clone(),
            health: bridge
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            points: bridge
                .points
                .iter()
                .map(|point| PointStatus {
                    name: point.clone(),
                    last: values.get(&(bridge.name.clone(), point.clone())).cloned(),
                })
                .collect(),
        })
        .collect();
    let link = state
        .link
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Json(Status {
        device_id: state.device_id.clone(),
        link,
        bridges,
    })
}
