//! The registration contract the provisioning station relies on, API authorisation,
//! and enrollment at the broker (trusted CAs, registered certificates, revocation).

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    ADMIN, Ca, Fixture, OPERATOR, PROVISIONER, SimulatedDevice, VIEWER, client, connect, fleet,
};

const PRODUCT: &str = "press-guardian";

fn der_fingerprint(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    warden_wire::topics::to_hex(&Sha256::digest(der.as_ref()))
}

fn registration(fx: &Fixture, device_id: &str, cert_file: &str) -> serde_json::Value {
    json!({
        "device_id": device_id,
        "serial": format!("SN-{device_id}"),
        "product": PRODUCT,
        "group": "Production",
        "certificate_pem": fx.pem(cert_file),
        "image_version": "1.0.0",
    })
}

/// Creates the product with the fixture's manufacturer CA (provisioner token).
pub(crate) async fn create_product(fx: &Fixture) {
    let (status, body) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": PRODUCT, "manufacturer_ca_pem": fx.maker.pem }),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

/// Registers `device_id` with the certificate in `cert_file`.pem into `group`.
pub(crate) async fn register(fx: &Fixture, device_id: &str, cert_file: &str, group: &str) {
    let mut body = registration(fx, device_id, cert_file);
    body["group"] = json!(group);
    let (status, answer) = fx.post(PROVISIONER, "/api/v1/devices", &body).await;
    assert_eq!(status, 201, "{answer}");
}

/// The whole contract, on whatever store the fixture uses.
pub(crate) async fn registration_contract(fx: &Fixture) {
    let p = fx.dir.path();
    // Tokens: none, wrong role, right role.
    let product = json!({ "name": PRODUCT, "manufacturer_ca_pem": fx.maker.pem });
    let anonymous = reqwest::Client::new()
        .post(fx.url("/api/v1/products"))
        .json(&product)
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_eq!(fx.post(VIEWER, "/api/v1/products", &product).await.0, 403);
    assert_eq!(fx.post(OPERATOR, "/api/v1/products", &product).await.0, 403);
    assert_eq!(
        fx.post("not-a-token", "/api/v1/products", &product).await.0,
        401
    );

    // Products: created once, idempotent, conflict on another CA, CA checked.
    let (status, created) = fx.post(PROVISIONER, "/api/v1/products", &product).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], PRODUCT);
    assert_eq!(
        fx.post(PROVISIONER, "/api/v1/products", &product).await.0,
        200
    );
    let (status, conflict) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": PRODUCT, "manufacturer_ca_pem": fx.rogue.pem }),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    let (status, refused) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": "other", "manufacturer_ca_pem": fx.pem("wd-good") }),
        )
        .await;
    assert_eq!(status, 422, "a leaf certificate is no CA: {refused}");
    assert_eq!(refused["field"], "manufacturer_ca_pem");
    let (status, refused) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": "a name that is far too long", "manufacturer_ca_pem": fx.maker.pem }),
        )
        .await;
    assert_eq!((status, refused["field"].as_str()), (422, Some("name")));
    let (_, products) = fx.get(VIEWER, "/api/v1/products").await;
    // The refused ones were not created: the product made above, and the one the
    // fleet makes for its configured CA's devices.
    let names: Vec<&str> = products
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["configured", PRODUCT], "{products}");

    // Default groups, one of which never receives updates; operators add groups.
    let (status, groups) = fx
        .get(VIEWER, &format!("/api/v1/products/{PRODUCT}/groups"))
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = groups
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["Development", "Field Test", "No Updates", "Production"]
    );
    let no_updates = groups
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "No Updates"))
        .expect("No Updates");
    assert_eq!(no_updates["receives_updates"], false);
    let groups_path = format!("/api/v1/products/{PRODUCT}/groups");
    assert_eq!(
        fx.post(PROVISIONER, &groups_path, &json!({ "name": "Beta" }))
            .await
            .0,
        403
    );
    let (status, beta) = fx
        .post(OPERATOR, &groups_path, &json!({ "name": "Beta" }))
        .await;
    assert_eq!(
        (status, beta["receives_updates"].as_bool()),
        (201, Some(true))
    );
    assert_eq!(
        fx.get(VIEWER, "/api/v1/products/nothing/groups").await.0,
        404
    );

    // Registration: created, idempotent, conflict, and every refusal names its field.
    let body = registration(fx, "wd-good", "wd-good");
    assert_eq!(fx.post(OPERATOR, "/api/v1/devices", &body).await.0, 403);
    let (status, registered) = fx.post(PROVISIONER, "/api/v1/devices", &body).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(
        registered,
        json!({
            "device_id": "wd-good",
            "fingerprint": der_fingerprint(&fx.pem("wd-good")),
            "product": PRODUCT,
            "group": "Production",
        })
    );
    let (status, again) = fx.post(PROVISIONER, "/api/v1/devices", &body).await;
    assert_eq!((status, &again), (200, &registered));
    fx.maker.issue(p, "wd-good-clone", "wd-good", false);
    let (status, conflict) = fx
        .post(
            PROVISIONER,
            "/api/v1/devices",
            &registration(fx, "wd-good", "wd-good-clone"),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");

    let refusals = [
        (
            registration(fx, "wd-good", "wd-rogue"),
            "certificate_pem",
            "manufacturer CA",
        ),
        (
            registration(fx, "wd-other", "wd-good"),
            "certificate_pem",
            "does not match",
        ),
        (
            {
                fx.maker.issue_expired(p, "wd-old", "wd-old");
                registration(fx, "wd-old", "wd-old")
            },
            "certificate_pem",
            "expired",
        ),
        (
            {
                let mut b = registration(fx, "wd-other", "wd-other");
                b["certificate_pem"] = json!("not a pem");
                b
            },
            "certificate_pem",
            "certificate",
        ),
        (
            {
                let mut b = registration(fx, "wd-other", "wd-other");
                b["product"] = json!("unknown-product");
                b
            },
            "product",
            "unknown-product",
        ),
        (
            {
                let mut b = registration(fx, "wd-other", "wd-other");
                b["group"] = json!("Nowhere");
                b
            },
            "group",
            "Nowhere",
        ),
        (
            {
                let mut b = registration(fx, "wd-other", "wd-other");
                b["image_version"] = json!("1.0");
                b
            },
            "image_version",
            "MAJOR.MINOR.PATCH",
        ),
        (
            {
                let mut b = registration(fx, "wd-other", "wd-other");
                b["device_id"] = json!("wd/other");
                b
            },
            "device_id",
            "wd/other",
        ),
    ];
    for (body, field, says) in refusals {
        let (status, refused) = fx.post(PROVISIONER, "/api/v1/devices", &body).await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["field"], field, "{refused}");
        let error = refused["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(field) && error.contains(says),
            "{error:?} should name {field} and say {says:?}"
        );
    }

    // The registry record.
    let (status, device) = fx.get(VIEWER, "/api/v1/devices/wd-good").await;
    assert_eq!(status, 200);
    assert_eq!(device["serial"], "SN-wd-good");
    assert_eq!(device["product"], PRODUCT);
    assert_eq!(device["group"], "Production");
    assert_eq!(device["image_version"], "1.0.0");
    assert_eq!(device["attestation"], "unknown");
    assert_eq!(device["revoked"], false);
    assert_eq!(device["policy_version"], serde_json::Value::Null);
    assert_eq!(fx.get(VIEWER, "/api/v1/devices/wd-nobody").await.0, 404);
}

