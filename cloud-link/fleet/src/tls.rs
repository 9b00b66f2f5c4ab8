//! The fleet's TLS: the broker's (TLS 1.3, client certificates required and checked by
//! [`DeviceTrust`]) and the HTTP API's (server certificate only).

use std::path::Path;
use std::sync::Arc;

use warden_wire::tls::{TlsError, crypto_provider, load_certificates, load_private_key};

use crate::enrollment::DeviceTrust;

/// A server config presenting `cert`/`key` and accepting only clients whose
/// certificate `trust` accepts (a trusted manufacturer CA, not revoked).
pub fn broker_tls_config(
    cert: &Path,
    key: &Path,
    trust: Arc<DeviceTrust>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(trust)
        .with_single_cert(load_certificates(cert)?, load_private_key(key)?)
        .map_err(|e| TlsError::Pem(cert.display().to_string(), e.to_string()))?;
    Ok(Arc::new(config))
}

/// The HTTP API's server config (`[http.tls]`): TLS 1.3 and 1.2, no client
/// certificate (callers present bearer tokens), HTTP/1.1 by ALPN.
pub fn http_tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certificates(cert)?, load_private_key(key)?)
        .map_err(|e| TlsError::Pem(cert.display().to_string(), e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
