//! Throwaway PKI for the demo and tests: fleet CA, manufacturer CA, server and device certs.
//!
//! Until the provisioning station and pluton land, the demo creates these at start.
//! Nothing here is fit for a real unit: the device key is an ordinary file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files a demo run uses.
#[derive(Debug, Clone)]
pub struct DemoPki {
    /// The device identity (certificate common name).
    pub device_id: String,
    /// CA that signs the fleet's server certificate (pinned by the device).
    pub fleet_ca: PathBuf,
    /// The fleet's server certificate (localhost, 127.0.0.1).
    pub server_cert: PathBuf,
    /// The fleet's server key.
    pub server_key: PathBuf,
    /// The manufacturer CA that signs device certificates (trusted by the fleet).
    pub manufacturer_ca: PathBuf,
    /// Its key (a demo CA: an ordinary file; the provisioning station will guard it).
    pub manufacturer_ca_key: PathBuf,
    /// The device certificate.
    pub device_cert: PathBuf,
    /// The device key (pluton will hold it once it lands).
    pub device_key: PathBuf,
    /// The fleet's own client certificate (CN `fleet`) for an external broker.
    pub fleet_client_cert: PathBuf,
    /// Its key.
    pub fleet_client_key: PathBuf,
    /// The vendor root key (signs release-key certificates). Kept across runs of the
    /// same state directory, since pluton holds its public half.
    pub vendor_root_key: PathBuf,
    /// A release key for policy bundles, certified by the vendor root.
    pub policy_release_key: PathBuf,
    /// Its release-key certificate (raw, 147 bytes).
    pub policy_release_cert: PathBuf,
    /// A certificate for the same device ID that expired in 2001 (for refusal tests).
    pub expired_device_cert: PathBuf,
    /// Its key.
    pub expired_device_key: PathBuf,
    /// A fleet API token with the `admin` role (file mode 0600; the fleet config holds
    /// only its SHA-256). Send it as `Authorization: Bearer <token>`.
    pub fleet_api_token: PathBuf,
}

impl DemoPki {
    /// Creates a fresh PKI under `dir` for a device named from its key.
    pub fn generate(dir: &Path) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| PkiError::Io(dir.to_path_buf(), e))?;

        let fleet_ca_key = KeyPair::generate()?;
        let fleet_ca_params = ca_params("Warden demo fleet CA")?;
        let fleet_ca_cert = fleet_ca_params.self_signed(&fleet_ca_key)?;
        let fleet_issuer = Issuer::new(fleet_ca_params, fleet_ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server_params.distinguished_name = name("Warden demo fleet");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &fleet_issuer)?;

        let maker_ca_key = KeyPair::generate()?;
        let maker_ca_key_pem = maker_ca_key.serialize_pem();
        let maker_ca_params = ca_params(MANUFACTURER_CA_NAME)?;
        let maker_ca_cert = maker_ca_params.self_signed(&maker_ca_key)?;
        let maker_issuer = Issuer::new(maker_ca_params, maker_ca_key);

        let device_key = KeyPair::generate()?;
        let device_id = device_id_from_public_key(device_key.public_key_raw());
        let mut device_params = CertificateParams::new(Vec::<String>::new())?;
        device_params.distinguished_name = name(&device_id);
        device_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let device_cert = device_params.signed_by(&device_key, &maker_issuer)?;

        let fleet_client_key = KeyPair::generate()?;
        let mut fleet_client_params = CertificateParams::new(Vec::<String>::new())?;
        fleet_client_params.distinguished_name = name("fleet");
        fleet_client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let fleet_client_cert = fleet_client_params.signed_by(&fleet_client_key, &maker_issuer)?;

        let expired_key = KeyPair::generate()?;
        let mut expired_params = CertificateParams::new(Vec::<String>::new())?;
        expired_params.distinguished_name = name(&device_id);
        expired_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        expired_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        expired_params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let expired_cert = expired_params.signed_by(&expired_key, &maker_issuer)?;

        let pki = Self {
            device_id,
            fleet_ca: dir.join("fleet-ca.pem"),
            server_cert: dir.join("fleet-server.pem"),
            server_key: dir.join("fleet-server.key"),
            manufacturer_ca: dir.join("manufacturer-ca.pem"),
            manufacturer_ca_key: dir.join("manufacturer-ca.key"),
            device_cert: dir.join("device.pem"),
            device_key: dir.join("device.key"),
            vendor_root_key: dir.join("vendor-root.key"),
            policy_release_key: dir.join("policy-release.key"),
            policy_release_cert: dir.join("policy-release.cert"),
            fleet_client_cert: dir.join("fleet-client.pem"),
            fleet_client_key: dir.join("fleet-client.key"),
            expired_device_cert: dir.join("device-expired.pem"),
            expired_device_key: dir.join("device-expired.key"),
            fleet_api_token: dir.join("fleet-api.token"),
        };
        write(&pki.fleet_ca, &fleet_ca_cert.pem(), false)?;
        write(&pki.server_cert, &server_cert.pem(), false)?;
        write(&pki.server_key, &server_key.serialize_pem(), true)?;
        write(&pki.manufacturer_ca, &maker_ca_cert.pem(), false)?;
        write(&pki.manufacturer_ca_key, &maker_ca_key_pem, true)?;
        write(&pki.device_cert, &device_cert.pem(), false)?;
        write(&pki.device_key, &device_key.serialize_pem(), true)?;
        write(&pki.fleet_client_cert, &fleet_client_cert.pem(), false)?;
        write(
            &pki.fleet_client_key,
            &fleet_client_key.serialize_pem(),
            true,
        )?;
        write(&pki.expired_device_cert, &expired_cert.pem(), false)?;
        write(&pki.expired_device_key, &expired_key.serialize_pem(), true)?;
        let token =
            warden_fleet::auth::generate_token().map_err(|e| PkiError::Keys(e.to_string()))?;
        write(&pki.fleet_api_token, &token, true)?;
        pki.ensure_vendor_keys()?;
        Ok(pki)
    }
}

