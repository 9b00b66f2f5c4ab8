//! The issuing CAs renewed device certificates come from, and the validity they give.
//!
//! `[certificates]` names the fleet's issuing CA (`warden-fleet init` makes one) and
//! the validity of the certificates it issues. A product may have its own, in
//! `[certificates.products.NAME]`: its own issuing CA (then its devices' renewed
//! certificates chain to it, not to the fleet's), its own validity, or both. A device is
//! renewed by its product's CA when the product has one, otherwise by the fleet's.
//!
//! The broker trusts an issuing CA only for the registered devices of the products it
//! serves ([`crate::enrollment::DeviceTrust::set_issuing_cas`]): a product's own CA
//! speaks for no device of another product. The fleet's CA stays trusted for a product
//! that later got its own, so that devices renewed before then are not locked out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use warden_wire::validity::{DEFAULT_DEVICE_CERTIFICATE_DAYS, MAX_DEVICE_CERTIFICATE_DAYS};

use crate::enrollment::fingerprint;

/// The `[certificates]` section: the fleet's issuing CA, the validity it gives, and
/// each product's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesConfig {
    /// PEM: the fleet's issuing CA's certificate. None: only products with their own
    /// issuing CA can renew.
    #[serde(default)]
    pub issuing_ca_cert: Option<PathBuf>,
    /// PEM (PKCS#8): its key.
    #[serde(default)]
    pub issuing_ca_key: Option<PathBuf>,
    /// Days a renewed device certificate is valid (1 to 3650; default 365), unless its
    /// product sets its own.
    #[serde(default = "default_days")]
    pub device_certificate_days: u32,
    /// `[certificates.products.NAME]`: a product's own issuing CA and/or validity.
    #[serde(default)]
    pub products: BTreeMap<String, ProductCertificates>,
}

/// `[certificates.products.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductCertificates {
    /// PEM: the product's own issuing CA. None: the fleet's issues for it.
    #[serde(default)]
    pub issuing_ca_cert: Option<PathBuf>,
    /// PEM (PKCS#8): its key.
    #[serde(default)]
    pub issuing_ca_key: Option<PathBuf>,
    /// Days its devices' renewed certificates are valid. None: the fleet's setting.
    #[serde(default)]
    pub device_certificate_days: Option<u32>,
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
            products: BTreeMap::new(),
        }
    }
}

/// A `[certificates]` value that cannot be used. `section` is the TOML table it is in
/// (`certificates` or `certificates.products.NAME`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificatesConfigError {
    /// One of an issuing CA's certificate and key without the other.
    #[error(
        "{section}.issuing_ca_cert and {section}.issuing_ca_key go together: give both, or \
         neither"
    )]
    HalfIssuer {
        /// The table.
        section: String,
    },
    /// A validity outside 1..=3650 days.
    #[error(
        "{section}.device_certificate_days {days} is outside 1..={MAX_DEVICE_CERTIFICATE_DAYS}"
    )]
    Days {
        /// The table.
        section: String,
        /// The value.
        days: u32,
    },
    /// A product with a validity but no issuing CA of its own, in a fleet without one.
    #[error(
        "{section} sets a validity but no issuing CA, and the fleet has none either: give \
         {section}.issuing_ca_cert and issuing_ca_key, or [certificates] issuing_ca_cert \
         and issuing_ca_key"
    )]
    NoIssuer {
        /// The table.
        section: String,
    },
    /// A product name that no product can have.
    #[error(
        "certificates.products.{0:?}: a product name is 1–16 of [A-Za-z0-9._-] (the image \
         header's product)"
    )]
    ProductName(String),
}

impl CertificatesConfig {
    /// Checks the values (not the files).
    pub fn check(&self) -> Result<(), CertificatesConfigError> {
        check_issuer(
            "certificates",
            &self.issuing_ca_cert,
            &self.issuing_ca_key,
            Some(self.device_certificate_days),
        )?;
        for (name, product) in &self.products {
            if !crate::store::is_product_name(name) {
                return Err(CertificatesConfigError::ProductName(name.clone()));
            }
            let section = product_section(name);
            check_issuer(
                &section,
                &product.issuing_ca_cert,
                &product.issuing_ca_key,
                product.device_certificate_days,
            )?;
            if product.issuing_ca_cert.is_none() && self.issuing_ca_cert.is_none() {
                return Err(CertificatesConfigError::NoIssuer { section });
            }
        }
        Ok(())
    }

    /// The TOML path of the field an error is about.
    pub fn field(error: &CertificatesConfigError) -> String {
        match error {
            CertificatesConfigError::HalfIssuer { section } => format!("{section}.issuing_ca_key"),
            CertificatesConfigError::Days { section, .. } => {
                format!("{section}.device_certificate_days")
            }
            CertificatesConfigError::NoIssuer { section } => format!("{section}.issuing_ca_cert"),
            CertificatesConfigError::ProductName(name) => product_section(name),
        }
    }

