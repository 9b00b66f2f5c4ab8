//! Integration tests: tamper rejection, trust decisions, framing fuzz.

use warden_image::build::{SignError, build_signed_image};
use warden_image::{
    BuildId, ChainError, HEADER_LEN, ImageError, ImageHeader, ImageTrust, KeyId, ProductId,
    RootKey, SemanticVersion, TRAILER_LEN, verify_header, verify_image,
};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};

struct Fixture {
    root: SecretSigningKey,
    release: SecretSigningKey,
    roots: Vec<RootKey>,
    image: Vec<u8>,
}

const COUNTER: u64 = 1_000;

fn product() -> ProductId {
    ProductId::new("warden-gw").expect("product")
}

fn template() -> ImageHeader {
    ImageHeader {
        product: product(),
        version: SemanticVersion::new(2, 1, 0),
        security_counter: COUNTER,
        build_id: BuildId(*b"0123456789abcdef"),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    }
}

fn fixture(payload_len: usize) -> Fixture {
    let root = SecretSigningKey::generate().expect("rng");
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 7).expect("cert");
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 31 % 251) as u8).collect();
    let image = build_signed_image(template(), &payload, &release, &cert).expect("build");
    let roots = vec![RootKey::from_public_key(&root.public_key()).expect("root")];
    Fixture {
        root,
        release,
        roots,
        image,
    }
}

fn trust<'k>(roots: &'k [RootKey], revoked: &'k [KeyId]) -> ImageTrust<'k> {
    ImageTrust {
        roots,
        revoked,
        product: product(),
        min_security_counter: COUNTER,
    }
}

/// The variants a flip of bit `bit` of header byte `at` may legitimately produce.
fn expected_for_header_byte(at: usize) -> &'static [ImageError] {
    match at {
        0..4 => &[ImageError::BadMagic],
        4..6 => &[ImageError::UnsupportedFormat],
        6..8 => &[ImageError::BadHeaderLength],
        8..24 => &[ImageError::WrongProduct],
        36..40 => &[ImageError::ReservedFlags],
        40..48 => &[
            ImageError::SecurityCounterTooLow,
            ImageError::SignatureInvalid,
        ],
        72..80 => &[ImageError::LengthMismatch, ImageError::TooLarge],
        _ => &[ImageError::SignatureInvalid],
    }
}

#[test]
fn every_header_and_trailer_bit_flip_is_rejected_with_a_named_check() {
    let fixture = fixture(300);
    let revoked = [];
    let trust = trust(&fixture.roots, &revoked);
    let verified = verify_image(&fixture.image, &trust).expect("pristine image verifies");
    assert_eq!(verified.header().version, SemanticVersion::new(2, 1, 0));
    let trailer_at = fixture.image.len() - TRAILER_LEN;
    let positions: Vec<usize> = (0..HEADER_LEN)
        .chain(trailer_at..fixture.image.len())
        .collect();
    let mut flips = 0;
    for &at in &positions {
        for bit in 0..8 {
            let mut image = fixture.image.clone();
            image[at] ^= 1 << bit;
            let error = verify_image(&image, &trust).expect_err("tampered image accepted");
            let ok = if at < HEADER_LEN {
                expected_for_header_byte(at).contains(&error)
            } else if at < trailer_at + warden_image::CERT_LEN {
                matches!(error, ImageError::Certificate(_))
            } else {
                error == ImageError::SignatureInvalid
            };
            assert!(ok, "flip of byte {at} bit {bit}: unexpected {error:?}");
            assert!(!error.to_string().is_empty());
            flips += 1;
        }
    }
    assert_eq!(flips, (HEADER_LEN + TRAILER_LEN) * 8);
    println!("header and trailer single-bit flips rejected: {flips}");
}

#[test]
fn random_payload_flips_are_rejected_as_payload_hash_mismatch() {
    let fixture = fixture(4096);
    let revoked = [];
    let trust = trust(&fixture.roots, &revoked);
    let payload_len = fixture.image.len() - HEADER_LEN - TRAILER_LEN;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = HEADER_LEN + (state as usize % payload_len);
        let bit = (state >> 40) % 8;
        let mut image = fixture.image.clone();
        image[at] ^= 1 << bit;
        assert_eq!(
            verify_image(&image, &trust).map(|_| ()),
            Err(ImageError::PayloadHashMismatch)
        );
    }
}

