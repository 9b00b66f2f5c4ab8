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

use crate::broker::{AdmissionRefused, device_id_from_certificate};

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
            rustls::Error::InvalidCertificate(
                TlsCertificateError::Expired | TlsCertificateError::ExpiredContext { .. },
            ) => CertificateError::Expired,
            rustls::Error::InvalidCertificate(
                TlsCertificateError::NotValidYet | TlsCertificateError::NotValidYetContext { .. },
            ) => CertificateError::NotValidYet,
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

/// The product the devices of the config's `manufacturer_ca` are enrolled in at their
/// first CONNECT (the fleet creates it at start; its CA is always the config's).
pub const CONFIGURED_PRODUCT: &str = "configured";

/// What the broker trusts; changed at run time by registration, enrollment, products
/// and revocation.
///
/// A device ID is bound to its product when it is registered (or enrolled): its
/// certificate is then checked against that product's CA only, and must be the one
/// registered. A device ID not registered is admitted when its certificate chains to
/// the configured manufacturer CA (the fleet's own config: the operator's decision;
/// enrolled in [`CONFIGURED_PRODUCT`]), or to the CA of a product whose open
/// enrollment is on; either way it is enrolled at its first complete CONNECT
/// ([`Enroller`]) and from then on is under revocation and attestation. Any other certificate is refused in the TLS
/// handshake: a product's CA cannot speak for another product's devices, nor for IDs
/// that nobody registered.
pub struct DeviceTrust {
    provider: Arc<CryptoProvider>,
    /// `None`: no manufacturer CA in the config; only the products' CAs admit.
    configured: Option<Arc<dyn ClientCertVerifier>>,
    state: RwLock<TrustState>,
}

/// One product's CA, as the broker checks it.
struct ProductTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    open_enrollment: bool,
}

/// A registered (or enrolled) device's binding.
struct Binding {
    fingerprint: String,
    product: String,
    /// A renewed certificate issued to the device and not yet used: accepted beside
    /// `fingerprint` until the device first connects with it (the `renewal` module).
    renewed: Option<String>,
}

struct TrustState {
    products: BTreeMap<String, ProductTrust>,
    revoked: BTreeSet<String>,
    registered: BTreeMap<String, Binding>,
    /// The issuing CAs (renewed certificates), for registered devices only: the
    /// fleet's, for every product, and each product's own, for that product only.
    issuing: Option<Arc<dyn ClientCertVerifier>>,
    issuing_by_product: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
    /// The last refusal of each registered device's certificate (bounded by the
    /// registry: a device ID nobody registered is not recorded).
    refusals: BTreeMap<String, CertificateRefusal>,
}

/// Why the broker last refused a registered device's certificate, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRefusal {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Why, for people (an expired certificate names its end of validity).
    pub reason: String,
}

/// Why a device certificate was refused, in words: an expired one names when it
/// expired, so an operator can tell a unit that missed its renewal from a clone.
pub fn refusal_reason(error: &rustls::Error) -> String {
    use warden_wire::validity::utc_text;
    match error {
        rustls::Error::InvalidCertificate(TlsCertificateError::ExpiredContext {
            time,
            not_after,
        }) => {
            let (time, not_after) = (unix_seconds(*time), unix_seconds(*not_after));
            format!(
                "certificate expired: not valid after {} ({} s before this connection); the unit must be given a renewed certificate",
                utc_text(not_after),
                time.saturating_sub(not_after)
            )
        }
        rustls::Error::InvalidCertificate(TlsCertificateError::Expired) => {
            "certificate expired".to_owned()
        }
        rustls::Error::InvalidCertificate(TlsCertificateError::NotValidYetContext {
            not_before,
            ..
        }) => format!(
            "certificate not valid yet: valid from {} (is the unit's clock or the issuer's wrong?)",
            utc_text(unix_seconds(*not_before))
        ),
        rustls::Error::InvalidCertificate(TlsCertificateError::Revoked) => {
            "certificate revoked".to_owned()
        }
        rustls::Error::InvalidCertificate(
            TlsCertificateError::ApplicationVerificationFailure,
        ) => "not the certificate registered for this device (a clone, or one issued without registering it)".to_owned(),
        rustls::Error::InvalidCertificate(TlsCertificateError::UnknownIssuer) => {
            "certificate not issued by the device's product CA".to_owned()
        }
        other => other.to_string(),
    }
}

