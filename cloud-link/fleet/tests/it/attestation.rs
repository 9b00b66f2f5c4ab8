//! Attestation without an operator: simulated devices over mutual TLS are challenged
//! when they connect and on the schedule; their quotes (pluton's `WPQ1` format, signed
//! here with the device's own key) decide `trusted` / `untrusted`.

use std::time::Duration;

use rustls::SignatureScheme;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use warden_wire::topics::{from_hex, to_hex};

use super::registry::{create_product, register};
use super::rollout::{signed_image, upload};
use super::{
    Ca, Fixture, OPERATOR, PROVISIONER, SimulatedDevice, VIEWER, eventually, fleet, fleet_with,
};

/// Generous: the machine is shared; nothing here asserts a duration.
const WAIT: Duration = Duration::from_secs(30);

/// The device side of pluton's quote, built with the device's TLS key (the key pluton
/// would hold): the layout of `warden_pluton::quote`, verified below by its verifier.
pub(super) struct QuoteSigner {
    public_key: [u8; 65],
    key: std::sync::Arc<dyn rustls::sign::SigningKey>,
}

impl QuoteSigner {
    pub(super) fn of(fx: &Fixture, cert_file: &str) -> Self {
        let pem = std::fs::read_to_string(fx.dir.path().join(format!("{cert_file}.key")))
            .expect("device key");
        let pair = rcgen::KeyPair::from_pem(&pem).expect("key pair");
        let public_key = pair.public_key_raw().try_into().expect("P-256 key");
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der).expect("ecdsa key");
        Self { public_key, key }
    }

    /// A quote over `nonce` whose image register is `image_register`.
    pub(super) fn quote(&self, nonce: &[u8], image_register: [u8; 32]) -> Vec<u8> {
        let device_id = warden_pluton::DeviceId::of_public_key(&self.public_key);
        let mut body = b"WPQ1".to_vec();
        body.extend([1, 8, 8, u8::try_from(nonce.len()).expect("nonce length")]);
        body.extend(device_id.0);
        body.extend(7u32.to_le_bytes());
        body.extend(nonce);
        body.extend(image_register);
        body.extend([0u8; 32 * 7]);
        body.extend([0u8; 8 * 8]);
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .expect("P-256 scheme");
        let message = [warden_pluton::quote::QUOTE_SIGNING_PREFIX, &body].concat();
        let der = signer.sign(&message).expect("sign");
        body.extend(raw_signature(&der));
        let checked = warden_pluton::verify_quote(&body, &self.public_key, nonce);
        assert!(
            checked.is_ok(),
            "the test's quote is malformed: {checked:?}"
        );
        body
    }
}

/// An ASN.1 `SEQUENCE { r INTEGER, s INTEGER }` as pluton's 64-byte `r ‖ s`.
fn raw_signature(der: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    let mut at = 2 + usize::from(der[1] & 0x80 != 0);
    for half in out.chunks_mut(32) {
        assert_eq!(der[at], 0x02, "INTEGER");
        let len = usize::from(der[at + 1]);
        let value = &der[at + 2..at + 2 + len];
        let value = &value[value.len().saturating_sub(32)..];
        half[32 - value.len()..].copy_from_slice(value);
        at += 2 + len;
    }
    out
}

/// What boot leaves in the image register after measuring `measurement` (hex).
fn booted(measurement_hex: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(from_hex(measurement_hex).expect("hex"))
        .finalize()
        .into()
}

/// The next challenge's nonce (the device did not ask for it).
pub(super) async fn challenge(device: &mut SimulatedDevice) -> Vec<u8> {
    let challenge = device
        .next_on("attestation/challenge", WAIT)
        .await
        .expect("a challenge without any API call");
    let nonce = from_hex(challenge["nonce"].as_str().expect("nonce")).expect("hex nonce");
    assert!(
        nonce.len() >= warden_wire::topics::MIN_NONCE_LEN,
        "{challenge}"
    );
    nonce
}

pub(super) async fn answer(device: &SimulatedDevice, nonce: &[u8], quote: &[u8]) {
    device
        .publish(
            "attestation/quote",
            &json!({"v": 1, "nonce": to_hex(nonce), "quote": to_hex(quote)}),
        )
        .await;
}

