#![doc = include_str!("../README.md")]

pub mod batch;
pub mod ca;
pub mod files;
pub mod fleet;
pub mod key_envelope;
pub mod label;
pub mod layout;
pub mod passphrase;
pub mod pluton_process;
pub mod record;
pub mod release_keys;
pub mod selftest;
pub mod station;
pub mod station_context;
pub mod unit;
pub mod unit_config;
pub mod verify;

pub use record::Step;
pub use station::StationConfig;
pub use station_context::Station;
pub use unit::{UnitError, provision_unit};
