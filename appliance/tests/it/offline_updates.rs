//! Offline updates on the device side: images from a file sent to the updater's local
//! install socket (what `warden update install` and the status page's upload do),
//! verified, gated and installed exactly as an offer's download, with statuses marked
//! `source: local` in the durable control queue. Bad files (tampered, another
//! product, an older anti-rollback counter, too large) are refused by name and change
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use warden::updates::local::{self, LocalInstallAnswer, LocalInstallClient, RefusalKind};
use warden::updates::report_boot_outcome;
use warden_link::topics::{UPDATE_SOURCE_LOCAL, UpdateState};

use super::updates::{PRODUCT, Vendor, update_statuses, updater};

/// Every file under `dir` with its bytes (what "nothing changed" compares).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    files
}

async fn install(socket: &Path, file: &Path) -> LocalInstallAnswer {
    tokio::time::timeout(
        Duration::from_secs(60),
        local::install_file(socket, file, &mut |_| {}),
    )
    .await
    .expect("answered in time")
    .expect("the updater answers")
}

fn refusal(answer: &LocalInstallAnswer) -> (RefusalKind, &str) {
    match answer {
        LocalInstallAnswer::Refused { reason, detail } => (*reason, detail.as_str()),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_a_file_installs_on_trial_and_bad_files_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let (updater, monitor) = updater(dir.path(), &vendor, Arc::default());
    let control = updater.control.clone();
    let window = Arc::clone(&updater.window);
    let downloads = dir.path().join("downloads");
    let listener = local::bind(&downloads).expect("socket");
    let socket = local::socket_path(&downloads);
    let shutdown = CancellationToken::new();
    tokio::spawn(local::serve(listener, updater, 8 << 20, shutdown.clone()));
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("file");
        path
    };

    // A good file: verified, installed into a slot, statuses marked local.
    let good = vendor.image_for(&dir.path().join("r1"), "1.2.0", PRODUCT, 2);
    let answer = install(&socket, &write("good.wim", &good)).await;
    let LocalInstallAnswer::Installed { id, version, .. } = &answer else {
        panic!("not installed: {answer:?}");
    };
    assert!(id.starts_with(local::LOCAL_ID_PREFIX), "{id}");
    assert_eq!(version, "1.2.0");
    let statuses = update_statuses(&control);
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(
        states,
        ["verifying", "verifying", "installed"],
        "{statuses:?}"
    );
    for status in &statuses {
        assert_eq!(status.id, *id);
        assert_eq!(status.source.as_deref(), Some(UPDATE_SOURCE_LOCAL));
        assert_eq!(status.version.as_deref(), Some("1.2.0"));
    }
    assert!(
        statuses[2].detail.contains("from a file"),
        "{}",
        statuses[2].detail
    );

    // The next boot runs it on trial; trial and confirmation go out marked local too.
    let slot = {
        let mut monitor = monitor.lock().expect("monitor");
        let boot = monitor.select_boot().expect("boot");
        assert!(boot.trial, "a local install boots on trial");
        assert_eq!(
            report_boot_outcome(&mut monitor, &downloads, &control).expect("report"),
            Some(UpdateState::Trial)
        );
        assert_eq!(monitor.confirm(boot.slot).expect("confirm"), 2);
        assert_eq!(
            report_boot_outcome(&mut monitor, &downloads, &control).expect("report"),
            Some(UpdateState::Confirmed)
        );
        boot.slot
    };
    let statuses = update_statuses(&control);
    let last: Vec<(&str, Option<&str>)> = statuses[3..]
        .iter()
        .map(|s| (s.state.as_str(), s.source.as_deref()))
        .collect();
    assert_eq!(
        last,
        [
            ("trial", Some(UPDATE_SOURCE_LOCAL)),
            ("confirmed", Some(UPDATE_SOURCE_LOCAL))
        ]
    );

    // Bad files: each refused by name, nothing changes on the unit.
    let before = snapshot(dir.path().join("state").as_path());
    let before_downloads = snapshot(&downloads);
    let mut tampered = vendor.image_for(&dir.path().join("r2"), "1.3.0", PRODUCT, 2);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let other_product = vendor.image_for(&dir.path().join("r3"), "1.3.0", "another-gw", 2);
    let older = vendor.image_for(&dir.path().join("r4"), "1.1.0", PRODUCT, 1);
    for (name, bytes, names) in [
        ("tampered.wim", &tampered, "altered"),
        (
            "product.wim",
            &other_product,
            "wrong product: the image is for another-gw",
        ),
        ("older.wim", &older, "anti-rollback"),
    ] {
        let answer = install(&socket, &write(name, bytes)).await;
        let (reason, detail) = refusal(&answer);
        assert_eq!(reason, RefusalKind::Image, "{name}: {detail}");
        assert!(detail.contains(names), "{name}: {detail}");
        assert!(detail.contains("nothing was changed"), "{name}: {detail}");
    }
    let too_large = LocalInstallClient::start(&socket, 1 << 40, "test")
        .await
        .expect("connect")
        .finish(&mut |_| {})
        .await
        .expect("answer");
    let (reason, detail) = refusal(&too_large);
    assert_eq!(reason, RefusalKind::TooLarge, "{detail}");
    assert_eq!(
        snapshot(dir.path().join("state").as_path()),
        before,
        "a refused file changed the slots or the boot state"
    );
    assert_eq!(
        snapshot(&downloads),
        before_downloads,
        "a refused file was left behind"
    );
    let refused: Vec<_> = update_statuses(&control)
        .into_iter()
        .skip(5)
        .map(|s| (s.state, s.source))
        .collect();
    assert_eq!(
        refused,
        vec![("failed".to_owned(), Some(UPDATE_SOURCE_LOCAL.to_owned())); 3],
        "each refused image is reported (the fleet sees the attempt)"
    );
    {
        let mut monitor = monitor.lock().expect("monitor");
        let boot = monitor.select_boot().expect("boot");
        assert_eq!((boot.slot, boot.trial), (slot, false), "1.2.0 still runs");
    }

    // The update windows hold a local install as they hold an offer: vetoed, it waits
    // (staged), and installs once the veto is lifted.
    window
        .lock()
        .expect("window")
        .veto("press-1", "die closing");
    let next = vendor.image_for(&dir.path().join("r5"), "1.3.0", PRODUCT, 2);
    let answer = install(&socket, &write("next.wim", &next)).await;
    let LocalInstallAnswer::Waiting { id, detail, .. } = &answer else {
        panic!("not waiting: {answer:?}");
    };
    assert!(detail.contains("vetoed by press-1"), "{detail}");
    window.lock().expect("window").lift_veto("press-1");
    let installed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if update_statuses(&control)
                .iter()
                .any(|s| s.id == *id && s.state == "installed")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        installed.is_ok(),
        "not installed after the veto: {:?}",
        update_statuses(&control)
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_list_from_a_file_makes_the_unit_refuse_images_of_the_revoked_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let (updater, _monitor) = updater(dir.path(), &vendor, Arc::default());
    let downloads = dir.path().join("downloads");
    let listener = local::bind(&downloads).expect("socket");
    let socket = local::socket_path(&downloads);
    let shutdown = CancellationToken::new();
    tokio::spawn(local::serve(listener, updater, 8 << 20, shutdown.clone()));
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("file");
        path
    };
    let revoked_key = dir.path().join("revoked-key");
    let image = vendor.image_for(&revoked_key, "1.2.0", PRODUCT, 2);

    let list = vendor.revocation_list(1, &[&revoked_key.join("release.cert")]);
    let answer = install(&socket, &write("revoked.wrl", &list)).await;
    let LocalInstallAnswer::RevocationsInstalled {
        sequence, revoked, ..
    } = &answer
    else {
        panic!("the list is not installed: {answer:?}");
    };
    assert_eq!((*sequence, *revoked), (1, 1));

    // The revoked key's image is refused by name and changes nothing.
    let before = snapshot(dir.path().join("state").as_path());
    let answer = install(&socket, &write("revoked.wim", &image)).await;
    let (reason, detail) = refusal(&answer);
    assert_eq!(reason, RefusalKind::Image, "{detail}");
    assert!(
        detail.contains("revoked signing key")
            && detail.contains("revoked by the vendor's revocation list")
            && detail.contains("nothing was changed"),
        "{detail}"
    );
    assert_eq!(
        snapshot(dir.path().join("state").as_path()),
        before,
        "a refused image changed the slots or the list"
    );

    // An older list cannot be replayed to un-revoke it; another key's image installs.
    let older = vendor.revocation_list(0, &[]);
    let answer = install(&socket, &write("older.wrl", &older)).await;
    let (_, detail) = refusal(&answer);
    assert!(detail.contains("is not above the sequence 1"), "{detail}");
    let other = vendor.image_for(&dir.path().join("other-key"), "1.2.0", PRODUCT, 2);
    let answer = install(&socket, &write("other.wim", &other)).await;
    assert!(
        matches!(answer, LocalInstallAnswer::Installed { .. }),
        "{answer:?}"
    );
    shutdown.cancel();
}

