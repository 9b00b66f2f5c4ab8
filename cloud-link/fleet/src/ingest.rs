//! Telemetry ingest: decodes batches from the broker and stores them once.

use warden_link::TelemetryBatch;
use warden_link::topics::{Ack, ack_topic, device_of_topic};

use tokio_util::sync::CancellationToken;

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::store::{Ingested, Store};

/// Stores every telemetry batch received until the broker closes the subscription,
/// and acknowledges each one to its device once it is committed (or was already).
///
/// On `shutdown` it stops taking new messages, stores what is already buffered, and
/// returns.
pub async fn run(
    store: Store,
    mut telemetry: LocalSubscription,
    acks: LocalPublisher,
    shutdown: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => break,
            publish = telemetry.recv() => match publish {
                Some(publish) => publish,
                None => return,
            },
        };
        ingest_one(&store, &acks, &publish).await;
    }
    telemetry.close();
    while let Some(publish) = telemetry.recv().await {
        ingest_one(&store, &acks, &publish).await;
    }
}

async fn ingest_one(store: &Store, acks: &LocalPublisher, publish: &rumqttc::Publish) {
    {
        let Some(device) = device_of_topic(&publish.topic) else {
            tracing::warn!(topic = %publish.topic, "telemetry on a topic without a device; dropped");
            return;
        };
        let batch = match TelemetryBatch::decode(&publish.payload) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(device, %error, "refused telemetry batch");
                return;
            }
        };
        match store.ingest(device, &batch, now_ms()).await {
            Ok(outcome) => {
                if outcome == Ingested::Duplicate {
                    tracing::debug!(device, stream = %batch.stream, seq = batch.seq, "duplicate batch acknowledged again");
                }
                acks.publish(
                    ack_topic(device),
                    Ack::encode(&batch.stream, batch.epoch, batch.seq),
                )
                .await;
            }
            // Not acknowledged: the device keeps the batch and sends it again.
            Err(error) => tracing::error!(device, %error, "cannot store telemetry batch"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
