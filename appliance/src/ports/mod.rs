//! Ports: the channels each role (bridges, link, status page) talks to the others on.
//!
//! The appliance is composed once: [`crate::roles`] holds the bridges, the link and
//! the page as functions over their ports. What differs between one process
//! (`warden run --config`, `warden demo`) and sandboxed compartments
//! (`warden run --manifest`) is only which ports they get:
//! - [`in_process`] connects the roles' channels to each other directly;
//! - `crate::compartments::ipc_ports` connects each to the monitor's peer channels
//!   (postcard frames, [`messages`]), reopened whenever a peer restarts.
//!
//! # Backpressure, decided once
//! A reading the bridges took from the equipment must reach the link's durable outbox;
//! the link acknowledges nothing it has not queued, and the product promises that no
//! reading is lost on the way. So readings are *sent and awaited* on bounded channels
//! in both compositions: a slow or restarting link makes the bridges wait (and the
//! pollers behind them, which then poll later), it never makes them drop. The wait is
//! bounded by the channels, not by time.
//!
//! Readings and samples travel in batches, one per burst the bridges read
//! ([`messages::Batches`]): one send, one wake-up of the peer and one frame for many
//! readings. Batches are *bulk* frames: they take at most [`BULK_FRAMES`] slots of a
//! queue ([`Outgoing::send_bulk`]), so that at most `BULK_FRAMES` ×
//! [`BATCH_LEN`](messages::BATCH_LEN) readings wait in one (4096, what the queue of
//! single readings held before), while the rest of the queue keeps room for what
//! must never wait behind them: the bridges' greeting (the policy and up to
//! [`COMMAND_LOG_CAPACITY`](crate::commands::COMMAND_LOG_CAPACITY) unqueued command
//! results, sent before the link reads in one process).
//!
//! Only what the status page shows is best effort (`try_send`): a sample, the bridges'
//! counters, the link's state. The next frame replaces each of them, so a page that is
//! behind (or restarting) loses nothing it would have shown for long, and the page can
//! never hold up telemetry. Frames that find the page's queue full are counted
//! ([`Outgoing::dropped`]).

pub mod messages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use warden_bridges::BridgeHealth;
use warden_link::LinkStatus;

use messages::{BridgesToLink, BridgesToPage, LinkToBridges, LinkToPage, PageToLink};

/// Frames between the bridges and the link (batches of readings, results, reported
/// states): room for the bridges' greeting (see the module docs).
pub const READINGS_QUEUE: usize = 4096;
/// Most bulk frames (batches of readings or samples) waiting in one queue.
pub const BULK_FRAMES: usize = 32;
/// Frames the link sends the bridges (commands, desired states, queued results).
pub const COMMANDS_QUEUE: usize = 64;
/// Frames the bridges send the page (samples and counters).
pub const PAGE_QUEUE: usize = 4096;
/// Frames between the link and the page (states and decisions).
pub const LINK_PAGE_QUEUE: usize = 16;

/// What a peer must hear first, made when it is needed (the current reported policy,
/// the bridge inventory).
pub type Greeting<T> = Arc<dyn Fn() -> Vec<T> + Send + Sync>;

/// The receiving peer went away for good (its role ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer role no longer takes frames")]
pub struct PeerGone;

/// A role's sending end towards one peer.
pub struct Outgoing<T> {
    sender: mpsc::Sender<T>,
    greeting: GreetingDelivery<T>,
    dropped: Arc<AtomicU64>,
}

/// How a greeting reaches the peer.
enum GreetingDelivery<T> {
    /// Sent once, in order with everything else: the peer lives as long as this
    /// process (in-process ports).
    Once,
    /// Kept, and sent first on every channel to the peer: the peer restarts on its
    /// own (IPC ports).
    EverySession(watch::Sender<Option<Greeting<T>>>),
}

impl<T> Outgoing<T> {
    /// A sending end whose greeting is sent once, in line.
    pub fn once(sender: mpsc::Sender<T>) -> Self {
        Self {
            sender,
            greeting: GreetingDelivery::Once,
            dropped: Arc::default(),
        }
    }

    /// A sending end whose greeting goes first on every session; the session side
    /// waits on the returned receiver for it.
    pub fn every_session(sender: mpsc::Sender<T>) -> (Self, watch::Receiver<Option<Greeting<T>>>) {
        let (greeting, waiting) = watch::channel(None);
        (
            Self {
                sender,
                greeting: GreetingDelivery::EverySession(greeting),
                dropped: Arc::default(),
            },
            waiting,
        )
    }

    /// Sets what the peer hears first (see [`GreetingDelivery`]).
    pub async fn greet(&self, greeting: Greeting<T>) -> Result<(), PeerGone> {
        match &self.greeting {
            GreetingDelivery::Once => {
                for message in greeting() {
                    self.send(message).await?;
                }
                Ok(())
            }
            GreetingDelivery::EverySession(slot) => {
                // No session waiting yet is fine: the next one reads it.
                let _ = slot.send(Some(greeting));
                Ok(())
            }
        }
    }

