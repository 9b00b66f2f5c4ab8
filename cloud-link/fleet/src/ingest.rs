//! Telemetry ingest: decodes batches from the broker and stores them once.

use warden_link::TelemetryBatch;
use warden_link::topics::device_of_topic;

use crate::broker::LocalSubscription;
use crate::store::{Ingested, Store};

/// Stores every telemetry batch received until the broker closes the subscription.
pub async fn run(store: Store, mut telemetry: LocalSubscription) {
    while let Some(publish) = telemetry.recv().await {
        let Some(device) = device_of_topic(&publish.topic) else {
            tracing::warn!(topic = %publish.topic, "telemetry on a topic without a device; dropped");
            continue;
        };
        let batch = match TelemetryBatch::decode(&publish.payload) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(device, %error, "refused telemetry batch");
                continue;
            }
        };
        match store.ingest(device, &batch, now_ms()).await {
            Ok(Ingested::Stored) => {
                tracing::debug!(device, stream = %batch.stream, seq = batch.seq, readings = batch.readings.len(), "stored batch");
            }
            Ok(Ingested::Duplicate) => {
                tracing::debug!(device, stream = %batch.stream, seq = batch.seq, "duplicate batch ignored");
            }
            Err(error) => tracing::error!(device, %error, "cannot store telemetry batch"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