impl DemoPki {
    /// Creates the vendor root and a policy release key with its certificate, unless
    /// they exist (the vendor root must stay the one pluton trusts).
    fn ensure_vendor_keys(&self) -> Result<(), PkiError> {
        use warden_keychain::tooling::{
            SecretSigningKey, issue_release_cert, load_secret_key, save_secret_key,
        };
        let tool = |e: warden_keychain::tooling::ToolError| PkiError::Keys(e.to_string());
        let root = if self.vendor_root_key.exists() {
            load_secret_key(&self.vendor_root_key).map_err(tool)?
        } else {
            let root = SecretSigningKey::generate().map_err(tool)?;
            save_secret_key(&self.vendor_root_key, &root).map_err(tool)?;
            root
        };
        if !self.policy_release_key.exists() || !self.policy_release_cert.exists() {
            let release = SecretSigningKey::generate().map_err(tool)?;
            let cert = issue_release_cert(
                &root,
                &release.public_key(),
                warden_keychain::Purpose::POLICY,
                1,
            )
            .map_err(tool)?;
            save_secret_key(&self.policy_release_key, &release).map_err(tool)?;
            std::fs::write(&self.policy_release_cert, cert)
                .map_err(|e| PkiError::Io(self.policy_release_cert.clone(), e))?;
        }
        Ok(())
    }

