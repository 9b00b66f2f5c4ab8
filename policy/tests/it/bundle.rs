//! Signed bundles: build, verify, anti-rollback, store, tampering.

use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};
use warden_keychain::{ChainError, KeyId, Purpose, RootKey};
use warden_policy::bundle::build::build_bundle;
use warden_policy::bundle::store::{BundleStore, CURRENT_FILE, StoreError};
use warden_policy::bundle::{BundleError, BundleTrust, ProductId, load_bundle, verify_bundle};
use warden_policy::{DecodedTables, ModbusRequest, RateState, Request, Source, compile, evaluate};

const PLANT: &str = include_str!("../../examples/plant.toml");

struct Keys {
    root: RootKey,
    release: SecretSigningKey,
    cert: Vec<u8>,
}

fn keys(purposes: Purpose) -> Keys {
    let root_secret = SecretSigningKey::generate().expect("root key");
    let release = SecretSigningKey::generate().expect("release key");
    let cert = issue_release_cert(&root_secret, &release.public_key(), purposes, 7).expect("cert");
    let root = RootKey::from_public_key(&root_secret.public_key()).expect("root");
    Keys {
        root,
        release,
        cert,
    }
}

fn product() -> ProductId {
    ProductId::new("warden-gw1").expect("product id")
}

fn bundle(keys: &Keys, source: &str, version: u64) -> Vec<u8> {
    let policy = compile(source, "plant.toml").expect("compiles").policy;
    build_bundle(&policy, product(), version, &keys.release, &keys.cert).expect("bundle")
}

fn trust<'k>(roots: &'k [RootKey], revoked: &'k [KeyId], min_version: u64) -> BundleTrust<'k> {
    BundleTrust {
        roots,
        revoked,
        product: product(),
        min_version,
    }
}

#[test]
fn bundles_are_reproducible_and_verify_on_the_device_path() {
    let k = keys(Purpose::POLICY);
    let a = bundle(&k, PLANT, 3);
    let b = bundle(&k, PLANT, 3);
    // ECDSA signatures are deterministic (RFC 6979), so whole bundles are.
    assert_eq!(a, b);
    let roots = [k.root];
    let mut tables = DecodedTables::new();
    let header = load_bundle(&a, &trust(&roots, &[], 0), &mut tables).expect("verifies");
    assert_eq!(header.version, 3);
    let t = tables.tables();
    let line1 = t.bridge_id("line1").expect("bridge");
    let mut rate = RateState::<[u64; 16]>::new();
    let write = Request::Modbus(ModbusRequest {
        bridge: line1,
        unit: 1,
        function: 6,
        address: 5,
        count: 1,
        values: &[25],
        source: Source::Cloud,
    });
    assert!(evaluate(&t, &mut rate, &write, 0).is_allowed());
}

#[test]
fn verification_refuses_what_it_must() {
    let k = keys(Purpose::POLICY);
    let good = bundle(&k, PLANT, 5);
    let roots = [k.root];
    assert!(verify_bundle(&good, &trust(&roots, &[], 5)).is_ok());
    assert_eq!(
        verify_bundle(&good, &trust(&roots, &[], 6)).expect_err("must be refused"),
        BundleError::Rollback
    );
    let other = BundleTrust {
        product: ProductId::new("other").expect("id"),
        ..trust(&roots, &[], 0)
    };
    assert_eq!(
        verify_bundle(&good, &other).expect_err("must be refused"),
        BundleError::WrongProduct
    );
    let mut body = good.clone();
    body[80] ^= 1;
    assert_eq!(
        verify_bundle(&body, &trust(&roots, &[], 0)).expect_err("must be refused"),
        BundleError::BodyHashMismatch
    );
    let mut version = good.clone();
    version[24] = 9; // header is signed: a raised version breaks the signature
    assert_eq!(
        verify_bundle(&version, &trust(&roots, &[], 0)).expect_err("must be refused"),
        BundleError::SignatureInvalid
    );
    let mut signature = good.clone();
    let last = signature.len() - 1;
    signature[last] ^= 1;
    assert_eq!(
        verify_bundle(&signature, &trust(&roots, &[], 0)).expect_err("must be refused"),
        BundleError::SignatureInvalid
    );
    let stranger = keys(Purpose::POLICY);
    assert_eq!(
        verify_bundle(&good, &trust(&[stranger.root], &[], 0)).expect_err("must be refused"),
        BundleError::Certificate(ChainError::UnknownRoot)
    );
    let revoked = [k.release.key_id()];
    assert_eq!(
        verify_bundle(&good, &trust(&roots, &revoked, 0)).expect_err("must be refused"),
        BundleError::Certificate(ChainError::Revoked)
    );
    let image_only = keys(Purpose::IMAGE);
    let policy = compile(PLANT, "plant.toml").expect("compiles").policy;
    assert!(build_bundle(&policy, product(), 1, &image_only.release, &image_only.cert).is_err());
    assert_eq!(
        verify_bundle(&good[..good.len() - 1], &trust(&roots, &[], 0))
            .expect_err("must be refused"),
        BundleError::Truncated
    );
}

#[test]
fn store_applies_only_verified_newer_bundles_and_keeps_the_last_good_one() {
    let k = keys(Purpose::POLICY);
    let dir = tempfile::tempdir().expect("temp dir");
    let roots = [k.root];
    let mut store = BundleStore::open(dir.path(), &roots, &[], product()).expect("open");
    assert!(store.current().is_none());
    let v2 = bundle(&k, PLANT, 2);
    assert_eq!(store.apply(&v2).expect("apply v2").header.version, 2);
    // Same version, same bytes: accepted (idempotent).
    store.apply(&v2).expect("re-apply v2");
    // Same version, other content: refused.
    let changed = PLANT.replace("0..=500", "0..=400");
    let v2b = bundle(&k, &changed, 2);
    assert!(matches!(
        store.apply(&v2b),
        Err(StoreError::Refused(BundleError::VersionReused))
    ));
    // Older: refused.
    let v1 = bundle(&k, PLANT, 1);
    assert!(matches!(
        store.apply(&v1),
        Err(StoreError::Rollback {
            offered: 1,
            applied: 2
        })
    ));
    // Forged: refused, disk unchanged.
    let mut forged = bundle(&k, &changed, 3);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        store.apply(&forged),
        Err(StoreError::Refused(BundleError::SignatureInvalid))
    ));
    assert_eq!(
        std::fs::read(dir.path().join(CURRENT_FILE)).expect("stored"),
        v2
    );
    // Newer: applied and persisted; a reopened store loads it.
    let v3 = bundle(&k, &changed, 3);
    store.apply(&v3).expect("apply v3");
    drop(store);
    let mut reopened = BundleStore::open(dir.path(), &roots, &[], product()).expect("reopen");
    let current = reopened.current().expect("current");
    assert_eq!(current.header.version, 3);
    assert!(current.policy.bridge_id("line1").is_some());
    reopened.set_rollback_floor(10);
    assert!(matches!(
        reopened.apply(&bundle(&k, PLANT, 4)),
        Err(StoreError::Rollback {
            offered: 4,
            applied: 10
        })
    ));
    // A revoked signer makes the stored bundle invalid on open.
    let revoked = [k.release.key_id()];
    assert!(matches!(
        BundleStore::open(dir.path(), &roots, &revoked, product()),
        Err(StoreError::StoredInvalid { .. })
    ));
}
