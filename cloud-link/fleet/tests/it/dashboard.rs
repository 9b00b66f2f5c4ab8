//! The dashboard in a real headless Chromium (Debian's `chromium`): a fleet fed only
//! through its real paths (registration API, MQTT telemetry, attestation quotes,
//! image upload, deployments, update statuses, failure reports), each page opened
//! and what it shows asserted. A failed assertion saves a screenshot of the page.
//!
//! The browser is `warden-test-support`'s (`--dump-dom`, `--screenshot`, a closed
//! network's flags and `WARDEN_CHROMIUM`), in a tall window. The pages are
//! read anonymously (`anonymous_role = "viewer"`, as in the demo): a DOM dump cannot
//! type a token. The login form is covered by hil's WebDriver test.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::QoS;
use rustls::SignatureScheme;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use warden_test_support::browser;
use warden_wire::topics::{Reading, TelemetryBatch, TwinReported, twin_reported_topic};
use warden_wire::topics::{from_hex, telemetry_topic, to_hex};

use super::registry::{create_product, register};
use super::rollout::{signed_image, upload};
use super::{Fixture, OPERATOR, SimulatedDevice, VIEWER, eventually, fleet_with};

/// Generous: the machine is shared; nothing here asserts a duration.
const WAIT: Duration = Duration::from_secs(30);

// ---- the browser ----

/// A tall window: the dashboard's sections stack.
const WINDOW: (u32, u32) = (1400, 2400);

/// The DOM of `url` after its scripts ran.
fn dump_dom(url: &str) -> String {
    browser::dump_dom_in_window(url, WINDOW)
        .unwrap_or_else(|error| panic!("chromium on {url}: {error}"))
}

/// Where failure screenshots go (named in the failure message).
fn screenshot_dir() -> PathBuf {
    std::env::temp_dir().join(format!("warden-fleet-dashboard-{}", std::process::id()))
}

/// Opens `url` and checks its DOM with `check`; on failure saves a screenshot and
/// panics naming it.
async fn page(url: String, name: &'static str, check: impl Fn(&str) -> Result<(), String>) {
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || dump_dom(&url)
    })
    .await
    .expect("join");
    if let Err(problem) = check(&dom) {
        let dir = screenshot_dir();
        let _ = std::fs::create_dir_all(&dir);
        let shot = dir.join(format!("{name}.png"));
        let taken = tokio::task::spawn_blocking({
            let (url, shot) = (url.clone(), shot.clone());
            move || browser::screenshot_in_window(&url, &shot, WINDOW)
        })
        .await
        .expect("join");
        panic!(
            "{name} page {url}: {problem}\nscreenshot: {} ({taken:?})\nDOM:\n{dom}",
            shot.display()
        );
    }
}

/// The HTML of the first element that starts at `marker` (an attribute written
/// last in the start tag, e.g. `data-wave="1">`) up to `end`.
fn fragment<'a>(dom: &'a str, marker: &str, end: &str) -> Result<&'a str, String> {
    let start = dom
        .find(marker)
        .ok_or_else(|| format!("nothing shows {marker:?}"))?;
    let rest = &dom[start..];
    Ok(&rest[..rest.find(end).unwrap_or(rest.len())])
}

fn shows(haystack: &str, wanted: &str) -> Result<(), String> {
    if haystack.contains(wanted) {
        Ok(())
    } else {
        Err(format!("{wanted:?} is not shown in {haystack:?}"))
    }
}

// ---- the device side: quotes as pluton makes them, signed with the device's key ----

