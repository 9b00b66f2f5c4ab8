//! cargo-fuzz target: `warden_os::fuzz_harness::monitor_frames`.
//!
//! `cd os/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run monitor_frames`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_os::fuzz_harness::monitor_frames(data);
});
