//! A local process attacks the running demo unit's pluton. It reaches pluton's socket,
//! as any process on the unit can, but it was handed no role. The demo is a host that
//! mints role tokens: it gives pluton every token and keeps the link's and the bridges'
//! for itself. The attacker tries what worked before per-caller rights: extend the image
//! register with a release's measurement, sign as the device, quote. Each attempt must
//! be refused, and the fleet's attestation must still see the unmeasured register and
//! name no release.

use std::path::Path;

use warden_pluton::PlutonError;
use warden_pluton_api::{ClientError, PlutonClient};

/// A TLS 1.3 client CertificateVerify input: 64 spaces, the context string, a zero byte
/// and a 32-byte transcript hash. This is the one shape pluton's TLS signer signs.
fn certificate_verify_input() -> Vec<u8> {
    let mut message = vec![0x20u8; 64];
    message.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    message.extend_from_slice(&[0xab; 32]);
    message
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>, what: &str) -> PlutonError {
    match result {
        Err(ClientError::Refused { error, .. }) => error,
        other => panic!("{what}: expected a refusal from pluton, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_without_a_role_cannot_make_pluton_lie_to_the_fleet() {
    let state = tempfile::tempdir().expect("tempdir");
    let demo = warden_hil::scenario::DemoProcess::start(
        Path::new(env!("CARGO_BIN_EXE_warden")),
        state.path(),
    )
    .await
    .expect("demo starts");
    warden_hil::scenario::wait_for_reading(&demo, "line1/spindle_setpoint")
        .await
        .expect("the unit runs and reaches the fleet");

    let socket = state.path().join("pluton.sock");
    let release_measurement = [0x5a; 32];
    tokio::task::spawn_blocking(move || {
        let mut attacker = PlutonClient::connect(&socket).expect("the socket is reachable");
        assert_eq!(
            refusal(
                attacker.extend_register(0, &release_measurement),
                "extend the image register"
            ),
            PlutonError::CapabilityRequired
        );
        assert_eq!(
            refusal(
                attacker.extend_register(5, &release_measurement),
                "extend a runtime register"
            ),
            PlutonError::NotPermitted
        );
        assert_eq!(
            refusal(
                attacker.sign_tls13_client_certificate_verify(&certificate_verify_input()),
                "sign a CertificateVerify as the device"
            ),
            PlutonError::NotPermitted
        );
        assert_eq!(
            refusal(attacker.quote(&[7u8; 32]), "quote"),
            PlutonError::NotPermitted
        );
        let guessed = warden_pluton::RoleToken::from_bytes([0x11; 32]);
        assert!(
            attacker.authenticate(&guessed).is_err(),
            "a guessed role token must not be accepted"
        );
        assert_eq!(
            refusal(
                attacker.quote(&[7u8; 32]),
                "quote after a failed authentication"
            ),
            PlutonError::NotPermitted
        );
    })
    .await
    .expect("attacker");

    // The fleet challenges the unit; the link (which holds the link token) quotes.
    let http = reqwest::Client::new();
    let attestation: serde_json::Value = http
        .post(format!(
            "{}/api/v1/devices/{}/attestation",
            demo.urls.fleet, demo.urls.device_id
        ))
        .bearer_auth(&demo.urls.fleet_token)
        .send()
        .await
        .expect("fleet answers")
        .error_for_status()
        .expect("attestation ran")
        .json()
        .await
        .expect("json");
    assert_eq!(attestation["verified"], true, "{attestation:#}");
    assert_eq!(
        attestation["registers"][0],
        "00".repeat(32),
        "the image register must be as no boot stage left it: {attestation:#}"
    );
    assert!(
        attestation["release"].is_null(),
        "no release may be named: {attestation:#}"
    );
    demo.stop().await.expect("clean stop");
}
