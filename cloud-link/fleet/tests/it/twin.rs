//! The reported twin keeps the newest state by control-queue position `(epoch, seq)`,
//! not the last one to arrive: a redelivered older state (after a reconnect) does not
//! overwrite a newer one.

use std::time::Duration;

use serde_json::json;

use super::registry::{create_product, register};
use super::{Fixture, SimulatedDevice, VIEWER, fleet};

const WAIT: Duration = Duration::from_secs(30);

/// Publishes a reported state from control-queue position `(epoch, seq)` and waits
/// for the fleet's acknowledgement of that position (sent once it is stored).
async fn report(device: &mut SimulatedDevice, epoch: u64, seq: u64, policy_version: u64) {
    device
        .publish(
            "twin/reported",
            &json!({
                "v": 1, "policy_name": "press", "policy_version": policy_version,
                "last_error": null,
                "delivery": {"stream": "control", "epoch": epoch, "seq": seq},
            }),
        )
        .await;
    loop {
        let ack = device
            .next_on("ack", WAIT)
            .await
            .expect("the reported state is acknowledged");
        if ack["epoch"] == epoch && ack["seq"] == seq {
            return;
        }
    }
}

async fn reported_version(fx: &Fixture, id: &str) -> (serde_json::Value, serde_json::Value) {
    let (status, twin) = fx.get(VIEWER, &format!("/api/v1/devices/{id}/twin")).await;
    assert_eq!(status, 200, "{twin}");
    let (status, record) = fx.get(VIEWER, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(status, 200, "{record}");
    (
        twin["reported"]["policy_version"].clone(),
        record["policy_version"].clone(),
    )
}

#[tokio::test]
async fn an_older_reported_state_arriving_late_does_not_replace_a_newer_one() {
    let fx = fleet().await;
    twin_order_contract(&fx).await;
    fx.stop().await;
}

/// The ordering contract on whatever store the fixture uses.
pub(crate) async fn twin_order_contract(fx: &Fixture) {
    create_product(fx).await;
    register(fx, "wd-good", "wd-good", "Production").await;
    let mut device = SimulatedDevice::connect(fx, "wd-good", "wd-good")
        .await
        .expect("connects");
    // The twin endpoint needs a device that sent telemetry.
    let reading: serde_json::Value = serde_json::from_slice(&super::batch(0, 1.0)).expect("json");
    device.publish("telemetry", &reading).await;
    super::eventually(WAIT, || async {
        (fx.get(VIEWER, "/api/v1/devices/wd-good/twin").await.0 == 200).then_some(())
    })
    .await
    .expect("device known");

    report(&mut device, 7, 2, 12).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(12), json!(12))
    );
    // Older position, arriving after: acknowledged (the device may drop it) but not
    // stored.
    report(&mut device, 7, 1, 11).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(12), json!(12))
    );
    // The same position again (QoS 1 redelivery): unchanged.
    report(&mut device, 7, 2, 12).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(12), json!(12))
    );
    // A newer sequence, then a newer queue epoch (a reset queue) with a low seq.
    report(&mut device, 7, 3, 13).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(13), json!(13))
    );
    report(&mut device, 8, 0, 14).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(14), json!(14))
    );
    report(&mut device, 7, 9, 10).await;
    assert_eq!(
        reported_version(fx, "wd-good").await,
        (json!(14), json!(14))
    );
}
