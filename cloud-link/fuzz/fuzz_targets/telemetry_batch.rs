//! cargo-fuzz target: `warden_link::outbox::fuzz_harness::telemetry_batch`
//! (`TelemetryBatch::decode`, reached as `warden_link::TelemetryBatch`).
//!
//! `cd cloud-link/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run telemetry_batch`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_link::outbox::fuzz_harness::telemetry_batch(data);
});