#[tokio::test]
async fn the_registration_contract_holds_on_sqlite() {
    let fx = fleet().await;
    registration_contract(&fx).await;
    // Every write is audited with the token's name, refused ones included; only an
    // admin reads the log (issue #22 item 8).
    assert_eq!(fx.get(VIEWER, "/api/v1/audit?limit=1000").await.0, 403);
    assert_eq!(fx.get(OPERATOR, "/api/v1/audit?limit=1000").await.0, 403);
    let (_, audit) = fx.get(ADMIN, "/api/v1/audit?limit=1000").await;
    let lines = audit.as_array().expect("audit");
    assert!(
        lines.iter().any(|l| l["actor"] == "station"
            && l["path"] == "/api/v1/devices"
            && l["status"] == 201)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["actor"] == "station" && l["status"] == 409)
    );
    fx.stop().await;
}

#[tokio::test]
async fn a_product_ca_admits_unregistered_devices_only_once_an_operator_opens_its_enrollment() {
    let fx = fleet().await;
    let p = fx.dir.path();
    let second = Ca::new(p, "second-maker-ca");
    second.issue(p, "wd-second", "wd-second", false);
    let (_c, mut eventloop) = client(&fx, "wd-second", "wd-second");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "a CA the fleet does not know yet is refused"
    );
    let (status, body) = fx
        .post(
            PROVISIONER,
            "/api/v1/products",
            &json!({ "name": "second", "manufacturer_ca_pem": second.pem }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["open_enrollment"], false, "{body}");
    // The product's CA alone does not speak for an ID nobody registered (issue #22:
    // whoever may add a product would otherwise pass as any unregistered device).
    let (_c, mut eventloop) = client(&fx, "wd-second", "wd-second");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "an unregistered device of a closed product is refused"
    );
    // Opening enrollment is an operator's decision, not a provisioner's.
    let open = json!({ "open": true });
    assert_eq!(
        fx.put(PROVISIONER, "/api/v1/products/second/enrollment", &open)
            .await
            .0,
        403
    );
    assert_eq!(
        fx.put(OPERATOR, "/api/v1/products/nothing/enrollment", &open)
            .await
            .0,
        404
    );
    let (status, body) = fx
        .put(OPERATOR, "/api/v1/products/second/enrollment", &open)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["open_enrollment"], true, "{body}");
    let (_c, mut eventloop) = client(&fx, "wd-second", "wd-second");
    connect(&mut eventloop)
        .await
        .expect("a device of the new product connects");
    // Enrolled: a registered device of the product, under revocation like any.
    let (status, device) = fx.get(VIEWER, "/api/v1/devices/wd-second").await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["product"], "second", "{device}");
    assert_eq!(device["group"], "No Updates", "{device}");
    let (status, revoked) = fx
        .post(OPERATOR, "/api/v1/devices/wd-second/revoke", &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (_c, mut eventloop) = client(&fx, "wd-second", "wd-second");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "an enrolled device's revoked certificate is refused"
    );
    // The open product's CA still cannot speak for another product's registered device.
    create_product(&fx).await;
    register(&fx, "wd-good", "wd-good", "Production").await;
    second.issue(p, "wd-good-forged", "wd-good", false);
    let (_c, mut eventloop) = client(&fx, "wd-good", "wd-good-forged");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "another product's CA is refused for a registered device"
    );
    fx.stop().await;
}

