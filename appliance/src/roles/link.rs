//! The link role: the cloud link, and nothing else.
//!
//! The only role that may reach the fleet (a compartment's `connect` grant) and
//! pluton's TLS key. Readings arrive from the bridges and go to the agent's durable
//! outbox (awaited: see [`crate::ports`]); commands and desired states from the fleet
//! go to the bridges (which pass them through the policy); the page gets the link's
//! state, the update offer and the unit's facts, and sends back the operator's update
//! decision. It is also the update agent (with the config's `[updates]`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{CommandResult, DeviceEvent, Reading, TwinReported};
use warden_link::{ControlMessage, ControlSender, LinkAgent, LinkStatus};

use crate::config::ApplianceConfig;
use crate::ports::messages::{BridgesToLink, LinkPayload, LinkToBridges, LinkToPage, PageToLink};
use crate::ports::{LinkPorts, Outgoing};
use crate::state::updates::UpdateDecision;
use crate::status_page::unit_facts::{REFRESH, UnitFactsSource, fit_into_frame};
use crate::supervision::Supervisor;

/// How often the link's state goes to the status page.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Batches of readings between this role and the agent (each at most
/// [`BATCH_LEN`](crate::ports::messages::BATCH_LEN) readings).
const AGENT_QUEUE: usize = 32;

