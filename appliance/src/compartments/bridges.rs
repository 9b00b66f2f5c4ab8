//! The `bridges` role: equipment bridges and their policy, and nothing else.
//!
//! The only compartment with equipment grants (serial devices, Modbus TCP ports, the
//! private network's TAP and loopback forwards, the BLE controller). Samples go to the link (telemetry) and the status page; commands and
//! policy bundles from the fleet arrive from the link and pass the policy here, at the
//! bridge, as in the single-process appliance.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::Sample;
use warden_link::topics::{Command, Reading, DeviceEvent, TwinDesired, TwinReported, event_kind, from_hex};
use warden_os::monitor::compartment::Compartment;
use warden_policy::bundle::store::BundleStore;

use super::ipc;
use super::messages::{
    BRIDGES, BridgeInfo, BridgesToLink, BridgesToPage, LINK, LinkPayload, LinkToBridges,
    PageToBridges, STATUS_PAGE, SampleFrame,
};
use crate::bridge_set::BridgeSet;
use crate::commands::CommandLog;
use crate::config::ApplianceConfig;
use crate::starting_policy::StartingPolicy;

/// How often bridge counters go to the status page.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Frames waiting for a peer that is (re)starting; beyond it the newest are dropped.
const QUEUE: usize = 4096;

/// Runs the bridges until `shutdown`. `state_dir` holds the command log.
pub async fn run(
    compartment: Arc<Compartment>,
    config: ApplianceConfig,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let StartingPolicy {
        policy,
        bundle_store,
        initial_report,
        bundle_file,
    } = StartingPolicy::load(&config)?;
    let log = Arc::new(std::sync::Mutex::new(CommandLog::open(
        &state_dir.join("command-log.json"),
    )?));
    let mut tasks = JoinSet::new();
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(QUEUE);
    let started = crate::bridge_set::start(
        config.bridges.with_core_bundle(bundle_file.as_deref()),
        config.privnet.clone(),
        policy,
        sample_tx,
        shutdown.clone(),
        &mut tasks,
    )
    .await?;
    let handles = started.set.clone();
    let _privnet = started.privnet;
    let inventory: Vec<BridgeInfo> = started
        .listings
        .iter()
        .map(|bridge| BridgeInfo {
            name: bridge.name.clone(),
            address: bridge.address.clone(),
            points: bridge.points.clone(),
        })
        .collect();
    let listings = started.listings;

    let (to_link, to_link_rx) = mpsc::channel::<BridgesToLink>(QUEUE);
    let (from_link_tx, mut from_link) = mpsc::channel::<LinkToBridges>(64);
    let (to_page, to_page_rx) = mpsc::channel::<BridgesToPage>(QUEUE);
    let reported = Arc::new(std::sync::Mutex::new(initial_report));
    tasks.spawn(link_sessions(
        Arc::clone(&compartment),
        Arc::clone(&reported),
        Arc::clone(&log),
        to_link_rx,
        from_link_tx,
        shutdown.clone(),
    ));
    tasks.spawn(page_sessions(
        Arc::clone(&compartment),
        inventory,
        to_page_rx,
        shutdown.clone(),
    ));

    let samples_to_link = to_link.clone();
    let samples_to_page = to_page.clone();
    tasks.spawn(async move {
        let mut dropped: u64 = 0;
        while let Some(sample) = sample_rx.recv().await {
            // The page is best effort; the link's queue is bounded while it restarts.
            let _ = samples_to_page.try_send(BridgesToPage::Sample(SampleFrame::from(&sample)));
            if let Some(reading) = telemetry_reading(sample)
                && samples_to_link
                    .try_send(BridgesToLink::Reading(reading))
                    .is_err()
            {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "the link is not taking readings; dropped");
                }
            }
        }
    });
    let health_stop = shutdown.clone();
    tasks.spawn(async move {
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
                let _ = to_page.try_send(BridgesToPage::Health {
                    bridge: bridge.name.clone(),
                    health,
                });
            }
        }
    });

    let mut twin = Twin {
        store: bundle_store,
        reported,
    };
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = from_link.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        match message {
            LinkToBridges::Command(payload) => {
                let Ok(command) = payload.decode::<Command>() else {
                    continue; // Checked by the session already.
                };
                let previous = lock(&log).get(&command.id).cloned();
                let result = match previous {
                    Some(previous) => previous,
                    None => {
                        let result = crate::commands::execute(&handles, &command).await;
                        tracing::info!(id = %result.id, status = ?result.status, "command executed");
                        if let Err(error) = lock(&log).record(result.clone()) {
                            tracing::error!(%error, "cannot record a command result");
                        }
                        result
                    }
                };
                let _ = to_link
                    .send(BridgesToLink::CommandResult(LinkPayload::of(&result)))
                    .await;
            }
            LinkToBridges::ResultQueued(id) => {
                if let Err(error) = lock(&log).mark_queued(&id) {
                    tracing::warn!(%error, %id, "cannot note a queued command result");
                }
            }
            LinkToBridges::TwinDesired(payload) => {
                let Ok(desired) = payload.decode::<TwinDesired>() else {
                    continue;
                };
                if let Some((reported, event)) = twin.apply(&desired, &handles).await {
                    let _ = to_link
                        .send(BridgesToLink::Event(LinkPayload::of(&event)))
                        .await;
                    let _ = to_link
                        .send(BridgesToLink::TwinReported(LinkPayload::of(&reported)))
                        .await;
                }
            }
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The telemetry reading of `sample`: its number, or the text of a string point;
/// `None` for a number that is not finite (a NaN or infinite float register: JSON
/// cannot carry it, and the fleet would refuse the whole batch).
pub fn telemetry_reading(sample: Sample) -> Option<Reading> {
    let point = format!("{}/{}", sample.bridge, sample.point);
    if let Some(text) = sample.text {
        return Some(Reading::text(point, text, sample.unit, sample.timestamp_ms));
    }
    if !sample.value.is_finite() {
        tracing::debug!(%point, value = sample.value, "non-finite sample not sent as telemetry");
        return None;
    }
    Some(Reading::number(
        point,
        sample.value,
        sample.unit,
        sample.timestamp_ms,
    ))
}

/// The policy bundle store and what the bridges report about their policy.
struct Twin {
    store: Option<BundleStore>,
    reported: Arc<std::sync::Mutex<TwinReported>>,
}

impl Twin {
    /// Applies a desired state's bundle, if it carries one: a bundle that verifies
    /// replaces every bridge's policy; one that does not changes nothing.
    async fn apply(
        &mut self,
        desired: &TwinDesired,
        bridges: &BridgeSet,
    ) -> Option<(TwinReported, DeviceEvent)> {
        let hex = desired.policy_bundle.as_ref()?;
        let outcome = match (&mut self.store, from_hex(hex)) {
            (None, _) => {
                Err("this unit takes no policy bundles (no [policy] bundle_dir)".to_owned())
            }
            (_, None) => Err("policy_bundle is not hex".to_owned()),
            (Some(store), Some(bytes)) => store
                .apply(&bytes)
                .map(|applied| (applied.policy.clone(), applied.header.version))
                .map(|(policy, version)| (policy, version, Arc::new(bytes)))
                .map_err(|error| error.to_string()),
        };
        let event = match outcome {
            Ok((policy, version, bundle)) => {
                let policy = Arc::new(policy);
                let cores = bridges.apply_policy(&policy, bundle).await;
                tracing::info!(version, "applied a verified policy bundle");
                *lock(&self.reported) = crate::twin::reported_for(&policy, Some(version), None);
                DeviceEvent::now(
                    event_kind::POLICY_APPLIED,
                    format!(
                        "policy bundle version {version} verified and applied to {} bridges{cores}",
                        bridges.len()
                    ),
                )
            }
            Err(error) => {
                tracing::warn!(%error, "policy bundle refused; the running policy stays");
                lock(&self.reported).last_error = Some(error.clone());
                DeviceEvent::now(
                    event_kind::POLICY_REFUSED,
                    format!("policy bundle refused, the running policy stays: {error}"),
                )
            }
        };
        Some((lock(&self.reported).clone(), event))
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a channel open to the link: each new one starts with the policy the bridges
/// run and the command results the link has not confirmed queueing (it restarted).
async fn link_sessions(
    compartment: Arc<Compartment>,
    reported: Arc<std::sync::Mutex<TwinReported>>,
    log: Arc<std::sync::Mutex<CommandLog>>,
    mut outgoing: mpsc::Receiver<BridgesToLink>,
    incoming: mpsc::Sender<LinkToBridges>,
    shutdown: CancellationToken,
) {
    while let Some(stream) = ipc::open(&compartment, LINK, &shutdown).await {
        let current = lock(&reported).clone();
        let mut greeting = vec![BridgesToLink::TwinReported(LinkPayload::of(&current))];
        greeting.extend(
            lock(&log)
                .unqueued()
                .iter()
                .map(|result| BridgesToLink::CommandResult(LinkPayload::of(result))),
        );
        ipc::session(
            &compartment,
            LINK,
            stream,
            greeting,
            &mut outgoing,
            &incoming,
            &shutdown,
        )
        .await;
        tracing::info!(peer = LINK, "channel closed; reopening");
    }
}

/// Keeps a channel open to the status page, starting each with the bridge inventory.
/// The page may send nothing ([`PageToBridges`] has no message).
async fn page_sessions(
    compartment: Arc<Compartment>,
    inventory: Vec<BridgeInfo>,
    mut outgoing: mpsc::Receiver<BridgesToPage>,
    shutdown: CancellationToken,
) {
    let (ignored, _nothing) = mpsc::channel::<PageToBridges>(1);
    while let Some(stream) = ipc::open(&compartment, STATUS_PAGE, &shutdown).await {
        let greeting = vec![BridgesToPage::Inventory(inventory.clone())];
        ipc::session(
            &compartment,
            STATUS_PAGE,
            stream,
            greeting,
            &mut outgoing,
            &ignored,
            &shutdown,
        )
        .await;
        tracing::info!(
            peer = STATUS_PAGE,
            from = BRIDGES,
            "channel closed; reopening"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f64, text: Option<&str>) -> Sample {
        Sample {
            bridge: "line1".into(),
            point: "p".into(),
            value,
            text: text.map(str::to_owned),
            unit: "bar".into(),
            timestamp_ms: 7,
        }
    }

    #[test]
    fn string_points_travel_as_text_and_non_finite_numbers_stay_home() {
        let text = telemetry_reading(sample(f64::NAN, Some("AB-17"))).expect("sent");
        assert_eq!(
            (text.point.as_str(), text.text.as_deref()),
            ("line1/p", Some("AB-17"))
        );
        assert!(text.value.is_nan());
        let number = telemetry_reading(sample(2.5, None)).expect("sent");
        assert_eq!((number.value, number.text), (2.5, None));
        assert!(telemetry_reading(sample(f64::INFINITY, None)).is_none());
    }
}
