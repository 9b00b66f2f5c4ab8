//! The fleet's HTTP API under `/api/v1` and its dashboard.

mod dashboard;
mod deployments;
mod registry;
mod reports;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::auth::{Authorizer, Caller, Denied, required};
use crate::broker::LocalPublisher;
use crate::clock::now_ms;
use crate::deployments::Rollouts;
use crate::enrollment::DeviceTrust;
use crate::images::ImageStore;
use crate::store::{Device, Store, StoredReading};
use warden_wire::fleet_api::{CommandView, DesiredRequest, ErrorBody, WriteRequest};
use warden_wire::topics::{
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
    /// Challenges devices and records the verdicts.
    pub attestor: crate::attestation::Attestor,
    /// Who may call what.
    pub authorizer: Authorizer,
    /// What the broker trusts (products' CAs, registrations, revocations).
    pub trust: Arc<DeviceTrust>,
    /// Uploaded images.
    pub images: ImageStore,
    /// The rollout engine (stepped right after a deployment is created).
    pub rollouts: Rollouts,
}

/// Largest number of readings one telemetry query returns.
pub const MAX_TELEMETRY_LIMIT: i64 = 10_000;

/// The OpenAPI document of this API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Largest image upload accepted (bytes).
pub const MAX_IMAGE_UPLOAD: usize = 256 * 1024 * 1024;

/// The API's routes, the dashboard, and `/metrics` (unauthenticated, read-only).
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/devices",
            get(list_devices).post(registry::register_device),
        )
        .route("/api/v1/devices/{id}", get(registry::get_device))
        .route("/api/v1/devices/{id}/revoke", post(registry::revoke_device))
        .route(
            "/api/v1/products",
            get(registry::list_products).post(registry::create_product),
        )
        .route(
            "/api/v1/products/{name}/groups",
            get(registry::list_groups).post(registry::create_group),
        )
        .route("/api/v1/reports", get(reports::list_reports))
        .route("/api/v1/reports/crash-rate", get(reports::crash_rate))
        .route("/api/v1/events", get(reports::list_events))
        .route("/api/v1/audit", get(reports::audit_log))
        .route(
            "/api/v1/images",
            get(deployments::list_images)
                .post(deployments::upload_image)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_IMAGE_UPLOAD)),
        )
        .route(
            "/api/v1/deployments",
            get(deployments::list_deployments).post(deployments::create_deployment),
        )
        .route("/api/v1/deployments/{id}", get(deployments::get_deployment))
        .route("/api/v1/devices/{id}/telemetry", get(device_telemetry))
        .route("/api/v1/devices/{id}/commands", post(send_command))
        .route("/api/v1/devices/{id}/commands/{command}", get(get_command))
        .route("/api/v1/devices/{id}/twin", get(get_twin))
        .route("/api/v1/devices/{id}/attestation", post(attest_device))
        .route("/api/v1/devices/{id}/twin/desired", put(put_twin_desired))
        .merge(dashboard::api_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    Router::new()
        .merge(dashboard::pages())
        .route("/api/v1/openapi.json", get(openapi))
        .route("/images/{sha256}", get(deployments::download_image))
        .merge(api)
        .with_state(state.clone())
        .merge(crate::metrics::router(state.store))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// Authorises every API request (deny by default), then audits the writes.
async fn authorize(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let caller: Caller = match state
        .authorizer
        .authorize(bearer, peer, required(&method, &path))
    {
        Ok(caller) => caller,
        Err(denied) => {
            tracing::warn!(%method, path, ?peer, ?denied, "api request refused");
            return ApiError::Denied(denied).into_response();
        }
    };
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    if !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD)
        && let Err(error) = state
            .store
            .audit(
                &caller.name,
                method.as_str(),
                &path,
                response.status().as_u16(),
                now_ms(),
            )
            .await
    {
        tracing::error!(%error, "cannot write the audit log");
    }
    response
}

/// Query parameters of `GET /api/v1/devices`.
#[derive(Debug, Deserialize)]
pub struct DevicesQuery {
    /// Devices skipped, by ID (default 0).
    pub offset: Option<i64>,
    /// At most this many (default: all).
    pub limit: Option<i64>,
}

async fn list_devices(
    State(ApiState { store, .. }): State<ApiState>,
    Query(page): Query<DevicesQuery>,
) -> Result<Json<Vec<Device>>, ApiError> {
    let offset = offset_of(page.offset)?;
    let limit = limit_within(page.limit, i64::MAX, i64::MAX)?;
    Ok(Json(store.devices_page(offset, limit).await?))
}

/// A query's `limit`: `default` when absent, else within `1..=max`.
pub(crate) fn limit_within(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else if max == i64::MAX {
        Err(ApiError::BadRequest(format!(
            "limit {limit} must be at least 1"
        )))
    } else {
        Err(ApiError::BadRequest(format!(
            "limit {limit} is outside 1..={max}"
        )))
    }
}

