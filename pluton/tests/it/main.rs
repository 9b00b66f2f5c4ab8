//! Integration tests for warden-pluton: backend, quotes, protocol, the process, crashes.

mod backend;
mod crash;
mod process;
mod protocol;
mod rights;
mod support;
#[cfg(feature = "tpm")]
mod tpm;
