//! The broker's TLS: TLS 1.3, client certificates required and checked by [`DeviceTrust`].

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
