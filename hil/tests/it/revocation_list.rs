//! Issue #27: "a device on a revoked release key refuses an image signed by it", with
//! the release-key revocation list arriving over the link.
//!
//! Real pieces, as in `offline_update`: the fleet service (embedded broker, SQLite),
//! the unit's own pluton and `warden boot … -- run --config …` (its link agent hands
//! the list to its updater, which installs it as `warden update install FILE` would).
//! The operator uploads lists to the fleet's API; the fleet sends them to the unit.
//!
//! The fleet here also trusts a root the unit does not hold (the fleet is only the
//! carrier): a list signed by it passes the fleet and is refused by the unit, which
//! changes nothing and says so. Then the vendor's list revokes release key B; the unit
//! takes it, reports its sequence in its twin (the device page shows it), and refuses
//! a rollout of an image signed by B.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_hil::fleet_operator::FleetApi;
use warden_hil::script_images::{ImageSigner, runs_warden, script_image};
use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, load_secret_key, sign_revocation_list,
};
use warden_os::slots::{Slot, SlotStatus};
use warden_wire::fleet_api::{
    DEFAULT_GROUP, DEPLOYMENTS_PATH, DeploymentRequest, REVOCATION_LISTS_PATH, StoredDeployment,
    deployment_path,
};
use warden_wire::topics::to_hex;

use super::rollout::{
    Device, PRODUCT, confirmed_version, fleet_config, manufacture, register, start_boot,
    start_fleet_with_product, wait_for, warden_binary, write_config,
};

/// Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(90);

