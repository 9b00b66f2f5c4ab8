//! Enrollment: which device certificates the fleet trusts, at registration and at connect.
//!
//! A device certificate is trusted when it chains to a manufacturer CA the fleet trusts
//! (the configured one plus every product's), is within its validity period, and is
//! not revoked; a registered device must present the certificate it was registered
//! with. The broker's TLS handshake asks [`DeviceTrust`] (a rustls client verifier),
//! so a refused certificate never reaches MQTT.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError as TlsCertificateError, DigitallySignedStruct, DistinguishedName,
    RootCertStore,
};
use sha2::{Digest, Sha256};

use crate::broker::device_id_from_certificate;

/// SHA-256 of a certificate's DER, lowercase hex: the device's fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    warden_wire::topics::to_hex(&Sha256::digest(der))
}

/// Why a certificate or a CA bundle is not acceptable. The messages complete a
/// sentence about the certificate ("the certificate has expired"); callers say which
/// request field or product it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The text is not PEM.
    #[error("not PEM: {0}")]
    NotPem(#[source] rustls::pki_types::pem::Error),
    /// The text holds no certificate.
    #[error("holds no PEM certificate")]
    NoCertificate,
    /// A certificate of a CA bundle does not parse.
    #[error("certificate {index} is not valid X.509: {reason}")]
    NotX509 {
        /// Its position in the bundle, from 0.
        index: usize,
        /// The parser's reason.
        reason: String,
    },
    /// A certificate of a CA bundle is not a CA.
    #[error("certificate {index} ({subject}) is not a CA certificate")]
    NotCa {
        /// Its position in the bundle, from 0.
        index: usize,
        /// Its subject.
        subject: String,
    },
    /// rustls refuses a CA certificate as a trust anchor.
    #[error("unusable CA certificate: {0}")]
    UnusableCa(#[source] rustls::Error),
    /// rustls cannot build a verifier from the CA certificates.
    #[error("unusable CA certificates: {0}")]
    UnusableCas(#[source] rustls::server::VerifierBuilderError),
    /// The device certificate's validity has ended.
    #[error("has expired")]
    Expired,
    /// The device certificate's validity has not begun.
    #[error("is not valid yet")]
    NotValidYet,
    /// The device certificate does not chain to the manufacturer CA.
    #[error("is not signed by the product's manufacturer CA")]
    UnknownIssuer,
    /// The device certificate's signature does not verify.
    #[error("has a signature that does not verify against the manufacturer CA")]
    BadSignature,
    /// rustls refuses the device certificate for another reason.
    #[error("is not acceptable: {0}")]
    Refused(#[source] rustls::Error),
    /// The device certificate names another device.
    #[error("common name {common_name:?} does not match device_id {device_id:?}")]
    OtherDevice {
        /// The certificate's common name.
        common_name: String,
        /// The device ID it was presented for.
        device_id: String,
    },
    /// The device certificate's common name is no device ID.
    #[error("has no usable common name (1 to 64 letters, digits, '-' or '_')")]
    NoDeviceId,
}

/// Every certificate in a PEM text, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertificateError::NotPem)?;
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    Ok(certs)
}

/// Checks a manufacturer CA bundle: at least one certificate, each a CA.
pub fn check_ca_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = certificates_from_pem(pem)?;
    for (index, der) in certs.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertificateError::NotX509 {
            index,
            reason: e.to_string(),
        })?;
        if !cert.is_ca() {
            return Err(CertificateError::NotCa {
                index,
                subject: cert.subject().to_string(),
            });
        }
    }
    verifier(&certs, provider())?;
    Ok(certs)
}

