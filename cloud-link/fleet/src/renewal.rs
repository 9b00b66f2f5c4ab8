//! Device certificate renewal: a CSR from an attested device, a certificate from the
//! fleet's issuing CA, both certificates accepted until the device uses the new one.
//!
//! The manufacturer CA is `pathLen 0` and stays at the factory, so the fleet issues
//! renewed certificates from its own issuing CA (`[certificates]`; `warden-fleet init`
//! makes one). The broker trusts that CA for registered devices only, and a registered
//! device must still present its registered certificate or the one renewed for it, so
//! the issuing CA can speak for no device the fleet did not re-certify itself.
//!
//! Deny by default: a request is answered with a certificate only when the device is
//! registered and not revoked, the CSR's signature verifies, its key is the key of the
//! certificate the device is connected with, and a fresh attestation (challenged for
//! this request, verified with that key) trusts the device. Every other request is
//! refused with its reason, recorded for the device page, and sent back to the device.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData as _, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warden_wire::renewal::{
    CertificateRenewOrder, CertificateRequest, CertificateResponse, MAX_CSR_PEM_LEN,
    certificate_renew_topic, certificate_response_topic,
};
use warden_wire::topics::{PROTOCOL_VERSION, device_of_topic};
use warden_wire::validity::{DEFAULT_DEVICE_CERTIFICATE_DAYS, MAX_DEVICE_CERTIFICATE_DAYS};

use crate::attestation::{AttestError, Attestor, QUOTE_TIMEOUT};
use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::enrollment::{DeviceTrust, fingerprint};
use crate::store::Store;

/// The `[certificates]` section: the fleet's issuing CA and the validity it gives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesConfig {
    /// PEM: the issuing CA's certificate (trusted by the broker for the renewed
    /// certificates of registered devices). None: renewal requests are refused.
    #[serde(default)]
    pub issuing_ca_cert: Option<PathBuf>,
    /// PEM (PKCS#8): its key.
    #[serde(default)]
    pub issuing_ca_key: Option<PathBuf>,
    /// Days a renewed device certificate is valid (1 to 3650; default 365).
    #[serde(default = "default_days")]
    pub device_certificate_days: u32,
}

fn default_days() -> u32 {
    DEFAULT_DEVICE_CERTIFICATE_DAYS
}

impl Default for CertificatesConfig {
    fn default() -> Self {
        Self {
            issuing_ca_cert: None,
            issuing_ca_key: None,
            device_certificate_days: default_days(),
        }
    }
}

/// A `[certificates]` value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificatesConfigError {
    /// One of the issuing CA's certificate and key without the other.
    #[error(
        "certificates.issuing_ca_cert and certificates.issuing_ca_key go together: \
         give both, or neither (renewal refused)"
    )]
    HalfIssuer,
    /// A validity outside 1..=3650 days.
    #[error(
        "certificates.device_certificate_days {0} is outside 1..={MAX_DEVICE_CERTIFICATE_DAYS}"
    )]
    Days(u32),
}

impl CertificatesConfig {
    /// Checks the values (not the files).
    pub fn check(&self) -> Result<(), CertificatesConfigError> {
        if self.issuing_ca_cert.is_some() != self.issuing_ca_key.is_some() {
            return Err(CertificatesConfigError::HalfIssuer);
        }
        if !(1..=MAX_DEVICE_CERTIFICATE_DAYS).contains(&self.device_certificate_days) {
            return Err(CertificatesConfigError::Days(self.device_certificate_days));
        }
        Ok(())
    }

    /// The TOML path of the field an error is about.
    pub fn field(error: &CertificatesConfigError) -> String {
        match error {
            CertificatesConfigError::HalfIssuer => "certificates.issuing_ca_key",
            CertificatesConfigError::Days(_) => "certificates.device_certificate_days",
        }
        .to_owned()
    }
}

/// The fleet's issuing CA, loaded.
pub struct IssuingCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (the broker trusts it).
    pub certificate: Vec<rustls::pki_types::CertificateDer<'static>>,
    valid: Duration,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("valid", &self.valid)
            .finish_non_exhaustive()
    }
}

