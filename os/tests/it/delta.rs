//! Delta images: build, apply into the inactive slot, verify the result as an image;
//! corrupted deltas, wrong bases and results that are not valid images are refused and
//! never booted; the agent falls back to the full image.
//!
//! The images are synthetic but shaped like two builds of the appliance: the payload's
//! `bin/warden` is 1.5 MiB of pseudo-random "code". A *minor* change (one crate changed)
//! rewrites a 24 KiB region in the middle, inserts 2 KiB after it (everything behind
//! shifts) and bumps one byte in every 4 KiB after it (relocated addresses). A *major*
//! change regenerates half of the binary.

use std::io::Cursor;

use sha2::{Digest, Sha256};
use warden_image::ProductId;
use warden_os::boot::{BootConfig, BootError, BootMonitor};
use warden_os::delta::{DeltaError, build_delta};
use warden_os::file_system::{MemoryFileSystem, SlotFileSystem};
use warden_os::payload::{ENTRY_POINT, PayloadEntry, encode_archive};
use warden_os::root_of_trust::MemoryRootOfTrust;
use warden_os::slots::SlotStatus;

use crate::support::{Keys, product};

const BINARY_LEN: usize = 1_500_000;

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// A binary with one crate changed: see the module doc.
pub fn minor_change(binary: &[u8]) -> Vec<u8> {
    let middle = binary.len() / 2;
    let mut changed = binary.to_vec();
    changed[middle..middle + (24 << 10)].copy_from_slice(&pseudo_random(24 << 10, 77));
    changed.splice(
        middle + (24 << 10)..middle + (24 << 10),
        pseudo_random(2 << 10, 78),
    );
    for at in (middle + (26 << 10)..changed.len()).step_by(4096) {
        changed[at] = changed[at].wrapping_add(1);
    }
    changed
}

/// A binary with half of it rebuilt.
pub fn major_change(binary: &[u8]) -> Vec<u8> {
    let mut changed = binary.to_vec();
    let half = binary.len() / 2;
    changed[half..].copy_from_slice(&pseudo_random(binary.len() - half, 99));
    changed
}

/// A signed image of `binary` as `bin/warden`.
fn image_of(keys: &Keys, binary: &[u8], patch: u32, counter: u64, product: ProductId) -> Vec<u8> {
    let payload = encode_archive(vec![PayloadEntry {
        path: ENTRY_POINT.to_owned(),
        mode: 0o755,
        data: binary.to_vec(),
    }])
    .expect("archive");
    keys.signed(&payload, patch, counter, product)
}

type Monitor = BootMonitor<MemoryFileSystem, MemoryRootOfTrust>;

/// A device running `image` (installed, booted, confirmed).
fn device_running(keys: &Keys, image: &[u8]) -> (Monitor, MemoryFileSystem) {
    let fs = MemoryFileSystem::new();
    let mut monitor = BootMonitor::new(
        fs.clone(),
        MemoryRootOfTrust::new(keys.roots()),
        BootConfig::new(product()),
    );
    monitor
        .install(&mut Cursor::new(image), image.len() as u64)
        .expect("install base");
    let decision = monitor.select_boot().expect("boot base");
    monitor.confirm(decision.slot).expect("confirm base");
    (monitor, fs)
}

fn install_delta(monitor: &mut Monitor, delta: &[u8]) -> Result<warden_os::Slot, BootError> {
    monitor.install_delta(&mut Cursor::new(delta), delta.len() as u64)
}

/// The state and slot files, to show that a refused delta changed nothing.
fn snapshot(fs: &MemoryFileSystem) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    fs.files()
        .into_iter()
        .map(|path| {
            let bytes = fs.read(&path).expect("read");
            (path, bytes)
        })
        .collect()
}

/// The device boots `expected` (on trial or not) and nothing else.
fn boots(monitor: &mut Monitor, fs: &MemoryFileSystem, expected: &[u8], trial: bool) {
    let decision = monitor.select_boot().expect("boot");
    assert_eq!(decision.trial, trial);
    assert_eq!(fs.read(&decision.image_path).expect("slot"), expected);
}

#[test]
fn minor_and_major_changes_apply_into_the_inactive_slot_and_boot_on_trial() {
    let keys = Keys::new();
    let binary = pseudo_random(BINARY_LEN, 1);
    let old = image_of(&keys, &binary, 1, 1, product());
    for (name, changed, at_most) in [
        ("minor", minor_change(&binary), 0.05),
        ("major", major_change(&binary), 0.60),
    ] {
        let new = image_of(&keys, &changed, 2, 2, product());
        let (header, delta) = build_delta(&old, &new, &keys.release, &keys.cert).expect("delta");
        let ratio = delta.len() as f64 / new.len() as f64;
        println!(
            "{name}: delta {} bytes for a {}-byte image",
            delta.len(),
            new.len()
        );
        assert!(ratio < at_most, "{name}: delta is {ratio:.3} of the image");
        assert_eq!(header.base_sha256, <[u8; 32]>::from(Sha256::digest(&old)));
        assert_eq!(header.result_sha256, <[u8; 32]>::from(Sha256::digest(&new)));

        let (mut monitor, fs) = device_running(&keys, &old);
        let slot = install_delta(&mut monitor, &delta).expect("install delta");
        assert!(matches!(
            monitor.load_state().expect("state").slot(slot),
            SlotStatus::Pending(_)
        ));
        boots(&mut monitor, &fs, &new, true);
    }
}

