//! The TPM 2.0 backend on swtpm: identity, signing, quotes, counters, sealing, crashes.
//!
//! `cargo test -p warden-pluton --features tpm --test it -- --ignored tpm`

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warden_pluton::file_store::FileStore;
use warden_pluton::quote::MAX_QUOTE_LEN;
use warden_pluton::sealing::SealOwner;
use warden_pluton::tpm::TpmPluton;
use warden_pluton::{
    PlutonError, ProvisioningCapability, Role, RootOfTrust, verify_quote, verify_signature,
};

use warden_pluton::protocol::{FRAME_HEADER_LEN, MAX_FRAME_LEN, Request, Response, encode_frame};
use warden_pluton_api::PlutonClient;

use crate::support::{PlutonProcess, call, exchange_raw};
use warden_test_support::swtpm::Swtpm;

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
    assert_eq!(
        pluton.create_identity(None),
        Err(PlutonError::IdentityExists)
    );
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
    let expected_register_0 =
        warden_pluton::registers::MeasurementRegisters::replay(&[(0, [1u8; 32])])
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
        let hex = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        };
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
    pluton
        .advance_owned_counter(1, 2_026_120_601)
        .expect("advance");
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
    assert_eq!(
        pluton.advance_owned_counter(1, 2_026_120_601),
        Ok(2_026_120_601)
    );
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
        pluton.unseal(
            SealOwner::Role(Role::Bridges),
            b"session",
            &sealed[..length],
            &mut out
        ),
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
    assert!(
        pluton
            .unseal(owner, b"session", &tampered[..length], &mut out)
            .is_err()
    );
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_boot_registers_latch() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let (mut pluton, _) = open(&swtpm, &directory.path().join("state"));
    pluton
        .extend_register(0, &[1u8; 32])
        .expect("before the latch");
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
    pluton
        .extend_register(7, &[1u8; 32])
        .expect("runtime register");
    assert_ne!(pluton.registers()[7], before[7]);
    assert_eq!(pluton.registers()[..7], before[..7]);
}

/// The `warden-pluton` process on the TPM backend (every caller unseparated, as at the
/// provisioning station).
fn start_process(directory: &Path, swtpm: &Swtpm) -> PlutonProcess {
    let tcti = swtpm.tcti();
    PlutonProcess::start_with(
        directory,
        7,
        &["--unseparated", "--backend", "tpm", "--tcti", &tcti],
    )
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_provisioning_through_the_socket_as_warden_provision_unit_does() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let process = start_process(directory.path(), &swtpm);
    let capability = process.capability();
    let mut client = PlutonClient::connect(&process.socket).expect("connect");
    // The station's steps: status, identity, proof of possession, roots, lock, status.
    let (_, status) = client.status().expect("status");
    assert_eq!(status.device_id, None);
    assert!(client.export_identity().is_err());
    let identity = client.create_identity(None).expect("create identity");
    assert_eq!(client.export_identity().expect("export"), identity);
    let nonce = [0x77u8; 32];
    let quote = client.quote(&nonce).expect("quote");
    assert_eq!(&quote[..4], b"WPT1");
    verify_quote(&quote, &identity.public_key.0, &nonce).expect("proof of possession");
    // Any valid P-256 point will do as a vendor root here.
    let root = identity.public_key.0;
    client
        .install_root_key(&capability, &root, 3)
        .expect("install root");
    assert_eq!(client.root_keys().expect("roots").len(), 1);
    client.lock_manufacturing(&capability).expect("lock");
    let (_, status) = client.status().expect("status");
    assert!(status.manufacturing_locked);
    assert_eq!(status.device_id, Some(identity.device_id));
    assert!(client.install_root_key(&capability, &root, 1).is_err());
    // A restart keeps all of it.
    drop(client);
    process.kill();
    let process = start_process(directory.path(), &swtpm);
    let mut client = PlutonClient::connect(&process.socket).expect("connect");
    let (_, status) = client.status().expect("status");
    assert!(status.manufacturing_locked);
    assert_eq!(client.export_identity().expect("export"), identity);
    assert_eq!(client.root_keys().expect("roots").len(), 1);
}

#[test]
#[ignore = "needs swtpm"]
fn tpm_counter_never_goes_below_the_last_acknowledged_value_across_kill_9() {
    let directory = tempfile::tempdir().expect("tempdir");
    let swtpm = Swtpm::start(&directory.path().join("tpm"));
    let rounds = 25u64;
    let mut last_acknowledged = 0u64;
    let mut total = 0u64;
    for round in 0..rounds {
        let process = start_process(directory.path(), &swtpm);
        let capability = process.capability();
        let mut stream = process.connect();
        let recovered = match call(&mut stream, &Request::ReadCounters) {
            Response::Counters(counters) => counters[0],
            other => panic!("counters: {other:?}"),
        };
        assert!(
            recovered == last_acknowledged || recovered == last_acknowledged + 1,
            "round {round}: recovered {recovered}, last acknowledged {last_acknowledged}"
        );
        let acknowledged = Arc::new(AtomicU64::new(recovered));
        let writer = {
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                let mut frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
                loop {
                    let next = acknowledged.load(Ordering::SeqCst) + 1;
                    let request = Request::AdvanceCounter {
                        capability: capability.clone(),
                        index: 0,
                        value: next,
                    };
                    let length = encode_frame(&request, &mut frame).expect("encode");
                    match exchange_raw(&mut stream, &frame[..length]) {
                        Ok(Response::Counter(value)) => {
                            acknowledged.store(value, Ordering::SeqCst);
                        }
                        Ok(other) => panic!("advance: {other:?}"),
                        Err(_) => return,
                    }
                }
            })
        };
        // Kill at a different instant each round: 2 to 40 ms into the advances.
        std::thread::sleep(Duration::from_micros(2_000 + (round * 7919) % 38_000));
        process.kill();
        writer.join().expect("writer");
        let acked = acknowledged.load(Ordering::SeqCst);
        total += acked - recovered;
        last_acknowledged = acked;
    }
    let process = start_process(directory.path(), &swtpm);
    let mut stream = process.connect();
    match call(&mut stream, &Request::ReadCounters) {
        Response::Counters(counters) => assert!(
            counters[0] == last_acknowledged || counters[0] == last_acknowledged + 1,
            "recovered {}, last acknowledged {last_acknowledged}",
            counters[0]
        ),
        other => panic!("counters: {other:?}"),
    }
    println!("tpm counters: {rounds} SIGKILLs during {total} acknowledged advances; never below");
    assert!(total > 0, "no advance was acknowledged");
}