/// Waits until the device's record satisfies `check`; the record.
async fn device_until(
    fx: &Fixture,
    id: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let path = format!("/api/v1/devices/{id}");
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let found = eventually(WAIT, || async {
        let (_, device) = fx.get(VIEWER, &path).await;
        *last.lock().expect("lock") = device.clone();
        check(&device).then_some(device)
    })
    .await;
    found.unwrap_or_else(|| panic!("device never matched; last {:?}", last.lock()))
}

/// The fleet's attestation reports for `id`, newest first.
async fn attestation_reports(fx: &Fixture, id: &str) -> Vec<serde_json::Value> {
    let (status, reports) = fx
        .get(VIEWER, &format!("/api/v1/reports?device={id}"))
        .await;
    assert_eq!(status, 200, "{reports}");
    reports
        .as_array()
        .expect("reports")
        .iter()
        .filter(|r| r["kind"] == "attestation" && r["compartment"] == "fleet")
        .cloned()
        .collect()
}

/// The fleet's attestation reports for `id` once there are `count` (the verdict is
/// stored just before its report).
async fn attestation_reports_until(fx: &Fixture, id: &str, count: usize) -> Vec<serde_json::Value> {
    eventually(WAIT, || async {
        let reports = attestation_reports(fx, id).await;
        (reports.len() >= count).then_some(reports)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {count} attestation reports for {id}"))
}

/// A product with one uploaded release and `wd-good` registered; the release's
/// measurement (hex).
async fn product_with_release(fx: &Fixture) -> String {
    create_product(fx).await;
    register(fx, "wd-good", "wd-good", "Production").await;
    let (status, uploaded) = upload(
        fx,
        OPERATOR,
        signed_image(&fx.vendor_root, "press-guardian", (1, 1, 0)),
    )
    .await;
    assert_eq!(status, 201, "{uploaded}");
    uploaded["measurement"]
        .as_str()
        .expect("measurement")
        .to_owned()
}

#[tokio::test]
async fn a_device_is_challenged_on_connect_and_trusted_when_it_runs_a_known_release() {
    let fx = fleet().await;
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, booted(&release))).await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;
    let detail = record["attestation_detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("runs release press-guardian 1.1.0"),
        "{record}"
    );
    assert!(attestation_reports(&fx, "wd-good").await.is_empty());
    // The device is told (its status page shows it).
    let verdict = device
        .next_on("attestation/verdict", WAIT)
        .await
        .expect("a verdict");
    assert_eq!(verdict["trusted"], true, "{verdict}");
    assert_eq!(verdict["release"], "1.1.0", "{verdict}");
    assert_eq!(verdict["detail"], detail, "{verdict}");
    fx.stop().await;
}

#[tokio::test]
async fn a_quote_over_an_image_that_is_no_release_makes_the_device_untrusted() {
    let fx = fleet().await;
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    // The header digest itself, not what boot extends from it: no boot leaves this.
    let mut unknown = [0u8; 32];
    unknown.copy_from_slice(&from_hex(&release).expect("hex"));
    answer(&device, &nonce, &signer.quote(&nonce, unknown)).await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "untrusted").await;
    let detail = record["attestation_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&to_hex(&unknown)) && detail.contains("not a known release"),
        "{record}"
    );
    let reports = attestation_reports_until(&fx, "wd-good", 1).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["signature"], "fleet/attestation/quote-refused");
    assert_eq!(reports[0]["message"], detail);
    let verdict = device
        .next_on("attestation/verdict", WAIT)
        .await
        .expect("a verdict");
    assert_eq!(verdict["trusted"], false, "{verdict}");
    assert_eq!(verdict["detail"], detail, "{verdict}");
    // Commands are withheld from an untrusted device (once the fleet knows it).
    let reading: serde_json::Value = serde_json::from_slice(&super::batch(0, 1.0)).expect("json");
    device.publish("telemetry", &reading).await;
    eventually(WAIT, || async {
        (fx.get(VIEWER, "/api/v1/devices/wd-good/telemetry").await.0 == 200).then_some(())
    })
    .await
    .expect("telemetry stored");
    let (status, refused) = fx
        .post(
            OPERATOR,
            "/api/v1/devices/wd-good/commands",
            &json!({"bridge": "line1", "point": "p", "value": 1.0}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    fx.stop().await;
}

#[tokio::test]
async fn a_quote_with_a_bad_signature_makes_the_device_untrusted() {
    let fx = fleet().await;
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    let mut quote = signer.quote(&nonce, booted(&release));
    let last = quote.len() - 1;
    quote[last] ^= 1;
    answer(&device, &nonce, &quote).await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "untrusted").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("SignatureInvalid"),
        "{record}"
    );
    assert_eq!(attestation_reports_until(&fx, "wd-good", 1).await.len(), 1);
    fx.stop().await;
}

