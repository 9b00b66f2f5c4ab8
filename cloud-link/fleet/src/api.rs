//! The fleet's HTTP API under `/api/v1` and its dashboard.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::store::{Device, Store, StoredReading};

/// The dashboard page; it reads the API from the browser.
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Largest number of readings one telemetry query returns.
pub const MAX_TELEMETRY_LIMIT: i64 = 10_000;

/// The API's routes over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}/telemetry", get(device_telemetry))
        .with_state(store)
}

async fn dashboard() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

async fn list_devices(State(store): State<Store>) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(store.devices().await?))
}

/// Query parameters of the telemetry endpoint.
#[derive(Debug, Deserialize)]
pub struct TelemetryQuery {
    /// Only this point (`bridge/point`).
    pub point: Option<String>,
    /// At most this many readings, newest first (default 100).
    pub limit: Option<i64>,
}

/// The telemetry endpoint's answer.
#[derive(Debug, Serialize)]
pub struct TelemetryResponse {
    /// The device asked about.
    pub device: String,
    /// Readings, newest first.
    pub readings: Vec<StoredReading>,
}

async fn device_telemetry(
    State(store): State<Store>,
    Path(id): Path<String>,
    Query(query): Query<TelemetryQuery>,
) -> Result<Json<TelemetryResponse>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_TELEMETRY_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is outside 1..={MAX_TELEMETRY_LIMIT}"
        )));
    }
    if !store.device_exists(&id).await? {
        return Err(ApiError::NotFound(format!("device {id} is not known")));
    }
    let readings = store.telemetry(&id, query.point.as_deref(), limit).await?;
    Ok(Json(TelemetryResponse {
        device: id,
        readings,
    }))
}

/// An API error, answered as `{"error": "..."}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Store(error) => {
                tracing::error!(%error, "api request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &self {
            Self::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