/// Pluton's `WPQ1` quote layout (as in the attestation tests), signed with the
/// device's TLS key.
fn quote(fx: &Fixture, device: &str, nonce: &[u8], image_register: [u8; 32]) -> Vec<u8> {
    let pem = std::fs::read_to_string(fx.dir.path().join(format!("{device}.key"))).expect("key");
    let pair = rcgen::KeyPair::from_pem(&pem).expect("key pair");
    let public_key: [u8; 65] = pair.public_key_raw().try_into().expect("P-256 key");
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let key = rustls::crypto::ring::sign::any_ecdsa_type(&der).expect("ecdsa key");
    let device_id = warden_pluton::DeviceId::of_public_key(&public_key);
    let mut body = b"WPQ1".to_vec();
    body.extend([1, 8, 8, u8::try_from(nonce.len()).expect("nonce length")]);
    body.extend(device_id.0);
    body.extend(7u32.to_le_bytes());
    body.extend(nonce);
    body.extend(image_register);
    body.extend([0u8; 32 * 7]);
    body.extend([0u8; 8 * 8]);
    let signer = key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .expect("P-256 scheme");
    let message = [warden_pluton::quote::QUOTE_SIGNING_PREFIX, &body].concat();
    let der = signer.sign(&message).expect("sign");
    // ASN.1 SEQUENCE { r, s } to pluton's 64-byte r ‖ s.
    let mut raw = [0u8; 64];
    let mut at = 2 + usize::from(der[1] & 0x80 != 0);
    for half in raw.chunks_mut(32) {
        let len = usize::from(der[at + 1]);
        let value = &der[at + 2..at + 2 + len];
        let value = &value[value.len().saturating_sub(32)..];
        half[32 - value.len()..].copy_from_slice(value);
        at += 2 + len;
    }
    body.extend(raw);
    assert!(
        warden_pluton::verify_quote(&body, &public_key, nonce).is_ok(),
        "the test's quote is malformed"
    );
    body
}

/// Answers the fleet's connect-time challenge with a quote over `image_register`.
async fn answer_challenge(fx: &Fixture, device: &mut SimulatedDevice, image_register: [u8; 32]) {
    let challenge = device
        .next_on("attestation/challenge", WAIT)
        .await
        .unwrap_or_else(|| panic!("{} is challenged on connect", device.id));
    let nonce = from_hex(challenge["nonce"].as_str().expect("nonce")).expect("hex nonce");
    let quote = quote(fx, &device.id, &nonce, image_register);
    device
        .publish(
            "attestation/quote",
            &json!({"v": 1, "nonce": to_hex(&nonce), "quote": to_hex(&quote)}),
        )
        .await;
}

/// What boot leaves in the image register after measuring `measurement` (hex).
fn booted(measurement_hex: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(from_hex(measurement_hex).expect("hex"))
        .finalize()
        .into()
}

fn now_ms() -> u64 {
    u64::try_from(warden_fleet::clock::now_ms()).expect("after 1970")
}

fn crash(id: &str, version: &str, seq: u64) -> serde_json::Value {
    json!({
        "v": 1,
        "id": id,
        "ts_ms": now_ms() - 60_000 + seq,
        "compartment": "bridge-line1",
        "kind": "crash",
        "image_version": version,
        "signature": "bridge-line1/crash/index out of bounds",
        "message": format!("index out of bounds: the len is 3 but the index is {seq}"),
        "delivery": { "stream": "control", "epoch": 3, "seq": seq },
    })
}

