//! The link agent: readings → journal → durable outbox → MQTT/TLS → fleet, until acknowledged.
//!
//! The agent never gives up on a fault it can outlive. Setup (the device identity,
//! the TLS configuration, the outbox) and the outbox at runtime are retried with
//! capped exponential backoff ([`SETUP_RETRY_FIRST`] doubling to [`SETUP_RETRY_MAX`])
//! while the link shows [`LinkState::Unavailable`] with the cause, and readings keep
//! being taken into the bounded pending store ([`crate::journal`]) the whole time, so
//! the bridges never block on the link. Only a configuration that can never work
//! ([`LinkError::Identity`]) ends [`LinkAgent::run`] with an error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_millis;
use crate::control::{ControlMessage, ControlSender};
use crate::dispatch::{DispatchLimits, Dispatcher};
use crate::journal::{PendingLimits, PendingReadings, Pushed};
use crate::outbox::{Outbox, OutboxConfig, OutboxError};
use warden_wire::renewal::{
    CertificateResponse, certificate_renew_topic, certificate_request_topic,
    certificate_response_topic, renewal_reason,
};
use warden_wire::revocation::revocation_list_topic;
use warden_wire::tls::{ClientIdentity, TlsError, client_config};
use warden_wire::topics::{
    AttestationChallenge, AttestationQuote, DeviceEvent, MIN_NONCE_LEN,
    attestation_challenge_topic, attestation_quote_topic, attestation_verdict_topic, from_hex,
    to_hex,
};
use warden_wire::topics::{
    CONTROL_STREAM, Command, CommandResult, CommandStatus, LinkSettings, PROTOCOL_VERSION, Reading,
    TELEMETRY_STREAM, TelemetryBatch, TwinDesired, UpdateOffer, ack_topic, commands_topic,
    event_kind, telemetry_topic, twin_desired_topic, update_offer_topic,
};

mod link_settings;
mod network;
mod renewal;
mod status;

use link_settings::{LINK_SETTINGS_FILE, change_link_settings, load_link_settings};
use network::{Backoff, NetworkEvent, Topics, network_loop, sleep_until};
pub use network::{RECONNECT_FIRST, RECONNECT_MAX};
pub use renewal::{
    ANSWER_WAIT, CertificateRenewalStatus, RENEWAL_CHECK, RenewalState, renewal_directory,
    renewed_certificate,
};
use renewal::{Outcome, Renewal, Switch};
use status::update;
pub use status::{AttestationAnswers, FleetVerdict, LinkState, LinkStatus};

/// How often the agent looks for messages to send.
const PUMP_INTERVAL: Duration = Duration::from_millis(10);
/// Most readings taken from the channel at once (one journal write each burst; the
/// last batch taken may carry it past this).
const MAX_BURST: usize = 1024;
/// First retry of a failed setup step or of a failed outbox.
pub const SETUP_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failed setup step or outbox.
pub const SETUP_RETRY_MAX: Duration = Duration::from_secs(30);
/// MQTT keep-alive. A broker that sends nothing at all for two of them (no PUBACK,
/// no PINGRESP) is declared dead and the connection is dropped.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A connection attempt (TCP, TLS, CONNECT/CONNACK) gives up after this many seconds.
const CONNECT_TIMEOUT_SECS: u64 = 5;
/// How long a journal that failed to write waits before it is rewritten.
const JOURNAL_RETRY: Duration = Duration::from_secs(5);
/// How long the control queue rests after an error before it is used again.
const CONTROL_RETRY: Duration = Duration::from_secs(1);

/// The link as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Broker host name or address (must match the fleet's server certificate).
    pub broker_host: String,
    /// Broker TLS port.
    pub broker_port: u16,
    /// PEM file with the fleet CA the broker's certificate must chain to (pinned).
    pub fleet_ca: PathBuf,
    /// PEM file with this device's certificate.
    pub device_cert: PathBuf,
    /// PEM file with this device's key, for units without pluton (tests, bench).
    /// Exactly one of `device_key` and `pluton_socket` is set.
    #[serde(default)]
    pub device_key: Option<PathBuf>,
    /// Pluton's socket: the link signs its TLS handshakes through pluton, and the
    /// private key never enters this process.
    #[serde(default)]
    pub pluton_socket: Option<PathBuf>,
    /// How long readings are gathered into one batch, in milliseconds.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Most messages sent per second, including replay after an outage.
    #[serde(default = "default_max_send_per_second")]
    pub max_send_per_second: u32,
    /// The durable store-and-forward queue.
    pub outbox: OutboxConfig,
}

fn default_batch_interval_ms() -> u64 {
    500
}

fn default_max_send_per_second() -> u32 {
    DispatchLimits::default().max_per_second
}

/// Why the link could not run.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// Pluton could not be reached for the device key.
    #[error("pluton: {0}")]
    Pluton(String),
    /// The config names no key, or both a key file and pluton.
    #[error("the link needs exactly one of `device_key` and `pluton_socket`")]
    Identity,
}