/// An image whose payload runs the real appliance, signed by `release` (certified by
/// `vendor_root`).
fn image_signed_by(
    vendor_root: &SecretSigningKey,
    release: &SecretSigningKey,
    version: [u32; 3],
    script: &str,
) -> Vec<u8> {
    let cert =
        issue_release_cert(vendor_root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
    let signer = ImageSigner {
        release_key: release,
        release_cert: &cert,
    };
    script_image(&signer, PRODUCT, version, 1, script).expect("image")
}

async fn upload_list(api: &FleetApi, list: Vec<u8>) -> (u16, serde_json::Value) {
    let response = api
        .http
        .post(format!("{}{REVOCATION_LISTS_PATH}", api.base))
        .bearer_auth(&api.token)
        .body(list)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The unit's events at the fleet, as one text.
async fn events(api: &FleetApi, id: &str) -> String {
    api.get::<serde_json::Value>(&format!("/api/v1/events?device={id}&limit=200"))
        .await
        .map(|events| events.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_revoked_release_key_refuses_an_image_signed_by_it() {
    let warden = warden_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = DemoPki::generate(&root.join("pki")).expect("pki");
    let vendor_root = load_secret_key(&pki.vendor_root_key).expect("vendor root key");
    let vendor_root_public = pki.vendor_root_public_key().expect("vendor root");
    // A root the fleet trusts and the unit does not.
    let fleet_only_root = SecretSigningKey::generate().expect("rng");

    let mut config = fleet_config(&pki, root, 0, 0);
    config
        .images
        .vendor_roots
        .push(to_hex(&fleet_only_root.public_key()));
    let shutdown = CancellationToken::new();
    let (fleet, api) = start_fleet_with_product(&pki, &config, &shutdown).await;

    // 1.0.0 is signed by release key A; 1.1.0 by release key B, which gets revoked.
    let runs = runs_warden(&warden);
    let key_a = SecretSigningKey::generate().expect("rng");
    let key_b = SecretSigningKey::generate().expect("rng");
    let v1 = image_signed_by(&vendor_root, &key_a, [1, 0, 0], &runs);
    let v11 = image_signed_by(&vendor_root, &key_b, [1, 1, 0], &runs);
    api.upload(v1.clone()).await.expect("upload 1.0.0");
    let v11_sha = api.upload(v11).await.expect("upload 1.1.0");

    let device_dir = root.join("unit0");
    let (id, public_key) = manufacture(&warden, &device_dir, &vendor_root_public, &v1);
    let cert = register(&api, &pki, &id, &public_key, "SN-revoke").await;
    let mut device = Device {
        id: id.clone(),
        dir: device_dir.clone(),
        boot: None,
    };
    let unit_config = write_config(&device, &pki, &cert, fleet.mqtt_address.port());
    start_boot(&warden, &mut device, &unit_config);
    let devices = std::slice::from_ref(&device);
    wait_for(
        "the unit to confirm 1.0.0 and attest",
        WAIT,
        devices,
        async || {
            let confirmed = confirmed_version(&device.boot_state(), Slot::A) == Some([1, 0, 0]);
            let record = api.registered(&id).await?;
            (confirmed && record.attestation == "trusted").then_some(())
        },
    )
    .await;
    let held_file = device_dir
        .join("boot")
        .join(warden_os::revocations::REVOCATION_LIST_FILE);
    assert!(!held_file.exists(), "the factory installed no list");

    // A list the fleet accepts (its root is in `images.vendor_roots`) but the unit's
    // pluton does not hold: refused on the unit, nothing changes, the fleet hears why.
    let foreign = sign_revocation_list(&fleet_only_root, 1, &[key_a.key_id()]).expect("list");
    let (status, body) = upload_list(&api, foreign).await;
    assert_eq!(status, 201, "{body}");
    wait_for(
        "the unit to refuse the list its roots do not verify",
        WAIT,
        devices,
        async || {
            let text = events(&api, &id).await;
            text.contains("revocation-list-refused").then_some(())
        },
    )
    .await;
    let text = events(&api, &id).await;
    assert!(
        text.contains("not signed by an installed root") && text.contains("nothing was changed"),
        "{text}"
    );
    assert!(!held_file.exists(), "a refused list was written");

    // The vendor's list revoking release key B: installed, and the twin says so.
    let list = sign_revocation_list(&vendor_root, 2, &[key_b.key_id()]).expect("list");
    let (status, body) = upload_list(&api, list.clone()).await;
    assert_eq!(status, 201, "{body}");
    let page = wait_for(
        "the device page to show the unit holding list 2",
        WAIT,
        devices,
        async || {
            let detail: serde_json::Value =
                api.get(&format!("/api/v1/dashboard/devices/{id}")).await?;
            (detail["revocation_list"]["held_sequence"] == 2).then_some(detail)
        },
    )
    .await;
    assert_eq!(page["revocation_list"]["fleet_sequence"], 2, "{page}");
    assert_eq!(page["revocation_list"]["current"], true, "{page}");
    assert_eq!(
        std::fs::read(&held_file).expect("the held list"),
        list,
        "the unit holds the vendor's list, byte for byte"
    );
    assert!(
        events(&api, &id)
            .await
            .contains("revocation-list-installed"),
        "the install is on record"
    );
    // Still trusted and running 1.0.0 (signed by A, not revoked).
    assert_eq!(
        confirmed_version(&device.boot_state(), Slot::A),
        Some([1, 0, 0])
    );

    // The operator rolls out 1.1.0, signed by the revoked key B: the unit refuses it.
    let (status, deployment) = api
        .post(
            DEPLOYMENTS_PATH,
            &DeploymentRequest {
                success_threshold: 1.0,
                failure_threshold: 1.0,
                ..DeploymentRequest::new(v11_sha, DEFAULT_GROUP)
            },
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "deployment: {deployment}");
    let deployment: StoredDeployment = serde_json::from_value(deployment).expect("a deployment");
    wait_for(
        "the unit to refuse 1.1.0, signed by the revoked key",
        WAIT,
        devices,
        async || {
            let current: StoredDeployment = api.get(&deployment_path(&deployment.id)).await?;
            let state = current
                .members
                .iter()
                .find(|m| m.device_id == id)
                .map(|m| m.state.clone())?;
            (state == "failed").then_some(())
        },
    )
    .await;
    let text = events(&api, &id).await;
    assert!(
        text.contains("revoked by the vendor's revocation list"),
        "the refusal names the revoked key: {text}"
    );
    let state = device.boot_state();
    assert!(
        !matches!(
            state.slot(Slot::B),
            SlotStatus::Pending(_) | SlotStatus::Trial { .. }
        ) && state
            .slot(Slot::B)
            .image()
            .is_none_or(|image| image.version != [1, 1, 0]),
        "1.1.0 was installed: {state:?}"
    );
    assert_eq!(state.primary(), Some(Slot::A));

    device.stop();
    shutdown.cancel();
    fleet.stopped().await;
}
