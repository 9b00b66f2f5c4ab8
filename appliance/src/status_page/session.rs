//! Sessions on the page: cookies, the CSRF token every POST carries, and refusals.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{LoginLimiter, PasswordVerifier, Sessions};
use crate::state::ApplianceState;
use crate::updates::local::LocalInstallTarget;

/// The session cookie (`__Host-`: Secure, path `/`, no domain, so no other site or
/// subdomain can set it).
pub const SESSION_COOKIE: &str = "__Host-warden-session";
/// The login form's CSRF cookie (double submit: the form carries the same value).
pub const LOGIN_COOKIE: &str = "__Host-warden-login";
/// The header carrying the session's CSRF token on every POST.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The password, the sessions and the login limiter, shared by the handlers.
pub(super) struct Auth {
    pub(super) password: PasswordVerifier,
    pub(super) sessions: Mutex<Sessions>,
    pub(super) limiter: Mutex<LoginLimiter>,
    /// One Argon2 verification at a time (each takes ~19 MiB and tens of ms).
    pub(super) verifying: tokio::sync::Semaphore,
}

/// What every handler gets: the appliance's state and the page's sessions.
#[derive(Clone)]
pub(super) struct PageState {
    pub(super) appliance: ApplianceState,
    pub(super) auth: Arc<Auth>,
    /// Where uploaded images go (`None`: the unit takes no updates).
    pub(super) local_installs: Option<Arc<LocalInstallTarget>>,
}

/// The value of cookie `name` in the request.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

pub(super) fn set_cookie(
    name: &str,
    value: &str,
    max_age_secs: u64,
) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!(
            "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
        ),
    )
}

impl PageState {
    /// The session's CSRF token, if the request carries a live session cookie.
    pub(super) fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let csrf = self
            .auth
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .touch(id, Instant::now())?;
        Some((id.to_owned(), csrf))
    }

    /// A session, or the 401 an API call gets without one.
    pub(super) fn require_session(&self, headers: &HeaderMap) -> Result<(String, String), Refused> {
        self.session(headers).ok_or(Refused::NoSession)
    }

    /// A session whose CSRF token the POST carries (header, or a `csrf` form field).
    pub(super) fn require_csrf(&self, headers: &HeaderMap, body: &[u8]) -> Result<String, Refused> {
        let (id, expected) = self.require_session(headers)?;
        let from_header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let from_form = form_field(body, "csrf");
        let sent = from_header.map(str::to_owned).or(from_form);
        match sent {
            Some(sent) if super::auth::tokens_equal(&sent, &expected) => Ok(id),
            _ => Err(Refused::Csrf),
        }
    }
}

/// Why a request was refused before its handler ran.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refused {
    /// No live session: 401.
    NoSession,
    /// A POST without the session's CSRF token: 403.
    Csrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::NoSession => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
            Self::Csrf => (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response(),
        }
    }
}

/// Field `name` of an `application/x-www-form-urlencoded` body.
pub(super) fn form_field(body: &[u8], name: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Fields {
        csrf: Option<String>,
        password: Option<String>,
    }
    let fields: Fields = serde_urlencoded::from_bytes(body).ok()?;
    match name {
        "csrf" => fields.csrf,
        "password" => fields.password,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x__Host-warden-session=bad; __Host-warden-session=good"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("good"));
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"csrf=ab%2Bc&password=p+w", "password").as_deref(),
            Some("p w")
        );
        assert_eq!(form_field(b"csrf=abc", "password"), None);
    }
}
