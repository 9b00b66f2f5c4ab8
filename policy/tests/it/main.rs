//! Integration tests of warden-policy (one binary, one module per concern).

mod bundle;
mod fuzz_harness;
mod golden;
mod reference;
