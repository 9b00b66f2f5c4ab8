//! cargo-fuzz target: `warden_rtcore_mailbox::fuzz_harness::mailbox_frames`.
//!
//! `cd protocol-bridges/rtcore/mailbox/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run mailbox_frames`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_rtcore_mailbox::fuzz_harness::mailbox_frames(data);
});
