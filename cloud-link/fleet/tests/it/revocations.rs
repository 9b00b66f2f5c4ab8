//! Release-key revocation lists (issue #27; not device certificates) on the fleet's
//! side: uploads verified against the vendor roots, refused when unsigned, foreign,
//! not newer or too large, listed; the newest sent to a device when it subscribes and
//! to every connected device when uploaded; the device page shows the held sequence
//! against the fleet's newest.

use std::time::Duration;

use serde_json::json;
use warden_keychain::tooling::{SecretSigningKey, sign_revocation_list};
use warden_wire::revocation::{MAX_REVOCATION_LIST_LEN, RevocationListMessage};
use warden_wire::topics::to_hex;

use super::registry::{create_product, register};
use super::{Fixture, OPERATOR, SimulatedDevice, VIEWER, eventually, fleet};

const LISTS: &str = "/api/v1/revocation-lists";
const TOPIC: &str = "updates/revocation-list";

async fn upload(fx: &Fixture, token: &str, list: Vec<u8>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(fx.url(LISTS))
        .bearer_auth(token)
        .body(list)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The refusal's message, asserting it is a 422 naming the list.
fn refusal(answer: (u16, serde_json::Value)) -> String {
    let (status, body) = answer;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "revocation_list", "{body}");
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// The list a device got on its revocation list topic, decoded and bounded.
async fn received(device: &mut SimulatedDevice) -> Option<(u64, Vec<u8>)> {
    let message = device.next_on(TOPIC, Duration::from_secs(10)).await?;
    let (message, list) =
        RevocationListMessage::decode(&serde_json::to_vec(&message).expect("json")).ok()?;
    Some((message.sequence, list))
}

/// The contract (SQLite here, PostgreSQL in `postgres`).
pub(super) async fn revocation_list_contract(fx: &Fixture) {
    let p = fx.dir.path();
    create_product(fx).await;
    fx.maker.issue(p, "wd-rl-1", "wd-rl-1", false);
    register(fx, "wd-rl-1", "wd-rl-1", "Production").await;
    let release = SecretSigningKey::generate().expect("rng").key_id();
    let other = SecretSigningKey::generate().expect("rng").key_id();

    // The fleet holds none yet: a connecting device gets nothing.
    let mut device = SimulatedDevice::connect(fx, "wd-rl-1", "wd-rl-1")
        .await
        .expect("connects");
    assert!(
        device
            .next_on(TOPIC, Duration::from_millis(500))
            .await
            .is_none(),
        "a list was sent before any was uploaded"
    );

    // Refused, each by name, and nothing stored.
    let foreign = SecretSigningKey::generate().expect("rng");
    let message = refusal(
        upload(
            fx,
            OPERATOR,
            sign_revocation_list(&foreign, 5, &[release]).expect("list"),
        )
        .await,
    );
    assert!(
        message.contains("not signed by an installed root"),
        "{message}"
    );
    let mut unsigned = sign_revocation_list(&fx.vendor_root, 5, &[release]).expect("list");
    let signature_at = unsigned.len() - 64;
    unsigned[signature_at..].fill(0);
    let message = refusal(upload(fx, OPERATOR, unsigned).await);
    assert!(message.contains("signature"), "{message}");
    let mut tampered = sign_revocation_list(&fx.vendor_root, 5, &[release]).expect("list");
    let id_at = tampered.len() - 64 - 8;
    tampered[id_at] ^= 0x01;
    let message = refusal(upload(fx, OPERATOR, tampered).await);
    assert!(message.contains("signature"), "{message}");
    let message = refusal(upload(fx, OPERATOR, vec![b'W'; MAX_REVOCATION_LIST_LEN + 1]).await);
    assert!(message.contains("at most 4096 bytes"), "{message}");
    let message = refusal(upload(fx, OPERATOR, b"not a list".to_vec()).await);
    assert!(message.contains("WRL1"), "{message}");
    // Operators only.
    let good = sign_revocation_list(&fx.vendor_root, 5, &[release]).expect("list");
    assert_eq!(upload(fx, VIEWER, good.clone()).await.0, 403);
    let (_, listed) = fx.get(VIEWER, LISTS).await;
    assert_eq!(listed, json!([]), "a refused list was stored");

    // A good one: stored, listed, and sent to the connected device at once.
    let (status, stored) = upload(fx, OPERATOR, good.clone()).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["sequence"], 5);
    assert_eq!(stored["revoked"], json!([to_hex(&release.0)]));
    assert_eq!(stored["issuer"], to_hex(&fx.vendor_root.key_id().0));
    assert_eq!(
        received(&mut device).await,
        Some((5, good.clone())),
        "the connected device got the list"
    );

    // Not newer: equal or lower sequence, even signed by the vendor.
    for sequence in [5, 4] {
        let message = refusal(
            upload(
                fx,
                OPERATOR,
                sign_revocation_list(&fx.vendor_root, sequence, &[other]).expect("list"),
            )
            .await,
        );
        assert!(
            message.contains(&format!("sequence {sequence} is not above the sequence 5")),
            "{message}"
        );
    }

    // The device page: the device reports no list yet, the fleet's newest is 5.
    let (_, detail) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-rl-1").await;
    assert_eq!(
        detail["revocation_list"],
        json!({"held_sequence": null, "fleet_sequence": 5, "current": false}),
        "{detail}"
    );
    // Its twin says it holds 5: current. (A twin behind gets the list again.)
    device
        .publish(
            "twin/reported",
            &json!({"v": 1, "policy_name": null, "policy_version": null, "last_error": null,
                    "revocation_list_sequence": 4}),
        )
        .await;
    assert_eq!(
        received(&mut device).await.map(|(sequence, _)| sequence),
        Some(5),
        "a device reporting an older list is sent the newest"
    );
    device
        .publish(
            "twin/reported",
            &json!({"v": 1, "policy_name": null, "policy_version": null, "last_error": null,
                    "revocation_list_sequence": 5}),
        )
        .await;
    let current = eventually(Duration::from_secs(10), || async {
        let (_, detail) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-rl-1").await;
        (detail["revocation_list"]["current"] == true).then_some(detail)
    })
    .await
    .expect("the page shows the device current");
    assert_eq!(current["revocation_list"]["held_sequence"], 5, "{current}");

    // A newer list: listed first.
    let newer = sign_revocation_list(&fx.vendor_root, 6, &[release, other]).expect("list");
    assert_eq!(upload(fx, OPERATOR, newer.clone()).await.0, 201);
    assert_eq!(received(&mut device).await, Some((6, newer.clone())));
    let (_, listed) = fx.get(VIEWER, LISTS).await;
    let sequences: Vec<u64> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|list| list["sequence"].as_u64())
        .collect();
    assert_eq!(sequences, [6, 5]);
    drop(device);

    // A device that connects later gets the newest when it subscribes.
    fx.maker.issue(p, "wd-rl-2", "wd-rl-2", false);
    register(fx, "wd-rl-2", "wd-rl-2", "Production").await;
    let mut late = SimulatedDevice::connect(fx, "wd-rl-2", "wd-rl-2")
        .await
        .expect("connects");
    assert_eq!(received(&mut late).await, Some((6, newer)));
}

#[tokio::test]
async fn revocation_lists_are_verified_stored_and_sent_to_devices() {
    let fx = fleet().await;
    revocation_list_contract(&fx).await;
    fx.stop().await;
}
