//! The fleet store: devices and telemetry in SQLite (default) or PostgreSQL.
//!
//! [`Store`] and its write transaction live in `core`; the schema in `migrations`;
//! each concern's queries in its own module, an `impl Store` block. This file only
//! names them.

mod cluster;
mod commands;
mod core;
mod dashboard;
mod deployments;
mod migrations;
mod registry;
mod renewals;
mod reports;
mod revocations;
mod telemetry;

pub use self::core::{
    AttestationCounts, DEFAULT_FUTURE_SKEW, Histogram, INGEST_SECONDS_BUCKETS, READ_CONNECTIONS,
    REPLICA_ACQUIRE_TIMEOUT, REPLICA_CONNECTIONS, Store, StoreError, StoreHealthSnapshot,
};
pub use cluster::{Delivery, Presence};
pub use dashboard::DEVICE_STATUSES;
pub use deployments::NewDeployment;
pub use registry::{
    ChallengeUse, ENROLLED_GROUP, ENROLLED_IMAGE_VERSION, NewDevice, Product, ProductOutcome,
    RegisteredIdentity, Registration, is_product_name,
};
pub use renewals::{RENEWAL_COMPLETED, RENEWAL_ISSUED, RENEWAL_REFUSED, Renewal};
pub use telemetry::{Ingested, PRUNE_WINDOW_MS};
