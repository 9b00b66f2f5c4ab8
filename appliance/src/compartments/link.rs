//! The `link` role: the cloud link, and nothing else.
//!
//! The only compartment that may reach the fleet (its `connect` grant) and pluton's
//! socket (its `unix_connect` grant, for the TLS key). Readings arrive from the
//! bridges; commands and desired states from the fleet go to the bridges (which pass
//! them through the policy); the status page gets the link's state and the update
//! offer, and sends back the operator's update decision.

use anyhow::Context as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{CommandResult, DeviceEvent, Reading, TwinReported};
use warden_link::{ControlMessage, LinkAgent, LinkStatus};
use warden_os::monitor::compartment::Compartment;

use super::ipc;
use super::messages::{
    BRIDGES, BridgesToLink, LinkPayload, LinkToBridges, LinkToPage, PageToLink, STATUS_PAGE,
};
use crate::config::ApplianceConfig;
use crate::state::updates::{UpdateDecision, UpdateOffer};

/// How often the link's state goes to the status page.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the link until `shutdown`.
pub async fn run(
    compartment: Arc<Compartment>,
    config: ApplianceConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let upload_marker = config.link.outbox.dir.join("reports-uploaded");
    // Image slots and failure reports for the page (it has no grant to read them).
    let unit_facts =
        crate::state::unit_facts::UnitFactsSource::new(&config, Some(upload_marker.clone()));
    let pluton_socket = config.link.pluton_socket.clone();
    let mut agent = LinkAgent::new(config.device.id.clone(), config.link);
    let channel = agent.command_channel()?;
    let control = channel.control.clone();
    let status = agent.status();
    let updates: Arc<Mutex<UpdateDecision>> = Arc::default();
    let mut tasks = JoinSet::new();
    // The monitor's failure reports: read-only here (the manifest grants `read`), what
    // was uploaded is remembered beside the outbox.
    if let Some(reports) = &config.reports {
        let ring = crate::failure_reports::open_ring(&reports.dir)
            .with_context(|| {
                format!(
                    "cannot open the failure reports in {}",
                    reports.dir.display()
                )
            })?
            .with_upload_marker(upload_marker);
        tasks.spawn(crate::failure_reports::run(
            ring,
            control.clone(),
            Duration::from_secs(reports.scan_interval_secs.max(1)),
            shutdown.clone(),
        ));
    }
    let (reading_tx, reading_rx) = mpsc::channel::<Reading>(4096);
    // If the agent fails, the compartment exits with its error and the monitor
    // restarts it (with backoff): a link compartment without a link is not healthy.
    let link_stop = shutdown.clone();
    let agent_task = tokio::spawn(async move {
        let outcome = agent.run(reading_rx, link_stop.clone()).await;
        link_stop.cancel();
        outcome
    });

    // Fleet → bridges: commands and desired states, as their payloads.
    let (to_bridges, to_bridges_rx) = mpsc::channel::<LinkToBridges>(64);
    let mut commands = channel.commands;
    let mut desired = channel.desired;
    let fleet_to_bridges = to_bridges.clone();
    let forward_stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let message = tokio::select! {
                () = forward_stop.cancelled() => return,
                Some(command) = commands.recv() => LinkToBridges::Command(LinkPayload::of(&command)),
                Some(state) = desired.recv() => LinkToBridges::TwinDesired(LinkPayload::of(&state)),
                else => return,
            };
            if fleet_to_bridges.send(message).await.is_err() {
                return;
            }
        }
    });
    // With `[updates]`, the updater takes the offers: download from the fleet, the
    // gate (the operator's decision on the status page, windows), install into the
    // inactive slot; and judges this image's trial. It reaches pluton without the
    // provisioning capability (`PlutonAccess::Unprivileged`): this compartment faces the
    // network. The monitor cannot yet be asked to stop for a reboot, so an installed
    // image boots on trial at the next restart of the appliance.
    let mut offers = channel.offers;
    if let Some(updates_config) = &config.updates {
        let link_status = Arc::clone(&status);
        let health: crate::updates::HealthProbe = Arc::new(move || warden_os::HealthReport {
            link_up: link_status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state
                == warden_link::LinkState::Connected,
            // The bridges' health is not this compartment's to see; their own crashes
            // count against the trial through the monitor.
            bridges_healthy: true,
        });
        let context = crate::updates::UpdateContext {
            control: control.clone(),
            decision: Arc::clone(&updates),
            offers: std::mem::replace(&mut offers, mpsc::channel(1).1),
            health,
            restart: None,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(crate::updates::start(
            updates_config,
            pluton_socket.as_deref(),
            &config.device.product,
            crate::updates::PlutonAccess::Unprivileged,
            context,
        )?);
    }
    // Without `[updates]`, offers only wait on the status page.
    let offered = Arc::clone(&updates);
    tasks.spawn(async move {
        while let Some(offer) = offers.recv().await {
            tracing::info!(version = %offer.version, "update offered; waiting for the update window and the operator");
            offered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .offer = Some(UpdateOffer {
                version: offer.version,
                window_ends_ms: offer.window_end_ms,
            });
        }
    });

    // Bridges → fleet: readings to the agent, everything else to the control queue.
    let (from_bridges_tx, mut from_bridges) = mpsc::channel::<BridgesToLink>(4096);
    let (bridge_streams_tx, bridge_streams) = mpsc::channel(4);
    ipc::route_offers(Arc::clone(&compartment), vec![(BRIDGES, bridge_streams_tx)]);
    tasks.spawn(ipc::callee_sessions(
        Arc::clone(&compartment),
        BRIDGES,
        bridge_streams,
        to_bridges_rx,
        from_bridges_tx,
        shutdown.clone(),
    ));
    let (to_page, to_page_rx) = mpsc::channel::<LinkToPage>(16);
    let (from_page_tx, mut from_page) = mpsc::channel::<PageToLink>(16);
    tasks.spawn(page_sessions(
        Arc::clone(&compartment),
        to_page_rx,
        from_page_tx,
        shutdown.clone(),
    ));
    tasks.spawn(publish_unit_facts(unit_facts, to_page.clone(), shutdown.clone()));
    tasks.spawn(publish_status(
        status,
        Arc::clone(&updates),
        to_page,
        shutdown.clone(),
    ));

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(message) = from_bridges.recv() => match message {
                BridgesToLink::Reading(reading) => {
                    if reading_tx.try_send(reading).is_err() {
                        tracing::debug!("the link agent is not taking readings");
                    }
                }
                BridgesToLink::CommandResult(payload) => {
                    let Ok(result) = payload.decode::<CommandResult>() else { continue };
                    let id = result.id.clone();
                    match control.send(&ControlMessage::CommandResult(result)) {
                        Ok(_) => {
                            let _ = to_bridges.send(LinkToBridges::ResultQueued(id)).await;
                        }
                        Err(error) => tracing::error!(%error, %id, "cannot queue a command result"),
                    }
                }
                BridgesToLink::TwinReported(payload) => {
                    if let Ok(reported) = payload.decode::<TwinReported>() {
                        control.send_or_log(&ControlMessage::TwinReported(reported));
                    }
                }
                BridgesToLink::Event(payload) => {
                    if let Ok(event) = payload.decode::<DeviceEvent>() {
                        control.send_or_log(&ControlMessage::Event(event));
                    }
                }
            },
            Some(PageToLink::Updates(decision)) = from_page.recv() => {
                let mut current = updates.lock().unwrap_or_else(PoisonError::into_inner);
                if decision.decided_at_ms > current.decided_at_ms {
                    tracing::info!(deferred_until_ms = ?decision.deferred_until_ms, allowed = ?decision.allowed_version, "operator's update decision");
                    current.deferred_until_ms = decision.deferred_until_ms;
                    current.allowed_version = decision.allowed_version;
                    current.decided_at_ms = decision.decided_at_ms;
                }
            }
            // A task of this role that ends (a channel, the uploader, the updater)
            // ends the role: it exits non-zero and the monitor restarts it.
            Some(ended) = tasks.join_next() => {
                let why = match ended {
                    Ok(()) => "ended before shutdown".to_owned(),
                    Err(error) => format!("failed: {error}"),
                };
                tracing::error!(%why, "a link compartment task stopped; the compartment exits");
                break;
            }
            else => break,
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    match agent_task.await {
        // The agent only returns when told to stop or its readings close: both mean
        // this compartment lost a part; the caller exits non-zero.
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(anyhow::anyhow!("cloud link: {error}")),
        Err(error) => Err(anyhow::anyhow!("cloud link task: {error}")),
    }
}