#[test]
fn corrupted_or_forged_deltas_are_refused_and_change_nothing() {
    let keys = Keys::new();
    let binary = pseudo_random(BINARY_LEN / 4, 2);
    let old = image_of(&keys, &binary, 1, 1, product());
    let new = image_of(&keys, &minor_change(&binary), 2, 2, product());
    let (_, delta) = build_delta(&old, &new, &keys.release, &keys.cert).expect("delta");
    let (mut monitor, fs) = device_running(&keys, &old);
    let before = snapshot(&fs);

    let mut patch_flipped = delta.clone();
    patch_flipped[200] ^= 0x01;
    let mut header_flipped = delta.clone();
    header_flipped[100] ^= 0x01;
    let truncated = &delta[..delta.len() - 1];
    let other = Keys::new();
    let (_, foreign) = build_delta(&old, &new, &other.release, &other.cert).expect("delta");
    let cases: [(&str, &[u8]); 4] = [
        ("patch byte flipped", &patch_flipped),
        ("header byte flipped", &header_flipped),
        ("truncated", truncated),
        ("signed by an untrusted key", &foreign),
    ];
    for (name, bad) in cases {
        let error = install_delta(&mut monitor, bad).expect_err(name);
        assert!(
            matches!(error, BootError::DeltaRefused(_)),
            "{name}: {error}"
        );
        println!("{name}: {error}");
        assert_eq!(snapshot(&fs), before, "{name}: files changed");
    }
    let error = install_delta(&mut monitor, &patch_flipped).expect_err("flipped");
    assert!(matches!(
        error,
        BootError::DeltaRefused(DeltaError::PatchHashMismatch)
    ));
    boots(&mut monitor, &fs, &old, false);
}

#[test]
fn a_delta_for_another_base_is_refused_naming_both_images() {
    let keys = Keys::new();
    let binary = pseudo_random(BINARY_LEN / 4, 3);
    let installed = image_of(&keys, &binary, 1, 1, product());
    let other_base = image_of(&keys, &minor_change(&binary), 2, 1, product());
    let new = image_of(&keys, &major_change(&binary), 3, 2, product());
    let (_, delta) = build_delta(&other_base, &new, &keys.release, &keys.cert).expect("delta");
    let (mut monitor, fs) = device_running(&keys, &installed);
    let before = snapshot(&fs);
    let error = install_delta(&mut monitor, &delta).expect_err("wrong base");
    let message = error.to_string();
    assert!(
        matches!(
            error,
            BootError::DeltaRefused(DeltaError::BaseMismatch { .. })
        ),
        "{message}"
    );
    assert!(
        message.contains(&hex::encode(Sha256::digest(&other_base))),
        "{message}"
    );
    assert!(
        message.contains(&hex::encode(Sha256::digest(&installed))),
        "{message}"
    );
    assert_eq!(snapshot(&fs), before);
    boots(&mut monitor, &fs, &installed, false);
}

#[test]
fn the_result_is_verified_as_a_full_image_before_it_may_boot() {
    let keys = Keys::new();
    let binary = pseudo_random(BINARY_LEN / 4, 4);
    let old = image_of(&keys, &binary, 1, 5, product());

    // A delta signed by the trusted release key whose result is signed by an untrusted
    // one: the delta verifies and applies, the result does not verify as an image.
    let untrusted = Keys::new();
    let foreign_result = image_of(&untrusted, &minor_change(&binary), 2, 6, product());
    let (_, delta) = build_delta(&old, &foreign_result, &keys.release, &keys.cert).expect("delta");
    let (mut monitor, fs) = device_running(&keys, &old);
    let error = install_delta(&mut monitor, &delta).expect_err("untrusted result");
    assert!(matches!(error, BootError::ImageRefused(_)), "{error}");
    assert!(!fs.exists(std::path::Path::new("slots/install.tmp")));
    boots(&mut monitor, &fs, &old, false);

    // A result below the anti-rollback counter is refused before anything is written.
    let older = image_of(&keys, &minor_change(&binary), 2, 4, product());
    let (_, delta) = build_delta(&old, &older, &keys.release, &keys.cert).expect("delta");
    let before = snapshot(&fs);
    let error = install_delta(&mut monitor, &delta).expect_err("downgrade");
    assert!(
        matches!(
            error,
            BootError::DeltaRefused(DeltaError::CounterTooLow {
                delta: 4,
                device: 5
            })
        ),
        "{error}"
    );
    assert_eq!(snapshot(&fs), before);
    boots(&mut monitor, &fs, &old, false);
}

#[test]
fn the_cli_builds_a_delta_from_signed_image_files() {
    let keys = Keys::new();
    let binary = pseudo_random(BINARY_LEN / 8, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.wim");
    let new = dir.path().join("new.wim");
    let new_image = image_of(&keys, &minor_change(&binary), 2, 2, product());
    std::fs::write(&old, image_of(&keys, &binary, 1, 1, product())).expect("write");
    std::fs::write(&new, &new_image).expect("write");
    let key = dir.path().join("release.pem");
    let cert = dir.path().join("release.cert");
    warden_keychain::tooling::save_secret_key(&key, &keys.release).expect("key");
    std::fs::write(&cert, &keys.cert).expect("cert");
    let output = dir.path().join("d.wdelta");
    let header =
        warden_os::delta::build_delta_file(&old, &new, &key, &cert, &output).expect("delta file");
    assert_eq!(header.result_len, new_image.len() as u64);
    assert_eq!(
        std::fs::metadata(&output).expect("delta").len(),
        header.delta_len()
    );
    // Turning an unsigned image into a delta base is refused, naming the file.
    std::fs::write(&old, b"not an image").expect("write");
    let error =
        warden_os::delta::build_delta_file(&old, &new, &key, &cert, &output).expect_err("unsigned");
    assert!(error.to_string().contains("old.wim"), "{error}");
}
