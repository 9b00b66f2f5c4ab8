//! The status-page role: the operator's page, fed by the other roles, and nothing else.
//!
//! The only role that listens (a compartment's `listen` grant); it opens no channel
//! itself: the bridges and the link send to it. It waits for the bridges' inventory
//! before it listens, so the page always lists every bridge. The operator's update
//! decision goes back to the link.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::Sample;

use crate::config::ApplianceConfig;
use crate::ports::PagePorts;
use crate::ports::messages::{BridgeInfo, BridgesToPage, LinkToPage, PageToLink};
use crate::state::unit_facts::UnitFacts;
use crate::state::updates::UpdateDecision;
use crate::state::{ApplianceState, BridgeView};
use crate::status_page::{PreparedPage, StartedPage};
use crate::supervision::Supervisor;

/// How often the page looks for an operator decision to pass on to the link.
const DECISION_POLL: Duration = Duration::from_millis(200);

/// Starts the page (prepared by [`crate::status_page::prepare`] before anything
/// else ran) once the bridges' inventory is in, with `warden status` on
/// `control_socket` if given; says where it listens.
pub async fn start(
    config: &ApplianceConfig,
    page: PreparedPage,
    control_socket: Option<&Path>,
    ports: PagePorts,
    tasks: &mut Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Result<StartedPage> {
    let PagePorts {
        mut from_bridges,
        mut from_link,
        to_link,
        live,
    } = ports;
    // The link's side first: its state is kept even while the bridges are not up.
    let from_link_state = FromLink::default();
    let applying = from_link_state.clone();
    let link_stop = shutdown.clone();
    tasks.spawn("link frames", async move {
        loop {
            tokio::select! {
                () = link_stop.cancelled() => return Ok(()),
                message = from_link.recv() => match message {
                    Some(message) => applying.apply(message),
                    None => anyhow::bail!("the link's channel to the page closed"),
                },
            }
        }
    });
    let inventory = loop {
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped before the bridges' inventory arrived"),
            message = from_bridges.recv() => match message {
                Some(BridgesToPage::Inventory(inventory)) => break inventory,
                Some(_) => {}
                None => anyhow::bail!("the bridges' channel ended before their inventory"),
            },
        }
    };
    // Live counters where this process has them (the frames' copies are then not
    // written over them: they are the pollers' and the agent's own).
    let live_health = live.is_some();
    let state = ApplianceState {
        device_id: config.device.id.clone(),
        bridges: inventory
            .into_iter()
            .map(|bridge| view(bridge, live.as_ref()))
            .collect(),
        values: Arc::default(),
        link: live
            .as_ref()
            .and_then(crate::ports::LiveCounters::link)
            .unwrap_or(from_link_state.link),
        history: Arc::default(),
        updates: from_link_state.updates,
        unit: from_link_state.unit,
        tasks: tasks.health(),
        facade: Arc::default(),
        point_decimals: Arc::new(config.bridges.point_decimals()),
    };

    let from_bridges_state = state.clone();
    let bridges_stop = shutdown.clone();
    tasks.spawn("bridge frames", async move {
        loop {
            tokio::select! {
                () = bridges_stop.cancelled() => return Ok(()),
                message = from_bridges.recv() => match message {
                    Some(BridgesToPage::Health { .. }) if live_health => {}
                    Some(message) => apply_from_bridges(&from_bridges_state, message),
                    None => anyhow::bail!("the bridges' channel to the page closed"),
                },
            }
        }
    });
    tasks.spawn_unit(
        "decisions to link",
        pass_decisions_on(state.clone(), to_link, shutdown.clone()),
    );
    let plan = crate::listening::ListenerPlan::for_this_process();
    if let Some(path) = control_socket {
        let mut control_tasks = JoinSet::new();
        crate::control::serve(
            path,
            state.clone(),
            plan.control,
            shutdown.clone(),
            &mut control_tasks,
        )?;
        tasks.adopt("control socket", control_tasks);
    }
    let local_installs =
        config
            .updates
            .as_ref()
            .map(|updates| crate::updates::local::LocalInstallTarget {
                socket: crate::updates::local::socket_path(&updates.download_dir),
                max_bytes: updates.max_local_image_mib.saturating_mul(1 << 20),
            });
    let mut page_tasks = JoinSet::new();
    let started = page
        .with_local_installs(local_installs)
        .start(state, &plan, shutdown, &mut page_tasks)
        .await
        .context("cannot start the status page")?;
    tasks.adopt("status page", page_tasks);
    Ok(started)
}

fn view(bridge: BridgeInfo, live: Option<&crate::ports::LiveCounters>) -> BridgeView {
    let health = live
        .and_then(|live| live.bridge(&bridge.name))
        .unwrap_or_default();
    BridgeView {
        name: bridge.name,
        address: bridge.address,
        points: bridge.points,
        health,
    }
}

/// Updates the page's state from a bridges frame.
pub fn apply_from_bridges(state: &ApplianceState, message: BridgesToPage) {
    match message {
        // The same config gives the same bridges; a restarted bridges role sends it
        // again.
        BridgesToPage::Inventory(_) => {}
        BridgesToPage::Health { bridge, health } => {
            if let Some(view) = state.bridges.iter().find(|view| view.name == bridge) {
                *view.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
            }
        }
        BridgesToPage::Samples(frames) => {
            state.record_samples(frames.into_iter().map(Sample::from));
        }
        BridgesToPage::Facade(health) => {
            *state.facade.lock().unwrap_or_else(PoisonError::into_inner) = Some(health);
        }
    }
}

/// The parts of the page's state the link's frames fill.
#[derive(Clone, Default)]
pub struct FromLink {
    /// The link's state and counters (with the attestation answers).
    pub link: Arc<std::sync::Mutex<warden_link::LinkStatus>>,
    /// The update offer and decision.
    pub updates: Arc<std::sync::Mutex<UpdateDecision>>,
    /// Image slots and failure reports.
    pub unit: Arc<std::sync::Mutex<UnitFacts>>,
}

impl FromLink {
    /// Updates the page's state from a link frame. The link's update decision wins
    /// unless the operator decided here more recently (not yet confirmed by the link).
    pub fn apply(&self, message: LinkToPage) {
        match message {
            LinkToPage::Status(status) => {
                *self.link.lock().unwrap_or_else(PoisonError::into_inner) = *status;
            }
            LinkToPage::Updates(from_link) => {
                let mut ours = self.updates.lock().unwrap_or_else(PoisonError::into_inner);
                if from_link.decided_at_ms >= ours.decided_at_ms {
                    *ours = from_link;
                } else {
                    ours.offer = from_link.offer;
                }
            }
            LinkToPage::Unit(facts) => {
                *self.unit.lock().unwrap_or_else(PoisonError::into_inner) = *facts;
            }
        }
    }
}

/// Sends each new operator decision (defer / allow on the page) to the link.
async fn pass_decisions_on(
    state: ApplianceState,
    to_link: mpsc::Sender<PageToLink>,
    shutdown: CancellationToken,
) {
    let mut sent: Option<u64> = None;
    let mut every = tokio::time::interval(DECISION_POLL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let decision: UpdateDecision = state
            .updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if decision.decided_at_ms.is_some() && decision.decided_at_ms != sent {
            sent = decision.decided_at_ms;
            let _ = to_link.send(PageToLink::Updates(decision)).await;
        }
    }
}
