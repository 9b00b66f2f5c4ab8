//! Provisioning throughput: units per minute for one batch, end to end.
//!
//! `cargo bench -p warden-provision --bench batch` (units: `WARDEN_PROVISION_BENCH_UNITS`,
//! default 100). Sets up a factory like the integration tests (vendor keys, signed
//! images, policy bundle, manufacturer CA, the real `warden-fleet` process), runs
//! `warden-provision batch --count N` once and prints the figures. Every unit gets the
//! full pipeline: its own pluton process, identity, certificate, roots, config, bundle,
//! the self-test (4 installs, 8 verified boots, 3 probes), label, lock, registration.

use std::time::Instant;

#[allow(dead_code)]
#[path = "../tests/it/fixture.rs"]
mod fixture;

fn main() {
    let units: u64 = std::env::var("WARDEN_PROVISION_BENCH_UNITS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100);
    let factory = fixture::Factory::new(fixture::Probe::Healthy, true);
    let count = units.to_string();
    let started = Instant::now();
    let output = factory.run(&["batch", "--batch", "bench", "--count", &count, "--quiet"]);
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "batch failed: {}",
        fixture::stderr(&output)
    );
    print!("{}", fixture::stdout(&output));
    let seconds = elapsed.as_secs_f64();
    println!(
        "provisioning: {units} units in {seconds:.1} s (process wall time, CA unlock and fleet product included)"
    );
    println!(
        "provisioning: {:.1} units/min, {:.0} ms/unit",
        units as f64 / (seconds / 60.0),
        seconds * 1000.0 / units as f64
    );
}
