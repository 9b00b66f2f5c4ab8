//! The MQTT payload reference (`cloud-link/PAYLOADS.md`, `cloud-link/schemas/`)
//! against the code: every topic of `topics.rs` has its schema and its row in the
//! reference, and payloads made by the code's own encoders validate against their
//! schemas (and broken ones do not).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use warden_wire::topics::{
    Ack, AttestationChallenge, AttestationQuote, AttestationVerdict, Command, CommandAction,
    CommandResult, CommandStatus, Delivery, DeviceEvent, FailureReportMessage, PROTOCOL_VERSION,
    Reading, TelemetryBatch, TwinDesired, TwinReported, UPDATE_SOURCE_LOCAL, UpdateOffer,
    UpdateOfferDelta, UpdateStatus, encode,
};

/// Each topic suffix and the schema of its payload.
const TOPIC_SCHEMAS: [(&str, &str); 17] = [
    ("telemetry", "telemetry-batch"),
    ("ack", "ack"),
    ("commands", "command"),
    ("command-results", "command-result"),
    ("twin/desired", "twin-desired"),
    ("twin/reported", "twin-reported"),
    ("attestation/challenge", "attestation-challenge"),
    ("attestation/quote", "attestation-quote"),
    ("attestation/verdict", "attestation-verdict"),
    ("events", "event"),
    ("reports", "report"),
    ("updates/offer", "update-offer"),
    ("updates/status", "update-status"),
    ("certificate/request", "certificate-request"),
    ("certificate/response", "certificate-response"),
    ("certificate/renew", "certificate-renew"),
    ("updates/revocation-list", "revocation-list"),
];

fn cloud_link() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator(schema: &str) -> jsonschema::Validator {
    let path = cloud_link().join("schemas").join(format!("{schema}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let document: Value = serde_json::from_str(&text).expect("a schema is JSON");
    jsonschema::validator_for(&document)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The errors of `payload` (bytes the code made) against `schema`.
fn errors(schema: &str, payload: &[u8]) -> Vec<String> {
    let instance: Value = serde_json::from_slice(payload).expect("a payload is JSON");
    validator(schema)
        .iter_errors(&instance)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect()
}

fn assert_valid(schema: &str, payload: &[u8]) {
    let found = errors(schema, payload);
    assert!(
        found.is_empty(),
        "{schema}: {} does not validate: {found:?}",
        String::from_utf8_lossy(payload)
    );
}

fn assert_invalid(schema: &str, payload: &Value) {
    let found = errors(schema, &serde_json::to_vec(payload).expect("json"));
    assert!(!found.is_empty(), "{schema} accepts {payload}");
}

/// The `| \`suffix\` | direction |` rows of a markdown table in `text`.
fn topic_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| line.trim_start_matches("//!").trim())
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let suffix = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let direction = cells.get(2)?;
            direction
                .contains('→')
                .then(|| (suffix.to_owned(), (*direction).to_owned()))
        })
        .collect()
}

#[test]
fn every_topic_has_a_schema_and_a_row_in_the_reference() {
    let topics = include_str!("../../src/topics.rs");
    let defined = topic_rows(topics);
    let known: Vec<&str> = TOPIC_SCHEMAS.iter().map(|(topic, _)| *topic).collect();
    let listed: Vec<&str> = defined.iter().map(|(topic, _)| topic.as_str()).collect();
    assert_eq!(listed, known, "topics.rs's table and this test disagree");
    let reference = std::fs::read_to_string(cloud_link().join("PAYLOADS.md")).expect("PAYLOADS.md");
    let documented = topic_rows(&reference);
    assert_eq!(
        documented, defined,
        "PAYLOADS.md's topic table must list topics.rs's topics, in its order, with the same directions"
    );
    for (topic, schema) in TOPIC_SCHEMAS {
        let row = reference
            .lines()
            .find(|line| line.starts_with(&format!("| `{topic}` |")))
            .expect("row");
        assert!(
            row.contains(&format!("schemas/{schema}.json")),
            "the row of {topic} names schemas/{schema}.json: {row}"
        );
        validator(schema);
    }
    let files = std::fs::read_dir(cloud_link().join("schemas"))
        .expect("schemas")
        .count();
    assert_eq!(files, TOPIC_SCHEMAS.len(), "a schema no topic uses");
}

