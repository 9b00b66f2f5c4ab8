//! The appliance's three roles, each a function over its ports: bridges, link, page.
//!
//! `warden run --config` (and `warden demo`) starts all three in one process over
//! [`crate::ports::in_process`] ports ([`crate::runtime`]); `warden run --manifest`
//! starts each in its own sandboxed compartment over IPC ports
//! ([`crate::compartments`]). The roles are the same code either way; each spawns its
//! tasks under the process's [`crate::supervision::Supervisor`], so a task that ends
//! ends the process with its name in either composition.

pub mod bridges;
pub mod link;
pub mod page;
