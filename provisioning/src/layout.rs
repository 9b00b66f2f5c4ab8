//! Where things live in a unit's storage: the unit's root file system, as flashed.
//!
//! The directory mirrors the paths `appliance/manifest.toml` grants, so flashing it
//! as the unit's root gives the appliance what it boots from:
//!
//! ```text
//! etc/warden/warden.toml          the appliance config (device.id = certificate CN)
//! etc/warden/policy.toml          the default policy source
//! etc/warden/device.pem           the device certificate (manufacturer CA)
//! etc/warden/fleet-ca.pem         the fleet server CA the link pins
//! var/lib/warden/pluton/          pluton's state (identity, roots, counters, lock)
//! var/lib/warden/slots/a.wim      the factory image (b.wim: the self-test update)
//! var/lib/warden/boot/state       the A/B boot state (slot A confirmed, primary)
//! var/lib/warden/policy-bundles/  the signed policy bundle (current.bundle)
//! var/lib/warden/appliance/       status-page password hash, outbox
//! factory/unit.json               the provisioning record
//! factory/label.{png,svg,txt}     the label
//! factory/PROVISIONED | FAILED    the outcome
//! ```

use std::path::{Path, PathBuf};

/// Paths inside one unit's storage.
#[derive(Debug, Clone)]
pub struct UnitLayout {
    root: PathBuf,
}

impl UnitLayout {
    /// The unit stored at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The unit for `serial` under the station's units directory.
    pub fn for_serial(units_dir: &Path, serial: &str) -> Self {
        Self::new(units_dir.join(serial))
    }

    /// The unit's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `etc/warden`: config, certificate, policy source.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("etc/warden")
    }

    /// The appliance config.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("warden.toml")
    }

    /// The device certificate.
    pub fn device_cert(&self) -> PathBuf {
        self.config_dir().join(DEVICE_CERT_NAME)
    }

    /// The fleet server CA.
    pub fn fleet_ca(&self) -> PathBuf {
        self.config_dir().join(FLEET_CA_NAME)
    }

    /// `var/lib/warden`: the boot monitor's state directory (slots, boot state).
    pub fn boot_root(&self) -> PathBuf {
        self.root.join("var/lib/warden")
    }

    /// Pluton's state directory.
    pub fn pluton_state_dir(&self) -> PathBuf {
        self.boot_root().join("pluton")
    }

    /// Pluton's provisioning capability (written by pluton on first start).
    pub fn capability_file(&self) -> PathBuf {
        self.pluton_state_dir()
            .join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME)
    }

    /// Where the station runs pluton's socket while it works on the unit.
    pub fn station_socket(&self) -> PathBuf {
        let inside = self.root.join("run/pluton.sock");
        // Unix socket paths are limited to 107 bytes; deep unit paths use /tmp.
        if inside.as_os_str().len() < 100 {
            inside
        } else {
            std::env::temp_dir().join(format!(
                "warden-provision-{}-{}.sock",
                std::process::id(),
                hex::encode(short_hash(self.root.as_os_str().as_encoded_bytes()))
            ))
        }
    }

    /// Scratch space for unpacking images during the self-test.
    pub fn selftest_run_dir(&self) -> PathBuf {
        self.root.join("run/selftest")
    }

    /// `factory/`: the station's records about the unit.
    pub fn factory_dir(&self) -> PathBuf {
        self.root.join("factory")
    }

    /// The provisioning record.
    pub fn record_file(&self) -> PathBuf {
        self.factory_dir().join("unit.json")
    }

    /// Written last, when the unit is provisioned, locked and registered.
    pub fn provisioned_marker(&self) -> PathBuf {
        self.factory_dir().join("PROVISIONED")
    }

    /// Written when a step fails: the step and the error.
    pub fn failed_marker(&self) -> PathBuf {
        self.factory_dir().join("FAILED")
    }

    /// The label as PNG.
    pub fn label_png(&self) -> PathBuf {
        self.factory_dir().join("label.png")
    }

    /// The label as SVG.
    pub fn label_svg(&self) -> PathBuf {
        self.factory_dir().join("label.svg")
    }

    /// The label's text (with the status-page password).
    pub fn label_text(&self) -> PathBuf {
        self.factory_dir().join("label.txt")
    }
}

/// File name of the device certificate inside `etc/warden`.
pub const DEVICE_CERT_NAME: &str = "device.pem";
/// File name of the fleet server CA inside `etc/warden`.
pub const FLEET_CA_NAME: &str = "fleet-ca.pem";

fn short_hash(bytes: &[u8]) -> [u8; 6] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut out = [0u8; 6];
    out.copy_from_slice(&digest[..6]);
    out
}
