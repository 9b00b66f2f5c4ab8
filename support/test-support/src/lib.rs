//! Fixtures the tests of several crates share: real components started by a test.
//!
//! Dev-only: every crate lists this under `[dev-dependencies]`, so none of it ships.
//! Each fixture is a guard that stops what it started when dropped, panics included.
//! The tests that use a real component are `#[ignore = "needs …"]`; `.ci/run` installs
//! the Debian packages and runs them.

pub mod browser;
pub mod mosquitto;
pub mod network_namespaces;
pub mod ports;
pub mod postgres;
pub mod range_server;
pub mod swtpm;
