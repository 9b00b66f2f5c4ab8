//! The wire vocabulary of Warden: one place for every fact that crosses a process or a
//! network boundary between a unit, the fleet and the provisioning station.
//!
//! A small crate, so the fleet, the station, the load generator and the simulators can
//! share the device's types without linking the device agent. Its one piece of I/O is
//! behind the `tls` feature: the link's TLS profile (TLS 1.3, ring, the fleet CA
//! pinned), which both ends of the link must agree on and so lives here once.

pub mod certificate_fields;
pub mod fleet_api;
pub mod renewal;
pub mod revocation;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topics;
pub mod validity;
pub mod value;