fn unix_seconds(time: UnixTime) -> i64 {
    i64::try_from(time.as_secs()).unwrap_or(i64::MAX)
}

/// Why a certificate is admitted (see [`DeviceTrust`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admitted {
    /// A registered (or enrolled) device of `product`, with its registered certificate.
    Registered {
        /// Its product.
        product: String,
    },
    /// A registered device presenting the renewed certificate the fleet issued to it
    /// (first use: from now on it is the registered one, and the old one is retired).
    Renewed {
        /// Its product.
        product: String,
        /// The renewed certificate's fingerprint.
        fingerprint: String,
    },
    /// A device ID nobody registered, whose certificate chains to the configured CA:
    /// enrolled in [`CONFIGURED_PRODUCT`] at its first CONNECT.
    Configured,
    /// A device ID nobody registered, whose certificate chains to the CA of `product`,
    /// whose open enrollment is on: enrolled at its first CONNECT.
    Enrollable {
        /// The product it will be enrolled in.
        product: String,
    },
}

impl std::fmt::Debug for DeviceTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTrust").finish_non_exhaustive()
    }
}

fn refused(reason: TlsCertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(reason)
}

impl DeviceTrust {
    /// Trusts `configured` (the config's manufacturer CA; [`CONFIGURED_PRODUCT`]'s)
    /// until products are added; none (a fleet made by `warden-fleet init`): only the
    /// products' CAs admit.
    pub fn new(configured: Vec<CertificateDer<'static>>) -> Result<Self, CertificateError> {
        let provider = provider();
        let configured = if configured.is_empty() {
            None
        } else {
            Some(verifier(&configured, Arc::clone(&provider))?)
        };
        // The devices it enrolled are bound to it like any product's.
        let products = configured
            .iter()
            .map(|verifier| {
                (
                    CONFIGURED_PRODUCT.to_owned(),
                    ProductTrust {
                        verifier: Arc::clone(verifier),
                        open_enrollment: false,
                    },
                )
            })
            .collect();
        Ok(Self {
            provider,
            configured,
            state: RwLock::new(TrustState {
                products,
                revoked: BTreeSet::new(),
                registered: BTreeMap::new(),
                issuing: None,
                issuing_by_product: BTreeMap::new(),
                refusals: BTreeMap::new(),
            }),
        })
    }

    /// Trusts `product`'s manufacturer CA (for its own devices) from now on.
    /// [`CONFIGURED_PRODUCT`]'s CA is the config's and is not replaced (a stored copy
    /// from an earlier config, or a product of that name made before it existed).
    pub fn set_product_ca(
        &self,
        product: &str,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<(), CertificateError> {
        if product == CONFIGURED_PRODUCT {
            return Ok(());
        }
        let verifier = verifier(&bundle, Arc::clone(&self.provider))?;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let open_enrollment = state
            .products
            .get(product)
            .is_some_and(|p| p.open_enrollment);
        state.products.insert(
            product.to_owned(),
            ProductTrust {
                verifier,
                open_enrollment,
            },
        );
        Ok(())
    }

    /// Lets `product`'s CA admit devices nobody registered (or stops it).
    pub fn set_open_enrollment(&self, product: &str, open: bool) {
        if let Some(trust) = self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .products
            .get_mut(product)
        {
            trust.open_enrollment = open;
        }
    }

    /// Records that `device_id` belongs to `product` and must present the certificate
    /// with `fingerprint`. A renewed certificate waiting for its first use stays
    /// accepted, unless it is this one.
    pub fn set_registered(&self, device_id: &str, fingerprint: &str, product: &str) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let renewed = state
            .registered
            .get(device_id)
            .and_then(|binding| binding.renewed.clone())
            .filter(|renewed| renewed != fingerprint);
        state.registered.insert(
            device_id.to_owned(),
            Binding {
                fingerprint: fingerprint.to_owned(),
                product: product.to_owned(),
                renewed,
            },
        );
    }

