//! The update agent and the update-window policy.

pub mod agent;
mod http_get;
pub mod window;

pub use agent::{
    DeltaOffer, UpdateAgent, UpdateError, UpdateEvent, UpdateOffer, UpdateOutcome, install_staged,
};
pub use window::{MaintenanceWindow, UpdateWindowPolicy, WindowDecision};