#[tokio::test]
async fn a_device_of_the_configured_ca_is_enrolled_and_then_revocable() {
    let fx = fleet().await;
    let p = fx.dir.path();
    // `manufacturer_ca` in the fleet's config is the maker's CA: an ID nobody
    // registered connects, and is registered in the configured product at once.
    fx.maker.issue(p, "wd-conf", "wd-conf", false);
    let (_c, mut eventloop) = client(&fx, "wd-conf", "wd-conf");
    connect(&mut eventloop)
        .await
        .expect("a device of the configured CA connects");
    let (status, device) = fx.get(VIEWER, "/api/v1/devices/wd-conf").await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["product"], "configured", "{device}");
    assert_eq!(device["group"], "No Updates", "{device}");
    // Bound now: another certificate for that ID from the same CA is a clone.
    fx.maker.issue(p, "wd-conf-clone", "wd-conf", false);
    let (_c, mut eventloop) = client(&fx, "wd-conf", "wd-conf-clone");
    assert!(connect(&mut eventloop).await.is_err(), "clone refused");
    // Under revocation (issue #22: it answered 404 while unregistered).
    let (status, revoked) = fx
        .post(OPERATOR, "/api/v1/devices/wd-conf/revoke", &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (_c, mut eventloop) = client(&fx, "wd-conf", "wd-conf");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "a revoked certificate is refused"
    );
    fx.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_connect_with_its_reason_on_the_device_page() {
    let fx = fleet().await;
    let p = fx.dir.path();
    create_product(&fx).await;
    // Registered while valid; it expires a few seconds later.
    fx.maker
        .issue_expiring(p, "wd-aging", "wd-aging", Duration::from_secs(3));
    register(&fx, "wd-aging", "wd-aging", "Production").await;
    let (status, page) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-aging").await;
    assert_eq!(status, 200, "{page}");
    // Valid for an hour and 3 s, 3 s left: renewal is due (less than a third left).
    assert_eq!(page["certificate"]["standing"], "renewal-due", "{page}");
    assert!(page["certificate"]["refused_reason"].is_null(), "{page}");
    let (_c, mut eventloop) = client(&fx, "wd-aging", "wd-aging");
    connect(&mut eventloop)
        .await
        .expect("connects while the certificate is valid");
    drop(eventloop);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_c, mut eventloop) = client(&fx, "wd-aging", "wd-aging");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "an expired certificate is refused"
    );
    let (status, page) = fx.get(VIEWER, "/api/v1/dashboard/devices/wd-aging").await;
    assert_eq!(status, 200, "{page}");
    let certificate = &page["certificate"];
    assert_eq!(certificate["standing"], "expired", "{page}");
    let reason = certificate["refused_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("certificate expired: not valid after ") && reason.contains(" UTC"),
        "the reason names the end of validity: {reason}"
    );
    assert!(certificate["refused_ms"].as_i64().is_some(), "{page}");
    let not_after = certificate["not_after_ms"].as_i64().unwrap_or_default();
    assert!(
        not_after < warden_fleet::clock::now_ms(),
        "not_after {not_after} is in the past"
    );
    fx.stop().await;
}

