//! The operator's local status page: HTTPS, password login, sessions and CSRF.
//!
//! One page (`/`) with sections that `static/app.js` refreshes from `/api/status`
//! without reloading: overview (with attestation and the A/B image slots), bridges
//! with trend charts, policy denials, failure reports (with a detail view) and updates (defer / allow, each a POST carrying the session's CSRF token).
//! Every response carries the security headers; no script runs inline, so the CSP
//! allows scripts from the page's own origin only.

pub mod auth;
pub mod tls;
pub mod unit_facts;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::BridgeHealth;
use warden_link::LinkStatus;

use crate::config::StatusPageConfig;
use crate::runtime::{ApplianceState, LiveValue, UpdateDecision};
use auth::{LoginGate, LoginLimiter, PasswordVerifier, Sessions};
use tls::{ClientAddress, TlsListener, WebIdentity};

const STATUS_HTML: &str = include_str!("../../assets/status.html");
const LOGIN_HTML: &str = include_str!("../../assets/login.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

/// The session cookie (`__Host-`: Secure, path `/`, no domain, so no other site or
/// subdomain can set it).
pub const SESSION_COOKIE: &str = "__Host-warden-session";
/// The login form's CSRF cookie (double submit: the form carries the same value).
pub const LOGIN_COOKIE: &str = "__Host-warden-login";
/// The header carrying the session's CSRF token on every POST.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Passwords longer than this are refused before hashing.
const MAX_PASSWORD_BYTES: usize = 256;

/// The page's password, TLS identity and settings, checked before anything starts.
pub struct PreparedPage {
    listen: String,
    metrics_listen: Option<String>,
    identity: WebIdentity,
    password: PasswordVerifier,
    session_idle: Duration,
}

/// Where the started page listens.
#[derive(Debug, Clone)]
pub struct StartedPage {
    /// The HTTPS address.
    pub address: SocketAddr,
    /// SHA-256 fingerprint of the page's certificate.
    pub fingerprint: String,
    /// The metrics address, if configured.
    pub metrics_address: Option<SocketAddr>,
}

/// Loads the password hash (refusing to go on without one) and the TLS identity
/// (making it on first start).
pub fn prepare(config: &StatusPageConfig, device_id: &str) -> anyhow::Result<PreparedPage> {
    let password = PasswordVerifier::load(&config.password_file).context(
        "the status page needs the unit's password hash (set at provisioning; there is no default password)",
    )?;
    let identity = WebIdentity::load_or_create(&config.state_dir, device_id)?;
    Ok(PreparedPage {
        listen: config.listen.clone(),
        metrics_listen: config.metrics_listen.clone(),
        identity,
        password,
        session_idle: Duration::from_secs(config.session_idle_secs),
    })
}

impl PreparedPage {
    /// Binds the page (and the metrics port) and serves them until `shutdown`.
    pub async fn start(
        self,
        state: ApplianceState,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<StartedPage> {
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("cannot listen for the status page on {}", self.listen))?;
        let address = listener.local_addr()?;
        let metrics_address = match &self.metrics_listen {
            Some(listen) => {
                let metrics = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for /metrics on {listen}"))?;
                let metrics_address = metrics.local_addr()?;
                let router = crate::metrics::router(state.clone());
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let served = axum::serve(metrics, router)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                    if let Err(error) = served {
                        tracing::error!(%error, "metrics endpoint failed");
                    }
                });
                Some(metrics_address)
            }
            None => None,
        };
        let acceptor = self.identity.acceptor()?;
        let tls = TlsListener::new(listener, acceptor, shutdown.clone());
        let page = PageState {
            appliance: state,
            auth: Arc::new(Auth {
                password: self.password,
                sessions: Mutex::new(Sessions::new(self.session_idle)),
                limiter: Mutex::new(LoginLimiter::default()),
                verifying: tokio::sync::Semaphore::new(1),
            }),
        };
        let router = router(page).into_make_service_with_connect_info::<ClientAddress>();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(tls, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "status page failed");
            }
        });
        Ok(StartedPage {
            address,
            fingerprint: self.identity.fingerprint,
            metrics_address,
        })
    }
}