/// Why the identity or the TLS configuration of a session could not be built; the
/// link shows it as its cause and tries again later.
#[derive(Debug, thiserror::Error)]
enum SessionSetupError {
    /// The device key or certificate (file or pluton) is unusable.
    #[error("device identity: {0}")]
    Identity(#[source] LinkError),
    /// The fleet CA or the client configuration is unusable.
    #[error("TLS configuration (fleet CA): {0}")]
    Tls(#[source] TlsError),
}

/// The appliance's end of the link: commands, desired states and update offers arrive
/// here; results, reported states, events, reports and update status go back through
/// the durable control queue. The link never talks to equipment; the appliance
/// executes commands through the bridges and their policy.
pub struct CommandChannel {
    /// Commands from the fleet, in arrival order.
    pub commands: mpsc::Receiver<Command>,
    /// Desired states from the fleet.
    pub desired: mpsc::Receiver<TwinDesired>,
    /// Update offers from the fleet.
    pub offers: mpsc::Receiver<UpdateOffer>,
    /// Release-key revocation lists from the fleet (the `WRL1` bytes, bounded but not
    /// verified: whoever installs them verifies them against its own vendor roots).
    pub revocation_lists: mpsc::Receiver<Vec<u8>>,
    /// The durable control queue: what is pushed here is published until acknowledged,
    /// across outages and restarts.
    pub control: ControlSender,
}

struct ApplianceEnd {
    commands: mpsc::Sender<Command>,
    desired: mpsc::Sender<TwinDesired>,
    offers: mpsc::Sender<UpdateOffer>,
    revocation_lists: mpsc::Sender<Vec<u8>>,
}

/// Publishes readings for one device.
pub struct LinkAgent {
    device_id: String,
    config: LinkConfig,
    identity: Option<ClientIdentity>,
    outbox: Option<SharedOutbox>,
    control: Option<ControlSender>,
    commands: Option<ApplianceEnd>,
    status: Arc<Mutex<LinkStatus>>,
    keep_alive: Duration,
    pending_limits: PendingLimits,
}

/// An outbox shared between the agent and other writers (load generators, reports).
pub type SharedOutbox = Arc<Mutex<Outbox>>;

impl LinkAgent {
    /// An agent for `device_id`, signing with the key file of its config.
    pub fn new(device_id: String, config: LinkConfig) -> Self {
        Self {
            device_id,
            config,
            identity: None,
            outbox: None,
            control: None,
            commands: None,
            status: Arc::default(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            pending_limits: PendingLimits::default(),
        }
    }

    /// Uses `identity` (for example one whose key pluton holds) instead of the key file.
    pub fn with_identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sends from `outbox` (already open) instead of opening the configured one. The
    /// agent never reopens a shared outbox after an error; it retries it as it is.
    pub fn with_outbox(mut self, outbox: SharedOutbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Uses another MQTT keep-alive than [`DEFAULT_KEEP_ALIVE`] (whole seconds, at
    /// least one). A broker silent for two keep-alives is declared dead.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = Duration::from_secs(keep_alive.as_secs().max(1));
        self
    }

    /// Bounds the readings pending in memory to `max_bytes` (estimated as JSON)
    /// instead of [`crate::journal::MAX_PENDING_BYTES`]; beyond it the newest readings
    /// are dropped and counted.
    pub fn with_pending_bound(mut self, max_bytes: usize) -> Self {
        self.pending_limits.max_bytes = max_bytes;
        self
    }

    /// The durable control queue (`<outbox dir>/control`), opened on first use.
    pub fn control(&mut self) -> Result<ControlSender, LinkError> {
        if let Some(control) = &self.control {
            return Ok(control.clone());
        }
        let control = ControlSender::open(&self.config.outbox.dir.join("control"))?;
        self.control = Some(control.clone());
        Ok(control)
    }

    /// Takes commands, desired states and update offers from the fleet: returns the
    /// channel the appliance handles them from. Without it, every command is answered
    /// `failed` and desired states and offers are ignored.
    pub fn command_channel(&mut self) -> Result<CommandChannel, LinkError> {
        let control = self.control()?;
        let (command_tx, commands) = mpsc::channel(64);
        let (desired_tx, desired) = mpsc::channel(8);
        let (offers_tx, offers) = mpsc::channel(8);
        let (revocation_lists_tx, revocation_lists) = mpsc::channel(4);
        self.commands = Some(ApplianceEnd {
            commands: command_tx,
            desired: desired_tx,
            offers: offers_tx,
            revocation_lists: revocation_lists_tx,
        });
        Ok(CommandChannel {
            commands,
            desired,
            offers,
            revocation_lists,
            control,
        })
    }

    /// The link's status, updated as it runs.
    pub fn status(&self) -> Arc<Mutex<LinkStatus>> {
        Arc::clone(&self.status)
    }

    /// Runs until `shutdown` fires or `readings` closes; then writes what it holds to
    /// the outbox (or leaves it in the readings journal), so nothing read is lost
    /// across a restart. Readings come in batches, in the order they were read (the
    /// appliance passes on what its bridges read in one burst at once: one message and
    /// one wake-up of the agent per burst, not per reading).
    ///
    /// Faults are outlived, not returned: see the module docs. The only error is
    /// [`LinkError::Identity`], a configuration that can never work.
    pub async fn run(
        self,
        mut readings: mpsc::Receiver<Vec<Reading>>,
        shutdown: CancellationToken,
    ) -> Result<(), LinkError> {
        let identity_configured = matches!(
            (&self.config.pluton_socket, &self.config.device_key),
            (Some(_), None) | (None, Some(_))
        );
        if self.identity.is_none() && !identity_configured {
            return Err(LinkError::Identity);
        }
        let mut link = Link::new(self, shutdown.clone());
        link.open_storage();
        link.start_session_setup();
        let mut batch_tick =
            tokio::time::interval(Duration::from_millis(link.batch_interval_ms.max(10)));
        let mut renewal_tick = tokio::time::interval(ANSWER_WAIT);
        renewal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut pump = tokio::time::interval(PUMP_INTERVAL);
        pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let retry_at = link.next_retry();
            tokio::select! {
                () = shutdown.cancelled() => break,
                batch = readings.recv() => match batch {
                    Some(batch) => link.take_burst(batch, &mut readings),
                    None => break,
                },
                _ = batch_tick.tick() => {
                    link.append_pending();
                    link.after_batch();
                }
                () = sleep_until(retry_at) => link.retry_due(),
                setup = setup_finished(&mut link.setup) => {
                    link.setup = None;
                    link.on_session_setup(setup);
                }
                event = next_network_event(&mut link.session) => match event {
                    Some(event) => {
                        if let Some(interval) = link.on_network_event(event).await {
                            batch_tick = tokio::time::interval(interval);
                        }
                    }
                    // The network task also ends at shutdown: not a failure then.
                    None if shutdown.is_cancelled() => break,
                    None => link.on_session_ended(),
                },
                _ = pump.tick() => link.pump(),
                _ = renewal_tick.tick() => {
                    if link.link_state == LinkState::Connected {
                        link.check_renewal(false).await;
                    }
                }
            }
        }
        link.finish(&mut readings).await;
        Ok(())
    }
}

/// Why appending pending records to the outbox stopped.
enum AppendStop {
    /// Everything pending is in the outbox (or nothing could be tried).
    Done,
    /// The outbox refused for want of room (why).
    Refused(String),
}

/// The running agent: every part that can fail is optional and retried.
struct Link {
    device_id: String,
    config: LinkConfig,
    status: Arc<Mutex<LinkStatus>>,
    keep_alive: Duration,
    shutdown: CancellationToken,
    /// The identity given to the agent (kept for retries).
    identity: Option<ClientIdentity>,
    /// The outbox given to the agent, if any (never reopened).
    shared_outbox: Option<SharedOutbox>,
    control: Option<ControlSender>,
    control_epoch: u64,
    control_resting_until: Option<Instant>,

    /// The outbox, while usable.
    outbox: Option<SharedOutbox>,
    /// The epoch of the outbox the dispatcher numbers are for.
    epoch: u64,
    /// Why storage (control queue, outbox) is unusable, while it is.
    storage_error: Option<String>,
    storage_backoff: Backoff,
    storage_retry_at: Option<Instant>,
    pending: PendingReadings,
    journal_retry_at: Option<Instant>,

    /// The MQTT session, once identity and TLS are set up.
    session: Option<Session>,
    /// Identity and TLS being set up (blocking work, off the runtime's threads).
    setup: Option<JoinHandle<Result<rustls::ClientConfig, SessionSetupError>>>,
    session_error: Option<String>,
    session_backoff: Backoff,
    session_retry_at: Option<Instant>,
    /// What the network says (meaningful when nothing is unavailable).
    link_state: LinkState,
    link_error: Option<String>,
    /// When the link went down (for the `link-restored` event), if it is down.
    down_since: Option<u64>,

    dispatcher: Dispatcher,
    control_dispatcher: Dispatcher,
    limits: DispatchLimits,
    batch_interval_ms: u64,
    settings_path: PathBuf,
    running_settings: Option<LinkSettings>,
    appliance: Option<ApplianceEnd>,
    telemetry_topic: String,
    quote_topic: String,
    /// Certificate renewal: its files and timing.
    renewal: Renewal,
    /// The session running connected at least once.
    session_connected: bool,

    /// Refused appends in the current refusal episode, if one is going on.
    refusing: Option<u64>,
    /// Readings dropped at the pending bound in the current episode, if one is going on.
    dropping: Option<u64>,
    /// Outbox drops (drop-oldest) already reported, and whether an episode is going on.
    reported_dropped_oldest: u64,
    dropping_oldest: bool,
    /// Whether a journal failure was reported and not yet resolved.
    journal_failing: bool,
}

/// An MQTT session: the client, its network loop, and what it reports.
struct Session {
    client: AsyncClient,
    network: JoinHandle<()>,
    events: mpsc::Receiver<NetworkEvent>,
}

impl Link {
    fn new(agent: LinkAgent, shutdown: CancellationToken) -> Self {
        let LinkAgent {
            device_id,
            config,
            identity,
            outbox,
            control,
            commands,
            status,
            keep_alive,
            pending_limits,
        } = agent;
        let limits = DispatchLimits {
            max_per_second: config.max_send_per_second,
            ..DispatchLimits::default()
        };
        let settings_path = config.outbox.dir.join(LINK_SETTINGS_FILE);
        let renewal = Renewal::new(&config.device_cert, &config.outbox.dir);
        if identity.is_none() {
            let now_unix = unix_seconds();
            update(&status, |s| renewal.describe(&mut s.certificate, now_unix));
        }
        let running_settings = load_link_settings(&settings_path);
        let (mut batch_interval_ms, mut limits) = (config.batch_interval_ms, limits);
        if let Some(settings) = &running_settings {
            tracing::info!(version = settings.version, "link settings from the fleet");
            batch_interval_ms = settings.batch_interval_ms;
            limits.max_per_second = settings.max_send_per_second;
        }
        Self {
            telemetry_topic: telemetry_topic(&device_id),
            quote_topic: attestation_quote_topic(&device_id),
            renewal,
            session_connected: false,
            device_id,
            config,
            status,
            keep_alive,
            shutdown,
            identity,
            shared_outbox: outbox,
            control,
            control_epoch: 0,
            control_resting_until: None,
            outbox: None,
            epoch: 0,
            storage_error: None,
            storage_backoff: Backoff::new(SETUP_RETRY_FIRST, SETUP_RETRY_MAX),
            storage_retry_at: None,
            pending: PendingReadings::new(pending_limits),
            journal_retry_at: None,
            session: None,
            setup: None,
            session_error: None,
            session_backoff: Backoff::new(SETUP_RETRY_FIRST, SETUP_RETRY_MAX),
            session_retry_at: None,
            link_state: LinkState::Connecting,
            link_error: None,
            down_since: None,
            dispatcher: Dispatcher::new(limits),
            control_dispatcher: Dispatcher::new(limits),
            limits,
            batch_interval_ms,
            settings_path,
            running_settings,
            appliance: commands,
            refusing: None,
            dropping: None,
            reported_dropped_oldest: 0,
            dropping_oldest: false,
            journal_failing: false,
        }
    }

    /// Shows the state: unavailable while a part is, else what the network says.
    fn show_state(&self) {
        let unavailable = match (&self.storage_error, &self.session_error) {
            (Some(storage), Some(session)) => Some(format!("{storage}; {session}")),
            (Some(error), None) | (None, Some(error)) => Some(error.clone()),
            (None, None) => None,
        };
        let (state, error) = match unavailable {
            Some(error) => (LinkState::Unavailable, Some(error)),
            None => (self.link_state, self.link_error.clone()),
        };
        update(&self.status, |s| {
            s.state = state;
            s.last_error = error;
        });
    }

    /// The earliest retry that is due, if any.
    fn next_retry(&self) -> Option<Instant> {
        let storage = self.storage_retry_at.filter(|_| self.outbox.is_none());
        let session = self
            .session_retry_at
            .filter(|_| self.session.is_none() && self.setup.is_none());
        match (storage, session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        if self.outbox.is_none() && self.storage_retry_at.is_some_and(|at| at <= now) {
            self.open_storage();
        }
        if self.session.is_none()
            && self.setup.is_none()
            && self.session_retry_at.is_some_and(|at| at <= now)
        {
            self.start_session_setup();
        }
    }

    /// Opens the control queue and the outbox, and recovers the readings journal.
    fn open_storage(&mut self) {
        self.storage_retry_at = None;
        if self.control.is_none() {
            match ControlSender::open(&self.config.outbox.dir.join("control")) {
                Ok(control) => self.control = Some(control),
                Err(error) => return self.storage_failed(format!("control queue: {error}")),
            }
        }
        if let Some(control) = &self.control {
            let mut queue = control.lock();
            self.control_epoch = queue.epoch();
            if let Some(settings) = &self.running_settings
                && let Err(error) = queue.set_link_settings(Some(settings.clone()), None)
            {
                tracing::error!(%error, "cannot report the link settings");
            }
        }
        let shared = match &self.shared_outbox {
            Some(shared) => Arc::clone(shared),
            None => match Outbox::open(self.config.outbox.clone()) {
                Ok(outbox) => Arc::new(Mutex::new(outbox)),
                Err(error) => return self.storage_failed(error.to_string()),
            },
        };
        let (epoch, stats) = {
            let outbox = lock(&shared);
            (outbox.epoch(), outbox.stats())
        };
        let (recovery, journal) = self.pending.attach(
            &self.config.outbox.dir,
            epoch,
            stats.next_seq,
            self.config.outbox.fsync,
        );
        if recovery != crate::journal::Recovery::default() {
            tracing::info!(
                recovered = recovery.recovered,
                already_in_outbox = recovery.discarded,
                damaged = recovery.damaged,
                torn_bytes = recovery.torn_bytes,
                "readings journal read back"
            );
        }
        if recovery.damaged > 0 {
            tracing::warn!(
                damaged = recovery.damaged,
                "readings journal had damaged records; their readings are lost"
            );
        }
        self.journal_result(journal);
        if self.epoch != epoch {
            self.reported_dropped_oldest = stats.dropped_oldest;
        }
        self.epoch = epoch;
        self.dispatcher = Dispatcher::new(self.limits);
        if self.link_state == LinkState::Connected {
            self.dispatcher.on_connected();
        }
        self.outbox = Some(shared);
        if self.storage_error.take().is_some() {
            tracing::info!("outbox usable again");
        }
        update(&self.status, |s| {
            s.journal_damaged += recovery.damaged;
            s.outbox = stats;
        });
        self.show_state();
    }

    /// Storage failed (at setup or at runtime): drop the outbox, try again later.
    fn storage_failed(&mut self, error: String) {
        tracing::error!(%error, "outbox unusable; the link retries it");
        self.outbox = None;
        self.dispatcher.on_disconnected();
        let delay = self.storage_backoff.next_delay();
        self.storage_retry_at = Some(Instant::now() + delay);
        self.storage_error = Some(error);
        update(&self.status, |s| s.restarts += 1);
        self.show_state();
    }

    fn outbox_failed(&mut self, error: &OutboxError) {
        self.storage_failed(error.to_string());
    }

    /// Builds the identity and TLS configuration off the runtime's threads.
    fn start_session_setup(&mut self) {
        self.session_retry_at = None;
        let config = self.config.clone();
        let identity = self.identity.clone();
        // An identity given in code cannot take a renewed certificate.
        let certificate = if identity.is_none() {
            self.renewal.for_session()
        } else {
            config.device_cert.clone()
        };
        self.setup = Some(tokio::task::spawn_blocking(move || {
            let identity = match identity {
                Some(identity) => identity,
                None => {
                    client_identity(&config, &certificate).map_err(SessionSetupError::Identity)?
                }
            };
            client_config(&config.fleet_ca, identity).map_err(SessionSetupError::Tls)
        }));
    }

    fn on_session_setup(
        &mut self,
        setup: Result<Result<rustls::ClientConfig, SessionSetupError>, tokio::task::JoinError>,
    ) {
        let tls = match setup {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return self.session_failed(error.to_string()),
            Err(error) => return self.session_failed(format!("link setup: {error}")),
        };
        let mut options = MqttOptions::new(
            self.device_id.clone(),
            &self.config.broker_host,
            self.config.broker_port,
        );
        options.set_keep_alive(self.keep_alive);
        options.set_max_packet_size(crate::outbox::MAX_RECORD_PAYLOAD + 1024, 256 * 1024);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let mut network_options = rumqttc::NetworkOptions::new();
        network_options.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network_options);
        let (events_tx, events) = mpsc::channel(1024);
        let network = tokio::spawn(network_loop(
            eventloop,
            client.clone(),
            Topics {
                ack: ack_topic(&self.device_id),
                commands: commands_topic(&self.device_id),
                desired: twin_desired_topic(&self.device_id),
                challenge: attestation_challenge_topic(&self.device_id),
                verdict: attestation_verdict_topic(&self.device_id),
                offers: update_offer_topic(&self.device_id),
                certificate_response: certificate_response_topic(&self.device_id),
                certificate_renew: certificate_renew_topic(&self.device_id),
                revocation_list: revocation_list_topic(&self.device_id),
            },
            events_tx,
            Arc::clone(&self.status),
            self.keep_alive,
            self.shutdown.clone(),
        ));
        self.session = Some(Session {
            client,
            network,
            events,
        });
        self.session_connected = false;
        if self.session_error.take().is_some() {
            tracing::info!("link identity and TLS ready again");
        }
        self.session_backoff.reset();
        self.link_state = LinkState::Connecting;
        self.show_state();
    }

    fn session_failed(&mut self, error: String) {
        tracing::error!(%error, "the link cannot start; retrying");
        let delay = self.session_backoff.next_delay();
        self.session_retry_at = Some(Instant::now() + delay);
        self.session_error = Some(error);
        update(&self.status, |s| s.restarts += 1);
        self.show_state();
    }

    fn on_session_ended(&mut self) {
        self.session = None;
        self.dispatcher.on_disconnected();
        self.control_dispatcher.on_disconnected();
        self.session_failed("the link's network task ended".to_owned());
    }

    /// Takes `first` and whatever else is waiting in the channel (up to a burst) into
    /// the pending store, and journals them with one write.
    fn take_burst(&mut self, first: Vec<Reading>, readings: &mut mpsc::Receiver<Vec<Reading>>) {
        let (mut kept, mut dropped) = (0u64, 0u64);
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next {
            for reading in batch {
                match self.pending.push(reading) {
                    Pushed::Kept => kept += 1,
                    Pushed::Refused => dropped += 1,
                }
                taken += 1;
            }
            next = if taken < MAX_BURST {
                readings.try_recv().ok()
            } else {
                None
            };
        }
        let written = self.pending.write_burst();
        self.journal_result(written);
        let pending = self.pending.len() as u64;
        update(&self.status, |s| s.readings_pending = pending);
        if dropped > 0 {
            update(&self.status, |s| s.readings_dropped += dropped);
            match &mut self.dropping {
                Some(count) => *count += dropped,
                None => {
                    self.dropping = Some(dropped);
                    let bound = self.pending.estimated_bytes();
                    self.event(DeviceEvent::now(
                        event_kind::OUTBOX_OVERFLOW,
                        format!(
                            "readings waiting for the outbox reached their bound (about {} KiB): the newest readings are dropped, and counted, until the outbox takes them",
                            bound / 1024
                        ),
                    ));
                }
            }
        } else if kept > 0
            && let Some(count) = self.dropping.take()
        {
            tracing::warn!(
                dropped = count,
                "readings are kept again; {count} were dropped at the pending bound"
            );
        }
    }

    fn journal_result(&mut self, result: Result<(), crate::journal::JournalError>) {
        match result {
            Ok(()) => {
                if self.journal_failing && !self.pending.needs_repair() {
                    self.journal_failing = false;
                    tracing::info!("readings journal written again");
                }
            }
            Err(error) => {
                if !self.journal_failing {
                    tracing::error!(%error, "readings journal failed: readings are kept in memory only until it is rewritten");
                }
                self.journal_failing = true;
                self.journal_retry_at = Some(Instant::now() + JOURNAL_RETRY);
            }
        }
    }

    /// Appends every pending record to the outbox, in order, until done or refused.
    fn append_pending(&mut self) {
        if self.pending.needs_repair()
            && self.journal_retry_at.is_none_or(|at| at <= Instant::now())
        {
            let repaired = self.pending.repair();
            self.journal_result(repaired);
        }
        let Some(shared) = self.outbox.clone() else {
            return;
        };
        let mut outbox = lock(&shared);
        let mut appended = 0u64;
        let mut dropped = 0u64;
        let mut renumbered = false;
        let stop = loop {
            let stats = outbox.stats();
            let pending_epoch = self.pending.epoch();
            let Some(front) = self.pending.front_mut() else {
                break Ok(AppendStop::Done);
            };
            if (front.seq != stats.next_seq || pending_epoch != outbox.epoch()) && !renumbered {
                renumbered = true;
                // Someone else appended (a shared outbox), or the outbox changed under
                // the journal: number the records again from where the outbox is.
                let (_, journal) = self.pending.attach(
                    &self.config.outbox.dir,
                    outbox.epoch(),
                    stats.next_seq,
                    self.config.outbox.fsync,
                );
                self.journal_result(journal);
                continue;
            }
            let expected = front.seq;
            let result = outbox.append(|seq, epoch| {
                let batch = TelemetryBatch {
                    v: PROTOCOL_VERSION,
                    stream: TELEMETRY_STREAM.to_owned(),
                    epoch,
                    seq,
                    readings: std::mem::take(&mut front.readings),
                };
                let bytes = batch.encode();
                front.readings = batch.readings;
                bytes
            });
            match result {
                Ok(_) => {
                    appended += 1;
                    let journal = self.pending.appended();
                    self.journal_result(journal);
                }
                Err(error) if outbox.stats().next_seq > expected => {
                    // Written, then something after it failed (an fsync): it is in.
                    appended += 1;
                    let journal = self.pending.appended();
                    self.journal_result(journal);
                    break Err(error);
                }
                Err(error) if error.is_refusal() => {
                    break Ok(AppendStop::Refused(error.to_string()));
                }
                Err(OutboxError::TooLarge(size)) => {
                    // The record bound makes this impossible; never let it stop the link.
                    let lost = self.pending.discard_front() as u64;
                    dropped += lost;
                    tracing::error!(
                        size,
                        lost,
                        "telemetry record too large for the outbox; its readings are dropped"
                    );
                }
                Err(error) => break Err(error),
            }
        };
        drop(outbox);
        if appended > 0 || dropped > 0 {
            update(&self.status, |s| {
                s.batches_queued += appended;
                s.readings_dropped += dropped;
            });
        }
        if appended > 0 {
            self.storage_backoff.reset();
        }
        match stop {
            Ok(AppendStop::Refused(why)) => match &mut self.refusing {
                Some(count) => *count += 1,
                None => {
                    self.refusing = Some(1);
                    let pending_kib = self.pending.estimated_bytes() / 1024;
                    self.event(DeviceEvent::now(
                            event_kind::OUTBOX_OVERFLOW,
                            format!(
                                "{why}: telemetry is kept in memory and in the readings journal ({pending_kib} KiB so far) and appended once there is room"
                            ),
                        ));
                }
            },
            Ok(AppendStop::Done) => {
                if let Some(count) = self.refusing.take() {
                    let detail = format!(
                        "the store-and-forward queue takes telemetry again ({count} appends were refused meanwhile; nothing was lost)"
                    );
                    tracing::info!("{detail}");
                    self.event(DeviceEvent::now(event_kind::OUTBOX_OVERFLOW, detail));
                }
            }
            Err(error) => self.outbox_failed(&error),
        }
    }

    /// After a batch: sync on the outbox's schedule, report drops, show counters.
    fn after_batch(&mut self) {
        let journal = self.pending.sync_due();
        self.journal_result(journal);
        let pending = self.pending.len() as u64;
        update(&self.status, |s| s.readings_pending = pending);
        let Some(shared) = self.outbox.clone() else {
            return;
        };
        let mut outbox = lock(&shared);
        if let Err(error) = outbox.sync() {
            drop(outbox);
            return self.outbox_failed(&error);
        }
        let stats = outbox.stats();
        drop(outbox);
        update(&self.status, |s| s.outbox = stats);
        // Drop-oldest overflow: one event when drops start, a log line when they end.
        if stats.dropped_oldest > self.reported_dropped_oldest {
            if !self.dropping_oldest {
                self.dropping_oldest = true;
                self.event(DeviceEvent::now(
                    event_kind::OUTBOX_OVERFLOW,
                    format!(
                        "store-and-forward queue full: the oldest telemetry batches are dropped to make room ({} dropped so far)",
                        stats.dropped_oldest
                    ),
                ));
            }
        } else if self.dropping_oldest {
            self.dropping_oldest = false;
            tracing::warn!(
                dropped = stats.dropped_oldest,
                "the store-and-forward queue stopped dropping its oldest batches"
            );
        }
        self.reported_dropped_oldest = stats.dropped_oldest;
    }

    /// Queues `event` on the control queue (or logs it while there is none).
    fn event(&self, event: DeviceEvent) {
        tracing::warn!(kind = %event.kind, detail = %event.detail, "link event");
        match &self.control {
            Some(control) => control.send_or_log(&ControlMessage::Event(event)),
            None => tracing::warn!("no control queue: the event is only logged"),
        }
    }

    /// Publishes what the dispatchers say is due (and group-fsyncs the readings
    /// journal: under `fsync = "always"` at most every [`crate::journal::GROUP_FSYNC`]).
    fn pump(&mut self) {
        let journal = self.pending.sync_due();
        self.journal_result(journal);
        let Some(session) = &self.session else {
            return;
        };
        let client = session.client.clone();
        let now = unix_millis();
        let mut sent = 0u64;
        let mut failure = None;
        if let Some(shared) = self.outbox.clone() {
            let outbox = lock(&shared);
            while let Some(seq) = self.dispatcher.next_to_send(&outbox, now) {
                let payload = match outbox.read(seq) {
                    Ok(payload) => payload,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
                if client
                    .try_publish(&self.telemetry_topic, QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    break; // the client's queue is full; retransmission picks it up
                }
                sent += 1;
            }
            let stats = outbox.stats();
            drop(outbox);
            update(&self.status, |s| s.outbox = stats);
        }
        if let Some(error) = failure {
            self.outbox_failed(&error);
        }
        if let Some(control) = self.control.clone()
            && self
                .control_resting_until
                .is_none_or(|until| until <= Instant::now())
        {
            let queue = control.lock();
            while let Some(seq) = self.control_dispatcher.next_to_send(queue.outbox(), now) {
                let (topic, payload) = match queue.publication(&self.device_id, seq) {
                    Ok(publication) => publication,
                    Err(error) => {
                        tracing::error!(%error, seq, "cannot read a control message; retrying soon");
                        self.control_resting_until = Some(Instant::now() + CONTROL_RETRY);
                        break;
                    }
                };
                if client
                    .try_publish(&topic, QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    break; // retransmission picks it up
                }
                sent += 1;
            }
            let control_stats = queue.stats();
            drop(queue);
            update(&self.status, |s| s.control = control_stats);
        }
        if sent > 0 {
            update(&self.status, |s| s.messages_sent += sent);
        }
    }

    /// Handles what the network loop reports; returns a new batch interval if the
    /// fleet's link settings changed it.
    async fn on_network_event(&mut self, event: NetworkEvent) -> Option<Duration> {
        match event {
            NetworkEvent::Connected => {
                self.dispatcher.on_connected();
                self.control_dispatcher.on_connected();
                if let Some(since) = self.down_since.take() {
                    let waiting = self
                        .outbox
                        .as_ref()
                        .map_or(0, |shared| lock(shared).stats().depth);
                    self.event(DeviceEvent::now(
                        event_kind::LINK_RESTORED,
                        format!(
                            "link up again after {} s down; {waiting} telemetry batches waiting to be sent",
                            unix_millis().saturating_sub(since) / 1000
                        ),
                    ));
                }
                self.link_state = LinkState::Connected;
                self.link_error = None;
                update(&self.status, |s| s.last_connected_ms = Some(unix_millis()));
                self.show_state();
                self.session_connected = true;
                self.certificate_connected();
                self.check_renewal(false).await;
            }
            NetworkEvent::Disconnected(error) => {
                if self.identity.is_none()
                    && self
                        .renewal
                        .on_connect_failed(&error, self.session_connected)
                        == Switch::Reconnect
                {
                    tracing::warn!(%error, "link: connecting with the other certificate next");
                    self.restart_session();
                }
                self.dispatcher.on_disconnected();
                self.control_dispatcher.on_disconnected();
                self.down_since.get_or_insert_with(unix_millis);
                self.link_state = LinkState::Disconnected;
                self.link_error = Some(error);
                self.show_state();
            }
            NetworkEvent::Ack(ack) if ack.stream == CONTROL_STREAM => {
                if let Some(control) = self.control.clone() {
                    let mut queue = control.lock();
                    if ack.epoch == self.control_epoch && queue.is_pending(ack.seq) {
                        match queue.ack(ack.seq) {
                            Ok(()) => {
                                self.control_dispatcher.on_ack(ack.seq);
                                update(&self.status, |s| s.control_acknowledged += 1);
                            }
                            // Not fatal: the message is sent again and acknowledged again.
                            Err(error) => {
                                tracing::error!(%error, "cannot acknowledge a control message")
                            }
                        }
                    }
                }
            }
            NetworkEvent::Ack(ack) => {
                let Some(shared) = self.outbox.clone() else {
                    return None; // sent again after the outbox is back, acknowledged again
                };
                let mut outbox = lock(&shared);
                if ack.epoch == self.epoch
                    && ack.stream == TELEMETRY_STREAM
                    && outbox.is_pending(ack.seq)
                {
                    let acked = outbox.ack(ack.seq);
                    drop(outbox);
                    match acked {
                        Ok(()) => {
                            self.dispatcher.on_ack(ack.seq);
                            update(&self.status, |s| {
                                s.batches_acknowledged += 1;
                                s.last_ack_ms = Some(unix_millis());
                            });
                        }
                        Err(error) => self.outbox_failed(&error),
                    }
                }
            }
            NetworkEvent::Command(command) => {
                let refused = match &self.appliance {
                    Some(end) => end
                        .commands
                        .try_send(command)
                        .err()
                        .map(|e| (e.into_inner(), "the device is busy; retry later")),
                    None => Some((command, "this device takes no commands")),
                };
                if let Some((command, why)) = refused {
                    let result = CommandResult {
                        v: PROTOCOL_VERSION,
                        id: command.id,
                        status: CommandStatus::Failed,
                        detail: why.to_owned(),
                    };
                    match &self.control {
                        Some(control) => {
                            control.send_or_log(&ControlMessage::CommandResult(result))
                        }
                        None => {
                            tracing::warn!(id = %result.id, "command refused; no control queue to answer on")
                        }
                    }
                }
            }
            NetworkEvent::Challenge(challenge) => {
                let answer = answer_challenge(self.config.pluton_socket.clone(), challenge).await;
                let published = match &self.session {
                    Some(session) => session
                        .client
                        .try_publish(
                            &self.quote_topic,
                            QoS::AtLeastOnce,
                            false,
                            warden_wire::topics::encode(&answer),
                        )
                        .map_err(|e| e.to_string()),
                    None => Err("no session".to_owned()),
                };
                update(&self.status, |s| {
                    s.attestation.answered += 1;
                    s.attestation.last_answered_ms = Some(unix_millis());
                    s.attestation.last_error = answer
                        .error
                        .clone()
                        .or_else(|| published.err().map(|e| format!("quote not published: {e}")));
                });
            }
            NetworkEvent::Verdict(verdict) => {
                if verdict.trusted {
                    tracing::info!(release = ?verdict.release, "the fleet trusts this unit");
                } else {
                    tracing::warn!(detail = %verdict.detail, "the fleet does not trust this unit");
                }
                update(&self.status, |s| {
                    s.attestation.verdict = Some(FleetVerdict {
                        trusted: verdict.trusted,
                        release: verdict.release,
                        detail: verdict.detail,
                        received_ms: unix_millis(),
                    });
                });
            }
            NetworkEvent::Desired(desired, link) => {
                let mut interval = None;
                if let Some(control) = self.control.clone()
                    && let Some(applied) = change_link_settings(
                        link,
                        &mut self.running_settings,
                        &self.settings_path,
                        &control,
                    )
                {
                    self.batch_interval_ms = applied.batch_interval_ms;
                    self.limits.max_per_second = applied.max_send_per_second;
                    self.dispatcher
                        .set_max_per_second(applied.max_send_per_second);
                    self.control_dispatcher
                        .set_max_per_second(applied.max_send_per_second);
                    interval = Some(Duration::from_millis(applied.batch_interval_ms));
                }
                match &self.appliance {
                    Some(end) => {
                        if end.desired.try_send(desired).is_err() {
                            tracing::warn!(
                                "desired state dropped: the appliance is busy applying the previous one"
                            );
                        }
                    }
                    None => tracing::warn!(
                        "desired state ignored: this link has no appliance behind it"
                    ),
                }
                return interval;
            }
            NetworkEvent::CertificateResponse(response) => self.on_certificate_response(response),
            NetworkEvent::RenewOrder => self.check_renewal(true).await,
            NetworkEvent::RevocationList(list) => match &self.appliance {
                Some(end) => {
                    if end.revocation_lists.try_send(list).is_err() {
                        tracing::warn!(
                            "release-key revocation list dropped: the appliance is busy with the previous one (the fleet sends it again at the next connect)"
                        );
                    }
                }
                None => tracing::warn!(
                    "release-key revocation list ignored: this link has no appliance behind it"
                ),
            },
            NetworkEvent::Offer(offer) => match &self.appliance {
                Some(end) => {
                    if end.offers.try_send(offer).is_err() {
                        tracing::warn!(
                            "update offer dropped: the appliance is busy with the previous one"
                        );
                    }
                }
                None => {
                    tracing::warn!("update offer ignored: this link has no appliance behind it")
                }
            },
        }
        None
    }

    /// Ends the session and sets up a new one at once (another certificate).
    fn restart_session(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.client.try_disconnect();
            session.network.abort();
        }
        self.dispatcher.on_disconnected();
        self.control_dispatcher.on_disconnected();
        self.session_connected = false;
        if self.setup.is_none() {
            self.start_session_setup();
        }
    }

    /// The session connected: a new certificate that did becomes the one in use; an
    /// old one that did while the new one did not sets the new one aside.
    fn certificate_connected(&mut self) {
        if self.identity.is_some() {
            return;
        }
        let now_unix = unix_seconds();
        let outcome = self.renewal.on_connected();
        let (state, detail, event) = match outcome {
            Ok(None) => {
                let renewal = &self.renewal;
                update(&self.status, |s| {
                    renewal.describe(&mut s.certificate, now_unix)
                });
                return;
            }
            Ok(Some(Outcome::Renewed(detail))) => {
                tracing::info!(%detail, "device certificate renewed");
                (
                    RenewalState::Renewed,
                    detail,
                    event_kind::CERTIFICATE_RENEWED,
                )
            }
            Ok(Some(Outcome::Failed(detail))) => {
                tracing::warn!(%detail, "renewed certificate set aside");
                (
                    RenewalState::Failed,
                    detail,
                    event_kind::CERTIFICATE_RENEWAL_FAILED,
                )
            }
            Err(error) => {
                let detail = format!("cannot switch certificates: {error}");
                tracing::error!(%detail, "certificate renewal");
                (
                    RenewalState::Failed,
                    detail,
                    event_kind::CERTIFICATE_RENEWAL_FAILED,
                )
            }
        };
        let renewal = &self.renewal;
        update(&self.status, |s| {
            renewal.describe(&mut s.certificate, now_unix);
            s.certificate.state = state;
            if state == RenewalState::Renewed {
                s.certificate.renewed_ms = Some(unix_millis());
            }
            s.certificate.detail = Some(detail.clone());
        });
        self.event(DeviceEvent::now(event, detail));
    }

    /// Asks the fleet for a renewed certificate if it is due (or `ordered`).
    async fn check_renewal(&mut self, ordered: bool) {
        if self.identity.is_some() {
            return;
        }
        let now_unix = unix_seconds();
        let reason = if ordered {
            // Once per answer: an order while a request waits is not a second request.
            self.renewal
                .may_request(Instant::now())
                .then(|| renewal_reason::FLEET_REQUEST.to_owned())
        } else {
            self.renewal.due(Instant::now(), now_unix, false)
        };
        let Some(reason) = reason else {
            return;
        };
        let Some(client) = self.session.as_ref().map(|s| s.client.clone()) else {
            return;
        };
        self.renewal.requested(Instant::now());
        let config = self.config.clone();
        let certificate = self.renewal.current();
        let device_id = self.device_id.clone();
        let built = tokio::task::spawn_blocking(move || {
            let signer = (
                config.pluton_socket.as_deref(),
                config.device_key.as_deref(),
            );
            renewal::build_request(signer, &certificate, &device_id, &reason)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let outcome = built.and_then(|request| {
            client
                .try_publish(
                    certificate_request_topic(&self.device_id),
                    QoS::AtLeastOnce,
                    false,
                    request.encode(),
                )
                .map_err(|e| format!("the request was not published: {e}"))
        });
        update(&self.status, |s| match &outcome {
            Ok(()) => {
                s.certificate.state = RenewalState::Requested;
                s.certificate.requested_ms = Some(unix_millis());
                s.certificate.detail = Some("a renewal request went to the fleet".to_owned());
            }
            Err(error) => {
                s.certificate.state = RenewalState::Failed;
                s.certificate.detail = Some(format!("cannot ask for renewal: {error}"));
            }
        });
        match outcome {
            Ok(()) => tracing::info!("certificate renewal requested"),
            Err(error) => tracing::warn!(%error, "cannot ask for certificate renewal"),
        }
    }

    /// The fleet's answer: install the new certificate and connect with it, or show
    /// and report the refusal.
    fn on_certificate_response(&mut self, response: CertificateResponse) {
        if self.identity.is_some() {
            return;
        }
        let now_unix = unix_seconds();
        let installed = match (response.issued, &response.certificate) {
            (true, Some(pem)) => self.renewal.install(pem, now_unix),
            (true, None) => Err("the fleet said issued but sent no certificate".to_owned()),
            (false, _) => Err(response.detail.clone()),
        };
        match installed {
            Ok(()) => {
                tracing::info!(detail = %response.detail, "renewed certificate received; reconnecting with it");
                update(&self.status, |s| {
                    s.certificate.state = RenewalState::Connecting;
                    s.certificate.detail = Some(response.detail.clone());
                });
                self.restart_session();
            }
            Err(error) => {
                let state = if response.issued {
                    RenewalState::Failed
                } else {
                    RenewalState::Refused
                };
                let detail = if response.issued {
                    format!("the renewed certificate is not usable: {error}")
                } else {
                    format!("the fleet refused the renewal: {error}")
                };
                tracing::warn!(%detail, "certificate renewal");
                update(&self.status, |s| {
                    s.certificate.state = state;
                    s.certificate.detail = Some(detail.clone());
                });
                self.event(DeviceEvent::now(
                    event_kind::CERTIFICATE_RENEWAL_FAILED,
                    detail,
                ));
            }
        }
    }

    /// At shutdown: takes what is still in the channel, appends everything pending
    /// (what the outbox does not take stays in the journal for the next start), syncs,
    /// and says goodbye to the broker.
    async fn finish(mut self, readings: &mut mpsc::Receiver<Vec<Reading>>) {
        while let Ok(batch) = readings.try_recv() {
            self.take_burst(batch, readings);
        }
        if self.outbox.is_none() {
            self.open_storage();
        }
        self.append_pending();
        self.after_batch();
        if let Err(error) = self.pending.sync_now() {
            tracing::warn!(%error, "readings journal: final sync failed");
        }
        if !self.pending.is_empty() {
            tracing::warn!(
                readings = self.pending.len(),
                "readings not yet in the outbox stay in the readings journal for the next start"
            );
        }
        if let Some(session) = self.session.take() {
            let _ = session.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), session.network).await;
        }
        if let Some(setup) = self.setup.take() {
            setup.abort();
        }
    }
}

async fn setup_finished(
    setup: &mut Option<JoinHandle<Result<rustls::ClientConfig, SessionSetupError>>>,
) -> Result<Result<rustls::ClientConfig, SessionSetupError>, tokio::task::JoinError> {
    match setup {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn next_network_event(session: &mut Option<Session>) -> Option<NetworkEvent> {
    match session {
        Some(session) => session.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Answers an attestation challenge with pluton's quote (never blocks the runtime).
async fn answer_challenge(
    pluton_socket: Option<PathBuf>,
    challenge: AttestationChallenge,
) -> AttestationQuote {
    let nonce_hex = challenge.nonce.clone();
    let outcome = match (pluton_socket, from_hex(&challenge.nonce)) {
        (None, _) => Err("this unit has no pluton to quote with".to_owned()),
        (_, None) => Err("nonce is not hex".to_owned()),
        (_, Some(nonce)) if nonce.len() < MIN_NONCE_LEN => Err(format!(
            "nonce of {} bytes is shorter than {MIN_NONCE_LEN}",
            nonce.len()
        )),
        (Some(socket), Some(nonce)) => tokio::task::spawn_blocking(move || {
            warden_pluton_api::launch_tokens::connect_for(&socket, warden_pluton_api::Role::Link)
                .and_then(|mut client| client.quote(&nonce))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string())),
    };
    match outcome {
        Ok(quote) => AttestationQuote {
            v: PROTOCOL_VERSION,
            nonce: nonce_hex,
            quote: to_hex(&quote),
            error: None,
        },
        Err(error) => AttestationQuote {
            v: PROTOCOL_VERSION,
            nonce: nonce_hex,
            quote: String::new(),
            error: Some(error),
        },
    }
}

/// The identity the config names: pluton's key, or a key file.
fn client_identity(config: &LinkConfig, certificate: &Path) -> Result<ClientIdentity, LinkError> {
    match (&config.pluton_socket, &config.device_key) {
        (Some(socket), None) => {
            let key = warden_pluton_api::PlutonSigningKey::connect(socket)
                .map_err(|e| LinkError::Pluton(format!("{}: {e}", socket.display())))?;
            let chain = warden_wire::tls::load_certificates(certificate)?;
            Ok(ClientIdentity::from_signer(chain, Arc::new(key)))
        }
        (None, Some(key)) => Ok(ClientIdentity::from_pem_files(certificate, key)?),
        _ => Err(LinkError::Identity),
    }
}

/// Seconds since the Unix epoch, now (certificate validity is in seconds).
fn unix_seconds() -> i64 {
    i64::try_from(unix_millis() / 1000).unwrap_or(i64::MAX)
}

fn lock(outbox: &SharedOutbox) -> std::sync::MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::link_settings::*;
    use super::network::*;
    use super::*;
    use warden_wire::topics::TwinReported;

    fn settings(version: u64, batch_interval_ms: u64) -> LinkSettings {
        LinkSettings {
            version,
            batch_interval_ms,
            max_send_per_second: 200,
        }
    }

    /// The reported states queued so far, oldest first.
    fn reported(control: &ControlSender) -> Vec<TwinReported> {
        let queue = control.lock();
        let mut found = Vec::new();
        let mut next = queue.outbox().next_pending(0);
        while let Some(seq) = next {
            if let Ok(ControlMessage::TwinReported(state)) = queue.message(seq) {
                found.push(state);
            }
            next = queue.outbox().next_pending(seq + 1);
        }
        found
    }

    #[test]
    fn link_settings_apply_whole_or_not_at_all_and_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LINK_SETTINGS_FILE);
        let control = ControlSender::open(&dir.path().join("control")).expect("control");
        control
            .send(&ControlMessage::TwinReported(TwinReported {
                v: PROTOCOL_VERSION,
                policy_version: Some(4),
                ..TwinReported::default()
            }))
            .expect("reported");
        let mut running = None;

        let applied =
            change_link_settings(Ok(Some(settings(1, 250))), &mut running, &path, &control);
        assert_eq!(applied, Some(settings(1, 250)));
        assert_eq!(
            load_link_settings(&path),
            Some(settings(1, 250)),
            "saved before use"
        );
        let now = reported(&control).pop().expect("reported again");
        assert_eq!(now.policy_version, Some(4), "the policy part stays");
        assert_eq!(now.link_settings_version, Some(1));
        assert_eq!(now.link_settings_sha256, Some(settings(1, 250).digest()));
        assert_eq!(now.last_error, None);

        // Out of bounds: refused, named, nothing changes (not even the saved file).
        let refused = change_link_settings(Ok(Some(settings(2, 5))), &mut running, &path, &control);
        assert_eq!(refused, None);
        assert_eq!(running, Some(settings(1, 250)));
        assert_eq!(load_link_settings(&path), Some(settings(1, 250)));
        let now = reported(&control).pop().expect("reported");
        assert_eq!(
            now.link_settings_version,
            Some(1),
            "what runs, not what was asked"
        );
        assert!(
            now.last_error
                .as_deref()
                .is_some_and(|e| e.contains("batch_interval_ms 5 is outside 50..=60000")),
            "{:?}",
            now.last_error
        );

        // An old version (a replay) and a malformed member are refused too.
        assert_eq!(
            change_link_settings(Ok(Some(settings(1, 900))), &mut running, &path, &control),
            None
        );
        let now = reported(&control).pop().expect("reported");
        assert!(
            now.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not above the running version 1"))
        );
        let malformed = LinkSettings::of_desired(br#"{"v":1,"policy_bundle":null,"link":{"version":3,"batch_interval_ms":"fast","max_send_per_second":1}}"#);
        assert_eq!(
            change_link_settings(malformed, &mut running, &path, &control),
            None
        );
        assert_eq!(running, Some(settings(1, 250)));

        // The same settings again change nothing and report nothing new.
        let before = reported(&control).len();
        assert_eq!(
            change_link_settings(Ok(Some(settings(1, 250))), &mut running, &path, &control),
            None
        );
        assert_eq!(reported(&control).len(), before);
    }

    #[test]
    fn reconnects_probe_at_least_every_two_and_a_half_seconds() {
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 2000, 2000, 2000, 2000]);
        assert!(with_jitter(RECONNECT_MAX) <= Duration::from_millis(2500));
        backoff.reset();
        assert_eq!(backoff.next_delay(), RECONNECT_FIRST);
        let mut setup = Backoff::new(SETUP_RETRY_FIRST, SETUP_RETRY_MAX);
        let delays: Vec<u64> = (0..7).map(|_| setup.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_broker_silent_for_two_keep_alives_is_dead() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(5), start);
        assert_eq!(liveness.deadline(), start + Duration::from_secs(10));
        assert_eq!(
            liveness.dead_for(start + Duration::from_millis(9_999)),
            None
        );
        // A PUBACK at 8 s keeps it alive until 18 s.
        liveness.heard(start + Duration::from_secs(8));
        assert_eq!(liveness.dead_for(start + Duration::from_secs(12)), None);
        assert_eq!(
            liveness.dead_for(start + Duration::from_secs(18)),
            Some(Duration::from_secs(10))
        );
        // Time never goes back.
        liveness.heard(start);
        assert_eq!(liveness.deadline(), start + Duration::from_secs(18));
    }

    #[test]
    fn a_desired_state_without_link_settings_reads_as_none() {
        assert_eq!(
            LinkSettings::of_desired(br#"{"v":1,"policy_bundle":"00"}"#).ok(),
            Some(None)
        );
        let with = br#"{"v":1,"policy_bundle":null,"link":{"version":2,"batch_interval_ms":100,"max_send_per_second":50}}"#;
        assert_eq!(
            LinkSettings::of_desired(with).ok(),
            Some(Some(LinkSettings {
                version: 2,
                batch_interval_ms: 100,
                max_send_per_second: 50
            }))
        );
        assert!(
            TwinDesired::decode(with).is_ok(),
            "an older device still reads the policy part"
        );
        let unknown = br#"{"v":1,"policy_bundle":null,"link":{"version":2,"batch_interval_ms":100,"max_send_per_second":50,"fsync":"never"}}"#;
        assert!(
            LinkSettings::of_desired(unknown)
                .is_err_and(|e| e.to_string().contains("unknown field"))
        );
    }
}
