//! The page's handlers: the page and its assets, login and logout, the status API,
//! the operator's update decisions and images uploaded from a file.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use serde::Serialize;

use super::auth::{self, LoginGate};
use super::session::{LOGIN_COOKIE, PageState, SESSION_COOKIE, cookie, form_field, set_cookie};
use super::status;
use super::tls::ClientAddress;
use crate::state::updates::UpdateDecision;
use crate::updates::local::{LocalInstallAnswer, LocalInstallClient, RefusalKind};

/// Passwords longer than this are refused before hashing.
const MAX_PASSWORD_BYTES: usize = 256;

const STATUS_HTML: &str = include_str!("../../assets/status.html");
const LOGIN_HTML: &str = include_str!("../../assets/login.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

pub(super) async fn page(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if state.session(&headers).is_none() {
        return Redirect::to("/login").into_response();
    }
    Html(STATUS_HTML).into_response()
}

pub(super) async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

pub(super) async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

/// The login form with a fresh double-submit token (cookie and hidden field).
fn login_form(status: StatusCode, message: &str) -> Response {
    let Ok(token) = auth::random_token() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    let body = LOGIN_HTML
        .replace("{{CSRF}}", &token)
        .replace("{{MESSAGE}}", &html_escape(message));
    (status, [set_cookie(LOGIN_COOKIE, &token, 600)], Html(body)).into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) async fn login_page() -> Response {
    login_form(StatusCode::OK, "")
}

pub(super) async fn login(
    State(state): State<PageState>,
    ConnectInfo(ClientAddress(client)): ConnectInfo<ClientAddress>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE);
    let sent = form_field(&body, "csrf");
    match (expected, sent) {
        (Some(expected), Some(sent)) if auth::tokens_equal(expected, &sent) => {}
        _ => {
            return login_form(
                StatusCode::FORBIDDEN,
                "The login form expired; please try again.",
            );
        }
    }
    let now = Instant::now();
    let gate = state
        .auth
        .limiter
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .check(client.ip(), now);
    if let LoginGate::Locked(wait) = gate {
        return locked_out(wait);
    }
    let password = form_field(&body, "password").unwrap_or_default();
    let right = if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        false
    } else {
        let Ok(_permit) = state.auth.verifying.acquire().await else {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
        };
        let auth = Arc::clone(&state.auth);
        tokio::task::spawn_blocking(move || auth.password.verify(&password))
            .await
            .unwrap_or(false)
    };
    let mut limiter = state
        .auth
        .limiter
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !right {
        let wait = limiter.failed(client.ip(), now);
        drop(limiter);
        tracing::warn!(%client, "status page: wrong password");
        return if wait.is_zero() {
            login_form(StatusCode::UNAUTHORIZED, "Wrong password.")
        } else {
            locked_out(wait)
        };
    }
    limiter.succeeded(client.ip(), now);
    drop(limiter);
    let created = state
        .auth
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .create(now);
    let Ok((session, _csrf)) = created else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    tracing::info!(%client, "status page: operator logged in");
    let idle = state
        .auth
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .idle_secs();
    // `AppendHeaders`: two Set-Cookie headers (an array would keep only the last).
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            set_cookie(SESSION_COOKIE, &session, idle),
            set_cookie(LOGIN_COOKIE, "", 0),
            (header::LOCATION, "/".to_owned()),
        ]),
    )
        .into_response()
}