/// The events in the control queue, as `(kind, detail)`.
fn events(control: &warden_link::ControlSender) -> Vec<(String, String)> {
    let queue = control.lock();
    let mut found = Vec::new();
    let mut next = queue.outbox().next_pending(0);
    while let Some(seq) = next {
        if let Ok(warden_link::ControlMessage::Event(event)) = queue.message(seq) {
            found.push((event.kind, event.detail));
        }
        next = queue.outbox().next_pending(seq + 1);
    }
    found
}

/// A release-key revocation list from the fleet (what the link agent hands over) goes
/// through the same install as a file's: a tampered one is refused by name, reported,
/// and changes nothing; the vendor's list is installed, reported with its sequence
/// (for the twin), and the revoked key's image is then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_list_from_the_fleet_is_verified_by_the_unit_and_a_tampered_one_changes_nothing()
 {
    use warden::updates::revocations::install_from_fleet;
    use warden_link::topics::event_kind;
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let (mut updater, _monitor) = updater(dir.path(), &vendor, Arc::default());
    let (sequence_tx, sequence) = tokio::sync::watch::channel(None::<u64>);
    updater.revocation_sequence = Some(sequence_tx);
    let control = updater.control.clone();
    let revoked_key = dir.path().join("revoked-key");
    let image = vendor.image_for(&revoked_key, "1.2.0", PRODUCT, 2);
    let list = vendor.revocation_list(1, &[&revoked_key.join("release.cert")]);

    // Tampered on the way (one revoked key ID bit): refused, reported, nothing written.
    let mut tampered = list.clone();
    let id_at = tampered.len() - 64 - 8;
    tampered[id_at] ^= 0x01;
    let before = snapshot(dir.path().join("state").as_path());
    let refused = install_from_fleet(&updater, tampered)
        .await
        .expect_err("a tampered list is refused");
    assert!(refused.contains("signature"), "{refused}");
    assert_eq!(
        snapshot(dir.path().join("state").as_path()),
        before,
        "a refused list changed the unit's state"
    );
    assert_eq!(*sequence.borrow(), None, "no list is held");
    let reported = events(&control);
    assert!(
        reported
            .iter()
            .any(|(kind, detail)| kind == event_kind::REVOCATION_LIST_REFUSED
                && detail.contains("signature")
                && detail.contains("nothing was changed")),
        "{reported:?}"
    );

    // The vendor's list: installed, its sequence for the twin, the install reported.
    let installed = install_from_fleet(&updater, list.clone())
        .await
        .expect("installed");
    assert_eq!(
        installed,
        warden_os::revocations::RevocationInstall::Installed {
            sequence: 1,
            revoked: 1
        }
    );
    assert_eq!(*sequence.borrow(), Some(1));
    assert!(
        events(&control)
            .iter()
            .any(|(kind, _)| kind == event_kind::REVOCATION_LIST_INSTALLED),
        "{:?}",
        events(&control)
    );
    // The same list again changes nothing and is not an error.
    assert!(matches!(
        install_from_fleet(&updater, list).await,
        Ok(warden_os::revocations::RevocationInstall::AlreadyHeld { sequence: 1 })
    ));

    // The revoked key's image is now refused, as after a list from a file.
    let downloads = dir.path().join("downloads");
    let listener = local::bind(&downloads).expect("socket");
    let socket = local::socket_path(&downloads);
    let shutdown = CancellationToken::new();
    tokio::spawn(local::serve(listener, updater, 8 << 20, shutdown.clone()));
    let path = dir.path().join("revoked.wim");
    std::fs::write(&path, &image).expect("file");
    let answer = install(&socket, &path).await;
    let (reason, detail) = refusal(&answer);
    assert_eq!(reason, RefusalKind::Image, "{detail}");
    assert!(
        detail.contains("revoked by the vendor's revocation list"),
        "{detail}"
    );
    shutdown.cancel();
}

