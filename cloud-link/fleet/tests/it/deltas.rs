//! Delta images (issue #27) on the fleet's side: uploads verified against the vendor
//! roots and the known images, downloads with ranges, and rollouts that offer a delta
//! only to a device whose reported image is its base.

use std::io::Cursor;
use std::time::Duration;

use serde_json::json;
use warden_image::build::build_signed_image;
use warden_image::{BuildId, ImageHeader, ImageTrust, ProductId, SemanticVersion, verify_image};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};

use super::registry::{create_product, register};
use super::rollout::upload;
use super::{Fixture, OPERATOR, SimulatedDevice, VIEWER, fleet};

const PRODUCT: &str = "press-guardian";

/// A release key certified by `root`, with its certificate.
fn release_key(root: &SecretSigningKey) -> (SecretSigningKey, Vec<u8>) {
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
    (release, cert.to_vec())
}

/// A signed image whose payload is 64 KiB of "code" with `edit` written at 20 000 (a
/// small change between releases).
fn image(release: &(SecretSigningKey, Vec<u8>), version: (u32, u32, u32), edit: &[u8]) -> Vec<u8> {
    let template = ImageHeader {
        product: ProductId::new(PRODUCT).expect("product"),
        version: SemanticVersion::new(version.0, version.1, version.2),
        security_counter: 2,
        build_id: BuildId(*b"0123456789abcdef"),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    let mut payload: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    payload[20_000..20_000 + edit.len()].copy_from_slice(edit);
    build_signed_image(template, &payload, &release.0, &release.1).expect("image")
}

async fn upload_delta(fx: &Fixture, token: &str, delta: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(fx.url("/api/v1/deltas"))
        .bearer_auth(token)
        .body(delta)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Reports the image the device runs in its twin and waits until it is stored.
async fn report_image(fx: &Fixture, device: &mut SimulatedDevice, sha256: &str) {
    // The twin endpoint knows a device once it sent telemetry.
    let reading: serde_json::Value = serde_json::from_slice(&super::batch(0, 1.0)).expect("json");
    device.publish("telemetry", &reading).await;
    let twin_path = format!("/api/v1/devices/{}/twin", device.id);
    super::eventually(Duration::from_secs(30), || async {
        (fx.get(VIEWER, &twin_path).await.0 == 200).then_some(())
    })
    .await
    .expect("the device is known");
    device
        .publish(
            "twin/reported",
            &json!({
                "v": 1, "policy_name": "press", "policy_version": null, "last_error": null,
                "image_sha256": sha256,
                "delivery": {"stream": "control", "epoch": 1, "seq": 1},
            }),
        )
        .await;
    loop {
        let ack = device
            .next_on("ack", Duration::from_secs(30))
            .await
            .expect("the reported state is acknowledged");
        if ack["epoch"] == 1 && ack["seq"] == 1 {
            break;
        }
    }
    let (_, twin) = fx.get(VIEWER, &twin_path).await;
    assert_eq!(twin["reported"]["image_sha256"], sha256, "{twin}");
}

async fn get(url: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn a_device_on_the_base_is_offered_the_delta_and_one_on_another_base_the_full_image() {
    let fx = fleet().await;
    let p = fx.dir.path();
    create_product(&fx).await;
    let ids = ["wd-on-base", "wd-elsewhere", "wd-silent"];
    let store = warden_fleet::store::Store::open(&fx.database_url)
        .await
        .expect("store");
    for id in ids {
        fx.maker.issue(p, id, id, false);
        register(&fx, id, id, "Production").await;
        store
            .set_attestation(id, "trusted", warden_fleet::clock::now_ms())
            .await
            .expect("attest");
    }
    store.close().await;

    let release = release_key(&fx.vendor_root);
    let base = image(&release, (1, 0, 0), b"release one");
    let other = image(&release, (1, 0, 1), b"a hotfix, not the base");
    let new = image(&release, (1, 1, 0), b"release two");
    let (_, delta) =
        warden_os::delta::build_delta(&base, &new, &release.0, &release.1).expect("delta");

    // A delta is refused until both its base and its result are known images.
    let (status, refused) = upload_delta(&fx, OPERATOR, delta.clone()).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("delta")),
        "{refused}"
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("was not uploaded"),
        "{refused}"
    );
    let mut shas = Vec::new();
    for image in [&base, &other, &new] {
        let (status, uploaded) = upload(&fx, OPERATOR, image.clone()).await;
        assert_eq!(status, 201, "{uploaded}");
        shas.push(uploaded["sha256"].as_str().expect("sha").to_owned());
    }
    let (base_sha, other_sha, new_sha) = (&shas[0], &shas[1], &shas[2]);

    // A corrupted delta (one patch byte), one under an unknown key and a viewer's
    // upload are refused; nothing is stored.
    let mut corrupted = delta.clone();
    corrupted[warden_image::delta::DELTA_HEADER_LEN + 10] ^= 0x01;
    let (status, refused) = upload_delta(&fx, OPERATOR, corrupted).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("delta")),
        "{refused}"
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("patch"),
        "{refused}"
    );
    let stranger = release_key(&SecretSigningKey::generate().expect("rng"));
    let (_, foreign) =
        warden_os::delta::build_delta(&base, &new, &stranger.0, &stranger.1).expect("delta");
    let (status, refused) = upload_delta(&fx, OPERATOR, foreign).await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("certificate"),
        "{refused}"
    );
    assert_eq!(
        upload_delta(&fx, OPERATOR, b"WDL1 but not".to_vec())
            .await
            .0,
        422
    );
    assert_eq!(upload_delta(&fx, VIEWER, delta.clone()).await.0, 403);
    let (_, listed) = fx.get(VIEWER, "/api/v1/deltas").await;
    assert_eq!(listed, json!([]));

    // The real one is stored, once.
    let (status, stored) = upload_delta(&fx, OPERATOR, delta.clone()).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["base_sha256"], base_sha.as_str());
    assert_eq!(stored["result_sha256"], new_sha.as_str());
    assert_eq!(stored["result_version"], "1.1.0");
    assert_eq!(stored["size"], delta.len());
    assert_eq!(upload_delta(&fx, OPERATOR, delta.clone()).await.0, 200);
    let delta_sha = stored["sha256"].as_str().expect("sha").to_owned();
    let (_, listed) = fx.get(VIEWER, "/api/v1/deltas").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    let mut devices = Vec::new();
    for id in ids {
        devices.push(
            SimulatedDevice::connect(&fx, id, id)
                .await
                .expect("connects"),
        );
    }
    report_image(&fx, &mut devices[0], base_sha).await;
    report_image(&fx, &mut devices[1], other_sha).await;
    // wd-silent reports no image: it gets the full image only.

    let (status, deployment) = fx
        .post(
            OPERATOR,
            "/api/v1/deployments",
            &json!({ "image": new_sha, "group": "Production" }),
        )
        .await;
    assert_eq!(status, 201, "{deployment}");

    // On the base: the delta beside the full image.
    let offer = devices[0]
        .next_on("updates/offer", Duration::from_secs(10))
        .await
        .expect("wd-on-base is offered the update");
    assert_eq!(offer["sha256"], new_sha.as_str());
    let offered = &offer["delta"];
    assert_eq!(offered["sha256"], delta_sha.as_str(), "{offer}");
    assert_eq!(offered["base_sha256"], base_sha.as_str());
    assert_eq!(offered["size"], delta.len());
    let url = offered["url"].as_str().expect("url").to_owned();
    assert_eq!(
        url,
        format!("http://{}/deltas/{delta_sha}", fx.fleet.http_address)
    );
    // On another base, or none reported: the full image alone.
    for device in &mut devices[1..] {
        let offer = device
            .next_on("updates/offer", Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} is offered the update", device.id));
        assert_eq!(offer["sha256"], new_sha.as_str());
        assert!(offer.get("delta").is_none(), "{}: {offer}", device.id);
    }

    // The device downloads the delta resumed (two ranges), as it does images, then
    // verifies and applies it against its installed image: the result is the new image,
    // which verifies as an image under the vendor root.
    let half = delta.len() / 2;
    let (status, first) = get(&url, Some(&format!("bytes=0-{}", half - 1))).await;
    assert_eq!(status, 206);
    let (status, rest) = get(&url, Some(&format!("bytes={half}-"))).await;
    assert_eq!(status, 206);
    let downloaded = [first, rest].concat();
    assert_eq!(downloaded, delta);
    assert_eq!(get(&url, None).await, (200, delta.clone()));
    let missing = format!("http://{}/deltas/{}", fx.fleet.http_address, "0".repeat(64));
    assert_eq!(get(&missing, None).await.0, 404);
    let roots =
        [warden_image::RootKey::from_public_key(&fx.vendor_root.public_key()).expect("root")];
    let trust = ImageTrust {
        roots: &roots,
        revoked: &[],
        product: ProductId::new(PRODUCT).expect("product"),
        min_security_counter: 2,
    };
    let mut file = Cursor::new(downloaded);
    let header = warden_os::delta::verify_delta_reader(&mut file, delta.len() as u64, &trust)
        .expect("the offered delta verifies on the device");
    let mut installed = Cursor::new(base.clone());
    warden_os::delta::check_base(&header, &mut installed).expect("its base is installed");
    let mut result = Vec::new();
    warden_os::delta::apply_delta(&header, &mut file, &mut installed, &mut result)
        .expect("it applies");
    assert_eq!(result, new);
    verify_image(&result, &trust).expect("the result verifies as the released image");
    // The device on the other base would have refused it.
    let mut elsewhere = Cursor::new(other.clone());
    assert!(warden_os::delta::check_base(&header, &mut elsewhere).is_err());

    for device in devices {
        drop(device);
    }
    fx.stop().await;
}
