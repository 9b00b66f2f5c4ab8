//! The bridges role: equipment bridges and their policy, and nothing else.
//!
//! The only role with equipment grants (serial devices, Modbus TCP ports, the private
//! network's TAP and loopback forwards, the BLE controller). Samples go to the link
//! (telemetry, awaited: see [`crate::ports`]) and the page (best effort); commands and
//! policy bundles from the fleet arrive from the link and pass the policy here, at the
//! bridge.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::Sample;
use warden_link::topics::{Command, Reading, TwinDesired};

use crate::bridge_set::BridgeSet;
use crate::commands::CommandLog;
use crate::config::ApplianceConfig;
use crate::ports::messages::{
    BridgeInfo, BridgesToLink, BridgesToPage, LinkPayload, LinkToBridges, SampleFrame,
};
use crate::ports::{BridgesPorts, Outgoing, PeerGone};
use crate::starting_policy::StartingPolicy;
use crate::supervision::Supervisor;
use crate::twin::PolicyTwin;

/// How often bridge counters go to the status page.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Samples between the pollers and the pump.
const SAMPLES_QUEUE: usize = 4096;

/// Starts the bridges, their pump and the command runner under `tasks`. `command_log`
/// is where command results are kept until the link has queued them.
pub async fn start(
    config: &ApplianceConfig,
    command_log: &Path,
    ports: BridgesPorts,
    tasks: &mut Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let StartingPolicy {
        policy,
        bundle_store,
        initial_report,
        bundle_file,
    } = StartingPolicy::load(config)?;
    let log = Arc::new(Mutex::new(CommandLog::open(command_log)?));
    let (sample_tx, sample_rx) = mpsc::channel::<Sample>(SAMPLES_QUEUE);
    let mut bridge_tasks = JoinSet::new();
    let started = crate::bridge_set::start(
        config
            .bridges
            .clone()
            .with_core_bundle(bundle_file.as_deref()),
        config.privnet.clone(),
        policy,
        sample_tx,
        shutdown.clone(),
        &mut bridge_tasks,
    )
    .await?;
    // The private network's port stops with the bridges' tasks; its handle goes with
    // them so that it lives exactly as long.
    let privnet = started.privnet;
    tasks.adopt("bridges", bridge_tasks);
    tasks.spawn_unit("private network", {
        let stop = shutdown.clone();
        async move {
            stop.cancelled().await;
            drop(privnet);
        }
    });
    if let Some(address) = &started.facade {
        tracing::info!(%address, "gateway facade listening");
    }
    let handles = started.set;
    let listings = started.listings;
    if let Some(live) = &ports.live {
        live.publish_bridges(
            listings
                .iter()
                .map(|bridge| (bridge.name.clone(), Arc::clone(&bridge.health)))
                .collect(),
        );
    }
    let inventory: Vec<BridgeInfo> = listings
        .iter()
        .map(|bridge| BridgeInfo {
            name: bridge.name.clone(),
            address: bridge.address.clone(),
            points: bridge.points.clone(),
        })
        .collect();

    let BridgesPorts {
        to_link,
        mut from_link,
        to_page,
        live: _,
    } = ports;
    // What a (new) link hears first: the policy the bridges run, and the command
    // results it has not confirmed queueing (a restart of either side in between).
    let twin = PolicyTwin::new(
        bundle_store,
        initial_report,
        config.link.pluton_socket.clone(),
    );
    let (reported, greeting_log) = (twin.reported(), Arc::clone(&log));
    to_link
        .greet(Arc::new(move || {
            let current = lock(&reported).clone();
            let mut greeting = vec![BridgesToLink::TwinReported(LinkPayload::of(&current))];
            greeting.extend(
                lock(&greeting_log)
                    .unqueued()
                    .iter()
                    .map(|result| BridgesToLink::CommandResult(LinkPayload::of(result))),
            );
            greeting
        }))
        .await?;
    // What a (new) page hears first: every bridge, in config order.
    to_page
        .greet(Arc::new(move || {
            vec![BridgesToPage::Inventory(inventory.clone())]
        }))
        .await?;

    tasks.spawn(
        "sample pump",
        forward_samples(
            sample_rx,
            to_link.clone(),
            to_page.clone(),
            shutdown.clone(),
        ),
    );
    let health_stop = shutdown.clone();
    tasks.spawn_unit("bridge counters", async move {
        let mut every = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tokio::select! {
                () = health_stop.cancelled() => return,
                _ = every.tick() => {}
            }
            for bridge in &listings {
                let health = bridge
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                to_page.send_or_drop(BridgesToPage::Health {
                    bridge: bridge.name.clone(),
                    health,
                });
            }
        }
    });
    let stop = shutdown.clone();
    tasks.spawn("fleet commands", async move {
        let mut twin = twin;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                message = from_link.recv() => match message {
                    Some(message) => message,
                    None => anyhow::bail!("the link's channel to the bridges closed"),
                },
            };
            answer(message, &handles, &log, &mut twin, &to_link).await?;
        }
    });
    Ok(())
}

