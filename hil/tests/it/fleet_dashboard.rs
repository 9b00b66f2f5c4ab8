//! The fleet dashboard's sign-in in a real Chromium over WebDriver: the page asks for
//! a token when the API needs one, refuses a wrong one, shows the fleet with a right
//! one, keeps the token out of the URL, keeps it across pages of the tab, and forgets
//! it on sign-out. (What each page shows is asserted in warden-fleet's own Chromium
//! test, on a fleet fed with devices, deployments and reports.)

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_fleet::auth::{Role, TokenConfig, hash_token};
use warden_hil::demo_pki::DemoPki;
use warden_test_support::browser::WebDriver;
use warden_wire::fleet_api::{DEVICES_PATH, PRODUCTS_PATH, ProductRequest, RegisterRequest};

const VIEWER_TOKEN: &str = "dashboard-viewer-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// Saves a screenshot of `driver`'s page and panics with `error` and where it is.
async fn fail_with_screenshot(driver: WebDriver, error: anyhow::Error) -> ! {
    let dir = std::env::temp_dir().join(format!("warden-fleet-signin-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let shot = dir.join("dashboard.png");
    let saved = driver.screenshot(&shot).await;
    if let Ok(dom) = driver.dom().await {
        eprintln!("DOM:\n{dom}");
    }
    driver.quit().await;
    panic!("{error:#}\nscreenshot: {} ({saved:?})", shot.display());
}

async fn is_hidden(driver: &WebDriver, id: &str) -> anyhow::Result<bool> {
    let value = driver
        .execute(
            "return document.getElementById(arguments[0]).hidden;",
            serde_json::json!([id]),
        )
        .await?;
    Ok(value == serde_json::Value::Bool(true))
}

async fn wait_until_shown(driver: &WebDriver, id: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    // A script may fail while a navigation (sign-out reloads) is under way: retry.
    while !matches!(is_hidden(driver, id).await, Ok(false)) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "#{id} is still hidden after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (Debian packages; .ci/run installs them)"]
async fn the_fleet_dashboard_signs_in_with_a_token_kept_out_of_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DemoPki::generate(&dir.path().join("pki")).expect("pki");
    let mut config = pki.fleet_config(dir.path(), 0, 0);
    config.api.anonymous_role = None;
    config.api.tokens.push(TokenConfig {
        name: "dashboard-viewer".into(),
        role: Role::Viewer,
        sha256: hash_token(VIEWER_TOKEN),
    });
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet starts");
    let base = format!("http://{}", fleet.http_address);

    // One registered device (through the API, as the provisioning station does).
    let admin = pki.fleet_token().expect("admin token");
    let http = reqwest::Client::new();
    let ca = std::fs::read_to_string(&pki.manufacturer_ca).expect("ca");
    let created = http
        .post(format!("{base}{PRODUCTS_PATH}"))
        .bearer_auth(&admin)
        .json(&ProductRequest {
            name: "press-guardian".into(),
            manufacturer_ca_pem: ca,
        })
        .send()
        .await
        .expect("post");
    assert!(created.status().is_success(), "{:?}", created.text().await);
    let registered = http
        .post(format!("{base}{DEVICES_PATH}"))
        .bearer_auth(&admin)
        .json(&RegisterRequest {
            device_id: pki.device_id.clone(),
            serial: "SN-1".into(),
            product: "press-guardian".into(),
            group: "Field Test".into(),
            certificate_pem: std::fs::read_to_string(&pki.device_cert).expect("cert"),
            image_version: "1.0.0".into(),
        })
        .send()
        .await
        .expect("post");
    assert_eq!(registered.status(), 201, "{:?}", registered.text().await);

    let driver = WebDriver::start().await.expect("chromedriver starts");
    let checked = async {
        driver.goto(&format!("{base}/")).await?;
        wait_until_shown(&driver, "login").await?;
        anyhow::ensure!(
            driver.text("#view").await?.is_empty(),
            "the page shows fleet data before signing in"
        );

        driver.type_into("#token", "not-a-token").await?;
        driver.click("#sign-in").await?;
        driver
            .wait_for_text("#login-error", WAIT, |t| t.contains("refused"))
            .await?;
        wait_until_shown(&driver, "login").await?;

        driver.type_into("#token", VIEWER_TOKEN).await?;
        driver.click("#sign-in").await?;
        driver
            .wait_for_text("#view h2", WAIT, |t| t == "Devices (1 registered)")
            .await?;
        driver
            .wait_for_text("[data-status=\"unknown\"] .count", WAIT, |t| t == "1")
            .await?;
        driver
            .wait_for_text(
                &format!("tr[data-device=\"{}\"] td:nth-child(3)", pki.device_id),
                WAIT,
                |t| t == "Field Test",
            )
            .await?;
        let url = driver.current_url().await?;
        anyhow::ensure!(
            url == format!("{base}/") && !url.contains(VIEWER_TOKEN),
            "the URL after signing in is {url}"
        );
        anyhow::ensure!(
            driver
                .execute(
                    "return document.getElementById('token').value;",
                    serde_json::json!([])
                )
                .await?
                == serde_json::json!(""),
            "the token stays in the input"
        );

        // Another page of the same tab needs no new sign-in.
        driver.goto(&format!("{base}/deployments")).await?;
        driver
            .wait_for_text("#view h2", WAIT, |t| t == "Deployments (0)")
            .await?;
        anyhow::ensure!(is_hidden(&driver, "login").await?, "asked to sign in again");
        let url = driver.current_url().await?;
        anyhow::ensure!(!url.contains(VIEWER_TOKEN), "the URL is {url}");

        // Signing out forgets the token.
        driver.click("#logout").await?;
        wait_until_shown(&driver, "login").await?;
        let kept = driver
            .execute("return sessionStorage.length;", serde_json::json!([]))
            .await?;
        anyhow::ensure!(kept == serde_json::json!(0), "sessionStorage keeps {kept}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = checked {
        fail_with_screenshot(driver, error).await;
    }
    driver.quit().await;
    shutdown.cancel();
    fleet.stopped().await;
}
