//! Failure reports and events from devices: stored once, acknowledged, grouped.

use std::time::Duration;

use serde_json::json;

use super::registry::{create_product, register};
use super::{Fixture, SimulatedDevice, VIEWER, eventually, fleet};

fn report(id: &str, kind: &str, version: &str, seq: u64) -> serde_json::Value {
    json!({
        "v": 1,
        "id": id,
        "ts_ms": 1_700_000_000_000u64 + seq * 1000,
        "compartment": "bridge-line1",
        "kind": kind,
        "image_version": version,
        "signature": format!("bridge-line1/{kind}/index out of bounds"),
        "message": format!("index out of bounds: the len is 3 but the index is {seq}"),
        "delivery": { "stream": "control", "epoch": 7, "seq": seq },
    })
}

/// Reports and events, on whatever store the fixture uses.
pub(crate) async fn reports_contract(fx: &Fixture) {
    create_product(fx).await;
    register(fx, "wd-good", "wd-good", "Production").await;
    let mut device = SimulatedDevice::connect(fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    // Two crashes with one signature (one sent twice), a panic, and a malformed one.
    device
        .publish("reports", &report("r1", "crash", "1.0.0", 1))
        .await;
    let ack = device
        .next_on("ack", Duration::from_secs(5))
        .await
        .expect("a stored report is acknowledged");
    assert_eq!(
        ack,
        json!({ "v": 1, "stream": "control", "epoch": 7, "seq": 1 })
    );
    device
        .publish("reports", &report("r1", "crash", "1.0.0", 1))
        .await;
    device
        .publish("reports", &report("r2", "crash", "1.0.0", 2))
        .await;
    device
        .publish("reports", &report("r3", "panic", "1.0.0", 3))
        .await;
    device
        .publish("reports", &json!({ "v": 1, "id": "broken" }))
        .await;
    device
        .publish(
            "events",
            &json!({ "v": 1, "ts_ms": 5, "kind": "link-restored", "detail": "after 3 s",
                     "delivery": { "stream": "control", "epoch": 7, "seq": 4 } }),
        )
        .await;
    // The event sent again is stored once.
    device
        .publish(
            "events",
            &json!({ "v": 1, "ts_ms": 5, "kind": "link-restored", "detail": "after 3 s",
                     "delivery": { "stream": "control", "epoch": 7, "seq": 4 } }),
        )
        .await;
    let groups = eventually(Duration::from_secs(5), || async {
        let (_, groups) = fx
            .get(VIEWER, "/api/v1/reports?group_by=signature&since_ms=0")
            .await;
        (groups.as_array().map(Vec::len) == Some(2)
            && groups[0]["count"] == 2
            && groups[1]["count"] == 1)
            .then_some(groups)
    })
    .await
    .expect("two groups: two crashes, one panic");
    assert_eq!(groups[0]["kind"], "crash");
    assert_eq!(groups[0]["compartment"], "bridge-line1");
    assert_eq!(groups[0]["image_version"], "1.0.0");
    assert_eq!(groups[0]["devices"], 1);
    assert_eq!(
        groups[0]["series"],
        json!([{ "start_ms": 1_699_999_200_000i64, "count": 2 }]),
        "hourly buckets"
    );
    let (_, single) = fx.get(VIEWER, "/api/v1/reports?device=wd-good").await;
    assert_eq!(single.as_array().map(Vec::len), Some(3), "{single}");
    let (_, rates) = fx.get(VIEWER, "/api/v1/reports/crash-rate").await;
    assert_eq!(
        rates,
        json!([{ "image_version": "1.0.0", "crashes": 3, "crashed_devices": 1,
                 "devices": 1, "rate": 1.0 }])
    );
    let events = eventually(Duration::from_secs(5), || async {
        let (_, events) = fx.get(VIEWER, "/api/v1/events?device=wd-good").await;
        (events.as_array().map(Vec::len) == Some(1)).then_some(events)
    })
    .await
    .expect("one event");
    assert_eq!(events[0]["kind"], "link-restored");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, events) = fx.get(VIEWER, "/api/v1/events?device=wd-good").await;
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(1),
        "resent event stored twice"
    );
    assert_eq!(
        fx.get(VIEWER, "/api/v1/reports?group_by=compartment")
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn failure_reports_are_stored_once_and_grouped_by_signature() {
    let fx = fleet().await;
    reports_contract(&fx).await;
    fx.stop().await;
}