/// Handles one frame from the link: runs a command (once per ID, through the policy),
/// notes a queued result, or applies a desired state's policy bundle.
async fn answer(
    message: LinkToBridges,
    handles: &BridgeSet,
    log: &Mutex<CommandLog>,
    twin: &mut PolicyTwin,
    to_link: &Outgoing<BridgesToLink>,
) -> Result<(), PeerGone> {
    match message {
        LinkToBridges::Command(payload) => {
            let Ok(command) = payload.decode::<Command>() else {
                return Ok(()); // Checked by the session already.
            };
            let previous = lock(log).get(&command.id).cloned();
            let result = match previous {
                Some(previous) => {
                    tracing::info!(id = %command.id, "command seen before; answering with its first result");
                    previous
                }
                None => {
                    let result = crate::commands::execute(handles, &command).await;
                    tracing::info!(id = %result.id, status = ?result.status, detail = %result.detail, "command executed");
                    if let Err(error) = lock(log).record(result.clone()) {
                        // The write happened; say so, and say the log is failing.
                        tracing::error!(%error, "cannot record a command result");
                    }
                    result
                }
            };
            to_link
                .send(BridgesToLink::CommandResult(LinkPayload::of(&result)))
                .await
        }
        LinkToBridges::ResultQueued(id) => {
            if let Err(error) = lock(log).mark_queued(&id) {
                // Sent again at the next start at worst; the fleet keeps one per ID.
                tracing::warn!(%error, %id, "cannot note a queued command result");
            }
            Ok(())
        }
        LinkToBridges::TwinDesired(payload) => {
            let Ok(desired) = payload.decode::<TwinDesired>() else {
                return Ok(());
            };
            if let Some((reported, event)) = twin.apply(&desired, handles).await {
                to_link
                    .send(BridgesToLink::Event(LinkPayload::of(&event)))
                    .await?;
                to_link
                    .send(BridgesToLink::TwinReported(LinkPayload::of(&reported)))
                    .await?;
            }
            Ok(())
        }
    }
}

/// Sends every sample to the page (best effort) and its reading to the link (awaited:
/// a slow link slows the bridges down, it never loses a reading; see
/// [`crate::ports`]). A unit without bridges has no samples at all: the pump then
/// waits for shutdown, so the link (which stops when its readings close) still runs
/// for attestation, reports and updates.
pub async fn forward_samples(
    mut samples: mpsc::Receiver<Sample>,
    to_link: Outgoing<BridgesToLink>,
    to_page: Outgoing<BridgesToPage>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let sample = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            sample = samples.recv() => match sample {
                Some(sample) => sample,
                None => break,
            },
        };
        to_page.send_or_drop(BridgesToPage::Sample(SampleFrame::from(&sample)));
        let Some(reading) = telemetry_reading(sample) else {
            continue;
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            sent = to_link.send(BridgesToLink::Reading(reading)) => if sent.is_err() {
                anyhow::bail!("the link no longer takes readings");
            },
        }
    }
    shutdown.cancelled().await;
    Ok(())
}

/// The telemetry reading of `sample`, named `bridge/point`, with the same value;
/// `None` for a number that is not finite (a NaN or infinite float register: JSON
/// cannot carry it, and the fleet would refuse the whole batch).
pub fn telemetry_reading(sample: Sample) -> Option<Reading> {
    let point = format!("{}/{}", sample.bridge, sample.point);
    if sample.value.is_non_finite_number() {
        tracing::debug!(%point, value = %sample.value, "non-finite sample not sent as telemetry");
        return None;
    }
    Some(Reading::new(
        point,
        sample.value,
        sample.unit,
        sample.timestamp_ms,
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use warden_bridges::Value;

    /// `count` samples of one point, numbered in their value.
    pub(crate) fn samples(count: u32) -> mpsc::Receiver<Sample> {
        let (sender, receiver) = mpsc::channel(usize::try_from(count).unwrap_or(1).max(1));
        for n in 0..count {
            sender
                .try_send(Sample {
                    bridge: "line1".into(),
                    point: "p".into(),
                    value: Value::Number(f64::from(n)),
                    unit: String::new(),
                    timestamp_ms: u64::from(n),
                })
                .expect("room");
        }
        receiver
    }

    /// The decided drift, in one process: a link that takes its readings slowly
    /// (through a two-frame queue) gets every one of them, in order; only the page's
    /// display frames are dropped, and counted.
    #[tokio::test]
    async fn a_slow_link_in_process_loses_no_reading() {
        const COUNT: u32 = 200;
        let (link_tx, mut link_rx) = mpsc::channel(2);
        let (page_tx, _page_rx) = mpsc::channel(1);
        let to_page = Outgoing::once(page_tx);
        let shutdown = CancellationToken::new();
        let pump = tokio::spawn(forward_samples(
            samples(COUNT),
            Outgoing::once(link_tx),
            to_page.clone(),
            shutdown.clone(),
        ));
        for n in 0..COUNT {
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(BridgesToLink::Reading(reading)) = link_rx.recv().await else {
                panic!("reading {n} is missing");
            };
            assert_eq!(reading.ts_ms, u64::from(n));
        }
        assert_eq!(to_page.dropped(), u64::from(COUNT) - 1);
        shutdown.cancel();
        pump.await.expect("pump").expect("no failure");
    }

    fn sample(value: Value) -> Sample {
        Sample {
            bridge: "line1".into(),
            point: "p".into(),
            value,
            unit: "bar".into(),
            timestamp_ms: 7,
        }
    }

    #[test]
    fn string_points_travel_as_text_and_non_finite_numbers_stay_home() {
        let text = telemetry_reading(sample(Value::Text("AB-17".into()))).expect("sent");
        assert_eq!(
            (text.point.as_str(), text.value.as_text()),
            ("line1/p", Some("AB-17"))
        );
        assert_eq!(text.value.as_number(), None);
        let number = telemetry_reading(sample(Value::Number(2.5))).expect("sent");
        assert_eq!(
            (number.value.as_number(), number.value.as_text()),
            (Some(2.5), None)
        );
        let flag = telemetry_reading(sample(Value::Bool(true))).expect("sent");
        assert_eq!(flag.value, Value::Bool(true));
        assert!(telemetry_reading(sample(Value::Number(f64::INFINITY))).is_none());
    }
}
