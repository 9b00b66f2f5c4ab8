//! `warden-link-loadgen`: appends numbered telemetry batches to a durable outbox and
//! sends them through the real link until the fleet has acknowledged all of them.
//!
//! Batch `seq` carries one reading `load/n = seq`, so after any number of crashes
//! and restarts the fleet must hold exactly the values `0..count`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use warden_link::outbox::{FsyncPolicy, Outbox, OutboxConfig};
use warden_link::{LinkAgent, LinkConfig};
use warden_wire::topics::{PROTOCOL_VERSION, TELEMETRY_STREAM};
use warden_wire::topics::{Reading, TelemetryBatch};

struct Args {
    device_id: String,
    broker_port: u16,
    pki: PathBuf,
    outbox: PathBuf,
    count: u64,
    rate: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut value = |name: &str| args.next().with_context(|| format!("missing {name}"));
    Ok(Args {
        device_id: value("DEVICE_ID")?,
        broker_port: value("BROKER_PORT")?.parse()?,
        pki: value("PKI_DIR")?.into(),
        outbox: value("OUTBOX_DIR")?.into(),
        count: value("COUNT")?.parse()?,
        rate: value("RATE_PER_SECOND")?.parse()?,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args().context(
        "usage: warden-link-loadgen DEVICE_ID BROKER_PORT PKI_DIR OUTBOX_DIR COUNT RATE_PER_SECOND",
    )?;
    let outbox_config = OutboxConfig {
        fsync: FsyncPolicy::Always,
        ..OutboxConfig::in_dir(&args.outbox)
    };
    let outbox = Arc::new(Mutex::new(Outbox::open(outbox_config.clone())?));
    let config = LinkConfig {
        broker_host: "127.0.0.1".into(),
        broker_port: args.broker_port,
        fleet_ca: args.pki.join("fleet-ca.pem"),
        device_cert: args.pki.join("device.pem"),
        device_key: Some(args.pki.join("device.key")),
        pluton_socket: None,
        batch_interval_ms: 100,
        max_send_per_second: 2000,
        outbox: outbox_config,
    };
    let shutdown = CancellationToken::new();
    let (_readings, readings_rx) = tokio::sync::mpsc::channel(1);
    let agent = LinkAgent::new(args.device_id, config).with_outbox(Arc::clone(&outbox));
    let status = agent.status();
    let link = tokio::spawn(agent.run(readings_rx, shutdown.clone()));

    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    loop {
        tick.tick().await;
        let mut queue = outbox.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = queue.stats();
        if stats.next_seq >= args.count {
            if stats.depth == 0 {
                break;
            }
            continue;
        }
        queue.append(|seq, epoch| {
            let reading = Reading::number("load/n".into(), seq as f64, String::new(), seq);
            TelemetryBatch {
                v: PROTOCOL_VERSION,
                stream: TELEMETRY_STREAM.into(),
                epoch,
                seq,
                readings: vec![reading],
            }
            .encode()
        })?;
    }
    let sent = status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .messages_sent;
    println!(
        "all {} batches acknowledged ({sent} messages sent by this run)",
        args.count
    );
    shutdown.cancel();
    link.await??;
    Ok(())
}
