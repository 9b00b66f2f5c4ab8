//! `openapi.json` against the wire types and the router: the document is written by
//! hand, these tests fail when it and the fleet disagree.
//!
//! Every request and response type of `warden_wire::fleet_api` is serialised from
//! samples and checked against the document's schema of it (a small subset of JSON
//! Schema: `type`, `enum`, `properties`, `required`, `items`, `additionalProperties`,
//! `oneOf`, `$ref`). A schema's properties must be exactly the fields the type writes;
//! for a response, `required` must list exactly the fields it always writes; for a
//! request, removing a field the document calls required must make the fleet refuse
//! the body, and removing any other must not. Every route of the fleet's source is an
//! operation of the document with the same methods, each naming the right schemas and
//! listing its query type's fields as its query parameters.

use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use warden_wire::fleet_api::{
    Attestation, AuditLine, AuditQuery, CertificateRenewal, CommandView, Connectivity, CrashRate,
    DashboardDevice, DeltaRecord, DeploymentEvent, DeploymentMember, DeploymentProgress,
    DeploymentRequest, DesiredRequest, Device, DeviceCertificate, DeviceDetail, DevicePageQuery,
    DeviceRevocationList, DeviceRow, DeviceView, DevicesQuery, EnrollmentRequest, ErrorBody,
    EventsQuery, FleetCounts, FleetSummary, Group, GroupRequest, ImageRecord, ProductRequest,
    ProductView, RegisterRequest, RegisterResponse, RegisteredDevice, ReportBucket, ReportGroup,
    ReportGroupsQuery, ReportsQuery, RevocationListRecord, SeenDevice, SignatureGroup,
    StoredDeployment, StoredEvent, StoredReading, StoredReport, TelemetryQuery, TelemetryResponse,
    TwinView, VersionCount, VersionReports, WaveProgress, WaveSize, WriteRequest,
};
use warden_wire::value::Value as PointValue;

fn document() -> Value {
    serde_json::from_str(warden_fleet::api::OPENAPI_JSON).expect("openapi.json is JSON")
}

/// Resolves a local `$ref` (`#/components/schemas/Name`).
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(
                document,
                document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} is not in the document")),
            )
        }
        None => schema,
    }
}

