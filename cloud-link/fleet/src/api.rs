//! The fleet's HTTP API under `/api/v1` and its dashboard.

mod dashboard;
mod deployments;
mod error;
mod paging;
mod registry;
mod renewal;
mod reports;
mod revocations;
mod state;

pub use error::ApiError;
use paging::{limit_within, offset_of};
pub use state::ApiState;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::auth::{Caller, Denied, required};
use crate::clock::now_ms;
use crate::store::Store;
use warden_wire::fleet_api::{
    Attestation, CommandView, DesiredRequest, Device, DevicesQuery, TelemetryQuery,
    TelemetryResponse, TwinView, WriteRequest,
};
use warden_wire::topics::{
    Command, CommandAction, PROTOCOL_VERSION, TwinDesired, commands_topic, from_hex,
    twin_desired_topic, valid_command_id,
};

/// Largest number of readings one telemetry query returns.
pub const MAX_TELEMETRY_LIMIT: i64 = 10_000;

/// The OpenAPI document of this API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Largest image upload accepted (bytes).
pub const MAX_IMAGE_UPLOAD: usize = 256 * 1024 * 1024;

/// The API's routes and the dashboard (`/metrics` has its own listener: `metrics`).
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/devices",
            get(list_devices).post(registry::register_device),
        )
        .route("/api/v1/devices/{id}", get(registry::get_device))
        .route("/api/v1/devices/{id}/revoke", post(registry::revoke_device))
        .route(
            "/api/v1/devices/{id}/certificate/renew",
            post(renewal::renew_certificate),
        )
        .route(
            "/api/v1/products",
            get(registry::list_products).post(registry::create_product),
        )
        .route(
            "/api/v1/products/{name}/groups",
            get(registry::list_groups).post(registry::create_group),
        )
        .route(
            "/api/v1/products/{name}/enrollment",
            put(registry::set_enrollment),
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
            "/api/v1/deltas",
            get(deployments::list_deltas)
                .post(deployments::upload_delta)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_IMAGE_UPLOAD)),
        )
        .route(
            "/api/v1/revocation-lists",
            get(revocations::list_revocation_lists)
                .post(revocations::upload_revocation_list)
                .layer(axum::extract::DefaultBodyLimit::max(
                    revocations::MAX_REVOCATION_LIST_UPLOAD,
                )),
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
        .route(HEALTH_PATH, get(health))
        .route("/images/{sha256}", get(deployments::download_image))
        .route("/deltas/{sha256}", get(deployments::download_delta))
        .merge(api)
        .with_state(state)
        .layer(axum::middleware::map_response(hardening_headers))
}

/// Every answer: `X-Content-Type-Options: nosniff`; and `Cache-Control: no-store`
/// unless the handler chose its caching (images are immutable and public).
async fn hardening_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    response
}

/// The load balancer's health check: unauthenticated, no fleet data.
pub const HEALTH_PATH: &str = "/healthz";

/// 200 while the store takes writes, else 503 (a balancer stops sending devices
/// here); the body says which instance answered and whether it leads.
async fn health(State(state): State<ApiState>) -> Response {
    let writable = state.store.health().writable;
    let body = serde_json::json!({
        "status": if writable { "ok" } else { "store-unwritable" },
        "instance": state.instance,
        "leader": state.rollouts.leader.is_leader(),
        "connected_devices": state.devices.connected_devices(),
    });
    let status = if writable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
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
            if let Denied::RateLimited { backoff } = denied {
                // Slows this address's guessing only: the wait holds one of its own
                // connections (capped per address), and is not logged each time.
                tokio::time::sleep(backoff).await;
            } else {
                tracing::warn!(%method, path, ?peer, ?denied, "api request refused");
            }
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

async fn list_devices(
    State(ApiState { store, .. }): State<ApiState>,
    Query(page): Query<DevicesQuery>,
) -> Result<Json<Vec<Device>>, ApiError> {
    let offset = offset_of(page.offset)?;
    let limit = limit_within(page.limit, i64::MAX, i64::MAX)?;
    Ok(Json(store.devices_page(offset, limit).await?))
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
    let command = Command {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        action: CommandAction::Write {
            bridge: request.bridge,
            point: request.point,
            value: request.value,
        },
    };
    // An ID names one command: sent again with the same body it is the same command
    // (idempotent, 200 with its state); with another body it is a mistake the caller
    // must hear about, not a silent answer about the old command.
    if let Some(existing) = store.command(&device, &id).await? {
        let same = serde_json::from_value::<Command>(existing.request.clone())
            .is_ok_and(|sent| sent.action == command.action);
        if same {
            return Ok((StatusCode::OK, Json(existing)));
        }
        return Err(ApiError::Conflict(format!(
            "command id {id} was used for another command on device {device}: {}",
            existing.request
        )));
    }
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
) -> Result<(StatusCode, Json<Attestation>), ApiError> {
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