#[test]
fn payloads_the_code_makes_validate() {
    let delivery = Delivery {
        stream: "control".into(),
        epoch: 1_733_500_000_000,
        seq: 7,
    };
    let batch = TelemetryBatch {
        v: PROTOCOL_VERSION,
        stream: "telemetry".into(),
        epoch: 1_733_500_000_000,
        seq: 0,
        readings: vec![
            Reading::number("line1/oil".into(), 21.5, "°C".into(), 1),
            Reading::text("line1/batch".into(), "AB-17".into(), String::new(), 2),
            Reading::new(
                "line1/door".into(),
                warden_wire::topics::Value::Bool(true),
                String::new(),
                3,
            ),
        ],
    };
    assert_valid("telemetry-batch", &encode(&batch));
    assert_valid("ack", &Ack::encode("telemetry", 1, 2));
    assert_valid("ack", &delivery.ack());
    let command = Command {
        v: PROTOCOL_VERSION,
        id: "set-1".into(),
        action: CommandAction::Write {
            bridge: "line1".into(),
            point: "setpoint".into(),
            value: 1200.0,
        },
    };
    assert_valid("command", &command.encode());
    let result = CommandResult {
        v: PROTOCOL_VERSION,
        id: "set-1".into(),
        status: CommandStatus::Denied,
        detail: "value 5000 outside 0..=3000".into(),
    };
    assert_valid("command-result", &delivery.attach(&result));
    assert_valid("command-result", &encode(&result));
    let desired = TwinDesired {
        v: PROTOCOL_VERSION,
        policy_bundle: Some("00ff".into()),
    };
    assert_valid("twin-desired", &desired.encode());
    let mut with_link = serde_json::to_value(&desired).expect("json");
    with_link["link"] = json!({"version": 2, "batch_interval_ms": 500, "max_send_per_second": 100});
    assert_valid(
        "twin-desired",
        &serde_json::to_vec(&with_link).expect("json"),
    );
    let reported = TwinReported {
        v: PROTOCOL_VERSION,
        policy_name: Some("press-line".into()),
        policy_version: Some(3),
        ..TwinReported::default()
    };
    assert_valid("twin-reported", &delivery.attach(&reported));
    let nonce = "ab".repeat(32);
    assert_valid(
        "attestation-challenge",
        &encode(&AttestationChallenge {
            v: PROTOCOL_VERSION,
            nonce: nonce.clone(),
        }),
    );
    assert_valid(
        "attestation-quote",
        &encode(&AttestationQuote {
            v: PROTOCOL_VERSION,
            nonce: nonce.clone(),
            quote: "5750513100".into(),
            error: None,
        }),
    );
    assert_valid(
        "attestation-quote",
        &encode(&AttestationQuote {
            v: PROTOCOL_VERSION,
            nonce,
            quote: String::new(),
            error: Some("pluton unreachable".into()),
        }),
    );
    assert_valid(
        "attestation-verdict",
        &encode(&AttestationVerdict {
            v: PROTOCOL_VERSION,
            trusted: true,
            release: Some("1.1.0".into()),
            detail: "quote verified".into(),
        }),
    );
    assert_valid(
        "event",
        &delivery.attach(&DeviceEvent::now("link-restored", "down 12 s")),
    );
    assert_valid(
        "report",
        &delivery.attach(&FailureReportMessage {
            v: PROTOCOL_VERSION,
            id: "r-1".into(),
            ts_ms: 1,
            compartment: "bridges".into(),
            kind: "panic".into(),
            image_version: "1.2.0".into(),
            signature: "bridges/panic/index out of bounds".into(),
            message: "index out of bounds".into(),
        }),
    );
    assert_valid(
        "update-offer",
        &encode(&UpdateOffer {
            v: PROTOCOL_VERSION,
            id: "wave-1".into(),
            url: "https://fleet.example/images/ab".into(),
            sha256: "ab".repeat(32),
            size: 1024,
            version: "1.1.0".into(),
            window_start_ms: 0,
            window_end_ms: u64::MAX,
            delta: None,
        }),
    );
    assert_valid(
        "update-offer",
        &encode(&UpdateOffer {
            v: PROTOCOL_VERSION,
            id: "wave-1".into(),
            url: "https://fleet.example/images/ab".into(),
            sha256: "ab".repeat(32),
            size: 1024,
            version: "1.1.0".into(),
            window_start_ms: 0,
            window_end_ms: u64::MAX,
            delta: Some(UpdateOfferDelta {
                url: "https://fleet.example/deltas/cd".into(),
                sha256: "cd".repeat(32),
                size: 64,
                base_sha256: "ef".repeat(32),
            }),
        }),
    );
    assert_valid(
        "update-status",
        &delivery.attach(&UpdateStatus {
            v: PROTOCOL_VERSION,
            id: "wave-1".into(),
            state: "confirmed".into(),
            detail: String::new(),
            source: None,
            version: None,
        }),
    );
    assert_valid(
        "update-status",
        &delivery.attach(&UpdateStatus {
            v: PROTOCOL_VERSION,
            id: "local-0123456789ab".into(),
            state: "installed".into(),
            detail: "version 1.2.0 installed in slot b from a file".into(),
            source: Some(UPDATE_SOURCE_LOCAL.into()),
            version: Some("1.2.0".into()),
        }),
    );
}

