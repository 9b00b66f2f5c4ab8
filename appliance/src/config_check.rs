//! `warden check-config`: every problem that would stop the unit, with file and line.
//!
//! [`ApplianceConfig::problems`] checks the values (what `warden run` refuses too);
//! this adds what only exists on the unit: the link's CA, certificate and key files
//! (readable, PEM, the certificate made out to `device.id`), the status page's
//! password hash and TLS files, the update capability, and the policy file. Each
//! problem is located by the line of its key ([`warden_toml_position::locate`]); a key
//! left at its default is located at its table.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use warden_toml_position::locate;

use warden_os::monitor::manifest::Manifest;

use crate::config::{ApplianceConfig, ConfigError};

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the field (or of its table when the field is not written).
    pub line: usize,
    /// The field, as a TOML path (`link.fleet_ca`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// What `warden check-config` found in one config file.
#[derive(Debug)]
pub struct ConfigReport {
    /// The config file.
    pub path: PathBuf,
    /// Every problem in the config and the files it names, in file order.
    pub problems: Vec<Problem>,
    /// The policy file's own report (errors and warnings located in the policy), if
    /// it could be read.
    pub policy: Option<warden_policy::cli::CheckReport>,
    /// What starts but cannot work as meant (a configured point the policy never lets
    /// the poller read), in file order; the unit runs with them.
    pub warnings: Vec<Problem>,
}

impl ConfigReport {
    /// Whether the unit can start with this config.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.policy.as_ref().is_none_or(|policy| policy.is_ok())
    }
}

impl std::fmt::Display for ConfigReport {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.path.display();
        for problem in &self.problems {
            writeln!(
                out,
                "{name}:{}: {}: {}",
                problem.line, problem.field, problem.message
            )?;
        }
        for warning in &self.warnings {
            writeln!(
                out,
                "{name}:{}: warning: {}: {}",
                warning.line, warning.field, warning.message
            )?;
        }
        Ok(())
    }
}

/// Checks the config at `path` and everything it names. Only a file that cannot be
/// read or parsed at all is an `Err` (its syntax error is already located); every
/// other problem is in the report.
pub fn check(path: &Path) -> Result<ConfigReport, ConfigError> {
    check_with(path, Stage::Provisioned)
}

/// Which files a check may expect to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A unit as it runs: every file the config names must be there.
    Provisioned,
    /// A config as it is shipped (the package's): the files the provisioning station
    /// gives each unit (fleet CA, device certificate and key, status page password
    /// hash) are not there yet and not checked; everything else is.
    BeforeProvisioning,
}

/// [`check`] at `stage`.
pub fn check_with(path: &Path, stage: Stage) -> Result<ConfigReport, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_text_with(&text, path, stage)
}

/// [`check`] of config text that came from `path`.
pub fn check_text(text: &str, path: &Path) -> Result<ConfigReport, ConfigError> {
    check_text_with(text, path, Stage::Provisioned)
}

/// [`check_with`], and with a `manifest`, whether it grants each compartment what the
/// config needs of it ([`crate::config_grants`]).
pub fn check_full(
    path: &Path,
    stage: Stage,
    manifest: Option<&Manifest>,
) -> Result<ConfigReport, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_text_full(&text, path, stage, manifest)
}

/// [`check_with`] of config text that came from `path`.
pub fn check_text_with(text: &str, path: &Path, stage: Stage) -> Result<ConfigReport, ConfigError> {
    check_text_full(text, path, stage, None)
}

