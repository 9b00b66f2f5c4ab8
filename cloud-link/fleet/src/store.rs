//! The fleet store: devices and telemetry in SQLite (default) or PostgreSQL.
//!
//! [`Store`] and its write transaction live in `core`; the schema in `migrations`;
//! each concern's queries in its own module, an `impl Store` block. This file only
//! names them.

mod commands;
mod core;
mod dashboard;
mod deployments;
mod migrations;
mod registry;
mod reports;
mod telemetry;

pub use self::core::{READ_CONNECTIONS, Store, StoreError, StoreHealthSnapshot};
pub use dashboard::{
    DEVICE_STATUSES, DeviceRow, FleetCounts, SeenDevice, SignatureBucket, SignatureGroup,
    VersionCount, VersionReports,
};
pub use deployments::{
    DeploymentEvent, DeploymentMember, ImageRecord, NewDeployment, StoredDeployment,
};
pub use registry::{ChallengeUse, NewDevice, Product, ProductOutcome, Registration};
pub use reports::{CrashRate, ReportBucket, ReportGroup, StoredEvent, StoredReport};
pub use telemetry::{Device, Ingested, PRUNE_WINDOW_MS, StoredReading};
