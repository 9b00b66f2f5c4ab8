//! Integration tests: the real station binary, the real pluton role, the real fleet.

mod fixture;
mod station;
#[cfg(feature = "tpm")]
mod tpm;