/// [`check_full`] of config text that came from `path`. The ports a compartment may
/// bind are this machine's when the unit is provisioned (check-config runs on it),
/// Linux's default before.
pub fn check_text_full(
    text: &str,
    path: &Path,
    stage: Stage,
    manifest: Option<&Manifest>,
) -> Result<ConfigReport, ConfigError> {
    let config = ApplianceConfig::parse_unchecked(text, path)?;
    let mut found = config.problems();
    if let Some(manifest) = manifest {
        let port_start = match stage {
            Stage::Provisioned => crate::config_grants::unprivileged_port_start(),
            Stage::BeforeProvisioning => crate::config_grants::DEFAULT_UNPRIVILEGED_PORT_START,
        };
        found.extend(crate::config_grants::missing_grants(
            &config, manifest, port_start,
        ));
    }
    if stage == Stage::Provisioned {
        found.extend(provisioned_file_problems(&config));
    }
    found.extend(file_problems(&config));
    let mut policy = None;
    let mut warned = Vec::new();
    match std::fs::metadata(&config.policy.file) {
        Err(error) => found.push(("policy.file".into(), missing(&config.policy.file, &error))),
        Ok(_) => match warden_policy::cli::check_file(&config.policy.file) {
            Ok(report) => {
                if report.is_ok() {
                    warned = unreadable_points(&config);
                }
                policy = Some(report);
            }
            Err(error) => found.push(("policy.file".into(), format!("{error:#}"))),
        },
    }
    let located = |found: Vec<(String, String)>| {
        let mut problems: Vec<Problem> = found
            .into_iter()
            .map(|(field, message)| Problem {
                line: locate(text, &field).map_or(1, |(line, _)| line),
                field,
                message,
            })
            .collect();
        problems.sort_by_key(|problem| problem.line);
        problems
    };
    Ok(ConfigReport {
        path: path.to_path_buf(),
        problems: located(found),
        policy,
        warnings: located(warned),
    })
}

/// The Modbus points the policy never lets the poller read (each would be polled and
/// denied forever, and never show a value), as `(field, message)`.
fn unreadable_points(config: &ApplianceConfig) -> Vec<(String, String)> {
    use warden_bridges::request_policy::{
        GatedRequest, PolicyGate, RequestPolicy as _, RequestSource,
    };
    let Ok(source) = std::fs::read_to_string(&config.policy.file) else {
        return Vec::new();
    };
    let Ok(compiled) = warden_policy::compile(&source, &config.policy.file.display().to_string())
    else {
        return Vec::new();
    };
    let policy = std::sync::Arc::new(compiled.policy);
    let bridges = config
        .bridges
        .modbus_tcp
        .iter()
        .enumerate()
        .map(|(b, bridge)| {
            (
                format!("bridges.modbus_tcp[{b}]"),
                &bridge.name,
                bridge.unit,
                &bridge.points,
            )
        })
        .chain(
            config
                .bridges
                .modbus_rtu
                .iter()
                .enumerate()
                .map(|(b, bridge)| {
                    (
                        format!("bridges.modbus_rtu[{b}]"),
                        &bridge.name,
                        bridge.unit,
                        &bridge.points,
                    )
                }),
        );
    let mut warnings = Vec::new();
    for (field, bridge, unit, points) in bridges {
        for (p, point) in points.iter().enumerate() {
            // The read the poller sends for this point alone (merged reads are split
            // back into these when refused).
            let plan = warden_bridges::read_plan::plan_reads(std::slice::from_ref(point), unit, 0);
            for block in plan {
                let request = block.request();
                let verdict =
                    PolicyGate::new(std::sync::Arc::clone(&policy)).check(&GatedRequest {
                        bridge,
                        unit: block.unit,
                        request: &request,
                        source: RequestSource::Poll,
                    });
                if let Err(denial) = verdict {
                    warnings.push((
                        format!("{field}.points[{p}]"),
                        format!(
                            "point {:?} is never read: the policy denies its poll (unit {}, function {}, address {}, count {}): {}",
                            point.name,
                            block.unit,
                            request.function().code(),
                            request.address(),
                            request.count(),
                            denial.reason
                        ),
                    ));
                }
            }
        }
    }
    warnings
}

/// What is wrong with the files the provisioning station gives each unit.
fn provisioned_file_problems(config: &ApplianceConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let link = &config.link;
    if let Err(why) = certificates(&link.fleet_ca) {
        found.push(("link.fleet_ca".to_owned(), why.to_string()));
    }
    match certificates(&link.device_cert) {
        Err(why) => found.push(("link.device_cert".to_owned(), why.to_string())),
        Ok(chain) => {
            if let Some(why) = name_problem(&chain[0], &config.device.id, &link.device_cert) {
                found.push(("device.id".to_owned(), why));
            }
        }
    }
    if let Some(key) = &link.device_key
        && let Err(why) = private_key(key)
    {
        found.push(("link.device_key".to_owned(), why.to_string()));
    }
    let page = &config.status_page;
    match std::fs::metadata(&page.password_file) {
        Err(error) => found.push((
            "status_page.password_file".to_owned(),
            missing(&page.password_file, &error),
        )),
        Ok(_) => {
            if let Err(error) =
                crate::status_page::auth::PasswordVerifier::load(&page.password_file)
            {
                found.push(("status_page.password_file".to_owned(), error.to_string()));
            }
        }
    }
    found
}