struct Auth {
    password: PasswordVerifier,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
    /// One Argon2 verification at a time (each takes ~19 MiB and tens of ms).
    verifying: tokio::sync::Semaphore,
}

#[derive(Clone)]
struct PageState {
    appliance: ApplianceState,
    auth: Arc<Auth>,
}

fn router(state: PageState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.js", get(app_js))
        .route("/static/style.css", get(style_css))
        .route("/api/session", get(session_info))
        .route("/api/status", get(status))
        .route("/api/updates", get(updates))
        .route("/api/updates/defer", post(defer_updates))
        .route("/api/updates/allow", post(allow_updates))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!(
            "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
        ),
    )
}

impl PageState {
    /// The session's CSRF token, if the request carries a live session cookie.
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
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
    fn require_session(&self, headers: &HeaderMap) -> Result<(String, String), Refused> {
        self.session(headers).ok_or(Refused::NoSession)
    }

    /// A session whose CSRF token the POST carries (header, or a `csrf` form field).
    fn require_csrf(&self, headers: &HeaderMap, body: &[u8]) -> Result<String, Refused> {
        let (id, expected) = self.require_session(headers)?;
        let from_header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let from_form = form_field(body, "csrf");
        let sent = from_header.map(str::to_owned).or(from_form);
        match sent {
            Some(sent) if auth::tokens_equal(&sent, &expected) => Ok(id),
            _ => Err(Refused::Csrf),
        }
    }
}

