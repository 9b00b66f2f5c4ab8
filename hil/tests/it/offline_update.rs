//! An air-gapped install: with the fleet unreachable, `warden update install FILE` on
//! the unit installs a signed image from a file; the boot stage boots it on trial and
//! it confirms itself without the link; when the link returns the fleet learns of it
//! (statuses marked `source: local`, the device's image version). A tampered file and a downgrade are
//! refused with a message that names what was wrong.
//!
//! Real pieces, as in `rollout`: the fleet service (embedded broker, SQLite, stopped
//! and started again on the same ports and database), the unit's own pluton and
//! `warden boot … -- run --config …`.

use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_hil::demo_pki::DemoPki;
use warden_keychain::tooling::load_secret_key;
use warden_os::slots::Slot;

use super::rollout::{
    Device, confirmed_version, fleet_config, image_with_counter, manufacture, register, start_boot,
    start_fleet_with_product, wait_for, warden_binary, write_config,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_a_file_installs_without_the_fleet_and_is_reported_when_it_returns() {
    let warden = warden_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = DemoPki::generate(&root.join("pki")).expect("pki");
    let vendor_root = load_secret_key(&pki.vendor_root_key).expect("vendor root key");
    let vendor_root_public = pki.vendor_root_public_key().expect("vendor root");

    // Fixed ports: the fleet comes back where the unit looks for it.
    let config = fleet_config(&pki, root, free_port(), free_port());
    let mut shutdown = CancellationToken::new();
    let (fleet, api) = start_fleet_with_product(&pki, &config, &shutdown).await;
    let runs_warden = warden_hil::script_images::runs_warden(&warden);
    let v1 = image_with_counter(&vendor_root, (1, 0, 0), &runs_warden, 1);
    // 1.1.0 raises the anti-rollback counter to 2; 1.0.1 (counter 1) is then a downgrade.
    let v11 = image_with_counter(&vendor_root, (1, 1, 0), &runs_warden, 2);
    let v101 = image_with_counter(&vendor_root, (1, 0, 1), &runs_warden, 1);
    // Both are the vendor's releases the fleet knows (so the unit attests as trusted
    // on either); only the file reaches the unit.
    api.upload(v1.clone()).await.expect("upload 1.0.0");
    api.upload(v11.clone()).await.expect("upload 1.1.0");

    let device_dir = root.join("unit0");
    let (id, public_key) = manufacture(&warden, &device_dir, &vendor_root_public, &v1);
    let cert = register(&api, &pki, &id, &public_key, "SN-offline").await;
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
        Duration::from_secs(60),
        devices,
        async || {
            let confirmed = confirmed_version(&device.boot_state(), Slot::A) == Some([1, 0, 0]);
            let record = api.registered(&id).await?;
            (confirmed && record.attestation == "trusted").then_some(())
        },
    )
    .await;

    // The fleet goes away: the cell is air-gapped from here.
    shutdown.cancel();
    fleet.stopped().await;

    let file = |name: &str, bytes: &[u8]| {
        let path = root.join(name);
        std::fs::write(&path, bytes).expect("file");
        path
    };
    let install = |path: &std::path::Path| {
        Command::new(&warden)
            .args(["update", "install"])
            .arg(path)
            .arg("--config")
            .arg(&unit_config)
            .output()
            .expect("warden update install")
    };
    // A tampered copy (the payload's first byte, so the signed header and trailer still
    // verify): refused as altered; nothing changes.
    let mut tampered = v11.clone();
    tampered[warden_os::image::HEADER_LEN] ^= 0x01;
    let before = std::fs::read(device_dir.join("boot/boot/state")).expect("boot state");
    let refused = install(&file("tampered.wim", &tampered));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a tampered file installed");
    assert!(
        stderr.contains("altered") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(device_dir.join("boot/boot/state")).expect("boot state"),
        before,
        "a refused file changed the boot state"
    );
    // The good file: installed while the fleet is down.
    let installed = install(&file("v1.1.0.wim", &v11));
    let stdout = String::from_utf8_lossy(&installed.stdout);
    assert!(
        installed.status.success() && stdout.contains("installed"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&installed.stderr),
        device.log()
    );

    // The boot stage boots it on trial, and it confirms itself without the link (a
    // local install's trial waits for the bridges only).
    wait_for(
        "1.1.0 to boot on trial and confirm itself with the fleet down",
        Duration::from_secs(60),
        devices,
        async || {
            (confirmed_version(&device.boot_state(), Slot::B) == Some([1, 1, 0])).then_some(())
        },
    )
    .await;
    // The fleet returns (same ports, same database): it learns what happened.
    shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone())
        .await
        .expect("fleet starts again");
    wait_for(
        "the fleet to record 1.1.0 from the unit's local statuses",
        Duration::from_secs(60),
        devices,
        async || {
            let record = api.registered(&id).await?;
            (record.image_version == "1.1.0").then_some(())
        },
    )
    .await;
    // What happened while the link was down reached the fleet too, in order.
    let events: serde_json::Value = api
        .get(&format!("/api/v1/events?device={id}&limit=100"))
        .await
        .expect("events");
    let text = events.to_string();
    // (`trial` is published only if the watcher looks before the trial is decided.)
    for state in ["verifying", "installed", "confirmed"] {
        assert!(
            text.contains(&format!(": {state}: ")) && text.contains("update local-"),
            "no local {state} event at the fleet: {text}"
        );
    }
    assert!(
        text.contains("altered"),
        "the refused tampered file is on record: {text}"
    );

    // A downgrade below the raised counter: refused by name.
    let downgrade = install(&file("v1.0.1.wim", &v101));
    let stderr = String::from_utf8_lossy(&downgrade.stderr);
    assert!(!downgrade.status.success(), "a downgrade installed");
    assert!(stderr.contains("anti-rollback"), "{stderr}");

    device.stop();
    shutdown.cancel();
    fleet.stopped().await;
}
