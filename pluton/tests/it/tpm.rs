//! The TPM 2.0 backend on swtpm: identity, signing, quotes, counters, sealing, crashes.
//!
//! `cargo test -p warden-pluton --features tpm --test it -- --ignored tpm`

use std::path::Path;

use warden_pluton::quote::MAX_QUOTE_LEN;
use warden_pluton::file_store::FileStore;
use warden_pluton::sealing::SealOwner;
use warden_pluton::tpm::TpmPluton;
use warden_pluton::{PlutonError, ProvisioningCapability, Role, RootOfTrust, verify_quote, verify_signature};

use crate::swtpm::Swtpm;

/// Open the TPM backend with its state in `state_dir`; the capability on first start.
fn open(swtpm: &Swtpm, state_dir: &Path) -> (TpmPluton<FileStore>, Option<ProvisioningCapability>) {
    let store = FileStore::open(state_dir).expect("state dir");
    let mut minted = None;
    let pluton = TpmPluton::open(&swtpm.tcti(), store, 7, |capability| {
        minted = Some(capability.clone());
        Ok(())
    })
    .expect("open the tpm backend");
    (pluton, minted)
}

fn certificate_verify_content() -> Vec<u8> {
    let mut message = vec![0x20u8; 64];
    message.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    message.extend_from_slice(&[0x5a; 32]);
    message
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_identity_is_created_in_the_tpm_and_stable_across_restarts() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let state = directory.path().join("state");
    let (mut pluton, capability) = open(&swtpm, &state);
    let capability = capability.expect("minted on first start");
    assert_eq!(pluton.identity(), Err(PlutonError::NoIdentity));
    let created = pluton.create_identity(None).expect("create");
    assert_eq!(pluton.create_identity(None), Err(PlutonError::IdentityExists));
    drop(pluton);
    let (mut pluton, minted_again) = open(&swtpm, &state);
    assert!(minted_again.is_none());
    assert_eq!(pluton.identity().expect("identity"), created);
    // Factory reset: a new key.
    let reset = pluton.create_identity(Some(&capability)).expect("reset");
    assert_ne!(reset.public_key, created.public_key);
    drop(pluton);
    let (pluton, _) = open(&swtpm, &state);
    assert_eq!(pluton.identity().expect("identity"), reset);
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_signs_certificate_verify_contents_only() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let (mut pluton, _) = open(&swtpm, &directory.path().join("state"));
    let identity = pluton.create_identity(None).expect("create");
    let message = certificate_verify_content();
    for _ in 0..20 {
        let signature = pluton
            .sign_tls13_client_certificate_verify(&message)
            .expect("sign");
        assert_eq!(
            verify_signature(&identity.public_key.0, &message, &signature),
            Ok(true)
        );
    }
    let mut server = message.clone();
    server[64..97].copy_from_slice(b"TLS 1.3, server CertificateVerify");
    assert_eq!(
        pluton.sign_tls13_client_certificate_verify(&server),
        Err(PlutonError::NotTls13ClientCertificateVerify)
    );
    assert_eq!(
        pluton.sign_tls13_client_certificate_verify(&[0u8; 32]),
        Err(PlutonError::NotTls13ClientCertificateVerify)
    );
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_quote_verifies_with_the_right_nonce_only() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let (mut pluton, capability) = open(&swtpm, &directory.path().join("state"));
    let capability = capability.expect("capability");
    let identity = pluton.create_identity(None).expect("create");
    pluton.extend_register(0, &[1u8; 32]).expect("extend");
    pluton.extend_register(5, &[2u8; 32]).expect("extend");
    pluton.advance_counter(&capability, 3, 42).expect("advance");
    let nonce = [0x33u8; 32];
    let mut out = [0u8; MAX_QUOTE_LEN];
    let length = pluton.quote(&nonce, &mut out).expect("quote");
    let quote = &out[..length];
    let report = verify_quote(quote, &identity.public_key.0, &nonce).expect("verifies");
    assert_eq!(report.registers, pluton.registers());
    let expected_register_0 = warden_pluton::registers::MeasurementRegisters::replay(&[(0, [1u8; 32])])
        .expect("replay")
        .values()[0];
    assert_eq!(report.registers[0], expected_register_0);
    assert_eq!(report.counters[3], 42);
    assert_eq!(report.firmware_version, 7);
    assert_eq!(report.device_id, identity.device_id);
    assert_eq!(
        verify_quote(quote, &identity.public_key.0, &[0x34u8; 32]),
        Err(warden_pluton::QuoteError::NonceMismatch)
    );
    // A second quote (the attestation key is kept loaded) verifies too.
    let length = pluton.quote(&[9u8; 64], &mut out).expect("quote");
    verify_quote(&out[..length], &identity.public_key.0, &[9u8; 64]).expect("verifies");
    if let Some(path) = std::env::var_os("WARDEN_RECORD_TPM_QUOTE") {
        let length = pluton.quote(&nonce, &mut out).expect("quote");
        let hex = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
        std::fs::write(
            path,
            format!(
                "# A WPT1 quote recorded from swtpm by pluton/tests/it/tpm.rs\n\
                 # (WARDEN_RECORD_TPM_QUOTE=PATH cargo test -p warden-pluton --features tpm \
                 --test it -- --ignored tpm_quote).\n\
                 public_key {}\nnonce {}\nquote {}\n",
                hex(&identity.public_key.0),
                hex(&nonce),
                hex(&out[..length])
            ),
        )
        .expect("write the fixture");
    }
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_counters_are_monotonic_across_swtpm_restarts() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut swtpm = Swtpm::start(&directory.path().join("tpm"));
    let state = directory.path().join("state");
    let (mut pluton, capability) = open(&swtpm, &state);
    let capability = capability.expect("capability");
    assert_eq!(pluton.counters(), [0; 8]);
    pluton.advance_counter(&capability, 0, 5).expect("advance");
    pluton.advance_owned_counter(1, 2_026_120_601).expect("advance");
    assert_eq!(
        pluton.advance_owned_counter(0, 4),
        Err(PlutonError::CounterWouldDecrease)
    );
    drop(pluton);
    swtpm.restart();
    let (mut pluton, _) = open(&swtpm, &state);
    assert_eq!(pluton.counters()[..2], [5, 2_026_120_601]);
    assert_eq!(
        pluton.advance_owned_counter(1, 2_026_120_600),
        Err(PlutonError::CounterWouldDecrease)
    );
    assert_eq!(pluton.advance_owned_counter(1, 2_026_120_601), Ok(2_026_120_601));
    pluton.advance_owned_counter(0, 6).expect("advance");
    drop(pluton);
    swtpm.restart();
    let (pluton, _) = open(&swtpm, &state);
    assert_eq!(pluton.counters()[..2], [6, 2_026_120_601]);
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_unseal_is_refused_after_a_bound_register_changes() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let (mut pluton, _) = open(&swtpm, &directory.path().join("state"));
    pluton.create_identity(None).expect("create");
    let owner = SealOwner::Role(Role::Link);
    let mut sealed = [0u8; warden_pluton::sealing::MAX_SEALED_LEN];
    let plaintext = [0xabu8; warden_pluton::sealing::MAX_SEAL_PLAINTEXT];
    let length = pluton
        .seal(owner, b"session", 0b0010_0000, &plaintext, &mut sealed)
        .expect("seal");
    let unbound = pluton
        .seal(owner, b"session", 0, b"any boot", &mut [0u8; 512])
        .expect("seal");
    assert!(unbound > 0);
    let mut out = [0u8; warden_pluton::sealing::MAX_SEAL_PLAINTEXT];
    let opened = pluton
        .unseal(owner, b"session", &sealed[..length], &mut out)
        .expect("unseal");
    assert_eq!(out[..opened], plaintext[..]);
    // Owner and label are bound.
    assert_eq!(
        pluton.unseal(SealOwner::Role(Role::Bridges), b"session", &sealed[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    assert_eq!(
        pluton.unseal(owner, b"other", &sealed[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    // The quote still works after sealing unloaded the attestation key.
    let identity = pluton.identity().expect("identity");
    let mut quote = [0u8; MAX_QUOTE_LEN];
    let quote_len = pluton.quote(&[1u8; 32], &mut quote).expect("quote");
    verify_quote(&quote[..quote_len], &identity.public_key.0, &[1u8; 32]).expect("verifies");
    // An unbound register changes: still opens. The bound one (register 5): refused.
    pluton.extend_register(4, &[7u8; 32]).expect("extend");
    pluton
        .unseal(owner, b"session", &sealed[..length], &mut out)
        .expect("unseal with an unbound register changed");
    pluton.extend_register(5, &[7u8; 32]).expect("extend");
    assert_eq!(
        pluton.unseal(owner, b"session", &sealed[..length], &mut out),
        Err(PlutonError::UnsealFailed)
    );
    // A tampered blob is refused, not an error of another kind.
    let mut tampered = sealed;
    tampered[20] ^= 1;
    assert!(pluton.unseal(owner, b"session", &tampered[..length], &mut out).is_err());
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_boot_registers_latch() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let (mut pluton, _) = open(&swtpm, &directory.path().join("state"));
    pluton.extend_register(0, &[1u8; 32]).expect("before the latch");
    pluton.end_boot();
    assert_eq!(
        pluton.extend_register(3, &[1u8; 32]),
        Err(PlutonError::CapabilityRequired)
    );
    assert_eq!(
        pluton.extend_register(8, &[1u8; 32]),
        Err(PlutonError::InvalidRegister)
    );
    let before = pluton.registers();
    pluton.extend_register(7, &[1u8; 32]).expect("runtime register");
    assert_ne!(pluton.registers()[7], before[7]);
    assert_eq!(pluton.registers()[..7], before[..7]);
}
