//! The broker's question to the fleet after a complete CONNECT: may this device in?
//!
//! The TLS handshake already checked the certificate; admission is what needs the
//! store (enrolling a device at its first connection). The broker defines the trait
//! and the fleet's enrollment implements it, so the broker does not import enrollment.

use std::future::Future;
use std::pin::Pin;

use rustls::pki_types::CertificateDer;

/// What [`Admission::admit`] returns.
pub type AdmissionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), AdmissionRefused>> + Send + 'a>>;

/// Decides, after CONNECT, whether an authenticated device's session starts.
pub trait Admission: Send + Sync {
    /// Admits `device`, whose TLS client certificate chain is `chain` (its own first),
    /// or says why not.
    fn admit<'a>(
        &'a self,
        device: &'a str,
        chain: &'a [CertificateDer<'static>],
    ) -> AdmissionFuture<'a>;
}

/// Admits every device the TLS handshake accepted (a broker without a registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAuthenticated;

impl Admission for AdmitAuthenticated {
    fn admit<'a>(
        &'a self,
        _device: &'a str,
        _chain: &'a [CertificateDer<'static>],
    ) -> AdmissionFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Why a device was not admitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionRefused {
    /// Its certificate is no longer acceptable (revoked or unbound since the handshake).
    #[error("the certificate is not admitted: {0}")]
    Certificate(String),
    /// The device ID is already known to the fleet under another trust.
    #[error("device {0} is already known to the fleet; it is not enrolled into another product")]
    Known(String),
    /// The device ID is registered with another certificate (its fingerprint).
    #[error("the device is registered with another certificate (fingerprint {0})")]
    Conflict(String),
    /// The store could not record the enrollment.
    #[error("cannot record the enrollment: {0}")]
    Store(#[source] crate::store::StoreError),
}
