//! The roles' ports over the monitor's peer channels: one session task per peer.
//!
//! The role sees the same [`crate::ports`] channels as in one process; here each is
//! drained into (or filled from) a peer channel, reopened whenever the peer restarts.
//! A full outgoing channel waits (the session writes as fast as the peer reads), so
//! backpressure crosses the process boundary the same way it does in one process.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use warden_os::monitor::compartment::Compartment;

use super::ipc::{self, PeerReports};
use crate::ports::messages::Incoming;
use crate::ports::messages::{
    BRIDGES, BridgesToLink, BridgesToPage, LINK, LinkToBridges, LinkToPage, PageToBridges,
    PageToLink, STATUS_PAGE,
};
use crate::ports::{
    BULK_FRAMES, BridgesPorts, COMMANDS_QUEUE, Greeting, LINK_PAGE_QUEUE, LinkGrants, LinkPorts,
    Outgoing, PAGE_QUEUE, PagePorts, READINGS_QUEUE,
};
use crate::supervision::Supervisor;

/// The bridges' ports: they open the channels to the link and to the page.
pub fn bridges(
    compartment: &Arc<Compartment>,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> BridgesPorts {
    let (to_link_tx, to_link_rx) = mpsc::channel::<BridgesToLink>(READINGS_QUEUE);
    let (to_link, link_greeting) = Outgoing::every_session(to_link_tx);
    let (from_link_tx, from_link) = mpsc::channel::<LinkToBridges>(COMMANDS_QUEUE);
    tasks.spawn_unit(
        "link channel",
        caller_sessions(
            Arc::clone(compartment),
            LINK,
            Some(link_greeting),
            to_link_rx,
            from_link_tx,
            shutdown.clone(),
        ),
    );
    let (to_page_tx, to_page_rx) = mpsc::channel::<BridgesToPage>(PAGE_QUEUE);
    let (to_page, page_greeting) = Outgoing::every_session(to_page_tx);
    // The page may send nothing ([`PageToBridges`] has no message).
    let (ignored, _nothing) = mpsc::channel::<PageToBridges>(1);
    tasks.spawn_unit(
        "status-page channel",
        caller_sessions(
            Arc::clone(compartment),
            STATUS_PAGE,
            Some(page_greeting),
            to_page_rx,
            ignored,
            shutdown.clone(),
        ),
    );
    BridgesPorts {
        to_link,
        from_link,
        to_page,
        // The link and the page are other processes: they get the counters in frames.
        live: None,
    }
}

/// The link's ports: the bridges open their channel to it; it opens the page's.
pub fn link(
    compartment: &Arc<Compartment>,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> LinkPorts {
    let (to_bridges, to_bridges_rx) = mpsc::channel::<LinkToBridges>(COMMANDS_QUEUE);
    // Small: the session fills it as it reads, and the link takes frames as they come
    // (no greeting waits here), so it holds no more batches than the bridges' end.
    let (from_bridges_tx, from_bridges) = mpsc::channel::<BridgesToLink>(BULK_FRAMES);
    let (bridge_streams_tx, bridge_streams) = mpsc::channel(4);
    ipc::route_offers(Arc::clone(compartment), vec![(BRIDGES, bridge_streams_tx)]);
    tasks.spawn_unit(
        "bridges channel",
        ipc::callee_sessions(
            reports(compartment),
            BRIDGES,
            bridge_streams,
            to_bridges_rx,
            from_bridges_tx,
            shutdown.clone(),
        ),
    );
    let (to_page_tx, to_page_rx) = mpsc::channel::<LinkToPage>(LINK_PAGE_QUEUE);
    let (from_page_tx, from_page) = mpsc::channel::<PageToLink>(LINK_PAGE_QUEUE);
    let restart = restart_through_the_monitor(compartment, tasks, shutdown);
    tasks.spawn_unit(
        "status-page channel",
        caller_sessions(
            Arc::clone(compartment),
            STATUS_PAGE,
            None,
            to_page_rx,
            from_page_tx,
            shutdown.clone(),
        ),
    );
    LinkPorts {
        from_bridges,
        to_bridges,
        to_page: Outgoing::once(to_page_tx),
        from_page,
        // Not this compartment's to see; the bridges' crashes count against a trial
        // image through the monitor.
        live: None,
        grants: LinkGrants {
            // This compartment faces the network: it must never hold the capability
            // that installs root keys. A confirmation is persisted and the boot
            // stage's next `select_boot` raises the counter.
            pluton: crate::updates::PlutonAccess::Unprivileged,
            // An install (or a trial given up) asks the monitor to end the run, so the
            // boot stage boots again; the manifest must grant `restart_for_update`.
            restart: Some(restart),
            // The manifest grants the report ring `read` only.
            reports_writable: false,
        },
    }
}

/// A token the update agent cancels to have the unit boot again: this compartment asks
/// the monitor, which stops every compartment and ends the run with the boot stage's
/// restart code (if the manifest grants it and there is something new to boot).
fn restart_through_the_monitor(
    compartment: &Arc<Compartment>,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> CancellationToken {
    let restart = CancellationToken::new();
    let (asked, stopping, compartment) =
        (restart.clone(), shutdown.clone(), Arc::clone(compartment));
    tasks.spawn_unit("restart request", async move {
        tokio::select! {
            () = stopping.cancelled() => {}
            () = asked.cancelled() => {
                if let Err(error) = compartment.request_restart_for_update() {
                    tracing::error!(%error, "cannot ask the monitor for a restart; the update boots at the next start");
                }
            }
        }
    });
    restart
}

/// The page's ports: it opens no channel (`peers = []`); both others open theirs.
pub fn page(
    compartment: &Arc<Compartment>,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> PagePorts {
    let (bridge_streams_tx, bridge_streams) = mpsc::channel(4);
    let (link_streams_tx, link_streams) = mpsc::channel(4);
    ipc::route_offers(
        Arc::clone(compartment),
        vec![(BRIDGES, bridge_streams_tx), (LINK, link_streams_tx)],
    );
    let (from_bridges_tx, from_bridges) = mpsc::channel::<BridgesToPage>(PAGE_QUEUE);
    // The page says nothing to the bridges; the sending end is held open (a closed
    // one would end every session at once).
    let (nothing_to_bridges, to_bridges) = mpsc::channel::<PageToBridges>(1);
    let sessions = ipc::callee_sessions(
        reports(compartment),
        BRIDGES,
        bridge_streams,
        to_bridges,
        from_bridges_tx,
        shutdown.clone(),
    );
    tasks.spawn_unit("bridges channel", async move {
        sessions.await;
        drop(nothing_to_bridges);
    });
    let (to_link, to_link_rx) = mpsc::channel::<PageToLink>(LINK_PAGE_QUEUE);
    let (from_link_tx, from_link) = mpsc::channel::<LinkToPage>(LINK_PAGE_QUEUE);
    tasks.spawn_unit(
        "link channel",
        ipc::callee_sessions(
            reports(compartment),
            LINK,
            link_streams,
            to_link_rx,
            from_link_tx,
            shutdown.clone(),
        ),
    );
    PagePorts {
        from_bridges,
        from_link,
        to_link,
        live: None,
    }
}

fn reports(compartment: &Arc<Compartment>) -> Arc<dyn PeerReports> {
    Arc::clone(compartment) as Arc<dyn PeerReports>
}

/// Keeps a channel open to `peer`: each new one starts with the role's greeting (once
/// the role has set it), then carries `outgoing` and fills `incoming`.
async fn caller_sessions<Out, In>(
    compartment: Arc<Compartment>,
    peer: &'static str,
    mut greeting: Option<watch::Receiver<Option<Greeting<Out>>>>,
    mut outgoing: mpsc::Receiver<Out>,
    incoming: mpsc::Sender<In>,
    shutdown: CancellationToken,
) where
    Out: serde::Serialize + Send,
    In: Incoming,
{
    if let Some(greeting) = &mut greeting {
        tokio::select! {
            () = shutdown.cancelled() => return,
            set = async { greeting.wait_for(Option::is_some).await.map(drop) } => if set.is_err() {
                // The role never greets (it stopped starting): nothing to carry.
                shutdown.cancelled().await;
                return;
            },
        }
    }
    let reports = reports(&compartment);
    while let Some(stream) = ipc::open(&compartment, peer, &shutdown).await {
        let first = greeting
            .as_ref()
            .and_then(|greeting| greeting.borrow().as_ref().map(|make| make()))
            .unwrap_or_default();
        ipc::session(
            &reports,
            peer,
            stream,
            first,
            &mut outgoing,
            &incoming,
            &shutdown,
        )
        .await;
        tracing::info!(peer, "channel closed; reopening");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use warden_os::monitor::frame::FrameError;

    use super::*;

    struct NoMonitor;

    impl PeerReports for NoMonitor {
        fn malformed_frame(&self, peer: &str, error: &FrameError) {
            panic!("malformed frame from {peer}: {error}");
        }
        fn refused_payload(&self, peer: &str, detail: &str) {
            panic!("refused payload from {peer}: {detail}");
        }
    }

    /// The decided drift, across compartments: the bridges' pump, a peer channel and a
    /// link that takes its readings slowly (a two-frame queue behind the channel, where
    /// the link compartment used to `try_send` and drop). Every reading arrives, in
    /// order: the channel's writer waits for the reader, and the pump for the writer.
    #[tokio::test]
    async fn a_slow_link_across_compartments_loses_no_reading() {
        const COUNT: u32 = 2000;
        let reports: Arc<dyn PeerReports> = Arc::new(NoMonitor);
        let (bridges_end, link_end) = tokio::net::UnixStream::pair().expect("socket pair");
        let shutdown = CancellationToken::new();

        // The bridges' side: the pump fills the role's port, a session drains it.
        let (to_link_tx, mut to_link_rx) = mpsc::channel::<BridgesToLink>(READINGS_QUEUE);
        let (to_link, _greeting) = Outgoing::every_session(to_link_tx);
        let (page_tx, _page_rx) = mpsc::channel(1);
        let pump = tokio::spawn(crate::roles::bridges::forward_samples(
            crate::roles::bridges::tests::samples(COUNT),
            to_link,
            Outgoing::once(page_tx),
            shutdown.clone(),
        ));
        let (from_link_tx, _from_link) = mpsc::channel::<LinkToBridges>(1);
        let (bridges_reports, bridges_stop) = (Arc::clone(&reports), shutdown.clone());
        tokio::spawn(async move {
            ipc::session(
                &bridges_reports,
                LINK,
                bridges_end,
                Vec::new(),
                &mut to_link_rx,
                &from_link_tx,
                &bridges_stop,
            )
            .await;
        });

        // The link's side: a session fills a two-frame queue, read slowly.
        let (from_bridges_tx, mut from_bridges) = mpsc::channel::<BridgesToLink>(2);
        let (_to_bridges, mut to_bridges_rx) = mpsc::channel::<LinkToBridges>(1);
        let link_stop = shutdown.clone();
        tokio::spawn(async move {
            ipc::session(
                &reports,
                BRIDGES,
                link_end,
                Vec::new(),
                &mut to_bridges_rx,
                &from_bridges_tx,
                &link_stop,
            )
            .await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        crate::roles::bridges::tests::readings_in_order(&mut from_bridges, COUNT).await;
        shutdown.cancel();
        pump.await.expect("pump").expect("no failure");
    }
}
