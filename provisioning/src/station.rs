//! The station's configuration (`station.toml`): product, images, roots, fleet.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_keychain::Purpose;

use crate::release_keys::{PurposeError, purposes_from_names};
use warden_toml_position::line_and_column;
use warden_wire::validity::{DEFAULT_DEVICE_CERTIFICATE_DAYS, MAX_DEVICE_CERTIFICATE_DAYS};

/// `station.toml`. Relative paths are resolved against the file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Product name (images and policy bundles must name it; the fleet's product).
    pub product: String,
    /// Fleet device group new units join (`Production`, `Field Test`, …).
    pub group: String,
    /// Directory of the manufacturer CA (`warden-provision ca init`).
    pub ca_dir: PathBuf,
    /// Where unit directories and batch records are written.
    pub units_dir: PathBuf,
    /// The signed image every unit ships with, installed in slot A.
    pub factory_image: PathBuf,
    /// The signed image the self-test updates to (slot B). Default: the factory image.
    /// Its security counter must equal the factory image's, or the unit could not
    /// return to the factory image after the update.
    #[serde(default)]
    pub selftest_image: Option<PathBuf>,
    /// The signed policy bundle the unit starts with.
    pub policy_bundle: PathBuf,
    /// The appliance config template (`warden.toml`); `device.id`, `device.product`,
    /// `link.device_cert` and `link.fleet_ca` are filled in per unit.
    pub config_template: PathBuf,
    /// The policy source the template's `policy.file` names.
    pub policy_file: PathBuf,
    /// The CA that signs the fleet's server certificate (the unit pins it).
    pub fleet_ca: PathBuf,
    /// Vendor roots installed into each unit's pluton.
    #[serde(rename = "vendor_root")]
    pub vendor_roots: Vec<VendorRootConfig>,
    /// The self-test.
    #[serde(default)]
    pub selftest: SelftestConfig,
    /// The fleet's registration API.
    pub fleet: FleetConfig,
    /// Where each unit's pluton keeps its keys.
    #[serde(default)]
    pub pluton: PlutonConfig,
    /// Days each unit's device certificate is valid (1 to
    /// [`MAX_DEVICE_CERTIFICATE_DAYS`]; default
    /// [`DEFAULT_DEVICE_CERTIFICATE_DAYS`]). The fleet refuses it once it has expired.
    #[serde(default = "default_device_certificate_days")]
    pub device_certificate_days: u32,
}

fn default_device_certificate_days() -> u32 {
    DEFAULT_DEVICE_CERTIFICATE_DAYS
}

/// `[pluton]`: the root of trust the station provisions each unit on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlutonConfig {
    /// `"software"` (keys in the unit's pluton state directory; the default) or `"tpm"`
    /// (the unit's TPM 2.0: the station must run where that TPM is reachable, on the
    /// unit itself in a factory boot or through `tcti`; needs a `warden-provision` built
    /// with the `tpm` feature).
    #[serde(default = "default_pluton_backend")]
    pub backend: String,
    /// The TPM's TCTI with `backend = "tpm"`: `device:/dev/tpmrm0` (the default) on the
    /// unit, `swtpm:host=…,port=…` for a software TPM.
    #[serde(default = "default_tcti")]
    pub tcti: String,
}

impl Default for PlutonConfig {
    fn default() -> Self {
        Self {
            backend: default_pluton_backend(),
            tcti: default_tcti(),
        }
    }
}

fn default_pluton_backend() -> String {
    "software".to_owned()
}

fn default_tcti() -> String {
    warden_pluton::server::DEFAULT_TCTI.to_owned()
}

impl PlutonConfig {
    /// The backend as pluton's server takes it (validated at load).
    pub fn backend(&self) -> warden_pluton::server::Backend {
        warden_pluton::server::Backend::of_kind(
            warden_pluton::backend_record::BackendKind::from_name(&self.backend)
                .unwrap_or(warden_pluton::backend_record::BackendKind::Software),
            self.tcti.clone(),
        )
    }
}

/// One vendor root public key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorRootConfig {
    /// SPKI PEM file (`warden-keychain` tooling writes these).
    pub public_key: PathBuf,
    /// `"image"`, `"policy"`.
    pub purposes: Vec<String>,
}