    /// Trusts the issuing CAs (`[certificates]`, `crate::issuing`) for the renewed
    /// certificates of registered devices: `fleet` for every product's, and each of
    /// `products` (name, CA) for that product's devices only. They admit nobody by
    /// themselves: a registered device must still present its registered (or renewed)
    /// certificate.
    pub fn set_issuing_cas(
        &self,
        fleet: Option<&[CertificateDer<'static>]>,
        products: &[(&str, &[CertificateDer<'static>])],
    ) -> Result<(), CertificateError> {
        let fleet = fleet
            .map(|bundle| verifier(bundle, Arc::clone(&self.provider)))
            .transpose()?;
        let mut by_product = BTreeMap::new();
        for (product, bundle) in products {
            by_product.insert(
                (*product).to_owned(),
                verifier(bundle, Arc::clone(&self.provider))?,
            );
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.issuing = fleet;
        state.issuing_by_product = by_product;
        Ok(())
    }

    /// Accepts the renewed certificate with `fingerprint` for the registered
    /// `device_id`, beside its registered one, until the device connects with it.
    /// False if the device is not registered.
    pub fn set_renewed(&self, device_id: &str, fingerprint: &str) -> bool {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match state.registered.get_mut(device_id) {
            Some(binding) if binding.fingerprint != fingerprint => {
                binding.renewed = Some(fingerprint.to_owned());
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The renewed certificate `device_id` may use besides its registered one.
    pub fn renewed(&self, device_id: &str) -> Option<String> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .registered
            .get(device_id)
            .and_then(|binding| binding.renewed.clone())
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

    /// Why the broker last refused `device_id`'s certificate (registered devices only).
    pub fn last_refusal(&self, device_id: &str) -> Option<CertificateRefusal> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .refusals
            .get(device_id)
            .cloned()
    }

    /// Whether (and why) a client certificate `chain` (device certificate first) is
    /// admitted now.
    pub fn admission(&self, chain: &[CertificateDer<'_>]) -> Result<Admitted, rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.admit(end_entity, intermediates, UnixTime::now())
    }

    fn admit(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admitted, rustls::Error> {
        let device = device_id_from_certificate(end_entity)
            .ok_or(refused(TlsCertificateError::ApplicationVerificationFailure))?;
        let admitted = self.admit_device(&device, end_entity, intermediates, now);
        if let Err(error) = &admitted {
            self.record_refusal(&device, error);
        }
        admitted
    }

    /// Logs a refused certificate with its device and reason, and keeps the reason for
    /// the device's page if the device is registered.
    fn record_refusal(&self, device: &str, error: &rustls::Error) {
        let reason = refusal_reason(error);
        let registered = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .registered
            .contains_key(device);
        if registered {
            tracing::warn!(device, %reason, "device certificate refused");
            self.state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .refusals
                .insert(
                    device.to_owned(),
                    CertificateRefusal {
                        at_ms: crate::clock::now_ms(),
                        reason,
                    },
                );
        } else {
            tracing::debug!(device, %reason, "certificate of an unregistered device refused");
        }
    }

    fn admit_device(
        &self,
        device: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admitted, rustls::Error> {
        let print = fingerprint(end_entity);
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if state.revoked.contains(&print) {
            return Err(refused(TlsCertificateError::Revoked));
        }
        if let Some(binding) = state.registered.get(device) {
            // Bound at registration: its product's CA only, and the registered
            // certificate only (not a clone, nor one re-issued without registering).
            // A revoked device's renewed certificate is refused with the old one.
            if state.revoked.contains(&binding.fingerprint) {
                return Err(refused(TlsCertificateError::Revoked));
            }
            // A renewed certificate comes from the fleet's issuing CA instead.
            let product = state
                .products
                .get(&binding.product)
                .ok_or(refused(TlsCertificateError::UnknownIssuer))?;
            let by_product = product
                .verifier
                .verify_client_cert(end_entity, intermediates, now);
            if let Err(error) = by_product {
                // The product's own issuing CA, then the fleet's (which renewed the
                // product's devices before it had its own); never another product's.
                let issuers = state
                    .issuing_by_product
                    .get(&binding.product)
                    .into_iter()
                    .chain(state.issuing.as_ref());
                let mut outcome = Err(error);
                for issuing in issuers {
                    match issuing.verify_client_cert(end_entity, intermediates, now) {
                        Ok(_) => {
                            outcome = Ok(());
                            break;
                        }
                        // The issuing CA's reason when it is the issuer (expired…).
                        Err(issuing_error)
                            if !matches!(
                                issuing_error,
                                rustls::Error::InvalidCertificate(
                                    TlsCertificateError::UnknownIssuer
                                )
                            ) =>
                        {
                            return Err(issuing_error);
                        }
                        Err(_) => {}
                    }
                }
                outcome?;
            }
            if binding.fingerprint == print {
                return Ok(Admitted::Registered {
                    product: binding.product.clone(),
                });
            }
            if binding.renewed.as_deref() == Some(print.as_str()) {
                return Ok(Admitted::Renewed {
                    product: binding.product.clone(),
                    fingerprint: print,
                });
            }
            return Err(refused(TlsCertificateError::ApplicationVerificationFailure));
        }
        let configured = self.configured.as_ref().map_or(
            Err(refused(TlsCertificateError::UnknownIssuer)),
            |configured| {
                configured
                    .verify_client_cert(end_entity, intermediates, now)
                    .map(|_| ())
            },
        );
        if configured.is_ok() {
            return Ok(Admitted::Configured);
        }
        for (name, product) in &state.products {
            if product.open_enrollment
                && product
                    .verifier
                    .verify_client_cert(end_entity, intermediates, now)
                    .is_ok()
            {
                return Ok(Admitted::Enrollable {
                    product: name.clone(),
                });
            }
        }
        // Not registered, and no CA that may admit it: report the configured CA's
        // reason (expired, unknown issuer, …).
        configured.and(Err(refused(TlsCertificateError::UnknownIssuer)))
    }
}

/// Enrolls devices that open enrollment or the configured CA admits, at their first
/// complete CONNECT: they are registered in their product's (for the configured CA,
/// [`CONFIGURED_PRODUCT`]'s) [`ENROLLED_GROUP`](crate::store::ENROLLED_GROUP) with
/// the certificate they presented, so revocation and attestation apply to them like to
/// any registered device.
pub struct Enroller {
    /// The store enrolled devices are registered in.
    pub store: crate::store::Store,
    /// The broker's trust, told of each enrollment.
    pub trust: Arc<DeviceTrust>,
}

impl Enroller {
    async fn enroll(
        &self,
        device: &str,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), AdmissionRefused> {
        let admitted = self
            .trust
            .admission(chain)
            .map_err(|error| AdmissionRefused::Certificate(error.to_string()))?;
        let (product, open_enrollment) = match admitted {
            Admitted::Registered { .. } => return Ok(()),
            Admitted::Renewed {
                product,
                fingerprint,
            } => {
                return self
                    .retire_old_certificate(device, &product, &fingerprint)
                    .await;
            }
            Admitted::Enrollable { product } => (product, true),
            Admitted::Configured => (CONFIGURED_PRODUCT.to_owned(), false),
        };
        let certificate = chain
            .first()
            .ok_or(AdmissionRefused::Certificate("no certificate".to_owned()))?;
        // A device the fleet already knows (its telemetry arrived under another trust)
        // is not taken over by enrolling its ID into an open product. The configured CA
        // is that other trust: before it enrolled, it admitted devices unregistered, so
        // a device it admitted then is enrolled now, not shut out.
        if open_enrollment
            && self
                .store
                .seen_device(device)
                .await
                .map_err(AdmissionRefused::Store)?
                .is_some()
        {
            return Err(AdmissionRefused::Known(device.to_owned()));
        }
        let print = fingerprint(certificate);
        let pem = certificate_pem(certificate);
        let outcome = self
            .store
            .register_device(
                &crate::store::NewDevice {
                    device_id: device,
                    serial: device,
                    product: &product,
                    group: crate::store::ENROLLED_GROUP,
                    certificate_pem: &pem,
                    fingerprint: &print,
                    image_version: crate::store::ENROLLED_IMAGE_VERSION,
                },
                crate::clock::now_ms(),
            )
            .await
            .map_err(AdmissionRefused::Store)?;
        match outcome {
            crate::store::Registration::Created(_) => {
                tracing::info!(device, product = %product, "device enrolled at its first connection");
            }
            crate::store::Registration::Unchanged(_) => {}
            crate::store::Registration::Conflict(existing) => {
                return Err(AdmissionRefused::Conflict(existing));
            }
        }
        self.trust.set_registered(device, &print, &product);
        Ok(())
    }
}

impl Enroller {
    /// `device` connected with its renewed certificate `fingerprint`: it becomes the
    /// registered one, in the store first (so another instance or a restart agrees),
    /// then in the broker's trust, which from now on refuses the old one.
    async fn retire_old_certificate(
        &self,
        device: &str,
        product: &str,
        fingerprint: &str,
    ) -> Result<(), AdmissionRefused> {
        let completed = self
            .store
            .complete_renewal(device, fingerprint, crate::clock::now_ms())
            .await
            .map_err(AdmissionRefused::Store)?;
        if !completed {
            // Another instance completed it (the store already pins this one), or the
            // renewal was withdrawn: the store's registration decides.
            let registered = self
                .store
                .registered_device(device)
                .await
                .map_err(AdmissionRefused::Store)?;
            if registered.is_none_or(|registered| registered.fingerprint != fingerprint) {
                return Err(AdmissionRefused::Certificate(
                    "the renewed certificate is no longer on record".to_owned(),
                ));
            }
        }
        self.trust.set_registered(device, fingerprint, product);
        tracing::info!(
            device,
            fingerprint,
            "device connected with its renewed certificate; the old one is retired"
        );
        Ok(())
    }
}

impl crate::broker::Admission for Enroller {
    fn admit<'a>(
        &'a self,
        device: &'a str,
        chain: &'a [CertificateDer<'static>],
    ) -> crate::broker::AdmissionFuture<'a> {
        Box::pin(self.enroll(device, chain))
    }
}

/// A DER certificate as PEM (what the registry stores).
fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
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
        self.admit(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    fn ca(name: &str) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        (Issuer::new(params, key), cert.der().clone())
    }

    fn device(issuer: &Issuer<'static, KeyPair>, id: &str) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        vec![params.signed_by(&key, issuer).expect("cert").der().clone()]
    }

    #[test]
    fn a_product_ca_speaks_only_for_its_own_devices() {
        let (configured, configured_der) = ca("fleet config CA");
        let (maker, maker_der) = ca("maker");
        let (attacker, attacker_der) = ca("a provisioner's own CA");
        let trust = DeviceTrust::new(vec![configured_der]).expect("trust");
        trust
            .set_product_ca("press", vec![maker_der])
            .expect("press");
        trust
            .set_product_ca("evil", vec![attacker_der])
            .expect("evil");

        let registered = device(&maker, "wd-reg");
        trust.set_registered("wd-reg", &fingerprint(&registered[0]), "press");
        assert_eq!(
            trust.admission(&registered).ok(),
            Some(Admitted::Registered {
                product: "press".into()
            })
        );
        // Another product's CA cannot speak for a registered device, open or not.
        let forged = device(&attacker, "wd-reg");
        assert!(trust.admission(&forged).is_err());
        trust.set_open_enrollment("evil", true);
        assert!(trust.admission(&forged).is_err());
        // Nor its own CA with another certificate (a clone).
        assert!(trust.admission(&device(&maker, "wd-reg")).is_err());
        trust.set_open_enrollment("evil", false);

        // An ID nobody registered: refused under a product CA whose enrollment is off,
        // enrollable once it is on; the configured CA admits it.
        let fresh = device(&attacker, "wd-new");
        assert!(trust.admission(&fresh).is_err());
        assert!(trust.admission(&device(&maker, "wd-new")).is_err());
        trust.set_open_enrollment("evil", true);
        assert_eq!(
            trust.admission(&fresh).ok(),
            Some(Admitted::Enrollable {
                product: "evil".into()
            })
        );
        let conf = device(&configured, "wd-conf");
        assert_eq!(trust.admission(&conf).ok(), Some(Admitted::Configured));
        // Enrolled, it is bound to the configured product like any registered device;
        // that product's CA stays the config's.
        trust.set_registered("wd-conf", &fingerprint(&conf[0]), CONFIGURED_PRODUCT);
        trust
            .set_product_ca(CONFIGURED_PRODUCT, vec![ca("another").1])
            .expect("ignored");
        assert_eq!(
            trust.admission(&conf).ok(),
            Some(Admitted::Registered {
                product: CONFIGURED_PRODUCT.into()
            })
        );
        assert!(trust.admission(&device(&configured, "wd-conf")).is_err());
        trust.revoke(&fingerprint(&conf[0]));
        assert!(trust.admission(&conf).is_err());

        // Revoked is refused whatever admitted it.
        trust.revoke(&fingerprint(&registered[0]));
        assert!(trust.admission(&registered).is_err());
        trust.revoke(&fingerprint(&fresh[0]));
        assert!(trust.admission(&fresh).is_err());
    }

    #[test]
    fn a_renewed_certificate_is_accepted_beside_the_old_one_until_it_is_used() {
        let (maker, maker_der) = ca("maker");
        let (issuing, issuing_der) = ca("fleet issuing CA");
        let trust = DeviceTrust::new(Vec::new()).expect("trust");
        trust
            .set_product_ca("press", vec![maker_der])
            .expect("press");
        let old = device(&maker, "wd-1");
        let renewed = device(&issuing, "wd-1");
        trust.set_registered("wd-1", &fingerprint(&old[0]), "press");
        // Without the issuing CA, or before the fleet issued it: refused.
        trust.set_renewed("wd-1", &fingerprint(&renewed[0]));
        assert!(trust.admission(&renewed).is_err());
        trust
            .set_issuing_cas(Some(&[issuing_der]), &[])
            .expect("issuing CA");
        assert_eq!(
            trust.admission(&renewed).ok(),
            Some(Admitted::Renewed {
                product: "press".into(),
                fingerprint: fingerprint(&renewed[0]),
            })
        );
        assert!(
            trust.admission(&old).is_ok(),
            "the old one until the switch"
        );
        // The issuing CA speaks for nobody else: another certificate it issued for this
        // device, or one for a device nobody registered, is refused.
        assert!(trust.admission(&device(&issuing, "wd-1")).is_err());
        assert!(trust.admission(&device(&issuing, "wd-2")).is_err());
        // A reload from the store before the switch keeps the renewed one waiting.
        trust.set_registered("wd-1", &fingerprint(&old[0]), "press");
        assert!(trust.admission(&renewed).is_ok());
        // The switch: the renewed one is the registered one; the old one is refused.
        trust.set_registered("wd-1", &fingerprint(&renewed[0]), "press");
        assert_eq!(trust.renewed("wd-1"), None);
        assert_eq!(
            trust.admission(&renewed).ok(),
            Some(Admitted::Registered {
                product: "press".into()
            })
        );
        assert!(trust.admission(&old).is_err(), "the old one is retired");
        // A revoked device's waiting renewed certificate goes with it.
        let next = device(&issuing, "wd-1");
        trust.set_renewed("wd-1", &fingerprint(&next[0]));
        assert!(trust.admission(&next).is_ok());
        trust.revoke(&fingerprint(&renewed[0]));
        assert!(trust.admission(&next).is_err());
    }

    #[test]
    fn a_products_issuing_ca_speaks_for_that_products_devices_only() {
        let (maker, maker_der) = ca("maker");
        let (press_ca, press_der) = ca("press issuing CA");
        let (pump_ca, pump_der) = ca("pump issuing CA");
        let (fleet_ca, fleet_der) = ca("fleet issuing CA");
        let trust = DeviceTrust::new(Vec::new()).expect("trust");
        for product in ["press", "pump"] {
            trust
                .set_product_ca(product, vec![maker_der.clone()])
                .expect("product");
        }
        trust
            .set_issuing_cas(
                Some(&[fleet_der]),
                &[
                    ("press", std::slice::from_ref(&press_der)),
                    ("pump", std::slice::from_ref(&pump_der)),
                ],
            )
            .expect("issuing CAs");
        let press_old = device(&maker, "wd-press");
        trust.set_registered("wd-press", &fingerprint(&press_old[0]), "press");
        // Renewed by its own product's CA: admitted.
        let by_press = device(&press_ca, "wd-press");
        trust.set_renewed("wd-press", &fingerprint(&by_press[0]));
        assert!(trust.admission(&by_press).is_ok());
        // Renewed (say, by a stolen key) from another product's CA: refused, even with
        // the fleet expecting exactly that fingerprint.
        let by_pump = device(&pump_ca, "wd-press");
        trust.set_renewed("wd-press", &fingerprint(&by_pump[0]));
        assert!(trust.admission(&by_pump).is_err());
        // The fleet's CA, which renewed devices before their product had its own, stays
        // accepted for them.
        let by_fleet = device(&fleet_ca, "wd-press");
        trust.set_renewed("wd-press", &fingerprint(&by_fleet[0]));
        assert!(trust.admission(&by_fleet).is_ok());
        // Without a fleet CA, only the product's own.
        trust
            .set_issuing_cas(None, &[("press", std::slice::from_ref(&press_der))])
            .expect("issuing CAs");
        assert!(trust.admission(&by_fleet).is_err());
        trust.set_renewed("wd-press", &fingerprint(&by_press[0]));
        assert!(trust.admission(&by_press).is_ok());
    }

    #[test]
    fn an_enrolled_certificate_is_stored_as_pem_the_registry_reads_back() {
        let (maker, _) = ca("maker");
        let chain = device(&maker, "wd-1");
        let pem = certificate_pem(&chain[0]);
        let back = certificates_from_pem(&pem).expect("pem");
        assert_eq!(back, chain);
    }
}