/// Starts the link agent and everything around it under `tasks`.
pub fn start(
    config: &ApplianceConfig,
    ports: LinkPorts,
    tasks: &mut Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let LinkPorts {
        mut from_bridges,
        to_bridges,
        to_page,
        mut from_page,
        live,
        grants,
    } = ports;
    // A ring this process may not write keeps its upload marks beside the outbox.
    let upload_marker =
        (!grants.reports_writable).then(|| config.link.outbox.dir.join("reports-uploaded"));
    let mut agent = LinkAgent::new(config.device.id.clone(), config.link.clone());
    let channel = agent.command_channel()?;
    let control = channel.control.clone();
    let status = agent.status();
    let updates: Arc<Mutex<UpdateDecision>> = Arc::default();
    if let Some(live) = &live {
        live.publish_link(Arc::clone(&status));
    }

    // The monitor's failure reports; the uploader re-reads the ring (and its marks)
    // from disk, so it may start over after a failure.
    if let Some(reports) = &config.reports {
        // Opened once here so that a ring that cannot be opened stops the start.
        let open = {
            let (dir, marker) = (reports.dir.clone(), upload_marker.clone());
            move || {
                crate::failure_reports::open_ring(&dir)
                    .with_context(|| {
                        format!("cannot open the failure reports in {}", dir.display())
                    })
                    .map(|ring| match &marker {
                        Some(marker) => ring.with_upload_marker(marker.clone()),
                        None => ring,
                    })
            }
        };
        open()?;
        let (control, stop) = (control.clone(), shutdown.clone());
        let interval = Duration::from_secs(reports.scan_interval_secs.max(1));
        tasks.spawn_restartable("failure-report uploader", move || {
            let ring = open();
            let (control, stop) = (control.clone(), stop.clone());
            async move {
                crate::failure_reports::run(ring?, control, interval, stop).await;
                Ok(())
            }
        });
    }

    // The agent retries what can get better by itself (broker away, pluton
    // restarting) and returns an error only for what never will: then the process
    // exits, and the bridges cannot block on a link that is gone.
    let (reading_tx, reading_rx) = mpsc::channel::<Vec<Reading>>(AGENT_QUEUE);
    let link_stop = shutdown.clone();
    tasks.spawn("link agent", async move {
        agent
            .run(reading_rx, link_stop)
            .await
            .map_err(|error| anyhow::anyhow!("the cloud link cannot run: {error}"))
    });

    // Fleet → bridges: commands and desired states, as their payloads.
    let mut commands = channel.commands;
    let mut desired = channel.desired;
    let fleet_to_bridges = to_bridges.clone();
    let forward_stop = shutdown.clone();
    tasks.spawn("fleet to bridges", async move {
        loop {
            let message = tokio::select! {
                () = forward_stop.cancelled() => return Ok(()),
                Some(command) = commands.recv() => LinkToBridges::Command(LinkPayload::of(&command)),
                Some(state) = desired.recv() => LinkToBridges::TwinDesired(LinkPayload::of(&state)),
                else => anyhow::bail!("the link's command channel closed"),
            };
            if fleet_to_bridges.send(message).await.is_err() {
                anyhow::bail!("the bridges no longer take commands");
            }
        }
    });

    // Offers: with `[updates]`, the updater takes them (download, the operator's gate,
    // install into the inactive slot) and judges this image's trial. Without, a unit
    // takes no updates and says so to the fleet at once.
    // The image this unit runs, for the reported twin (set by the updater at start).
    let installed_image = Arc::new(std::sync::OnceLock::<String>::new());
    // The release-key revocation list the unit holds, for the reported twin (set by
    // the updater at start and after each install of a list).
    let (revocation_sequence, held_revocations) = tokio::sync::watch::channel(None::<u64>);
    match &config.updates {
        Some(updates_config) => {
            let link_status = Arc::clone(&status);
            let health: crate::updates::HealthProbe = Arc::new(move || warden_os::HealthReport {
                link_up: link_status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state
                    == warden_link::LinkState::Connected,
                bridges_healthy: live
                    .as_ref()
                    .is_none_or(crate::ports::LiveCounters::bridges_connected),
            });
            let context = crate::updates::UpdateContext {
                control: control.clone(),
                decision: Arc::clone(&updates),
                offers: channel.offers,
                health,
                restart: grants.restart.clone(),
                shutdown: shutdown.clone(),
                installed_image: Arc::clone(&installed_image),
                revocation_lists: channel.revocation_lists,
                revocation_sequence,
            };
            let agent = crate::updates::start(
                updates_config,
                &config.link.fleet_ca,
                config.link.pluton_socket.as_deref(),
                &config.device.product,
                grants.pluton,
                context,
            )?;
            let (restarting, stopping) = (grants.restart, shutdown.clone());
            tasks.spawn("update agent", async move {
                agent.await;
                // Done because it asked the boot stage for a restart: not a failure,
                // the process is about to stop anyway.
                if restarting.is_some_and(|restart| restart.is_cancelled()) {
                    stopping.cancelled().await;
                }
                Ok(())
            });
        }
        None => {
            tasks.spawn_unit(
                "update refusal",
                crate::updates::refuse_all(channel.offers, control.clone(), shutdown.clone()),
            );
            tasks.spawn_unit(
                "revocation list refusal",
                crate::updates::revocations::ignore_all(channel.revocation_lists, shutdown.clone()),
            );
        }
    }

    // The last state the bridges reported, completed by this role (the image and the
    // held revocation list are the updater's), sent again when the held list changes.
    let last_reported = Arc::new(Mutex::new(None::<TwinReported>));
    {
        let (last_reported, control, stop) = (
            Arc::clone(&last_reported),
            control.clone(),
            shutdown.clone(),
        );
        let mut held = held_revocations.clone();
        tasks.spawn_unit("revocations in the twin", async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = held.changed() => if changed.is_err() {
                        // No updater (no `[updates]`), or it ended to restart the
                        // unit: nothing changes the held list any more.
                        stop.cancelled().await;
                        return;
                    },
                }
                let sequence = *held.borrow_and_update();
                let reported = {
                    let mut last = last_reported.lock().unwrap_or_else(PoisonError::into_inner);
                    last.as_mut().map(|reported| {
                        reported.revocation_list_sequence = sequence;
                        reported.clone()
                    })
                };
                // Before the bridges' first report the next one carries it.
                if let Some(reported) = reported {
                    control.send_or_log(&ControlMessage::TwinReported(reported));
                }
            }
        });
    }

    // Bridges → fleet: readings to the agent, everything else to the control queue.
    let bridges_stop = shutdown.clone();
    let bridges_control = control.clone();
    tasks.spawn("bridges to fleet", async move {
        loop {
            let message = tokio::select! {
                () = bridges_stop.cancelled() => return Ok(()),
                message = from_bridges.recv() => match message {
                    Some(message) => message,
                    None => anyhow::bail!("the bridges' channel to the link closed"),
                },
            };
            match message {
                BridgesToLink::Readings(batch) => {
                    // Awaited: the outbox is where a reading becomes safe (see
                    // `crate::ports`); a busy agent slows the bridges down instead.
                    tokio::select! {
                        () = bridges_stop.cancelled() => return Ok(()),
                        sent = reading_tx.send(batch) => if sent.is_err() {
                            anyhow::bail!("the link agent no longer takes readings");
                        },
                    }
                }
                BridgesToLink::CommandResult(payload) => {
                    let Ok(result) = payload.decode::<CommandResult>() else { continue };
                    if let Some(id) = queue_command_result(&bridges_control, result) {
                        // Not awaited: this task must never wait for the bridges while
                        // they may be waiting for it (a full readings queue). A note
                        // that finds their queue full is lost; the result then stays
                        // unqueued in their log and goes again at the next start
                        // (the fleet keeps one per ID).
                        if to_bridges.try_send(LinkToBridges::ResultQueued(id.clone())).is_err() {
                            tracing::warn!(%id, "the bridges are behind; a queued result will be sent again at their next start");
                        }
                    }
                }
                BridgesToLink::TwinReported(payload) => {
                    if let Ok(mut reported) = payload.decode::<TwinReported>() {
                        // The bridges report the policy; the image and the held
                        // revocation list are the updater's.
                        reported.image_sha256 = installed_image.get().cloned();
                        reported.revocation_list_sequence = *held_revocations.borrow();
                        *last_reported.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(reported.clone());
                        bridges_control.send_or_log(&ControlMessage::TwinReported(reported));
                    }
                }
                BridgesToLink::Event(payload) => {
                    if let Ok(event) = payload.decode::<DeviceEvent>() {
                        bridges_control.send_or_log(&ControlMessage::Event(event));
                    }
                }
            }
        }
    });

    // Page → link: the operator's decisions (newer ones win).
    let decisions = Arc::clone(&updates);
    let page_stop = shutdown.clone();
    tasks.spawn("operator decisions", async move {
        loop {
            let decision = tokio::select! {
                () = page_stop.cancelled() => return Ok(()),
                message = from_page.recv() => match message {
                    Some(PageToLink::Updates(decision)) => decision,
                    None => anyhow::bail!("the page's channel to the link closed"),
                },
            };
            let mut current = decisions.lock().unwrap_or_else(PoisonError::into_inner);
            if decision.decided_at_ms > current.decided_at_ms {
                tracing::info!(deferred_until_ms = ?decision.deferred_until_ms, allowed = ?decision.allowed_version, "operator's update decision");
                current.deferred_until_ms = decision.deferred_until_ms;
                current.allowed_version = decision.allowed_version;
                current.decided_at_ms = decision.decided_at_ms;
            }
        }
    });

    // Link → page: its state and the update decision, and the unit's facts (image
    // slots and failure reports: the page has no grant to read them).
    let facts = UnitFactsSource::new(config, upload_marker);
    let (facts_page, facts_stop) = (to_page.clone(), shutdown.clone());
    tasks.spawn_restartable("unit facts reader", move || {
        publish_unit_facts(facts.clone(), facts_page.clone(), facts_stop.clone())
    });
    tasks.spawn_unit(
        "link status",
        publish_status(status, updates, to_page, shutdown),
    );
    Ok(())
}