    /// Every certificate and key file the section names, with its TOML field, for the
    /// config's "can it be opened" check.
    pub fn files(&self) -> Vec<(String, &Path)> {
        let sections = std::iter::once((
            "certificates".to_owned(),
            &self.issuing_ca_cert,
            &self.issuing_ca_key,
        ))
        .chain(self.products.iter().map(|(name, product)| {
            (
                product_section(name),
                &product.issuing_ca_cert,
                &product.issuing_ca_key,
            )
        }));
        let mut files = Vec::new();
        for (section, cert, key) in sections {
            if let Some(cert) = cert {
                files.push((format!("{section}.issuing_ca_cert"), cert.as_path()));
            }
            if let Some(key) = key {
                files.push((format!("{section}.issuing_ca_key"), key.as_path()));
            }
        }
        files
    }
}

fn product_section(name: &str) -> String {
    format!("certificates.products.{name}")
}

fn check_issuer(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    days: Option<u32>,
) -> Result<(), CertificatesConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(CertificatesConfigError::HalfIssuer {
            section: section.to_owned(),
        });
    }
    match days {
        Some(days) if !(1..=MAX_DEVICE_CERTIFICATE_DAYS).contains(&days) => {
            Err(CertificatesConfigError::Days {
                section: section.to_owned(),
                days,
            })
        }
        _ => Ok(()),
    }
}

/// One issuing CA, loaded, with the validity it gives.
pub struct IssuingCa {
    issuer: Arc<Issuer<'static, KeyPair>>,
    /// Its certificate (the broker trusts it).
    pub certificate: Vec<CertificateDer<'static>>,
    valid: Duration,
    /// Which CA it is, for people: "the fleet's issuing CA", "product X's issuing CA".
    pub name: String,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("name", &self.name)
            .field("valid", &self.valid)
            .finish_non_exhaustive()
    }
}

/// A certificate the fleet issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub pem: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// End of validity, ms since the epoch.
    pub not_after_ms: i64,
}

impl IssuingCa {
    fn load(section: &str, cert: &Path, key: &Path, days: u32) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("{section}.issuing_ca_cert {}", cert.display()))?;
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(key)
                .with_context(|| format!("{section}.issuing_ca_key {}", key.display()))?,
        );
        let signing = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{section}.issuing_ca_key {}", key.display()))?;
        let certificate = crate::enrollment::check_ca_bundle(&cert_pem)
            .map_err(|e| anyhow::anyhow!("{section}.issuing_ca_cert {}: {e}", cert.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, signing)
            .with_context(|| format!("{section}.issuing_ca_cert {}", cert.display()))?;
        Ok(Self {
            issuer: Arc::new(issuer),
            certificate,
            valid: validity(days),
            name: "the fleet's issuing CA".to_owned(),
        })
    }

    /// The same CA, giving `days` of validity, named `name`.
    fn with(&self, days: u32, name: String) -> Self {
        Self {
            issuer: Arc::clone(&self.issuer),
            certificate: self.certificate.clone(),
            valid: validity(days),
            name,
        }
    }

    /// A client certificate for `device_id` and `csr`'s key: `CN=device_id`,
    /// client-auth usage, this CA's validity (nothing else of the CSR is copied).
    pub fn issue(
        &self,
        device_id: &str,
        mut csr: CertificateSigningRequestParams,
    ) -> Result<Issued, String> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number =
            Some(random_serial().ok_or("no random source for the serial number")?);
        warden_wire::validity::set_validity(&mut params, SystemTime::now(), self.valid);
        csr.params = params;
        let certificate = csr
            .signed_by(&*self.issuer)
            .map_err(|e| format!("cannot issue: {e}"))?;
        Ok(Issued {
            pem: certificate.pem(),
            fingerprint: fingerprint(certificate.der()),
            not_after_ms: not_after_ms(certificate.der()).unwrap_or(0),
        })
    }
}

fn validity(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 86_400)
}

/// Every issuing CA of the fleet: its own, and each product's.
#[derive(Debug, Default)]
pub struct IssuingCas {
    fleet: Option<Arc<IssuingCa>>,
    /// A product's entry: its own CA, or the fleet's with the product's validity.
    products: BTreeMap<String, Arc<IssuingCa>>,
    /// The products whose entry is a CA of their own (the broker trusts it for them).
    own: BTreeMap<String, Arc<IssuingCa>>,
}

