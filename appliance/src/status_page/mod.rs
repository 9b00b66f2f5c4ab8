//! The operator's local status page: HTTPS, password login, sessions and CSRF.
//!
//! One page (`/`) with sections that `static/app.js` refreshes from `/api/status`
//! without reloading: overview (with attestation and the A/B image slots), bridges
//! with trend charts, policy denials, failure reports (with a detail view) and updates (defer / allow,
//! each a POST carrying the session's CSRF token, and an image uploaded from a file:
//! `POST /api/updates/upload`, streamed to the updater's local install socket).
//! Every response carries the security headers; no script runs inline, so the CSP
//! allows scripts from the page's own origin only.

pub mod auth;
mod handlers;
mod routes;
mod session;
pub mod status;
pub mod tls;
pub mod unit_facts;

// The page's cookie and header names are part of its public face (tests and
// integrators use them); they live with the sessions.
pub use session::{CSRF_HEADER, LOGIN_COOKIE, SESSION_COOKIE};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::StatusPageConfig;
use crate::listening::{GuardedTcpListener, ListenerPlan, METRICS_DEADLINES};
use crate::state::ApplianceState;
use crate::updates::local::LocalInstallTarget;
use auth::{LoginLimiter, PasswordVerifier, Sessions};
use session::{Auth, PageState};
use tls::{ClientAddress, TlsListener, WebIdentity};

/// The page's password, TLS identity and settings, checked before anything starts.
pub struct PreparedPage {
    listen: String,
    metrics_listen: Option<String>,
    identity: WebIdentity,
    password: PasswordVerifier,
    session_idle: Duration,
    local_installs: Option<LocalInstallTarget>,
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
        local_installs: None,
    })
}

impl PreparedPage {
    /// Takes uploaded images to `target` (a unit with `[updates]`); without, the upload
    /// form answers that the unit takes no updates.
    pub fn with_local_installs(mut self, target: Option<LocalInstallTarget>) -> Self {
        self.local_installs = target;
        self
    }

    /// Binds the page (and the metrics port) and serves them until `shutdown`, each within
    /// its caps of `plan`.
    pub async fn start(
        self,
        state: ApplianceState,
        plan: &ListenerPlan,
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
                let metrics =
                    GuardedTcpListener::new(metrics, plan.metrics, METRICS_DEADLINES, "metrics");
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
        let tls = TlsListener::new(listener, acceptor, plan.page, shutdown.clone());
        let page = PageState {
            appliance: state,
            auth: Arc::new(Auth {
                password: self.password,
                sessions: Mutex::new(Sessions::new(self.session_idle)),
                limiter: Mutex::new(LoginLimiter::default()),
                verifying: tokio::sync::Semaphore::new(1),
            }),
            local_installs: self.local_installs.map(Arc::new),
        };
        let router = routes::router(page).into_make_service_with_connect_info::<ClientAddress>();
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