/// What is wrong with the other files the config names (paths already resolved).
fn file_problems(config: &ApplianceConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let page = &config.status_page;
    // The page's TLS files are made on first start; if they exist they must load.
    let cert = page.state_dir.join(crate::status_page::tls::CERT_FILE);
    if cert.exists()
        && let Err(why) = certificates(&cert)
    {
        found.push(("status_page.state_dir".to_owned(), why.to_string()));
    }
    let key = page.state_dir.join(crate::status_page::tls::KEY_FILE);
    if key.exists()
        && let Err(why) = private_key(&key)
    {
        found.push(("status_page.state_dir".to_owned(), why.to_string()));
    }
    if let Some(updates) = &config.updates
        && let Err(error) = std::fs::metadata(&updates.capability_file)
    {
        found.push((
            "updates.capability_file".to_owned(),
            missing(&updates.capability_file, &error),
        ));
    }
    found
}

/// "does not exist" or why it cannot be looked at.
fn missing(path: &Path, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound {
        format!("{} does not exist", path.display())
    } else {
        format!("{} cannot be read: {error}", path.display())
    }
}

/// Why a PEM file the config names does not hold what it should.
#[derive(Debug, thiserror::Error)]
enum PemFileError {
    /// Missing or unreadable (the text of [`missing`]).
    #[error("{0}")]
    Unreadable(String),
    /// Not PEM at all.
    #[error("{} is not PEM: {detail}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// PEM, but without a certificate.
    #[error("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No private key in it.
    #[error("{} holds no PEM private key: {detail}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
}

