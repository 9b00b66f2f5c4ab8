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
    BATCH_LEN, Batches, BridgeInfo, BridgesToLink, BridgesToPage, LinkPayload, LinkToBridges,
    SampleFrame,
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
    let facade = started.facade.map(|(address, health)| {
        tracing::info!(%address, "gateway facade listening");
        health
    });
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
            if let Some(facade) = &facade {
                let health = facade
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                to_page.send_or_drop(BridgesToPage::Facade(health));
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
///
/// Samples go on in bursts ([`Batches`]): after the first sample of a burst the pump
/// gathers for [`GATHER`], then passes on what it took, in the order it was read.
pub async fn forward_samples(
    mut samples: mpsc::Receiver<Sample>,
    to_link: Outgoing<BridgesToLink>,
    to_page: Outgoing<BridgesToPage>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut burst = Vec::with_capacity(BATCH_LEN);
    loop {
        let taken = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            taken = samples.recv_many(&mut burst, BATCH_LEN) => taken,
        };
        if taken == 0 {
            break; // Every poller is gone.
        }
        let mut stopping = false;
        if burst.len() < BATCH_LEN {
            tokio::select! {
                () = shutdown.cancelled() => stopping = true,
                () = tokio::time::sleep(GATHER) => {}
            }
            while burst.len() < BATCH_LEN
                && let Ok(sample) = samples.try_recv()
            {
                burst.push(sample);
            }
        }
        if !pass_on(burst.drain(..), &to_link, &to_page, &shutdown).await? || stopping {
            return Ok(());
        }
    }
    shutdown.cancelled().await;
    Ok(())
}

/// How long the pump gathers samples after the first one of a burst. The pollers of
/// many devices read at scattered moments: passed on one by one, every reading would
/// wake the pump, the link and the page on its own (issue #25: that cost 20 % more CPU
/// per poll than calling the link directly). 5 ms is nothing beside the link's
/// batches (every 200 ms by default), and the samples wait in memory either way.
pub const GATHER: Duration = Duration::from_millis(5);

/// Passes one burst on: its samples to the page (best effort), its readings to the
/// link, awaited batch by batch, in order. `false` if shutdown came while a batch
/// waited for room (what is left of the burst then stays behind, like the samples
/// still in the pollers' channel: a stopping appliance takes no more readings).
async fn pass_on(
    burst: impl Iterator<Item = Sample>,
    to_link: &Outgoing<BridgesToLink>,
    to_page: &Outgoing<BridgesToPage>,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let (mut readings, mut frames) = (Batches::new(), Batches::new());
    let mut full = Vec::new();
    for sample in burst {
        if let Some(reading) = telemetry_reading(&sample) {
            full.extend(readings.push(reading));
        }
        if let Some(frame) = frames.push(SampleFrame::from(sample)) {
            to_page.send_or_drop_bulk(BridgesToPage::Samples(frame));
        }
    }
    if let Some(frame) = frames.take() {
        to_page.send_or_drop_bulk(BridgesToPage::Samples(frame));
    }
    full.extend(readings.take());
    for batch in full {
        // Biased: a batch the link has room for is handed over even when shutdown has
        // come meanwhile (a link that stopped for it is not a failure).
        tokio::select! {
            biased;
            sent = to_link.send_bulk(BridgesToLink::Readings(batch)) => match sent {
                Ok(()) => {}
                Err(PeerGone) if shutdown.is_cancelled() => return Ok(false),
                Err(PeerGone) => anyhow::bail!("the link no longer takes readings"),
            },
            () = shutdown.cancelled() => return Ok(false),
        }
    }
    Ok(true)
}

