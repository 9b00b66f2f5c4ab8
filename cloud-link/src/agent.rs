//! The link agent: batches readings and publishes them to the fleet over MQTT/TLS.
//!
//! Today the outbox is in memory (rumqttc's request queue, bounded); the durable
//! store-and-forward queue replaces it without changing this interface.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tls::{ClientIdentity, TlsError, client_config};
use crate::topics::{PROTOCOL_VERSION, Reading, TelemetryBatch, telemetry_topic};

/// The link as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Broker host name or address (must match the fleet's server certificate).
    pub broker_host: String,
    /// Broker TLS port.
    pub broker_port: u16,
    /// PEM file with the fleet CA the broker's certificate must chain to (pinned).
    pub fleet_ca: PathBuf,
    /// PEM file with this device's certificate.
    pub device_cert: PathBuf,
    /// PEM file with this device's key (until pluton holds it).
    pub device_key: PathBuf,
    /// How long readings are gathered into one batch, in milliseconds.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
}

fn default_batch_interval_ms() -> u64 {
    500
}

/// Whether the link is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet connected.
    #[default]
    Connecting,
    /// Connected and acknowledged by the broker.
    Connected,
    /// Lost; reconnecting with backoff.
    Disconnected,
}

/// The link's state and counters, shared with the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// Batches handed to the MQTT client.
    pub batches_queued: u64,
    /// Batches the broker acknowledged.
    pub batches_acknowledged: u64,
    /// Last connection error, for people.
    pub last_error: Option<String>,
}

/// Publishes readings for one device.
pub struct LinkAgent {
    device_id: String,
    config: LinkConfig,
    status: Arc<Mutex<LinkStatus>>,
}

impl LinkAgent {
    /// An agent for `device_id`.
    pub fn new(device_id: String, config: LinkConfig) -> Self {
        Self {
            device_id,
            config,
            status: Arc::default(),
        }
    }

    /// The link's status, updated as it runs.
    pub fn status(&self) -> Arc<Mutex<LinkStatus>> {
        Arc::clone(&self.status)
    }

    /// Runs until `shutdown` fires or `readings` closes. Readings arrive as
    /// `(stream, reading)` pairs.
    pub async fn run(
        self,
        mut readings: mpsc::Receiver<(String, Reading)>,
        shutdown: CancellationToken,
    ) -> Result<(), TlsError> {
        let identity =
            ClientIdentity::from_pem_files(&self.config.device_cert, &self.config.device_key)?;
        let tls = client_config(&self.config.fleet_ca, identity)?;
        let mut options = MqttOptions::new(
            self.device_id.clone(),
            &self.config.broker_host,
            self.config.broker_port,
        );
        options.set_keep_alive(Duration::from_secs(15));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);

        let status = Arc::clone(&self.status);
        let loop_shutdown = shutdown.clone();
        let network = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let event = tokio::select! {
                    () = loop_shutdown.cancelled() => break,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("link connected");
                        backoff = Duration::from_millis(200);
                        update(&status, |s| {
                            s.state = LinkState::Connected;
                            s.last_error = None;
                        });
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        update(&status, |s| s.batches_acknowledged += 1);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "link connection failed; reconnecting");
                        update(&status, |s| {
                            s.state = LinkState::Disconnected;
                            s.last_error = Some(error.to_string());
                        });
                        let delay = with_jitter(backoff);
                        tokio::select! {
                            () = loop_shutdown.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });

        let topic = telemetry_topic(&self.device_id);
        let epoch = unix_millis();
        let mut sequence: BTreeMap<String, u64> = BTreeMap::new();
        let mut pending: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.batch_interval_ms.max(10)));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                reading = readings.recv() => match reading {
                    Some((stream, reading)) => pending.entry(stream).or_default().push(reading),
                    None => break,
                },
                _ = tick.tick() => {
                    for (stream, batch) in std::mem::take(&mut pending) {
                        let seq = sequence.entry(stream.clone()).or_insert(0);
                        let payload = TelemetryBatch { v: PROTOCOL_VERSION, stream, epoch, seq: *seq, readings: batch };
                        *seq += 1;
                        if client.try_publish(&topic, QoS::AtLeastOnce, false, payload.encode()).is_ok() {
                            update(&self.status, |s| s.batches_queued += 1);
                        } else {
                            tracing::warn!(stream = %payload.stream, seq = payload.seq, "outbox full; batch dropped");
                        }
                    }
                }
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), network).await;
        Ok(())
    }
}

fn update(status: &Mutex<LinkStatus>, change: impl FnOnce(&mut LinkStatus)) {
    change(&mut status.lock().unwrap_or_else(PoisonError::into_inner));
}

/// `delay` plus up to 25 % jitter, so a fleet of devices does not reconnect in step.
fn with_jitter(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let quarter = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(u64::from(nanos) % (quarter + 1))
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