fn locked_out(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut response = login_form(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many failed logins: locked out; try again in {secs} s."),
    );
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub(super) async fn logout(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = match state.require_csrf(&headers, &body) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    state
        .auth
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    (
        StatusCode::SEE_OTHER,
        [
            set_cookie(SESSION_COOKIE, "", 0),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

/// What `/api/session` returns: the token every POST must carry.
#[derive(Debug, Serialize)]
struct SessionInfo {
    csrf_token: String,
}

pub(super) async fn session_info(State(state): State<PageState>, headers: HeaderMap) -> Response {
    match state.require_session(&headers) {
        Ok((_, csrf_token)) => Json(SessionInfo { csrf_token }).into_response(),
        Err(refused) => refused.into_response(),
    }
}

pub(super) async fn api_status(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if let Err(refused) = state.require_session(&headers) {
        return refused.into_response();
    }
    Json(status::snapshot(&state.appliance)).into_response()
}

fn current_updates(state: &PageState) -> UpdateDecision {
    state
        .appliance
        .updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

pub(super) async fn updates(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if let Err(refused) = state.require_session(&headers) {
        return refused.into_response();
    }
    Json(current_updates(&state)).into_response()
}

pub(super) async fn defer_updates(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = state.require_csrf(&headers, &body) {
        return refused.into_response();
    }
    state
        .appliance
        .updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .defer(crate::clock::now_ms());
    tracing::info!("status page: operator deferred updates");
    Json(current_updates(&state)).into_response()
}

pub(super) async fn allow_updates(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = state.require_csrf(&headers, &body) {
        return refused.into_response();
    }
    state
        .appliance
        .updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allow(crate::clock::now_ms());
    tracing::info!("status page: operator allowed updates");
    Json(current_updates(&state)).into_response()
}

/// Length of the upload in the request's `Content-Length`.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn upload_answer(status: StatusCode, answer: &LocalInstallAnswer) -> Response {
    (status, Json(answer)).into_response()
}

/// An image uploaded by the operator: the session's CSRF token in the header (the
/// body is the image and is not read before the check), its length announced and
/// within the limit, then streamed chunk by chunk to the updater's local install
/// socket, which writes it to disk, verifies, gates and installs it as it would an
/// offer's download. The updater's answer is the response: 200 installed, 202
/// verified and waiting for the gate, 413 too large, 409 another install in
/// progress, 422 refused (what was wrong: signature, product, anti-rollback, …).
pub(super) async fn upload_update(
    State(state): State<PageState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refused) = state.require_csrf(&headers, &[]) {
        return refused.into_response();
    }
    let Some(target) = state.local_installs.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this unit takes no updates (its config has no [updates] section)\n",
        )
            .into_response();
    };
    let Some(size) = content_length(&headers) else {
        return (
            StatusCode::LENGTH_REQUIRED,
            "send the image with its length (Content-Length)\n",
        )
            .into_response();
    };
    if size > target.max_bytes {
        return upload_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            &LocalInstallAnswer::Refused {
                reason: RefusalKind::TooLarge,
                detail: format!(
                    "the file is {size} bytes; this unit takes images of at most {} bytes; nothing was changed",
                    target.max_bytes
                ),
            },
        );
    }
    let mut client =
        match LocalInstallClient::start(&target.socket, size, "status page upload").await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "status page: upload: the updater is not reachable");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the updater is not reachable: {error}\n"),
                )
                    .into_response();
            }
        };
    tracing::info!(size, "status page: operator uploads an image");
    let mut body = body;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && client.send(&data).await.is_err()
                {
                    // Refused early (busy, too large): its answer explains.
                    break;
                }
            }
            Some(Err(error)) => {
                // The updater sees the file stop short and deletes what it got.
                tracing::warn!(%error, "status page: upload interrupted");
                return (
                    StatusCode::BAD_REQUEST,
                    format!("the upload was interrupted: {error}\n"),
                )
                    .into_response();
            }
        }
    }
    match client.finish(&mut |_| {}).await {
        Ok(answer) => {
            let status = match &answer {
                LocalInstallAnswer::Installed { .. }
                | LocalInstallAnswer::RevocationsInstalled { .. } => StatusCode::OK,
                LocalInstallAnswer::Waiting { .. } => StatusCode::ACCEPTED,
                LocalInstallAnswer::Refused {
                    reason: RefusalKind::TooLarge,
                    ..
                } => StatusCode::PAYLOAD_TOO_LARGE,
                LocalInstallAnswer::Refused {
                    reason: RefusalKind::Busy,
                    ..
                } => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            tracing::info!(%status, ?answer, "status page: upload answered");
            upload_answer(status, &answer)
        }
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("the updater did not answer: {error}\n"),
        )
            .into_response(),
    }
}