/// How the self-test boots an image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelftestConfig {
    /// Arguments the image's `bin/warden` is started with; exit status 0 within the
    /// timeout is a healthy boot.
    #[serde(default = "default_probe_args")]
    pub probe_args: Vec<String>,
    /// Seconds the probe may take.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout_secs: u64,
}

impl Default for SelftestConfig {
    fn default() -> Self {
        Self {
            probe_args: default_probe_args(),
            probe_timeout_secs: default_probe_timeout(),
        }
    }
}

fn default_probe_args() -> Vec<String> {
    vec!["--version".to_owned()]
}

fn default_probe_timeout() -> u64 {
    20
}

/// The fleet's registration API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Base URL (`https://fleet.factory.lan:8443`; `http://` sends the token in clear).
    pub url: String,
    /// PEM: the CA the fleet's HTTPS certificate chains to, the only one trusted
    /// (default: `fleet_ca`, the CA devices pin for the broker).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Environment variable holding the `provisioner` bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Or a file holding it (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Request timeout, seconds.
    #[serde(default = "default_fleet_timeout")]
    pub timeout_secs: u64,
}

fn default_fleet_timeout() -> u64 {
    15
}

/// The station config could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The TOML is malformed or has an unknown or missing field.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What was wrong.
        message: String,
    },
}

impl StationConfig {
    /// Read, parse, resolve and validate `path`.
    pub fn load(path: &Path) -> Result<Self, StationError> {
        let text = crate::files::read_text(path)?;
        let mut config: Self = toml::from_str(&text).map_err(|error| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(&text, span.start))
                .unwrap_or((1, 1));
            StationError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;
        // Absolute paths: the self-test starts images with another working directory.
        let absolute = std::path::absolute(path).map_err(|source| crate::files::FileError {
            operation: "resolve",
            path: path.to_owned(),
            source,
        })?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        config.resolve(base);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        for path in [
            &mut self.ca_dir,
            &mut self.units_dir,
            &mut self.factory_image,
            &mut self.policy_bundle,
            &mut self.config_template,
            &mut self.policy_file,
            &mut self.fleet_ca,
        ] {
            *path = base.join(&*path);
        }
        if let Some(image) = &mut self.selftest_image {
            *image = base.join(&*image);
        }
        if let Some(ca) = &mut self.fleet.ca {
            *ca = base.join(&*ca);
        }
        for root in &mut self.vendor_roots {
            root.public_key = base.join(&root.public_key);
        }
        if let Some(file) = &mut self.fleet.token_file {
            *file = base.join(&*file);
        }
    }