impl IssuingCa {
    /// Loads the configured issuing CA, if there is one.
    pub fn load(config: &CertificatesConfig) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        let (Some(cert), Some(key)) = (&config.issuing_ca_cert, &config.issuing_ca_key) else {
            return Ok(None);
        };
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("certificates.issuing_ca_cert {}", cert.display()))?;
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(key)
                .with_context(|| format!("certificates.issuing_ca_key {}", key.display()))?,
        );
        let signing = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("certificates.issuing_ca_key {}", key.display()))?;
        let certificate = crate::enrollment::check_ca_bundle(&cert_pem)
            .map_err(|e| anyhow::anyhow!("certificates.issuing_ca_cert {}: {e}", cert.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, signing)
            .with_context(|| format!("certificates.issuing_ca_cert {}", cert.display()))?;
        Ok(Some(Self {
            issuer,
            certificate,
            valid: Duration::from_secs(u64::from(config.device_certificate_days) * 86_400),
        }))
    }

    /// A client certificate for `device_id` and `csr`'s key: `CN=device_id`,
    /// client-auth usage, the configured validity (nothing else of the CSR is copied).
    fn issue(
        &self,
        device_id: &str,
        mut csr: CertificateSigningRequestParams,
    ) -> Result<(String, String, i64), String> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        warden_wire::validity::set_validity(&mut params, SystemTime::now(), self.valid);
        csr.params = params;
        let certificate = csr
            .signed_by(&self.issuer)
            .map_err(|e| format!("cannot issue: {e}"))?;
        let not_after_ms = not_after_ms(certificate.der()).unwrap_or(0);
        Ok((
            certificate.pem(),
            fingerprint(certificate.der()),
            not_after_ms,
        ))
    }
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "no random source for the serial number".to_owned())?;
    // Positive and non-zero: the top bit clear, one bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn not_after_ms(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp().saturating_mul(1000))
}

/// Answers renewal requests (see the module docs).
#[derive(Clone)]
pub struct Renewer {
    /// Registrations, and where outcomes are recorded.
    pub store: Store,
    /// Publishes answers; knows each connected device's key.
    pub devices: LocalPublisher,
    /// The broker's trust, told of each issued certificate.
    pub trust: Arc<DeviceTrust>,
    /// Attests the device for each request.
    pub attestor: Attestor,
    /// The issuing CA, if configured.
    pub issuer: Option<Arc<IssuingCa>>,
}

