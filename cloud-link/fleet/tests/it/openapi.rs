//! `openapi.json` against the wire types: the document is written by hand, this test
//! fails when it and a type disagree.
//!
//! For each request and response type of `warden_wire::fleet_api`: a sample value is
//! serialised and checked against the document's schema (a small subset of JSON
//! Schema: `type`, `nullable`, `enum`, `properties`, `required`, `items`, `$ref`); the
//! schema's properties must be exactly the fields the type writes; for request types,
//! removing a field the document calls required must make the fleet refuse the body,
//! and removing any other must not; and the operations name the right schemas.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use warden_wire::fleet_api::{
    CommandView, DesiredRequest, ErrorBody, Group, GroupRequest, ProductRequest, ProductView,
    RegisterRequest, RegisterResponse, RegisteredDevice, WriteRequest,
};

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

/// Checks `value` against `schema`; every disagreement, each naming where.
fn check(document: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(document, schema);
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            problems.push(format!(
                "{at}: null, but the document does not say nullable"
            ));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let Some(kind) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    let fits = match kind {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => {
            problems.push(format!("{at}: the checker does not know type {other}"));
            return;
        }
    };
    if !fits {
        problems.push(format!("{at}: {value} is not of type {kind}"));
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (index, item) in values.iter().enumerate() {
            check(document, items, item, &format!("{at}[{index}]"), problems);
        }
    }
    if let (Some(properties), Some(members)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, member) in members {
            match properties.get(name) {
                Some(property) => check(
                    document,
                    property,
                    member,
                    &format!("{at}.{name}"),
                    problems,
                ),
                None => problems.push(format!(
                    "{at}: the type writes {name}, the document lacks it"
                )),
            }
        }
        for name in properties.keys() {
            if !members.contains_key(name) {
                problems.push(format!(
                    "{at}: the document has {name}, the type does not write it"
                ));
            }
        }
        for name in required(schema) {
            if !members.contains_key(&name) {
                problems.push(format!("{at}: required {name} is missing"));
            }
        }
    }
}

