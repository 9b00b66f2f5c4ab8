//! The station, opened: CA unlocked, inputs verified once, fleet client ready.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_keychain::RootKey;
use warden_os::image::{ImageTrust, VerifiedImage};
use warden_os::image_io::ImageReadError;
use warden_pluton::byte_array::ByteArray;
use warden_pluton::{InstalledRootKey, PlutonError};

use crate::ca::ManufacturerCa;
use crate::fleet::{FleetClient, TokenSource};
use crate::station::StationConfig;

/// A station input is unusable; nothing was provisioned.
#[derive(Debug, thiserror::Error)]
#[error("station input {what}: {reason}")]
pub struct StationInputError {
    /// Which input.
    pub what: String,
    /// Why.
    pub reason: String,
}

fn input_error(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> StationInputError {
    StationInputError {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Facts about a signed image, read once.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The file.
    pub path: PathBuf,
    /// `major.minor.patch`.
    pub version: String,
    /// The security counter.
    pub security_counter: u64,
    /// SHA-256 of the header (the boot measurement).
    pub measurement: [u8; 32],
}

/// Everything a unit needs from the station.
#[derive(Debug)]
pub struct Station {
    /// The configuration.
    pub config: StationConfig,
    /// The unlocked manufacturer CA.
    pub ca: ManufacturerCa,
    /// The fleet's API.
    pub fleet: FleetClient,
    /// The executable that runs pluton's role (this binary).
    pub pluton_exe: PathBuf,
    /// The vendor roots, as installed into pluton.
    pub roots: Vec<InstalledRootKey>,
    /// The factory image.
    pub factory_image: ImageFacts,
    /// The self-test's update image.
    pub update_image: ImageFacts,
    /// The signed policy bundle.
    pub policy_bundle: Vec<u8>,
    /// The config template.
    pub config_template: toml::Table,
}

impl Station {
    /// Open the station: verify every input against the configured roots before any
    /// unit is touched, and create the product in the fleet (idempotent).
    pub fn open(
        config: StationConfig,
        ca: ManufacturerCa,
        pluton_exe: PathBuf,
    ) -> Result<Self, StationInputError> {
        let mut roots = Vec::new();
        for root in &config.vendor_roots {
            let public_key = warden_keychain::tooling::load_public_key(&root.public_key)
                .map_err(|e| input_error(root.public_key.display(), e))?;
            let purposes = root
                .purpose_bits()
                .map_err(|e| input_error(root.public_key.display(), e))?;
            roots.push(InstalledRootKey {
                public_key: ByteArray(public_key),
                purposes,
            });
        }
        let root_keys = root_keys(&roots).map_err(|e| input_error("vendor roots", e))?;
        let factory_image = image_facts(&config.factory_image, &root_keys, &config)?;
        let update_image = image_facts(config.selftest_image(), &root_keys, &config)?;
        if update_image.security_counter != factory_image.security_counter {
            return Err(input_error(
                update_image.path.display(),
                format!(
                    "security counter {} differs from the factory image's {}: after the self-test's update the unit could not return to the factory image",
                    update_image.security_counter, factory_image.security_counter
                ),
            ));
        }
        let policy_bundle = crate::files::read_bytes(&config.policy_bundle)
            .map_err(|e| input_error("policy_bundle", e))?;
        let config_template = crate::unit_config::load_template(&config.config_template)
            .map_err(|e| input_error(config.config_template.display(), e))?;
        for path in [&config.policy_file, &config.fleet_ca] {
            if !path.is_file() {
                return Err(input_error(path.display(), "not a readable file"));
            }
        }
        let token = match (&config.fleet.token_env, &config.fleet.token_file) {
            (Some(name), _) => TokenSource::Env(name.clone()),
            (None, Some(file)) => TokenSource::File(file.clone()),
            (None, None) => return Err(input_error("fleet", "no token source")),
        };
        let fleet = FleetClient::new(
            &config.fleet.url,
            &token,
            Duration::from_secs(config.fleet.timeout_secs),
            config.fleet.ca.as_deref().unwrap_or(&config.fleet_ca),
        )
        .map_err(|e| input_error("fleet", e))?;
        fleet
            .ensure_product(&config.product, ca.cert_pem())
            .map_err(|e| input_error("fleet product", e))?;
        Ok(Self {
            config,
            ca,
            fleet,
            pluton_exe,
            roots,
            factory_image,
            update_image,
            policy_bundle,
            config_template,
        })
    }

    /// The units directory.
    pub fn units_dir(&self) -> &Path {
        &self.config.units_dir
    }
}

/// Installed roots as the verifier's root keys.
pub fn root_keys(roots: &[InstalledRootKey]) -> Result<Vec<RootKey>, PlutonError> {
    roots.iter().map(InstalledRootKey::to_root_key).collect()
}

/// An image file could not be opened or does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageFileError {
    /// Opening or measuring the file failed.
    #[error(transparent)]
    Open(std::io::Error),
    /// The image does not verify.
    #[error(transparent)]
    Verify(#[from] ImageReadError),
}

/// Verify an image file fully against `roots`, the product and counter floor `min`.
pub fn verify_image_file(
    path: &Path,
    roots: &[RootKey],
    product: warden_os::image::ProductId,
    min_security_counter: u64,
) -> Result<VerifiedImage, ImageFileError> {
    let mut file = File::open(path).map_err(ImageFileError::Open)?;
    let len = file.metadata().map_err(ImageFileError::Open)?.len();
    let trust = ImageTrust {
        roots,
        revoked: &[],
        product,
        min_security_counter,
    };
    Ok(warden_os::image_io::verify_reader(
        &mut file,
        len,
        &trust,
        &mut |_| {},
    )?)
}

fn image_facts(
    path: &Path,
    roots: &[RootKey],
    config: &StationConfig,
) -> Result<ImageFacts, StationInputError> {
    let image = verify_image_file(path, roots, config.product_id(), 0)
        .map_err(|e| input_error(path.display(), format!("does not verify: {e}")))?;
    Ok(ImageFacts {
        path: path.to_owned(),
        version: image.header().version.to_string(),
        security_counter: image.header().security_counter,
        measurement: image.measurement(),
    })
}
