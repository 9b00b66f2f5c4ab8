//! A revocation list from the vendor root: images signed by a revoked release key are
//! refused at install and at boot; lists are never replayed back; a tampered list
//! refuses everything.

use std::io::Cursor;
use std::path::Path;

use warden_image::{ChainError, ImageError, SemanticVersion};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, sign_revocation_list};
use warden_os::boot::{BootConfig, BootError, BootMonitor};
use warden_os::file_system::{MemoryFileSystem, SlotFileSystem};
use warden_os::revocations::{
    HeldRevocations, REVOCATION_LIST_FILE, RevocationInstall, RevocationStoreError,
};
use warden_os::root_of_trust::MemoryRootOfTrust;

use crate::support::{Keys, product};

type Monitor = BootMonitor<MemoryFileSystem, MemoryRootOfTrust>;

fn install(monitor: &mut Monitor, image: &[u8]) -> Result<(), BootError> {
    monitor
        .install(&mut Cursor::new(image), image.len() as u64)
        .map(drop)
}

/// The same vendor root as `keys`, with a second release key it certifies.
fn second_release_key(keys: &Keys) -> Keys {
    let release = SecretSigningKey::generate().expect("rng");
    let cert =
        issue_release_cert(&keys.root, &release.public_key(), Purpose::IMAGE, 2).expect("cert");
    Keys {
        root: SecretSigningKey::from_pkcs8_pem(&keys.root.to_pkcs8_pem().expect("pem"))
            .expect("root"),
        release,
        cert,
    }
}

#[test]
fn a_unit_refuses_an_image_signed_by_a_revoked_release_key() {
    let old = Keys::new();
    let new = second_release_key(&old);
    let fs = MemoryFileSystem::new();
    let mut monitor = BootMonitor::new(
        fs.clone(),
        MemoryRootOfTrust::new(old.roots()),
        BootConfig::new(product()),
    );
    install(&mut monitor, &old.image(1, 1, "#!/bin/sh\n", 64)).expect("before: old key accepted");
    let decision = monitor.select_boot().expect("boot");
    monitor.confirm(decision.slot).expect("confirm");
    assert_eq!(
        monitor.held_revocations().expect("none held"),
        HeldRevocations::default()
    );

    let list = sign_revocation_list(&old.root, 1, &[old.release.key_id()]).expect("list");
    assert_eq!(
        monitor.install_revocation_list(&list).expect("installed"),
        RevocationInstall::Installed {
            sequence: 1,
            revoked: 1
        }
    );
    assert_eq!(
        monitor.install_revocation_list(&list).expect("idempotent"),
        RevocationInstall::AlreadyHeld { sequence: 1 }
    );
    assert_eq!(
        monitor.held_revocations().expect("held"),
        HeldRevocations {
            sequence: Some(1),
            revoked: vec![old.release.key_id()],
        }
    );

    // The revoked key's next image is refused, by name; the new key's is installed.
    let refused = install(&mut monitor, &old.image(2, 1, "#!/bin/sh\n", 64))
        .expect_err("revoked key refused");
    assert!(
        matches!(
            refused,
            BootError::ImageRefused(ImageError::Certificate(ChainError::Revoked))
        ),
        "{refused:?}"
    );
    assert!(
        refused
            .to_string()
            .contains("revoked by the vendor's revocation list"),
        "{refused}"
    );
    install(&mut monitor, &new.image(3, 1, "#!/bin/sh\n", 64)).expect("new key accepted");
    let decision = monitor.select_boot().expect("boots the new key's image");
    assert_eq!(decision.version, SemanticVersion::new(1, 0, 3));

    // A fresh monitor on the same disk (a reboot) keeps refusing the revoked key.
    let mut rebooted = BootMonitor::new(
        fs,
        MemoryRootOfTrust::new(old.roots()),
        BootConfig::new(product()),
    );
    assert!(matches!(
        install(&mut rebooted, &old.image(4, 1, "#!/bin/sh\n", 64)),
        Err(BootError::ImageRefused(ImageError::Certificate(
            ChainError::Revoked
        )))
    ));
}

