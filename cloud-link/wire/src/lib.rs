//! The wire vocabulary of Warden: one place for every fact that crosses a process or a
//! network boundary between a unit, the fleet and the provisioning station.
//!
//! A small crate with no I/O, so the fleet, the station, the load generator and the
//! simulators can share the device's types without linking the device agent.

pub mod topics;
pub mod value;
