//! Crash-point injection: every file-system step of install → trial → confirm,
//! install → trial → rollback and delta install → trial → confirm, under process kill
//! and power loss; and a real SIGKILL.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use warden_image::{ImageTrust, verify_image};
use warden_os::boot::{BootConfig, BootError, BootMonitor};
use warden_os::file_system::{
    CrashKind, CrashingFileSystem, MemoryFileSystem, SlotFileSystem, StdFileSystem,
};
use warden_os::root_of_trust::{BootRootOfTrust, MemoryRootOfTrust};
use warden_os::slots::{CrashVerdict, TrialPolicy};

use crate::support::{Keys, product};

const K: u8 = 3;

fn config(chunk: usize) -> BootConfig {
    BootConfig {
        copy_chunk: chunk,
        trial: TrialPolicy { max_attempts: K },
        ..BootConfig::new(product())
    }
}

struct Images {
    all: Vec<Vec<u8>>,
    /// The delta from `all[0]` (what the baseline runs) to `all[1]`.
    delta_1_to_2: Vec<u8>,
}

type Monitor = BootMonitor<CrashingFileSystem<MemoryFileSystem>, MemoryRootOfTrust>;
type Sequence = fn(&mut Monitor, &Images) -> Result<(), BootError>;

fn install(monitor: &mut Monitor, image: &[u8]) -> Result<(), BootError> {
    monitor
        .install(&mut Cursor::new(image), image.len() as u64)
        .map(drop)
}

/// install v2 → trial → confirm → boot; install v3 → trial → confirm → boot.
fn confirm_sequence(monitor: &mut Monitor, images: &Images) -> Result<(), BootError> {
    for image in &images.all[1..3] {
        install(monitor, image)?;
        let decision = monitor.select_boot()?;
        assert!(decision.trial);
        monitor.confirm(decision.slot)?;
        assert!(!monitor.select_boot()?.trial);
    }
    Ok(())
}

/// delta v1 → v2 applied into the inactive slot → trial → confirm → boot; then install
/// v3 → trial → confirm.
fn delta_sequence(monitor: &mut Monitor, images: &Images) -> Result<(), BootError> {
    let delta = &images.delta_1_to_2;
    monitor.install_delta(&mut Cursor::new(delta), delta.len() as u64)?;
    let decision = monitor.select_boot()?;
    assert!(decision.trial);
    monitor.confirm(decision.slot)?;
    assert!(!monitor.select_boot()?.trial);
    install(monitor, &images.all[2])?;
    let decision = monitor.select_boot()?;
    monitor.confirm(decision.slot)?;
    Ok(())
}

/// install v2 → trial → K crashes → rollback; install v3 → trial → timeout → rollback;
/// install v4 → K+1 boots without confirmation → rollback.
fn rollback_sequence(monitor: &mut Monitor, images: &Images) -> Result<(), BootError> {
    install(monitor, &images.all[1])?;
    let trial = monitor.select_boot()?;
    assert!(trial.trial);
    for crash in 1..=K {
        let verdict = monitor.report_crash(trial.slot)?;
        assert_eq!(matches!(verdict, CrashVerdict::RolledBack(_)), crash == K);
    }
    assert!(!monitor.select_boot()?.trial);
    install(monitor, &images.all[2])?;
    let trial = monitor.select_boot()?;
    monitor.trial_timed_out(trial.slot)?;
    assert!(!monitor.select_boot()?.trial);
    install(monitor, &images.all[3])?;
    for _ in 0..=K {
        monitor.select_boot()?;
    }
    assert!(!monitor.select_boot()?.trial);
    Ok(())
}

fn baseline(keys: &Keys, images: &Images, chunk: usize) -> (MemoryFileSystem, MemoryRootOfTrust) {
    let fs = MemoryFileSystem::new();
    let rot = MemoryRootOfTrust::new(keys.roots());
    let mut monitor = BootMonitor::new(
        CrashingFileSystem::new(fs.clone(), None),
        rot.clone(),
        config(chunk),
    );
    install(&mut monitor, &images.all[0]).expect("install v1");
    let decision = monitor.select_boot().expect("boot v1");
    monitor.confirm(decision.slot).expect("confirm v1");
    (fs, rot)
}

