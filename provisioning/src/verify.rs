//! `verify`: a provisioned unit, checked end to end.

use std::path::Path;

use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::layout::UnitLayout;
use crate::pluton_process::PlutonProcess;
use crate::station_context::{Station, root_keys, verify_image_file};

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or why it failed.
    pub outcome: Result<String, CheckFailed>,
}

/// Why a check failed, in words for the report (the checks look at many kinds of
/// thing; what the operator needs is the sentence, e.g. `CN "x" is not the device ID y`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CheckFailed {
    /// What was found instead of what was expected.
    pub reason: String,
}

impl From<String> for CheckFailed {
    fn from(reason: String) -> Self {
        Self { reason }
    }
}

impl From<&str> for CheckFailed {
    fn from(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
        }
    }
}

/// A check failed because of `error` (its text is the reason).
fn failed(error: impl std::fmt::Display) -> CheckFailed {
    CheckFailed::from(error.to_string())
}

/// A certificate given as PEM that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("PEM: {0}")]
pub struct PemError(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>);

/// All checks of one unit.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// In order.
    pub checks: Vec<Check>,
}

impl VerifyReport {
    fn push(&mut self, name: &'static str, outcome: Result<String, CheckFailed>) {
        self.checks.push(Check { name, outcome });
    }

    /// The first failed check, as `name: reason`.
    pub fn first_failure(&self) -> Option<String> {
        self.checks.iter().find_map(|check| match &check.outcome {
            Err(reason) => Some(format!("{}: {reason}", check.name)),
            Ok(_) => None,
        })
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.first_failure().is_none()
    }
}

/// Lowercase hex SHA-256 of the DER of the first certificate in `pem`.
pub fn pem_fingerprint(pem: &str) -> Result<String, PemError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(PemError)?;
    Ok(crate::ca::fingerprint(&parsed.contents))
}

fn der_of(pem: &str, what: &str) -> Result<Vec<u8>, CheckFailed> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("{what} is not PEM: {e}"))?;
    Ok(parsed.contents)
}

