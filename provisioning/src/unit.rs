//! Provisioning one unit: the steps, in order, each named when it fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warden_pluton_api::PlutonClient;
use zeroize::Zeroizing;

use crate::files::{read_text, write_atomically};
use crate::layout::UnitLayout;
use crate::pluton_process::PlutonProcess;
use crate::record::{Step, UnitRecord, UnitResult, read_record};
use crate::station_context::Station;

/// A unit could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// A step failed; the unit is marked FAILED and was not registered.
    #[error("unit {serial}{}: step `{step}` failed: {message}", device_suffix(.device_id))]
    StepFailed {
        /// The serial number.
        serial: String,
        /// The device ID, if the identity exists.
        device_id: Option<String>,
        /// The step.
        step: Step,
        /// What went wrong.
        message: String,
    },
    /// The unit is provisioned and locked; provisioning it again is refused.
    #[error(
        "unit {serial} (device {device_id}) is already provisioned and its manufacturing state is locked; refusing to provision it again"
    )]
    Locked {
        /// The serial number.
        serial: String,
        /// The device ID.
        device_id: String,
    },
    /// The serial number cannot name a unit directory.
    #[error(
        "serial number {0:?} must be 1 to 64 letters, digits, '-', '_' or '.' (and not start with '.')"
    )]
    BadSerial(String),
}

fn device_suffix(device_id: &Option<String>) -> String {
    device_id
        .as_ref()
        .map(|id| format!(" (device {id})"))
        .unwrap_or_default()
}

/// What provisioning a unit produced.
#[derive(Debug, Clone)]
pub struct ProvisionedUnit {
    /// The record.
    pub record: UnitRecord,
    /// Whether this run did the work (false: it was already provisioned).
    pub newly_provisioned: bool,
}

/// Whether `serial` can name a unit directory.
pub fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= 64
        && !serial.starts_with('.')
        && serial
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

struct Attempt<'s> {
    station: &'s Station,
    layout: UnitLayout,
    record: UnitRecord,
}

impl Attempt<'_> {
    /// `result`, or the unit marked FAILED at `step` with the error's text.
    fn step<T, E: std::fmt::Display>(
        &mut self,
        step: Step,
        result: Result<T, E>,
    ) -> Result<T, UnitError> {
        result.map_err(|error| self.fail(step, error.to_string()))
    }

    /// Mark the unit FAILED (marker and record) and build the error.
    fn fail(&mut self, step: Step, message: String) -> UnitError {
        self.record.result = UnitResult::Failed;
        self.record.failed_step = Some(step);
        self.record.error = Some(message.clone());
        self.record.written_at = now();
        let marker = format!(
            "FAILED\nserial: {}\ndevice: {}\nstep: {step}\nerror: {message}\n",
            self.record.serial,
            self.record.device_id.as_deref().unwrap_or("-"),
        );
        // Best effort: the error returned below names the unit and step either way.
        let _ = write_atomically(&self.layout.failed_marker(), marker.as_bytes(), 0o644);
        let _ = self.write_record();
        UnitError::StepFailed {
            serial: self.record.serial.clone(),
            device_id: self.record.device_id.clone(),
            step,
            message,
        }
    }

    fn write_record(&self) -> Result<(), RecordWriteError> {
        let mut record = self.record.clone();
        record.written_at = now();
        let json = serde_json::to_vec_pretty(&record)?;
        Ok(write_atomically(&self.layout.record_file(), &json, 0o644)?)
    }
}

