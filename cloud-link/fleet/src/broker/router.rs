//! Routes published messages to the sessions and local subscribers whose filters match.
//!
//! Subscriptions whose filter names one device (`warden/v1/devices/<id>/…`, what every
//! device session subscribes to: the ACL confines it to its own subtree) are indexed by
//! that device, so routing a message costs the filters of its device plus the few
//! wildcard ones (the fleet's own), not one match per connected session. A session
//! holds each filter once (subscribing again replaces it) and receives each message
//! once, however many of its filters match; the session bounds its filter count
//! (`session::MAX_SUBSCRIPTIONS_PER_SESSION`), so the scan under the read lock is short.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use rumqttc::Publish;
use rumqttc::mqttbytes::matches;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_wire::topics::TOPIC_ROOT;

/// Where a subscription's messages go.
#[derive(Debug, Clone)]
enum Target {
    /// A device session: best effort (a slow device must not stall the broker).
    Session(u64, mpsc::Sender<Publish>),
    /// The fleet itself: waits for room, so nothing is dropped before ingest.
    Local(mpsc::Sender<Publish>),
}

#[derive(Debug)]
struct Subscription {
    filter: String,
    target: Target,
}

/// Subscriptions, indexed by the device their filter names.
#[derive(Debug, Default)]
struct Subscriptions {
    /// Filters with a literal device segment, by that device.
    by_device: HashMap<String, Vec<Subscription>>,
    /// Every other filter (a wildcard device segment, another root).
    other: Vec<Subscription>,
}

/// The device segment of a topic or filter under [`TOPIC_ROOT`]
/// (`warden/v1/devices/<device>[/…]`); `None` elsewhere, and for a filter whose
/// device segment is a wildcard.
fn device_segment(topic_or_filter: &str) -> Option<&str> {
    let rest = topic_or_filter
        .strip_prefix(TOPIC_ROOT)?
        .strip_prefix('/')?;
    let device = rest.split('/').next()?;
    (!device.is_empty() && !device.contains(['+', '#'])).then_some(device)
}

/// Subscriptions of every session and of the fleet.
#[derive(Debug, Default)]
pub struct Router {
    subscriptions: RwLock<Subscriptions>,
    /// Public keys (uncompressed SEC1) of connected devices, from their certificates.
    device_keys: RwLock<std::collections::BTreeMap<String, Vec<u8>>>,
    /// The live session of each device, to end it when its certificate is revoked.
    device_sessions: RwLock<std::collections::BTreeMap<String, (u64, CancellationToken)>>,
    next_session: AtomicU64,
    dropped: AtomicU64,
    /// Told the ID of each device that can now be challenged (see
    /// [`Router::device_listens_for_challenges`]).
    challengeable: std::sync::OnceLock<mpsc::Sender<String>>,
    /// Told the ID of each device whose session subscribed to its release-key
    /// revocation list topic (see [`Router::device_listens_for_revocation_lists`]).
    revocation_listeners: std::sync::OnceLock<mpsc::Sender<String>>,
    /// The other fleet instances on the same database, if any (see [`ClusterLink`]).
    cluster: std::sync::OnceLock<std::sync::Arc<dyn ClusterLink>>,
}

/// What a broker shares with other fleet instances (`crate::cluster` implements it;
/// none for a single instance). Calls are quick: slow work is the link's own task.
pub trait ClusterLink: Send + Sync + std::fmt::Debug {
    /// `device`'s session `session` is live here (it authenticated with `public_key`).
    fn session_started(&self, device: &str, session: u64, public_key: Option<&[u8]>);
    /// `device`'s session `session` here ended.
    fn session_ended(&self, device: &str, session: u64);
    /// A publish from `device` that belongs to another instance: the link takes it
    /// (`true`) or it is routed here (`false`).
    fn divert(&self, device: &str, publish: &Publish) -> bool;
    /// Delivers `topic`/`payload` to `device`'s session on whichever other instance
    /// holds it (nothing if none does).
    fn forward<'a>(
        &'a self,
        device: &'a str,
        topic: &'a str,
        payload: &'a [u8],
    ) -> LinkFuture<'a, ()>;
    /// The key `device` authenticated with, wherever its session is.
    fn device_key<'a>(&'a self, device: &'a str) -> LinkFuture<'a, Option<Vec<u8>>>;
    /// The devices with a live session on any instance, sorted.
    fn online_devices(&self) -> LinkFuture<'_, Vec<String>>;
    /// Ends `device`'s session on whichever other instance holds it.
    fn disconnect<'a>(&'a self, device: &'a str) -> LinkFuture<'a, ()>;
}

