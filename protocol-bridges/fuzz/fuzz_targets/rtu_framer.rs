//! cargo-fuzz target: `warden_modbus::fuzz_harness::rtu_framer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_modbus::fuzz_harness::rtu_framer(data);
});