/// Sends the link's state and the update decision to the page every second.
async fn publish_status(
    status: Arc<Mutex<LinkStatus>>,
    updates: Arc<Mutex<UpdateDecision>>,
    to_page: mpsc::Sender<LinkToPage>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let frame = status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let decision = updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Best effort: the page shows the next one if this one finds it restarting.
        let _ = to_page.try_send(LinkToPage::Status(frame));
        let _ = to_page.try_send(LinkToPage::Updates(decision));
    }
}

/// Sends the unit's facts to the status page every
/// [`REFRESH`](crate::status_page::unit_facts::REFRESH), cut to fit one frame.
async fn publish_unit_facts(
    source: crate::status_page::unit_facts::UnitFactsSource,
    to_page: mpsc::Sender<LinkToPage>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(crate::status_page::unit_facts::REFRESH);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let reading = source.clone();
        let Ok(facts) = tokio::task::spawn_blocking(move || reading.read()).await else {
            return;
        };
        let facts = crate::status_page::unit_facts::fit_into_frame(facts);
        // Best effort, like the link status: the next one follows.
        let _ = to_page.try_send(LinkToPage::Unit(facts));
    }
}

/// Keeps a channel open to the status page.
async fn page_sessions(
    compartment: Arc<Compartment>,
    mut outgoing: mpsc::Receiver<LinkToPage>,
    incoming: mpsc::Sender<PageToLink>,
    shutdown: CancellationToken,
) {
    while let Some(stream) = ipc::open(&compartment, STATUS_PAGE, &shutdown).await {
        ipc::session(
            &compartment,
            STATUS_PAGE,
            stream,
            Vec::new(),
            &mut outgoing,
            &incoming,
            &shutdown,
        )
        .await;
        tracing::info!(peer = STATUS_PAGE, "channel closed; reopening");
    }
}