    /// Sends `message`, waiting while the peer's queue is full (backpressure).
    pub async fn send(&self, message: T) -> Result<(), PeerGone> {
        self.sender.send(message).await.map_err(|_| PeerGone)
    }

    /// Sends bulk `message` (a batch of readings) once at most [`BULK_FRAMES`] frames
    /// wait in the peer's queue, waiting until then (backpressure; see the module docs).
    pub async fn send_bulk(&self, message: T) -> Result<(), PeerGone> {
        // Holding all the slots but `BULK_FRAMES - 1` means fewer than `BULK_FRAMES`
        // are taken; one is used, the others go back when `permits` is dropped.
        let room = self
            .sender
            .max_capacity()
            .saturating_sub(BULK_FRAMES - 1)
            .max(1);
        let mut permits = self.sender.reserve_many(room).await.map_err(|_| PeerGone)?;
        permits.next().ok_or(PeerGone)?.send(message);
        Ok(())
    }

    /// Sends bulk `message` (a batch of samples for display) if fewer than
    /// [`BULK_FRAMES`] frames wait in the peer's queue and it has room; counts it
    /// dropped otherwise.
    pub fn send_or_drop_bulk(&self, message: T) {
        let waiting = self.sender.max_capacity() - self.sender.capacity();
        if waiting >= BULK_FRAMES {
            self.count_dropped();
        } else {
            self.send_or_drop(message);
        }
    }

    /// Sends `message` if the peer's queue has room; counts it dropped otherwise.
    /// Only for what the next frame replaces (see the module docs).
    pub fn send_or_drop(&self, message: T) {
        if self.sender.try_send(message).is_err() {
            self.count_dropped();
        }
    }

    fn count_dropped(&self) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::debug!(dropped, "a peer is behind; display frames dropped");
        }
    }

    /// Frames dropped by [`Self::send_or_drop`] since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T> Clone for Outgoing<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            greeting: match &self.greeting {
                GreetingDelivery::Once => GreetingDelivery::Once,
                // Only the role's first end greets; its clones send.
                GreetingDelivery::EverySession(_) => GreetingDelivery::Once,
            },
            dropped: Arc::clone(&self.dropped),
        }
    }
}

/// One bridge's name and its live counters.
type NamedHealth = (String, Arc<Mutex<BridgeHealth>>);

/// The live counters of the bridges and the link, where roles in the same process
/// can see them (in-process ports only): the page and the trial check read them as
/// they change, instead of the once-a-second copies a compartment gets in frames.
#[derive(Clone, Default)]
pub struct LiveCounters {
    bridges: Arc<Mutex<Vec<NamedHealth>>>,
    link: Arc<Mutex<Option<Arc<Mutex<LinkStatus>>>>>,
}

impl LiveCounters {
    /// Publishes the started bridges' counters, by bridge name.
    pub fn publish_bridges(&self, bridges: Vec<NamedHealth>) {
        *self.bridges.lock().unwrap_or_else(PoisonError::into_inner) = bridges;
    }

    /// Publishes the link agent's status.
    pub fn publish_link(&self, status: Arc<Mutex<LinkStatus>>) {
        *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// Bridge `name`'s live counters, if published.
    pub fn bridge(&self, name: &str) -> Option<Arc<Mutex<BridgeHealth>>> {
        self.bridges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(bridge, _)| bridge == name)
            .map(|(_, health)| Arc::clone(health))
    }

    /// The link's live status, if published.
    pub fn link(&self) -> Option<Arc<Mutex<LinkStatus>>> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether every bridge is connected (true before any is published).
    pub fn bridges_connected(&self) -> bool {
        self.bridges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .all(|(_, health)| {
                health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .connected
            })
    }
}

/// How the link may reach pluton and the boot stage.
#[derive(Debug, Clone)]
pub struct LinkGrants {
    /// With or without the provisioning capability.
    pub pluton: crate::updates::PlutonAccess,
    /// Cancelled to ask the boot stage for the next boot (an update was installed, or
    /// its trial given up); `None` where nothing acts on it (a compartment: the new
    /// slot boots at the next restart of the appliance).
    pub restart: Option<tokio_util::sync::CancellationToken>,
    /// Whether the failure-report ring may be written (marks what was uploaded in the
    /// ring); a read-only ring keeps its marks beside the outbox.
    pub reports_writable: bool,
}

/// The bridges' ports.
pub struct BridgesPorts {
    /// Readings, command results, reported states and events for the link.
    pub to_link: Outgoing<BridgesToLink>,
    /// Commands, desired states and "result queued" from the link.
    pub from_link: mpsc::Receiver<LinkToBridges>,
    /// Inventory, counters and samples for the page.
    pub to_page: Outgoing<BridgesToPage>,
    /// Where the counters are published for roles in the same process.
    pub live: Option<LiveCounters>,
}

