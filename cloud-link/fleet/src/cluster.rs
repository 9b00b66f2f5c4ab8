//! Several `warden-fleet` instances on one PostgreSQL: what one instance must know of
//! the others, kept in the database (`store/cluster.rs`).
//!
//! - **Instances** register a random ID and renew a heartbeat every
//!   [`HEARTBEAT_EVERY`] (the database's clock, so machines' clocks need not agree).
//!   The leader forgets an instance silent for [`DEAD_AFTER`]: its devices go offline
//!   and its queue is dropped (what a dead session loses on one instance too).
//! - **Presence**: each session that starts or ends here is written, with the key the
//!   device authenticated with, so any instance knows where a device is, whether it
//!   is online (the dashboard's count is fleet-wide) and can verify its quotes. A
//!   session's end removes only that session's row, so a device that already
//!   reconnected elsewhere stays present.
//! - **Delivery**: a message for a device whose session another instance holds
//!   (command, twin, attestation challenge, verdict, update offer) is queued in
//!   `device_deliveries` for that instance, which takes its rows every
//!   [`POLL_EVERY`] with `DELETE … RETURNING` (each taken once) and routes them to the
//!   session. A polled table rather than `LISTEN/NOTIFY`: a notification is lost while
//!   the listener's connection is down and carries no state, so a queue table would be
//!   needed beside it anyway; the table alone is the whole truth, survives a
//!   reconnect, and costs one indexed query per instance per poll. The price is up to
//!   [`POLL_EVERY`] of latency. A quote answering a challenge another instance sent
//!   goes back to that instance the same way, so the operator's call that waits for it
//!   gets it.
//! - **Leadership**: one instance holds a session-level advisory lock on a connection
//!   of its own and is the leader: it steps rollouts, prunes telemetry and reaps dead
//!   instances. When it dies its connection closes, PostgreSQL releases the lock, and
//!   another instance takes it at its next try ([`LEADER_POLL`]). While a leader
//!   cannot reach the database it stops leading at its next check.
//!
//! A single instance on SQLite has no cluster: it is always the leader and everything
//! stays in process, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rumqttc::Publish;
use sqlx::Row as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warden_wire::topics::{AttestationChallenge, AttestationQuote, from_hex, to_hex};

use crate::broker::{ClusterLink, LinkFuture, LocalPublisher};
use crate::store::Store;

/// How often an instance renews its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A heartbeat older than this: the instance is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// How often an instance takes the messages queued for it.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// How often a follower tries to become leader, and the leader checks it still is.
pub const LEADER_POLL: Duration = Duration::from_millis(500);
/// The advisory lock the leader holds (`pg_try_advisory_lock`), "WARDENLD".
const LEADER_LOCK: i64 = 0x5741_5244_454E_4C44;
/// Messages taken from the queue at once.
const TAKE_AT_ONCE: i64 = 256;
/// The instruction (a `$` topic no device can use) to end a device's session here.
const DISCONNECT_TOPIC: &str = "$warden/disconnect";
/// Challenges forwarded here whose quote goes back to the instance that sent them,
/// at most (the oldest are forgotten first; a forgotten one is verified here).
const MAX_REMOTE_CHALLENGES: usize = 65_536;

/// Whether this instance leads: steps rollouts and prunes telemetry.
#[derive(Debug, Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// The only instance (SQLite): always the leader.
    pub fn sole() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// A follower until it takes the lock.
    fn follower() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// Whether this instance leads now.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, leading: bool) {
        if self.0.swap(leading, Ordering::AcqRel) != leading {
            if leading {
                tracing::info!("this fleet instance now leads (rollouts, telemetry pruning)");
            } else {
                tracing::warn!("this fleet instance no longer leads");
            }
        }
    }
}

#[derive(Debug)]
enum PresenceEvent {
    Started {
        device: String,
        session: u64,
        key_hex: String,
    },
    Ended {
        device: String,
        session: u64,
    },
}

/// This instance's membership of the cluster: the broker's [`ClusterLink`].
#[derive(Debug)]
pub struct Cluster {
    /// This instance's ID (random, new at every start).
    pub instance_id: String,
    store: Store,
    events: mpsc::UnboundedSender<PresenceEvent>,
    /// Challenges another instance sent through this one, by (device, nonce): the
    /// sender's ID and when.
    remote_challenges: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// A started cluster membership.
pub struct Membership {
    /// The link the broker uses.
    pub cluster: Arc<Cluster>,
    /// Whether this instance leads.
    pub leadership: Leadership,
    /// Ends (leaving the cluster) after shutdown.
    pub task: JoinHandle<()>,
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    // Unique enough among a handful of instances; a failed source still gives the
    // process ID and time.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        bytes = crate::clock::now_ms().to_be_bytes();
        for (byte, pid) in bytes.iter_mut().zip(std::process::id().to_be_bytes()) {
            *byte ^= pid;
        }
    }
    to_hex(&bytes)
}

