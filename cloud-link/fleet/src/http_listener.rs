//! The fleet's HTTP listener: connection caps, per-address fairness, timeouts, backoff.
//!
//! `axum::serve` has no connection cap, no header or idle timeout and retries a failing
//! `accept` at once; ~1,100 idle connections exhausted the fleet's descriptors (issue
//! #22). This accept loop drives hyper's HTTP/1 directly:
//! - at most [`HttpConfig::max_connections`] connections at once (further ones are
//!   accepted and closed at once, so the kernel's queue does not fill with dead ones),
//!   and at most [`HttpConfig::max_connections_per_address`] from one address;
//! - a request's headers must arrive within [`HttpConfig::header_timeout_secs`]
//!   (slowloris), and a connection with no request in progress and no byte moved for
//!   [`HttpConfig::idle_timeout_secs`] is closed (idle, silent and slow-reading
//!   clients alike);
//! - a failing `accept` (EMFILE…) pauses with a growing backoff and is logged once per
//!   episode, as are refusals;
//! - the connection cap is held within a descriptor budget
//!   ([`crate::descriptors::connection_cap`]) so the broker and the store keep theirs.
//!
//! With `[http.tls]` the same loop serves HTTPS (rustls, the broker's TLS stack); the
//! handshake must complete within the header timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// The `[http]` section: limits of the HTTP listener, and its TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections open at once (default 1024); held within the descriptor budget.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections open at once from one address (default 64).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// Seconds a client has to send a request's headers, and to finish the TLS
    /// handshake (default 10).
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress and no byte
    /// moved (default 30).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Image downloads served at once (default 16); beyond, `503` with `Retry-After`.
    #[serde(default = "default_max_downloads")]
    pub max_downloads: u32,
    /// `[http.tls]`: serve HTTPS with this certificate and key. Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<HttpTlsConfig>,
}

/// `[http.tls]`: the certificate the fleet's HTTPS presents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM: the server certificate (chain).
    pub cert: PathBuf,
    /// PEM: its private key.
    pub key: PathBuf,
}

fn default_max_connections() -> u32 {
    1024
}
fn default_max_connections_per_address() -> u32 {
    64
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_idle_timeout_secs() -> u64 {
    30
}
fn default_max_downloads() -> u32 {
    16
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            header_timeout_secs: default_header_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_downloads: default_max_downloads(),
            tls: None,
        }
    }
}

/// A `[http]` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.{field} must be at least 1")]
pub struct HttpLimitError {
    /// The key, without `http.`.
    pub field: &'static str,
}

impl HttpConfig {
    /// Refuses limits of zero (a listener that serves nothing).
    pub fn check(&self) -> Result<(), HttpLimitError> {
        for (field, value) in [
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_connections_per_address",
                u64::from(self.max_connections_per_address),
            ),
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_downloads", u64::from(self.max_downloads)),
        ] {
            if value == 0 {
                return Err(HttpLimitError { field });
            }
        }
        Ok(())
    }
}

/// The listener's limits, in force.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub max_connections: u32,
    /// Connections at once from one address.
    pub per_address: u32,
    /// Time for a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// Time a connection may stay idle.
    pub idle_timeout: Duration,
}

impl Limits {
    /// From the config, the cap held within `open_files` descriptors.
    pub fn new(config: &HttpConfig, open_files: Option<u64>) -> Self {
        Self {
            max_connections: crate::descriptors::connection_cap(
                open_files,
                config.max_connections,
                crate::descriptors::HTTP_PERCENT,
            ),
            per_address: config.max_connections_per_address.max(1),
            header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
        }
    }
}

