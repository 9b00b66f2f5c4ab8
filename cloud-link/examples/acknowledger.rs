//! An acknowledger for units that publish to your own broker (Mosquitto), not the fleet.
//!
//! The fleet service acknowledges what it stored by itself. A unit pointed at another
//! broker gets no acks unless someone sends them, and keeps resending from its outbox.
//! This example is that someone, reduced to the contract of `cloud-link/PAYLOADS.md`:
//! subscribe to every device's telemetry and control topics, keep each
//! `(device, stream, epoch, seq)` once (a resend carries the same triple), print it
//! as one JSON line (your store goes here), then publish the ack with its `"v": 1`.
//!
//! ```sh
//! cargo run -p warden-link --example acknowledger -- --host HOST --port 8883 \
//!     --ca manufacturer-ca.pem --cert fleet-cert.pem --key fleet-key.pem
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use warden_wire::tls::{ClientIdentity, client_config};
use warden_wire::topics::{
    ALL_COMMAND_RESULTS, ALL_EVENTS, ALL_REPORTS, ALL_TELEMETRY, ALL_TWIN_REPORTED,
    ALL_UPDATE_STATUS, Ack, Delivery, TelemetryBatch, ack_topic, device_of_topic,
};

/// What identifies one message of one device; a resent message has the same key.
type MessageKey = (String, String, u64, u64);

/// The messages already stored. A real store keeps this as a unique key in its
/// database (it must survive a restart of the acknowledger, or a resend after the
/// restart is stored twice); a set in memory shows the rule.
#[derive(Default)]
struct Stored(HashSet<MessageKey>);

impl Stored {
    /// Whether `payload` on `topic` is new; the key to acknowledge either way (a
    /// resend means the unit missed the first ack). `None`: not a message to ack.
    fn take(&mut self, topic: &str, payload: &[u8]) -> Option<(bool, MessageKey)> {
        let device = device_of_topic(topic)?.to_owned();
        let (stream, epoch, seq) = if topic.ends_with("/telemetry") {
            let batch: TelemetryBatch = serde_json::from_slice(payload).ok()?;
            (batch.stream, batch.epoch, batch.seq)
        } else {
            let delivery = Delivery::of_payload(payload)?;
            (delivery.stream, delivery.epoch, delivery.seq)
        };
        let key = (device, stream, epoch, seq);
        Some((self.0.insert(key.clone()), key))
    }
}

struct Args {
    host: String,
    port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut found = std::collections::BTreeMap::new();
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or(format!("{flag} needs a value"))?;
        found.insert(flag, value);
    }
    let mut take = |flag: &str| found.remove(flag).ok_or(format!("missing {flag}"));
    Ok(Args {
        host: take("--host")?,
        port: take("--port")?
            .parse()
            .map_err(|error| format!("--port: {error}"))?,
        ca: take("--ca")?.into(),
        cert: take("--cert")?.into(),
        key: take("--key")?.into(),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let identity = ClientIdentity::from_pem_files(&args.cert, &args.key)?;
    let tls = client_config(&args.ca, identity)?;
    let mut options = MqttOptions::new("warden-acknowledger", args.host, args.port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let mut stored = Stored::default();
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => {
                for topic in [
                    ALL_TELEMETRY,
                    ALL_COMMAND_RESULTS,
                    ALL_TWIN_REPORTED,
                    ALL_EVENTS,
                    ALL_REPORTS,
                    ALL_UPDATE_STATUS,
                ] {
                    client.subscribe(topic, QoS::AtLeastOnce).await?;
                }
            }
            Event::Incoming(Packet::Publish(message)) => {
                let Some((new, (device, stream, epoch, seq))) =
                    stored.take(&message.topic, &message.payload)
                else {
                    eprintln!("not a Warden v1 message on {}; ignored", message.topic);
                    continue;
                };
                if new {
                    // Store first (here: a JSON line), then acknowledge.
                    println!("{}", String::from_utf8_lossy(&message.payload));
                }
                client
                    .publish(
                        ack_topic(&device),
                        QoS::AtLeastOnce,
                        false,
                        Ack::encode(&stream, epoch, seq),
                    )
                    .await?;
            }
            _ => {}
        }
    }
}