/// Check the device certificate: chains to the CA (signature), CN = device ID, its key
/// is pluton's key, valid now. Returns the fingerprint.
pub fn check_certificate(
    cert_pem: &str,
    ca_pem: &str,
    device_id: &str,
    public_key: &[u8; 65],
) -> Result<String, CheckFailed> {
    let der = der_of(cert_pem, "the device certificate")?;
    let ca_der = der_of(ca_pem, "the CA certificate")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| format!("certificate: {e}"))?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| format!("CA: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("signature does not verify with the manufacturer CA: {e}"))?;
    if cert.issuer() != ca.subject() {
        return Err(format!("issuer {} is not the CA {}", cert.issuer(), ca.subject()).into());
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("");
    if common_name != device_id {
        return Err(format!("CN {common_name:?} is not the device ID {device_id}").into());
    }
    if cert.public_key().subject_public_key.data.as_ref() != public_key.as_slice() {
        return Err("the certified key is not the key pluton holds".into());
    }
    if !cert.validity().is_valid() {
        return Err("not valid now".into());
    }
    Ok(crate::ca::fingerprint(&der))
}

/// Every check that needs only the unit and its pluton (not the fleet).
pub fn verify_unit_local(
    station: &Station,
    layout: &UnitLayout,
    pluton: &PlutonProcess,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut client = match pluton.client() {
        Ok(client) => client,
        Err(e) => {
            report.push("pluton", Err(failed(e)));
            return report;
        }
    };
    let status = client.status().map(|(_, status)| status);
    report.push(
        "manufacturing locked",
        match &status {
            Ok(status) if status.manufacturing_locked => Ok("locked".into()),
            Ok(_) => Err("pluton is not locked".into()),
            Err(e) => Err(failed(e)),
        },
    );
    let identity = match client.export_identity() {
        Ok(identity) => identity,
        Err(e) => {
            report.push("identity", Err(failed(e)));
            return report;
        }
    };
    let device_id = identity.device_id.to_string();
    report.push("identity", Ok(device_id.clone()));
    report.push("proof of possession", {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(failed)
            .and_then(|()| client.quote(&nonce).map_err(failed))
            .and_then(|quote| {
                warden_pluton::verify_quote(&quote, &identity.public_key.0, &nonce)
                    .map(|_| "quote verifies with the identity key pluton holds".to_owned())
                    .map_err(|e| CheckFailed::from(format!("{e:?}")))
            })
    });
    report.push(
        "certificate",
        crate::files::read_text(&layout.device_cert())
            .map_err(failed)
            .and_then(|pem| {
                check_certificate(
                    &pem,
                    station.ca.cert_pem(),
                    &device_id,
                    &identity.public_key.0,
                )
            }),
    );
    let installed = client.root_keys().map(|roots| roots.to_vec());
    report.push(
        "vendor roots",
        match &installed {
            Ok(roots)
                if roots.len() == station.roots.len()
                    && station.roots.iter().all(|root| roots.contains(root)) =>
            {
                Ok(format!("{} installed", roots.len()))
            }
            Ok(roots) => Err(failed(format_args!(
                "pluton holds {} roots, not the station's",
                roots.len()
            ))),
            Err(e) => Err(failed(e)),
        },
    );
    let counter = client
        .counters()
        .map(|counters| counters[usize::from(warden_os::root_of_trust::IMAGE_SECURITY_COUNTER)]);
    report.push(
        "anti-rollback counter",
        match &counter {
            Ok(value) if *value == station.factory_image.security_counter => Ok(format!("{value}")),
            Ok(value) => Err(failed(format_args!(
                "{value}, expected the factory image's {}",
                station.factory_image.security_counter
            ))),
            Err(e) => Err(failed(e)),
        },
    );
    let counter = counter.unwrap_or(0);
    let roots = installed
        .map_err(failed)
        .and_then(|roots| root_keys(&roots).map_err(failed));
    report.push(
        "image in slot A",
        roots
            .clone()
            .and_then(|roots| check_slot_a(station, layout, &roots, counter)),
    );
    report.push("config", check_config(station, layout, &device_id));
    report.push(
        "policy bundle",
        roots.and_then(|roots| check_policy_bundle(station, layout, &roots)),
    );
    report
}

fn check_slot_a(
    station: &Station,
    layout: &UnitLayout,
    roots: &[warden_keychain::RootKey],
    counter: u64,
) -> Result<String, CheckFailed> {
    use warden_os::slots::{BootState, Slot, SlotStatus};
    let state_path = layout.boot_root().join("boot/state");
    let bytes = std::fs::read(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let state = BootState::decode(&bytes).ok_or("the boot state record does not decode")?;
    if state.primary() != Some(Slot::A) {
        return Err(format!("primary slot is {:?}, not A", state.primary()).into());
    }
    let SlotStatus::Confirmed(summary) = state.slot(Slot::A) else {
        return Err(format!("slot A is {:?}, not confirmed", state.slot(Slot::A)).into());
    };
    let image_path = layout
        .boot_root()
        .join(warden_os::boot::slot_image_path(Slot::A));
    let image = verify_image_file(&image_path, roots, station.config.product_id(), counter)
        .map_err(failed)?;
    if image.measurement() != summary.measurement
        || image.measurement() != station.factory_image.measurement
    {
        return Err("slot A is not the factory image the boot state recorded".into());
    }
    Ok(format!(
        "version {}, verifies, confirmed primary",
        image.header().version
    ))
}

fn check_config(
    station: &Station,
    layout: &UnitLayout,
    device_id: &str,
) -> Result<String, CheckFailed> {
    let text = crate::files::read_text(&layout.config_file()).map_err(failed)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("warden.toml: {e}"))?;
    let device = table.get("device").and_then(toml::Value::as_table);
    let field = |name: &str| {
        device
            .and_then(|d| d.get(name))
            .and_then(toml::Value::as_str)
    };
    if field("id") != Some(device_id) {
        return Err(format!("device.id is {:?}, not {device_id}", field("id")).into());
    }
    if field("product") != Some(station.config.product.as_str()) {
        return Err(format!("device.product is {:?}", field("product")).into());
    }
    for (what, path) in [
        (
            "policy.file",
            crate::unit_config::unit_path(layout, &table, &["policy", "file"]).map_err(failed)?,
        ),
        (
            "status_page.password_file",
            crate::unit_config::unit_path(layout, &table, &["status_page", "password_file"])
                .map_err(failed)?,
        ),
        ("link.fleet_ca", layout.fleet_ca()),
        ("link.device_cert", layout.device_cert()),
    ] {
        if !path.is_file() {
            return Err(format!("{what}: {} is missing", path.display()).into());
        }
    }
    Ok("warden.toml names this device; policy, password hash and certificates present".into())
}

fn check_policy_bundle(
    station: &Station,
    layout: &UnitLayout,
    roots: &[warden_keychain::RootKey],
) -> Result<String, CheckFailed> {
    let text = crate::files::read_text(&layout.config_file()).map_err(failed)?;
    let table: toml::Table = toml::from_str(&text).map_err(failed)?;
    let dir =
        crate::unit_config::unit_path(layout, &table, &["policy", "bundle_dir"]).map_err(failed)?;
    let product =
        warden_policy::bundle::ProductId::new(&station.config.product).ok_or("invalid product")?;
    let policy_roots: Vec<_> = roots
        .iter()
        .filter(|root| root.purposes().contains(warden_keychain::Purpose::POLICY))
        .cloned()
        .collect();
    let store = warden_policy::bundle::store::BundleStore::open(&dir, &policy_roots, &[], product)
        .map_err(failed)?;
    let current = store.current().ok_or("no policy bundle installed")?;
    Ok(format!("version {} verifies", current.header.version))
}

/// Check the fleet's record of the unit.
pub fn check_fleet(
    station: &Station,
    device_id: &str,
    fingerprint: &str,
    serial: Option<&str>,
) -> Result<String, CheckFailed> {
    let record = station
        .fleet
        .device(device_id)
        .map_err(failed)?
        .ok_or("the fleet does not know the device")?;
    let field = |name: &str| record.get(name).and_then(serde_json::Value::as_str);
    if field("fingerprint") != Some(fingerprint) {
        return Err(format!(
            "fleet fingerprint {:?}, certificate {fingerprint}",
            field("fingerprint")
        )
        .into());
    }
    let mut expected_fields = vec![
        ("product", station.config.product.as_str()),
        ("group", station.config.group.as_str()),
    ];
    if let Some(serial) = serial {
        expected_fields.push(("serial", serial));
    }
    for (name, expected) in expected_fields {
        if field(name) != Some(expected) {
            return Err(format!("fleet {name} {:?}, expected {expected:?}", field(name)).into());
        }
    }
    Ok(format!(
        "registered in {} / {}",
        station.config.product, station.config.group
    ))
}

/// Verify the unit at `root` end to end: starts its pluton, checks it, then the fleet.
pub fn verify_unit(station: &Station, root: &Path) -> VerifyReport {
    let layout = UnitLayout::new(root);
    let mut report = VerifyReport::default();
    report.push(
        "provisioning record",
        if layout.provisioned_marker().is_file() {
            Ok("PROVISIONED".into())
        } else if layout.failed_marker().is_file() {
            Err(failed(
                crate::files::read_text(&layout.failed_marker())
                    .unwrap_or_default()
                    .replace('\n', "; "),
            ))
        } else {
            Err("no PROVISIONED marker".into())
        },
    );
    if !layout
        .pluton_state_dir()
        .join(warden_pluton::file_store::STATE_FILE_NAME)
        .is_file()
    {
        report.push(
            "pluton",
            Err(failed(format_args!(
                "no pluton state in {}",
                layout.pluton_state_dir().display()
            ))),
        );
        return report;
    }
    let pluton = match PlutonProcess::start(
        &station.pluton_exe,
        &station.config.pluton.backend(),
        &layout.station_socket(),
        &layout.pluton_state_dir(),
        &layout.capability_file(),
    ) {
        Ok(pluton) => pluton,
        Err(e) => {
            report.push("pluton", Err(failed(e)));
            return report;
        }
    };
    let local = verify_unit_local(station, &layout, &pluton);
    drop(pluton);
    let device_id = local
        .checks
        .iter()
        .find(|check| check.name == "identity")
        .and_then(|check| check.outcome.clone().ok());
    let fingerprint = local
        .checks
        .iter()
        .find(|check| check.name == "certificate")
        .and_then(|check| check.outcome.clone().ok());
    report.checks.extend(local.checks);
    report.push(
        "fleet record",
        match (device_id, fingerprint) {
            (Some(id), Some(fingerprint)) => check_fleet(
                station,
                &id,
                &fingerprint,
                crate::record::read_record(&layout)
                    .as_ref()
                    .map(|record| record.serial.as_str()),
            ),
            _ => Err("no verified identity and certificate to look up".into()),
        },
    );
    report
}