/// The schedule challenges again; a used nonce, and an old quote sent for a new nonce,
/// are refused; a good answer to the next challenge restores trust.
#[tokio::test]
async fn the_schedule_challenges_again_and_replays_are_refused() {
    let fx = fleet_with(None, |config| config.rollouts.attestation_interval_secs = 1).await;
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let first_nonce = challenge(&mut device).await;
    let first_quote = signer.quote(&first_nonce, booted(&release));
    answer(&device, &first_nonce, &first_quote).await;
    let first = device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;

    // The schedule: a new challenge, a new nonce, a newer attestation.
    let second_nonce = challenge(&mut device).await;
    assert_ne!(second_nonce, first_nonce);
    answer(
        &device,
        &second_nonce,
        &signer.quote(&second_nonce, booted(&release)),
    )
    .await;
    device_until(&fx, "wd-good", |d| {
        d["attestation"] == "trusted" && d["attested_ms"].as_i64() > first["attested_ms"].as_i64()
    })
    .await;

    // A second, different quote for an answered nonce: refused, untrusted, reported.
    let mut other_image = booted(&release);
    other_image[0] ^= 1;
    answer(
        &device,
        &first_nonce,
        &signer.quote(&first_nonce, other_image),
    )
    .await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "untrusted").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("already answered nonce"),
        "{record}"
    );
    let reports = attestation_reports_until(&fx, "wd-good", 1).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["signature"], "fleet/attestation/nonce-refused");

    // The old (good) quote replayed for the next challenge: its nonce is not this one.
    let third_nonce = challenge(&mut device).await;
    answer(&device, &third_nonce, &first_quote).await;
    let record = device_until(&fx, "wd-good", |d| {
        d["attestation_detail"]
            .as_str()
            .is_some_and(|s| s.contains("NonceMismatch"))
    })
    .await;
    assert_eq!(record["attestation"], "untrusted");
    assert_eq!(attestation_reports_until(&fx, "wd-good", 2).await.len(), 2);

    // A good answer to a later challenge restores trust.
    let fourth_nonce = challenge(&mut device).await;
    answer(
        &device,
        &fourth_nonce,
        &signer.quote(&fourth_nonce, booted(&release)),
    )
    .await;
    device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;
    fx.stop().await;
}

/// Before a product has any release, a verified quote is accepted and the detail says
/// the image was not checked; a device of the configured CA is enrolled in its own
/// product at connect and attested like any registered device.
#[tokio::test]
async fn without_releases_a_verified_quote_is_trusted_and_says_the_image_was_not_checked() {
    let fx = fleet().await;
    create_product(&fx).await;
    register(&fx, "wd-good", "wd-good", "Production").await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, [0; 32])).await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("no releases known for product press-guardian"),
        "{record}"
    );

    // An operator's request on a device of the configured CA nobody registered: it was
    // enrolled at connect, in the configured product.
    let other = QuoteSigner::of(&fx, "wd-other");
    let mut enrolled = SimulatedDevice::connect(&fx, "wd-other", "wd-other")
        .await
        .expect("connects");
    let on_connect = challenge(&mut enrolled).await;
    answer(&enrolled, &on_connect, &other.quote(&on_connect, [0; 32])).await;
    let empty = json!({});
    let (requested, ()) = tokio::join!(
        fx.post(OPERATOR, "/api/v1/devices/wd-other/attestation", &empty),
        async {
            let nonce = challenge(&mut enrolled).await;
            answer(&enrolled, &nonce, &other.quote(&nonce, [0; 32])).await;
        }
    );
    let (status, outcome) = requested;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["verified"], true);
    assert!(
        outcome["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("no releases known for product configured"),
        "{outcome}"
    );
    assert_eq!(outcome["measured_image"], to_hex(&[0; 32]));
    device_until(&fx, "wd-other", |d| d["attestation"] == "trusted").await;
    fx.stop().await;
}