impl IssuingCas {
    /// Loads the configured CAs (the config was checked: see
    /// [`CertificatesConfig::check`]).
    pub fn load(config: &CertificatesConfig) -> anyhow::Result<Self> {
        let fleet = match (&config.issuing_ca_cert, &config.issuing_ca_key) {
            (Some(cert), Some(key)) => Some(Arc::new(IssuingCa::load(
                "certificates",
                cert,
                key,
                config.device_certificate_days,
            )?)),
            _ => None,
        };
        let mut products = BTreeMap::new();
        let mut own = BTreeMap::new();
        for (name, product) in &config.products {
            let section = product_section(name);
            let days = product
                .device_certificate_days
                .unwrap_or(config.device_certificate_days);
            let ca = match (&product.issuing_ca_cert, &product.issuing_ca_key, &fleet) {
                (Some(cert), Some(key), _) => {
                    let mut ca = IssuingCa::load(&section, cert, key, days)?;
                    ca.name = format!("product {name}'s issuing CA");
                    let ca = Arc::new(ca);
                    own.insert(name.clone(), Arc::clone(&ca));
                    ca
                }
                (None, None, Some(fleet)) => Arc::new(fleet.with(
                    days,
                    format!("the fleet's issuing CA (product {name}'s validity)"),
                )),
                _ => anyhow::bail!(CertificatesConfigError::NoIssuer { section }),
            };
            products.insert(name.clone(), ca);
        }
        Ok(Self {
            fleet,
            products,
            own,
        })
    }

    /// The CA that renews a device of `product`: the product's, else the fleet's.
    pub fn for_product(&self, product: &str) -> Option<&Arc<IssuingCa>> {
        self.products.get(product).or(self.fleet.as_ref())
    }

    /// Whether no CA is configured (every renewal is refused).
    pub fn is_empty(&self) -> bool {
        self.fleet.is_none() && self.products.is_empty()
    }

    /// The fleet's own CA, if any.
    pub fn fleet(&self) -> Option<&Arc<IssuingCa>> {
        self.fleet.as_ref()
    }

    /// The products that have a CA of their own, with it.
    pub fn own_cas(&self) -> impl Iterator<Item = (&str, &Arc<IssuingCa>)> {
        self.own.iter().map(|(name, ca)| (name.as_str(), ca))
    }

    /// The product names the config gives settings for.
    pub fn configured_products(&self) -> impl Iterator<Item = &str> {
        self.products.keys().map(String::as_str)
    }
}

/// A random 128-bit certificate serial number, positive and non-zero; `None` without
/// a random source. Every certificate the fleet makes (init's, renewals) takes one.
pub(crate) fn random_serial() -> Option<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    // Positive and non-zero: the top bit clear, one bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Some(SerialNumber::from_slice(&bytes))
}

fn not_after_ms(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp().saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CertificatesConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn a_product_section_is_checked_and_named_by_its_table() {
        let half = parse(
            "issuing_ca_cert = \"f.pem\"\nissuing_ca_key = \"f.key\"\n\
             [products.gw]\nissuing_ca_cert = \"gw.pem\"\n",
        );
        let error = half.check().expect_err("half an issuer");
        assert_eq!(
            CertificatesConfig::field(&error),
            "certificates.products.gw.issuing_ca_key"
        );
        let days = parse(
            "issuing_ca_cert = \"f.pem\"\nissuing_ca_key = \"f.key\"\n\
             [products.gw]\ndevice_certificate_days = 0\n",
        );
        let error = days.check().expect_err("no days");
        assert_eq!(
            CertificatesConfig::field(&error),
            "certificates.products.gw.device_certificate_days"
        );
        assert!(error.to_string().contains("0 is outside"), "{error}");
    }

    #[test]
    fn a_product_validity_needs_some_issuing_ca() {
        let orphan = parse("[products.gw]\ndevice_certificate_days = 30\n");
        let error = orphan.check().expect_err("nobody issues");
        assert!(matches!(error, CertificatesConfigError::NoIssuer { .. }));
        assert_eq!(
            CertificatesConfig::field(&error),
            "certificates.products.gw.issuing_ca_cert"
        );
        let own = parse(
            "[products.gw]\nissuing_ca_cert = \"gw.pem\"\nissuing_ca_key = \"gw.key\"\n\
             device_certificate_days = 30\n",
        );
        own.check()
            .expect("a product may have a CA when the fleet has none");
    }

    #[test]
    fn a_product_name_no_product_can_have_is_refused() {
        let bad = parse(
            "issuing_ca_cert = \"f.pem\"\nissuing_ca_key = \"f.key\"\n\
             [products.\"has space\"]\ndevice_certificate_days = 30\n",
        );
        assert!(matches!(
            bad.check(),
            Err(CertificatesConfigError::ProductName(_))
        ));
    }

    #[test]
    fn files_lists_every_named_file_with_its_field() {
        let config = parse(
            "issuing_ca_cert = \"f.pem\"\nissuing_ca_key = \"f.key\"\n\
             [products.gw]\nissuing_ca_cert = \"gw.pem\"\nissuing_ca_key = \"gw.key\"\n",
        );
        let files: Vec<(String, String)> = config
            .files()
            .into_iter()
            .map(|(field, path)| (field, path.display().to_string()))
            .collect();
        assert_eq!(
            files,
            [
                ("certificates.issuing_ca_cert".into(), "f.pem".into()),
                ("certificates.issuing_ca_key".into(), "f.key".into()),
                (
                    "certificates.products.gw.issuing_ca_cert".into(),
                    "gw.pem".into()
                ),
                (
                    "certificates.products.gw.issuing_ca_key".into(),
                    "gw.key".into()
                ),
            ]
        );
    }
}
