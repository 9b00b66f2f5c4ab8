//! Device certificate renewal: a CSR from an attested device, a certificate from the
//! fleet's issuing CA, both certificates accepted until the device uses the new one.
//!
//! The manufacturer CA is `pathLen 0` and stays at the factory, so the fleet issues
//! renewed certificates from its own issuing CAs (`crate::issuing`: the product's, else
//! the fleet's; `warden-fleet init` makes the fleet's). The broker trusts an issuing CA
//! for the registered devices of its products only, and a registered device must still
//! present its registered certificate or the one renewed for it, so an issuing CA can
//! speak for no device the fleet did not re-certify itself.
//!
//! Deny by default: a request is answered with a certificate only when the device is
//! registered and not revoked, the CSR's signature verifies, its key is the key of the
//! certificate the device is connected with, and a fresh attestation (challenged for
//! this request, verified with that key) trusts the device. Every other request is
//! refused with its reason, recorded for the device page, and sent back to the device.

use std::sync::Arc;

use rcgen::{CertificateSigningRequestParams, PublicKeyData as _};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_util::sync::CancellationToken;
use warden_wire::renewal::{
    CertificateRenewOrder, CertificateRequest, CertificateResponse, MAX_CSR_PEM_LEN,
    certificate_renew_topic, certificate_response_topic,
};
use warden_wire::topics::{PROTOCOL_VERSION, device_of_topic};

use crate::attestation::{AttestError, Attestor, QUOTE_TIMEOUT};
use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::enrollment::DeviceTrust;
use crate::issuing::{Issued, IssuingCas};
use crate::store::Store;

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
    /// The issuing CAs (the fleet's, each product's).
    pub issuers: Arc<IssuingCas>,
}

/// Why a renewal request was refused (the device and the device page see the text).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalRefused {
    /// The payload does not decode.
    #[error("the request does not decode: {0}")]
    Malformed(String),
    /// No issuing CA for the device's product.
    #[error(
        "neither product {0} nor the fleet has an issuing CA ([certificates.products.{0}] or \
         [certificates] issuing_ca_cert and issuing_ca_key)"
    )]
    NoIssuer(String),
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
            Ok((issued, issuer)) => {
                let detail = format!(
                    "issued by {issuer}, valid until {}, fingerprint {}; the current \
                     certificate stays accepted until the device connects with the new one",
                    warden_wire::validity::utc_text(issued.not_after_ms / 1000),
                    issued.fingerprint,
                );
                tracing::info!(device, fingerprint = %issued.fingerprint, %issuer, "renewed certificate issued");
                CertificateResponse {
                    v: PROTOCOL_VERSION,
                    issued: true,
                    certificate: Some(issued.pem),
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
    ) -> Result<(Issued, String), RenewalRefused> {
        let request = CertificateRequest::decode(payload)
            .map_err(|e| RenewalRefused::Malformed(e.to_string()))?;
        let registered = self
            .store
            .registered_device(device)
            .await?
            .ok_or(RenewalRefused::NotRegistered)?;
        let issuer = self
            .issuers
            .for_product(&registered.product)
            .ok_or_else(|| RenewalRefused::NoIssuer(registered.product.clone()))?;
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
        let issued = issuer.issue(device, csr).map_err(RenewalRefused::Issue)?;
        let detail = format!(
            "issued by {} for request reason {:?}",
            issuer.name, request.reason
        );
        self.store
            .record_renewal_issued(
                device,
                &issued.pem,
                &issued.fingerprint,
                issued.not_after_ms,
                &detail,
                now_ms(),
            )
            .await?;
        self.trust.set_renewed(device, &issued.fingerprint);
        Ok((issued, issuer.name.clone()))
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
