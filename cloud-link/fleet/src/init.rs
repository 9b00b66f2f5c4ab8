//! `warden-fleet init`: a new fleet's directory — config, fleet CA, server certificate
//! and an admin token — so an operator needs no openssl to stand one up.
//!
//! Nothing is overwritten: every file init would write must be absent. Each file is
//! written atomically (`warden_files`); keys and the config (it holds the token's
//! hash) are mode 0600. The admin token itself is returned, never written.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use warden_wire::validity::{set_validity, set_validity_years};

/// Years the fleet CA is valid.
pub const CA_VALID_YEARS: i32 = 10;
/// Days the server certificate is valid (renew it with the CA; units pin the CA).
pub const SERVER_VALID_DAYS: u64 = 825;

/// File names init writes in its directory.
pub const CONFIG_FILE: &str = "fleet.toml";
/// The fleet CA's certificate: what units and stations pin.
pub const CA_CERT_FILE: &str = "fleet-ca.pem";
/// The fleet CA's key (only needed to issue a new server certificate).
pub const CA_KEY_FILE: &str = "fleet-ca.key";
/// The server certificate of the broker and of HTTPS.
pub const SERVER_CERT_FILE: &str = "fleet-server.pem";
/// Its key.
pub const SERVER_KEY_FILE: &str = "fleet-server.key";
/// The issuing CA renewed device certificates come from (`[certificates]`).
pub const ISSUING_CA_CERT_FILE: &str = "fleet-issuing-ca.pem";
/// Its key.
pub const ISSUING_CA_KEY_FILE: &str = "fleet-issuing-ca.key";

/// Where the fleet CA and server certificate come from.
#[derive(Debug, Clone)]
pub enum Pki {
    /// Make a new fleet CA and a server certificate for [`InitRequest::hostnames`].
    Generate,
    /// Issue the server certificate from an existing CA (certificate and key, PEM).
    FromCa {
        /// The CA certificate.
        cert: PathBuf,
        /// Its key (PKCS#8 PEM).
        key: PathBuf,
    },
    /// Use an existing server certificate and key as they are; `ca` is the CA they
    /// chain to, which units pin.
    Existing {
        /// The CA certificate.
        ca: PathBuf,
        /// The server certificate (chain) PEM.
        cert: PathBuf,
        /// Its key PEM.
        key: PathBuf,
    },
}

/// What `warden-fleet init` is asked to do.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// Where the config and PKI go.
    pub dir: PathBuf,
    /// Where the SQLite database and images go (default: `dir`).
    pub state_dir: Option<PathBuf>,
    /// DNS names and IP addresses the server certificate is for.
    pub hostnames: Vec<String>,
    /// `http_listen`.
    pub http_listen: String,
    /// `mqtt_listen`.
    pub mqtt_listen: String,
    /// `[metrics] listen`.
    pub metrics_listen: String,
    /// Where the certificates come from.
    pub pki: Pki,
    /// Vendor roots (SPKI PEM, `warden-provision keys root`) images must chain to:
    /// `images.vendor_roots`. None: uploads are refused until some are added.
    pub vendor_roots: Vec<PathBuf>,
}

/// What init made.
#[derive(Debug)]
pub struct Initialised {
    /// The config file.
    pub config: PathBuf,
    /// The fleet CA certificate units and stations pin.
    pub fleet_ca: PathBuf,
    /// The admin API token (shown once; the config holds only its SHA-256).
    pub admin_token: String,
}

