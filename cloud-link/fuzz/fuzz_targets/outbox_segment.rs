//! cargo-fuzz target: `warden_link::outbox::fuzz_harness::outbox_segment`.
//!
//! `cd cloud-link/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run outbox_segment`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_link::outbox::fuzz_harness::outbox_segment(data);
});
