//! The revocation list: signed by a root, verified on the device, never replayed back.

use warden_keychain::tooling::{
    SecretSigningKey, ToolError, issue_release_cert, sign_revocation_list,
};
use warden_keychain::{
    ChainError, KeyId, LIST_MAGIC, MAX_REVOKED, Purpose, RevocationError, RevocationList, RootKey,
    verify_release_key,
};

fn root_key(key: &SecretSigningKey) -> RootKey {
    RootKey::from_public_key(&key.public_key()).expect("root")
}

#[test]
fn a_list_signed_by_a_root_revokes_a_release_key_on_the_device() {
    let root = SecretSigningKey::generate().expect("root");
    let release = SecretSigningKey::generate().expect("release");
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 1).expect("cert");
    let roots = [root_key(&root)];
    let list = sign_revocation_list(&root, 7, &[release.key_id()]).expect("list");

    let verified = RevocationList::verify(&list, &roots, &[]).expect("verifies");
    assert_eq!(verified.sequence(), 7);
    assert_eq!(verified.issuer(), root.key_id());
    assert!(verified.revokes(release.key_id()));
    let revoked: Vec<KeyId> = verified.revoked().collect();
    assert_eq!(revoked, [release.key_id()]);
    // Before the list the key verifies; with it, it is refused.
    assert!(verify_release_key(&cert, &roots, &[], Purpose::IMAGE).is_ok());
    assert_eq!(
        verify_release_key(&cert, &roots, &revoked, Purpose::IMAGE).err(),
        Some(ChainError::Revoked)
    );
}

#[test]
fn a_list_is_refused_unless_an_installed_unrevoked_root_signed_it_as_it_is() {
    let root = SecretSigningKey::generate().expect("root");
    let stranger = SecretSigningKey::generate().expect("stranger");
    let roots = [root_key(&root)];
    let victim = SecretSigningKey::generate().expect("victim").key_id();

    let foreign = sign_revocation_list(&stranger, 1, &[victim]).expect("list");
    assert_eq!(
        RevocationList::verify(&foreign, &roots, &[]).err(),
        Some(RevocationError::UnknownRoot)
    );
    let good = sign_revocation_list(&root, 1, &[victim]).expect("list");
    assert_eq!(
        RevocationList::verify(&good, &roots, &[root.key_id()]).err(),
        Some(RevocationError::SignerRevoked)
    );
    // Every single bit flip is refused (framing or signature).
    for byte in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            assert!(
                RevocationList::verify(&bad, &roots, &[]).is_err(),
                "flip of bit {bit} of byte {byte} accepted"
            );
        }
    }
    assert_eq!(
        RevocationList::verify(&good[..good.len() - 1], &roots, &[]).err(),
        Some(RevocationError::BadLength)
    );
    assert_eq!(
        RevocationList::verify(b"WKC1", &roots, &[]).err(),
        Some(RevocationError::BadMagic)
    );
    let mut future = good.clone();
    future[4] = 2;
    assert_eq!(
        RevocationList::verify(&future, &roots, &[]).err(),
        Some(RevocationError::UnsupportedVersion)
    );
    assert_eq!(&good[..4], &LIST_MAGIC);
}

#[test]
fn only_a_higher_sequence_supersedes_the_list_held() {
    let root = SecretSigningKey::generate().expect("root");
    let roots = [root_key(&root)];
    let key = SecretSigningKey::generate().expect("key").key_id();
    let first = sign_revocation_list(&root, 2, &[key]).expect("list");
    let empty_replay = sign_revocation_list(&root, 2, &[]).expect("list");
    let older = sign_revocation_list(&root, 1, &[]).expect("list");
    let newer = sign_revocation_list(&root, 3, &[key]).expect("list");
    let held = RevocationList::verify(&first, &roots, &[]).expect("held");
    assert!(held.supersedes(None));
    for same_or_older in [&empty_replay, &older] {
        let list = RevocationList::verify(same_or_older, &roots, &[]).expect("verifies");
        assert!(!list.supersedes(Some(&held)), "{list:?}");
    }
    let list = RevocationList::verify(&newer, &roots, &[]).expect("verifies");
    assert!(list.supersedes(Some(&held)));
}

#[test]
fn a_list_holds_at_most_max_revoked_keys() {
    let root = SecretSigningKey::generate().expect("root");
    let roots = [root_key(&root)];
    let full: Vec<KeyId> = (0..MAX_REVOKED)
        .map(|n| KeyId(u64::try_from(n).expect("n").to_le_bytes()))
        .collect();
    let list = sign_revocation_list(&root, 1, &full).expect("list");
    assert_eq!(
        RevocationList::verify(&list, &roots, &[])
            .expect("ok")
            .len(),
        MAX_REVOKED
    );
    let mut over = full;
    over.push(KeyId([0xff; 8]));
    let error = sign_revocation_list(&root, 1, &over).expect_err("too many");
    assert!(
        matches!(error, ToolError::TooManyRevoked { count: 257 }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "a revocation list names at most 256 keys, not 257"
    );
}