/// The JSON types `schema` allows (`type` as one name or a list of them).
fn kinds(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn fits(kind: &str, value: &Value) -> Option<bool> {
    Some(match kind {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => return None,
    })
}

/// Checks `value` against `schema`; every disagreement, each naming where.
fn check(document: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(document, schema);
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        let fitting = alternatives
            .iter()
            .filter(|alternative| {
                let mut found = Vec::new();
                check(document, alternative, value, at, &mut found);
                found.is_empty()
            })
            .count();
        if fitting != 1 {
            problems.push(format!(
                "{at}: {value} fits {fitting} of the document's oneOf alternatives, not one"
            ));
        }
        return;
    }
    let kinds = kinds(schema);
    if !kinds.is_empty() {
        let mut fitted = false;
        for kind in &kinds {
            match fits(kind, value) {
                Some(true) => fitted = true,
                Some(false) => {}
                None => problems.push(format!("{at}: the checker does not know type {kind}")),
            }
        }
        if !fitted {
            problems.push(format!("{at}: {value} is not of type {kinds:?}"));
            return;
        }
    } else if value.is_null() {
        problems.push(format!("{at}: null, but the document does not allow null"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (index, item) in values.iter().enumerate() {
            check(document, items, item, &format!("{at}[{index}]"), problems);
        }
    }
    let Some(members) = value.as_object() else {
        return;
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (name, member) in members {
        let at = format!("{at}.{name}");
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(property), _) => check(document, property, member, &at, problems),
            (None, Some(additional)) => check(document, additional, member, &at, problems),
            (None, None) if properties.is_some() => {
                problems.push(format!("{at}: the type writes it, the document lacks it"));
            }
            (None, None) => {}
        }
    }
    for name in required(schema) {
        if !members.contains_key(&name) {
            problems.push(format!("{at}: required {name} is missing"));
        }
    }
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn schema_of(name: &str) -> Value {
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The samples as JSON objects.
fn objects<T: Serialize>(name: &str, samples: &[T]) -> Vec<Value> {
    samples
        .iter()
        .map(|sample| {
            let value = serde_json::to_value(sample).expect("serialises");
            assert!(value.is_object(), "a sample of {name} is not an object");
            value
        })
        .collect()
}

/// Each sample against the schema `name`, and the schema's properties against the
/// fields the samples write: every property written by some sample; for a response
/// (`always_written`), `required` exactly the fields every sample writes.
fn against_schema(name: &str, samples: &[Value], always_written: bool) -> Vec<String> {
    let document = document();
    let mut problems = Vec::new();
    for (index, sample) in samples.iter().enumerate() {
        check(
            &document,
            &schema_of(name),
            sample,
            &format!("{name} (sample {index})"),
            &mut problems,
        );
    }
    let reference = schema_of(name);
    let schema = resolve(&document, &reference);
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return problems;
    };
    let written: BTreeSet<&String> = samples
        .iter()
        .filter_map(Value::as_object)
        .flat_map(Map::keys)
        .collect();
    for property in properties.keys() {
        if !written.contains(property) {
            problems.push(format!(
                "{name}: the document has {property}, no sample of the type writes it"
            ));
        }
    }
    if always_written {
        let always: BTreeSet<String> = properties
            .keys()
            .filter(|property| {
                samples
                    .iter()
                    .all(|sample| sample.get(property.as_str()).is_some())
            })
            .cloned()
            .collect();
        let listed = required(schema);
        if listed != always {
            problems.push(format!(
                "{name}: the document requires {listed:?}, the type always writes {always:?}"
            ));
        }
    }
    problems
}

/// A response type: its samples (together covering every field it can write).
fn response<T: Serialize>(name: &str, samples: &[T]) -> Vec<String> {
    against_schema(name, &objects(name, samples), true)
}

/// A request type: as [`response`] without the rule on `required`, and the fleet
/// refuses `sample` without a required field and accepts it without any other.
fn request<T: Serialize + DeserializeOwned>(name: &str, sample: &T) -> Vec<String> {
    let values = objects(name, std::slice::from_ref(sample));
    let mut problems = against_schema(name, &values, false);
    let document = document();
    let required = required(resolve(&document, &schema_of(name)));
    let Value::Object(members) = &values[0] else {
        unreachable!("objects() checked it");
    };
    for field in members.keys() {
        let mut without = members.clone();
        without.remove(field);
        let accepted = serde_json::from_value::<T>(Value::Object(without)).is_ok();
        match (required.contains(field), accepted) {
            (true, true) => problems.push(format!(
                "{name}: the document requires {field}, the type accepts a body without it"
            )),
            (false, false) => problems.push(format!(
                "{name}: the type requires {field}, the document does not list it as required"
            )),
            _ => {}
        }
    }
    problems
}

const PEM: &str = "-----BEGIN CERTIFICATE-----";

fn registered_device() -> RegisteredDevice {
    RegisteredDevice {
        device_id: "wd-0001".into(),
        serial: "S-1".into(),
        product: "gw".into(),
        group: "Production".into(),
        fingerprint: "ab".repeat(32),
        image_version: "1.2.3".into(),
        policy_version: Some(4),
        last_seen_ms: Some(5),
        attestation: "unverified".into(),
        attested_ms: Some(6),
        attestation_detail: Some("release 1.2.3".into()),
        revoked: true,
        revoked_ms: Some(7),
        registered_ms: 8,
    }
}

/// A registered device that was never heard from (every optional field `null`).
fn quiet_device() -> RegisteredDevice {
    RegisteredDevice {
        policy_version: None,
        last_seen_ms: None,
        attested_ms: None,
        attestation_detail: None,
        revoked: false,
        revoked_ms: None,
        ..registered_device()
    }
}

fn unregistered_device() -> DeviceView {
    DeviceView::Unregistered {
        device_id: "wd-0002".into(),
        registered: false,
        last_seen_ms: 9,
    }
}

/// A number, a text, a flag, and a number JSON cannot carry.
fn readings() -> Vec<StoredReading> {
    [
        PointValue::Number(21.5),
        PointValue::Text("AB-17".into()),
        PointValue::Bool(true),
        PointValue::Number(f64::NAN),
    ]
    .into_iter()
    .map(|value| StoredReading {
        point: "line1/x".into(),
        value,
        unit: "°C".into(),
        ts_ms: 10,
    })
    .collect()
}

fn report() -> StoredReport {
    StoredReport {
        device_id: "wd-0001".into(),
        id: "r-1".into(),
        ts_ms: 11,
        compartment: "bridge-line1".into(),
        kind: "crash".into(),
        image_version: "1.2.3".into(),
        signature: "ab".repeat(8),
        message: "boom".into(),
    }
}

fn bucket() -> ReportBucket {
    ReportBucket {
        start_ms: 3_600_000,
        count: 2,
    }
}

fn deployment_request() -> DeploymentRequest {
    DeploymentRequest {
        waves: vec![WaveSize::Count(2), WaveSize::Percent(100)],
        window_start_ms: Some(1),
        window_end_ms: Some(2),
        ..DeploymentRequest::new("ab".repeat(32), "Production")
    }
}

fn deployment_event() -> DeploymentEvent {
    DeploymentEvent {
        seq: 0,
        ts_ms: 12,
        kind: "wave-started".into(),
        wave: 0,
        detail: String::new(),
    }
}

fn deployment_member(updated_ms: Option<i64>) -> DeploymentMember {
    DeploymentMember {
        device_id: "wd-0001".into(),
        wave: 0,
        state: "offered".into(),
        detail: String::new(),
        updated_ms,
    }
}

fn deployment() -> StoredDeployment {
    StoredDeployment {
        id: "d-1".into(),
        product: "gw".into(),
        group: "Production".into(),
        image_sha256: "ab".repeat(32),
        version: "1.2.4".into(),
        // As stored: the request as accepted, without a window (written as null).
        spec: serde_json::to_value(DeploymentRequest::new("ab".repeat(32), "Production"))
            .expect("serialises"),
        created_by: "ops".into(),
        created_ms: 13,
        state: "wave-started".into(),
        wave: 0,
        events: vec![deployment_event()],
        members: vec![deployment_member(Some(14)), deployment_member(None)],
    }
}

fn wave_progress() -> WaveProgress {
    WaveProgress {
        wave: 0,
        status: "running".into(),
        targeted: 4,
        offered: 3,
        withheld: 1,
        in_progress: 1,
        succeeded: 1,
        failed: 1,
        crashed: 0,
    }
}

fn deployment_progress(thresholds: Option<f64>) -> DeploymentProgress {
    DeploymentProgress {
        id: "d-1".into(),
        product: "gw".into(),
        group: "Production".into(),
        version: "1.2.4".into(),
        created_by: "ops".into(),
        created_ms: 13,
        state: "advancing".into(),
        last_event: "wave-started".into(),
        detail: String::new(),
        current_wave: 0,
        success_threshold: thresholds,
        failure_threshold: thresholds,
        waves: vec![wave_progress()],
    }
}

fn version_count() -> VersionCount {
    VersionCount {
        product: "gw".into(),
        image_version: "1.2.3".into(),
        devices: 3,
    }
}

fn device_row(last_seen_ms: Option<i64>) -> DeviceRow {
    DeviceRow {
        device_id: "wd-0001".into(),
        registered: true,
        product: "gw".into(),
        group: "Production".into(),
        image_version: "1.2.3".into(),
        status: "trusted".into(),
        last_seen_ms,
    }
}

fn seen() -> SeenDevice {
    SeenDevice {
        first_seen_ms: 1,
        last_seen_ms: 2,
    }
}

#[test]
fn the_document_describes_every_wire_type_of_the_api() {
    let mut problems = Vec::new();
    problems.extend(request(
        "ProductRequest",
        &ProductRequest {
            name: "gw".into(),
            manufacturer_ca_pem: PEM.into(),
        },
    ));
    problems.extend(response(
        "Product",
        &[ProductView {
            name: "gw".into(),
            manufacturer_ca_pem: PEM.into(),
            ca_fingerprints: vec!["ab".repeat(32)],
            created_ms: 1,
            open_enrollment: false,
        }],
    ));
    problems.extend(request(
        "EnrollmentRequest",
        &EnrollmentRequest { open: true },
    ));
    problems.extend(request(
        "GroupRequest",
        &GroupRequest {
            name: "Line 2".into(),
        },
    ));
    problems.extend(response(
        "Group",
        &[Group {
            product: "gw".into(),
            name: "Line 2".into(),
            receives_updates: true,
            devices: 3,
        }],
    ));
    problems.extend(request(
        "RegisterRequest",
        &RegisterRequest {
            device_id: "wd-0001".into(),
            serial: "S-1".into(),
            product: "gw".into(),
            group: "Production".into(),
            certificate_pem: PEM.into(),
            image_version: "1.2.3".into(),
        },
    ));
    problems.extend(response(
        "RegisterResponse",
        &[RegisterResponse {
            device_id: "wd-0001".into(),
            fingerprint: "ab".repeat(32),
            product: "gw".into(),
            group: "Production".into(),
        }],
    ));
    problems.extend(response(
        "RegisteredDevice",
        &[registered_device(), quiet_device()],
    ));
    problems.extend(response("UnregisteredDevice", &[unregistered_device()]));
    problems.extend(response(
        "DeviceView",
        &[
            DeviceView::Registered(Box::new(registered_device())),
            unregistered_device(),
        ],
    ));
    problems.extend(response("Reading", &readings()));
    problems.extend(response(
        "Device",
        &[Device {
            id: "wd-0001".into(),
            first_seen_ms: 1,
            last_seen_ms: 2,
            latest: readings(),
        }],
    ));
    problems.extend(response(
        "TelemetryResponse",
        &[TelemetryResponse {
            device: "wd-0001".into(),
            readings: readings(),
        }],
    ));
    problems.extend(request(
        "WriteRequest",
        &WriteRequest {
            bridge: "line1".into(),
            point: "setpoint".into(),
            value: 21.5,
            id: Some("c-1".into()),
        },
    ));
    problems.extend(response(
        "Command",
        &[
            CommandView {
                id: "c-1".into(),
                request: serde_json::json!({"v": 1, "id": "c-1", "action": {"kind": "write", "bridge": "line1", "point": "setpoint", "value": 21.5}}),
                status: "written".into(),
                detail: String::new(),
                created_ms: 1,
                completed_ms: Some(2),
            },
            CommandView {
                id: "c-2".into(),
                request: serde_json::json!({"v": 1, "id": "c-1", "action": {"kind": "write", "bridge": "line1", "point": "setpoint", "value": 21.5}}),
                status: "sent".into(),
                detail: String::new(),
                created_ms: 1,
                completed_ms: None,
            },
        ],
    ));
    problems.extend(request(
        "DesiredRequest",
        &DesiredRequest {
            policy_bundle: Some("00ff".into()),
        },
    ));
    problems.extend(response(
        "Twin",
        &[
            TwinView {
                device: "wd-0001".into(),
                desired: Some(serde_json::json!({"v": 1, "policy_bundle": "00ff"})),
                reported: Some(serde_json::json!({"v": 1, "policy_version": 7})),
            },
            TwinView {
                device: "wd-0002".into(),
                desired: None,
                reported: None,
            },
        ],
    ));
    problems.extend(response(
        "Attestation",
        &[
            Attestation {
                device: "wd-0001".into(),
                verified: true,
                reason: Some("-".into()),
                detail: "release 1.2.3".into(),
                measured_image: Some("ab".repeat(32)),
                release: Some("1.2.3".into()),
                firmware_version: Some(3),
                registers: vec!["00".repeat(32); 8],
                counters: vec![1, 2],
            },
            Attestation::refused("wd-0002", "the quote's signature does not verify".into()),
        ],
    ));
    problems.extend(response("Report", &[report()]));
    problems.extend(response("ReportBucket", &[bucket()]));
    problems.extend(response(
        "ReportGroup",
        &[ReportGroup {
            signature: "ab".repeat(8),
            compartment: "bridge-line1".into(),
            kind: "crash".into(),
            image_version: "1.2.3".into(),
            message: "boom".into(),
            count: 2,
            devices: 1,
            first_ms: 1,
            last_ms: 2,
            series: vec![bucket()],
        }],
    ));
    problems.extend(response(
        "CrashRate",
        &[CrashRate {
            image_version: "1.2.3".into(),
            crashes: 3,
            crashed_devices: 1,
            devices: 4,
            rate: 0.25,
        }],
    ));
    problems.extend(response(
        "Event",
        &[StoredEvent {
            device_id: "wd-0001".into(),
            ts_ms: 5,
            kind: "link-restored".into(),
            detail: "after 3 s".into(),
        }],
    ));
    problems.extend(response(
        "AuditLine",
        &[AuditLine {
            ts_ms: 5,
            actor: "ops".into(),
            method: "POST".into(),
            path: "/api/v1/deployments".into(),
            status: 201,
        }],
    ));
    problems.extend(response(
        "Image",
        &[ImageRecord {
            sha256: "ab".repeat(32),
            product: "gw".into(),
            version: "1.2.4".into(),
            size: 4096,
            security_counter: 2,
            measurement: "cd".repeat(32),
            uploaded_ms: 6,
        }],
    ));
    problems.extend(response(
        "Delta",
        &[DeltaRecord {
            sha256: "ef".repeat(32),
            product: "gw".into(),
            base_sha256: "01".repeat(32),
            result_sha256: "ab".repeat(32),
            result_version: "1.2.4".into(),
            size: 512,
            uploaded_ms: 7,
        }],
    ));
    problems.extend(response(
        "RevocationList",
        &[RevocationListRecord {
            sequence: 3,
            issuer: "0a".repeat(8),
            revoked: vec!["0b".repeat(8)],
            sha256: "cd".repeat(32),
            size: 95,
            uploaded_ms: 8,
        }],
    ));
    problems.extend(response(
        "DeviceRevocationList",
        &[
            DeviceRevocationList::of(Some(2), Some(3)),
            DeviceRevocationList::of(None, None),
        ],
    ));
    problems.extend(request("DeploymentRequest", &deployment_request()));
    problems.extend(response("DeploymentEvent", &[deployment_event()]));
    problems.extend(response(
        "DeploymentMember",
        &[deployment_member(Some(14)), deployment_member(None)],
    ));
    problems.extend(response("Deployment", &[deployment()]));
    problems.extend(response(
        "FleetSummary",
        &[FleetSummary {
            counts: FleetCounts {
                registered: 4,
                by_status: [("trusted".to_owned(), 3), ("revoked".to_owned(), 1)].into(),
                by_version: vec![version_count()],
                unregistered_seen: 1,
            },
            connectivity: Connectivity {
                online: 2,
                offline: 1,
            },
            deployments_by_state: [("advancing".to_owned(), 1)].into(),
            deployments_in_progress: vec![deployment_progress(Some(0.9))],
        }],
    ));
    problems.extend(response("VersionCount", &[version_count()]));
    problems.extend(response(
        "Connectivity",
        &[Connectivity {
            online: 2,
            offline: 1,
        }],
    ));
    problems.extend(response(
        "DashboardDevice",
        &[
            DashboardDevice {
                row: device_row(Some(5)),
                online: true,
            },
            DashboardDevice {
                row: device_row(None),
                online: false,
            },
        ],
    ));
    problems.extend(response("SeenDevice", &[seen()]));
    problems.extend(response(
        "DeviceDetail",
        &[
            DeviceDetail {
                device_id: "wd-0001".into(),
                online: true,
                registered: Some(registered_device()),
                seen: Some(seen()),
                latest: readings(),
                reports: vec![report()],
                point_decimals: [("line1/temperature".to_owned(), 1)].into(),
                certificate: Some(DeviceCertificate {
                    not_before_ms: 1_000,
                    not_after_ms: 2_000,
                    standing: "expired".into(),
                    refused_ms: Some(3_000),
                    refused_reason: Some("certificate expired".into()),
                    renewal: Some(certificate_renewal()),
                }),
                revocation_list: Some(DeviceRevocationList::of(Some(3), Some(3))),
            },
            DeviceDetail {
                device_id: "wd-0002".into(),
                online: false,
                registered: None,
                seen: None,
                latest: Vec::new(),
                reports: Vec::new(),
                point_decimals: Default::default(),
                certificate: None,
                revocation_list: None,
            },
        ],
    ));
    problems.extend(response(
        "DeviceCertificate",
        &[DeviceCertificate {
            not_before_ms: 1_000,
            not_after_ms: 2_000,
            standing: "valid".into(),
            refused_ms: None,
            refused_reason: None,
            renewal: None,
        }],
    ));
    problems.extend(response(
        "CertificateRenewal",
        &[
            certificate_renewal(),
            CertificateRenewal {
                state: "refused".into(),
                detail: "refused: the device is not attested".into(),
                fingerprint: None,
                not_after_ms: None,
                updated_ms: 5_000,
            },
        ],
    ));
    problems.extend(response("WaveProgress", &[wave_progress()]));
    problems.extend(response(
        "DeploymentProgress",
        &[deployment_progress(Some(0.9)), deployment_progress(None)],
    ));
    problems.extend(response(
        "VersionReports",
        &[VersionReports {
            image_version: "1.2.3".into(),
            count: 2,
        }],
    ));
    problems.extend(response(
        "SignatureGroup",
        &[SignatureGroup {
            signature: "ab".repeat(8),
            compartment: "bridge-line1".into(),
            kind: "crash".into(),
            message: "boom".into(),
            count: 2,
            devices: 1,
            versions: vec![VersionReports {
                image_version: "1.2.3".into(),
                count: 2,
            }],
            first_ms: 1,
            last_ms: 2,
            series: vec![bucket()],
        }],
    ));
    problems.extend(response(
        "Error",
        &[
            ErrorBody {
                error: "serial: must be 1 to 128 printable characters".into(),
                field: Some("serial".into()),
            },
            ErrorBody {
                error: "device wd-9 is not known".into(),
                field: None,
            },
        ],
    ));
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_document_names_no_schema_without_a_wire_type() {
    // Each schema of the document is checked above; a new one must be added there.
    let checked = [
        "Error",
        "ProductRequest",
        "Product",
        "EnrollmentRequest",
        "Group",
        "GroupRequest",
        "RegisterRequest",
        "RegisterResponse",
        "RegisteredDevice",
        "UnregisteredDevice",
        "DeviceView",
        "Reading",
        "TelemetryResponse",
        "Device",
        "SeenDevice",
        "Command",
        "WriteRequest",
        "DesiredRequest",
        "Report",
        "ReportBucket",
        "ReportGroup",
        "CrashRate",
        "Event",
        "AuditLine",
        "Image",
        "Delta",
        "RevocationList",
        "DeviceRevocationList",
        "CertificateRenewal",
        // Checked inside DeploymentRequest's sample (a `oneOf` of one-field objects).
        "WaveSize",
        "DeploymentRequest",
        "DeploymentEvent",
        "DeploymentMember",
        "Deployment",
        "Attestation",
        "Twin",
        "FleetSummary",
        "VersionCount",
        "Connectivity",
        "DashboardDevice",
        "DeviceDetail",
        "DeviceCertificate",
        "WaveProgress",
        "DeploymentProgress",
        "VersionReports",
        "SignatureGroup",
    ];
    let document = document();
    let documented: BTreeSet<&str> = document["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
        .map(String::as_str)
        .collect();
    let checked: BTreeSet<&str> = checked.into_iter().collect();
    assert_eq!(documented, checked);
}

/// What the fleet speaks on one operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    /// The JSON request body's schema, if it takes one.
    body: Option<&'static str>,
    /// Each answer documented: its status and what its JSON body is (`-` for none or
    /// not JSON, `[Name]` for an array of `Name`, `A | B` for one of several).
    answers: &'static [(&'static str, &'static str)],
    /// The query type, every field set (its fields are the query parameters).
    query: Option<Value>,
}

fn query<T: Serialize>(sample: &T) -> Option<Value> {
    Some(serde_json::to_value(sample).expect("serialises"))
}

/// Every operation of the fleet: what its router serves, and the types it speaks.
fn operations() -> Vec<Operation> {
    let operation =
        |method, path, body, answers: &'static [(&'static str, &'static str)]| Operation {
            method,
            path,
            body,
            answers,
            query: None,
        };
    vec![
        operation("get", "/api/v1/openapi.json", None, &[("200", "-")]),
        operation("get", "/api/v1/products", None, &[("200", "[Product]")]),
        operation(
            "post",
            "/api/v1/products",
            Some("ProductRequest"),
            &[
                ("201", "Product"),
                ("200", "Product"),
                ("409", "Error"),
                ("422", "Error"),
            ],
        ),
        operation(
            "put",
            "/api/v1/products/{name}/enrollment",
            Some("EnrollmentRequest"),
            &[("200", "Product"), ("404", "Error")],
        ),
        operation(
            "get",
            "/api/v1/products/{name}/groups",
            None,
            &[("200", "[Group]"), ("404", "Error")],
        ),
        operation(
            "post",
            "/api/v1/products/{name}/groups",
            Some("GroupRequest"),
            &[
                ("201", "Group"),
                ("200", "Group"),
                ("404", "Error"),
                ("422", "Error"),
            ],
        ),
        Operation {
            query: query(&DevicesQuery {
                offset: Some(0),
                limit: Some(10),
            }),
            ..operation("get", "/api/v1/devices", None, &[("200", "[Device]")])
        },
        operation(
            "post",
            "/api/v1/devices",
            Some("RegisterRequest"),
            &[
                ("201", "RegisterResponse"),
                ("200", "RegisterResponse"),
                ("409", "Error"),
                ("422", "Error"),
            ],
        ),
        operation(
            "get",
            "/api/v1/devices/{id}",
            None,
            &[("200", "DeviceView"), ("404", "Error")],
        ),
        operation(
            "post",
            "/api/v1/devices/{id}/revoke",
            None,
            &[("200", "RegisteredDevice"), ("404", "Error")],
        ),
        operation(
            "post",
            "/api/v1/devices/{id}/certificate/renew",
            None,
            &[
                ("202", "CertificateRenewal"),
                ("404", "Error"),
                ("409", "Error"),
            ],
        ),
        Operation {
            query: query(&TelemetryQuery {
                point: Some("line1/t".into()),
                limit: Some(10),
                from_ms: Some(1),
                to_ms: Some(2),
            }),
            ..operation(
                "get",
                "/api/v1/devices/{id}/telemetry",
                None,
                &[("200", "TelemetryResponse"), ("404", "Error")],
            )
        },
        operation(
            "post",
            "/api/v1/devices/{id}/commands",
            Some("WriteRequest"),
            &[
                ("202", "Command"),
                ("200", "Command"),
                ("404", "Error"),
                ("409", "Error"),
            ],
        ),
        operation(
            "get",
            "/api/v1/devices/{id}/commands/{command}",
            None,
            &[("200", "Command"), ("404", "Error")],
        ),
        operation("get", "/api/v1/devices/{id}/twin", None, &[("200", "Twin")]),
        operation(
            "put",
            "/api/v1/devices/{id}/twin/desired",
            Some("DesiredRequest"),
            &[("202", "-")],
        ),
        operation(
            "post",
            "/api/v1/devices/{id}/attestation",
            None,
            &[
                ("200", "Attestation"),
                ("422", "Attestation"),
                ("409", "Error"),
            ],
        ),
        Operation {
            query: query(&ReportsQuery {
                group_by: Some("signature".into()),
                device: Some("wd-1".into()),
                since_ms: Some(1),
                bucket_ms: Some(1000),
                limit: Some(10),
            }),
            ..operation(
                "get",
                "/api/v1/reports",
                None,
                &[("200", "[Report] | [ReportGroup]"), ("400", "Error")],
            )
        },
        operation(
            "get",
            "/api/v1/reports/crash-rate",
            None,
            &[("200", "[CrashRate]")],
        ),
        Operation {
            query: query(&EventsQuery {
                device: Some("wd-1".into()),
                limit: Some(10),
            }),
            ..operation("get", "/api/v1/events", None, &[("200", "[Event]")])
        },
        Operation {
            query: query(&AuditQuery { limit: Some(10) }),
            ..operation("get", "/api/v1/audit", None, &[("200", "[AuditLine]")])
        },
        operation("get", "/api/v1/images", None, &[("200", "[Image]")]),
        // The body is the signed image's bytes (application/octet-stream).
        operation(
            "post",
            "/api/v1/images",
            None,
            &[("201", "Image"), ("200", "Image"), ("422", "Error")],
        ),
        operation(
            "get",
            "/images/{sha256}",
            None,
            &[
                ("200", "-"),
                ("206", "-"),
                ("404", "-"),
                ("416", "-"),
                ("503", "Error"),
            ],
        ),
        operation("get", "/api/v1/deltas", None, &[("200", "[Delta]")]),
        // The body is the signed delta's bytes (application/octet-stream).
        operation(
            "post",
            "/api/v1/deltas",
            None,
            &[("201", "Delta"), ("200", "Delta"), ("422", "Error")],
        ),
        operation(
            "get",
            "/api/v1/revocation-lists",
            None,
            &[("200", "[RevocationList]")],
        ),
        // The body is the signed list's bytes (application/octet-stream).
        operation(
            "post",
            "/api/v1/revocation-lists",
            None,
            &[("201", "RevocationList"), ("422", "Error")],
        ),
        operation(
            "get",
            "/deltas/{sha256}",
            None,
            &[
                ("200", "-"),
                ("206", "-"),
                ("404", "-"),
                ("416", "-"),
                ("503", "Error"),
            ],
        ),
        operation(
            "get",
            "/api/v1/deployments",
            None,
            &[("200", "[Deployment]")],
        ),
        operation(
            "post",
            "/api/v1/deployments",
            Some("DeploymentRequest"),
            &[("201", "Deployment"), ("422", "Error")],
        ),
        operation(
            "get",
            "/api/v1/deployments/{id}",
            None,
            &[("200", "Deployment"), ("404", "Error")],
        ),
        operation(
            "get",
            "/api/v1/dashboard/summary",
            None,
            &[("200", "FleetSummary")],
        ),
        Operation {
            query: query(&DevicePageQuery {
                prefix: "wd-".into(),
                offset: Some(0),
                limit: Some(10),
            }),
            ..operation(
                "get",
                "/api/v1/dashboard/devices",
                None,
                &[("200", "[DashboardDevice]")],
            )
        },
        operation(
            "get",
            "/api/v1/dashboard/devices/{id}",
            None,
            &[("200", "DeviceDetail"), ("404", "Error")],
        ),
        operation(
            "get",
            "/api/v1/dashboard/deployments",
            None,
            &[("200", "[DeploymentProgress]")],
        ),
        Operation {
            query: query(&ReportGroupsQuery {
                since_ms: Some(1),
                bucket_ms: Some(1000),
            }),
            ..operation(
                "get",
                "/api/v1/dashboard/report-groups",
                None,
                &[("200", "[SignatureGroup]"), ("400", "Error")],
            )
        },
    ]
}

/// What a schema names, in [`Operation::answers`]' notation.
fn describe(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return "-".into();
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        return alternatives
            .iter()
            .map(|alternative| describe(Some(alternative)))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        return format!("[{}]", describe(schema.get("items")));
    }
    format!("an inline schema {schema}")
}

/// `(method, path)` of every route the fleet's API source registers under `/api/` or
/// `/images/` or `/deltas/` (the dashboard's pages and `/metrics` are not part of the API).
fn routed() -> BTreeSet<(String, String)> {
    let sources = [
        include_str!("../../src/api.rs"),
        include_str!("../../src/api/dashboard.rs"),
        include_str!("../../src/api/deployments.rs"),
        include_str!("../../src/api/registry.rs"),
        include_str!("../../src/api/reports.rs"),
    ];
    let mut routes = BTreeSet::new();
    for source in sources {
        for (at, _) in source.match_indices(".route(") {
            // The call's text, to its closing parenthesis.
            let call = &source[at + ".route".len()..];
            let mut depth = 0;
            let end = call
                .char_indices()
                .find_map(|(index, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(index)
                })
                .expect("a closed .route( call");
            let call = &call[..end];
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            if !(path.starts_with("/api/")
                || path.starts_with("/images/")
                || path.starts_with("/deltas/"))
            {
                continue;
            }
            for method in ["get", "post", "put", "delete", "patch"] {
                let named = call.match_indices(&format!("{method}(")).any(|(index, _)| {
                    index == 0 || !call.as_bytes()[index - 1].is_ascii_alphanumeric()
                });
                if named {
                    routes.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    routes
}

#[test]
fn every_route_is_an_operation_of_the_document_and_names_its_types() {
    let document = document();
    let operations = operations();
    let listed: BTreeSet<(String, String)> = operations
        .iter()
        .map(|op| (op.method.to_owned(), op.path.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|methods| methods.keys())
                .filter(|key| *key != "parameters")
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let routed = routed();
    assert!(
        routed.contains(&("get".into(), "/api/v1/dashboard/summary".into())),
        "the source scan finds the routes: {routed:?}"
    );
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed but not in openapi.json"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in openapi.json but not routed"
    );
    assert_eq!(listed, routed, "this test's operations are the routes");

    let mut problems = Vec::new();
    for op in &operations {
        let name = format!("{} {}", op.method, op.path);
        let operation = &document["paths"][op.path][op.method];
        let body = operation
            .pointer("/requestBody/content/application~1json/schema")
            .map(|schema| describe(Some(schema)));
        if body.as_deref() != op.body {
            problems.push(format!(
                "{name}: the document's JSON body is {body:?}, the fleet takes {:?}",
                op.body
            ));
        }
        let answers = operation["responses"].as_object().expect("responses");
        for (status, expected) in op.answers {
            let documented = answers
                .get(*status)
                .map(|answer| describe(answer.pointer("/content/application~1json/schema")));
            if documented.as_deref() != Some(*expected) {
                problems.push(format!(
                    "{name} {status}: the document says {documented:?}, the fleet answers {expected}"
                ));
            }
        }
        for (status, answer) in answers {
            // Besides its own answers, every authorised operation may refuse the token
            // (401, 403) or its rate (429).
            let own = op.answers.iter().any(|(listed, _)| listed == status);
            let error = describe(answer.pointer("/content/application~1json/schema"));
            let refusal = ["401", "403", "429"].contains(&status.as_str()) && error == "Error";
            if !own && !refusal {
                problems.push(format!(
                    "{name} {status}: documented ({error}), not an answer of the fleet's"
                ));
            }
        }
        let parameters: BTreeSet<String> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|parameter| parameter["in"] == "query")
            .filter_map(|parameter| parameter["name"].as_str().map(str::to_owned))
            .collect();
        let fields: BTreeSet<String> = op
            .query
            .as_ref()
            .and_then(Value::as_object)
            .map(|fields| fields.keys().cloned().collect())
            .unwrap_or_default();
        if parameters != fields {
            problems.push(format!(
                "{name}: the document's query parameters are {parameters:?}, the query type's fields {fields:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_checker_catches_a_field_the_document_lacks() {
    // The checker itself: a type with one field too many is reported.
    #[derive(Serialize)]
    struct Wider {
        name: String,
        colour: String,
    }
    let problems = response(
        "GroupRequest",
        &[Wider {
            name: "x".into(),
            colour: "red".into(),
        }],
    );
    assert!(
        problems.iter().any(|p| p.contains("colour")),
        "{problems:#?}"
    );
}

fn certificate_renewal() -> CertificateRenewal {
    CertificateRenewal {
        state: "issued".into(),
        detail: "issued for request reason \"renewal-due\"".into(),
        fingerprint: Some("ab".repeat(32)),
        not_after_ms: Some(4_000),
        updated_ms: 3_500,
    }
}
