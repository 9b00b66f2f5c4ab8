//! Fuzzes the bundle and tables decoders (and the evaluator over what decodes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_policy::fuzz_targets::decode_bundle(data);
});