/// Why a renewal request was refused (the device and the device page see the text).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalRefused {
    /// The payload does not decode.
    #[error("the request does not decode: {0}")]
    Malformed(String),
    /// No issuing CA.
    #[error("this fleet has no issuing CA ([certificates] issuing_ca_cert and issuing_ca_key)")]
    NoIssuer,
    /// Not registered.
    #[error("the device is not registered")]
    NotRegistered,
    /// Revoked.
    #[error("the device's certificate is revoked")]
    Revoked,
    /// The CSR is not a valid, self-signed PKCS#10 request.
    #[error("the CSR is not acceptable: {0}")]
    BadCsr(String),
    /// The CSR is for another key than the one the device is connected with.
    #[error(
        "the CSR is for another key than the one the device is connected with; only the \
         device's own key is re-certified"
    )]
    OtherKey,
    /// The device is not connected (its key unknown).
    #[error("the device is not connected, so its key is unknown")]
    NotConnected,
    /// The attestation for this request did not trust the device.
    #[error("the device is not attested: {0}")]
    NotAttested(String),
    /// Issuing failed.
    #[error("{0}")]
    Issue(String),
    /// The store failed.
    #[error("the fleet's store failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Renewer {
    /// Handles one request from `device`: issues or refuses, records the outcome,
    /// answers the device.
    pub async fn handle(&self, device: &str, payload: &[u8]) {
        let response = match self.renew(device, payload).await {
            Ok((pem, print, not_after_ms)) => {
                let detail = format!(
                    "issued by the fleet's issuing CA, valid until {}, fingerprint {print}; \
                     the current certificate stays accepted until the device connects with \
                     the new one",
                    warden_wire::validity::utc_text(not_after_ms / 1000)
                );
                tracing::info!(device, fingerprint = %print, "renewed certificate issued");
                CertificateResponse {
                    v: PROTOCOL_VERSION,
                    issued: true,
                    certificate: Some(pem),
                    detail,
                }
            }
            Err(refused) => {
                let detail = format!("refused: {refused}");
                tracing::warn!(device, %detail, "certificate renewal refused");
                if let Err(error) = self
                    .store
                    .record_renewal_refused(device, &detail, now_ms())
                    .await
                {
                    tracing::error!(device, %error, "cannot record a refused renewal");
                }
                CertificateResponse {
                    v: PROTOCOL_VERSION,
                    issued: false,
                    certificate: None,
                    detail,
                }
            }
        };
        self.devices
            .publish(certificate_response_topic(device), response.encode())
            .await;
    }

    async fn renew(
        &self,
        device: &str,
        payload: &[u8],
    ) -> Result<(String, String, i64), RenewalRefused> {
        let request = CertificateRequest::decode(payload)
            .map_err(|e| RenewalRefused::Malformed(e.to_string()))?;
        let issuer = self.issuer.as_ref().ok_or(RenewalRefused::NoIssuer)?;
        let registered = self
            .store
            .registered_device(device)
            .await?
            .ok_or(RenewalRefused::NotRegistered)?;
        if registered.revoked || self.trust.is_revoked(&registered.fingerprint) {
            return Err(RenewalRefused::Revoked);
        }
        if request.csr.len() > MAX_CSR_PEM_LEN {
            return Err(RenewalRefused::BadCsr(format!(
                "{} bytes, more than {MAX_CSR_PEM_LEN}",
                request.csr.len()
            )));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes())
            .map_err(|e| RenewalRefused::BadCsr(format!("not PEM: {e}")))?;
        // Parses, and verifies the request's signature with its own key.
        let csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| RenewalRefused::BadCsr(e.to_string()))?;
        let connected_key = self
            .devices
            .live_device_key(device)
            .await
            .ok_or(RenewalRefused::NotConnected)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            csr.public_key.der_bytes(),
            connected_key.as_slice(),
        )) {
            return Err(RenewalRefused::OtherKey);
        }
        // Fresh: challenged now, for this request, and verified with the connected key.
        let attestation = match self.attestor.attest(device, QUOTE_TIMEOUT).await {
            Ok(attestation) => attestation,
            Err(AttestError::Store(error)) => return Err(RenewalRefused::Store(error)),
            Err(error) => return Err(RenewalRefused::NotAttested(error.to_string())),
        };
        if !attestation.verified {
            return Err(RenewalRefused::NotAttested(
                attestation.reason.unwrap_or(attestation.detail),
            ));
        }
        // The key must still be the one attested (no reconnect with another meanwhile).
        if self.devices.live_device_key(device).await.as_deref() != Some(connected_key.as_slice()) {
            return Err(RenewalRefused::NotAttested(
                "the device reconnected with another key during its attestation".to_owned(),
            ));
        }
        let (pem, print, not_after_ms) =
            issuer.issue(device, csr).map_err(RenewalRefused::Issue)?;
        let detail = format!("issued for request reason {:?}", request.reason);
        self.store
            .record_renewal_issued(device, &pem, &print, not_after_ms, &detail, now_ms())
            .await?;
        self.trust.set_renewed(device, &print);
        Ok((pem, print, not_after_ms))
    }

    /// Asks `device` to renew its certificate now (an operator's request).
    pub async fn order(&self, device: &str) {
        let order = CertificateRenewOrder {
            v: PROTOCOL_VERSION,
        };
        self.devices
            .publish(certificate_renew_topic(device), order.encode())
            .await;
    }
}

/// Answers the requests arriving on `requests` until `shutdown`, one device at a time
/// per request (each waits for its own attestation, so they run side by side).
pub async fn run(renewer: Renewer, mut requests: LocalSubscription, shutdown: CancellationToken) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            publish = requests.recv() => match publish {
                Some(publish) => publish,
                None => break,
            },
        };
        let Some(device) = device_of_topic(&publish.topic).map(str::to_owned) else {
            continue;
        };
        let renewer = renewer.clone();
        running.spawn(async move { renewer.handle(&device, &publish.payload).await });
    }
    running.abort_all();
}