    fn validate(&self, path: &Path) -> Result<(), StationError> {
        let invalid = |field: &str, message: String| StationError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        if warden_os::image::ProductId::new(&self.product).is_none() {
            return Err(invalid(
                "product",
                format!(
                    "{:?} is not a valid product id (1 to 16 bytes)",
                    self.product
                ),
            ));
        }
        if self.group.trim().is_empty() {
            return Err(invalid("group", "must not be empty".into()));
        }
        if self.vendor_roots.is_empty() {
            return Err(invalid(
                "vendor_root",
                "at least one vendor root is required".into(),
            ));
        }
        for (index, root) in self.vendor_roots.iter().enumerate() {
            root.purpose_bits().map_err(|error| {
                invalid(&format!("vendor_root[{index}].purposes"), error.to_string())
            })?;
        }
        if self.fleet.token_env.is_some() == self.fleet.token_file.is_some() {
            return Err(invalid(
                "fleet",
                "set exactly one of `token_env` and `token_file`".into(),
            ));
        }
        if !self.fleet.url.starts_with("http://") && !self.fleet.url.starts_with("https://") {
            return Err(invalid(
                "fleet.url",
                format!("{:?} must start with http:// or https://", self.fleet.url),
            ));
        }
        match self.pluton.backend.as_str() {
            "software" => {}
            "tpm" if cfg!(feature = "tpm") => {
                if self.pluton.tcti.trim().is_empty() {
                    return Err(invalid("pluton.tcti", "must not be empty".into()));
                }
            }
            "tpm" => {
                return Err(invalid(
                    "pluton.backend",
                    "\"tpm\" needs a warden-provision built with the `tpm` feature (cargo build -p warden-provision --features tpm; Debian: libtss2-dev)".into(),
                ));
            }
            other => {
                return Err(invalid(
                    "pluton.backend",
                    format!("{other:?} is not a backend (software, tpm)"),
                ));
            }
        }
        if !(1..=MAX_DEVICE_CERTIFICATE_DAYS).contains(&self.device_certificate_days) {
            return Err(invalid(
                "device_certificate_days",
                format!(
                    "{} is not 1 to {MAX_DEVICE_CERTIFICATE_DAYS} days",
                    self.device_certificate_days
                ),
            ));
        }
        if self.selftest.probe_timeout_secs == 0 {
            return Err(invalid(
                "selftest.probe_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The image the self-test updates to.
    pub fn selftest_image(&self) -> &Path {
        self.selftest_image
            .as_deref()
            .unwrap_or(&self.factory_image)
    }

    /// The product as the image format's id.
    pub fn product_id(&self) -> warden_os::image::ProductId {
        // Validated at load.
        warden_os::image::ProductId::new(&self.product)
            .unwrap_or(warden_os::image::ProductId([0; 16]))
    }
}

impl VendorRootConfig {
    /// The purposes as pluton's bitmask.
    pub fn purpose_bits(&self) -> Result<u8, PurposeError> {
        purposes_from_names(self.purposes.iter().map(String::as_str)).map(Purpose::bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATION: &str = r#"
product = "warden-gw"
group = "Production"
ca_dir = "ca"
units_dir = "units"
factory_image = "factory.wim"
policy_bundle = "policy.bundle"
config_template = "warden.toml"
policy_file = "policy.toml"
fleet_ca = "fleet-ca.pem"

[[vendor_root]]
public_key = "vendor-root.pub.pem"
purposes = ["image"]

[fleet]
url = "http://127.0.0.1:9"
token_env = "T"
"#;

    fn load(extra: &str) -> Result<StationConfig, StationError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("station.toml");
        std::fs::write(&path, format!("{STATION}{extra}")).expect("write");
        StationConfig::load(&path)
    }

    fn invalid_field(result: Result<StationConfig, StationError>) -> (String, String) {
        match result {
            Err(StationError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn device_certificates_default_to_a_year_and_the_product_may_choose() {
        assert_eq!(
            load("").expect("loads").device_certificate_days,
            DEFAULT_DEVICE_CERTIFICATE_DAYS
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("station.toml");
        for (days, accepted) in [
            (90, true),
            (0, false),
            (MAX_DEVICE_CERTIFICATE_DAYS + 1, false),
        ] {
            std::fs::write(
                &path,
                format!("device_certificate_days = {days}\n{STATION}"),
            )
            .expect("write");
            match StationConfig::load(&path) {
                Ok(config) => {
                    assert!(accepted, "{days} accepted");
                    assert_eq!(config.device_certificate_days, days);
                }
                Err(StationError::Invalid { field, message, .. }) => {
                    assert!(!accepted, "{days} refused: {message}");
                    assert_eq!(field, "device_certificate_days");
                    assert!(message.contains(&days.to_string()), "{message}");
                }
                Err(other) => panic!("{other}"),
            }
        }
    }

    #[test]
    fn pluton_defaults_to_the_software_backend() {
        let config = load("").expect("loads");
        assert_eq!(
            config.pluton.backend(),
            warden_pluton::server::Backend::Software
        );
    }

    #[test]
    fn an_unknown_pluton_backend_is_refused_naming_the_field() {
        let (field, message) = invalid_field(load("\n[pluton]\nbackend = \"hsm\"\n"));
        assert_eq!(field, "pluton.backend");
        assert!(message.contains("\"hsm\""), "{message}");
    }

    #[cfg(not(feature = "tpm"))]
    #[test]
    fn the_tpm_backend_without_the_feature_is_refused_at_load() {
        let (field, message) = invalid_field(load("\n[pluton]\nbackend = \"tpm\"\n"));
        assert_eq!(field, "pluton.backend");
        assert!(message.contains("`tpm` feature"), "{message}");
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn the_tpm_backend_carries_its_tcti() {
        let config =
            load("\n[pluton]\nbackend = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\n")
                .expect("loads");
        assert_eq!(
            config.pluton.backend(),
            warden_pluton::server::Backend::Tpm {
                tcti: "swtpm:host=127.0.0.1,port=2321".into()
            }
        );
        let (field, _) = invalid_field(load("\n[pluton]\nbackend = \"tpm\"\ntcti = \" \"\n"));
        assert_eq!(field, "pluton.tcti");
    }
}