/// Why init did nothing (it checks everything before it writes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A file init would write exists.
    #[error("{} exists; init never overwrites (move it away or pick another --dir)", .0.display())]
    Exists(PathBuf),
    /// No hostname for the server certificate.
    #[error("--hostname: at least one name or address is needed for the server certificate")]
    NoHostname,
    /// A file could not be read, or a directory made.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] warden_files::FileError),
    /// A certificate or key could not be made or read.
    #[error("{what}: {source}")]
    Certificate {
        /// Which.
        what: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// No random source for the token.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// A `--product` no product can be named.
    #[error("--product {0:?}: a product name is 1–16 of [A-Za-z0-9._-]")]
    ProductName(String),
    /// A `--vendor-root` file is not a P-256 public key (SPKI PEM); the file is named.
    #[error("--vendor-root: {0}")]
    VendorRoot(#[from] warden_keychain::tooling::ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> InitError {
    move |source| InitError::Certificate { what, source }
}

/// Makes the fleet's directory as [`InitRequest`] says; refuses if any file exists.
pub fn init(request: &InitRequest) -> Result<Initialised, InitError> {
    if request.hostnames.is_empty() && !matches!(request.pki, Pki::Existing { .. }) {
        return Err(InitError::NoHostname);
    }
    std::fs::create_dir_all(&request.dir).map_err(io(&request.dir))?;
    let dir = request.dir.canonicalize().map_err(io(&request.dir))?;
    let state_dir = match &request.state_dir {
        Some(state) => {
            std::fs::create_dir_all(state).map_err(io(state))?;
            state.canonicalize().map_err(io(state))?
        }
        None => dir.clone(),
    };
    let database = state_dir.join("fleet.db");
    let mut targets = vec![
        dir.join(CONFIG_FILE),
        dir.join(CA_CERT_FILE),
        dir.join(SERVER_CERT_FILE),
        dir.join(SERVER_KEY_FILE),
        dir.join(ISSUING_CA_CERT_FILE),
        dir.join(ISSUING_CA_KEY_FILE),
        database.clone(),
    ];
    if !matches!(request.pki, Pki::Existing { .. }) {
        targets.push(dir.join(CA_KEY_FILE));
    }
    if let Some(existing) = targets.iter().find(|path| path.exists()) {
        return Err(InitError::Exists(existing.clone()));
    }

    // Everything is made before the first file is written.
    let files = match &request.pki {
        Pki::Generate => {
            let key = KeyPair::generate().map_err(cert_error("fleet CA key"))?;
            let params = ca_params()?;
            let cert = params
                .self_signed(&key)
                .map_err(cert_error("fleet CA certificate"))?;
            let key_pem = key.serialize_pem();
            let (server, server_key) = server_certificate(&Issuer::new(params, key), request)?;
            PkiFiles {
                ca: cert.pem(),
                ca_key: Some(key_pem),
                server,
                server_key,
            }
        }
        Pki::FromCa { cert, key } => {
            let ca = std::fs::read_to_string(cert).map_err(io(cert))?;
            let ca_key = std::fs::read_to_string(key).map_err(io(key))?;
            let signing = KeyPair::from_pem(&ca_key).map_err(cert_error("--ca-key"))?;
            let issuer = Issuer::from_ca_cert_pem(&ca, signing).map_err(cert_error("--ca-cert"))?;
            let (server, server_key) = server_certificate(&issuer, request)?;
            PkiFiles {
                ca,
                ca_key: Some(ca_key),
                server,
                server_key,
            }
        }
        Pki::Existing { ca, cert, key } => PkiFiles {
            ca: std::fs::read_to_string(ca).map_err(io(ca))?,
            ca_key: None,
            server: std::fs::read_to_string(cert).map_err(io(cert))?,
            server_key: std::fs::read_to_string(key).map_err(io(key))?,
        },
    };
    // Its own, whatever the PKI: the manufacturer CA (pathLen 0) stays at the factory,
    // so renewed device certificates come from the fleet.
    let issuing = new_issuing_ca("Warden fleet issuing CA")?;
    let vendor_roots = request
        .vendor_roots
        .iter()
        .map(|path| {
            warden_keychain::tooling::load_public_key(path)
                .map(|key| warden_wire::topics::to_hex(&key))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token = crate::auth::generate_token()?;
    let config = config_text(
        request,
        &ConfigFacts {
            dir: &dir,
            database: &database,
            token_hash: &crate::auth::hash_token(&token),
            vendor_roots: &vendor_roots,
        },
    );

    use warden_files::{write_file_atomically, write_file_atomically_with_mode};
    write_file_atomically_with_mode(&dir.join(CA_CERT_FILE), files.ca.as_bytes(), 0o644)?;
    if let Some(key) = &files.ca_key {
        write_file_atomically(&dir.join(CA_KEY_FILE), key.as_bytes())?;
    }
    write_file_atomically_with_mode(&dir.join(SERVER_CERT_FILE), files.server.as_bytes(), 0o644)?;
    write_file_atomically(&dir.join(SERVER_KEY_FILE), files.server_key.as_bytes())?;
    issuing.write(
        &dir.join(ISSUING_CA_CERT_FILE),
        &dir.join(ISSUING_CA_KEY_FILE),
    )?;
    // Last: a config exists only once everything it names does.
    write_file_atomically(&dir.join(CONFIG_FILE), config.as_bytes())?;
    Ok(Initialised {
        config: dir.join(CONFIG_FILE),
        fleet_ca: dir.join(CA_CERT_FILE),
        admin_token: token,
    })
}

/// An issuing CA made here: P-256, `pathLen 0`, valid [`CA_VALID_YEARS`].
struct NewIssuingCa {
    certificate: String,
    key: zeroize::Zeroizing<String>,
}

impl NewIssuingCa {
    /// Writes the certificate (0644) and the key (0600), each atomically.
    fn write(&self, cert: &Path, key: &Path) -> Result<(), InitError> {
        warden_files::write_file_atomically_with_mode(cert, self.certificate.as_bytes(), 0o644)?;
        warden_files::write_file_atomically(key, self.key.as_bytes())?;
        Ok(())
    }
}

fn new_issuing_ca(common_name: &str) -> Result<NewIssuingCa, InitError> {
    let key = KeyPair::generate().map_err(cert_error("issuing CA key"))?;
    let mut params = ca_params()?;
    params.distinguished_name = name(common_name);
    let certificate = params
        .self_signed(&key)
        .map_err(cert_error("issuing CA certificate"))?;
    Ok(NewIssuingCa {
        certificate: certificate.pem(),
        key: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// What `warden-fleet issuing-ca` made.
#[derive(Debug)]
pub struct ProductIssuingCa {
    /// The certificate.
    pub cert: PathBuf,
    /// Its key (mode 0600).
    pub key: PathBuf,
    /// The config section that uses them, to add to fleet.toml.
    pub section: String,
}

/// A product's own issuing CA (`warden-fleet issuing-ca --product NAME`), written to
/// `dir` as `NAME-issuing-ca.pem` and `NAME-issuing-ca.key`; refuses to overwrite. The
/// fleet uses it once `section` is in its config and it restarts.
pub fn product_issuing_ca(dir: &Path, product: &str) -> Result<ProductIssuingCa, InitError> {
    if !crate::store::is_product_name(product) {
        return Err(InitError::ProductName(product.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let cert = dir.join(format!("{product}-issuing-ca.pem"));
    let key = dir.join(format!("{product}-issuing-ca.key"));
    if let Some(existing) = [&cert, &key].into_iter().find(|path| path.exists()) {
        return Err(InitError::Exists(existing.clone()));
    }
    new_issuing_ca(&format!("Warden {product} issuing CA"))?.write(&cert, &key)?;
    let section = format!(
        "[certificates.products.{product}]\nissuing_ca_cert = \"{}\"\nissuing_ca_key = \"{}\"\n\
         # device_certificate_days = 365\n",
        cert.display(),
        key.display()
    );
    Ok(ProductIssuingCa { cert, key, section })
}

/// The PEM texts init writes.
struct PkiFiles {
    ca: String,
    ca_key: Option<String>,
    server: String,
    server_key: String,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Warden fleet");
    dn
}

fn ca_params() -> Result<CertificateParams, InitError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_error("fleet CA"))?;
    params.distinguished_name = name("Warden fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    set_validity_years(&mut params, SystemTime::now(), CA_VALID_YEARS);
    Ok(params)
}

/// A server certificate for the request's hostnames (IP addresses as IP SANs), valid
/// [`SERVER_VALID_DAYS`] from an hour ago (clock skew).
fn server_certificate(
    issuer: &Issuer<'_, KeyPair>,
    request: &InitRequest,
) -> Result<(String, String), InitError> {
    let key = KeyPair::generate().map_err(cert_error("server key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_error("server certificate"))?;
    for host in &request.hostnames {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(address) => SanType::IpAddress(address),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(cert_error("--hostname"))?),
        };
        params.subject_alt_names.push(san);
    }
    let first = request.hostnames.first().map_or("fleet", String::as_str);
    params.distinguished_name = name(first);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial()?);
    set_validity(
        &mut params,
        SystemTime::now(),
        Duration::from_secs(SERVER_VALID_DAYS * 86_400),
    );
    let cert = params
        .signed_by(&key, issuer)
        .map_err(cert_error("server certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn random_serial() -> Result<SerialNumber, InitError> {
    Ok(crate::issuing::random_serial().ok_or(crate::auth::TokenError)?)
}

/// What the config says besides the request: where things went, what was made.
struct ConfigFacts<'a> {
    dir: &'a Path,
    database: &'a Path,
    token_hash: &'a str,
    /// Hex of each vendor root.
    vendor_roots: &'a [String],
}

/// The commented `fleet.toml` init writes.
fn config_text(request: &InitRequest, facts: &ConfigFacts<'_>) -> String {
    let ConfigFacts {
        dir,
        database,
        token_hash,
        ..
    } = *facts;
    let vendor_roots = if facts.vendor_roots.is_empty() {
        "vendor_roots = []".to_owned()
    } else {
        let roots: Vec<String> = facts
            .vendor_roots
            .iter()
            .map(|root| format!("  \"{root}\","))
            .collect();
        format!("vendor_roots = [\n{}\n]", roots.join("\n"))
    };
    let http = &request.http_listen;
    let mqtt = &request.mqtt_listen;
    let metrics = &request.metrics_listen;
    let db = database.display();
    let cert = dir.join(SERVER_CERT_FILE);
    let key = dir.join(SERVER_KEY_FILE);
    let (cert, key) = (cert.display(), key.display());
    let ca = dir.join(CA_CERT_FILE);
    let ca = ca.display();
    let issuing = dir.join(ISSUING_CA_CERT_FILE);
    let issuing_key = dir.join(ISSUING_CA_KEY_FILE);
    let (issuing, issuing_key) = (issuing.display(), issuing_key.display());
    let days = warden_wire::validity::DEFAULT_DEVICE_CERTIFICATE_DAYS;
    format!(
        r#"# The fleet service's config, written by `warden-fleet init`.
# Every key is described in the fleet's README ("Config"). Paths are absolute.

# The HTTP API and dashboard (HTTPS with the server certificate below).
http_listen = "{http}"
# The MQTT broker units connect to (TLS 1.3, device certificates).
mqtt_listen = "{mqtt}"
# SQLite (back up with `warden-fleet backup --to FILE`), or postgres://user@host/db.
database_url = "sqlite://{db}"

# The server certificate of the broker and of HTTPS, issued by the fleet CA
# ({ca}): units pin that CA (the station's `fleet_ca`).
server_cert = "{cert}"
server_key = "{key}"

# Devices are trusted through their products' manufacturer CAs, created through the
# API (the station's `POST /api/v1/products`). To also admit devices of a CA that no
# product names, uncomment:
# manufacturer_ca = "/etc/warden-fleet/manufacturer-ca.pem"

[http]
# The station sends its token over this: keep HTTPS on.
tls = {{ cert = "{cert}", key = "{key}" }}

[api]
# Only SHA-256 hashes of tokens are kept. The admin token was printed once by init.
# Add a token: `printf %s "$TOKEN" | sha256sum`, with role viewer, operator,
# provisioner (a station) or admin.
tokens = [
  {{ name = "admin", role = "admin", sha256 = "{token_hash}" }},
]

[images]
# Vendor root public keys images must chain to (uncompressed P-256, 130 hex digits).
# None: every image upload is refused. `warden-fleet init --vendor-root FILE` and
# `warden-provision keys root` print it; from a vendor root's SPKI PEM by hand:
#   openssl pkey -pubin -in vendor-root.pub.pem -outform DER | tail -c 65 | xxd -p -c 65
{vendor_roots}
# Units download images from here; with HTTPS above, point it at a plain-HTTP mirror
# of the image directory until the units' update agent speaks HTTPS.
# public_url = "http://fleet.example:8080"

[metrics]
# Prometheus /metrics, unauthenticated: keep it on loopback or a private network.
listen = "{metrics}"

[certificates]
# Units renew their certificates over the link before they expire (the last third of
# their validity): the fleet attests the unit, then issues from this CA, which the
# broker trusts for registered devices only. Keep its key as safe as the fleet CA's.
issuing_ca_cert = "{issuing}"
issuing_ca_key = "{issuing_key}"
# Days a renewed certificate is valid (1 to 3650).
device_certificate_days = {days}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path) -> InitRequest {
        InitRequest {
            dir: dir.to_owned(),
            state_dir: None,
            hostnames: vec!["fleet.example".into(), "127.0.0.1".into()],
            http_listen: "127.0.0.1:0".into(),
            mqtt_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            pki: Pki::Generate,
            vendor_roots: Vec::new(),
        }
    }

    #[test]
    fn a_products_issuing_ca_is_made_once_and_its_section_loads() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let made = init(&request(dir.path())).expect("init");
        let product = product_issuing_ca(dir.path(), "press-1").expect("made");
        assert_eq!(
            std::fs::metadata(&product.key)
                .expect("key")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // The printed section, appended to init's config, is a config the fleet loads.
        let mut text = std::fs::read_to_string(&made.config).expect("config");
        text.push('\n');
        text.push_str(&product.section);
        std::fs::write(&made.config, text).expect("write");
        let config = crate::FleetConfig::load(&made.config).expect("the config loads");
        let cas = crate::issuing::IssuingCas::load(&config.certificates).expect("loads");
        let ca = cas.for_product("press-1").expect("the product's CA");
        assert_eq!(ca.name, "product press-1's issuing CA");
        assert!(
            cas.for_product("other")
                .is_some_and(|ca| ca.name == "the fleet's issuing CA"),
            "other products keep the fleet's"
        );
        // Never overwritten; a name no product can have is refused before anything.
        assert!(matches!(
            product_issuing_ca(dir.path(), "press-1"),
            Err(InitError::Exists(_))
        ));
        assert!(matches!(
            product_issuing_ca(dir.path(), "no/such"),
            Err(InitError::ProductName(_))
        ));
    }

    #[test]
    fn init_writes_a_loadable_config_private_keys_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("fleet");
        let made = init(&request(&dir)).expect("init");
        let config = crate::FleetConfig::load(&made.config).expect("the config loads");
        assert_eq!(config.api.tokens.len(), 1);
        assert_eq!(
            config.api.tokens[0].sha256,
            crate::auth::hash_token(&made.admin_token)
        );
        assert!(config.images.vendor_roots.is_empty());
        assert!(config.manufacturer_ca.is_none());
        assert_eq!(
            config.certificates.issuing_ca_cert.as_deref(),
            Some(
                dir.join(ISSUING_CA_CERT_FILE)
                    .canonicalize()
                    .expect("issuing CA")
                    .as_path()
            )
        );
        assert!(
            crate::issuing::IssuingCas::load(&config.certificates)
                .expect("the issuing CA loads")
                .fleet()
                .is_some()
        );
        let text = std::fs::read_to_string(&made.config).expect("config");
        assert!(
            !text.contains(&made.admin_token),
            "the token itself is not kept"
        );
        for (file, mode) in [
            (CONFIG_FILE, 0o600),
            (CA_KEY_FILE, 0o600),
            (SERVER_KEY_FILE, 0o600),
            (ISSUING_CA_KEY_FILE, 0o600),
            (ISSUING_CA_CERT_FILE, 0o644),
            (CA_CERT_FILE, 0o644),
            (SERVER_CERT_FILE, 0o644),
        ] {
            let meta = std::fs::metadata(dir.join(file)).expect(file);
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        // The server certificate: the names asked for, a real validity period.
        let pem = std::fs::read(dir.join(SERVER_CERT_FILE)).expect("cert");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let validity = cert.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert!((800..=900).contains(&days), "{days} days");
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("now")
                .as_secs(),
        )
        .expect("now");
        assert!(validity.not_before.timestamp() <= now);
        let sans = format!("{:?}", cert.subject_alternative_name().expect("san"));
        assert!(sans.contains("fleet.example"), "{sans}");

        let before = std::fs::read(dir.join(CA_KEY_FILE)).expect("key");
        let again = init(&request(&dir)).expect_err("refused");
        assert!(matches!(again, InitError::Exists(_)), "{again}");
        assert_eq!(std::fs::read(dir.join(CA_KEY_FILE)).expect("key"), before);
    }

    #[test]
    fn init_trusts_the_vendor_roots_it_is_given() {
        let temp = tempfile::tempdir().expect("tempdir");
        let root = warden_keychain::tooling::SecretSigningKey::generate().expect("root");
        let public = temp.path().join("vendor-root.pub.pem");
        warden_keychain::tooling::save_public_key(&public, &root.public_key()).expect("save");
        let mut asked = request(&temp.path().join("fleet"));
        asked.vendor_roots = vec![public];
        let made = init(&asked).expect("init");
        let config = crate::FleetConfig::load(&made.config).expect("loads");
        assert_eq!(
            config.images.vendor_roots,
            vec![warden_wire::topics::to_hex(&root.public_key())]
        );

        // Not a key: refused, naming the file, and nothing written.
        let bad = temp.path().join("not-a-key.pem");
        std::fs::write(&bad, "garbage").expect("write");
        let mut asked = request(&temp.path().join("other"));
        asked.vendor_roots = vec![bad];
        let error = init(&asked).expect_err("refused").to_string();
        assert!(error.contains("not-a-key.pem"), "{error}");
        assert!(!temp.path().join("other").join(CONFIG_FILE).exists());
    }

    #[test]
    fn init_issues_from_an_existing_ca() {
        let temp = tempfile::tempdir().expect("tempdir");
        let first = init(&request(&temp.path().join("a"))).expect("init");
        let mut second = request(&temp.path().join("b"));
        second.pki = Pki::FromCa {
            cert: first.fleet_ca.clone(),
            key: temp.path().join("a").join(CA_KEY_FILE),
        };
        let made = init(&second).expect("init from a CA");
        assert_eq!(
            std::fs::read(&made.fleet_ca).expect("b"),
            std::fs::read(&first.fleet_ca).expect("a")
        );
        crate::FleetConfig::load(&made.config).expect("loads");
    }
}
