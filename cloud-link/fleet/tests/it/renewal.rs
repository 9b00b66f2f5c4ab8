//! Certificate renewal at the fleet, against simulated devices over mutual TLS: deny
//! by default (another key, no attestation), then an attested device's renewal, both
//! certificates accepted until the first use of the new one, the old one retired.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;

use super::attestation::{QuoteSigner, answer, challenge};
use super::{Fixture, SimulatedDevice, VIEWER, connect, fleet_with};

/// Generous: the machine is shared; nothing here asserts a duration.
const WAIT: Duration = Duration::from_secs(30);

/// A fleet with an issuing CA (written beside its other PKI files).
async fn renewing_fleet() -> Fixture {
    fleet_with(None, |config| {
        let dir = config.server_cert.parent().expect("dir").to_owned();
        let (cert, key) = issuing_ca(&dir, "issuing-ca", "fleet issuing CA");
        config.certificates = warden_fleet::issuing::CertificatesConfig {
            issuing_ca_cert: Some(cert),
            issuing_ca_key: Some(key),
            device_certificate_days: 90,
            ..Default::default()
        };
    })
    .await
}

/// A new issuing CA written to `dir` as `{file}.pem` and `{file}.key`.
fn issuing_ca(
    dir: &std::path::Path,
    file: &str,
    common_name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("issuing CA");
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert_path, key_path)
}

/// A CSR for `common_name` signed by `key`, PEM.
fn csr(key: &KeyPair, common_name: &str) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn device_key(fx: &Fixture, file: &str) -> KeyPair {
    let pem = std::fs::read_to_string(fx.dir.path().join(format!("{file}.key"))).expect("key");
    KeyPair::from_pem(&pem).expect("key pair")
}

async fn request(device: &mut SimulatedDevice, csr: &str) {
    device
        .publish(
            "certificate/request",
            &json!({"v": 1, "csr": csr, "reason": "renewal-due"}),
        )
        .await;
}

async fn response(device: &mut SimulatedDevice, wait: Duration) -> serde_json::Value {
    device
        .next_on("certificate/response", wait)
        .await
        .expect("an answer to the renewal request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_refused_for_another_key_and_without_attestation_then_issued() {
    let fx = renewing_fleet().await;
    let mut device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("enrolled at its first connection");
    let signer = QuoteSigner::of(&fx, "wd-good");
    // The challenge on connect, answered: the device is trusted (no releases known).
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, [0; 32])).await;

    // A CSR for another key: refused before any attestation.
    let other = KeyPair::generate().expect("key");
    request(&mut device, &csr(&other, "wd-good")).await;
    let refused = response(&mut device, WAIT).await;
    assert_eq!(refused["issued"], false, "{refused}");
    let why = refused["detail"].as_str().unwrap_or_default();
    assert!(why.contains("another key"), "{why}");

    // Its own key, but the challenge for this request goes unanswered: refused.
    let own = device_key(&fx, "wd-good");
    request(&mut device, &csr(&own, "wd-good")).await;
    let _unanswered = challenge(&mut device).await;
    let refused = response(&mut device, WAIT).await;
    assert_eq!(refused["issued"], false, "{refused}");
    let why = refused["detail"].as_str().unwrap_or_default();
    assert!(why.contains("not attested"), "{why}");
    let (_, page) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-good").await;
    assert_eq!(page["certificate"]["renewal"]["state"], "refused", "{page}");

    // Its own key and a fresh quote: issued from the issuing CA for the same key, with
    // the fleet's validity and the device's ID whatever the CSR says.
    request(&mut device, &csr(&own, "someone-else")).await;
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, [0; 32])).await;
    let issued = response(&mut device, WAIT).await;
    assert_eq!(issued["issued"], true, "{issued}");
    let pem = issued["certificate"].as_str().expect("certificate");
    let der = warden_fleet::enrollment::certificates_from_pem(pem).expect("pem");
    assert_eq!(
        warden_fleet::broker::device_id_from_certificate(&der[0]).as_deref(),
        Some("wd-good")
    );
    let (not_before, not_after) =
        warden_wire::certificate_fields::validity(&der[0]).expect("validity");
    assert_eq!(not_after - not_before, 90 * 86_400);
    assert_eq!(
        warden_wire::certificate_fields::subject_public_key(&der[0]),
        Some(own.public_key_raw())
    );
    let new_print = warden_fleet::enrollment::fingerprint(&der[0]);
    let dir = fx.dir.path();
    std::fs::write(dir.join("wd-good-new.pem"), pem).expect("write");
    std::fs::copy(dir.join("wd-good.key"), dir.join("wd-good-new.key")).expect("key");
    let (_, page) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-good").await;
    assert_eq!(page["certificate"]["renewal"]["state"], "issued", "{page}");
    drop(device);

    // Until the new one is used, both connect; its first connection retires the old.
    let (_c, mut old) = super::client(&fx, "wd-good", "wd-good");
    connect(&mut old)
        .await
        .expect("the old certificate until the switch");
    drop((_c, old));
    let (_c, mut new) = super::client(&fx, "wd-good", "wd-good-new");
    connect(&mut new).await.expect("the renewed certificate");
    let (_, record) = fx.get(VIEWER, "/api/v1/devices/wd-good").await;
    assert_eq!(record["fingerprint"], new_print.as_str(), "{record}");
    let (_, page) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-good").await;
    assert_eq!(
        page["certificate"]["renewal"]["state"], "completed",
        "{page}"
    );
    let (_c2, mut old) = super::client(&fx, "wd-good", "wd-good");
    assert!(
        connect(&mut old).await.is_err(),
        "the old certificate is refused after the switch"
    );
    // After a restart too (the switch is in the store).
    let fx = fx.restart().await;
    let (_c3, mut old) = super::client(&fx, "wd-good", "wd-good");
    assert!(connect(&mut old).await.is_err());
    let (_c4, mut new) = super::client(&fx, "wd-good", "wd-good-new");
    connect(&mut new)
        .await
        .expect("the renewed certificate after a restart");
    fx.stop().await;
}

