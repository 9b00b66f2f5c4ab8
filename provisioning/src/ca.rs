//! The manufacturer CA: a P-256 key kept encrypted at rest, and device certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::files::{FileError, write_atomically};
use crate::key_envelope::{self, EnvelopeError, KdfCost};

/// The CA certificate's file name inside the CA directory.
pub const CA_CERT_FILE: &str = "manufacturer-ca.pem";
/// The encrypted CA key's file name inside the CA directory.
pub const CA_KEY_FILE: &str = "manufacturer-ca.key.enc";
/// Years a new manufacturer CA is valid by default. Longer than the fleet CA's 10: the
/// fleet checks every unit's chain at each connection, industrial units serve 15 to 20
/// years, and the fleet CA can be replaced from the fleet while this one is in every
/// unit's certificate.
pub const CA_VALID_YEARS: i32 = 20;

/// The CA could not be created, opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// `ca init` would overwrite an existing CA.
    #[error("a manufacturer CA already exists in {0}; refusing to overwrite it")]
    Exists(PathBuf),
    /// The key file could not be decrypted.
    #[error("CA key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: EnvelopeError,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// The decrypted key is not the key of the CA certificate.
    #[error("the key in {key} does not belong to the certificate {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// A device certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// PEM text.
    pub pem: String,
    /// DER bytes.
    pub der: Vec<u8>,
    /// Lowercase hex SHA-256 of the DER (what the fleet and the label carry).
    pub fingerprint: String,
}

/// Lowercase hex SHA-256 of certificate DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The unlocked manufacturer CA (its key in memory only while the station runs).
pub struct ManufacturerCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for ManufacturerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManufacturerCa").finish_non_exhaustive()
    }
}

/// What `ca init` makes: the CA's name and how long it is valid.
#[derive(Debug, Clone)]
pub struct CaSubject<'a> {
    /// The common name.
    pub common_name: &'a str,
    /// The organization.
    pub organization: &'a str,
    /// Valid from the start of today (an hour's clock skew allowed) until 1 January of
    /// the year this many years ahead ([`CA_VALID_YEARS`] by default).
    pub valid_years: i32,
}

/// Create a new CA in `dir`: a P-256 key (encrypted with `passphrase`) and a self-signed
/// certificate for `subject`. Refuses to overwrite.
pub fn init(
    dir: &Path,
    subject: &CaSubject<'_>,
    passphrase: &[u8],
    cost: KdfCost,
) -> Result<PathBuf, CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        return Err(CaError::Exists(dir.to_owned()));
    }
    crate::files::create_dir(dir)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, subject.common_name);
    name.push(DnType::OrganizationName, subject.organization);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    warden_wire::validity::set_validity_years(
        &mut params,
        std::time::SystemTime::now(),
        subject.valid_years,
    );
    let cert = params.self_signed(&key)?;
    let secret = Zeroizing::new(key.serialize_der());
    let sealed = key_envelope::seal(&secret, passphrase, cost).map_err(|source| CaError::Key {
        path: key_path.clone(),
        source,
    })?;
    write_atomically(&key_path, sealed.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| CaError::Random(error.to_string()))?;
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

impl ManufacturerCa {
    /// Open the CA in `dir` with `passphrase`. A wrong passphrase is refused.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = crate::files::read_text(&cert_path)?;
        let sealed = Zeroizing::new(crate::files::read_text(&key_path)?);
        let der = key_envelope::open(&sealed, passphrase).map_err(|source| CaError::Key {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::try_from(der.as_slice())?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let ca = Self { issuer, cert_pem };
        ca.check_key_matches(&key_path, &cert_path)?;
        Ok(ca)
    }

    fn check_key_matches(&self, key: &Path, cert: &Path) -> Result<(), CaError> {
        let mismatch = || CaError::KeyMismatch {
            key: key.to_owned(),
            cert: cert.to_owned(),
        };
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()).map_err(|_| mismatch())?;
        let parsed = pem.parse_x509().map_err(|_| mismatch())?;
        let cert_key = parsed.public_key().subject_public_key.data.as_ref();
        if cert_key != rcgen::PublicKeyData::der_bytes(self.issuer.key()) {
            return Err(mismatch());
        }
        Ok(())
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a client certificate for a key held in pluton: common name `device_id`,
    /// `public_key` the uncompressed SEC1 P-256 point pluton exported, valid from an
    /// hour ago (start of that day) for `valid_days` (the product's
    /// `device_certificate_days`).
    pub fn issue_device_certificate(
        &self,
        device_id: &str,
        serial_number: &str,
        public_key: &[u8; 65],
        valid_days: u32,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device_id);
        // serialNumber (2.5.4.5): the unit's serial, beside the device ID.
        name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::Utf8String(serial_number.to_owned()),
        );
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        warden_wire::validity::set_validity(
            &mut params,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(u64::from(valid_days) * 86_400),
        );
        let cert = params.signed_by(&ForeignP256Key(public_key), &self.issuer)?;
        let der = cert.der().to_vec();
        Ok(IssuedCertificate {
            pem: cert.pem(),
            fingerprint: fingerprint(&der),
            der,
        })
    }
}

/// A P-256 public key whose private half lives in pluton.
struct ForeignP256Key<'a>(&'a [u8; 65]);

impl rcgen::PublicKeyData for ForeignP256Key<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_envelope::KdfCost;

    #[test]
    fn device_certificates_are_valid_for_the_product_s_days_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cost = KdfCost {
            memory_kib: 8 * 1024,
            time: 1,
            parallelism: 1,
        };
        let subject = CaSubject {
            common_name: "maker",
            organization: "maker inc",
            valid_years: CA_VALID_YEARS,
        };
        init(dir.path(), &subject, b"pass", cost).expect("init");
        let ca = ManufacturerCa::open(dir.path(), b"pass").expect("open");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let public: [u8; 65] = rcgen::PublicKeyData::der_bytes(&key)
            .try_into()
            .expect("sec1 point");
        let issued = ca
            .issue_device_certificate("wd-1", "WG1", &public, 30)
            .expect("issue");
        let (_, cert) =
            x509_parser::parse_x509_certificate(&issued.der).expect("the certificate parses");
        let validity = cert.validity();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let now = i64::try_from(now).expect("now");
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();
        assert!(not_before <= now && now < not_after, "valid now");
        // From the start of the day an hour ago, for 30 days: never rcgen's 4096.
        assert_eq!(not_after - not_before, 30 * 86_400);
        assert!(not_before > now - 2 * 86_400);
    }
}
