//! The software backend through the `RootOfTrust` trait: provisioning, counters, quotes.

use warden_pluton::byte_array::ByteArray;
use warden_pluton::quote::MAX_QUOTE_LEN;
use warden_pluton::sealing::SealOwner;
use warden_pluton::{
    InstalledRootKey, MemoryStore, PlutonError, ProvisioningCapability, QuoteError, RootOfTrust,
    SoftwarePluton, verify_quote,
};

use crate::support::{TestRng, memory_pluton};

const NONCE: [u8; 32] = [0x4e; 32];

fn quote_of(pluton: &mut impl RootOfTrust, nonce: &[u8]) -> Vec<u8> {
    let mut out = [0u8; MAX_QUOTE_LEN];
    let length = pluton.quote(nonce, &mut out).expect("quote");
    out[..length].to_vec()
}

fn root_key(_seed: u8) -> [u8; 65] {
    warden_keychain::tooling::SecretSigningKey::generate()
        .expect("rng")
        .public_key()
}

#[test]
fn identity_is_created_once_unless_factory_reset() {
    let (mut pluton, capability) = memory_pluton(1);
    assert_eq!(pluton.identity(), Err(PlutonError::NoIdentity));
    let first = pluton.create_identity(None).expect("create");
    assert_eq!(
        pluton.create_identity(None),
        Err(PlutonError::IdentityExists)
    );
    let forged = ProvisioningCapability::from_bytes([0u8; 32]);
    assert_eq!(
        pluton.create_identity(Some(&forged)),
        Err(PlutonError::CapabilityInvalid)
    );
    assert_eq!(pluton.identity(), Ok(first));
    let second = pluton
        .create_identity(Some(&capability))
        .expect("factory reset");
    assert_ne!(first.public_key, second.public_key);
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(
        second.device_id,
        warden_pluton::DeviceId::of_public_key(&second.public_key.0)
    );
}

#[test]
fn lock_freezes_provisioning_and_factory_reset_unlocks() {
    let (mut pluton, capability) = memory_pluton(2);
    pluton.create_identity(None).expect("create");
    let root = InstalledRootKey {
        public_key: ByteArray(root_key(1)),
        purposes: 1,
    };
    let forged = ProvisioningCapability::from_bytes([9u8; 32]);
    assert_eq!(
        pluton.install_root_key(&forged, root),
        Err(PlutonError::CapabilityInvalid)
    );
    pluton.install_root_key(&capability, root).expect("install");
    // Re-installing the same key changes its purposes, not the count.
    pluton
        .install_root_key(
            &capability,
            InstalledRootKey {
                purposes: 3,
                ..root
            },
        )
        .expect("x");
    assert_eq!(pluton.root_keys().len(), 1);
    assert_eq!(pluton.root_keys()[0].purposes, 3);
    let as_keychain = pluton.root_keys()[0].to_root_key().expect("root");
    assert!(
        as_keychain
            .purposes()
            .contains(warden_keychain::Purpose::POLICY)
    );
    let bad = InstalledRootKey {
        public_key: ByteArray([4u8; 65]),
        purposes: 1,
    };
    assert_eq!(
        pluton.install_root_key(&capability, bad),
        Err(PlutonError::InvalidPublicKey)
    );
    let bad_purpose = InstalledRootKey {
        purposes: 8,
        ..root
    };
    assert_eq!(
        pluton.install_root_key(&capability, bad_purpose),
        Err(PlutonError::InvalidPurpose)
    );

    assert_eq!(
        pluton.lock_manufacturing(&forged),
        Err(PlutonError::CapabilityInvalid)
    );
    pluton.lock_manufacturing(&capability).expect("lock");
    assert!(pluton.status().manufacturing_locked);
    let other = InstalledRootKey {
        public_key: ByteArray(root_key(2)),
        purposes: 1,
    };
    assert_eq!(
        pluton.install_root_key(&capability, other),
        Err(PlutonError::ManufacturingLocked)
    );
    assert_eq!(
        pluton.create_identity(None),
        Err(PlutonError::ManufacturingLocked)
    );

    pluton
        .create_identity(Some(&capability))
        .expect("factory reset");
    assert!(!pluton.status().manufacturing_locked);
    assert!(pluton.root_keys().is_empty());
}