fn check_recovery(
    keys: &Keys,
    images: &Images,
    fs: MemoryFileSystem,
    rot: MemoryRootOfTrust,
    chunk: usize,
    context: &str,
) {
    let mut monitor = BootMonitor::new(fs.clone(), rot.clone(), config(chunk));
    let decision = monitor
        .select_boot()
        .unwrap_or_else(|error| panic!("{context}: no boot after crash: {error}"));
    // What boot selected is a complete, validly signed image, not a partial one.
    let bytes = fs.read(&decision.image_path).expect("read booted image");
    let roots = keys.roots();
    let mut counter_rot = rot.clone();
    let trust = ImageTrust {
        roots: &roots,
        revoked: &[],
        product: product(),
        min_security_counter: counter_rot.read_counter().expect("counter"),
    };
    let verified = verify_image(&bytes, &trust)
        .unwrap_or_else(|error| panic!("{context}: booted image does not verify: {error}"));
    assert!(
        images.all.iter().any(|image| image == &bytes),
        "{context}: booted bytes are not one of the released images"
    );
    assert_eq!(verified.measurement(), decision.measurement);
    assert_eq!(rot.measurements().last(), Some(&decision.measurement));
    // And the device keeps working from there: confirm a trial, boot again, update again.
    if decision.trial {
        monitor
            .confirm(decision.slot)
            .expect("confirm after recovery");
    }
    monitor.select_boot().expect("second boot after recovery");
    let newest = images.all.last().expect("images");
    monitor
        .install(&mut Cursor::new(newest), newest.len() as u64)
        .unwrap_or_else(|error| panic!("{context}: install after recovery: {error}"));
    monitor
        .select_boot()
        .expect("boot the update after recovery");
}

#[test]
fn every_crash_point_boots_a_valid_signed_image() {
    let keys = Keys::new();
    let chunk = 40;
    let all: Vec<Vec<u8>> = (1..=5)
        .map(|patch| keys.image(patch, u64::from(patch), "#!/bin/sh\nexit 0\n", 2500))
        .collect();
    let (_, delta_1_to_2) =
        warden_os::delta::build_delta(&all[0], &all[1], &keys.release, &keys.cert).expect("delta");
    let images = Images { all, delta_1_to_2 };
    let sequences: [(&str, Sequence); 3] = [
        ("install-trial-confirm", confirm_sequence),
        ("install-trial-rollback", rollback_sequence),
        ("delta-trial-confirm", delta_sequence),
    ];
    let mut crash_points = 0;
    for (name, sequence) in sequences {
        let (base_fs, base_rot) = baseline(&keys, &images, chunk);
        // Dry run: count the mutating file-system operations of the whole sequence.
        let dry_fs = base_fs.snapshot();
        let mut dry = BootMonitor::new(
            CrashingFileSystem::new(dry_fs, None),
            base_rot.snapshot(),
            config(chunk),
        );
        sequence(&mut dry, &images).expect("sequence without crash");
        let total = dry.file_system().operations();
        for budget in 0..total {
            let fs = base_fs.snapshot();
            let rot = base_rot.snapshot();
            let mut monitor = BootMonitor::new(
                CrashingFileSystem::new(fs.clone(), Some(budget)),
                rot.clone(),
                config(chunk),
            );
            assert!(
                sequence(&mut monitor, &images).is_err(),
                "{name}: no crash at {budget}"
            );
            for kind in [CrashKind::ProcessKill, CrashKind::PowerLoss] {
                let context =
                    format!("{name}, crash after {budget} of {total} operations, {kind:?}");
                check_recovery(
                    &keys,
                    &images,
                    fs.after_crash(kind),
                    rot.snapshot(),
                    chunk,
                    &context,
                );
                crash_points += 1;
            }
        }
    }
    println!("crash points injected and recovered: {crash_points}");
    assert!(crash_points >= 1000, "only {crash_points} crash points");
}

#[test]
fn counter_is_raised_only_at_confirmation() {
    let keys = Keys::new();
    let images: Vec<Vec<u8>> = (1..=2)
        .map(|patch| keys.image(patch, u64::from(patch) * 10, "#!/bin/sh\n", 10))
        .collect();
    let fs = MemoryFileSystem::new();
    let rot = MemoryRootOfTrust::new(keys.roots());
    let mut monitor = BootMonitor::new(fs, rot.clone(), config(4096));
    monitor
        .install(&mut Cursor::new(&images[0]), images[0].len() as u64)
        .expect("install");
    let first = monitor.select_boot().expect("boot");
    assert_eq!(rot.counter(), 0, "trial boot must not raise the counter");
    monitor.confirm(first.slot).expect("confirm");
    assert_eq!(rot.counter(), 10);
    monitor
        .install(&mut Cursor::new(&images[1]), images[1].len() as u64)
        .expect("install");
    let trial = monitor.select_boot().expect("boot");
    assert!(trial.trial);
    assert_eq!(rot.counter(), 10, "still revertible during the trial");
    monitor.trial_timed_out(trial.slot).expect("timeout");
    let back = monitor.select_boot().expect("rollback");
    assert_eq!(
        (back.slot, back.trial, back.security_counter),
        (first.slot, false, 10)
    );
    // An image below the counter is refused at install, and nothing changes.
    let old = keys.image(9, 5, "#!/bin/sh\n", 10);
    let error = monitor
        .install(&mut Cursor::new(&old), old.len() as u64)
        .expect_err("rollback image");
    assert!(error.to_string().contains("anti-rollback"), "{error}");
}