#[test]
fn renewal_payloads_the_code_makes_validate() {
    use warden_wire::renewal::{
        CertificateRenewOrder, CertificateRequest, CertificateResponse, certification_request,
        certification_request_info, ecdsa_signature_der, pem, renewal_reason,
    };
    let info = certification_request_info("wd-0042", &[4u8; 65]);
    let csr = pem(
        "CERTIFICATE REQUEST",
        &certification_request(&info, &ecdsa_signature_der(&[7u8; 64])),
    );
    let request = CertificateRequest {
        v: PROTOCOL_VERSION,
        csr,
        reason: renewal_reason::RENEWAL_DUE.into(),
    };
    assert_valid("certificate-request", &request.encode());
    assert_eq!(
        CertificateRequest::decode(&request.encode()).expect("decodes"),
        request
    );
    let issued = CertificateResponse {
        v: PROTOCOL_VERSION,
        issued: true,
        certificate: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        detail: "issued; valid until 2027-12-07 00:00:00 UTC".into(),
    };
    assert_valid("certificate-response", &issued.encode());
    let refused = CertificateResponse {
        v: PROTOCOL_VERSION,
        issued: false,
        certificate: None,
        detail: "refused: the device is not attested".into(),
    };
    assert_valid("certificate-response", &refused.encode());
    assert_valid(
        "certificate-renew",
        &CertificateRenewOrder {
            v: PROTOCOL_VERSION,
        }
        .encode(),
    );
    assert_invalid(
        "certificate-request",
        &json!({"v": 1, "csr": "not a csr", "reason": "renewal-due"}),
    );
    assert!(CertificateRenewOrder::decode(br#"{"v": 2}"#).is_err());
}

#[test]
fn revocation_list_payloads_validate_and_twins_carry_the_held_sequence() {
    use warden_wire::revocation::{MAX_REVOCATION_LIST_LEN, RevocationListMessage};
    let message = RevocationListMessage::new(7, b"WRL1\x01 a list");
    assert_valid("revocation-list", &message.encode());
    let largest = RevocationListMessage::new(7, &[0xab; MAX_REVOCATION_LIST_LEN]);
    assert_valid("revocation-list", &largest.encode());
    let larger = RevocationListMessage::new(7, &[0xab; MAX_REVOCATION_LIST_LEN + 1]);
    assert!(RevocationListMessage::decode(&larger.encode()).is_err());
    assert_invalid(
        "revocation-list",
        &serde_json::to_value(&larger).expect("json"),
    );
    assert_invalid(
        "revocation-list",
        &json!({"v": 1, "sequence": 1, "list": "not hex"}),
    );
    let reported = TwinReported {
        v: PROTOCOL_VERSION,
        revocation_list_sequence: Some(7),
        ..TwinReported::default()
    };
    assert_valid("twin-reported", &reported.encode());
    assert_invalid(
        "twin-reported",
        &json!({"v": 1, "policy_name": null, "policy_version": null, "last_error": null,
                "revocation_list_sequence": -1}),
    );
}

#[test]
fn payloads_the_code_refuses_do_not_validate() {
    // The ack an acknowledger written without the reference sends: no `v`.
    let unversioned = json!({"stream": "telemetry", "epoch": 1, "seq": 2});
    assert!(Ack::decode(&serde_json::to_vec(&unversioned).expect("json")).is_err());
    assert_invalid("ack", &unversioned);
    assert_invalid(
        "ack",
        &json!({"v": 2, "stream": "telemetry", "epoch": 1, "seq": 2}),
    );
    // A reading with neither a number, a text nor a flag.
    assert_invalid(
        "telemetry-batch",
        &json!({"v": 1, "stream": "telemetry", "epoch": 1, "seq": 0,
                "readings": [{"point": "line1/oil", "value": null, "text": null, "unit": "", "ts_ms": 1}]}),
    );
    assert_invalid(
        "command",
        &json!({"v": 1, "id": "has space", "action": {"kind": "write", "bridge": "b", "point": "p", "value": 1.0}}),
    );
    assert_invalid(
        "command-result",
        &json!({"v": 1, "id": "c", "status": "done", "delivery": {"stream": "control", "epoch": 1, "seq": 1}}),
    );
    assert_invalid(
        "twin-desired",
        &json!({"v": 1, "link": {"version": 1, "batch_interval_ms": 10, "max_send_per_second": 100}}),
    );
}