#[test]
fn root_key_slots_are_bounded() {
    let (mut pluton, capability) = memory_pluton(3);
    for seed in 0..4 {
        let root = InstalledRootKey {
            public_key: ByteArray(root_key(seed)),
            purposes: 1,
        };
        pluton.install_root_key(&capability, root).expect("install");
    }
    let fifth = InstalledRootKey {
        public_key: ByteArray(root_key(9)),
        purposes: 1,
    };
    assert_eq!(
        pluton.install_root_key(&capability, fifth),
        Err(PlutonError::RootKeySlotsFull)
    );
}

#[test]
fn counters_only_increase_need_the_capability_and_survive_reopen() {
    let (mut pluton, capability) = memory_pluton(4);
    let forged = ProvisioningCapability::from_bytes([1u8; 32]);
    assert_eq!(
        pluton.advance_counter(&forged, 0, 1),
        Err(PlutonError::CapabilityInvalid)
    );
    assert_eq!(pluton.advance_counter(&capability, 0, 7), Ok(7));
    assert_eq!(
        pluton.advance_counter(&capability, 0, 6),
        Err(PlutonError::CounterWouldDecrease)
    );
    assert_eq!(
        pluton.advance_counter(&capability, 8, 1),
        Err(PlutonError::InvalidCounter)
    );
    assert_eq!(pluton.counters()[0], 7);

    // "Reboot": the same store, a new instance.
    let store = pluton.store().clone();
    let mut rebooted = SoftwarePluton::open(store, TestRng::new(99), 42, |_| {
        panic!("an existing state must not mint a new capability")
    })
    .expect("reopen");
    assert_eq!(rebooted.counters()[0], 7);
    assert_eq!(
        rebooted.advance_counter(&capability, 0, 6),
        Err(PlutonError::CounterWouldDecrease)
    );
}

#[test]
fn a_failed_save_changes_nothing() {
    let (mut pluton, capability) = memory_pluton(5);
    pluton.advance_counter(&capability, 1, 3).expect("advance");
    pluton.store_mut().fail_saves = true;
    assert_eq!(
        pluton.advance_counter(&capability, 1, 4),
        Err(PlutonError::StoreFailed)
    );
    assert_eq!(pluton.counters()[1], 3);
    assert_eq!(pluton.create_identity(None), Err(PlutonError::StoreFailed));
    assert_eq!(pluton.identity(), Err(PlutonError::NoIdentity));
    assert_eq!(
        pluton.lock_manufacturing(&capability),
        Err(PlutonError::StoreFailed)
    );
    assert!(!pluton.status().manufacturing_locked);
    pluton.store_mut().fail_saves = false;
    assert_eq!(pluton.advance_counter(&capability, 1, 4), Ok(4));
}

#[test]
fn corrupt_state_refuses_to_start() {
    let (mut pluton, _) = memory_pluton(6);
    pluton.create_identity(None).expect("create");
    let mut record = pluton.store().record().expect("record").to_vec();
    record[20] ^= 1;
    let mut store = MemoryStore::new();
    warden_pluton::StateStore::save(&mut store, &record).expect("save");
    let result = SoftwarePluton::open(store, TestRng::new(1), 1, |_| Ok(()));
    assert_eq!(result.err(), Some(PlutonError::StoreCorrupt));
}

#[test]
fn quote_verifies_with_only_the_public_key() {
    let (mut pluton, capability) = memory_pluton(7);
    assert_eq!(
        pluton.quote(&NONCE, &mut [0u8; MAX_QUOTE_LEN]),
        Err(PlutonError::NoIdentity)
    );
    let identity = pluton.create_identity(None).expect("create");
    pluton.extend_register(0, &[1u8; 32]).expect("extend");
    pluton.extend_register(7, &[2u8; 32]).expect("extend");
    pluton.advance_counter(&capability, 2, 11).expect("advance");
    let quote = quote_of(&mut pluton, &NONCE);
    let contents = verify_quote(&quote, &identity.public_key.0, &NONCE).expect("verify");
    assert_eq!(contents.device_id, identity.device_id);
    assert_eq!(contents.firmware_version, 42);
    assert_eq!(contents.registers, pluton.registers());
    assert_eq!(contents.counters[2], 11);
    let replayed =
        warden_pluton::registers::MeasurementRegisters::replay(&[(0, [1u8; 32]), (7, [2u8; 32])])
            .expect("replay");
    assert_eq!(&contents.registers, replayed.values());
}