/// What the asynchronous parts of [`ClusterLink`] return.
pub type LinkFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Messages for a local (in-process) subscriber.
pub type LocalSubscription = mpsc::Receiver<Publish>;

impl Router {
    /// A fresh session number.
    pub fn new_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes the fleet itself.
    pub fn subscribe_local(&self, filter: &str, capacity: usize) -> LocalSubscription {
        let (tx, rx) = mpsc::channel(capacity);
        self.add(filter, Target::Local(tx));
        rx
    }

    /// Subscribes a session to `filter` (once: subscribing to it again replaces it).
    pub fn subscribe_session(&self, session: u64, filter: &str, tx: mpsc::Sender<Publish>) {
        self.unsubscribe_session(session, filter);
        self.add(filter, Target::Session(session, tx));
    }

    /// Removes `session`'s subscription to exactly `filter`; whether it had one.
    pub fn unsubscribe_session(&self, session: u64, filter: &str) -> bool {
        let this = |s: &Subscription| {
            s.filter == filter && matches!(s.target, Target::Session(id, _) if id == session)
        };
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let list = match device_segment(filter) {
            Some(device) => match subscriptions.by_device.get_mut(device) {
                Some(list) => list,
                None => return false,
            },
            None => &mut subscriptions.other,
        };
        let before = list.len();
        list.retain(|s| !this(s));
        let removed = list.len() != before;
        if let Some(device) = device_segment(filter)
            && subscriptions
                .by_device
                .get(device)
                .is_some_and(Vec::is_empty)
        {
            subscriptions.by_device.remove(device);
        }
        removed
    }

    /// Shares sessions with other instances through `link` (set once; later calls are
    /// ignored).
    pub fn set_cluster(&self, link: std::sync::Arc<dyn ClusterLink>) {
        let _ = self.cluster.set(link);
    }

    /// The cluster link, if this broker is one of several instances.
    pub fn cluster(&self) -> Option<&std::sync::Arc<dyn ClusterLink>> {
        self.cluster.get()
    }

    /// Whether `device` has a live session on this broker.
    pub fn holds_session(&self, device: &str) -> bool {
        self.device_sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(device)
    }

    /// Routes a publish a device sent, unless another instance takes it
    /// ([`ClusterLink::divert`]).
    pub async fn route_from_device(&self, device: &str, publish: &Publish) {
        if let Some(link) = self.cluster.get()
            && link.divert(device, publish)
        {
            return;
        }
        self.route(publish).await;
    }