/// Sends one telemetry batch so the fleet knows the device (commands need it).
async fn seen(fx: &Fixture, device: &SimulatedDevice) {
    let reading: serde_json::Value = serde_json::from_slice(&super::batch(0, 1.0)).expect("json");
    device.publish("telemetry", &reading).await;
    let path = format!("/api/v1/devices/{}/telemetry", device.id);
    eventually(WAIT, || async {
        (fx.get(VIEWER, &path).await.0 == 200).then_some(())
    })
    .await
    .expect("telemetry stored");
}

/// A device enrolled through a product's open enrollment is under attestation like a
/// registered one: a failed attestation withholds its commands (issue #22 item 7).
#[tokio::test]
async fn an_enrolled_device_gets_no_commands_after_a_failed_attestation() {
    let fx = fleet().await;
    let p = fx.dir.path();
    let open = Ca::new(p, "open-maker-ca");
    open.issue(p, "wd-open", "wd-open", false);
    let (status, body) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": "open", "manufacturer_ca_pem": open.pem }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = fx
        .put(
            OPERATOR,
            "/api/v1/products/open/enrollment",
            &json!({ "open": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let signer = QuoteSigner::of(&fx, "wd-open");
    let mut device = SimulatedDevice::connect(&fx, "wd-open", "wd-open")
        .await
        .expect("enrolled at connect");
    let nonce = challenge(&mut device).await;
    let mut quote = signer.quote(&nonce, [0; 32]);
    let last = quote.len() - 1;
    quote[last] ^= 1;
    answer(&device, &nonce, &quote).await;
    let record = device_until(&fx, "wd-open", |d| d["attestation"] == "untrusted").await;
    assert_eq!(record["product"], "open", "{record}");
    seen(&fx, &device).await;
    let (status, refused) = command_status(&fx, "wd-open").await;
    assert_eq!(status, 409, "{refused}");
    fx.stop().await;
}

async fn command_status(fx: &Fixture, id: &str) -> (u16, serde_json::Value) {
    fx.post(
        OPERATOR,
        &format!("/api/v1/devices/{id}/commands"),
        &json!({"bridge": "line1", "point": "p", "value": 1.0}),
    )
    .await
}

/// Trust lapses when no quote verified within `attestation_valid_secs`: the device is
/// `unverified` with the reason, commands are refused; its reconnect challenges it
/// again and a good quote restores trust.
#[tokio::test]
async fn trust_lapses_without_a_fresh_attestation_and_a_reconnect_restores_it() {
    let fx = fleet_with(None, lapse_after_two_seconds).await;
    trust_lapse_contract(&fx).await;
    fx.stop().await;
}

/// No schedule (only the connect challenge, so nothing renews trust by itself), trust
/// valid for 2 s.
pub(crate) fn lapse_after_two_seconds(config: &mut warden_fleet::FleetConfig) {
    config.rollouts.attestation_interval_secs = 0;
    config.rollouts.attestation_valid_secs = Some(2);
}

/// The lapse contract on a fleet configured by [`lapse_after_two_seconds`].
pub(crate) async fn trust_lapse_contract(fx: &Fixture) {
    let release = product_with_release(fx).await;
    let signer = QuoteSigner::of(fx, "wd-good");
    let mut device = SimulatedDevice::connect(fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, booted(&release))).await;
    let trusted = device_until(fx, "wd-good", |d| d["attestation"] == "trusted").await;
    seen(fx, &device).await;

    let lapsed = device_until(fx, "wd-good", |d| d["attestation"] == "unverified").await;
    assert!(
        lapsed["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("trust lapsed: no verified attestation within 2 s"),
        "{lapsed}"
    );
    // The last verified attestation's time is kept; at least the validity has passed.
    assert_eq!(lapsed["attested_ms"], trusted["attested_ms"]);
    let (status, refused) = command_status(fx, "wd-good").await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unverified"),
        "{refused}"
    );
    // No failure report: a lapse is not a refused quote.
    assert!(attestation_reports(fx, "wd-good").await.is_empty());

    // Reconnect: challenged again, trusted again, commands accepted.
    drop(device);
    let mut device = SimulatedDevice::connect(fx, "wd-good", "wd-good")
        .await
        .expect("reconnects");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, booted(&release))).await;
    device_until(fx, "wd-good", |d| d["attestation"] == "trusted").await;
    let (status, accepted) = command_status(fx, "wd-good").await;
    assert_eq!(status, 202, "{accepted}");
}

