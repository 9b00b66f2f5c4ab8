#![doc = include_str!("../README.md")]

pub mod boot;
pub mod cli;
pub mod clock;
pub mod delta;
pub mod file_system;
pub mod fuzz_harness;
pub mod image_io;
pub mod launch;
pub mod monitor;
pub mod payload;
pub mod release;
pub mod reports;
mod revocation_install;
pub mod revocations;
pub mod root_of_trust;
pub mod sandbox;
pub mod slots;
pub mod trial;
pub mod update;

pub use boot::{BootConfig, BootDecision, BootError, BootMonitor};
pub use root_of_trust::{BootRootOfTrust, MemoryRootOfTrust, PlutonRootOfTrust};
pub use slots::{BootState, CrashVerdict, FailureReason, Slot, SlotStatus, TrialPolicy};
pub use trial::{HealthCheckPolicy, HealthReport, TrialHealthCheck, TrialVerdict};
/// The image format and verification core (re-exported).
pub use warden_image as image;