#[test]
fn every_bit_flip_in_a_quote_fails_verification() {
    let (mut pluton, _) = memory_pluton(8);
    let identity = pluton.create_identity(None).expect("create");
    pluton.extend_register(3, &[5u8; 32]).expect("extend");
    let quote = quote_of(&mut pluton, &NONCE);
    let mut checked = 0;
    for bit in 0..quote.len() * 8 {
        let mut flipped = quote.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verify_quote(&flipped, &identity.public_key.0, &NONCE).is_err(),
            "bit {bit}"
        );
        checked += 1;
    }
    assert_eq!(checked, quote.len() * 8);
}

#[test]
fn wrong_nonce_key_or_stale_registers_fail() {
    let (mut pluton, _) = memory_pluton(9);
    let identity = pluton.create_identity(None).expect("create");
    let quote = quote_of(&mut pluton, &NONCE);
    for bit in 0..NONCE.len() * 8 {
        let mut other = NONCE;
        other[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            verify_quote(&quote, &identity.public_key.0, &other),
            Err(QuoteError::NonceMismatch)
        );
    }
    assert_eq!(
        verify_quote(&quote, &identity.public_key.0, &NONCE[..31]),
        Err(QuoteError::NonceMismatch)
    );
    let (mut stranger, _) = memory_pluton(10);
    let stranger_identity = stranger.create_identity(None).expect("create");
    assert_eq!(
        verify_quote(&quote, &stranger_identity.public_key.0, &NONCE),
        Err(QuoteError::DeviceIdMismatch)
    );
    // A quote taken before an extend does not show the new register value.
    pluton.extend_register(1, &[8u8; 32]).expect("extend");
    let contents = verify_quote(&quote, &identity.public_key.0, &NONCE).expect("old quote");
    assert_ne!(contents.registers, pluton.registers());
    // Nonce limits.
    let mut out = [0u8; MAX_QUOTE_LEN];
    assert_eq!(
        pluton.quote(&[0u8; 31], &mut out),
        Err(PlutonError::InvalidNonceLength)
    );
    assert_eq!(
        pluton.quote(&[0u8; 65], &mut out),
        Err(PlutonError::InvalidNonceLength)
    );
    assert!(pluton.quote(&[0u8; 64], &mut out).is_ok());
}

#[test]
fn tls_signing_accepts_only_client_certificate_verify() {
    let (mut pluton, _) = memory_pluton(11);
    let identity = pluton.create_identity(None).expect("create");
    let mut message = vec![0x20u8; 64];
    message.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    message.extend_from_slice(&[0xaa; 32]);
    let signature = pluton
        .sign_tls13_client_certificate_verify(&message)
        .expect("sign");
    assert_eq!(
        warden_pluton::verify_signature(&identity.public_key.0, &message, &signature),
        Ok(true)
    );
    // Not a generic oracle: a quote body, a server context or raw data are refused.
    let mut server = message.clone();
    server[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
    for refused in [&server[..], b"warden-quote-v1\0anything", &[0u8; 32]] {
        assert_eq!(
            pluton.sign_tls13_client_certificate_verify(refused),
            Err(PlutonError::NotTls13ClientCertificateVerify)
        );
    }
}

#[test]
fn sealing_is_bound_to_owner_label_registers_and_device() {
    let (mut pluton, capability) = memory_pluton(12);
    let mut blob = [0u8; 2048];
    let length = pluton
        .seal(SealOwner::Uid(1000), b"wifi", 0b1, b"hunter2", &mut blob)
        .expect("seal");
    let mut out = [0u8; 64];
    let opened = pluton
        .unseal(SealOwner::Uid(1000), b"wifi", &blob[..length], &mut out)
        .expect("unseal");
    assert_eq!(&out[..opened], b"hunter2");
    assert_eq!(
        pluton.unseal(SealOwner::Uid(1001), b"wifi", &blob[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    pluton.extend_register(0, &[1u8; 32]).expect("extend");
    assert_eq!(
        pluton.unseal(SealOwner::Uid(1000), b"wifi", &blob[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    // Another device (or this one after a factory reset) cannot open it.
    let (mut other, _) = memory_pluton(13);
    assert_eq!(
        other.unseal(SealOwner::Uid(1000), b"wifi", &blob[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    let unbound = pluton
        .seal(SealOwner::Uid(1000), b"wifi", 0, b"x", &mut blob)
        .expect("seal");
    pluton
        .create_identity(Some(&capability))
        .expect("factory reset");
    assert_eq!(
        pluton.unseal(SealOwner::Uid(1000), b"wifi", &blob[..unbound], &mut out),
        Err(PlutonError::UnsealFailed)
    );
}