impl Cluster {
    /// Joins the cluster on `store` (PostgreSQL) as `instance_id` (default: random):
    /// registers this instance, links
    /// `devices`' broker, and runs presence, heartbeats, delivery and leadership until
    /// `shutdown`, then leaves.
    pub async fn join(
        store: Store,
        instance_id: Option<String>,
        devices: LocalPublisher,
        shutdown: CancellationToken,
    ) -> Result<Membership, crate::store::StoreError> {
        let instance_id = instance_id.unwrap_or_else(random_id);
        store.register_instance(&instance_id).await?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            instance_id: instance_id.clone(),
            store: store.clone(),
            events,
            remote_challenges: Mutex::default(),
        });
        devices.join_cluster(Arc::clone(&cluster) as Arc<dyn ClusterLink>);
        let leadership = Leadership::follower();
        tracing::info!(instance = %instance_id, "fleet instance joined the cluster");
        let tasks = [
            tokio::spawn(write_presence(
                store.clone(),
                instance_id.clone(),
                events_rx,
            )),
            tokio::spawn(heartbeats(
                Arc::clone(&cluster),
                devices.clone(),
                leadership.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(take_deliveries(
                Arc::clone(&cluster),
                devices,
                shutdown.clone(),
            )),
            tokio::spawn(lead(store.clone(), leadership.clone(), shutdown.clone())),
        ];
        let task = tokio::spawn(async move {
            shutdown.cancelled().await;
            for task in tasks.into_iter().skip(1) {
                let _ = task.await;
            }
            if let Err(error) = store.leave_cluster(&instance_id).await {
                tracing::warn!(%error, "cannot leave the cluster (the others reap this instance)");
            }
        });
        Ok(Membership {
            cluster,
            leadership,
            task,
        })
    }

    fn remember_challenge(&self, device: &str, payload: &[u8], origin: &str) {
        let Ok(challenge) = serde_json::from_slice::<AttestationChallenge>(payload) else {
            return;
        };
        let mut remote = self
            .remote_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        remote.retain(|_, (_, at)| at.elapsed() < crate::attestation::NONCE_LIFETIME);
        if remote.len() >= MAX_REMOTE_CHALLENGES {
            return;
        }
        remote.insert(
            (device.to_owned(), challenge.nonce),
            (origin.to_owned(), Instant::now()),
        );
    }
}

impl ClusterLink for Cluster {
    fn session_started(&self, device: &str, session: u64, public_key: Option<&[u8]>) {
        let _ = self.events.send(PresenceEvent::Started {
            device: device.to_owned(),
            session,
            key_hex: public_key.map(to_hex).unwrap_or_default(),
        });
    }

    fn session_ended(&self, device: &str, session: u64) {
        let _ = self.events.send(PresenceEvent::Ended {
            device: device.to_owned(),
            session,
        });
    }

    fn divert(&self, device: &str, publish: &Publish) -> bool {
        if !publish.topic.ends_with("/attestation/quote") {
            return false;
        }
        let Ok(quote) = serde_json::from_slice::<AttestationQuote>(&publish.payload) else {
            return false;
        };
        let origin = self
            .remote_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(device.to_owned(), quote.nonce));
        let Some((origin, _)) = origin else {
            return false;
        };
        let (store, me) = (self.store.clone(), self.instance_id.clone());
        let (topic, payload) = (publish.topic.clone(), publish.payload.to_vec());
        tokio::spawn(async move {
            if let Err(error) = store
                .queue_for_instance(&origin, &me, &topic, &payload)
                .await
            {
                tracing::error!(%error, origin, "cannot pass a quote back to the instance that challenged");
            }
        });
        true
    }

    fn forward<'a>(
        &'a self,
        device: &'a str,
        topic: &'a str,
        payload: &'a [u8],
    ) -> LinkFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self
                .store
                .queue_for_device(device, &self.instance_id, topic, payload)
                .await
            {
                tracing::error!(device, %error, "cannot queue a message for another instance");
            }
        })
    }

    fn device_key<'a>(&'a self, device: &'a str) -> LinkFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            match self.store.presence(device).await {
                Ok(presence) => presence.and_then(|p| from_hex(&p.public_key_hex)),
                Err(error) => {
                    tracing::error!(device, %error, "cannot read where a device is connected");
                    None
                }
            }
        })
    }

    fn online_devices(&self) -> LinkFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.store.online_devices().await.unwrap_or_else(|error| {
                tracing::error!(%error, "cannot read the devices online");
                Vec::new()
            })
        })
    }

    fn disconnect<'a>(&'a self, device: &'a str) -> LinkFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self
                .store
                .queue_for_device(
                    device,
                    &self.instance_id,
                    DISCONNECT_TOPIC,
                    device.as_bytes(),
                )
                .await
            {
                tracing::error!(device, %error, "cannot ask another instance to end a session");
            }
        })
    }
}

