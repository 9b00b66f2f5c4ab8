//! `fleet-loadgen`: simulated devices against one `warden-fleet` process.
//!
//! Starts the `warden-fleet` binary as a child (SQLite, embedded broker), registers N
//! devices through its API (each with its own certificate from a throwaway
//! manufacturer CA), connects them all over mutual TLS 1.3, answers the fleet's
//! attestation challenges with pluton-format quotes signed by each device's key, then:
//!
//! 1. **Telemetry:** every device publishes one batch (10 readings, QoS 1) every
//!    `--interval-ms` for `--seconds`. Ingest latency is publish → the fleet's `ack`
//!    for that `(stream, epoch, seq)`, which ingest sends after the batch's transaction
//!    committed (the broker's MQTT PUBACK comes earlier, once the batch is queued to
//!    ingest; both are printed).
//! 2. **Update offers:** devices do not poll for updates: the fleet pushes an
//!    `UpdateOffer` to each trusted device of a wave when the wave starts. A signed
//!    release is uploaded and a one-wave deployment over all N devices created; the
//!    figure is offers received by the devices per second of fleet CPU, from the
//!    `POST /api/v1/deployments` to the last offer (per device: eligibility read,
//!    member-state write, MQTT publish).
//!
//! Prints the fleet process's CPU and RSS (`/proc`) per phase. Bounded: every phase has
//! a deadline, traffic goes to 127.0.0.1 only.
//!
//! `fleet-loadgen [--devices N] [--seconds S] [--interval-ms MS] [--fleet-bin PATH]
//! [--database-url postgres://…] [--instances K]` (defaults 10000, 60, 5000,
//! `warden-fleet` beside this binary, SQLite in a temporary directory, 1). With
//! `--instances K` (PostgreSQL only) K `warden-fleet` processes share the database and
//! the devices connect to them in turn; CPU is the sum of theirs, RSS each one's. On
//! PostgreSQL the CPU of the machine's `postgres` processes is printed too.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;
use warden_fleet::loadtest::{Api, FleetProcess, Pki, QuoteSigner, Usage, telemetry_batch};
use warden_image::build::build_signed_image;
use warden_image::{BuildId, ImageHeader, ProductId, SemanticVersion};
use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert};
use warden_wire::fleet_api::{
    DEFAULT_GROUP, DEPLOYMENTS_PATH, DeploymentRequest, IMAGES_PATH, ImageRecord,
};
use warden_wire::topics::{
    Ack, AttestationChallenge, AttestationQuote, PROTOCOL_VERSION, encode, from_hex, to_hex,
};

const PRODUCT: &str = "loadgen";

struct Args {
    devices: usize,
    seconds: u64,
    interval_ms: u64,
    fleet_bin: PathBuf,
    /// `postgres://…` (an empty database); default SQLite in a temporary directory.
    database_url: Option<String>,
    /// `warden-fleet` processes sharing the database (more than one: PostgreSQL).
    instances: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        devices: 10_000,
        seconds: 60,
        interval_ms: 5_000,
        fleet_bin: std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .join("warden-fleet"),
        database_url: None,
        instances: 1,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--devices" => args.devices = value.parse().context("--devices")?,
            "--seconds" => args.seconds = value.parse().context("--seconds")?,
            "--interval-ms" => args.interval_ms = value.parse().context("--interval-ms")?,
            "--fleet-bin" => args.fleet_bin = value.into(),
            "--database-url" => args.database_url = Some(value),
            "--instances" => args.instances = value.parse().context("--instances")?,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.devices == 0 || args.seconds == 0 || args.interval_ms == 0 || args.instances == 0 {
        bail!("--devices, --seconds, --interval-ms and --instances must be positive");
    }
    if args.instances > 1 && args.database_url.is_none() {
        bail!("--instances above 1 needs --database-url postgres://… (SQLite is one instance)");
    }
    Ok(args)
}

/// Counters shared by every simulated device.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    trusted_quotes: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    offers: AtomicU64,
}

