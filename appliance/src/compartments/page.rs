//! The `status-page` role: the operator's page, fed over IPC, and nothing else.
//!
//! The only compartment that listens (its `listen` grant); it cannot connect out and
//! opens no channel itself (`peers = []`): the bridges and the link open theirs to it.
//! It takes the link's channel at once, and waits for the bridges' inventory before it
//! listens, so the page always lists every bridge. The operator's update decision goes back to the link.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::Sample;
use warden_os::monitor::compartment::Compartment;

use super::ipc;
use super::messages::{
    BRIDGES, BridgeInfo, BridgesToPage, LINK, LinkToPage, PageToBridges, PageToLink,
};
use crate::config::ApplianceConfig;
use crate::state::unit_facts::UnitFacts;
use crate::state::updates::UpdateDecision;
use crate::state::{ApplianceState, BridgeView};

/// How often the page looks for an operator decision to pass on to the link.
const DECISION_POLL: Duration = Duration::from_millis(200);

/// Runs the status page until `shutdown`; prints where it listens once it does.
pub async fn run(
    compartment: Arc<Compartment>,
    config: ApplianceConfig,
    control_socket: Option<&std::path::Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before anything runs: no password hash (or no web key) means no page.
    let page = crate::status_page::prepare(&config.status_page, &config.device.id)?;
    let mut tasks = JoinSet::new();
    let (bridge_streams_tx, bridge_streams) = mpsc::channel(4);
    let (link_streams_tx, link_streams) = mpsc::channel(4);
    ipc::route_offers(
        Arc::clone(&compartment),
        vec![(BRIDGES, bridge_streams_tx), (LINK, link_streams_tx)],
    );
    let (from_bridges_tx, mut from_bridges) = mpsc::channel::<BridgesToPage>(4096);
    let (_nothing_to_bridges, to_bridges) = mpsc::channel::<PageToBridges>(1);
    tasks.spawn(ipc::callee_sessions(
        Arc::clone(&compartment),
        BRIDGES,
        bridge_streams,
        to_bridges,
        from_bridges_tx,
        shutdown.clone(),
    ));
    // The link's side first: its state is kept even while the bridges are not up.
    let link: Arc<std::sync::Mutex<warden_link::LinkStatus>> = Arc::default();
    let updates: Arc<std::sync::Mutex<UpdateDecision>> = Arc::default();
    let (to_link, to_link_rx) = mpsc::channel::<PageToLink>(16);
    let (from_link_tx, mut from_link) = mpsc::channel::<LinkToPage>(16);
    tasks.spawn(ipc::callee_sessions(
        Arc::clone(&compartment),
        LINK,
        link_streams,
        to_link_rx,
        from_link_tx,
        shutdown.clone(),
    ));
    let unit: Arc<std::sync::Mutex<UnitFacts>> = Arc::default();
    let from_link_state = FromLink {
        link: Arc::clone(&link),
        updates: Arc::clone(&updates),
        unit: Arc::clone(&unit),
    };
    tasks.spawn(async move {
        while let Some(message) = from_link.recv().await {
            from_link_state.apply(message);
        }
    });
    let inventory = loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = from_bridges.recv() => match message {
                Some(BridgesToPage::Inventory(inventory)) => break inventory,
                Some(_) => {}
                None => anyhow::bail!("the bridges' channel ended before their inventory"),
            },
        }
    };
    let state = ApplianceState {
        device_id: config.device.id.clone(),
        bridges: inventory.into_iter().map(view).collect(),
        values: Arc::default(),
        link,
        history: Arc::default(),
        updates,
        unit,
        tasks: Arc::default(),
    };

    let from_bridges_state = state.clone();
    tasks.spawn(async move {
        while let Some(message) = from_bridges.recv().await {
            apply_from_bridges(&from_bridges_state, message);
        }
    });
    tasks.spawn(pass_decisions_on(state.clone(), to_link, shutdown.clone()));
    if let Some(path) = control_socket {
        crate::control::serve(path, state.clone(), shutdown.clone(), &mut tasks)?;
    }

    let started = page
        .start(state, shutdown.clone(), &mut tasks)
        .await
        .context("cannot start the status page")?;
    println!("status page: https://{}/", started.address);
    println!("status page cert: SHA-256 {}", started.fingerprint);
    // Nothing cancels `shutdown` from outside (the monitor kills compartments): a
    // task that ends (the page's or the metrics' server, a channel) ends the role,
    // which exits non-zero for the monitor to restart it.
    let ended = tokio::select! {
        () = shutdown.cancelled() => None,
        ended = tasks.join_next() => ended,
    };
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    match ended {
        Some(Err(error)) => Err(anyhow::anyhow!("a status-page task failed: {error}")),
        Some(Ok(())) => Err(anyhow::anyhow!("a status-page task ended before shutdown")),
        None => Ok(()),
    }
}

fn view(bridge: BridgeInfo) -> BridgeView {
    BridgeView {
        name: bridge.name,
        address: bridge.address,
        points: bridge.points,
        health: Arc::default(),
    }
}

/// Updates the page's state from a bridges frame.
pub fn apply_from_bridges(state: &ApplianceState, message: BridgesToPage) {
    match message {
        // The same config gives the same bridges; a restarted bridges compartment
        // sends it again.
        BridgesToPage::Inventory(_) => {}
        BridgesToPage::Health { bridge, health } => {
            if let Some(view) = state.bridges.iter().find(|view| view.name == bridge) {
                *view.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
            }
        }
        BridgesToPage::Sample(frame) => state.record_sample(&Sample::from(frame)),
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
                *self.link.lock().unwrap_or_else(PoisonError::into_inner) = status;
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
                *self.unit.lock().unwrap_or_else(PoisonError::into_inner) = facts;
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
