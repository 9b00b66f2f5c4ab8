//! Failure report, event and audit endpoints.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::ApiState;
use crate::clock::now_ms;
use warden_wire::fleet_api::{
    AuditLine, AuditQuery, CrashRate, EventsQuery, ReportsQuery, StoredEvent,
};

/// Largest number of rows a list endpoint returns.
pub const MAX_LIST_LIMIT: i64 = 10_000;

fn check_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    super::paging::limit_within(limit, 100, MAX_LIST_LIMIT)
}

pub(super) async fn list_reports(
    State(state): State<ApiState>,
    Query(query): Query<ReportsQuery>,
) -> Result<Response, ApiError> {
    match query.group_by.as_deref() {
        None => {
            let limit = check_limit(query.limit)?;
            let reports = state.store.reports(query.device.as_deref(), limit).await?;
            Ok(Json(reports).into_response())
        }
        Some("signature") => {
            let since_ms = query
                .since_ms
                .unwrap_or_else(|| now_ms() - 7 * 24 * 3_600_000);
            let bucket_ms = query.bucket_ms.unwrap_or(3_600_000);
            if bucket_ms < 1_000 {
                return Err(ApiError::BadRequest(format!(
                    "bucket_ms {bucket_ms} is below 1000"
                )));
            }
            let groups = state.store.report_groups(since_ms, bucket_ms).await?;
            Ok(Json(groups).into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "group_by {other:?} is not supported (only \"signature\")"
        ))),
    }
}

pub(super) async fn crash_rate(
    State(state): State<ApiState>,
) -> Result<Json<Vec<CrashRate>>, ApiError> {
    Ok(Json(state.store.crash_rates().await?))
}

pub(super) async fn list_events(
    State(state): State<ApiState>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<StoredEvent>>, ApiError> {
    let limit = check_limit(query.limit)?;
    Ok(Json(
        state.store.events(query.device.as_deref(), limit).await?,
    ))
}

pub(super) async fn audit_log(
    State(state): State<ApiState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditLine>>, ApiError> {
    let limit = check_limit(query.limit)?;
    Ok(Json(
        state
            .store
            .audit_log(limit)
            .await?
            .into_iter()
            .map(|(ts_ms, actor, method, path, status)| AuditLine {
                ts_ms,
                actor,
                method,
                path,
                status,
            })
            .collect(),
    ))
}
