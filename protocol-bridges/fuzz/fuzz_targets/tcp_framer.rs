//! cargo-fuzz target: `warden_modbus::fuzz_harness::tcp_framer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_modbus::fuzz_harness::tcp_framer(data);
});
