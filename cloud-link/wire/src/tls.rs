//! TLS for the link: TLS 1.3 only, the fleet CA pinned, the device certificate for client auth.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};

/// The crypto provider of the whole tree (ring).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(
            path.display().to_string(),
            "no certificate in file".into(),
        ));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))
}

/// The device's client identity: its certificate chain and a signing key.
///
/// Today the key may come from a file (demo); the pluton signer plugs in here as
/// another `Arc<dyn SigningKey>`, so the key never enters the link's process.
#[derive(Debug, Clone)]
pub struct ClientIdentity(Arc<CertifiedKey>);

impl ClientIdentity {
    /// An identity from a certificate and key in PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = load_certificates(cert)?;
        let key = load_private_key(key)?;
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Pem(cert.display().to_string(), e.to_string()))?;
        Ok(Self(Arc::new(CertifiedKey::new(chain, signing_key))))
    }

    /// An identity whose signatures are made by `signing_key` (for example pluton's).
    pub fn from_signer(
        chain: Vec<CertificateDer<'static>>,
        signing_key: Arc<dyn rustls::sign::SigningKey>,
    ) -> Self {
        Self(Arc::new(CertifiedKey::new(chain, signing_key)))
    }
}

#[derive(Debug)]
struct FixedIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config that trusts only `fleet_ca` and presents `identity`. TLS 1.3 only.
pub fn client_config(fleet_ca: &Path, identity: ClientIdentity) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(fleet_ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Pem(fleet_ca.display().to_string(), e.to_string()))?;
    }
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(FixedIdentity(identity.0)));
    Ok(config)
}

/// A client config that trusts only the CAs in `ca` (PEM) and presents no certificate:
/// HTTPS to the fleet's API and image downloads. TLS 1.3 or 1.2.
pub fn server_auth_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Pem(ca.display().to_string(), e.to_string()))?;
    }
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{0}: {1}")]
    Pem(String, String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(String),
}