/// `warden image delta` (the release tooling's command, in this test build) from the
/// signed image at `from` to the one at `to`, signed with `to`'s release key.
fn delta_file(from: &Path, to: &Path, output: &Path) -> Vec<u8> {
    let path = |p: &Path| p.display().to_string();
    let output_of = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["image", "delta", "--from", &path(&from.join("signed.wim"))])
        .args(["--to", &path(&to.join("signed.wim"))])
        .args(["--key", &path(&to.join("release.pem"))])
        .args(["--cert", &path(&to.join("release.cert"))])
        .args(["-o", &path(output)])
        .output()
        .expect("warden runs");
    assert!(
        output_of.status.success(),
        "warden image delta: {}",
        String::from_utf8_lossy(&output_of.stderr)
    );
    std::fs::read(output).expect("delta")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_from_a_file_installs_against_the_installed_image_and_only_that_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = Vendor::new();
    let (updater, monitor) = updater(dir.path(), &vendor, Arc::default());
    let control = updater.control.clone();
    let downloads = dir.path().join("downloads");
    let listener = local::bind(&downloads).expect("socket");
    let socket = local::socket_path(&downloads);
    let shutdown = CancellationToken::new();
    tokio::spawn(local::serve(listener, updater, 8 << 20, shutdown.clone()));
    let at = |name: &str| dir.path().join(name);
    let base = vendor.image_for(&at("r1"), "1.2.0", PRODUCT, 2);
    let new = vendor.image_for(&at("r2"), "1.3.0", PRODUCT, 2);
    let _other = vendor.image_for(&at("r3"), "1.2.1", PRODUCT, 2);
    let delta = delta_file(&at("r1"), &at("r2"), &at("1.2.0-1.3.0.wdelta"));
    let wrong_base = delta_file(&at("r3"), &at("r2"), &at("1.2.1-1.3.0.wdelta"));
    assert!(
        delta.len() < new.len() / 4,
        "a delta of {} bytes",
        delta.len()
    );

    // Nothing installed yet: no base to apply it to.
    let answer = install(&socket, &at("1.2.0-1.3.0.wdelta")).await;
    let (reason, detail) = refusal(&answer);
    assert_eq!(reason, RefusalKind::Image, "{detail}");
    assert!(detail.contains("no installed image"), "{detail}");

    // 1.2.0 from its image, booted and confirmed.
    std::fs::write(at("base.wim"), &base).expect("file");
    let answer = install(&socket, &at("base.wim")).await;
    assert!(
        matches!(answer, LocalInstallAnswer::Installed { .. }),
        "{answer:?}"
    );
    let base_slot = {
        let mut monitor = monitor.lock().expect("monitor");
        let boot = monitor.select_boot().expect("boot");
        monitor.confirm(boot.slot).expect("confirm");
        boot.slot
    };

    // A delta from another base, and a corrupted one: refused by name, nothing changes.
    let before = snapshot(dir.path().join("state").as_path());
    let mut corrupted = delta.clone();
    corrupted[200] ^= 0x01;
    std::fs::write(at("corrupted.wdelta"), &corrupted).expect("file");
    for (file, names) in [
        ("1.2.1-1.3.0.wdelta", "the delta applies to image sha256"),
        (
            "corrupted.wdelta",
            "patch does not match its signed SHA-256",
        ),
    ] {
        let answer = install(&socket, &at(file)).await;
        let (reason, detail) = refusal(&answer);
        assert_eq!(reason, RefusalKind::Image, "{file}: {detail}");
        assert!(detail.contains(names), "{file}: {detail}");
        assert!(detail.contains("nothing was changed"), "{file}: {detail}");
    }
    assert_eq!(
        snapshot(dir.path().join("state").as_path()),
        before,
        "a refused delta changed the slots or the boot state"
    );
    drop(wrong_base);

    // The delta from 1.2.0: applied into the other slot, which boots 1.3.0 on trial.
    let answer = install(&socket, &at("1.2.0-1.3.0.wdelta")).await;
    let LocalInstallAnswer::Installed { version, slot, .. } = &answer else {
        panic!("not installed: {answer:?}");
    };
    assert_eq!(version, "1.3.0");
    assert_ne!(slot, &base_slot.to_string());
    // The file's first check says what it is (the installer's own "verifying" line
    // follows it).
    let statuses = update_statuses(&control);
    assert!(
        statuses.iter().any(
            |s| s.state == "verifying" && s.detail.contains("a delta from the installed image")
        ),
        "{statuses:?}"
    );
    let mut monitor = monitor.lock().expect("monitor");
    let boot = monitor.select_boot().expect("boot");
    assert!(boot.trial && boot.slot != base_slot, "{boot:?}");
    monitor.confirm(boot.slot).expect("confirm");
    assert_eq!(
        monitor.installed_image_sha256().expect("installed"),
        Some(sha2::Sha256::digest(&new).into()),
        "the slot holds exactly the 1.3.0 image"
    );
    shutdown.cancel();
}
