//! Telemetry ingest: decodes batches from the broker, stores them once, acknowledges.

use tokio_util::sync::CancellationToken;
use warden_link::TelemetryBatch;
use warden_link::topics::{Ack, CommandResult, TwinReported, ack_topic, device_of_topic};

use crate::broker::{LocalPublisher, LocalSubscription};
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
        // Not acknowledged: the devices keep their batches and send them again.
        Err(error) => {
            tracing::error!(%error, batches = decoded.len(), "cannot store telemetry batches")
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records the devices' command results until shutdown.
pub async fn command_results(
    store: Store,
    mut results: LocalSubscription,
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
            Ok(true) => tracing::info!(device, id = %result.id, %status, "command completed"),
            Ok(false) => {
                tracing::debug!(device, id = %result.id, "result for an unknown or finished command ignored")
            }
            Err(error) => tracing::error!(device, %error, "cannot record a command result"),
        }
    }
}

/// Records what devices report they run, until shutdown.
pub async fn twin_reports(
    store: Store,
    mut reports: LocalSubscription,
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
                if let Err(error) = store.set_twin_reported(device, &text, now_ms()).await {
                    tracing::error!(device, %error, "cannot record a reported state");
                }
            }
            Err(error) => tracing::warn!(device, %error, "refused reported state"),
        }
    }
}