/// Verifies a device certificate against `ca_bundle` for `device_id`: the signature
/// chain, the validity period, client-auth usage, and CN = `device_id`.
pub fn verify_device_certificate(
    certificate: &CertificateDer<'_>,
    ca_bundle: &[CertificateDer<'static>],
    device_id: &str,
) -> Result<(), CertificateError> {
    let verifier = verifier(ca_bundle, provider())?;
    verifier
        .verify_client_cert(certificate, &[], UnixTime::now())
        .map_err(|error| match error {
            rustls::Error::InvalidCertificate(TlsCertificateError::Expired) => {
                CertificateError::Expired
            }
            rustls::Error::InvalidCertificate(TlsCertificateError::NotValidYet) => {
                CertificateError::NotValidYet
            }
            rustls::Error::InvalidCertificate(TlsCertificateError::UnknownIssuer) => {
                CertificateError::UnknownIssuer
            }
            rustls::Error::InvalidCertificate(TlsCertificateError::BadSignature) => {
                CertificateError::BadSignature
            }
            other => CertificateError::Refused(other),
        })?;
    match device_id_from_certificate(certificate) {
        Some(common_name) if common_name == device_id => Ok(()),
        Some(common_name) => Err(CertificateError::OtherDevice {
            common_name,
            device_id: device_id.to_owned(),
        }),
        None => Err(CertificateError::NoDeviceId),
    }
}

fn provider() -> Arc<CryptoProvider> {
    warden_wire::tls::crypto_provider()
}

fn verifier(
    roots: &[CertificateDer<'static>],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, CertificateError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(CertificateError::UnusableCa)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(CertificateError::UnusableCas)
}

/// What the broker trusts; changed at run time by registration and revocation.
pub struct DeviceTrust {
    provider: Arc<CryptoProvider>,
    configured: Vec<CertificateDer<'static>>,
    state: RwLock<TrustState>,
}

struct TrustState {
    products: BTreeMap<String, Vec<CertificateDer<'static>>>,
    verifier: Arc<dyn ClientCertVerifier>,
    revoked: BTreeSet<String>,
    registered: BTreeMap<String, String>,
}

impl std::fmt::Debug for DeviceTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTrust").finish_non_exhaustive()
    }
}

impl DeviceTrust {
    /// Trusts `configured` (the config's manufacturer CA) until products are added.
    pub fn new(configured: Vec<CertificateDer<'static>>) -> Result<Self, CertificateError> {
        let provider = provider();
        let verifier = verifier(&configured, Arc::clone(&provider))?;
        Ok(Self {
            provider,
            configured,
            state: RwLock::new(TrustState {
                products: BTreeMap::new(),
                verifier,
                revoked: BTreeSet::new(),
                registered: BTreeMap::new(),
            }),
        })
    }

    /// Trusts `product`'s manufacturer CA from now on.
    pub fn set_product_ca(
        &self,
        product: &str,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<(), CertificateError> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.products.insert(product.to_owned(), bundle);
        let roots: Vec<_> = self
            .configured
            .iter()
            .chain(state.products.values().flatten())
            .cloned()
            .collect();
        state.verifier = verifier(&roots, Arc::clone(&self.provider))?;
        Ok(())
    }

    /// Records that `device_id` must present the certificate with `fingerprint`.
    pub fn set_registered(&self, device_id: &str, fingerprint: &str) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .registered
            .insert(device_id.to_owned(), fingerprint.to_owned());
    }

    /// Refuses the certificate with `fingerprint` from now on.
    pub fn revoke(&self, fingerprint: &str) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .revoked
            .insert(fingerprint.to_owned());
    }

    /// Whether the certificate with `fingerprint` is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revoked
            .contains(fingerprint)
    }
}

impl ClientCertVerifier for DeviceTrust {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The trusted CAs change at run time; clients send their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let print = fingerprint(end_entity);
        let (verifier, registered) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if state.revoked.contains(&print) {
                return Err(rustls::Error::InvalidCertificate(
                    TlsCertificateError::Revoked,
                ));
            }
            let registered = device_id_from_certificate(end_entity)
                .and_then(|id| state.registered.get(&id).cloned());
            (Arc::clone(&state.verifier), registered)
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        // A registered device ID with another certificate (a clone, or an identity
        // re-issued without registering) is refused.
        if let Some(expected) = registered
            && expected != print
        {
            return Err(rustls::Error::InvalidCertificate(
                TlsCertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
