//! The status page's HTTPS: its own P-256 web key, a self-signed certificate, a listener.
//!
//! Pluton's identity key cannot serve TLS (it signs only TLS 1.3 *client*
//! CertificateVerify contents, by design), so the page has a separate key made on
//! first start in its state directory (mode 0600) and a self-signed certificate whose
//! subject names the device. Operators pin its SHA-256 fingerprint, which is printed
//! at start (and belongs on the label). The better, later option: provisioning issues
//! the web certificate from the manufacturer CA, so browsers can verify it by chain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use warden_listeners::{AcceptBackoff, AdmissionGate, GuardedStream, Limits};

use crate::listening::{HANDSHAKE_TIMEOUT, PAGE_DEADLINES};

/// The web key's file in the state directory.
pub const KEY_FILE: &str = "web-key.pem";
/// The web certificate's file in the state directory.
pub const CERT_FILE: &str = "web-cert.pem";

/// The page's TLS key and certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebTlsError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("status page TLS: {0}")]
    Crypto(String),
}

/// The page's certificate and key.
#[derive(Debug)]
pub struct WebIdentity {
    /// The certificate (DER).
    pub certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the certificate's DER, as `AA:BB:…` (what operators pin).
    pub fingerprint: String,
}

impl WebIdentity {
    /// Loads the key and certificate from `dir`, making both on first start.
    pub fn load_or_create(dir: &Path, device_id: &str) -> Result<Self, WebTlsError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let file_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| WebTlsError::File { path, source }
        };
        if !key_path.exists() || !cert_path.exists() {
            std::fs::create_dir_all(dir).map_err(file_error(dir))?;
            let (cert_pem, key_pem) = self_signed(device_id)?;
            warden_files::write_file_atomically(&key_path, key_pem.as_bytes())
                .map_err(|error| file_error(&key_path)(std::io::Error::other(error)))?;
            std::fs::write(&cert_path, cert_pem).map_err(file_error(&cert_path))?;
            tracing::info!(path = %cert_path.display(), "made the status page's web certificate");
        }
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|error| WebTlsError::Crypto(format!("{}: {error}", key_path.display())))?;
        let certificate = CertificateDer::from_pem_file(&cert_path)
            .map_err(|error| WebTlsError::Crypto(format!("{}: {error}", cert_path.display())))?;
        let fingerprint = fingerprint(&certificate);
        Ok(Self {
            certificate,
            key,
            fingerprint,
        })
    }

    /// A TLS acceptor for this identity (TLS 1.2 and 1.3, ring, HTTP/1.1).
    pub fn acceptor(&self) -> Result<TlsAcceptor, WebTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| WebTlsError::Crypto(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(|error| WebTlsError::Crypto(error.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// SHA-256 of a certificate's DER as colon-separated uppercase hex.
pub fn fingerprint(certificate: &[u8]) -> String {
    let hex = warden_link::topics::to_hex(&Sha256::digest(certificate)).to_uppercase();
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair))
        .collect::<Vec<_>>()
        .join(":")
}

/// A new P-256 key and a self-signed certificate naming `device_id`, both PEM.
fn self_signed(device_id: &str) -> Result<(String, String), WebTlsError> {
    let crypto = |error: rcgen::Error| WebTlsError::Crypto(error.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), device_id.to_owned()])
            .map_err(crypto)?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_id);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "Warden status page");
    let certificate = params.self_signed(&key).map_err(crypto)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// A listener that hands axum finished TLS connections; handshakes run in their own
/// tasks so a slow client cannot stall the others. Every connection, from accept to
/// close, holds a slot of the page's gate (a cap in total and per address, where
/// unanswered and idle connections yield to newcomers) and runs under the page's
/// deadlines (handshake, request, idle: [`crate::listening`]).
#[derive(Debug)]
pub struct TlsListener {
    incoming: mpsc::Receiver<(PageStream, SocketAddr)>,
    local: SocketAddr,
}

/// One operator connection: TLS over TCP, guarded.
pub type PageStream = GuardedStream<TlsStream<TcpStream>>;

impl TlsListener {
    /// Accepts on `listener` until `shutdown`, holding at most `limits` connections.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, incoming) = mpsc::channel(limits.total.max(1));
        let gate = AdmissionGate::new(limits);
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::new("status page");
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        let wait = backoff.failed(&error);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                backoff.succeeded();
                let admission = match gate.admit(peer.ip()) {
                    Ok(admission) => admission,
                    Err(refused) => {
                        tracing::debug!(%peer, %refused, "status page connection refused");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let handshake = tokio::select! {
                        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                        () = admission.evicted() => {
                            tracing::debug!(%peer, "TLS handshake gave its slot to a newcomer");
                            return;
                        }
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            let guarded = GuardedStream::new(tls, admission, PAGE_DEADLINES);
                            let _ = sender.send((guarded, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { incoming, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = PageStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept loop stopped (shutdown): serve's graceful shutdown ends us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, for the login limiter.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for ClientAddress
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}