/// Serves `app` on `listener` (HTTPS when `tls` is given) within `limits` until
/// `shutdown`, then lets open connections finish (at most the idle timeout).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let registry = Registry::default();
    let mut backoff = warden_listeners::AcceptBackoff::new("fleet http");
    let mut refused_full = Episode::new("http connection refused: the connection cap is reached");
    let mut refused_address =
        Episode::new("http connection refused: its address holds its share of connections");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                let pause = backoff.failed(&error);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let activity = Arc::new(Activity::new());
        let close = shutdown.child_token();
        let Some(held) = registry.admit(
            peer.ip(),
            limits.per_address,
            close.clone(),
            Arc::clone(&activity),
        ) else {
            // Closing at once frees the descriptor and tells the client.
            refused_address.note(peer.ip(), limits.per_address);
            continue;
        };
        let open = Open {
            peer,
            app: app.clone(),
            limits,
            tls: tls.clone(),
            close,
            activity,
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(open.serve(stream, (slot, held)));
            }
            Err(_) if registry.displace_for(peer.ip()) => {
                // The displaced connection frees its slot as it ends: wait for it off
                // the accept loop.
                let slots = Arc::clone(&slots);
                tokio::spawn(async move {
                    let slot =
                        tokio::time::timeout(Duration::from_secs(1), slots.acquire_owned()).await;
                    if let Ok(Ok(slot)) = slot {
                        open.serve(stream, (slot, held)).await;
                    }
                });
            }
            Err(_) => {
                refused_full.note(peer.ip(), limits.max_connections);
            }
        }
    }
    drop(listener);
    // Every slot back: every connection has closed (draining is bounded by the idle
    // timeout; a little more for the last response).
    let drained = tokio::time::timeout(
        limits.idle_timeout + Duration::from_secs(1),
        slots.acquire_many(limits.max_connections),
    )
    .await;
    if drained.is_err() {
        tracing::warn!("http connections still open at shutdown are dropped");
    }
}

/// An accepted connection, before it has its slot.
struct Open {
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Fired when the fleet stops or the connection is displaced.
    close: CancellationToken,
    activity: Arc<Activity>,
}

impl Open {
    /// The TLS handshake if any, then HTTP/1 until the connection ends, goes idle, is
    /// displaced or the fleet stops; `_held` is released after.
    async fn serve(self, stream: TcpStream, _held: (OwnedSemaphorePermit, AddressSlot)) {
        let Some(acceptor) = self.tls.clone() else {
            return self.serve_io(stream).await;
        };
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
        tokio::select! {
            () = self.close.cancelled() => {}
            done = handshake => match done {
                Ok(Ok(stream)) => self.serve_io(stream).await,
                Ok(Err(error)) => tracing::debug!(peer = %self.peer, %error, "tls handshake failed"),
                Err(_) => tracing::debug!(peer = %self.peer, "tls handshake timed out"),
            },
        }
    }