    /// A loopback fleet config using this PKI, its SQLite store in `state_dir`.
    ///
    /// API: the token in [`Self::fleet_api_token`] has the `admin` role, and requests
    /// without a token may read (`anonymous_role = viewer`, so the dashboard works
    /// without a login on loopback). Images must chain to this PKI's vendor root.
    pub fn fleet_config(
        &self,
        state_dir: &Path,
        http_port: u16,
        mqtt_port: u16,
    ) -> warden_fleet::FleetConfig {
        warden_fleet::FleetConfig {
            http_listen: format!("127.0.0.1:{http_port}"),
            mqtt_listen: format!("127.0.0.1:{mqtt_port}"),
            database_url: format!("sqlite://{}", state_dir.join("fleet.db").display()),
            database_read_connections: None,
            database_replica_url: None,
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            manufacturer_ca: Some(self.manufacturer_ca.clone()),
            http: warden_fleet::http_listener::HttpConfig::default(),
            broker: warden_fleet::broker::BrokerConfig::default(),
            api: warden_fleet::auth::ApiConfig {
                tokens: std::fs::read_to_string(&self.fleet_api_token)
                    .map(|token| {
                        vec![warden_fleet::auth::TokenConfig {
                            name: "demo-admin".into(),
                            role: warden_fleet::auth::Role::Admin,
                            sha256: warden_fleet::auth::hash_token(token.trim()),
                        }]
                    })
                    .unwrap_or_default(),
                anonymous_role: Some(warden_fleet::auth::Role::Viewer),
            },
            images: warden_fleet::ImagesConfig {
                vendor_roots: self
                    .vendor_root_public_key()
                    .map(|key| vec![hex::encode(key)])
                    .unwrap_or_default(),
                dir: None,
                public_url: None,
            },
            rollouts: warden_fleet::RolloutConfig::default(),
            telemetry: warden_fleet::TelemetryConfig::default(),
            metrics: warden_fleet::MetricsConfig::default(),
            instance_id: None,
            certificates: Default::default(),
        }
    }

    /// The fleet API token (see [`Self::fleet_api_token`]).
    pub fn fleet_token(&self) -> Result<String, PkiError> {
        std::fs::read_to_string(&self.fleet_api_token)
            .map(|token| token.trim().to_owned())
            .map_err(|e| PkiError::Io(self.fleet_api_token.clone(), e))
    }

    /// The vendor root's public key (uncompressed SEC1), for installing into pluton.
    pub fn vendor_root_public_key(&self) -> Result<[u8; 65], PkiError> {
        let root = warden_keychain::tooling::load_secret_key(&self.vendor_root_key)
            .map_err(|e| PkiError::Keys(e.to_string()))?;
        Ok(root.public_key())
    }
}

/// Common name of the demo manufacturer CA.
const MANUFACTURER_CA_NAME: &str = "Warden demo manufacturer CA";

impl DemoPki {
    /// Issues a client certificate for a key held elsewhere (pluton): `device_id` as
    /// common name, `public_key` the uncompressed SEC1 P-256 point. Returns its path.
    pub fn issue_device_certificate(
        &self,
        device_id: &str,
        public_key: &[u8; 65],
    ) -> Result<PathBuf, PkiError> {
        self.issue_device_certificate_valid(device_id, public_key, None)
    }

    /// [`Self::issue_device_certificate`] valid over `validity` (`not_before`,
    /// `not_after`) instead of rcgen's default: a certificate near its end, for the
    /// renewal scenarios.
    pub fn issue_device_certificate_valid(
        &self,
        device_id: &str,
        public_key: &[u8; 65],
        validity: Option<(std::time::SystemTime, std::time::SystemTime)>,
    ) -> Result<PathBuf, PkiError> {
        let key_pem = std::fs::read_to_string(&self.manufacturer_ca_key)
            .map_err(|e| PkiError::Io(self.manufacturer_ca_key.clone(), e))?;
        let issuer = Issuer::new(
            ca_params(MANUFACTURER_CA_NAME)?,
            KeyPair::from_pem(&key_pem)?,
        );
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some((not_before, not_after)) = validity {
            params.not_before = not_before.into();
            params.not_after = not_after.into();
        }
        let cert = params.signed_by(&ForeignP256Key(public_key), &issuer)?;
        let path = self
            .device_cert
            .with_file_name(format!("device-{device_id}.pem"));
        write(&path, &cert.pem(), false)?;
        Ok(path)
    }
}

/// A P-256 public key whose private half lives elsewhere.
struct ForeignP256Key<'a>(&'a [u8; 65]);

impl rcgen::PublicKeyData for ForeignP256Key<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A device ID from its public key: `wd-` and the first 8 bytes as hex.
fn device_id_from_public_key(raw: &[u8]) -> String {
    let body = raw.get(1..9).unwrap_or(raw);
    format!("wd-{}", hex::encode(body))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Warden demo");
    dn
}

fn ca_params(common_name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::Io(path.to_path_buf(), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| PkiError::Io(path.to_path_buf(), e))
}

/// Why the demo PKI could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Vendor or release keys could not be made or read.
    #[error("vendor keys: {0}")]
    Keys(String),
}
