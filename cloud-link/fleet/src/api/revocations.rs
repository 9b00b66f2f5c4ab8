//! Release-key revocation lists: `POST` and `GET /api/v1/revocation-lists` (not device
//! certificates: `POST /api/v1/devices/{id}/revoke` revokes those).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::ApiError;
use super::state::ApiState;
use crate::clock::now_ms;
use warden_wire::fleet_api::RevocationListRecord;

/// Largest body the route reads (a list is at most
/// [`MAX_REVOCATION_LIST_LEN`](warden_wire::revocation::MAX_REVOCATION_LIST_LEN) bytes;
/// one larger but under this is refused by name, one larger than this by the body limit).
pub const MAX_REVOCATION_LIST_UPLOAD: usize = 64 * 1024;

/// `POST /api/v1/revocation-lists`: the `WRL1` file as the body. Verified against the
/// fleet's vendor roots, refused unless newer than every list held, stored, and sent to
/// every online device.
pub(super) async fn upload_revocation_list(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RevocationListRecord>), ApiError> {
    let invalid = |message: String| ApiError::Invalid {
        field: "revocation_list",
        message,
    };
    let record = crate::revocations::verify_upload(state.images.vendor_roots(), &body, now_ms())
        .map_err(|error| invalid(error.to_string()))?;
    state
        .revocation_lists
        .publish(&record, &body)
        .await?
        .map_err(|error| invalid(error.to_string()))?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// `GET /api/v1/revocation-lists`: every list held, newest first.
pub(super) async fn list_revocation_lists(
    State(state): State<ApiState>,
) -> Result<Json<Vec<RevocationListRecord>>, ApiError> {
    Ok(Json(state.store.revocation_lists().await?))
}