fn required(schema: &Value) -> Vec<String> {
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

/// `sample` (every optional field set) against the schema `name`.
fn response<T: Serialize>(name: &str, sample: &T) -> Vec<String> {
    let document = document();
    let value = serde_json::to_value(sample).expect("serialises");
    let mut problems = Vec::new();
    check(&document, &schema_of(name), &value, name, &mut problems);
    problems
}

/// As [`response`], and: the fleet refuses `sample` without a required field and
/// accepts it without any other.
fn request<T: Serialize + DeserializeOwned>(name: &str, sample: &T) -> Vec<String> {
    let mut problems = response(name, sample);
    let document = document();
    let schema = resolve(&document, &schema_of(name)).clone();
    let required = required(&schema);
    let Value::Object(members) = serde_json::to_value(sample).expect("serialises") else {
        panic!("{name} is not an object");
    };
    for field in members.keys() {
        let mut without: Map<String, Value> = members.clone();
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

/// The schema an operation's JSON request body or `status` answer names.
fn operation_schema(method: &str, path: &str, status: Option<&str>) -> Option<String> {
    let document = document();
    let operation = document.get("paths")?.get(path)?.get(method)?;
    let body = match status {
        None => operation.get("requestBody")?,
        Some(status) => operation.get("responses")?.get(status)?,
    };
    let schema = body
        .get("content")?
        .get("application/json")?
        .get("schema")?;
    let schema = schema.get("items").unwrap_or(schema);
    Some(schema.get("$ref")?.as_str()?.rsplit('/').next()?.to_owned())
}

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

#[test]
fn the_document_describes_every_wire_type_of_the_api() {
    let pem = "-----BEGIN CERTIFICATE-----".to_owned();
    let mut problems = Vec::new();
    problems.extend(request(
        "ProductRequest",
        &ProductRequest {
            name: "gw".into(),
            manufacturer_ca_pem: pem.clone(),
        },
    ));
    problems.extend(response(
        "Product",
        &ProductView {
            name: "gw".into(),
            manufacturer_ca_pem: pem.clone(),
            ca_fingerprints: vec!["ab".repeat(32)],
            created_ms: 1,
        },
    ));
    problems.extend(request(
        "GroupRequest",
        &GroupRequest {
            name: "Line 2".into(),
        },
    ));
    problems.extend(response(
        "Group",
        &Group {
            product: "gw".into(),
            name: "Line 2".into(),
            receives_updates: true,
            devices: 3,
        },
    ));
    problems.extend(request(
        "RegisterRequest",
        &RegisterRequest {
            device_id: "wd-0001".into(),
            serial: "S-1".into(),
            product: "gw".into(),
            group: "Production".into(),
            certificate_pem: pem,
            image_version: "1.2.3".into(),
        },
    ));
    problems.extend(response(
        "RegisterResponse",
        &RegisterResponse {
            device_id: "wd-0001".into(),
            fingerprint: "ab".repeat(32),
            product: "gw".into(),
            group: "Production".into(),
        },
    ));
    problems.extend(response("RegisteredDevice", &registered_device()));
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
        &CommandView {
            id: "c-1".into(),
            request: "{}".into(),
            status: "written".into(),
            detail: String::new(),
            created_ms: 1,
            completed_ms: Some(2),
        },
    ));
    problems.extend(response(
        "Error",
        &ErrorBody {
            error: "serial: must be 1 to 128 printable characters".into(),
            field: Some("serial".into()),
        },
    ));
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_operations_name_the_wire_types() {
    let expected = [
        ("post", "/api/v1/products", None, "ProductRequest"),
        ("post", "/api/v1/products", Some("201"), "Product"),
        ("get", "/api/v1/products", Some("200"), "Product"),
        (
            "post",
            "/api/v1/products/{name}/groups",
            None,
            "GroupRequest",
        ),
        (
            "post",
            "/api/v1/products/{name}/groups",
            Some("201"),
            "Group",
        ),
        (
            "get",
            "/api/v1/products/{name}/groups",
            Some("200"),
            "Group",
        ),
        ("post", "/api/v1/devices", None, "RegisterRequest"),
        ("post", "/api/v1/devices", Some("201"), "RegisterResponse"),
        ("post", "/api/v1/devices", Some("200"), "RegisterResponse"),
        ("post", "/api/v1/devices", Some("422"), "Error"),
        (
            "get",
            "/api/v1/devices/{id}",
            Some("200"),
            "RegisteredDevice",
        ),
        (
            "post",
            "/api/v1/devices/{id}/revoke",
            Some("200"),
            "RegisteredDevice",
        ),
        (
            "post",
            "/api/v1/devices/{id}/commands",
            None,
            "WriteRequest",
        ),
        (
            "post",
            "/api/v1/devices/{id}/commands",
            Some("202"),
            "Command",
        ),
        (
            "get",
            "/api/v1/devices/{id}/commands/{command}",
            Some("200"),
            "Command",
        ),
    ];
    let mut problems = Vec::new();
    for (method, path, status, schema) in expected {
        let named = operation_schema(method, path, status);
        if named.as_deref() != Some(schema) {
            problems.push(format!(
                "{method} {path} {}: names {named:?}, the fleet speaks {schema}",
                status.unwrap_or("request")
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_desired_state_body_matches_its_type() {
    // The document writes this body inline, not as a named schema.
    let document = document();
    let schema = document
        .pointer("/paths/~1api~1v1~1devices~1{id}~1twin~1desired/put/requestBody/content/application~1json/schema")
        .expect("the desired-state body is described")
        .clone();
    let sample = DesiredRequest {
        policy_bundle: Some("00ff".into()),
    };
    let mut problems = Vec::new();
    check(
        &document,
        &schema,
        &serde_json::to_value(&sample).expect("serialises"),
        "DesiredRequest",
        &mut problems,
    );
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
        &Wider {
            name: "x".into(),
            colour: "red".into(),
        },
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("colour"), "{problems:#?}");
}
