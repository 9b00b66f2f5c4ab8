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