/// The telemetry reading of `sample`, named `bridge/point`, with the same value;
/// `None` for a number that is not finite (a NaN or infinite float register: JSON
/// cannot carry it, and the fleet would refuse the whole batch).
pub fn telemetry_reading(sample: &Sample) -> Option<Reading> {
    if sample.value.is_non_finite_number() {
        tracing::debug!(bridge = %sample.bridge, point = %sample.point, value = %sample.value, "non-finite sample not sent as telemetry");
        return None;
    }
    Some(Reading::new(
        format!("{}/{}", sample.bridge, sample.point),
        sample.value.clone(),
        sample.unit.clone(),
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

    /// Sample `n` of one point (numbered in its value and timestamp).
    fn numbered(n: u32) -> Sample {
        Sample {
            bridge: "line1".into(),
            point: "p".into(),
            value: Value::Number(f64::from(n)),
            unit: String::new(),
            timestamp_ms: u64::from(n),
        }
    }

    /// `count` samples of one point, numbered; the channel is closed behind them.
    pub(crate) fn samples(count: u32) -> mpsc::Receiver<Sample> {
        let (sender, receiver) = mpsc::channel(usize::try_from(count).unwrap_or(1).max(1));
        for n in 0..count {
            sender.try_send(numbered(n)).expect("room");
        }
        receiver
    }

    /// Takes batches from the link's end until `count` readings came, checking that
    /// they are readings 0, 1, 2, … in order; how many batches they came in.
    pub(crate) async fn readings_in_order(
        link: &mut mpsc::Receiver<BridgesToLink>,
        count: u32,
    ) -> usize {
        let (mut next, mut batches) = (0_u32, 0);
        while next < count {
            let Some(BridgesToLink::Readings(batch)) = link.recv().await else {
                panic!("reading {next} is missing");
            };
            assert!(!batch.is_empty() && batch.len() <= BATCH_LEN);
            batches += 1;
            for reading in batch {
                assert_eq!(reading.ts_ms, u64::from(next), "out of order");
                next += 1;
            }
        }
        assert!(next == count, "more readings than were read");
        batches
    }

    /// The decided drift, in one process: a link that takes its readings slowly
    /// (through a two-frame queue) gets every one of them, in order, also those the
    /// pump still held when the pollers' channel closed; only the page's display
    /// frames are dropped, and counted.
    #[tokio::test]
    async fn a_slow_link_in_process_loses_no_reading() {
        const COUNT: u32 = 600;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batches = readings_in_order(&mut link_rx, COUNT).await;
        // Full bursts (the samples were all waiting): one page frame each, all but
        // the first dropped.
        assert_eq!(batches, 5);
        assert_eq!(to_page.dropped(), 4);
        assert!(link_rx.try_recv().is_err(), "nothing more");
        shutdown.cancel();
        pump.await.expect("pump").expect("no failure");
    }

    /// A pump between `samples` and fresh link and page queues of the given sizes.
    fn spawn_pump(
        samples: mpsc::Receiver<Sample>,
        (link_queue, page_queue): (usize, usize),
    ) -> (
        PumpStop,
        mpsc::Receiver<BridgesToLink>,
        mpsc::Receiver<BridgesToPage>,
    ) {
        let (link_tx, link_rx) = mpsc::channel(link_queue);
        let (page_tx, page_rx) = mpsc::channel(page_queue);
        let shutdown = CancellationToken::new();
        let pump = tokio::spawn(forward_samples(
            samples,
            Outgoing::once(link_tx),
            Outgoing::once(page_tx),
            shutdown.clone(),
        ));
        (PumpStop(pump, shutdown), link_rx, page_rx)
    }

    /// Stops a pump of [`spawn_pump`], which must not have failed.
    struct PumpStop(
        tokio::task::JoinHandle<anyhow::Result<()>>,
        CancellationToken,
    );

    impl PumpStop {
        async fn stop(self) {
            self.1.cancel();
            self.0.await.expect("pump").expect("no failure");
        }
    }

    /// Backpressure: a link that does not read stops the pump once its queue is full,
    /// and then the pollers, whose sends wait; when the link reads again it gets every
    /// reading the pollers handed over, in order.
    #[tokio::test]
    async fn a_full_link_holds_the_pollers_back_and_loses_nothing() {
        let (sample_tx, sample_rx) = mpsc::channel(16);
        let (pump, mut link_rx, mut page_rx) = spawn_pump(sample_rx, (1, 64));
        let mut sent = 0_u32;
        loop {
            let send = sample_tx.send(numbered(sent));
            match tokio::time::timeout(Duration::from_millis(200), send).await {
                Ok(result) => {
                    result.expect("the pump takes samples");
                    sent += 1;
                }
                Err(_) => break, // the poller waits: pushed back
            }
            assert!(sent < 10_000, "the pump never pushed back");
        }
        // One batch in the link's queue, one in the pump's hands, the pollers'
        // channel full.
        assert!(sent >= 16, "only {sent} samples taken");
        drop(sample_tx);
        readings_in_order(&mut link_rx, sent).await;
        // The page saw the same samples, in batches, in order.
        let mut shown = Vec::new();
        while let Ok(BridgesToPage::Samples(frames)) = page_rx.try_recv() {
            shown.extend(frames.into_iter().map(|frame| frame.timestamp_ms));
        }
        assert_eq!(shown, (0..u64::from(sent)).collect::<Vec<_>>());
        pump.stop().await;
    }

    /// Samples read within [`GATHER`] of each other travel as one batch; a sample
    /// after a pause starts the next.
    #[tokio::test]
    async fn a_burst_travels_as_one_batch() {
        let (sample_tx, sample_rx) = mpsc::channel(64);
        let (pump, mut link_rx, _page_rx) = spawn_pump(sample_rx, (8, 8));
        for n in 0..10 {
            sample_tx.send(numbered(n)).await.expect("sent");
        }
        let Some(BridgesToLink::Readings(first)) = link_rx.recv().await else {
            panic!("no batch");
        };
        assert_eq!(first.len(), 10);
        sample_tx.send(numbered(10)).await.expect("sent");
        let Some(BridgesToLink::Readings(second)) = link_rx.recv().await else {
            panic!("no batch");
        };
        assert_eq!(second.iter().map(|r| r.ts_ms).collect::<Vec<_>>(), [10]);
        pump.stop().await;
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
        let text = telemetry_reading(&sample(Value::Text("AB-17".into()))).expect("sent");
        assert_eq!(
            (text.point.as_str(), text.value.as_text()),
            ("line1/p", Some("AB-17"))
        );
        assert_eq!(text.value.as_number(), None);
        let number = telemetry_reading(&sample(Value::Number(2.5))).expect("sent");
        assert_eq!(
            (number.value.as_number(), number.value.as_text()),
            (Some(2.5), None)
        );
        let flag = telemetry_reading(&sample(Value::Bool(true))).expect("sent");
        assert_eq!(flag.value, Value::Bool(true));
        assert!(telemetry_reading(&sample(Value::Number(f64::INFINITY))).is_none());
    }
}
