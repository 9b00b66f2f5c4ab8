//! warden-os integration tests: crash points, a real SIGKILL, the update agent, the CLI.

mod agent;
mod crash;
mod delta;
mod monitor;
mod release;
mod revocation;
mod support;
