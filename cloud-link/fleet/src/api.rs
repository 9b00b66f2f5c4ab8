//! The fleet's HTTP API under `/api/v1` and its dashboard.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::broker::LocalPublisher;
use crate::store::{Device, Store, StoredCommand, StoredReading};
use warden_link::topics::{
    Command, CommandAction, PROTOCOL_VERSION, TwinDesired, commands_topic, from_hex,
    twin_desired_topic, valid_command_id,
};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// Publishes to devices through the broker.
    pub devices: LocalPublisher,
    /// Attestation challenges waiting for quotes.
    pub challenges: std::sync::Arc<crate::attestation::PendingChallenges>,
}

/// The dashboard page; it reads the API from the browser.
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Largest number of readings one telemetry query returns.
pub const MAX_TELEMETRY_LIMIT: i64 = 10_000;

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}/telemetry", get(device_telemetry))
        .route("/api/v1/devices/{id}/commands", post(send_command))
        .route("/api/v1/devices/{id}/commands/{command}", get(get_command))
        .route("/api/v1/devices/{id}/twin", get(get_twin))
        .route("/api/v1/devices/{id}/attestation", post(attest_device))
        .route("/api/v1/devices/{id}/twin/desired", put(put_twin_desired))
        .with_state(state)
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

async fn list_devices(
    State(ApiState { store, .. }): State<ApiState>,
) -> Result<Json<Vec<Device>>, ApiError> {
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
    State(ApiState { store, .. }): State<ApiState>,
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

/// A write request for a device's point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// Bridge name on the device.
    pub bridge: String,
    /// Point name.
    pub point: String,
    /// Value in engineering units.
    pub value: f64,
    /// Optional client-chosen command ID (idempotency key); generated when absent.
    pub id: Option<String>,
}

async fn send_command(
    State(ApiState { store, devices, .. }): State<ApiState>,
    Path(device): Path<String>,
    axum::Json(request): axum::Json<WriteRequest>,
) -> Result<(StatusCode, Json<StoredCommand>), ApiError> {
    if !store.device_exists(&device).await? {
        return Err(ApiError::NotFound(format!("device {device} is not known")));
    }
    if !request.value.is_finite() {
        return Err(ApiError::BadRequest("value must be a finite number".into()));
    }
    let id = match request.id {
        Some(id) if valid_command_id(&id) => id,
        Some(id) => {
            return Err(ApiError::BadRequest(format!(
                "command id {id:?} is not 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        None => new_command_id(),
    };
    if let Some(existing) = store.command(&device, &id).await? {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let command = Command {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        action: CommandAction::Write {
            bridge: request.bridge,
            point: request.point,
            value: request.value,
        },
    };
    let payload = command.encode();
    let now = now_ms();
    store
        .insert_command(&id, &device, &String::from_utf8_lossy(&payload), now)
        .await?;
    devices.publish(commands_topic(&device), payload).await;
    let stored = store
        .command(&device, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("command {id}")))?;
    Ok((StatusCode::ACCEPTED, Json(stored)))
}

async fn get_command(
    State(ApiState { store, .. }): State<ApiState>,
    Path((device, id)): Path<(String, String)>,
) -> Result<Json<StoredCommand>, ApiError> {
    store
        .command(&device, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("device {device} has no command {id}")))
}

/// The desired state an operator sets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRequest {
    /// A signed policy bundle, hex-encoded (the device verifies it; the fleet only
    /// checks it is hex).
    pub policy_bundle: Option<String>,
}

/// A device's twin.
#[derive(Debug, Serialize)]
pub struct TwinView {
    /// The device.
    pub device: String,
    /// What the fleet wants (as sent).
    pub desired: Option<serde_json::Value>,
    /// What the device reports it runs.
    pub reported: Option<serde_json::Value>,
}

async fn put_twin_desired(
    State(ApiState { store, devices, .. }): State<ApiState>,
    Path(device): Path<String>,
    axum::Json(request): axum::Json<DesiredRequest>,
) -> Result<StatusCode, ApiError> {
    if !store.device_exists(&device).await? {
        return Err(ApiError::NotFound(format!("device {device} is not known")));
    }
    if let Some(bundle) = &request.policy_bundle
        && from_hex(bundle).is_none()
    {
        return Err(ApiError::BadRequest("policy_bundle must be hex".into()));
    }
    let desired = TwinDesired {
        v: PROTOCOL_VERSION,
        policy_bundle: request.policy_bundle,
    };
    let payload = desired.encode();
    store
        .set_twin_desired(&device, &String::from_utf8_lossy(&payload), now_ms())
        .await?;
    devices.publish(twin_desired_topic(&device), payload).await;
    Ok(StatusCode::ACCEPTED)
}

async fn get_twin(
    State(ApiState { store, .. }): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<TwinView>, ApiError> {
    if !store.device_exists(&device).await? {
        return Err(ApiError::NotFound(format!("device {device} is not known")));
    }
    let (desired, reported) = store.twin(&device).await?.unwrap_or((None, None));
    let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(Json(TwinView {
        device,
        desired: parse(desired),
        reported: parse(reported),
    }))
}

async fn attest_device(
    State(ApiState {
        devices,
        challenges,
        ..
    }): State<ApiState>,
    Path(device): Path<String>,
) -> Result<(StatusCode, Json<crate::attestation::Attestation>), ApiError> {
    match crate::attestation::attest(&device, &devices, &challenges).await {
        Ok(outcome) if outcome.verified => Ok((StatusCode::OK, Json(outcome))),
        Ok(outcome) => {
            tracing::warn!(device, reason = ?outcome.reason, "attestation failed");
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(outcome)))
        }
        Err(error) => Err(ApiError::Conflict(format!("device {device}: {error}"))),
    }
}

fn new_command_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "c-{:x}-{:x}",
        now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
    /// The request cannot be served in the device's current state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
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