/// Polls `path` (viewer token) until `check` accepts its JSON; the JSON.
async fn api_until(
    fx: &Fixture,
    path: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let found = eventually(WAIT, || async {
        let (status, body) = fx.get(VIEWER, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        *last.lock().expect("lock") = body.clone();
        check(&body).then_some(body)
    })
    .await;
    found.unwrap_or_else(|| panic!("{what}: {path} never matched; last {:?}", last.lock()))
}

/// What [`dashboard_contract`] made.
pub(crate) struct Fed {
    /// The deployment halted in its second wave.
    first_id: String,
    /// The deployment advancing, its one device downloading.
    second_id: String,
    /// The connected devices (online while they are kept): wd-a, b, c, d and f.
    devices: Vec<SimulatedDevice>,
}

/// Feeds `fx` through its real paths (registration and revocation API, quotes,
/// telemetry, image uploads, two deployments, update statuses, crash reports) and
/// checks what the dashboard endpoints answer, on whatever store the fixture uses.
pub(crate) async fn dashboard_contract(fx: &Fixture) -> Fed {
    let p = fx.dir.path();
    create_product(fx).await;
    // Production: a, b, c, d; Field Test: f; Development: g (never connects);
    // e is revoked.
    for (id, group) in [
        ("wd-a", "Production"),
        ("wd-b", "Production"),
        ("wd-c", "Production"),
        ("wd-d", "Production"),
        ("wd-e", "Production"),
        ("wd-f", "Field Test"),
        ("wd-g", "Development"),
    ] {
        fx.maker.issue(p, id, id, false);
        register(fx, id, id, group).await;
    }
    let (status, revoked) = fx
        .post(OPERATOR, "/api/v1/devices/wd-e/revoke", &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, old) = upload(
        fx,
        OPERATOR,
        signed_image(&fx.vendor_root, "press-guardian", (1, 0, 0)),
    )
    .await;
    assert_eq!(status, 201, "{old}");
    let running = booted(old["measurement"].as_str().expect("measurement"));
    let (status, new) = upload(
        fx,
        OPERATOR,
        signed_image(&fx.vendor_root, "press-guardian", (1, 1, 0)),
    )
    .await;
    assert_eq!(status, 201, "{new}");
    let new_sha = new["sha256"].as_str().expect("sha").to_owned();

    // Five devices connect and answer their challenge: four run the known 1.0.0
    // release, wd-d an image that is no release (untrusted).
    let mut devices = Vec::new();
    for id in ["wd-a", "wd-b", "wd-c", "wd-d", "wd-f"] {
        let mut device = SimulatedDevice::connect(fx, id, id)
            .await
            .expect("connects");
        let register0 = if id == "wd-d" { [7u8; 32] } else { running };
        answer_challenge(fx, &mut device, register0).await;
        devices.push(device);
    }
    let [a, b, c, _, f] = &mut devices[..] else {
        unreachable!("five devices")
    };
    api_until(fx, "/api/v1/dashboard/summary", "attested", |s| {
        s["by_status"]["trusted"] == 4 && s["by_status"]["untrusted"] == 1
    })
    .await;

    // wd-a sends twelve readings of one point.
    let start = now_ms() - 12_000;
    for seq in 0..12u64 {
        let batch = TelemetryBatch {
            v: 1,
            stream: "line1".into(),
            epoch: 1,
            seq,
            readings: vec![Reading::number(
                "line1/temperature".into(),
                20.0 + (seq % 5) as f64,
                "°C".into(),
                start + seq * 1000,
            )],
        };
        a.client
            .publish(
                telemetry_topic("wd-a"),
                QoS::AtLeastOnce,
                false,
                batch.encode(),
            )
            .await
            .expect("queue");
    }

    // Deployment 1 in three waves: wd-a confirms, wd-b crashes on 1.1.0: halted.
    let (status, first) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({
                "image": new_sha, "group": "Production",
                "waves": [{ "count": 1 }, { "count": 1 }, { "percent": 100 }],
                "success_threshold": 1.0, "failure_threshold": 0.5,
            }),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    let offer = a
        .next_on("updates/offer", WAIT)
        .await
        .expect("wd-a is offered 1.1.0");
    for state in ["downloading", "installed", "trial", "confirmed"] {
        a.publish(
            "updates/status",
            &json!({ "v": 1, "id": offer["id"], "state": state, "detail": "" }),
        )
        .await;
    }
    b.next_on("updates/offer", WAIT)
        .await
        .expect("wd-b is offered 1.1.0 in wave 2");
    b.publish("reports", &crash("r1", "1.1.0", 1)).await;
    c.publish("reports", &crash("r1", "1.0.0", 1)).await;
    c.publish("reports", &crash("r2", "1.0.0", 2)).await;
    api_until(
        fx,
        &format!("/api/v1/deployments/{first_id}"),
        "halted",
        |d| d["state"] == "halted",
    )
    .await;

    // Deployment 2 to Field Test: wd-f downloads (advancing).
    let (status, second) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({ "image": new_sha, "group": "Field Test" }),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    let second_id = second["id"].as_str().expect("id").to_owned();
    let offer = f
        .next_on("updates/offer", WAIT)
        .await
        .expect("wd-f is offered 1.1.0");
    f.publish(
        "updates/status",
        &json!({ "v": 1, "id": offer["id"], "state": "downloading", "detail": "4096" }),
    )
    .await;

    // Everything has arrived (checked through the API) before a page is opened.
    api_until(fx, "/api/v1/dashboard/deployments", "progress", |all| {
        all.as_array().is_some_and(|all| {
            all.iter()
                .any(|d| d["id"] == second_id.as_str() && d["waves"][0]["in_progress"] == 1)
        })
    })
    .await;
    api_until(fx, "/api/v1/dashboard/report-groups", "reports", |groups| {
        groups[0]["count"] == 3
    })
    .await;
    api_until(
        fx,
        "/api/v1/devices/wd-a/telemetry?limit=100",
        "telemetry",
        |t| t["readings"].as_array().map(Vec::len) == Some(12),
    )
    .await;

    check_dashboard_api(fx, &first_id, &second_id).await;
    Fed {
        first_id,
        second_id,
        devices,
    }
}

/// What the dashboard endpoints answer about the fleet [`dashboard_contract`] fed.
async fn check_dashboard_api(fx: &Fixture, first_id: &str, second_id: &str) {
    let (status, summary) = fx.get(VIEWER, "/api/v1/dashboard/summary").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["registered"], 7, "{summary}");
    assert_eq!(
        summary["by_status"],
        json!({"trusted": 4, "unverified": 0, "untrusted": 1, "unknown": 1, "revoked": 1}),
        "{summary}"
    );
    assert_eq!(
        summary["by_version"],
        json!([
            {"product": "press-guardian", "image_version": "1.0.0", "devices": 5},
            {"product": "press-guardian", "image_version": "1.1.0", "devices": 1},
        ]),
        "{summary}"
    );
    assert_eq!(summary["connectivity"], json!({"online": 5, "offline": 1}));
    assert_eq!(
        summary["deployments_by_state"],
        json!({"advancing": 1, "halted": 1, "complete": 0})
    );
    let in_progress = summary["deployments_in_progress"].as_array().expect("list");
    assert_eq!(in_progress.len(), 1, "{summary}");
    assert_eq!(in_progress[0]["id"], second_id);

    let (_, devices) = fx.get(VIEWER, "/api/v1/dashboard/devices").await;
    let rows: Vec<_> = devices
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap_or_default().to_owned(),
                d["status"].as_str().unwrap_or_default().to_owned(),
                d["online"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    let row = |id: &str, status: &str, online: bool| (id.to_owned(), status.to_owned(), online);
    assert_eq!(
        rows,
        vec![
            row("wd-a", "trusted", true),
            row("wd-b", "trusted", true),
            row("wd-c", "trusted", true),
            row("wd-d", "untrusted", true),
            row("wd-e", "revoked", false),
            row("wd-f", "trusted", true),
            row("wd-g", "unknown", false),
        ]
    );
    // Pages and ID prefixes.
    let ids = |devices: &serde_json::Value| -> Vec<String> {
        devices
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|d| d["device_id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, page) = fx
        .get(VIEWER, "/api/v1/dashboard/devices?offset=2&limit=2")
        .await;
    assert_eq!(ids(&page), ["wd-c", "wd-d"], "{page}");
    let (_, found) = fx
        .get(VIEWER, "/api/v1/dashboard/devices?prefix=wd-f")
        .await;
    assert_eq!(ids(&found), ["wd-f"], "{found}");
    let (status, refused) = fx.get(VIEWER, "/api/v1/dashboard/devices?limit=0").await;
    assert_eq!(status, 400, "{refused}");

    let (status, detail) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-a").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["online"], true);
    assert_eq!(detail["registered"]["image_version"], "1.1.0");
    assert_eq!(detail["latest"][0]["point"], "line1/temperature");
    assert_eq!(detail["latest"][0]["value"], 21.0);
    assert!(detail["seen"]["last_seen_ms"].is_i64(), "{detail}");
    let (_, detail) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-c").await;
    assert_eq!(
        detail["reports"].as_array().map(Vec::len),
        Some(2),
        "{detail}"
    );
    assert_eq!(
        fx.get(VIEWER, "/api/v1/dashboard/devices/wd-nobody")
            .await
            .0,
        404
    );

    let (_, deployments) = fx.get(VIEWER, "/api/v1/dashboard/deployments").await;
    let find = |id: &str| {
        deployments
            .as_array()
            .and_then(|all| all.iter().find(|d| d["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no deployment {id} in {deployments}"))
    };
    let first = find(first_id);
    assert_eq!(first["state"], "halted");
    let waves: Vec<_> = first["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| {
            (
                w["status"].as_str().unwrap_or_default().to_owned(),
                [
                    "targeted",
                    "offered",
                    "succeeded",
                    "failed",
                    "crashed",
                    "in_progress",
                ]
                .map(|field| w[field].as_i64().unwrap_or(-1)),
            )
        })
        .collect();
    assert_eq!(
        waves,
        vec![
            ("succeeded".to_owned(), [1, 1, 1, 0, 0, 0]),
            ("halted".to_owned(), [1, 1, 0, 0, 1, 0]),
            ("pending".to_owned(), [2, 0, 0, 0, 0, 0]),
        ],
        "{first}"
    );
    let second = find(second_id);
    assert_eq!(second["state"], "advancing");
    assert_eq!(second["waves"][0]["in_progress"], 1, "{second}");

    let (_, groups) = fx.get(VIEWER, "/api/v1/dashboard/report-groups").await;
    assert_eq!(
        groups[0]["signature"],
        "bridge-line1/crash/index out of bounds"
    );
    assert_eq!(groups[0]["count"], 3);
    assert_eq!(groups[0]["devices"], 2);
    assert_eq!(
        groups[0]["versions"],
        json!([{"image_version": "1.0.0", "count": 2}, {"image_version": "1.1.0", "count": 1}])
    );
    assert_eq!(
        fx.get(VIEWER, "/api/v1/dashboard/report-groups?bucket_ms=10")
            .await
            .0,
        400
    );
}

/// The endpoints' numbers, without a browser; and they need a token, the pages not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_endpoints_count_the_fleet_for_viewers_only() {
    let fx = fleet_with(None, |_| {}).await;
    let _fed = dashboard_contract(&fx).await;
    let anonymous = reqwest::get(fx.url("/api/v1/dashboard/summary"))
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);
    for page in ["/", "/devices/wd-a", "/deployments", "/reports"] {
        let shell = reqwest::get(fx.url(page)).await.expect("get");
        assert_eq!(shell.status(), 200, "{page}");
        let policy = shell
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe"),
            "{page}: {policy}"
        );
        let body = shell.text().await.expect("body");
        assert!(!body.contains("wd-a"), "{page} holds fleet data: {body}");
    }
    let script = reqwest::get(fx.url("/assets/dashboard.js"))
        .await
        .expect("get");
    assert_eq!(
        script
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/javascript; charset=utf-8")
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (Debian package; .ci/run installs it)"]
async fn the_dashboard_shows_counts_charts_waves_and_report_groups_in_chromium() {
    let fx = fleet_with(None, |config| {
        config.api.anonymous_role = Some(warden_fleet::auth::Role::Viewer);
    })
    .await;
    // `fed` keeps the devices connected until the pages are checked.
    let mut fed = dashboard_contract(&fx).await;
    let (first_id, second_id) = (fed.first_id.clone(), fed.second_id.clone());

    // Overview: counts by status, connection and version; deployments in progress;
    // the device list; latest values.
    page(fx.url("/"), "overview", |dom| {
        for (status, count) in [
            ("trusted", 4),
            ("untrusted", 1),
            ("unknown", 1),
            ("revoked", 1),
        ] {
            shows(
                dom,
                &format!("data-status=\"{status}\"><div class=\"count\">{count}</div>"),
            )?;
        }
        shows(dom, "Devices (7 registered)")?;
        // a, b, c, d, f connected; g never did; e is revoked (not counted).
        shows(
            dom,
            "data-connectivity=\"online\"><div class=\"count\">5</div>",
        )?;
        shows(
            dom,
            "data-connectivity=\"offline\"><div class=\"count\">1</div>",
        )?;
        shows(
            fragment(dom, "data-version=\"press-guardian/1.0.0\">", "</tr>")?,
            "data-field=\"devices\">5<",
        )?;
        shows(
            fragment(dom, "data-version=\"press-guardian/1.1.0\">", "</tr>")?,
            "data-field=\"devices\">1<",
        )?;
        let in_progress = fragment(dom, "id=\"deployments-in-progress\"", "</table>")?;
        shows(in_progress, &second_id)?;
        if in_progress.contains(&first_id) {
            return Err(format!("halted {first_id} is listed as in progress"));
        }
        shows(
            fragment(dom, "data-device=\"wd-g\">", "</tr>")?,
            "data-field=\"connection\">offline<",
        )?;
        shows(
            fragment(dom, "data-device=\"wd-d\">", "</tr>")?,
            "data-field=\"status\">untrusted<",
        )?;
        shows(dom, "devices 1–7")
    })
    .await;
    // The device list follows an ID prefix from the page's URL (a GET form).
    page(fx.url("/?prefix=wd-f"), "overview-prefix", |dom| {
        shows(dom, "data-device=\"wd-f\"")?;
        shows(dom, "devices 1–1")?;
        if dom.contains("data-device=\"wd-a\"") {
            return Err("wd-a is listed under the prefix wd-f".to_owned());
        }
        Ok(())
    })
    .await;

    // wd-a's page: identity, versions, status, and a chart with its twelve points.
    page(fx.url("/devices/wd-a"), "device", |dom| {
        shows(
            dom,
            "data-point=\"line1/temperature\"><td>line1/temperature</td><td class=\"value\">21</td>",
        )?;
        shows(
            dom,
            "data-field=\"group\"><th>group</th><td>Production</td>",
        )?;
        shows(
            dom,
            "data-field=\"image_version\"><th>image version</th><td>1.1.0</td>",
        )?;
        shows(
            fragment(dom, "data-field=\"attestation\">", "</tr>")?,
            ">trusted<",
        )?;
        shows(
            fragment(dom, "data-field=\"connection\">", "</tr>")?,
            ">online<",
        )?;
        let chart = fragment(
            dom,
            "class=\"chart\" data-point=\"line1/temperature\">",
            "</figure>",
        )?;
        shows(chart, "(12 readings)")?;
        shows(chart, "data-count=\"12\"")?;
        let dots = chart.matches("<circle").count();
        let pairs = fragment(chart, "<polyline", ">")?.matches(',').count();
        if dots == 12 && pairs == 12 {
            Ok(())
        } else {
            Err(format!(
                "the chart draws {dots} dots and {pairs} line points, not 12"
            ))
        }
    })
    .await;

    // wd-f reports two points: pressure with an outage in the middle and a value with
    // float noise from scaling, flow only after the outage. Its page shows the value as
    // a person reads it, leaves a gap in the chart, draws both charts over one span,
    // and says its empty report table is empty.
    let start = now_ms() - 60_000;
    // 73.10000000000001 is the highest value: the chart's axis shows it too.
    let pressure = [0u64, 1, 2, 3, 40, 41, 42, 43].map(|s| {
        let value = match s {
            43 => 73.100_000_000_000_01,
            40.. => 71.0,
            _ => 70.0 + s as f64 / 10.0,
        };
        (s, "line2/pressure", value)
    });
    let flow = [40u64, 41, 42, 43].map(|s| (s, "line2/flow", 5.0));
    let f = fed.devices.get_mut(4).expect("wd-f");
    for (seq, (second, point, value)) in pressure.into_iter().chain(flow).enumerate() {
        let batch = TelemetryBatch {
            v: 1,
            stream: "line2".into(),
            epoch: 1,
            seq: seq as u64,
            readings: vec![Reading::number(
                point.into(),
                value,
                "bar".into(),
                start + second * 1000,
            )],
        };
        f.client
            .publish(
                telemetry_topic("wd-f"),
                QoS::AtLeastOnce,
                false,
                batch.encode(),
            )
            .await
            .expect("queue");
    }
    api_until(
        &fx,
        "/api/v1/devices/wd-f/telemetry?point=line2/flow&limit=100",
        "wd-f's flow",
        |t| t["readings"].as_array().map(Vec::len) == Some(4),
    )
    .await;
    page(fx.url("/devices/wd-f"), "device-outage", |dom| {
        shows(
            fragment(dom, "data-point=\"line2/pressure\"><td>", "</tr>")?,
            "<td class=\"value\">73.1</td>",
        )?;
        let pressure = fragment(
            dom,
            "class=\"chart\" data-point=\"line2/pressure\">",
            "</figure>",
        )?;
        let flow = fragment(
            dom,
            "class=\"chart\" data-point=\"line2/flow\">",
            "</figure>",
        )?;
        let lines = pressure.matches("<polyline").count();
        if lines != 2 {
            return Err(format!(
                "the pressure chart draws {lines} lines, not 2 around the outage"
            ));
        }
        shows(pressure, ">73.1 bar<")?;
        let span = |chart: &str| -> Result<String, String> {
            let from = fragment(chart, "data-from=\"", "\" ")?;
            let to = fragment(chart, "data-to=\"", "\">")?;
            Ok(format!("{from}\" {to}\""))
        };
        if span(pressure)? != span(flow)? {
            return Err(format!(
                "the charts cover different spans: {} and {}",
                span(pressure)?,
                span(flow)?
            ));
        }
        shows(
            fragment(dom, "id=\"device-reports\"", "</table>")?,
            "<td class=\"muted\" colspan=\"6\">none</td>",
        )
    })
    .await;
    // The unit's config gives pressure 2 decimal places: once its twin reports that,
    // the value and the chart's axis are shown with them (73.10, not 73.1).
    let reported = TwinReported {
        v: 1,
        point_decimals: [("line2/pressure".to_owned(), 2)].into(),
        ..TwinReported::default()
    };
    fed.devices
        .get_mut(4)
        .expect("wd-f")
        .client
        .publish(
            twin_reported_topic("wd-f"),
            QoS::AtLeastOnce,
            false,
            reported.encode(),
        )
        .await
        .expect("queue");
    api_until(
        &fx,
        "/api/v1/dashboard/devices/wd-f",
        "wd-f's reported decimals",
        |d| d["point_decimals"]["line2/pressure"] == 2,
    )
    .await;
    page(fx.url("/devices/wd-f"), "device-decimals", |dom| {
        shows(
            fragment(dom, "data-point=\"line2/pressure\"><td>", "</tr>")?,
            "<td class=\"value\">73.10</td>",
        )?;
        shows(
            fragment(
                dom,
                "class=\"chart\" data-point=\"line2/pressure\">",
                "</figure>",
            )?,
            ">73.10 bar<",
        )?;
        // Flow sets no decimals: shown as read.
        shows(
            fragment(dom, "data-point=\"line2/flow\"><td>", "</tr>")?,
            "<td class=\"value\">5</td>",
        )
    })
    .await;
    // A device the fleet does not know gets a page that says so, not an API error.
    page(fx.url("/devices/wd-nobody"), "device-unknown", |dom| {
        shows(dom, "id=\"not-found\">No device wd-nobody<")?;
        if dom.contains("unreachable or failing") {
            return Err("an unknown device is shown as a failing fleet".to_owned());
        }
        Ok(())
    })
    .await;

    // Deployments: waves with their numbers and states.
    page(fx.url("/deployments"), "deployments", |dom| {
        let halted = fragment(
            dom,
            &format!("data-deployment=\"{first_id}\""),
            "</section>",
        )?;
        shows(halted, "data-state=\"halted\"")?;
        shows(halted, "1 of 1 devices failed, rolled back or crashed")?;
        let wave = |n: u8| fragment(halted, &format!("data-wave=\"{n}\">"), "</tr>");
        for (field, value) in [
            ("targeted", 1),
            ("offered", 1),
            ("succeeded", 1),
            ("crashed", 0),
        ] {
            shows(wave(0)?, &format!("data-field=\"{field}\">{value}<"))?;
        }
        shows(wave(0)?, "data-field=\"status\">succeeded<")?;
        for (field, value) in [
            ("targeted", 1),
            ("offered", 1),
            ("succeeded", 0),
            ("crashed", 1),
        ] {
            shows(wave(1)?, &format!("data-field=\"{field}\">{value}<"))?;
        }
        shows(wave(1)?, "data-field=\"status\">halted<")?;
        for (field, value) in [("targeted", 2), ("offered", 0)] {
            shows(wave(2)?, &format!("data-field=\"{field}\">{value}<"))?;
        }
        shows(wave(2)?, "data-field=\"status\">pending<")?;
        let advancing = fragment(
            dom,
            &format!("data-deployment=\"{second_id}\""),
            "</section>",
        )?;
        shows(advancing, "data-state=\"advancing\"")?;
        shows(
            fragment(advancing, "data-wave=\"0\">", "</tr>")?,
            "data-field=\"in_progress\">1<",
        )
    })
    .await;

    // Failure-report groups: the crash signature across two versions and devices,
    // and the fleet's own attestation report for wd-d.
    page(fx.url("/reports"), "reports", |dom| {
        let crash = fragment(
            dom,
            "data-signature=\"bridge-line1/crash/index out of bounds\">",
            "</tr>",
        )?;
        shows(crash, "data-field=\"count\">3<")?;
        shows(crash, "data-field=\"devices\">2<")?;
        shows(crash, "data-field=\"versions\">1.0.0 ×2, 1.1.0 ×1<")?;
        shows(crash, "data-buckets=\"1\"")?;
        shows(
            fragment(
                dom,
                "data-signature=\"fleet/attestation/quote-refused\">",
                "</tr>",
            )?,
            "data-field=\"count\">1<",
        )
    })
    .await;

    drop(fed);
    fx.stop().await;
}
