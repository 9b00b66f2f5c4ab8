//! Integration tests for warden-keychain: chains that verify and chains that must not.

mod revocation;

use proptest::prelude::*;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, sign};
use warden_keychain::{
    CERT_LEN, ChainError, KeyId, Purpose, ReleaseKeyCert, RootKey, domain, verify_release_key,
};

struct Chain {
    root: SecretSigningKey,
    release: SecretSigningKey,
    roots: Vec<RootKey>,
    cert: Vec<u8>,
}

fn chain(purposes: Purpose) -> Chain {
    let root = SecretSigningKey::generate().expect("rng");
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(&root, &release.public_key(), purposes, 7).expect("issue");
    let roots = vec![RootKey::from_public_key(&root.public_key()).expect("root")];
    Chain {
        root,
        release,
        roots,
        cert,
    }
}

#[test]
fn good_chain_verifies_and_signature_checks() {
    let chain = chain(Purpose::IMAGE);
    assert_eq!(chain.cert.len(), CERT_LEN);
    let key = verify_release_key(&chain.cert, &chain.roots, &[], Purpose::IMAGE).expect("verify");
    assert_eq!(key.key_id(), chain.release.key_id());
    assert_eq!(key.issuer(), chain.root.key_id());
    assert_eq!(key.serial(), 7);
    let digest = [0x5a; 32];
    let signature = sign(&chain.release, domain::IMAGE, &digest).expect("sign");
    key.verify(domain::IMAGE, &digest, &signature)
        .expect("good signature");
    let mut other_digest = digest;
    other_digest[31] ^= 1;
    assert_eq!(
        key.verify(domain::IMAGE, &other_digest, &signature),
        Err(ChainError::SignatureInvalid)
    );
}

#[test]
fn image_signature_is_not_a_bundle_signature() {
    let chain = chain(Purpose::ALL);
    let image_key =
        verify_release_key(&chain.cert, &chain.roots, &[], Purpose::IMAGE).expect("image");
    let bundle_key =
        verify_release_key(&chain.cert, &chain.roots, &[], Purpose::POLICY).expect("policy");
    let digest = [3u8; 32];
    let image_signature = sign(&chain.release, domain::IMAGE, &digest).expect("sign");
    image_key
        .verify(domain::IMAGE, &digest, &image_signature)
        .expect("image ok");
    assert_eq!(
        bundle_key.verify(domain::POLICY_BUNDLE, &digest, &image_signature),
        Err(ChainError::SignatureInvalid)
    );
}

#[test]
fn a_release_key_cannot_certify_itself_as_a_root() {
    // The certificate signature is domain-separated from release signatures: a release
    // signature over a digest can never be a certificate signature.
    let chain = chain(Purpose::IMAGE);
    let mut forged = chain.cert.clone();
    let body_digest = [0u8; 32];
    let signature = sign(&chain.release, domain::IMAGE, &body_digest).expect("sign");
    forged[CERT_LEN - 64..].copy_from_slice(&signature);
    assert_eq!(
        verify_release_key(&forged, &chain.roots, &[], Purpose::IMAGE).map(|_| ()),
        Err(ChainError::RootSignatureInvalid)
    );
}

#[test]
fn every_single_bit_flip_of_a_certificate_is_rejected() {
    let chain = chain(Purpose::IMAGE);
    let mut rejected = 0usize;
    for bit in 0..chain.cert.len() * 8 {
        let mut flipped = chain.cert.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let result = verify_release_key(&flipped, &chain.roots, &[], Purpose::IMAGE);
        assert!(result.is_err(), "bit {bit} flipped still verified");
        rejected += 1;
    }
    assert_eq!(rejected, CERT_LEN * 8);
}

#[test]
fn wrong_purpose_is_rejected() {
    let chain = chain(Purpose::POLICY);
    assert_eq!(
        verify_release_key(&chain.cert, &chain.roots, &[], Purpose::IMAGE).map(|_| ()),
        Err(ChainError::WrongPurpose)
    );
    verify_release_key(&chain.cert, &chain.roots, &[], Purpose::POLICY).expect("policy ok");
}

#[test]
fn root_restricted_to_another_purpose_is_rejected() {
    let chain = chain(Purpose::ALL);
    let image_only_roots = [chain.roots[0].with_purposes(Purpose::IMAGE)];
    verify_release_key(&chain.cert, &image_only_roots, &[], Purpose::IMAGE).expect("image ok");
    assert_eq!(
        verify_release_key(&chain.cert, &image_only_roots, &[], Purpose::POLICY).map(|_| ()),
        Err(ChainError::RootNotAllowed)
    );
}

