//! The API's errors, answered as `{"error": "..."}` (and the field, for a 422).

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use warden_wire::fleet_api::ErrorBody;

use crate::auth::Denied;

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
    /// A resource is at its cap (503 with `Retry-After`).
    #[error("too many {what} in progress; retry in {retry_after_secs} s")]
    Busy {
        /// What is at its cap.
        what: String,
        /// Seconds to wait, sent as `Retry-After`.
        retry_after_secs: u64,
    },
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
                    Denied::RateLimited { .. } => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many failed token attempts from this address: each further \
                         failure is answered later (a valid token is always accepted)"
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
                if let Denied::RateLimited { backoff } = denied {
                    let seconds = backoff.as_secs().max(1).to_string();
                    if let Ok(value) = header::HeaderValue::from_str(&seconds) {
                        response.headers_mut().insert(header::RETRY_AFTER, value);
                    }
                }
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                }
                return response;
            }
            Self::Busy {
                retry_after_secs, ..
            } => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ErrorBody {
                        error: self.to_string(),
                        field: None,
                    }),
                )
                    .into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(*retry_after_secs),
                );
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