/// A challenge not answered by its deadline makes a trusted device `unverified`.
#[tokio::test]
async fn an_unanswered_challenge_makes_a_trusted_device_unverified() {
    let fx = fleet().await;
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, booted(&release))).await;
    device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;
    seen(&fx, &device).await;

    // The operator's challenge goes unanswered (the device keeps quiet).
    let (status, outcome) = fx
        .post(OPERATOR, "/api/v1/devices/wd-good/attestation", &json!({}))
        .await;
    assert_eq!(status, 409, "{outcome}");
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "unverified").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no answer to the challenge"),
        "{record}"
    );
    assert_eq!(command_status(&fx, "wd-good").await.0, 409);

    // A late answer to that challenge is refused (expired) and changes no status.
    let late = challenge(&mut device).await;
    answer(&device, &late, &signer.quote(&late, booted(&release))).await;
    let record = device_until(&fx, "wd-good", |d| {
        d["attestation_detail"]
            .as_str()
            .is_some_and(|s| s.contains("answerable for 10 s"))
    })
    .await;
    assert_eq!(record["attestation"], "unverified");
    fx.stop().await;
}

/// Pending challenges live in the store: a challenge sent before a restart is answered
/// after it, accepted once, and a different quote for it is refused as a replay.
#[tokio::test]
async fn a_challenge_survives_a_fleet_restart_and_is_usable_once() {
    challenge_restart_contract(fleet().await).await.stop().await;
}

/// The restart contract on whatever store the fixture uses; the restarted fixture.
pub(crate) async fn challenge_restart_contract(fx: Fixture) -> Fixture {
    let release = product_with_release(&fx).await;
    let signer = QuoteSigner::of(&fx, "wd-good");
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    let before_restart = challenge(&mut device).await;
    drop(device);
    let fx = fx.restart().await;
    assert_eq!(
        fx.get(VIEWER, "/api/v1/devices/wd-good").await.1["attestation"],
        "unknown"
    );

    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("connects to the restarted fleet");
    let after_restart = challenge(&mut device).await;
    assert_ne!(after_restart, before_restart);
    // The answer to the challenge the previous process sent.
    let quote = signer.quote(&before_restart, booted(&release));
    answer(&device, &before_restart, &quote).await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "trusted").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("runs release press-guardian 1.1.0"),
        "{record}"
    );
    // The same quote again (a redelivery) is ignored…
    answer(&device, &before_restart, &quote).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fx.get(VIEWER, "/api/v1/devices/wd-good").await.1["attestation"],
        "trusted"
    );
    assert!(attestation_reports(&fx, "wd-good").await.is_empty());
    // …a different one for the used nonce is a replay: refused, untrusted, reported.
    let mut other = booted(&release);
    other[1] ^= 1;
    answer(
        &device,
        &before_restart,
        &signer.quote(&before_restart, other),
    )
    .await;
    let record = device_until(&fx, "wd-good", |d| d["attestation"] == "untrusted").await;
    assert!(
        record["attestation_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("already answered nonce"),
        "{record}"
    );
    let reports = attestation_reports_until(&fx, "wd-good", 1).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["signature"], "fleet/attestation/nonce-refused");
    fx
}
