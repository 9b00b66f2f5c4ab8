//! Integration tests of the `warden` binary.

use std::path::Path;

/// The walking skeleton end to end (scenario in `hil/src/scenario.rs`): the demo's
/// simulated register reaches the fleet API with the configured scaling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_telemetry_reaches_the_fleet_with_configured_scaling() {
    let state = tempfile::tempdir().expect("tempdir");
    let report = warden_hil::scenario::telemetry_reaches_fleet(
        Path::new(env!("CARGO_BIN_EXE_warden")),
        state.path(),
    )
    .await
    .expect("scenario");
    assert_eq!(report.setpoint, 1450.0);
    assert!(
        report
            .temperatures
            .iter()
            .all(|t| (20.0..=26.0).contains(t)),
        "{:?}",
        report.temperatures
    );
}

#[test]
fn check_config_names_the_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, "[device]\nid = \"wd-1\"\nlocation = \"hall 3\"\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run warden");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warden.toml:3:1: unknown field `location`"),
        "{stderr}"
    );
}