#[test]
fn lists_are_never_replayed_back_nor_taken_from_another_root_nor_tampered() {
    let keys = Keys::new();
    let stranger = Keys::new();
    let fs = MemoryFileSystem::new();
    let mut monitor = BootMonitor::new(
        fs.clone(),
        MemoryRootOfTrust::new(keys.roots()),
        BootConfig::new(product()),
    );
    let revoked = keys.release.key_id();
    let second = sign_revocation_list(&keys.root, 2, &[revoked]).expect("list");
    monitor.install_revocation_list(&second).expect("installed");

    for (older, sequence) in [
        (sign_revocation_list(&keys.root, 1, &[]).expect("list"), 1),
        (sign_revocation_list(&keys.root, 2, &[]).expect("list"), 2),
    ] {
        let error = monitor
            .install_revocation_list(&older)
            .expect_err("not newer");
        assert!(
            matches!(error, RevocationStoreError::NotNewer { offered, held: 2 } if offered == sequence),
            "{error}"
        );
    }
    let foreign = sign_revocation_list(&stranger.root, 9, &[]).expect("list");
    let error = monitor
        .install_revocation_list(&foreign)
        .expect_err("another root");
    assert_eq!(
        error.to_string(),
        "revocation list refused: revocation list is not signed by an installed root key"
    );
    assert_eq!(
        fs.read(Path::new(REVOCATION_LIST_FILE)).expect("held"),
        second,
        "refused lists change nothing"
    );

    // A held list altered on disk is never applied: every image is refused, naming it.
    let mut tampered = second.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    fs.create(Path::new(REVOCATION_LIST_FILE)).expect("create");
    fs.append(Path::new(REVOCATION_LIST_FILE), &tampered)
        .expect("write");
    let error = install(&mut monitor, &keys.image(1, 1, "#!/bin/sh\n", 64))
        .expect_err("a tampered list refuses everything");
    assert!(
        error.to_string().contains(REVOCATION_LIST_FILE),
        "the error names the file: {error}"
    );
    // A valid newer list replaces it.
    let third = sign_revocation_list(&keys.root, 3, &[]).expect("list");
    monitor
        .install_revocation_list(&third)
        .expect("a valid list replaces a tampered one");
    install(&mut monitor, &keys.image(1, 1, "#!/bin/sh\n", 64)).expect("nothing revoked now");
}

/// The held list is on a disk anyone with the unit in hand can write: deleting it, or
/// putting back an older list, must not un-revoke the key (the root of trust's floor).
#[test]
fn a_deleted_or_rolled_back_list_does_not_unrevoke_a_key() {
    let keys = Keys::new();
    let fs = MemoryFileSystem::new();
    let root_of_trust = MemoryRootOfTrust::new(keys.roots());
    let mut monitor = BootMonitor::new(
        fs.clone(),
        root_of_trust.clone(),
        BootConfig::new(product()),
    );
    let first = sign_revocation_list(&keys.root, 1, &[]).expect("list");
    monitor.install_revocation_list(&first).expect("installed");
    let revoking = sign_revocation_list(&keys.root, 2, &[keys.release.key_id()]).expect("list");
    monitor
        .install_revocation_list(&revoking)
        .expect("installed");
    assert_eq!(root_of_trust.revocation_floor(), 2, "anchored at install");
    let image = keys.image(1, 1, "#!/bin/sh\n", 64);
    assert!(install(&mut monitor, &image).is_err(), "revoked");

    // Deleted: every image refused, naming the floor, rather than the key un-revoked.
    fs.remove_file(Path::new(REVOCATION_LIST_FILE))
        .expect("delete");
    let error = install(&mut monitor, &image).expect_err("deleted list");
    assert!(
        error.to_string().contains("revocation list floor 2"),
        "{error}"
    );
    // The older list put back: the same.
    fs.create(Path::new(REVOCATION_LIST_FILE)).expect("create");
    fs.append(Path::new(REVOCATION_LIST_FILE), &first)
        .expect("write");
    let error = install(&mut monitor, &image).expect_err("rolled-back list");
    assert!(error.to_string().contains("sequence 1"), "{error}");
    // Nor can the older list be installed again through the front door.
    fs.remove_file(Path::new(REVOCATION_LIST_FILE))
        .expect("delete");
    assert!(matches!(
        monitor.install_revocation_list(&first),
        Err(RevocationStoreError::NotNewer {
            offered: 1,
            held: 2
        })
    ));
    // The list at the floor, put back, restores the unit: the key stays revoked.
    monitor
        .install_revocation_list(&revoking)
        .expect("the same list again");
    assert!(matches!(
        install(&mut monitor, &image),
        Err(BootError::ImageRefused(ImageError::Certificate(
            ChainError::Revoked
        )))
    ));
}

/// A list written by a root of trust that may not raise the floor (a compartment) is
/// anchored by the next verification of one that may (the boot stage).
#[test]
fn a_list_installed_without_the_right_is_anchored_at_the_next_privileged_check() {
    let keys = Keys::new();
    let fs = MemoryFileSystem::new();
    let root_of_trust = MemoryRootOfTrust::new(keys.roots());
    let list = sign_revocation_list(&keys.root, 5, &[]).expect("list");
    // As a compartment would leave it: the file written, the floor not raised.
    fs.create_dir_all(Path::new("boot")).expect("dir");
    fs.create(Path::new(REVOCATION_LIST_FILE)).expect("create");
    fs.append(Path::new(REVOCATION_LIST_FILE), &list)
        .expect("write");
    assert_eq!(root_of_trust.revocation_floor(), 0);
    let mut boot = BootMonitor::new(
        fs.clone(),
        root_of_trust.clone(),
        BootConfig::new(product()),
    );
    install(&mut boot, &keys.image(1, 1, "#!/bin/sh\n", 64)).expect("nothing revoked");
    assert_eq!(root_of_trust.revocation_floor(), 5, "anchored by the check");
}