#[tokio::test]
async fn revoked_and_cloned_certificates_are_refused_at_connect() {
    let fx = fleet().await;
    let p = fx.dir.path();
    create_product(&fx).await;
    register(&fx, "wd-good", "wd-good", "Production").await;
    fx.maker.issue(p, "wd-good-clone", "wd-good", false);
    // Same CA, same ID, another key: not the registered certificate.
    let (_c, mut eventloop) = client(&fx, "wd-good", "wd-good-clone");
    assert!(connect(&mut eventloop).await.is_err(), "clone refused");

    let device = SimulatedDevice::connect(&fx, "wd-good", "wd-good")
        .await
        .expect("registered device connects");
    assert_eq!(
        fx.post(VIEWER, "/api/v1/devices/wd-good/revoke", &json!({}))
            .await
            .0,
        403
    );
    let (status, revoked) = fx
        .post(OPERATOR, "/api/v1/devices/wd-good/revoke", &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], true);
    assert!(
        device.closed_within(Duration::from_secs(5)).await.is_some(),
        "the live session ends at revocation"
    );
    let (_c, mut eventloop) = client(&fx, "wd-good", "wd-good");
    assert!(
        connect(&mut eventloop).await.is_err(),
        "a revoked certificate is refused"
    );
    assert_eq!(
        fx.post(OPERATOR, "/api/v1/devices/wd-nobody/revoke", &json!({}))
            .await
            .0,
        404
    );
    fx.stop().await;
}

#[tokio::test]
async fn repeated_bad_tokens_are_slowed_but_a_valid_token_is_never_refused() {
    let fx = fleet().await;
    for _ in 0..warden_fleet::auth::MAX_FAILURES {
        assert_eq!(fx.get("guess", "/api/v1/devices").await.0, 401);
    }
    // Issue #22 item 4: further guesses from this address are answered 429, later…
    let started = std::time::Instant::now();
    assert_eq!(fx.get("guess", "/api/v1/devices").await.0, 429);
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    // …but the right token from the same address still gets in.
    assert_eq!(fx.get(VIEWER, "/api/v1/devices").await.0, 200);
    // Public: the dashboard page, the OpenAPI document.
    let page = reqwest::get(fx.url("/")).await.expect("get");
    assert_eq!(page.status(), 200);
    let openapi: serde_json::Value = reqwest::get(fx.url("/api/v1/openapi.json"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(openapi["paths"]["/api/v1/devices"].is_object(), "{openapi}");
    fx.stop().await;
}
