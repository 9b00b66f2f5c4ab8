//! Integration tests of the `warden` binary.

use std::path::Path;

mod ble_and_privnet;
mod bundle_floor;
mod compartments;
mod offline_updates;
mod operations;
mod pluton_attacks;
mod status_page;
mod updates;

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

/// Commands from the fleet API reach the equipment only through the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_commands_pass_the_device_policy() {
    let state = tempfile::tempdir().expect("tempdir");
    warden_hil::scenario::commands_pass_the_policy(
        Path::new(env!("CARGO_BIN_EXE_warden")),
        state.path(),
    )
    .await
    .expect("scenario");
}

/// A signed policy bundle from the fleet replaces the running policy; a tampered one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_policy_bundles_from_the_fleet_replace_the_policy() {
    let state = tempfile::tempdir().expect("tempdir");
    warden_hil::scenario::signed_policy_bundles_replace_the_policy(
        Path::new(env!("CARGO_BIN_EXE_warden")),
        state.path(),
    )
    .await
    .expect("scenario");
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

/// Both web pages, rendered by a real Chromium, show the simulated device's values
/// (the status page after logging in with the password the demo printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (Debian packages; .ci/run installs them)"]
async fn dashboard_and_status_page_render_live_values_in_chromium() {
    use warden_hil::scenario;
    use warden_test_support::browser;
    let state = tempfile::tempdir().expect("tempdir");
    let demo = scenario::DemoProcess::start(Path::new(env!("CARGO_BIN_EXE_warden")), state.path())
        .await
        .expect("demo starts");
    let setpoint = scenario::wait_for_reading(&demo, "line1/spindle_setpoint")
        .await
        .expect("reading");
    let screenshot_path = |name: &str| {
        std::env::temp_dir().join(format!("warden-{name}-failure-{}.png", std::process::id()))
    };

    // The demo's fleet allows anonymous reads on loopback: a DOM dump is enough. The
    // latest values are on the device's page.
    let url = format!("{}/devices/{}", demo.urls.fleet, demo.urls.device_id);
    let expected = format!(
        "data-point=\"line1/spindle_setpoint\"><td>line1/spindle_setpoint</td><td class=\"value\">{setpoint}</td>"
    );
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browser::dump_dom(&url)
    })
    .await
    .expect("join")
    .expect("chromium runs");
    if !dom.contains(&expected) || !dom.contains(&demo.urls.device_id) {
        let shot = screenshot_path("dashboard");
        let _ = browser::screenshot(&url, &shot);
        panic!(
            "{url} does not show {expected:?} (screenshot: {}):\n{dom}",
            shot.display()
        );
    }

    // The status page: log in, then the values refresh in place.
    let driver = browser::WebDriver::start()
        .await
        .expect("chromedriver starts");
    let expected =
        format!("data-point=\"spindle_setpoint\"><td>spindle_setpoint</td><td>{setpoint}</td>");
    let checked = async {
        driver
            .goto(&format!("{}/login", demo.urls.status_page))
            .await?;
        driver
            .type_into("#password", &demo.urls.status_password)
            .await?;
        driver.click_and_wait_for_navigation("#submit").await?;
        driver
            .wait_for_text(
                "tr[data-point=\"spindle_setpoint\"] td:nth-child(2)",
                std::time::Duration::from_secs(15),
                |t| t == setpoint.to_string(),
            )
            .await?;
        let dom = driver.dom().await?;
        anyhow::ensure!(
            dom.contains(&expected) && dom.contains(&demo.urls.device_id),
            "the status page does not show {expected:?}:\n{dom}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = checked {
        let shot = screenshot_path("status-page");
        let _ = driver.screenshot(&shot).await;
        driver.quit().await;
        panic!("{error:#} (screenshot: {})", shot.display());
    }
    driver.quit().await;
    demo.stop().await.expect("clean stop");
}