#[test]
fn unknown_root_is_rejected() {
    let chain = chain(Purpose::IMAGE);
    let stranger = SecretSigningKey::generate().expect("rng");
    let other_roots = [RootKey::from_public_key(&stranger.public_key()).expect("root")];
    assert_eq!(
        verify_release_key(&chain.cert, &other_roots, &[], Purpose::IMAGE).map(|_| ()),
        Err(ChainError::UnknownRoot)
    );
    assert_eq!(
        verify_release_key(&chain.cert, &[], &[], Purpose::IMAGE).map(|_| ()),
        Err(ChainError::UnknownRoot)
    );
}

#[test]
fn root_key_id_spoofing_is_rejected() {
    // A certificate signed by a stranger but naming a trusted root's id.
    let chain = chain(Purpose::IMAGE);
    let stranger = SecretSigningKey::generate().expect("rng");
    let forged =
        issue_release_cert(&stranger, &chain.release.public_key(), Purpose::IMAGE, 7).expect("x");
    let mut forged = ReleaseKeyCert::decode(&forged).expect("decode");
    forged.issuer = chain.root.key_id();
    assert_eq!(
        verify_release_key(&forged.encode(), &chain.roots, &[], Purpose::IMAGE).map(|_| ()),
        Err(ChainError::RootSignatureInvalid)
    );
}

#[test]
fn revoked_release_key_and_revoked_root_are_rejected() {
    let chain = chain(Purpose::IMAGE);
    let unrelated = KeyId([9; 8]);
    verify_release_key(&chain.cert, &chain.roots, &[unrelated], Purpose::IMAGE).expect("ok");
    assert_eq!(
        verify_release_key(
            &chain.cert,
            &chain.roots,
            &[unrelated, chain.release.key_id()],
            Purpose::IMAGE
        )
        .map(|_| ()),
        Err(ChainError::Revoked)
    );
    assert_eq!(
        verify_release_key(
            &chain.cert,
            &chain.roots,
            &[chain.root.key_id()],
            Purpose::IMAGE
        )
        .map(|_| ()),
        Err(ChainError::Revoked)
    );
    // Re-issuing the same key under a new serial does not escape revocation.
    let reissued =
        issue_release_cert(&chain.root, &chain.release.public_key(), Purpose::IMAGE, 8).expect("x");
    assert_eq!(
        verify_release_key(
            &reissued,
            &chain.roots,
            &[chain.release.key_id()],
            Purpose::IMAGE
        )
        .map(|_| ()),
        Err(ChainError::Revoked)
    );
}

#[test]
fn public_key_pem_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretSigningKey::generate().expect("rng");
    let path = dir.path().join("root.pub.pem");
    warden_keychain::tooling::save_public_key(&path, &key.public_key()).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"));
    let loaded = warden_keychain::tooling::load_public_key(&path).expect("load");
    assert_eq!(loaded, key.public_key());
}

#[test]
fn error_messages_are_lowercase_and_specific() {
    for error in [
        ChainError::BadMagic,
        ChainError::Revoked,
        ChainError::WrongPurpose,
    ] {
        let message = error.to_string();
        assert!(
            message.chars().next().is_some_and(|c| c.is_lowercase()),
            "{message}"
        );
    }
    assert!(ChainError::UnknownRoot.to_string().contains("root"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn certificate_encode_decode_round_trip(purpose_bits in 1u8..=3, serial: u32, issuer: [u8; 8]) {
        let key = SecretSigningKey::generate().expect("rng");
        let cert = ReleaseKeyCert {
            purposes: Purpose::from_bits(purpose_bits).expect("bits"),
            serial,
            release_public_key: key.public_key(),
            issuer: KeyId(issuer),
            signature: [0x11; 64],
        };
        let bytes = cert.encode();
        prop_assert_eq!(ReleaseKeyCert::decode(&bytes), Ok(cert));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ReleaseKeyCert::decode(&bytes);
        let _ = verify_release_key(&bytes, &[], &[], Purpose::IMAGE);
    }

    #[test]
    fn issued_certificates_verify_for_each_granted_purpose(purpose_bits in 1u8..=3, serial: u32) {
        let purposes = Purpose::from_bits(purpose_bits).expect("bits");
        let c = chain(purposes);
        let cert = issue_release_cert(&c.root, &c.release.public_key(), purposes, serial).expect("issue");
        for single in [Purpose::IMAGE, Purpose::POLICY] {
            let result = verify_release_key(&cert, &c.roots, &[], single);
            prop_assert_eq!(result.is_ok(), purposes.contains(single));
        }
    }
}
