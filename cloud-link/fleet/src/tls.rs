//! The broker's TLS: TLS 1.3, client certificates from the manufacturer CA required.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use warden_link::tls::{TlsError, crypto_provider, load_certificates, load_private_key};

/// A server config presenting `cert`/`key` and accepting only clients whose
/// certificate chains to `manufacturer_ca`.
pub fn broker_tls_config(
    cert: &Path,
    key: &Path,
    manufacturer_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    for ca in load_certificates(manufacturer_ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Pem(manufacturer_ca.display().to_string(), e.to_string()))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certificates(cert)?, load_private_key(key)?)
        .map_err(|e| TlsError::Pem(cert.display().to_string(), e.to_string()))?;
    Ok(Arc::new(config))
}