/// The PEM certificates in `path` (at least one), or why not.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let bytes =
        std::fs::read(path).map_err(|error| PemFileError::Unreadable(missing(path, &error)))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PemFileError::NotPem {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PemFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// Whether `path` holds a PEM private key.
fn private_key(path: &Path) -> Result<(), PemFileError> {
    let bytes =
        std::fs::read(path).map_err(|error| PemFileError::Unreadable(missing(path, &error)))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(drop)
        .map_err(|error| PemFileError::NoPrivateKey {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })
}

/// Why `certificate` is not made out to `device_id`: the fleet takes a device's
/// identity from its certificate's common name (`cloud-link/fleet/src/broker/acl.rs`),
/// so the CN must be the configured `device.id`.
fn name_problem(certificate: &CertificateDer<'_>, device_id: &str, path: &Path) -> Option<String> {
    let names = match subject_common_names(certificate) {
        Some(names) => names,
        None => {
            return Some(format!(
                "the certificate in {} does not parse as X.509 (DER)",
                path.display()
            ));
        }
    };
    (!names.iter().any(|name| name == device_id)).then(|| {
        format!(
            "{device_id:?} is not the common name in {} (it is made out to {})",
            path.display(),
            if names.is_empty() {
                "no common name".to_owned()
            } else {
                names.join(", ")
            }
        )
    })
}

/// The subject's common names (OID 2.5.4.3) of a DER X.509 certificate, or `None` if
/// it is not one. A few lines of DER walking instead of an X.509 crate: this is the
/// only certificate field the appliance reads, and a parser crate cost the shipped
/// binary its size budget.
fn subject_common_names(certificate: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    // serialNumber, signature, issuer, validity, subject.
    let (tag, mut subject) = tbs_field(certificate, 4)?;
    (tag == SEQUENCE).then_some(())?;
    let mut names = Vec::new();
    while !subject.is_empty() {
        let (tag, mut set, after) = der_element(subject)?;
        (tag == SET).then_some(())?;
        subject = after;
        while !set.is_empty() {
            let (tag, attribute, after) = der_element(set)?;
            (tag == SEQUENCE).then_some(())?;
            set = after;
            let (tag, oid, value) = der_element(attribute)?;
            (tag == OID).then_some(())?;
            if oid == COMMON_NAME {
                // UTF8String, PrintableString, IA5String, … : the bytes are the text.
                let (_, text, _) = der_element(value)?;
                names.push(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Some(names)
}

/// The DER walk is the link's (one reader of certificate fields on the unit).
pub(crate) use warden_link::certificate_fields::{der_element, tbs_field};

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit's directory with every file the config names, good.
    struct Unit {
        dir: tempfile::TempDir,
    }

    const CONFIG: &str = r#"[device]
id = "wd-1"
[policy]
file = "policy.toml"
[[bridges.modbus_tcp]]
name = "line1"
address = "127.0.0.1:5020"
[[bridges.modbus_tcp.points]]
name = "temperature"
kind = "holding"
address = 0
type = "u16"
[link]
broker_host = "127.0.0.1"
broker_port = 8883
fleet_ca = "pki/fleet-ca.pem"
device_cert = "pki/device.pem"
device_key = "pki/device.key"
batch_interval_ms = 500
[link.outbox]
dir = "outbox"
max_bytes = 1048576
segment_bytes = 65536
[status_page]
listen = "127.0.0.1:0"
password_file = "status-page/password.phc"
state_dir = "status-page"
metrics_listen = "127.0.0.1:0"
"#;

    /// A self-signed certificate whose common name is `name` (as the provisioning
    /// station makes them), and its key, in PEM.
    fn device_certificate(name: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn common_names_are_read_from_the_der_subject() {
        let (pem, _) = device_certificate("wd-0000000000000001");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        assert_eq!(
            subject_common_names(&der),
            Some(vec!["wd-0000000000000001".to_owned()])
        );
        // rcgen's simple certificate has its own CN, and the name only as a SAN.
        let simple = rcgen::generate_simple_self_signed(vec!["wd-2".into()]).expect("cert");
        let names = subject_common_names(simple.cert.der()).expect("parses");
        assert!(!names.contains(&"wd-2".to_owned()), "{names:?}");
        // Every truncation is refused, never a panic or a wrong name.
        for cut in 0..der.len() {
            assert_ne!(
                subject_common_names(&der[..cut]),
                Some(vec!["wd-0000000000000001".to_owned()]),
                "cut at {cut}"
            );
        }
    }

    impl Unit {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let pki = dir.path().join("pki");
            std::fs::create_dir_all(&pki).expect("pki");
            let ca = rcgen::generate_simple_self_signed(vec!["fleet-ca".into()]).expect("ca");
            std::fs::write(pki.join("fleet-ca.pem"), ca.cert.pem()).expect("ca");
            let (device_pem, device_key) = device_certificate("wd-1");
            std::fs::write(pki.join("device.pem"), device_pem).expect("cert");
            std::fs::write(pki.join("device.key"), device_key).expect("key");
            std::fs::create_dir_all(dir.path().join("status-page")).expect("page");
            let hash = crate::status_page::auth::hash_password("label-password").expect("hash");
            crate::status_page::auth::write_password_hash(
                &dir.path().join("status-page/password.phc"),
                &hash,
            )
            .expect("hash");
            std::fs::write(
                dir.path().join("policy.toml"),
                include_str!("../config/policy.toml"),
            )
            .expect("policy");
            Self { dir }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.dir.path().join(relative)
        }

        /// The report of `CONFIG` with `from` replaced by `to`.
        fn check(&self, edits: &[(&str, &str)]) -> (String, ConfigReport) {
            let mut text = CONFIG.to_owned();
            for (from, to) in edits {
                assert!(text.contains(from), "{from} is not in the config");
                text = text.replacen(from, to, 1);
            }
            let path = self.path("warden.toml");
            std::fs::write(&path, &text).expect("config");
            (text, check(&path).expect("parses"))
        }
    }

    /// The 1-based line of the first line of `text` starting with `start`.
    fn line_starting(text: &str, start: &str) -> usize {
        text.lines()
            .position(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line starts with {start}"))
            + 1
    }

    /// Asserts that `report` has, among its lines, `warden.toml:<line of start>:
    /// <field>: <message start>`.
    fn assert_reports(text: &str, report: &ConfigReport, start: &str, field: &str, message: &str) {
        let expected = format!(
            "{}:{}: {field}: {message}",
            report.path.display(),
            line_starting(text, start)
        );
        assert!(report.path.ends_with("warden.toml"));
        let printed = report.to_string();
        assert!(
            printed.lines().any(|line| line.starts_with(&expected)),
            "expected {expected:?} in:\n{printed}"
        );
        assert!(!report.is_ok());
    }

    #[test]
    fn a_device_port_the_manifest_does_not_grant_is_located_at_its_address() {
        let unit = Unit::new();
        let path = unit.path("warden.toml");
        std::fs::write(&path, CONFIG).expect("config");
        let manifest = Manifest::parse(include_str!("../manifest.toml"), "manifest.toml")
            .expect("the shipped manifest parses");
        // Without the manifest the unit is fine; with it, the device on port 5020 and
        // the broker on 8883... are checked against the compartments' grants.
        assert!(check(&path).expect("parses").is_ok());
        let report = check_full(&path, Stage::Provisioned, Some(&manifest)).expect("parses");
        assert_reports(
            CONFIG,
            &report,
            "address = ",
            "bridges.modbus_tcp[0].address",
            "127.0.0.1:5020: port 5020 is not in compartment `bridges`'s `connect` grants",
        );
    }

    #[test]
    fn a_good_unit_passes() {
        let unit = Unit::new();
        let (_, report) = unit.check(&[]);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.to_string(), "");
    }

    #[test]
    fn a_point_the_policy_never_lets_the_poller_read_is_a_warning() {
        let unit = Unit::new();
        // Holding register 50 of line1: no rule of the shipped policy allows reading it.
        let (text, report) = unit.check(&[(
            "name = \"temperature\"\nkind = \"holding\"\naddress = 0",
            "name = \"temperature\"\nkind = \"holding\"\naddress = 50",
        )]);
        assert!(report.is_ok(), "a warning does not stop the unit: {report}");
        assert_eq!(report.warnings.len(), 1, "{report}");
        let expected = format!(
            "{}:{}: warning: bridges.modbus_tcp[0].points[0]: point \"temperature\" is never read",
            report.path.display(),
            line_starting(&text, "[[bridges.modbus_tcp.points]]")
        );
        let printed = report.to_string();
        assert!(
            printed.lines().any(|line| line.starts_with(&expected)),
            "expected {expected:?} in:\n{printed}"
        );
        assert!(printed.contains("address 50"), "{printed}");
    }

    #[test]
    fn missing_files_are_each_named_with_their_line() {
        let unit = Unit::new();
        std::fs::remove_file(unit.path("pki/fleet-ca.pem")).expect("rm");
        std::fs::remove_file(unit.path("pki/device.key")).expect("rm");
        std::fs::remove_file(unit.path("status-page/password.phc")).expect("rm");
        std::fs::remove_file(unit.path("policy.toml")).expect("rm");
        let (text, report) = unit.check(&[]);
        let ca = unit.path("pki/fleet-ca.pem");
        assert_reports(
            &text,
            &report,
            "fleet_ca",
            "link.fleet_ca",
            &format!("{} does not exist", ca.display()),
        );
        assert_reports(&text, &report, "device_key", "link.device_key", "");
        assert_reports(
            &text,
            &report,
            "password_file",
            "status_page.password_file",
            "",
        );
        assert_reports(&text, &report, "file = ", "policy.file", "");
        // All of them, not just the first.
        assert_eq!(report.problems.len(), 4, "{report}");
    }

    #[test]
    fn certificates_must_be_pem_and_made_out_to_the_device() {
        let unit = Unit::new();
        std::fs::write(unit.path("pki/fleet-ca.pem"), "not a certificate\n").expect("ca");
        let (other, _) = device_certificate("wd-2");
        std::fs::write(unit.path("pki/device.pem"), other).expect("cert");
        let (text, report) = unit.check(&[]);
        assert_reports(&text, &report, "fleet_ca", "link.fleet_ca", "");
        assert!(
            report.to_string().contains("holds no PEM certificate"),
            "{report}"
        );
        assert_reports(
            &text,
            &report,
            "id = ",
            "device.id",
            "\"wd-1\" is not the common name in",
        );
        assert!(report.to_string().contains("made out to"), "{report}");
        assert!(report.to_string().contains("wd-2"), "{report}");
    }

    #[test]
    fn link_values_that_cannot_work_are_each_reported() {
        let unit = Unit::new();
        let (text, report) = unit.check(&[
            ("broker_port = 8883", "broker_port = 0"),
            ("broker_host = \"127.0.0.1\"", "broker_host = \"\""),
            ("batch_interval_ms = 500", "batch_interval_ms = 0"),
            ("max_bytes = 1048576", "max_bytes = 0"),
            ("segment_bytes = 65536", "segment_bytes = 0"),
        ]);
        assert_reports(
            &text,
            &report,
            "broker_port",
            "link.broker_port",
            "0 is no port",
        );
        assert_reports(
            &text,
            &report,
            "broker_host",
            "link.broker_host",
            "must name",
        );
        assert_reports(
            &text,
            &report,
            "batch_interval_ms",
            "link.batch_interval_ms",
            "must be at least 1",
        );
        assert_reports(
            &text,
            &report,
            "max_bytes",
            "link.outbox.max_bytes",
            "must be at least 1",
        );
        assert_reports(
            &text,
            &report,
            "segment_bytes",
            "link.outbox.segment_bytes",
            "must be at least 1",
        );
        assert_eq!(report.problems.len(), 5, "{report}");
    }

    #[test]
    fn decimals_are_for_numbers_and_bounded() {
        let unit = Unit::new();
        let (_, report) = unit.check(&[("type = \"u16\"", "type = \"u16\"\ndecimals = 2")]);
        assert!(report.is_ok(), "{report}");
        let (text, report) = unit.check(&[("type = \"u16\"", "type = \"u16\"\ndecimals = 10")]);
        assert_reports(
            &text,
            &report,
            "decimals",
            "bridges.modbus_tcp[0].points[0].decimals",
            "10 is more than the 9 allowed",
        );
        let (text, report) = unit.check(&[(
            "type = \"u16\"",
            "type = \"string\"\nlength = 2\ndecimals = 1",
        )]);
        assert_reports(
            &text,
            &report,
            "decimals",
            "bridges.modbus_tcp[0].points[0].decimals",
            "only number points take decimals, not string",
        );
    }

    #[test]
    fn the_key_source_must_be_exactly_one() {
        let unit = Unit::new();
        let (text, report) = unit.check(&[(
            "device_key = ",
            "pluton_socket = \"pluton.sock\"\ndevice_key = ",
        )]);
        assert_reports(
            &text,
            &report,
            "pluton_socket",
            "link.pluton_socket",
            "set exactly one",
        );
        let (text, report) = unit.check(&[("device_key = \"pki/device.key\"\n", "")]);
        // Neither written: located at the [link] table.
        assert_reports(
            &text,
            &report,
            "[link]",
            "link.pluton_socket",
            "set exactly one",
        );
    }

    #[test]
    fn addresses_that_do_not_parse_are_each_reported() {
        let unit = Unit::new();
        let (text, report) = unit.check(&[
            ("address = \"127.0.0.1:5020\"", "address = \"127.0.0.1\""),
            ("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:99999\""),
            (
                "metrics_listen = \"127.0.0.1:0\"",
                "metrics_listen = \"localhost\"",
            ),
        ]);
        assert_reports(
            &text,
            &report,
            "address = \"127",
            "bridges.modbus_tcp[0].address",
            "\"127.0.0.1\" is not host:port",
        );
        assert_reports(
            &text,
            &report,
            "listen = ",
            "status_page.listen",
            "\"127.0.0.1:99999\" is not host:port",
        );
        assert_reports(
            &text,
            &report,
            "metrics_listen",
            "status_page.metrics_listen",
            "\"localhost\" must be a loopback",
        );
        let (text, report) = unit.check(&[(
            "[link]",
            "[bridges.facade]\nlisten = \"0.0.0.0:502:1\"\nunits = []\n[link]",
        )]);
        assert_reports(
            &text,
            &report,
            "listen = \"0.0.0.0",
            "bridges.facade.listen",
            "",
        );
    }

    #[test]
    fn fields_are_found_by_their_line() {
        let text = "[device]\nid = \"wd-1\"\n\n[[bridges.modbus_tcp]]\nname = \"a\"\n\
                    [[bridges.modbus_tcp]]\nname = \"b\"\naddress = \"x\"\n[link]\nbroker_port = 0\n";
        let line = |field| locate(text, field).map(|(line, _)| line);
        assert_eq!(line("device.id"), Some(2));
        assert_eq!(line("bridges.modbus_tcp[1].address"), Some(8));
        assert_eq!(line("link.broker_port"), Some(10));
        // Not written: the table it would be in.
        assert_eq!(line("link.batch_interval_ms"), Some(9));
    }
}