    /// Records `device`'s live session; `stop` ends it.
    pub fn register_device_session(&self, device: &str, session: u64, stop: CancellationToken) {
        if let Some(link) = self.cluster.get() {
            link.session_started(device, session, self.device_key(device).as_deref());
        }
        let previous = self
            .device_sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned(), (session, stop));
        // MQTT 3.1.1 §3.1.4: a second connection with the same client ID ends the first.
        if let Some((_, previous)) = previous {
            previous.cancel();
        }
    }

    /// Ends `device`'s live session, if any.
    pub fn disconnect_device(&self, device: &str) {
        let removed = self
            .device_sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(device);
        if let Some((session, stop)) = removed {
            stop.cancel();
            if let Some(link) = self.cluster.get() {
                link.session_ended(device, session);
            }
        }
    }

    /// Devices with a live session.
    pub fn connected_devices(&self) -> usize {
        self.device_sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Each device with a live session and its session number.
    pub fn live_sessions(&self) -> Vec<(String, u64)> {
        self.device_sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(device, (session, _))| (device.clone(), *session))
            .collect()
    }

    /// The devices with a live session, by ID.
    pub fn connected_device_ids(&self) -> Vec<String> {
        self.device_sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Sends the IDs of devices that become challengeable to `tx` (set once; later
    /// calls are ignored).
    pub fn notify_challengeable(&self, tx: mpsc::Sender<String>) {
        let _ = self.challengeable.set(tx);
    }

    /// `device`'s session is established and subscribed to its attestation challenges:
    /// the earliest moment a challenge reaches it (delivery is QoS 0, nothing retained).
    pub fn device_listens_for_challenges(&self, device: &str) {
        if let Some(tx) = self.challengeable.get()
            && tx.try_send(device.to_owned()).is_err()
        {
            tracing::warn!(
                device,
                "attestation queue full: the schedule will challenge it"
            );
        }
    }

    /// Sends the IDs of devices that subscribe to their release-key revocation list
    /// topic to `tx` (set once; later calls are ignored).
    pub fn notify_revocation_listeners(&self, tx: mpsc::Sender<String>) {
        let _ = self.revocation_listeners.set(tx);
    }

    /// `device`'s session subscribed to its release-key revocation list topic: the
    /// earliest moment the list reaches it (QoS 0, nothing retained).
    pub fn device_listens_for_revocation_lists(&self, device: &str) {
        if let Some(tx) = self.revocation_listeners.get()
            && tx.try_send(device.to_owned()).is_err()
        {
            tracing::warn!(
                device,
                "revocation list queue full: the device gets the list with its next twin report or connect"
            );
        }
    }

    /// Removes every subscription of a session.
    pub fn remove_session(&self, session: u64) {
        let mut ended = Vec::new();
        self.device_sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|device, (id, _)| {
                let this = *id == session;
                if this {
                    ended.push(device.clone());
                }
                !this
            });
        if let Some(link) = self.cluster.get() {
            for device in ended {
                link.session_ended(&device, session);
            }
        }
        let not_this_session =
            |s: &Subscription| !matches!(s.target, Target::Session(id, _) if id == session);
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subscriptions.other.retain(not_this_session);
        subscriptions.by_device.retain(|_, list| {
            list.retain(not_this_session);
            !list.is_empty()
        });
    }

    /// Records the public key a device authenticated with.
    pub fn record_device_key(&self, device: &str, public_key: Vec<u8>) {
        self.device_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned(), public_key);
    }

    /// The public key a device last authenticated with.
    pub fn device_key(&self, device: &str) -> Option<Vec<u8>> {
        self.device_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .cloned()
    }

    /// Messages to sessions dropped because the session was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Delivers `publish` to every matching subscriber.
    pub async fn route(&self, publish: &Publish) {
        let targets: Vec<Target> = {
            let subscriptions = self
                .subscriptions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let of_device = device_segment(&publish.topic)
                .and_then(|device| subscriptions.by_device.get(device))
                .map_or(&[][..], Vec::as_slice);
            // One delivery per session, however many of its filters match
            // (overlapping filters such as `…/#` and `…/ack`).
            let mut sessions = Vec::new();
            of_device
                .iter()
                .chain(&subscriptions.other)
                .filter(|s| matches(&publish.topic, &s.filter))
                .filter(|s| match s.target {
                    Target::Session(id, _) if sessions.contains(&id) => false,
                    Target::Session(id, _) => {
                        sessions.push(id);
                        true
                    }
                    Target::Local(_) => true,
                })
                .map(|s| s.target.clone())
                .collect()
        };
        for target in targets {
            match target {
                Target::Local(tx) => {
                    let _ = tx.send(publish.clone()).await;
                }
                Target::Session(_, tx) => {
                    if tx.try_send(publish.clone()).is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn add(&self, filter: &str, target: Target) {
        let subscription = Subscription {
            filter: filter.to_owned(),
            target,
        };
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match device_segment(filter) {
            Some(device) => subscriptions
                .by_device
                .entry(device.to_owned())
                .or_default()
                .push(subscription),
            None => subscriptions.other.push(subscription),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    fn publish(topic: &str) -> Publish {
        Publish::new(topic, QoS::AtMostOnce, b"x".to_vec())
    }

    fn received(rx: &mut mpsc::Receiver<Publish>) -> Vec<String> {
        let mut topics = Vec::new();
        while let Ok(p) = rx.try_recv() {
            topics.push(p.topic);
        }
        topics
    }

    #[test]
    fn device_segments_of_topics_and_filters() {
        assert_eq!(device_segment("warden/v1/devices/wd-1/ack"), Some("wd-1"));
        assert_eq!(device_segment("warden/v1/devices/wd-1"), Some("wd-1"));
        assert_eq!(device_segment("warden/v1/devices/+/telemetry"), None);
        assert_eq!(device_segment("warden/v1/devices/#"), None);
        assert_eq!(device_segment("warden/v1/devices//ack"), None);
        assert_eq!(device_segment("other/wd-1/ack"), None);
    }

    #[tokio::test]
    async fn messages_reach_their_device_and_the_wildcard_subscribers_only() {
        let router = Router::default();
        let (one_tx, mut one) = mpsc::channel(8);
        let (two_tx, mut two) = mpsc::channel(8);
        let a = router.new_session();
        let b = router.new_session();
        router.subscribe_session(a, "warden/v1/devices/wd-1/#", one_tx);
        router.subscribe_session(b, "warden/v1/devices/wd-2/ack", two_tx);
        let mut fleet = router.subscribe_local("warden/v1/devices/+/telemetry", 8);
        let mut everything = router.subscribe_local("#", 8);

        for topic in [
            "warden/v1/devices/wd-1/ack",
            "warden/v1/devices/wd-1",
            "warden/v1/devices/wd-2/ack",
            "warden/v1/devices/wd-2/telemetry",
            "warden/v1/devices/wd-3/ack",
            "elsewhere",
        ] {
            router.route(&publish(topic)).await;
        }
        assert_eq!(
            received(&mut one),
            ["warden/v1/devices/wd-1/ack", "warden/v1/devices/wd-1"]
        );
        assert_eq!(received(&mut two), ["warden/v1/devices/wd-2/ack"]);
        assert_eq!(received(&mut fleet), ["warden/v1/devices/wd-2/telemetry"]);
        assert_eq!(received(&mut everything).len(), 6);

        // A session's subscriptions go with it; the others stay.
        router.remove_session(a);
        router.route(&publish("warden/v1/devices/wd-1/ack")).await;
        router.route(&publish("warden/v1/devices/wd-2/ack")).await;
        assert!(received(&mut one).is_empty());
        assert_eq!(received(&mut two), ["warden/v1/devices/wd-2/ack"]);
    }

    #[tokio::test]
    async fn a_session_gets_one_copy_and_unsubscribing_stops_delivery() {
        let router = Router::default();
        let (tx, mut rx) = mpsc::channel(64);
        let session = router.new_session();
        // The same filter many times, and overlapping ones: one copy per message.
        for _ in 0..1000 {
            router.subscribe_session(session, "warden/v1/devices/wd-1/commands/#", tx.clone());
        }
        router.subscribe_session(session, "warden/v1/devices/wd-1/#", tx.clone());
        router.subscribe_session(session, "warden/v1/devices/wd-1/commands/run", tx.clone());
        router
            .route(&publish("warden/v1/devices/wd-1/commands/run"))
            .await;
        assert_eq!(received(&mut rx).len(), 1);

        assert!(router.unsubscribe_session(session, "warden/v1/devices/wd-1/commands/#"));
        assert!(!router.unsubscribe_session(session, "warden/v1/devices/wd-1/commands/#"));
        assert!(router.unsubscribe_session(session, "warden/v1/devices/wd-1/#"));
        router
            .route(&publish("warden/v1/devices/wd-1/commands/other"))
            .await;
        assert!(received(&mut rx).is_empty());
        assert!(router.unsubscribe_session(session, "warden/v1/devices/wd-1/commands/run"));
        router
            .route(&publish("warden/v1/devices/wd-1/commands/run"))
            .await;
        assert!(received(&mut rx).is_empty());
        // Nothing is left indexed for the device.
        assert!(
            router
                .subscriptions
                .read()
                .expect("lock")
                .by_device
                .is_empty()
        );
    }
}
