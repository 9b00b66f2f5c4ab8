//! cargo-fuzz target: `warden_image::fuzz_harness::image_header`.
//!
//! `cd os/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run image_header`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_image::fuzz_harness::image_header(data);
});