/// Why the unit's provisioning record could not be written.
#[derive(Debug, thiserror::Error)]
enum RecordWriteError {
    /// The record does not serialise (it always should).
    #[error("provisioning record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file could not be written (the error names it).
    #[error(transparent)]
    Write(#[from] crate::files::FileError),
}

/// Why pluton did not prove it holds the exported identity key.
#[derive(Debug, thiserror::Error)]
enum ProofError {
    /// No nonce could be drawn.
    #[error("random nonce: {0}")]
    Random(getrandom::Error),
    /// Pluton did not quote.
    #[error(transparent)]
    Quote(#[from] warden_pluton_api::ClientError),
    /// The quote does not verify with the exported key.
    #[error("the quote does not verify with the exported key: {0:?}")]
    DoesNotVerify(warden_pluton::QuoteError),
}

/// Why the factory policy bundle could not be installed on the unit.
#[derive(Debug, thiserror::Error)]
enum BundleInstallError {
    /// Pluton's root keys could not be listed.
    #[error(transparent)]
    RootKeys(#[from] warden_pluton_api::ClientError),
    /// The previous attempt's bundle store could not be removed.
    #[error("cannot remove {}: {source}", path.display())]
    ClearStore {
        /// The store's directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store's directory could not be created (the error names it).
    #[error(transparent)]
    CreateStore(#[from] crate::files::FileError),
    /// The station's product name is not a bundle product id.
    #[error("product {0:?} is not a bundle product id")]
    Product(String),
    /// The bundle store refused to open or to take the bundle.
    #[error(transparent)]
    Store(#[from] warden_policy::bundle::store::StoreError),
}

/// Provision the unit with serial `serial` (see the crate README for the steps).
///
/// A unit that is locked and marked PROVISIONED is refused with [`UnitError::Locked`].
/// A unit that was interrupted before its lock is provisioned again from the start
/// (every step is idempotent); one interrupted after its lock only has its
/// registration completed.
pub fn provision_unit(station: &Station, serial: &str) -> Result<ProvisionedUnit, UnitError> {
    if !valid_serial(serial) {
        return Err(UnitError::BadSerial(serial.to_owned()));
    }
    let layout = UnitLayout::for_serial(station.units_dir(), serial);
    let config = &station.config;
    let record = UnitRecord {
        serial: serial.to_owned(),
        device_id: None,
        fingerprint: None,
        product: config.product.clone(),
        group: config.group.clone(),
        image_version: station.factory_image.version.clone(),
        image_measurement: hex::encode(station.factory_image.measurement),
        security_counter: station.factory_image.security_counter,
        selftest: Vec::new(),
        result: UnitResult::Failed,
        failed_step: None,
        error: None,
        written_at: now(),
    };
    let mut attempt = Attempt {
        station,
        layout,
        record,
    };
    let layout = attempt.layout.clone();

    // Storage.
    for dir in [
        layout.config_dir(),
        layout.pluton_state_dir(),
        layout.factory_dir(),
    ] {
        attempt.step(Step::Storage, crate::files::create_dir(&dir))?;
    }

    // Pluton, in its own process on the unit's state.
    let pluton = attempt.step(
        Step::StartPluton,
        PlutonProcess::start(
            &station.pluton_exe,
            &station.config.pluton.backend(),
            &layout.station_socket(),
            &layout.pluton_state_dir(),
            &layout.capability_file(),
        ),
    )?;
    let mut client = attempt.step(Step::StartPluton, pluton.client())?;
    let (_, status) = attempt.step(Step::StartPluton, client.status())?;
    if status.manufacturing_locked {
        let device_id = status
            .device_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        if layout.provisioned_marker().exists() {
            return Err(UnitError::Locked {
                serial: serial.to_owned(),
                device_id,
            });
        }
        // Interrupted between the lock and the registration: finish, touching nothing
        // on the unit.
        return finish_locked_unit(&mut attempt, &pluton, &device_id);
    }
    let _ = std::fs::remove_file(layout.failed_marker());
    let _ = std::fs::remove_file(layout.provisioned_marker());
    let capability = attempt.step(Step::StartPluton, pluton.capability())?;

    // Identity, created inside pluton (reused if a previous attempt created it).
    let identity = match client.export_identity() {
        Ok(identity) => identity,
        Err(_) => attempt.step(Step::Identity, client.create_identity(None))?,
    };
    let device_id = identity.device_id.to_string();
    attempt.record.device_id = Some(device_id.clone());

    // Proof of possession: pluton signs a quote over our nonce with the exported key.
    attempt.step(
        Step::ProofOfPossession,
        proof_of_possession(&mut client, &identity.public_key.0),
    )?;

    // Certificate from pluton's public key, CN = device ID.
    let certificate = attempt.step(
        Step::Certificate,
        station.ca.issue_device_certificate(
            &device_id,
            serial,
            &identity.public_key.0,
            station.config.device_certificate_days,
        ),
    )?;
    attempt.step(
        Step::Certificate,
        write_atomically(&layout.device_cert(), certificate.pem.as_bytes(), 0o644),
    )?;
    attempt.record.fingerprint = Some(certificate.fingerprint.clone());

    // Vendor roots.
    for root in &station.roots {
        attempt.step(
            Step::RootKeys,
            client.install_root_key(&capability, &root.public_key.0, root.purposes),
        )?;
    }
    let installed = attempt.step(Step::RootKeys, client.root_keys())?;
    if installed.len() != station.roots.len()
        || !station.roots.iter().all(|root| installed.contains(root))
    {
        return Err(attempt.fail(
            Step::RootKeys,
            format!(
                "pluton holds {} root keys, not the station's {}",
                installed.len(),
                station.roots.len()
            ),
        ));
    }

    // Counters: the anti-rollback floor is the factory image's security counter.
    attempt.step(
        Step::Counters,
        client
            .advance_counter(
                &capability,
                warden_os::root_of_trust::IMAGE_SECURITY_COUNTER,
                station.factory_image.security_counter,
            )
            .map(|_| ()),
    )?;

    // Config, policy source, fleet CA, status-page password.
    let written = attempt.step(
        Step::Config,
        crate::unit_config::write_unit_config(
            &layout,
            &station.config_template,
            &device_id,
            &config.product,
            &config.policy_file,
            &config.fleet_ca,
        ),
    )?;

    // Policy bundle, verified against the roots pluton now holds.
    attempt.step(
        Step::PolicyBundle,
        install_policy_bundle(station, &mut client, &written.bundle_dir),
    )?;

    // Self-test: boot, A/B update, rollback.
    let plan = crate::selftest::SelftestPlan {
        boot_root: &layout.boot_root(),
        run_dir: &layout.selftest_run_dir(),
        product: config.product_id(),
        factory_image: &station.factory_image.path,
        update_image: &station.update_image.path,
        probe_args: &config.selftest.probe_args,
        probe_timeout: Duration::from_secs(config.selftest.probe_timeout_secs),
    };
    let report = attempt.step(
        Step::Selftest,
        crate::selftest::run(&plan, pluton.socket(), capability.clone()),
    )?;
    let _ = std::fs::remove_dir_all(layout.selftest_run_dir());
    if report.factory_measurement != station.factory_image.measurement {
        return Err(attempt.fail(
            Step::Selftest,
            "slot A does not hold the factory image after the self-test".into(),
        ));
    }
    attempt.record.selftest = report.log;

    // Label.
    let password: Zeroizing<String> = written.status_password;
    attempt.step(
        Step::Label,
        crate::label::write_label(
            &crate::label::LabelData {
                device_id: &device_id,
                serial,
                product: &config.product,
                fingerprint: &certificate.fingerprint,
                status_password: &password,
            },
            &layout.label_png(),
            &layout.label_svg(),
            &layout.label_text(),
        ),
    )?;

    // Lock, then register: a device is registered only once nothing on it can change.
    attempt.record.result = UnitResult::Locked;
    attempt.step(Step::Lock, attempt.write_record())?;
    attempt.step(Step::Lock, client.lock_manufacturing(&capability))?;
    let (_, status) = attempt.step(Step::Lock, client.status())?;
    if !status.manufacturing_locked {
        return Err(attempt.fail(Step::Lock, "pluton does not report the lock".into()));
    }
    drop(client);
    register_and_finish(&mut attempt, &certificate.pem, &certificate.fingerprint)
}

fn proof_of_possession(client: &mut PlutonClient, public_key: &[u8; 65]) -> Result<(), ProofError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(ProofError::Random)?;
    let quote = client.quote(&nonce)?;
    warden_pluton::verify_quote(&quote, public_key, &nonce)
        .map(|_| ())
        .map_err(ProofError::DoesNotVerify)
}

fn install_policy_bundle(
    station: &Station,
    client: &mut PlutonClient,
    bundle_dir: &std::path::Path,
) -> Result<(), BundleInstallError> {
    let roots: Vec<_> = client
        .root_keys()?
        .iter()
        .filter_map(|root| root.to_root_key().ok())
        .filter(|root| root.purposes().contains(warden_keychain::Purpose::POLICY))
        .collect();
    // A fresh store each attempt: the factory bundle is the only one a new unit has.
    if bundle_dir.exists() {
        std::fs::remove_dir_all(bundle_dir).map_err(|source| BundleInstallError::ClearStore {
            path: bundle_dir.to_path_buf(),
            source,
        })?;
    }
    crate::files::create_dir(bundle_dir)?;
    let product = warden_policy::bundle::ProductId::new(&station.config.product)
        .ok_or_else(|| BundleInstallError::Product(station.config.product.clone()))?;
    let mut store =
        warden_policy::bundle::store::BundleStore::open(bundle_dir, &roots, &[], product)?;
    store.apply(&station.policy_bundle)?;
    Ok(())
}

/// The unit is locked but its registration was not confirmed (an interrupted run):
/// check it end to end, then register it.
fn finish_locked_unit(
    attempt: &mut Attempt<'_>,
    pluton: &PlutonProcess,
    device_id: &str,
) -> Result<ProvisionedUnit, UnitError> {
    attempt.record.device_id = Some(device_id.to_owned());
    let Some(previous) = read_record(&attempt.layout) else {
        return Err(attempt.fail(
            Step::Register,
            "the unit is locked but has no provisioning record".into(),
        ));
    };
    attempt.record.selftest = previous.selftest;
    let local = crate::verify::verify_unit_local(attempt.station, &attempt.layout, pluton);
    if let Some(failed) = local.first_failure() {
        return Err(attempt.fail(
            Step::Register,
            format!("the locked unit does not verify, not registering it: {failed}"),
        ));
    }
    let cert_pem = attempt.step(Step::Register, read_text(&attempt.layout.device_cert()))?;
    let fingerprint = attempt.step(Step::Register, crate::verify::pem_fingerprint(&cert_pem))?;
    attempt.record.fingerprint = Some(fingerprint.clone());
    register_and_finish(attempt, &cert_pem, &fingerprint)
}

fn register_and_finish(
    attempt: &mut Attempt<'_>,
    cert_pem: &str,
    fingerprint: &str,
) -> Result<ProvisionedUnit, UnitError> {
    let station = attempt.station;
    let device_id = attempt.record.device_id.clone().unwrap_or_default();
    let registration = crate::fleet::DeviceRegistration {
        device_id: device_id.clone(),
        serial: attempt.record.serial.clone(),
        product: station.config.product.clone(),
        group: station.config.group.clone(),
        certificate_pem: cert_pem.to_owned(),
        image_version: station.factory_image.version.clone(),
    };
    let registered = attempt.step(Step::Register, station.fleet.register_device(&registration))?;
    if registered.fingerprint != fingerprint {
        return Err(attempt.fail(
            Step::Register,
            format!(
                "the fleet recorded fingerprint {}, the certificate's is {fingerprint}",
                registered.fingerprint
            ),
        ));
    }
    attempt.record.result = UnitResult::Provisioned;
    attempt.record.failed_step = None;
    attempt.record.error = None;
    attempt.step(Step::Finish, attempt.write_record())?;
    let marker = format!(
        "PROVISIONED\nserial: {}\ndevice: {device_id}\nsha256: {fingerprint}\n",
        attempt.record.serial
    );
    attempt.step(
        Step::Finish,
        write_atomically(
            &attempt.layout.provisioned_marker(),
            marker.as_bytes(),
            0o644,
        ),
    )?;
    let _ = std::fs::remove_file(attempt.layout.failed_marker());
    Ok(ProvisionedUnit {
        record: attempt.record.clone(),
        newly_provisioned: true,
    })
}