/// What one device measured: latencies in µs.
#[derive(Default)]
struct Latencies {
    commit_ack: Vec<u32>,
    puback: Vec<u32>,
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// One device: answers challenges, sends telemetry while `sending` is set, counts
/// acknowledgements and offers, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn device(
    id: String,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    signer: QuoteSigner,
    interval: Duration,
    counters: Arc<Counters>,
    sending: CancellationToken,
    stop_sending: CancellationToken,
    stop: CancellationToken,
) -> Latencies {
    let mut latencies = Latencies::default();
    let ack_topic = warden_wire::topics::ack_topic(&id);
    let challenge_topic = warden_wire::topics::attestation_challenge_topic(&id);
    let offer_topic = warden_wire::topics::update_offer_topic(&id);
    let telemetry_topic = warden_wire::topics::telemetry_topic(&id);
    let quote_topic = format!("warden/v1/devices/{id}/attestation/quote");
    // Batches in flight: seq → sent; PUBACKs come in publish order.
    let mut in_flight: std::collections::HashMap<u64, Instant> = Default::default();
    let mut pubacks: std::collections::VecDeque<Instant> = Default::default();
    let mut seq = 0u64;
    // Spread the devices' first sends over one interval.
    let phase = Duration::from_micros(
        u64::try_from(interval.as_micros()).unwrap_or(u64::MAX) / 1000
            * (id.bytes().map(u64::from).sum::<u64>() % 1000),
    );
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            // The tick always runs and the phase is checked inside: a branch condition
            // is only evaluated when the select is entered, so a device parked in
            // `eventloop.poll()` would not notice `sending` until its next MQTT event.
            _ = tick.tick() => {
                if !sending.is_cancelled() || stop_sending.is_cancelled() {
                    continue;
                }
                let batch = telemetry_batch(seq);
                if client
                    .try_publish(&telemetry_topic, QoS::AtLeastOnce, false, batch.encode())
                    .is_ok()
                {
                    let now = Instant::now();
                    in_flight.insert(seq, now);
                    pubacks.push_back(now);
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    let _ = client.try_subscribe(format!("warden/v1/devices/{id}/#"), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if let Some(sent) = pubacks.pop_front() {
                        latencies.puback.push(micros(sent));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if publish.topic == ack_topic {
                        if let Ok(ack) = Ack::decode(&publish.payload)
                            && let Some(sent) = in_flight.remove(&ack.seq)
                        {
                            latencies.commit_ack.push(micros(sent));
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if publish.topic == challenge_topic {
                        let nonce =
                            serde_json::from_slice::<AttestationChallenge>(&publish.payload)
                                .ok()
                                .and_then(|c| from_hex(&c.nonce));
                        if let Some(nonce) = nonce
                            && let Ok(quote) = signer.quote(&nonce, [0; 32])
                        {
                            let answer = AttestationQuote {
                                v: PROTOCOL_VERSION,
                                nonce: to_hex(&nonce),
                                quote: to_hex(&quote),
                                error: None,
                            };
                            let _ = client.try_publish(
                                &quote_topic,
                                QoS::AtLeastOnce,
                                false,
                                encode(&answer),
                            );
                            pubacks.push_back(Instant::now());
                            counters.trusted_quotes.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if publish.topic == offer_topic {
                        counters.offers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // Reconnects on the next poll; what was in flight is lost to the
                    // figures (counted as sent, never acknowledged).
                    in_flight.clear();
                    pubacks.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    latencies
}

fn signed_release(root: &SecretSigningKey) -> anyhow::Result<Vec<u8>> {
    let release = SecretSigningKey::generate()?;
    let cert = issue_release_cert(root, &release.public_key(), Purpose::IMAGE, 1)?;
    let template = ImageHeader {
        product: ProductId::new(PRODUCT).context("product id")?,
        version: SemanticVersion::new(1, 1, 0),
        security_counter: 2,
        build_id: BuildId(*b"loadgen-release1"),
        created_at: 1_790_000_000,
        payload_len: 0,
        payload_sha256: [0; 32],
    };
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    Ok(build_signed_image(template, &payload, &release, &cert)?)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

/// Waits until `done()` or `deadline` passes; whether it was done.
async fn until(deadline: Duration, done: impl Fn() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while !done() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

fn mib(usage: Usage) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let kib = usage.rss_kib as f64;
    kib / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args().context(
        "usage: fleet-loadgen [--devices N] [--seconds S] [--interval-ms MS] [--fleet-bin PATH] \
         [--database-url postgres://…] [--instances K]",
    )?;
    let dir = tempfile_dir()?;
    let pki = Pki::create(&dir)?;
    let vendor_root = SecretSigningKey::generate()?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/fleet.db", pki.dir.display()));
    let mut fleets = Vec::with_capacity(args.instances);
    for instance in 0..args.instances {
        fleets.push(
            FleetProcess::start_on(
                &args.fleet_bin,
                &pki,
                &format!("fleet-{instance}"),
                &database_url,
                &format!(
                    "[images]\nvendor_roots = [\"{}\"]\n",
                    to_hex(&vendor_root.public_key())
                ),
            )
            .await?,
        );
    }
    let fleet = Fleets(fleets);
    let postgres = args.database_url.is_some();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = fleet.usage();
    let api = Api::new(&fleet.0[0].http);
    api.create_product(PRODUCT, &pki).await?;
    let ids: Vec<String> = (0..args.devices).map(|i| format!("wd-{i:05}")).collect();
    let started = Instant::now();
    api.register_devices(&pki, PRODUCT, &ids).await?;
    let registered = fleet.usage();
    println!(
        "registered {} devices through the API in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    // Connect every device; each answers its connect challenge.
    let counters = Arc::new(Counters::default());
    let (sending, stop_sending, stop) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let interval = Duration::from_millis(args.interval_ms);
    let mut tasks = tokio::task::JoinSet::new();
    let mut clients = Vec::with_capacity(ids.len());
    let started = Instant::now();
    for (index, id) in ids.iter().enumerate() {
        let instance = &fleet.0[index % fleet.0.len()];
        let options = pki.mqtt_options(id, instance.mqtt_port)?;
        let (client, eventloop) = AsyncClient::new(options, 64);
        let signer = QuoteSigner::from_pem(&pki.device_key_pem(id)?)?;
        clients.push(client.clone());
        tasks.spawn(device(
            id.clone(),
            client,
            eventloop,
            signer,
            interval,
            Arc::clone(&counters),
            sending.clone(),
            stop_sending.clone(),
            stop.clone(),
        ));
    }
    let n = u64::try_from(ids.len())?;
    let all_connected = until(Duration::from_secs(600), || {
        counters.connected.load(Ordering::Relaxed) >= n
    })
    .await;
    let trusted = until(Duration::from_secs(300), || {
        counters.trusted_quotes.load(Ordering::Relaxed) >= n
    })
    .await;
    println!(
        "connected {} of {n} devices in {:.1} s ({} answered a challenge{})",
        counters.connected.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        counters.trusted_quotes.load(Ordering::Relaxed),
        if all_connected && trusted {
            ""
        } else {
            "; deadline passed"
        }
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = fleet.usage();
    let connected_each = fleet.each();

    // Telemetry for the set duration.
    let before = fleet.usage();
    let postgres_before = postgres_cpu_seconds();
    let (sent0, acked0) = (
        counters.sent.load(Ordering::Relaxed),
        counters.acked.load(Ordering::Relaxed),
    );
    let window = Instant::now();
    sending.cancel();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let acked_in_window = counters.acked.load(Ordering::Relaxed) - acked0;
    let window_s = window.elapsed().as_secs_f64();
    let during = fleet.usage();
    let postgres_during = postgres_cpu_seconds();
    stop_sending.cancel();
    let sent = counters.sent.load(Ordering::Relaxed) - sent0;
    let drained = until(Duration::from_secs(120), || {
        counters.acked.load(Ordering::Relaxed) - acked0 >= sent
    })
    .await;
    let after_telemetry = fleet.usage();

    // Update offers: a release and one wave over every device.
    let (status, image) = api
        .post(IMAGES_PATH, Err(signed_release(&vendor_root)?))
        .await?;
    if status != 201 {
        bail!("image upload: {status} {image}");
    }
    let sha256 = serde_json::from_value::<ImageRecord>(image)
        .context("image record")?
        .sha256;
    let offers_before = fleet.usage();
    let offers_started = Instant::now();
    let (status, deployment) = api
        .post(
            DEPLOYMENTS_PATH,
            Ok(serde_json::to_value(DeploymentRequest::new(
                sha256,
                DEFAULT_GROUP,
            ))?),
        )
        .await?;
    if status != 201 {
        eprintln!("deployment: {status} {deployment}");
    }
    let all_offered = until(Duration::from_secs(600), || {
        counters.offers.load(Ordering::Relaxed) >= n
    })
    .await;
    let offers_s = offers_started.elapsed().as_secs_f64();
    let offers_after = fleet.usage();
    let offers = counters.offers.load(Ordering::Relaxed);

    stop.cancel();
    let mut all = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(mut latencies) = done {
            all.commit_ack.append(&mut latencies.commit_ack);
            all.puback.append(&mut latencies.puback);
        }
    }
    drop(clients);
    let per_instance_connected = fleet.0.len();
    fleet.stop().await;
    all.commit_ack.sort_unstable();
    all.puback.sort_unstable();

    #[allow(clippy::cast_precision_loss)]
    let per_s = |count: u64, seconds: f64| count as f64 / seconds.max(0.001);
    let telemetry_cpu = during.cpu_seconds - before.cpu_seconds;
    let offer_cpu = (offers_after.cpu_seconds - offers_before.cpu_seconds).max(0.01);
    println!();
    println!(
        "fleet-loadgen: {n} devices, {} warden-fleet process(es) ({}, embedded broker), \
         one batch of 10 readings per device every {} ms for {} s",
        args.instances,
        if postgres { "PostgreSQL" } else { "SQLite" },
        args.interval_ms,
        args.seconds
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| fleet RSS idle / {n} registered / {n} connected (all instances) | {:.1} / {:.1} / {:.1} MiB |",
        mib(idle),
        mib(registered),
        mib(connected)
    );
    if per_instance_connected > 1 {
        println!(
            "| fleet RSS with {n} connected, per instance | {} MiB |",
            connected_each
                .iter()
                .map(|u| format!("{:.1}", mib(*u)))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    println!(
        "| telemetry batches acknowledged after commit | {acked_in_window} in {window_s:.1} s = {:.0} msg/s (offered {:.0} msg/s){} |",
        per_s(acked_in_window, window_s),
        per_s(n * 1000, args.interval_ms as f64),
        if drained {
            ""
        } else {
            "; not all drained within 120 s"
        }
    );
    println!(
        "| ingest latency publish → commit ack, p50 / p99 / max | {:.1} / {:.1} / {:.1} ms ({} samples) |",
        percentile(&all.commit_ack, 0.5),
        percentile(&all.commit_ack, 0.99),
        percentile(&all.commit_ack, 1.0),
        all.commit_ack.len()
    );
    println!(
        "| broker PUBACK latency (queued to ingest), p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        percentile(&all.puback, 0.5),
        percentile(&all.puback, 0.99),
        percentile(&all.puback, 1.0)
    );
    println!(
        "| fleet CPU during telemetry | {:.0} % of one core ({:.0} msg/s per fleet core) |",
        100.0 * telemetry_cpu / window_s,
        per_s(acked_in_window, telemetry_cpu)
    );
    if let (Some(before), Some(during)) = (postgres_before, postgres_during) {
        let postgres_cpu = during - before;
        println!(
            "| PostgreSQL CPU during telemetry (every `postgres` process) | {:.0} % of one core ({:.0} msg/s per PostgreSQL core) |",
            100.0 * postgres_cpu / window_s,
            per_s(acked_in_window, postgres_cpu)
        );
    }
    println!(
        "| fleet RSS during / after telemetry | {:.1} / {:.1} MiB |",
        mib(during),
        mib(after_telemetry)
    );
    println!(
        "| update offers (wave start over {n} trusted devices) | {offers} of {n} in {offers_s:.1} s = {:.0}/s wall, {:.0}/s per fleet core{} |",
        per_s(offers, offers_s),
        per_s(offers, offer_cpu),
        if all_offered { "" } else { "; deadline passed" }
    );
    println!("| fleet RSS at the end | {:.1} MiB |", mib(offers_after));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The `warden-fleet` processes under load.
struct Fleets(Vec<FleetProcess>);

impl Fleets {
    /// Their RSS and CPU time added up.
    fn usage(&self) -> Usage {
        self.each()
            .into_iter()
            .fold(Usage::default(), |sum, usage| Usage {
                rss_kib: sum.rss_kib + usage.rss_kib,
                cpu_seconds: sum.cpu_seconds + usage.cpu_seconds,
            })
    }

    /// Each one's RSS and CPU time.
    fn each(&self) -> Vec<Usage> {
        self.0.iter().map(FleetProcess::usage).collect()
    }

    async fn stop(self) {
        for fleet in self.0 {
            fleet.stop().await;
        }
    }
}

/// CPU seconds of every process named `postgres` on this machine (the server and its
/// backends), or `None` if there is none. A backend that exits takes its CPU time with
/// it: the fleet's pool keeps its connections, so over a window this is the server's.
fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "postgres" {
            *total.get_or_insert(0.0) += warden_fleet::loadtest::process_usage(pid).cpu_seconds;
        }
    }
    total
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "fleet-loadgen-{}-{}",
        std::process::id(),
        warden_fleet::clock::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