#[test]
fn trust_decisions_name_what_failed() {
    let fixture = fixture(64);
    let none = [];
    // Wrong product.
    let mut other = trust(&fixture.roots, &none);
    other.product = ProductId::new("other-gw").expect("product");
    assert_eq!(
        verify_image(&fixture.image, &other).map(|_| ()),
        Err(ImageError::WrongProduct)
    );
    // Counter below the device's.
    let mut newer = trust(&fixture.roots, &none);
    newer.min_security_counter = COUNTER + 1;
    let error = verify_image(&fixture.image, &newer).expect_err("rollback");
    assert_eq!(error, ImageError::SecurityCounterTooLow);
    assert!(error.to_string().contains("anti-rollback"));
    // Equal counter is fine (re-install of the confirmed release).
    let mut equal = trust(&fixture.roots, &none);
    equal.min_security_counter = COUNTER;
    assert!(verify_image(&fixture.image, &equal).is_ok());
    // Unknown root.
    let stranger = SecretSigningKey::generate().expect("rng");
    let stranger_roots = [RootKey::from_public_key(&stranger.public_key()).expect("root")];
    assert_eq!(
        verify_image(&fixture.image, &trust(&stranger_roots, &none)).map(|_| ()),
        Err(ImageError::Certificate(ChainError::UnknownRoot))
    );
    // Revoked release key, and revoked root.
    for revoked in [[fixture.release.key_id()], [fixture.root.key_id()]] {
        let error = verify_image(&fixture.image, &trust(&fixture.roots, &revoked))
            .expect_err("revoked accepted");
        assert_eq!(error, ImageError::Certificate(ChainError::Revoked));
        assert!(error.to_string().contains("revoked"), "{error}");
    }
    // A root restricted to policy bundles cannot certify image keys.
    let policy_only = [fixture.roots[0].with_purposes(Purpose::POLICY)];
    assert_eq!(
        verify_image(&fixture.image, &trust(&policy_only, &none)).map(|_| ()),
        Err(ImageError::Certificate(ChainError::RootNotAllowed))
    );
    // Truncated and padded images.
    let short = &fixture.image[..fixture.image.len() - 1];
    assert_eq!(
        verify_image(short, &trust(&fixture.roots, &none)).map(|_| ()),
        Err(ImageError::LengthMismatch)
    );
    let mut long = fixture.image.clone();
    long.push(0);
    assert_eq!(
        verify_image(&long, &trust(&fixture.roots, &none)).map(|_| ()),
        Err(ImageError::LengthMismatch)
    );
}

#[test]
fn a_policy_only_release_key_cannot_sign_images() {
    let root = SecretSigningKey::generate().expect("rng");
    let release = SecretSigningKey::generate().expect("rng");
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::POLICY, 1).expect("cert");
    assert!(matches!(
        build_signed_image(template(), b"x", &release, &cert),
        Err(SignError::CertificateNotForImages)
    ));
    let other = SecretSigningKey::generate().expect("rng");
    assert!(matches!(
        build_signed_image(template(), b"x", &other, &cert),
        Err(SignError::CertificateForOtherKey { .. })
    ));
}

#[test]
fn streaming_check_accepts_any_chunking_and_names_short_or_long_payloads() {
    let fixture = fixture(1000);
    let none = [];
    let trust = trust(&fixture.roots, &none);
    let image = &fixture.image;
    let trailer_at = image.len() - TRAILER_LEN;
    let verified = verify_header(
        &image[..HEADER_LEN],
        &image[trailer_at..],
        image.len() as u64,
        &trust,
    )
    .expect("header");
    for chunk in [1, 7, 64, 1000] {
        let mut check = verified.payload_check();
        for part in image[HEADER_LEN..trailer_at].chunks(chunk) {
            check.update(part).expect("update");
        }
        let done = check.finish().expect("payload");
        assert_eq!(done.measurement(), verified.header.digest());
        assert_eq!(done.signer(), fixture.release.key_id());
    }
    let mut short = verified.payload_check();
    short
        .update(&image[HEADER_LEN..trailer_at - 1])
        .expect("update");
    assert_eq!(short.finish().map(|_| ()), Err(ImageError::PayloadTooShort));
    let mut long = verified.payload_check();
    long.update(&image[HEADER_LEN..trailer_at]).expect("update");
    assert_eq!(long.update(&[0]), Err(ImageError::PayloadTooLong));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_verify_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let root = [RootKey::from_public_key(
                &SecretSigningKey::generate().expect("rng").public_key(),
            ).expect("root")];
            let none = [];
            prop_assert!(verify_image(&bytes, &trust(&root, &none)).is_err());
            let _ = ImageHeader::decode(&bytes);
            let _ = warden_image::split_image(&bytes);
        }
    }
}