/// The link's ports.
pub struct LinkPorts {
    /// What the bridges send.
    pub from_bridges: mpsc::Receiver<BridgesToLink>,
    /// Commands and desired states for the bridges.
    pub to_bridges: mpsc::Sender<LinkToBridges>,
    /// The link's state, the update decision and the unit's facts for the page.
    pub to_page: Outgoing<LinkToPage>,
    /// The operator's decisions from the page.
    pub from_page: mpsc::Receiver<PageToLink>,
    /// Where the link's status is published, and the bridges' counters read, for
    /// roles in the same process (without, the bridges count as healthy for the
    /// trial: their crashes count through the monitor).
    pub live: Option<LiveCounters>,
    /// What this process may ask of pluton and the boot stage.
    pub grants: LinkGrants,
}

/// The status page's ports.
pub struct PagePorts {
    /// What the bridges send.
    pub from_bridges: mpsc::Receiver<BridgesToPage>,
    /// What the link sends.
    pub from_link: mpsc::Receiver<LinkToPage>,
    /// The operator's decisions for the link.
    pub to_link: mpsc::Sender<PageToLink>,
    /// The other roles' live counters, if in this process (frames then only fill
    /// what is not live).
    pub live: Option<LiveCounters>,
}

/// Every role's ports, connected to each other in this process.
pub fn in_process(
    restart: tokio_util::sync::CancellationToken,
) -> (BridgesPorts, LinkPorts, PagePorts) {
    let (bridges_to_link, link_from_bridges) = mpsc::channel(READINGS_QUEUE);
    let (link_to_bridges, bridges_from_link) = mpsc::channel(COMMANDS_QUEUE);
    let (bridges_to_page, page_from_bridges) = mpsc::channel(PAGE_QUEUE);
    let (link_to_page, page_from_link) = mpsc::channel(LINK_PAGE_QUEUE);
    let (page_to_link, link_from_page) = mpsc::channel(LINK_PAGE_QUEUE);
    let live = LiveCounters::default();
    (
        BridgesPorts {
            to_link: Outgoing::once(bridges_to_link),
            from_link: bridges_from_link,
            to_page: Outgoing::once(bridges_to_page),
            live: Some(live.clone()),
        },
        LinkPorts {
            from_bridges: link_from_bridges,
            to_bridges: link_to_bridges,
            to_page: Outgoing::once(link_to_page),
            from_page: link_from_page,
            live: Some(live.clone()),
            grants: LinkGrants {
                pluton: crate::updates::PlutonAccess::Privileged,
                restart: Some(restart),
                reports_writable: true,
            },
        },
        PagePorts {
            from_bridges: page_from_bridges,
            from_link: page_from_link,
            to_link: page_to_link,
            live: Some(live),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Batches wait for room among the first [`BULK_FRAMES`] slots of a queue; other
    /// frames still get in beside them, and nothing is reordered or lost.
    #[tokio::test]
    async fn bulk_frames_take_a_bounded_share_of_the_queue() {
        let (sender, mut receiver) = mpsc::channel(BULK_FRAMES + 8);
        let outgoing = Outgoing::once(sender);
        for n in 0..BULK_FRAMES {
            outgoing.send_bulk(n).await.expect("room");
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), outgoing.send_bulk(1000));
        assert!(waiting.await.is_err(), "a bulk frame past the bound waits");
        tokio::time::timeout(Duration::from_millis(50), outgoing.send(2000))
            .await
            .expect("other frames are not held up")
            .expect("sent");
        // Two taken: fewer than `BULK_FRAMES` wait again, and the next batch goes in.
        assert_eq!(receiver.recv().await, Some(0));
        assert_eq!(receiver.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), outgoing.send_bulk(BULK_FRAMES))
            .await
            .expect("room again")
            .expect("sent");
        let rest: Vec<usize> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        let mut expected: Vec<usize> = (2..BULK_FRAMES).collect();
        expected.extend([2000, BULK_FRAMES]);
        assert_eq!(rest, expected);
    }

    /// Display batches are dropped, and counted, once [`BULK_FRAMES`] frames wait.
    #[test]
    fn display_batches_beyond_the_bound_are_dropped_and_counted() {
        let (sender, _receiver) = mpsc::channel(BULK_FRAMES * 2);
        let outgoing = Outgoing::once(sender);
        for n in 0..BULK_FRAMES + 5 {
            outgoing.send_or_drop_bulk(n);
        }
        assert_eq!(outgoing.dropped(), 5);
        // A frame the next one replaces still finds room beside them.
        outgoing.send_or_drop(0);
        assert_eq!(outgoing.dropped(), 5);
    }

    /// A queue smaller than the bound still takes one batch at a time.
    #[tokio::test]
    async fn a_small_queue_takes_bulk_frames_one_by_one() {
        let (sender, mut receiver) = mpsc::channel(2);
        let outgoing = Outgoing::once(sender);
        outgoing.send_bulk(1).await.expect("room");
        outgoing.send_bulk(2).await.expect("room");
        let waiting = tokio::time::timeout(Duration::from_millis(50), outgoing.send_bulk(3));
        assert!(waiting.await.is_err(), "a full queue holds the sender back");
        assert_eq!(receiver.recv().await, Some(1));
        outgoing.send_bulk(3).await.expect("room");
        drop(receiver);
        assert_eq!(outgoing.send_bulk(4).await, Err(PeerGone));
    }
}
