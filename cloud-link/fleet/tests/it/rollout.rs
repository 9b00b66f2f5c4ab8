//! Signed images and staged rollouts, driven by simulated devices over MQTT.

use std::time::Duration;

use serde_json::json;
use warden_image::build::build_signed_image;
use warden_image::{BuildId, ImageHeader, ProductId, SemanticVersion};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};

use super::registry::{create_product, register};
use super::{Fixture, OPERATOR, SimulatedDevice, VIEWER, eventually, fleet};

pub(crate) fn signed_image(
    root: &SecretSigningKey,
    product: &str,
    version: (u32, u32, u32),
) -> Vec<u8> {
    signed_image_with_counter(root, product, version, 2)
}

/// An image with its security (anti-rollback) counter chosen.
pub(crate) fn signed_image_with_counter(
    root: &SecretSigningKey,
    product: &str,
    version: (u32, u32, u32),
    security_counter: u64,
) -> Vec<u8> {
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
    let template = ImageHeader {
        product: ProductId::new(product).expect("product"),
        version: SemanticVersion::new(version.0, version.1, version.2),
        security_counter,
        build_id: BuildId(*b"0123456789abcdef"),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    build_signed_image(template, &payload, &release, &cert).expect("image")
}

pub(crate) async fn upload(fx: &Fixture, token: &str, image: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(fx.url("/api/v1/images"))
        .bearer_auth(token)
        .body(image)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Uploads, downloads with ranges, and a rollout that advances and then halts.
pub(crate) async fn rollout_contract(fx: &Fixture) {
    let p = fx.dir.path();
    create_product(fx).await;
    let ids = ["wd-a", "wd-b", "wd-c", "wd-d"];
    for id in ids {
        fx.maker.issue(p, id, id, false);
        register(fx, id, id, "Production").await;
    }
    fx.maker.issue(p, "wd-frozen", "wd-frozen", false);
    register(fx, "wd-frozen", "wd-frozen", "No Updates").await;
    fx.maker.issue(p, "wd-untrusted", "wd-untrusted", false);
    register(fx, "wd-untrusted", "wd-untrusted", "Production").await;
    // Attestation is what makes a device eligible; here the store is told directly
    // (the quote path itself is covered by the hil scenario).
    let store = warden_fleet::store::Store::open(&fx.database_url)
        .await
        .expect("store");
    for id in ids.iter().chain(&["wd-frozen"]) {
        store
            .set_attestation(id, "trusted", warden_fleet::clock::now_ms())
            .await
            .expect("attest");
    }
    store.close().await;

    // Images: only signed under the vendor root, for a known product.
    let image = signed_image(&fx.vendor_root, "press-guardian", (1, 1, 0));
    assert_eq!(upload(fx, VIEWER, image.clone()).await.0, 403);
    let (status, uploaded) = upload(fx, OPERATOR, image.clone()).await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(uploaded["version"], "1.1.0");
    assert_eq!(uploaded["product"], "press-guardian");
    assert_eq!(upload(fx, OPERATOR, image.clone()).await.0, 200);
    let stranger = SecretSigningKey::generate().expect("rng");
    let (status, refused) = upload(
        fx,
        OPERATOR,
        signed_image(&stranger, "press-guardian", (1, 1, 0)),
    )
    .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("image")),
        "{refused}"
    );
    let (status, refused) = upload(
        fx,
        OPERATOR,
        signed_image(&fx.vendor_root, "other-product", (1, 1, 0)),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    let mut tampered = image.clone();
    tampered[200] ^= 1;
    assert_eq!(upload(fx, OPERATOR, tampered).await.0, 422);
    assert_eq!(upload(fx, OPERATOR, b"not an image".to_vec()).await.0, 422);

    // Downloads: content-addressed, with ranges, no token needed.
    let sha = uploaded["sha256"].as_str().expect("sha").to_owned();
    let http = reqwest::Client::new();
    let whole = http
        .get(fx.url(&format!("/images/{sha}")))
        .send()
        .await
        .expect("get");
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.bytes().await.expect("body").as_ref(),
        image.as_slice()
    );
    let part = http
        .get(fx.url(&format!("/images/{sha}")))
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("get");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok()),
        Some(format!("bytes 100-199/{}", image.len()).as_str())
    );
    assert_eq!(part.bytes().await.expect("body").as_ref(), &image[100..200]);
    let beyond = http
        .get(fx.url(&format!("/images/{sha}")))
        .header("range", format!("bytes={}-", image.len()))
        .send()
        .await
        .expect("get");
    assert_eq!(beyond.status(), 416);
    let missing = http
        .get(fx.url(&format!("/images/{}", "0".repeat(64))))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    // The No Updates group is never a target.
    let (status, refused) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({ "image": sha, "group": "No Updates" }),
        )
        .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("group")),
        "{refused}"
    );

    let mut devices = Vec::new();
    for id in ids.iter().chain(&["wd-frozen", "wd-untrusted"]) {
        devices.push(
            SimulatedDevice::connect(fx, id, id)
                .await
                .expect("connects"),
        );
    }
    // Wave 0: one device; wave 1: the rest. wd-untrusted sorts last, into wave 1.
    let (status, deployment) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({
                "image": sha,
                "group": "Production",
                "waves": [{ "count": 1 }, { "percent": 100 }],
                "success_threshold": 1.0,
                "failure_threshold": 0.5,
            }),
        )
        .await;
    assert_eq!(status, 201, "{deployment}");
    let id = deployment["id"].as_str().expect("id").to_owned();
    assert_eq!(deployment["created_by"], "ops");
    let wave_of = |d: &serde_json::Value, device: &str| {
        d["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["device_id"] == device))
            .map(|m| m["wave"].clone())
    };
    assert_eq!(wave_of(&deployment, "wd-a"), Some(json!(0)));
    assert_eq!(wave_of(&deployment, "wd-d"), Some(json!(1)));
    assert_eq!(wave_of(&deployment, "wd-frozen"), None);

    // Wave 0: wd-a alone is offered the image; it confirms.
    let offer = devices[0]
        .next_on("updates/offer", Duration::from_secs(5))
        .await
        .expect("wd-a is offered the update");
    assert_eq!(offer["version"], "1.1.0");
    assert_eq!(offer["sha256"], sha.as_str());
    assert_eq!(offer["size"], image.len());
    assert_eq!(
        offer["url"],
        format!("http://{}/images/{sha}", fx.fleet.http_address)
    );
    let offer_id = offer["id"].as_str().expect("offer id").to_owned();
    assert!(
        devices[1]
            .next_on("updates/offer", Duration::from_millis(300))
            .await
            .is_none(),
        "wd-b is in the second wave"
    );
    for state in ["downloading", "installed", "trial", "confirmed"] {
        devices[0]
            .publish(
                "updates/status",
                &json!({ "v": 1, "id": offer_id, "state": state, "detail": "" }),
            )
            .await;
    }

    // Wave 1 starts by itself: wd-b, wd-c, wd-d are offered; wd-untrusted is not.
    let mut wave1 = Vec::new();
    for device in &mut devices[1..4] {
        let offer = device
            .next_on("updates/offer", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{} is offered the update in wave 1", device.id));
        wave1.push(offer["id"].as_str().expect("id").to_owned());
    }
    assert!(
        devices[4]
            .next_on("updates/offer", Duration::from_millis(300))
            .await
            .is_none(),
        "the No Updates group never receives an offer"
    );
    assert!(
        devices[5]
            .next_on("updates/offer", Duration::from_millis(100))
            .await
            .is_none(),
        "an unattested device is withheld"
    );
    // wd-b confirms, wd-c rolls back, wd-d crashes on the new image: 2 of 3 failed.
    devices[1]
        .publish(
            "updates/status",
            &json!({ "v": 1, "id": wave1[0], "state": "confirmed" }),
        )
        .await;
    devices[2]
        .publish(
            "updates/status",
            &json!({ "v": 1, "id": wave1[1], "state": "rolled-back", "detail": "trial boot failed" }),
        )
        .await;
    devices[3]
        .publish(
            "reports",
            &json!({ "v": 1, "id": "crash-1", "ts_ms": 1, "compartment": "bridge-line1",
                     "kind": "crash", "image_version": "1.1.0",
                     "signature": "bridge-line1/crash/segv", "message": "SIGSEGV" }),
        )
        .await;
    let halted = eventually(Duration::from_secs(10), || async {
        let (_, d) = fx.get(VIEWER, &format!("/api/v1/deployments/{id}")).await;
        (d["state"] == "halted").then_some(d)
    })
    .await
    .expect("the deployment halts by itself");
    let kinds: Vec<(String, i64)> = halted["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["wave"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("created".to_owned(), 0),
            ("wave-started".to_owned(), 0),
            ("wave-succeeded".to_owned(), 0),
            ("wave-started".to_owned(), 1),
            ("halted".to_owned(), 1),
        ]
    );
    let detail = halted["events"][4]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("2 of 3"), "{detail}");
    let state_of = |device: &str| {
        halted["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["device_id"] == device))
            .map(|m| m["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state_of("wd-a").as_deref(), Some("confirmed"));
    assert_eq!(state_of("wd-c").as_deref(), Some("rolled-back"));
    assert_eq!(state_of("wd-untrusted").as_deref(), Some("withheld"));
    // The confirmed device now runs the new version; the others do not.
    let (_, a) = fx.get(VIEWER, "/api/v1/devices/wd-a").await;
    assert_eq!(a["image_version"], "1.1.0");
    let (_, c) = fx.get(VIEWER, "/api/v1/devices/wd-c").await;
    assert_eq!(c["image_version"], "1.0.0");
    // Halted is final: a late confirmation changes nothing.
    devices[3]
        .publish(
            "updates/status",
            &json!({ "v": 1, "id": wave1[2], "state": "confirmed" }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = fx.get(VIEWER, &format!("/api/v1/deployments/{id}")).await;
    assert_eq!(after["state"], "halted");
    assert_eq!(after["events"].as_array().map(Vec::len), Some(5));

    // Issue #22 item 10: 1.1.0 (security counter 2) is confirmed on a device, so an
    // image below counter 2 is refused at upload, naming the floor.
    let (status, refused) = upload(
        fx,
        OPERATOR,
        signed_image_with_counter(&fx.vendor_root, "press-guardian", (1, 2, 0), 1),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("security counter 1, below product press-guardian's floor 2"),
        "{message}"
    );
    let (status, accepted) = upload(
        fx,
        OPERATOR,
        signed_image_with_counter(&fx.vendor_root, "press-guardian", (1, 2, 1), 2),
    )
    .await;
    assert_eq!(status, 201, "{accepted}");
}

#[tokio::test]
async fn a_staged_rollout_advances_on_success_and_halts_on_failures() {
    let fx = fleet().await;
    rollout_contract(&fx).await;
    fx.stop().await;
}

#[tokio::test]
async fn a_rollout_waits_for_its_maintenance_window() {
    let fx = fleet().await;
    let p = fx.dir.path();
    create_product(&fx).await;
    fx.maker.issue(p, "wd-a", "wd-a", false);
    register(&fx, "wd-a", "wd-a", "Production").await;
    let store = warden_fleet::store::Store::open(&fx.database_url)
        .await
        .expect("store");
    store
        .set_attestation("wd-a", "trusted", warden_fleet::clock::now_ms())
        .await
        .expect("attest");
    store.close().await;
    let (_, uploaded) = upload(
        &fx,
        OPERATOR,
        signed_image(&fx.vendor_root, "press-guardian", (2, 0, 0)),
    )
    .await;
    let mut device = SimulatedDevice::connect(&fx, "wd-a", "wd-a")
        .await
        .expect("connects");
    let start = warden_fleet::clock::now_ms() + 1_500;
    let (status, deployment) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({ "image": uploaded["sha256"], "group": "Production",
                     "window_start_ms": start, "window_end_ms": start + 60_000 }),
        )
        .await;
    assert_eq!(status, 201, "{deployment}");
    assert_eq!(deployment["state"], "created");
    assert!(
        device
            .next_on("updates/offer", Duration::from_millis(800))
            .await
            .is_none(),
        "no offer before the window opens"
    );
    let offer = device
        .next_on("updates/offer", Duration::from_secs(5))
        .await
        .expect("offered once the window opens");
    assert_eq!(offer["window_start_ms"], start);
    assert_eq!(offer["window_end_ms"], start + 60_000);
    fx.stop().await;
}
