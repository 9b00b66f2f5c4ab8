//! Fuzzes the tables decoder at the real-time core's capacities (as the firmware runs
//! it), against the same decoder at full capacities.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_policy::fuzz_targets::decode_core_tables(data);
});