/// A query's `offset`: 0 when absent, never negative.
pub(crate) fn offset_of(offset: Option<i64>) -> Result<i64, ApiError> {
    match offset.unwrap_or(0) {
        offset if offset < 0 => Err(ApiError::BadRequest(format!("offset {offset} is negative"))),
        offset => Ok(offset),
    }
}

/// Query parameters of the telemetry endpoint.
#[derive(Debug, Deserialize)]
pub struct TelemetryQuery {
    /// Only this point (`bridge/point`).
    pub point: Option<String>,
    /// At most this many readings, newest first (default 100).
    pub limit: Option<i64>,
    /// Only readings read at or after this time (ms since the epoch, device time).
    pub from_ms: Option<i64>,
    /// Only readings read before this time (ms since the epoch, device time).
    pub to_ms: Option<i64>,
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
    let limit = limit_within(query.limit, 100, MAX_TELEMETRY_LIMIT)?;
    let read = query.from_ms.unwrap_or(i64::MIN)..query.to_ms.unwrap_or(i64::MAX);
    if read.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "from_ms {} is not before to_ms {}",
            read.start, read.end
        )));
    }
    if !store.device_exists(&id).await? {
        return Err(ApiError::NotFound(format!("device {id} is not known")));
    }
    let readings = store
        .telemetry_between(&id, query.point.as_deref(), read, limit)
        .await?;
    Ok(Json(TelemetryResponse {
        device: id,
        readings,
    }))
}

async fn send_command(
    State(ApiState { store, devices, .. }): State<ApiState>,
    Path(device): Path<String>,
    axum::Json(request): axum::Json<WriteRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    if !store.device_exists(&device).await? {
        return Err(ApiError::NotFound(format!("device {device} is not known")));
    }
    if !request.value.is_finite() {
        return Err(ApiError::BadRequest("value must be a finite number".into()));
    }
    refuse_untrusted(&store, &device).await?;
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
) -> Result<Json<CommandView>, ApiError> {
    store
        .command(&device, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("device {device} has no command {id}")))
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

/// Commands are withheld from a registered device whose attestation failed or lapsed.
async fn refuse_untrusted(store: &Store, device: &str) -> Result<(), ApiError> {
    if let Some(registered) = store.registered_device(device).await?
        && (matches!(registered.attestation.as_str(), "untrusted" | "unverified")
            || registered.revoked)
    {
        return Err(ApiError::Conflict(format!(
            "device {device} is not trusted (attestation {}, revoked {}): commands are withheld",
            registered.attestation, registered.revoked
        )));
    }
    Ok(())
}

async fn attest_device(
    State(ApiState { attestor, .. }): State<ApiState>,
    Path(device): Path<String>,
) -> Result<(StatusCode, Json<crate::attestation::Attestation>), ApiError> {
    // The verdict (status, detail, failure report) is recorded by the attestor.
    match attestor
        .attest(&device, crate::attestation::QUOTE_TIMEOUT)
        .await
    {
        Ok(outcome) if outcome.verified => Ok((StatusCode::OK, Json(outcome))),
        Ok(outcome) => Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(outcome))),
        Err(crate::attestation::AttestError::Store(error)) => Err(error.into()),
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

/// An API error, answered as `{"error": "..."}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A field of the request is unacceptable (422); the field is named.
    #[error("{field}: {message}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The caller is not authorised.
    #[error("{0:?}")]
    Denied(Denied),
    /// Something failed inside the fleet (logged where it happened).
    #[error("internal error")]
    Internal,
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
            Self::Invalid { field, message } => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(ErrorBody {
                        error: format!("{field}: {message}"),
                        field: Some((*field).to_owned()),
                    }),
                )
                    .into_response();
            }
            Self::Denied(denied) => {
                let (status, message) = match denied {
                    Denied::Unauthenticated => (
                        StatusCode::UNAUTHORIZED,
                        "a valid bearer token is required".to_owned(),
                    ),
                    Denied::Forbidden(role, permission) => (
                        StatusCode::FORBIDDEN,
                        format!("role {role:?} does not grant {permission:?}"),
                    ),
                    Denied::RateLimited => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many failed token attempts from this address; retry in a minute"
                            .to_owned(),
                    ),
                };
                let mut response = (
                    status,
                    Json(ErrorBody {
                        error: message,
                        field: None,
                    }),
                )
                    .into_response();
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                }
                return response;
            }
            Self::Store(error) => {
                tracing::error!(%error, "api request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &self {
            Self::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        (
            status,
            Json(ErrorBody {
                error: message,
                field: None,
            }),
        )
            .into_response()
    }
}