/// Why a request was refused before its handler ran.
#[derive(Debug, Clone, Copy)]
enum Refused {
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
fn form_field(body: &[u8], name: &str) -> Option<String> {
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

async fn page(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if state.session(&headers).is_none() {
        return Redirect::to("/login").into_response();
    }
    Html(STATUS_HTML).into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
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

async fn login_page() -> Response {
    login_form(StatusCode::OK, "")
}

async fn login(
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
        limiter.failed(client.ip(), now);
        let gate = limiter.check(client.ip(), now);
        drop(limiter);
        tracing::warn!(%client, "status page: wrong password");
        return match gate {
            LoginGate::Locked(wait) => locked_out(wait),
            LoginGate::Open => login_form(StatusCode::UNAUTHORIZED, "Wrong password."),
        };
    }
    limiter.succeeded(client.ip());
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

async fn logout(State(state): State<PageState>, headers: HeaderMap, body: Bytes) -> Response {
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

async fn session_info(State(state): State<PageState>, headers: HeaderMap) -> Response {
    match state.require_session(&headers) {
        Ok((_, csrf_token)) => Json(SessionInfo { csrf_token }).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// The status as JSON.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This unit.
    pub device_id: String,
    /// The running software's version.
    pub software_version: &'static str,
    /// Attestation, in words: the fleet's last challenge and this unit's answer (the
    /// fleet's verdict comes first; the numbers are in `link.attestation`).
    pub attestation: String,
    /// The A/B image slots (`null`: the config has no `[updates]`).
    pub image_slots: Option<unit_facts::ImageSlots>,
    /// The cloud link in words, true now: `connected`, `connecting`, `link down:
    /// <cause>` or `unavailable: <cause>` (see [`link_in_words`]).
    pub link_summary: String,
    /// Seconds since the fleet last acknowledged a telemetry batch (`null`: never
    /// since start).
    pub last_ack_age_secs: Option<u64>,
    /// The cloud link.
    pub link: LinkStatus,
    /// Restarts and last failure of each restartable task of the process serving
    /// this status.
    pub tasks: std::collections::BTreeMap<String, crate::supervision::TaskHealth>,
    /// Bridges in config order.
    pub bridges: Vec<BridgeStatus>,
    /// Failure reports, newest first (`null`: the config has no `[reports]`).
    pub failure_reports: Option<unit_facts::FailureReports>,
    /// The operator's update decision.
    pub updates: UpdateDecision,
}

/// One bridge.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    /// Name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Counters.
    pub health: BridgeHealth,
    /// Points with their last values (`null` before the first read).
    pub points: Vec<PointStatus>,
}

/// One point.
#[derive(Debug, Serialize)]
pub struct PointStatus {
    /// Name.
    pub name: String,
    /// Last value, if any.
    pub last: Option<LiveValue>,
    /// Recent numeric values, oldest first (for the trend chart).
    pub recent: Vec<f64>,
}

/// The status of `state` now.
pub fn snapshot(state: &ApplianceState) -> Status {
    let values = state
        .values
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let history = state
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let bridges = state
        .bridges
        .iter()
        .map(|bridge| BridgeStatus {
            name: bridge.name.clone(),
            address: bridge.address.clone(),
            health: bridge
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            points: bridge
                .points
                .iter()
                .map(|point| {
                    let key = (bridge.name.clone(), point.clone());
                    PointStatus {
                        name: point.clone(),
                        last: values.get(&key).cloned(),
                        recent: history
                            .get(&key)
                            .map(|recent| recent.iter().copied().collect())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    let link = state
        .link
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let unit = state
        .unit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let now = now_ms();
    Status {
        device_id: state.device_id.clone(),
        software_version: env!("CARGO_PKG_VERSION"),
        attestation: attestation_in_words(&link.attestation, now),
        image_slots: unit.image_slots,
        link_summary: link_in_words(&link),
        last_ack_age_secs: age_secs(link.last_ack_ms, now),
        link,
        tasks: state
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        bridges,
        failure_reports: unit.failure_reports,
        updates: state
            .updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    }
}

/// The name of a link state as the status and `/metrics` show it (its serialised
/// name: one spelling everywhere).
pub fn link_state_name(state: warden_link::LinkState) -> &'static str {
    use warden_link::LinkState;
    match state {
        LinkState::Connecting => "connecting",
        LinkState::Connected => "connected",
        LinkState::Disconnected => "disconnected",
        LinkState::Unavailable => "unavailable",
    }
}

/// The link as the operator must read it: never "connected" unless it is, and the
/// cause whenever it is not.
pub fn link_in_words(link: &LinkStatus) -> String {
    use warden_link::LinkState;
    let cause = link
        .last_error
        .as_deref()
        .unwrap_or("no cause reported yet");
    match link.state {
        LinkState::Connected => "connected".to_owned(),
        LinkState::Connecting => match &link.last_error {
            None => "connecting".to_owned(),
            Some(error) => format!("connecting (last error: {error})"),
        },
        LinkState::Disconnected => format!("link down: {cause}"),
        LinkState::Unavailable => format!("unavailable: {cause}"),
    }
}

/// Whole seconds from `since_ms` to `now_ms`; `None` when it never happened.
pub fn age_secs(since_ms: Option<u64>, now_ms: u64) -> Option<u64> {
    since_ms.map(|since| now_ms.saturating_sub(since) / 1000)
}

/// The unit's attestation in words: the fleet's last verdict (the fleet enforces it;
/// the unit only shows it), then when it last answered a challenge and whether with a
/// quote.
pub fn attestation_in_words(answers: &warden_link::AttestationAnswers, now_ms: u64) -> String {
    let Some(at) = answers.last_answered_ms else {
        return "no challenge from the fleet yet".to_owned();
    };
    let verdict = match &answers.verdict {
        None => "no verdict from the fleet yet".to_owned(),
        Some(verdict) => {
            let ago = now_ms.saturating_sub(verdict.received_ms) / 1000;
            match (verdict.trusted, &verdict.release) {
                (true, Some(release)) => {
                    format!("trusted by the fleet (release {release}) {ago} s ago")
                }
                (true, None) => format!("trusted by the fleet {ago} s ago"),
                (false, _) => format!("NOT trusted by the fleet {ago} s ago: {}", verdict.detail),
            }
        }
    };
    let ago = now_ms.saturating_sub(at) / 1000;
    let outcome = match &answers.last_error {
        None => "answered with a quote".to_owned(),
        Some(error) => format!("not answered with a quote: {error}"),
    };
    format!(
        "{verdict}; last challenge {ago} s ago, {outcome} ({} answered since start)",
        answers.answered
    )
}

async fn status(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if let Err(refused) = state.require_session(&headers) {
        return refused.into_response();
    }
    Json(snapshot(&state.appliance)).into_response()
}

fn current_updates(state: &PageState) -> UpdateDecision {
    state
        .appliance
        .updates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

async fn updates(State(state): State<PageState>, headers: HeaderMap) -> Response {
    if let Err(refused) = state.require_session(&headers) {
        return refused.into_response();
    }
    Json(current_updates(&state)).into_response()
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn defer_updates(
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
        .defer(now_ms());
    tracing::info!("status page: operator deferred updates");
    Json(current_updates(&state)).into_response()
}

async fn allow_updates(
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
        .allow(now_ms());
    tracing::info!("status page: operator allowed updates");
    Json(current_updates(&state)).into_response()
}

#[cfg(test)]
mod tests {
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
    fn attestation_reads_as_what_the_unit_knows() {
        let mut answers = warden_link::AttestationAnswers::default();
        assert_eq!(
            attestation_in_words(&answers, 5_000),
            "no challenge from the fleet yet"
        );
        answers.answered = 2;
        answers.last_answered_ms = Some(1_000);
        assert_eq!(
            attestation_in_words(&answers, 43_000),
            "no verdict from the fleet yet; last challenge 42 s ago, answered with a quote (2 answered since start)"
        );
        answers.verdict = Some(warden_link::FleetVerdict {
            trusted: true,
            release: Some("1.4.0".into()),
            detail: "runs release press-guardian 1.4.0".into(),
            received_ms: 2_000,
        });
        assert!(
            attestation_in_words(&answers, 43_000)
                .starts_with("trusted by the fleet (release 1.4.0) 41 s ago; last challenge")
        );
        answers.verdict = Some(warden_link::FleetVerdict {
            trusted: false,
            release: None,
            detail: "measured image 00ff is not a known release".into(),
            received_ms: 43_000,
        });
        answers.last_error = Some("pluton: no such socket".into());
        let words = attestation_in_words(&answers, 43_000);
        assert!(
            words.starts_with(
                "NOT trusted by the fleet 0 s ago: measured image 00ff is not a known release;"
            ),
            "{words}"
        );
        assert!(words.contains("not answered with a quote: pluton: no such socket"));
    }

    #[test]
    fn the_link_is_connected_in_words_only_when_it_is() {
        use warden_link::LinkState;
        let mut link = LinkStatus {
            state: LinkState::Disconnected,
            last_error: Some("connection refused (127.0.0.1:1)".into()),
            ..Default::default()
        };
        assert_eq!(
            link_in_words(&link),
            "link down: connection refused (127.0.0.1:1)"
        );
        link.state = LinkState::Unavailable;
        link.last_error = Some("fleet CA pki/fleet-ca.pem: not found".into());
        assert_eq!(
            link_in_words(&link),
            "unavailable: fleet CA pki/fleet-ca.pem: not found"
        );
        link.last_error = None;
        assert_eq!(link_in_words(&link), "unavailable: no cause reported yet");
        link.state = LinkState::Connected;
        assert_eq!(link_in_words(&link), "connected");
        assert_eq!(age_secs(None, 5_000), None);
        assert_eq!(age_secs(Some(1_000), 5_999), Some(4));
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