/// Writes presence changes in the order sessions started and ended.
async fn write_presence(
    store: Store,
    instance: String,
    mut events: mpsc::UnboundedReceiver<PresenceEvent>,
) {
    while let Some(event) = events.recv().await {
        let mut attempts = 0;
        loop {
            let written = match &event {
                PresenceEvent::Started {
                    device,
                    session,
                    key_hex,
                } => {
                    store
                        .set_present(device, &instance, session_number(*session), key_hex)
                        .await
                }
                PresenceEvent::Ended { device, session } => {
                    store
                        .set_absent(device, &instance, session_number(*session))
                        .await
                }
            };
            match written {
                Ok(()) => break,
                Err(error) if attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(%error, attempts, "cannot write presence; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write presence (the heartbeat rewrites it if this instance is reaped)");
                    break;
                }
            }
        }
    }
}

fn session_number(session: u64) -> i64 {
    i64::try_from(session).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Renews the heartbeat (registering again, with every live session, if another
/// instance declared this one dead); the leader also reaps dead instances.
async fn heartbeats(
    cluster: Arc<Cluster>,
    devices: LocalPublisher,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let store = &cluster.store;
        match store.heartbeat(&cluster.instance_id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "this instance was declared dead; registering again with its sessions"
                );
                if store.register_instance(&cluster.instance_id).await.is_ok() {
                    for (device, session) in devices.live_sessions() {
                        let key = devices.device_key(&device);
                        cluster.session_started(&device, session, key.as_deref());
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot renew the heartbeat"),
        }
        if leadership.is_leader() {
            match store.reap_dead_instances(millis(DEAD_AFTER)).await {
                Ok(dead) if dead.is_empty() => {}
                Ok(dead) => tracing::warn!(
                    ?dead,
                    "fleet instances stopped beating: their devices are offline"
                ),
                Err(error) => tracing::warn!(%error, "cannot reap dead instances"),
            }
        }
    }
}

/// Takes the messages queued for this instance and routes them to its sessions.
async fn take_deliveries(
    cluster: Arc<Cluster>,
    devices: LocalPublisher,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let taken = match cluster
            .store
            .take_deliveries(&cluster.instance_id, TAKE_AT_ONCE)
            .await
        {
            Ok(taken) => {
                failing = false;
                taken
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(%error, "cannot take messages queued for this instance (logged once)");
                }
                Vec::new()
            }
        };
        let full = taken.len() >= usize::try_from(TAKE_AT_ONCE).unwrap_or(usize::MAX);
        for delivery in taken {
            if delivery.topic == DISCONNECT_TOPIC {
                devices.disconnect_here(&String::from_utf8_lossy(&delivery.payload));
                continue;
            }
            if delivery.topic.ends_with("/attestation/challenge")
                && let Some(device) = warden_wire::topics::device_of_topic(&delivery.topic)
            {
                cluster.remember_challenge(device, &delivery.payload, &delivery.origin);
            }
            devices.deliver_here(delivery.topic, delivery.payload).await;
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

/// Holds the leader lock while it can, tries to take it while it cannot.
async fn lead(store: Store, leadership: Leadership, shutdown: CancellationToken) {
    loop {
        let mut connection = match store.dedicated_connection().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "cannot connect for the leader lock");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(LEADER_POLL) => continue,
                }
            }
        };
        loop {
            let checked = if leadership.is_leader() {
                sqlx::query("SELECT 1")
                    .execute(&mut connection)
                    .await
                    .map(|_| true)
            } else {
                sqlx::query("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut connection)
                    .await
                    .and_then(|row| row.try_get::<bool, _>(0))
            };
            match checked {
                Ok(leading) => leadership.set(leading),
                Err(error) => {
                    tracing::warn!(%error, "lost the connection of the leader lock");
                    leadership.set(false);
                    break;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Closing the connection releases the lock at once.
                    leadership.set(false);
                    let _ = sqlx::Connection::close(connection).await;
                    return;
                }
                () = tokio::time::sleep(LEADER_POLL) => {}
            }
        }
    }
}