/// Queues a command result for the fleet; its ID once it is in the durable control
/// queue (the bridges then note it in their command log). A result that could not be
/// queued stays unqueued in the log and is sent again by the next greeting.
pub fn queue_command_result(control: &ControlSender, result: CommandResult) -> Option<String> {
    let id = result.id.clone();
    match control.send(&ControlMessage::CommandResult(result)) {
        Ok(_) => Some(id),
        Err(error) => {
            tracing::error!(%error, %id, "cannot queue a command result");
            None
        }
    }
}

/// Sends the link's state and the update decision to the page every second.
async fn publish_status(
    status: Arc<Mutex<LinkStatus>>,
    updates: Arc<Mutex<UpdateDecision>>,
    to_page: Outgoing<LinkToPage>,
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
        // Best effort: the page shows the next one if this one finds it behind.
        to_page.send_or_drop(LinkToPage::Status(Box::new(frame)));
        to_page.send_or_drop(LinkToPage::Updates(decision));
    }
}

/// Sends the unit's facts to the page every [`REFRESH`], cut to fit one frame.
async fn publish_unit_facts(
    source: UnitFactsSource,
    to_page: Outgoing<LinkToPage>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let reading = source.clone();
        let facts = tokio::task::spawn_blocking(move || reading.read())
            .await
            .context("reading the unit's facts")?;
        // Best effort, like the link status: the next one follows.
        to_page.send_or_drop(LinkToPage::Unit(Box::new(fit_into_frame(facts))));
    }
}
