//! Telemetry ingest: decodes batches from the broker, stores them once, acknowledges.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_wire::topics::TelemetryBatch;
use warden_wire::topics::{
    Ack, CommandResult, Delivery, DeviceEvent, FailureReportMessage, PROTOCOL_VERSION,
    TwinReported, ack_topic, device_of_topic,
};

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::store::Store;

/// Most batches committed in one transaction.
const MAX_GROUP: usize = 256;

/// Stores every telemetry batch received until the broker closes the subscription,
/// and acknowledges each one to its device once it is committed (or was already).
/// Batches waiting together are committed together (one fsync for the group).
///
/// On `shutdown` it stops taking new messages, stores what is already buffered, and
/// returns.
pub async fn run(
    store: Store,
    mut telemetry: LocalSubscription,
    acks: LocalPublisher,
    shutdown: CancellationToken,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            publish = telemetry.recv() => match publish {
                Some(publish) => publish,
                None => return,
            },
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match telemetry.try_recv() {
                Ok(publish) => group.push(publish),
                Err(_) => break,
            }
        }
        store.note_ingest_queue_depth(telemetry.len());
        ingest_group(&store, &acks, &group).await;
        group.clear();
    }
    telemetry.close();
    while let Some(publish) = telemetry.recv().await {
        ingest_group(&store, &acks, std::slice::from_ref(&publish)).await;
    }
}

async fn ingest_group(store: &Store, acks: &LocalPublisher, group: &[rumqttc::Publish]) {
    let mut decoded: Vec<(&str, TelemetryBatch)> = Vec::with_capacity(group.len());
    for publish in group {
        let Some(device) = device_of_topic(&publish.topic) else {
            tracing::warn!(topic = %publish.topic, "telemetry on a topic without a device; dropped");
            continue;
        };
        match TelemetryBatch::decode(&publish.payload) {
            Ok(batch) => decoded.push((device, batch)),
            Err(error) => tracing::warn!(device, %error, "refused telemetry batch"),
        }
    }
    let items: Vec<(&str, &TelemetryBatch)> = decoded.iter().map(|(d, b)| (*d, b)).collect();
    match store.ingest_many(&items, now_ms()).await {
        Ok(_) => {
            for (device, batch) in &decoded {
                acks.publish(
                    ack_topic(device),
                    Ack::encode(&batch.stream, batch.epoch, batch.seq),
                )
                .await;
            }
        }
        // Not acknowledged: the devices keep their batches and send them again. The
        // store logs a failure episode once at each end (and counts the batches
        // withheld for `/metrics`), so a full disk is not one error line per batch.
        Err(error) => {
            tracing::debug!(%error, batches = decoded.len(), "telemetry batches not stored; not acknowledged")
        }
    }
}

/// Acknowledges a control message (one with a `delivery` member) once it is stored:
/// until then the device sends it again.
pub async fn acknowledge(acks: &LocalPublisher, device: &str, payload: &[u8]) {
    if let Some(delivery) = Delivery::of_payload(payload) {
        acks.publish(ack_topic(device), delivery.ack()).await;
    }
}

/// Stores failure reports (once per device and report ID) and device events, until
/// shutdown. Malformed or future-version payloads are logged with the device and
/// dropped: there is nothing to store.
pub async fn reports_and_events(
    store: Store,
    mut reports: LocalSubscription,
    mut events: LocalSubscription,
    acks: LocalPublisher,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            publish = reports.recv() => {
                let Some(publish) = publish else { return };
                store_report(&store, &acks, &publish).await;
            }
            publish = events.recv() => {
                let Some(publish) = publish else { return };
                store_event(&store, &acks, &publish).await;
            }
        }
    }
}

async fn store_report(store: &Store, acks: &LocalPublisher, publish: &rumqttc::Publish) {
    let Some(device) = device_of_topic(&publish.topic) else {
        return;
    };
    let report: FailureReportMessage = match serde_json::from_slice(&publish.payload) {
        Ok(report) => report,
        Err(error) => {
            // Refused for good: acknowledged so the device stops resending it.
            tracing::warn!(device, %error, "refused failure report");
            acknowledge(acks, device, &publish.payload).await;
            return;
        }
    };
    if report.v != PROTOCOL_VERSION {
        tracing::warn!(
            device,
            v = report.v,
            "refused failure report of another version"
        );
        acknowledge(acks, device, &publish.payload).await;
        return;
    }
    match store.insert_report(device, &report, now_ms()).await {
        Ok(true) => {
            tracing::info!(
                device,
                kind = %report.kind,
                compartment = %report.compartment,
                version = %report.image_version,
                "failure report"
            );
            acknowledge(acks, device, &publish.payload).await;
        }
        Ok(false) => {
            tracing::debug!(device, id = %report.id, "failure report seen before");
            acknowledge(acks, device, &publish.payload).await;
        }
        // Not acknowledged, resent by the device; the store logs the failure episode.
        Err(error) => tracing::debug!(device, %error, "cannot store a failure report"),
    }
}

