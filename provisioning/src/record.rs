//! The provisioning record of a unit (`factory/unit.json`) and the steps it names.
//!
//! Below both `unit` (which writes it) and `verify` and `batch` (which read it).

use serde::{Deserialize, Serialize};

use crate::files::read_text;
use crate::layout::UnitLayout;

/// One step of provisioning a unit (named in every failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Step {
    /// Create the unit's storage.
    Storage,
    /// Start the unit's pluton.
    StartPluton,
    /// Pluton creates the identity; the station reads the public key.
    Identity,
    /// A quote over the station's nonce proves pluton holds the key.
    ProofOfPossession,
    /// The device certificate, signed by the manufacturer CA.
    Certificate,
    /// Vendor root keys into pluton.
    RootKeys,
    /// Anti-rollback counter to the factory image's security counter.
    Counters,
    /// The appliance config, policy source, fleet CA, status-page password.
    Config,
    /// The signed policy bundle.
    PolicyBundle,
    /// Boot, A/B update, rollback.
    #[serde(rename = "self-test")]
    Selftest,
    /// The label.
    Label,
    /// Lock manufacturing state in pluton.
    Lock,
    /// Register the device in the fleet.
    Register,
    /// Write the record and the PROVISIONED marker.
    Finish,
}

impl Step {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Storage => "storage",
            Self::StartPluton => "start-pluton",
            Self::Identity => "identity",
            Self::ProofOfPossession => "proof-of-possession",
            Self::Certificate => "certificate",
            Self::RootKeys => "root-keys",
            Self::Counters => "counters",
            Self::Config => "config",
            Self::PolicyBundle => "policy-bundle",
            Self::Selftest => "self-test",
            Self::Label => "label",
            Self::Lock => "lock",
            Self::Register => "register",
            Self::Finish => "finish",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome written to `factory/unit.json` and the batch manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitResult {
    /// Provisioned, self-tested, locked and registered.
    Provisioned,
    /// Locked; registration not yet confirmed.
    Locked,
    /// A step failed.
    Failed,
}

/// The provisioning record (`factory/unit.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Serial number.
    pub serial: String,
    /// Device ID (certificate CN), once known.
    pub device_id: Option<String>,
    /// Certificate fingerprint, once issued.
    pub fingerprint: Option<String>,
    /// Product.
    pub product: String,
    /// Fleet group.
    pub group: String,
    /// Factory image version.
    pub image_version: String,
    /// Factory image measurement (hex).
    pub image_measurement: String,
    /// Factory image security counter (pluton counter 0).
    pub security_counter: u64,
    /// The self-test's stages.
    pub selftest: Vec<String>,
    /// The outcome.
    pub result: UnitResult,
    /// The failed step, if any.
    pub failed_step: Option<Step>,
    /// The error, if any.
    pub error: Option<String>,
    /// Seconds since the epoch when the record was written.
    pub written_at: u64,
}

/// Read a unit's record, if it has one.
pub fn read_record(layout: &UnitLayout) -> Option<UnitRecord> {
    let text = read_text(&layout.record_file()).ok()?;
    serde_json::from_str(&text).ok()
}