#[test]
fn tampered_slot_is_never_run_and_the_other_slot_boots() {
    let keys = Keys::new();
    let images: Vec<Vec<u8>> = (1..=2)
        .map(|patch| keys.image(patch, 1, "#!/bin/sh\n", 100))
        .collect();
    let fs = MemoryFileSystem::new();
    let rot = MemoryRootOfTrust::new(keys.roots());
    let mut monitor = BootMonitor::new(fs.clone(), rot.clone(), config(4096));
    for image in &images {
        monitor
            .install(&mut Cursor::new(image), image.len() as u64)
            .expect("install");
        let decision = monitor.select_boot().expect("boot");
        monitor.confirm(decision.slot).expect("confirm");
    }
    let primary = monitor.select_boot().expect("boot").slot;
    // Flip one payload bit of the primary slot's file.
    let path = warden_os::boot::slot_image_path(primary);
    let mut bytes = fs.read(&path).expect("read");
    bytes[200] ^= 1;
    fs.create(&path).expect("create");
    fs.append(&path, &bytes).expect("write");
    let decision = monitor.select_boot().expect("fallback");
    assert_eq!(decision.slot, primary.other());
    assert_eq!(decision.given_up.len(), 1);
    assert!(
        decision.given_up[0].1.contains("payload"),
        "{:?}",
        decision.given_up
    );
    let state = monitor.load_state().expect("state");
    assert!(matches!(
        state.slot(primary),
        warden_os::SlotStatus::Failed { .. }
    ));
}

const CHILD_DIR: &str = "WARDEN_OS_SIGKILL_CHILD_DIR";

/// Helper run as a child process by `sigkill_mid_install_never_boots_a_partial_image`.
#[test]
#[ignore = "child process helper; runs only when the parent test sets its directory"]
fn sigkill_child_helper() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let roots_pem = dir.join("root.pub.pem");
    let root = warden_keychain::tooling::load_public_key(&roots_pem).expect("root key");
    let roots = vec![warden_image::RootKey::from_public_key(&root).expect("root")];
    let images: Vec<Vec<u8>> = ["v1.wim", "v2.wim"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).expect("image"))
        .collect();
    let mut monitor = BootMonitor::new(
        StdFileSystem::new(dir.join("state")),
        MemoryRootOfTrust::new(roots),
        BootConfig::new(product()),
    );
    if let Ok(decision) = monitor.select_boot()
        && decision.trial
    {
        monitor.confirm(decision.slot).expect("confirm");
    }
    for round in 0.. {
        let image = &images[round % 2];
        monitor
            .install(&mut Cursor::new(image), image.len() as u64)
            .expect("install");
        let decision = monitor.select_boot().expect("boot");
        monitor.confirm(decision.slot).expect("confirm");
    }
}

#[test]
fn sigkill_mid_install_never_boots_a_partial_image() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let images: Vec<Vec<u8>> = (1..=2)
        .map(|patch| keys.image(patch, 1, "#!/bin/sh\n", 3 << 20))
        .collect();
    std::fs::write(dir.path().join("v1.wim"), &images[0]).expect("write");
    std::fs::write(dir.path().join("v2.wim"), &images[1]).expect("write");
    warden_keychain::tooling::save_public_key(
        &dir.path().join("root.pub.pem"),
        &keys.root.public_key(),
    )
    .expect("pem");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut kills = 0;
    let mut booted_once = false;
    for round in 0..8u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "crash::sigkill_child_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(150 + round * 97 % 400));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        let rot = MemoryRootOfTrust::new(keys.roots());
        let mut monitor =
            BootMonitor::new(StdFileSystem::new(&state), rot, BootConfig::new(product()));
        match monitor.select_boot() {
            Ok(decision) => {
                let bytes = std::fs::read(state.join(&decision.image_path)).expect("read");
                assert!(
                    images.contains(&bytes),
                    "round {round}: booted a partial or unknown image"
                );
                booted_once = true;
            }
            // Killed before the very first install finished: nothing was ever bootable.
            Err(BootError::NoBootableImage(failures)) if !booted_once && failures.is_empty() => {}
            Err(error) => panic!("round {round}: no boot after SIGKILL: {error}"),
        }
    }
    println!("child processes SIGKILLed mid-update and recovered: {kills}");
}