    async fn serve_io<T>(self, io: T)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            app,
            limits,
            close,
            activity,
            ..
        } = self;
        let io = TokioIo::new(Watched {
            inner: io,
            activity: Arc::clone(&activity),
        });
        let busy = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_progress = Busy::start(Arc::clone(&busy));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(in_progress);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = http.serve_connection(io, service);
        tokio::pin!(connection);
        let tick =
            (limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        let mut draining = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "http connection ended");
                    }
                    break;
                }
                () = close.cancelled(), if !draining => {
                    // The fleet stops, or the connection is displaced: a request in
                    // progress finishes first; without one, it closes now.
                    if !activity.is_busy() {
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = ticker.tick() => {
                    if activity.idle_for() >= limits.idle_timeout {
                        tracing::debug!(%peer, "closing an idle http connection");
                        break;
                    }
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are in progress.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    busy: AtomicU32,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicU32::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Zero while a request is in progress (a handler may wait on a device).
    fn idle_for(&self) -> Duration {
        if self.is_busy() {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// A request in progress on a connection (until its response is ready; the body's
/// bytes then count as activity).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes every byte moved in its [`Activity`].
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections by client address: the per-address cap, and the fairness at the
/// global cap (a newcomer displaces the idlest connection of the address that holds
/// the most).
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<RegistryInner>>);

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    by_address: HashMap<IpAddr, Vec<Tracked>>,
}

/// One open connection, as the registry sees it.
struct Tracked {
    id: u64,
    close: CancellationToken,
    activity: Arc<Activity>,
}

impl Registry {
    /// A slot for one more connection from `address`, unless it holds `limit`.
    /// `close` ends the connection when it is displaced.
    fn admit(
        &self,
        address: IpAddr,
        limit: u32,
        close: CancellationToken,
        activity: Arc<Activity>,
    ) -> Option<AddressSlot> {
        let address = address.to_canonical();
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let id = inner.next_id;
        let open = inner.by_address.entry(address).or_default();
        if open.len() >= limit as usize {
            return None;
        }
        open.push(Tracked {
            id,
            close,
            activity,
        });
        inner.next_id += 1;
        Some(AddressSlot {
            registry: self.clone(),
            address,
            id,
        })
    }

    /// At the global cap: closes the idlest connection (no request in progress) of the
    /// address holding the most, if it holds at least two more than `address`. True
    /// when one was closed (its slot frees as it ends).
    fn displace_for(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = inner.by_address.get(&address).map_or(0, Vec::len);
        let Some((_, open)) = inner
            .by_address
            .iter()
            .filter(|(holder, _)| **holder != address)
            .max_by_key(|(_, open)| open.len())
        else {
            return false;
        };
        if open.len() < mine + 2 {
            return false;
        }
        let idlest = open
            .iter()
            .filter(|tracked| !tracked.close.is_cancelled() && !tracked.activity.is_busy())
            .max_by_key(|tracked| tracked.activity.idle_for());
        match idlest {
            Some(tracked) => {
                tracked.close.cancel();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn count(&self, address: IpAddr) -> usize {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .by_address
            .get(&address.to_canonical())
            .map_or(0, Vec::len)
    }
}

/// One connection counted against its address, until dropped.
struct AddressSlot {
    registry: Registry,
    address: IpAddr,
    id: u64,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut inner = self
            .registry
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = inner.by_address.get_mut(&self.address) {
            open.retain(|tracked| tracked.id != self.id);
            if open.is_empty() {
                inner.by_address.remove(&self.address);
            }
        }
    }
}

/// A run of like events logged once: when it starts (with the size of the run before),
/// not for each event. A run ends after [`Episode::QUIET`] without an event.
struct Episode {
    what: &'static str,
    last: Option<Instant>,
    count: u64,
}

impl Episode {
    const QUIET: Duration = Duration::from_secs(10);

    fn new(what: &'static str) -> Self {
        Self {
            what,
            last: None,
            count: 0,
        }
    }

    /// Counts one event; true when it starts a new episode (and was logged).
    fn note(&mut self, address: IpAddr, limit: u32) -> bool {
        let starts = self.last.is_none_or(|last| last.elapsed() >= Self::QUIET);
        if starts {
            tracing::warn!(
                %address,
                limit,
                previous_episode = self.count,
                "{}; further refusals are not logged until {} s pass without one",
                self.what,
                Self::QUIET.as_secs()
            );
            self.count = 0;
        }
        self.count += 1;
        self.last = Some(Instant::now());
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(registry: &Registry, address: IpAddr) -> Option<(AddressSlot, CancellationToken)> {
        let close = CancellationToken::new();
        registry
            .admit(address, 2, close.clone(), Arc::new(Activity::new()))
            .map(|slot| (slot, close))
    }

    #[test]
    fn an_address_holds_at_most_its_share() {
        let registry = Registry::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admit(&registry, a).expect("first");
        let _second = admit(&registry, a).expect("second");
        assert!(admit(&registry, a).is_none());
        assert!(
            admit(&registry, b).is_some(),
            "another address is not held up"
        );
        drop(first);
        let _again = admit(&registry, a).expect("a closed connection frees its slot");
        // An IPv4-mapped IPv6 address is the same client.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        assert!(admit(&registry, mapped).is_none());
        assert_eq!(registry.count(a), 2);
    }

    #[test]
    fn at_the_cap_a_newcomer_displaces_the_biggest_holders_idlest_connection() {
        let registry = Registry::default();
        let hog: IpAddr = [10, 0, 0, 1].into();
        let newcomer: IpAddr = [10, 0, 0, 9].into();
        let (_a, close_a) = admit(&registry, hog).expect("a");
        let (_b, close_b) = admit(&registry, hog).expect("b");
        assert!(registry.displace_for(newcomer));
        assert!(
            close_a.is_cancelled() != close_b.is_cancelled(),
            "exactly one closed"
        );
        // The holder itself, or an address holding about as many, displaces nothing.
        let (_c, _) = admit(&registry, newcomer).expect("c");
        assert!(!registry.displace_for(hog));
        // An address holding as many as the biggest holder displaces nothing either.
        let (_d, _) = admit(&registry, newcomer).expect("d");
        assert!(!registry.displace_for(newcomer));
    }

    #[test]
    fn refusals_log_once_per_episode() {
        let mut episode = Episode::new("refused");
        let address: IpAddr = [10, 0, 0, 1].into();
        assert!(episode.note(address, 1));
        assert!((0..1000).all(|_| !episode.note(address, 1)));
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let config = HttpConfig {
            max_downloads: 0,
            ..HttpConfig::default()
        };
        assert_eq!(
            config.check().expect_err("zero").to_string(),
            "http.max_downloads must be at least 1"
        );
    }
}