/// A product with its own issuing CA and validity: its device's renewed certificate
/// chains to that CA (not the fleet's), carries the product's validity, and connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_with_its_own_issuing_ca_renews_its_devices_from_it() {
    let product = warden_fleet::enrollment::CONFIGURED_PRODUCT;
    let fx = fleet_with(None, |config| {
        let dir = config.server_cert.parent().expect("dir").to_owned();
        let (fleet_cert, fleet_key) = issuing_ca(&dir, "issuing-ca", "fleet issuing CA");
        let (own_cert, own_key) = issuing_ca(&dir, "product-ca", "product issuing CA");
        let mut certificates = warden_fleet::issuing::CertificatesConfig {
            issuing_ca_cert: Some(fleet_cert),
            issuing_ca_key: Some(fleet_key),
            device_certificate_days: 90,
            ..Default::default()
        };
        certificates.products.insert(
            product.to_owned(),
            warden_fleet::issuing::ProductCertificates {
                issuing_ca_cert: Some(own_cert),
                issuing_ca_key: Some(own_key),
                device_certificate_days: Some(7),
            },
        );
        config.certificates = certificates;
    })
    .await;
    let mut device = SimulatedDevice::connect(&fx, "wd-other", "wd-other")
        .await
        .expect("enrolled at its first connection");
    let signer = QuoteSigner::of(&fx, "wd-other");
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, [0; 32])).await;

    let own = device_key(&fx, "wd-other");
    request(&mut device, &csr(&own, "wd-other")).await;
    let nonce = challenge(&mut device).await;
    answer(&device, &nonce, &signer.quote(&nonce, [0; 32])).await;
    let issued = response(&mut device, WAIT).await;
    assert_eq!(issued["issued"], true, "{issued}");
    let detail = issued["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("product {product}'s issuing CA")),
        "{detail}"
    );
    let pem = issued["certificate"].as_str().expect("certificate");
    let der = warden_fleet::enrollment::certificates_from_pem(pem).expect("pem");
    let (not_before, not_after) =
        warden_wire::certificate_fields::validity(&der[0]).expect("validity");
    assert_eq!(not_after - not_before, 7 * 86_400, "the product's validity");
    // Signed by the product's CA: it verifies under that CA and not under the fleet's.
    let dir = fx.dir.path();
    let chains_to = |ca_file: &str| {
        let ca = warden_wire::tls::load_certificates(&dir.join(ca_file)).expect("ca");
        let verifier = warden_fleet::enrollment::DeviceTrust::new(ca).expect("trust");
        verifier.admission(&der).is_ok()
    };
    assert!(chains_to("product-ca.pem"), "issued by the product's CA");
    assert!(!chains_to("issuing-ca.pem"), "not by the fleet's");
    drop(device);

    std::fs::write(dir.join("wd-other-new.pem"), pem).expect("write");
    std::fs::copy(dir.join("wd-other.key"), dir.join("wd-other-new.key")).expect("key");
    let (_c, mut new) = super::client(&fx, "wd-other", "wd-other-new");
    connect(&mut new)
        .await
        .expect("the broker trusts the product's CA for its device");
    fx.stop().await;
}