async fn store_event(store: &Store, acks: &LocalPublisher, publish: &rumqttc::Publish) {
    let Some(device) = device_of_topic(&publish.topic) else {
        return;
    };
    let event: DeviceEvent = match serde_json::from_slice(&publish.payload) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(device, %error, "refused device event");
            acknowledge(acks, device, &publish.payload).await;
            return;
        }
    };
    if event.v != PROTOCOL_VERSION {
        tracing::warn!(
            device,
            v = event.v,
            "refused device event of another version"
        );
        acknowledge(acks, device, &publish.payload).await;
        return;
    }
    let delivery = Delivery::of_payload(&publish.payload);
    match store
        .insert_event(device, &event, delivery.as_ref(), now_ms())
        .await
    {
        Ok(_) => acknowledge(acks, device, &publish.payload).await,
        Err(error) => tracing::debug!(device, %error, "cannot store a device event"),
    }
}

/// Records the devices' command results until shutdown.
pub async fn command_results(
    store: Store,
    mut results: LocalSubscription,
    acks: LocalPublisher,
    shutdown: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => return,
            publish = results.recv() => match publish {
                Some(publish) => publish,
                None => return,
            },
        };
        let Some(device) = device_of_topic(&publish.topic) else {
            continue;
        };
        let result = match CommandResult::decode(&publish.payload) {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(device, %error, "refused command result");
                continue;
            }
        };
        let status = serde_json::to_value(result.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match store
            .complete_command(device, &result.id, &status, &result.detail, now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(device, id = %result.id, %status, "command completed");
                acknowledge(&acks, device, &publish.payload).await;
            }
            Ok(false) => {
                tracing::debug!(device, id = %result.id, "result for an unknown or finished command ignored");
                acknowledge(&acks, device, &publish.payload).await;
            }
            Err(error) => tracing::debug!(device, %error, "cannot record a command result"),
        }
    }
}

/// Records what devices report they run (the newest by control-queue position), until
/// shutdown.
pub async fn twin_reports(
    store: Store,
    mut reports: LocalSubscription,
    acks: LocalPublisher,
    shutdown: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => return,
            publish = reports.recv() => match publish {
                Some(publish) => publish,
                None => return,
            },
        };
        let Some(device) = device_of_topic(&publish.topic) else {
            continue;
        };
        match TwinReported::decode(&publish.payload) {
            Ok(reported) => {
                let text = String::from_utf8_lossy(&reported.encode()).into_owned();
                let version = reported
                    .policy_version
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX));
                // The newest state by control-queue position wins, not the last arrival.
                let position = Delivery::of_payload(&publish.payload).map(|d| (d.epoch, d.seq));
                match store
                    .record_twin_reported(device, &text, position, version, now_ms())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        device,
                        ?position,
                        "reported state older than the stored one; kept the newer"
                    ),
                    Err(error) => {
                        tracing::debug!(device, %error, "cannot record a reported state");
                        continue;
                    }
                }
                acknowledge(&acks, device, &publish.payload).await;
            }
            Err(error) => tracing::warn!(device, %error, "refused reported state"),
        }
    }
}

/// How often readings older than the retention are deleted.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes readings received more than `keep_days` ago now and every
/// [`PRUNE_EVERY`], until shutdown, while this instance leads (one instance of a
/// cluster prunes); `keep_days` 0 keeps everything.
pub async fn prune_telemetry(
    store: Store,
    keep_days: u32,
    leadership: crate::cluster::Leadership,
    shutdown: CancellationToken,
) {
    if keep_days == 0 {
        return;
    }
    let keep_ms = i64::from(keep_days) * 24 * 3600 * 1000;
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        match store
            .prune_telemetry(now_ms().saturating_sub(keep_ms))
            .await
        {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, keep_days, "old telemetry pruned"),
            Err(error) => tracing::error!(%error, "cannot prune old telemetry"),
        }
    }
}
