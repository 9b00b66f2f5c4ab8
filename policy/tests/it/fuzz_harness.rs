//! The fuzz harnesses, run as proptests so `cargo test` covers them.

use proptest::prelude::*;
use warden_policy::fuzz_targets::{compile_text, decode_bundle, decode_core_tables};

const SEED: &str = include_str!("../../examples/plant.toml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiler_on_arbitrary_text(text in "\\PC{0,200}") {
        compile_text(text.as_bytes());
    }

    #[test]
    fn compiler_on_mutated_example(cut in 0..SEED.len(), insert in "[\\[\\]=\"., 0-9a-z_\n-]{0,12}") {
        let mut text = SEED.as_bytes()[..cut].to_vec();
        text.extend_from_slice(insert.as_bytes());
        text.extend_from_slice(&SEED.as_bytes()[cut..]);
        compile_text(&text);
    }

    #[test]
    fn bundle_decoder_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_bundle(&bytes);
    }

    #[test]
    fn bundle_decoder_on_mutated_tables(flip in 0..2000usize, byte in any::<u8>(), cut in 0..2000usize) {
        let policy = warden_policy::compile(SEED, "plant.toml").expect("example compiles").policy;
        let mut tables = policy.encode();
        let at = flip % tables.len();
        tables[at] = byte;
        tables.truncate(cut.max(1));
        decode_bundle(&tables);
    }

    #[test]
    fn core_decoder_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_core_tables(&bytes);
    }

    #[test]
    fn core_decoder_on_mutated_tables(flip in 0..2000usize, byte in any::<u8>(), cut in 0..2000usize) {
        let policy = warden_policy::compile(SEED, "plant.toml").expect("example compiles").policy;
        let mut tables = policy.encode();
        decode_core_tables(&tables);
        let at = flip % tables.len();
        tables[at] = byte;
        tables.truncate(cut.max(1));
        decode_core_tables(&tables);
    }
}
