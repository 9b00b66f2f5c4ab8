//! `POST /api/v1/devices/{id}/certificate/renew`, and the renewal on the device page.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use warden_wire::fleet_api::CertificateRenewal;

use super::error::ApiError;
use super::state::ApiState;
use crate::clock::now_ms;
use crate::store::Store;

/// Asks a registered, connected, unrevoked device to renew its certificate now; the
/// outcome shows on its device page (`certificate.renewal`).
pub(super) async fn renew_certificate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CertificateRenewal>), ApiError> {
    let Some(device) = state.store.registered_device(&id).await? else {
        return Err(ApiError::NotFound(format!("device {id} is not registered")));
    };
    if device.revoked {
        return Err(ApiError::Conflict(format!(
            "device {id} is revoked: its certificate is not renewed"
        )));
    }
    if state.devices.live_device_key(&id).await.is_none() {
        return Err(ApiError::Conflict(format!(
            "device {id} is not connected: it renews by itself once it connects and its \
             certificate is due"
        )));
    }
    state.renewer.order(&id).await;
    tracing::info!(device = %id, "certificate renewal ordered");
    Ok((
        StatusCode::ACCEPTED,
        Json(CertificateRenewal {
            state: "ordered".to_owned(),
            detail: "the device was asked to renew its certificate; it sends a request \
                     signed by its key, and the fleet attests it before issuing"
                .to_owned(),
            fingerprint: None,
            not_after_ms: None,
            updated_ms: now_ms(),
        }),
    ))
}

/// The last renewal of `device`'s certificate, as the device page shows it.
pub(super) async fn certificate_renewal(
    store: &Store,
    device: &str,
) -> Result<Option<CertificateRenewal>, ApiError> {
    Ok(store
        .renewal(device)
        .await?
        .map(|renewal| CertificateRenewal {
            state: renewal.state,
            detail: renewal.detail,
            fingerprint: renewal.fingerprint,
            not_after_ms: renewal.not_after_ms,
            updated_ms: renewal.updated_ms,
        }))
}
