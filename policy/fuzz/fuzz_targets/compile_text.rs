//! Fuzzes the TOML policy compiler with arbitrary (UTF-8) input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_policy::fuzz_targets::compile_text(data);
});
