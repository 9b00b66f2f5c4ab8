//! The fleet's embedded MQTT 3.1.1 broker: TLS with client certificates, per-device ACLs.
//!
//! Deliberately small: the fleet needs QoS 0/1 publish, subscribe, keep-alive and
//! per-device topic isolation, and nothing that would grow its memory (no retained
//! messages, no persistent sessions, no QoS 2). The packet codec is rumqttc's, the
//! same one the device uses. A device's identity is the common name of its client
//! certificate; it may publish and subscribe only under `warden/v1/devices/{id}/`.

mod acl;
mod admission;
mod limits;
mod router;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use acl::{DeviceAcl, device_id_from_certificate};
pub use admission::{Admission, AdmissionFuture, AdmissionRefused, AdmitAuthenticated};
pub use limits::{BrokerConfig, BrokerLimitError, BrokerLimits, SlotRefused};
pub use router::{ClusterLink, LinkFuture, LocalSubscription, Router};
pub use session::{
    DELIVERY_QUEUE, MAX_FILTER_LENGTH, MAX_PACKET_SIZE, MAX_SUBSCRIPTIONS_PER_SESSION,
};

use limits::ConnectionSlots;
use warden_listeners::AcceptBackoff;

/// A running broker.
pub struct Broker {
    router: Arc<Router>,
    address: SocketAddr,
}

impl Broker {
    /// Binds `listen` and accepts TLS connections authenticated by `tls` until
    /// `shutdown`, within the default [`BrokerLimits`].
    pub async fn start(
        listen: &str,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        Self::start_with(
            listen,
            tls,
            BrokerLimits::default(),
            Arc::new(AdmitAuthenticated),
            shutdown,
        )
        .await
    }

    /// [`Broker::start`] within `limits`, asking `admission` after each CONNECT.
    pub async fn start_with(
        listen: &str,
        tls: Arc<rustls::ServerConfig>,
        limits: BrokerLimits,
        admission: Arc<dyn Admission>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let router = Arc::new(Router::default());
        let acceptor = TlsAcceptor::from(tls);
        let accept_router = Arc::clone(&router);
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            accept_router,
            limits,
            admission,
            shutdown,
        ));
        tracing::info!(%address, "mqtt broker listening (tls, client certificates required)");
        Ok(Self { router, address })
    }

    /// The address the broker listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A handle the fleet publishes to devices with.
    pub fn publisher(&self) -> LocalPublisher {
        LocalPublisher(Arc::clone(&self.router))
    }

    /// IDs of devices whose session is established and subscribed to their attestation
    /// challenges, as it happens (a full queue drops the notice; the schedule catches up).
    pub fn challengeable_devices(&self, capacity: usize) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        self.router.notify_challengeable(tx);
        rx
    }

    /// IDs of devices whose session subscribed to their release-key revocation list
    /// topic, as it happens (a full queue drops the notice; the device's next twin
    /// report or connect catches up).
    pub fn revocation_list_listeners(
        &self,
        capacity: usize,
    ) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        self.router.notify_revocation_listeners(tx);
        rx
    }

    /// Subscribes the fleet itself to `filter`.
    pub fn subscribe_local(&self, filter: &str, capacity: usize) -> LocalSubscription {
        self.router.subscribe_local(filter, capacity)
    }
}

/// Accepts connections until `shutdown`: each gets a slot (or is closed at once), and
/// failed accepts back off and are logged once per episode.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Arc<Router>,
    limits: BrokerLimits,
    admission: Arc<dyn Admission>,
    shutdown: CancellationToken,
) {
    let slots = ConnectionSlots::new(limits.clone());
    let mut backoff = AcceptBackoff::new("fleet mqtt broker");
    // Refusals are logged once per episode too: a flood of them is one event.
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                let wait = backoff.failed(&error);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let slot = match slots.admit(peer.ip()) {
            Ok(slot) => {
                refusing = false;
                slot
            }
            Err(refused) => {
                if !std::mem::replace(&mut refusing, true) {
                    tracing::warn!(%peer, %refused, "broker refuses connections (logged once until one is admitted)");
                }
                drop(stream);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = Arc::clone(&router);
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let admission = Arc::clone(&admission);
        tokio::spawn(async move {
            let broker = session::SessionContext {
                limits: &limits,
                router,
                admission: admission.as_ref(),
            };
            session::serve(stream, peer, slot, acceptor, broker, shutdown).await;
        });
    }
}

/// Publishes from the fleet itself to the devices subscribed.
#[derive(Clone)]
pub struct LocalPublisher(Arc<Router>);

impl LocalPublisher {
    /// Publishes through `router`: a broker's ([`Broker::publisher`]), or a test's own.
    pub fn new(router: Arc<Router>) -> Self {
        Self(router)
    }

    /// Makes this broker one of several fleet instances sharing sessions through
    /// `link` (set once).
    pub fn join_cluster(&self, link: Arc<dyn ClusterLink>) {
        self.0.set_cluster(link);
    }

    /// The public key `device` authenticated with (since the broker started), on this
    /// broker only.
    pub fn device_key(&self, device: &str) -> Option<Vec<u8>> {
        self.0.device_key(device)
    }

    /// The public key of `device`'s live session: here, or on another instance.
    pub async fn live_device_key(&self, device: &str) -> Option<Vec<u8>> {
        if self.0.holds_session(device) {
            return self.0.device_key(device);
        }
        match self.0.cluster() {
            Some(link) => link.device_key(device).await,
            None => self.0.device_key(device),
        }
    }

    /// Ends `device`'s live session (after its certificate was revoked), here or on
    /// the instance holding it.
    pub fn disconnect(&self, device: &str) {
        self.0.disconnect_device(device);
        if let Some(link) = self.0.cluster() {
            let (link, device) = (Arc::clone(link), device.to_owned());
            tokio::spawn(async move { link.disconnect(&device).await });
        }
    }

    /// Devices with a live session on this broker.
    pub fn connected_devices(&self) -> usize {
        self.0.connected_devices()
    }

    /// IDs of the devices with a live session on this broker.
    pub fn connected_device_ids(&self) -> Vec<String> {
        self.0.connected_device_ids()
    }

    /// Each device with a live session on this broker, with its session number.
    pub fn live_sessions(&self) -> Vec<(String, u64)> {
        self.0.live_sessions()
    }

    /// IDs of the devices with a live session on any fleet instance, sorted.
    pub async fn online_device_ids(&self) -> Vec<String> {
        match self.0.cluster() {
            Some(link) => link.online_devices().await,
            None => self.0.connected_device_ids(),
        }
    }

    /// Routes `payload` on `topic` to every matching subscriber (QoS 0 to devices);
    /// a device whose session another instance holds gets it through that instance.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        if let Some(link) = self.0.cluster()
            && let Some(device) = warden_wire::topics::device_of_topic(&topic)
            && !self.0.holds_session(device)
        {
            link.forward(device, &topic, &payload).await;
        }
        self.deliver_here(topic, payload).await;
    }

    /// Routes `payload` on `topic` on this broker only (a message another instance
    /// forwarded).
    pub async fn deliver_here(&self, topic: String, payload: Vec<u8>) {
        let publish = rumqttc::Publish::new(topic, rumqttc::QoS::AtMostOnce, payload);
        self.0.route(&publish).await;
    }

    /// Ends `device`'s session on this broker only.
    pub fn disconnect_here(&self, device: &str) {
        self.0.disconnect_device(device);
    }
}
