//! The link agent: readings → durable outbox → MQTT/TLS → fleet, until acknowledged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlMessage, ControlSender};
use crate::dispatch::{DispatchLimits, Dispatcher};
use crate::outbox::{Outbox, OutboxConfig, OutboxError, OutboxStats};
use crate::tls::{ClientIdentity, TlsError, client_config};
use crate::topics::{
    Ack, CONTROL_STREAM, Command, CommandResult, CommandStatus, LinkSettings, PROTOCOL_VERSION,
    Reading, TELEMETRY_STREAM, TelemetryBatch, TwinDesired, UpdateOffer, ack_topic, commands_topic,
    event_kind, telemetry_topic, twin_desired_topic, update_offer_topic,
};
use crate::topics::{
    AttestationChallenge, AttestationQuote, AttestationVerdict, DeviceEvent, MIN_NONCE_LEN,
    attestation_challenge_topic, attestation_quote_topic, attestation_verdict_topic, from_hex,
    to_hex,
};

/// Readings held in memory while the outbox refuses more (then the newest are dropped, counted).
const MAX_PENDING_READINGS: usize = 100_000;
/// How often the agent looks for messages to send.
const PUMP_INTERVAL: Duration = Duration::from_millis(10);

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

/// Whether the link is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not yet connected.
    #[default]
    Connecting,
    /// Connected and acknowledged by the broker.
    Connected,
    /// Lost; reconnecting with backoff.
    Disconnected,
    /// The link cannot run at all right now (no identity: pluton unreachable or a
    /// certificate missing; TLS configuration unusable; outbox unusable): the cause is
    /// in [`LinkStatus::last_error`] and the agent tries again with backoff.
    Unavailable,
}

/// The link's state and counters, shared with the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// Batches written to the outbox.
    pub batches_queued: u64,
    /// Batches the fleet acknowledged (stored).
    pub batches_acknowledged: u64,
    /// Control messages (results, reported state, events, reports, update status)
    /// the fleet acknowledged.
    pub control_acknowledged: u64,
    /// The durable control queue.
    pub control: OutboxStats,
    /// Messages sent, including resends.
    pub messages_sent: u64,
    /// Readings dropped because the outbox refused them and memory was full too.
    pub readings_dropped: u64,
    /// The store-and-forward queue.
    pub outbox: OutboxStats,
    /// Last connection error, for people.
    pub last_error: Option<String>,
    /// When the fleet last acknowledged a telemetry batch, ms since the epoch.
    pub last_ack_ms: Option<u64>,
    /// When the link was last connected to the broker (ConnAck or any packet since),
    /// ms since the epoch.
    pub last_connected_ms: Option<u64>,
    /// Times the agent had to start over after an error (identity, TLS, outbox).
    pub restarts: u64,
    /// The fleet's attestation challenges as this unit answered them.
    pub attestation: AttestationAnswers,
}

/// The fleet's attestation challenges, this unit's answers, and the fleet's last
/// verdict on them (`attestation/verdict`; the unit only shows it, the fleet enforces
/// it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationAnswers {
    /// Challenges answered since the link started.
    pub answered: u64,
    /// When the last one was answered, ms since the epoch.
    pub last_answered_ms: Option<u64>,
    /// Why the last answer carried no quote (pluton unreachable, bad nonce) or could
    /// not be published; `None` when a quote went out.
    pub last_error: Option<String>,
    /// The fleet's last verdict, if one came since the link started.
    pub verdict: Option<FleetVerdict>,
}

/// The fleet's verdict as the unit received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVerdict {
    /// The fleet trusts this unit.
    pub trusted: bool,
    /// The known release the fleet found the unit running, if any.
    pub release: Option<String>,
    /// What the fleet found, for people.
    pub detail: String,
    /// When it arrived, ms since the epoch.
    pub received_ms: u64,
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

enum NetworkEvent {
    Connected,
    Disconnected(String),
    Ack(Ack),
    Command(Command),
    Desired(TwinDesired, Result<Option<LinkSettings>, String>),
    Challenge(AttestationChallenge),
    Verdict(AttestationVerdict),
    Offer(UpdateOffer),
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
    /// The durable control queue: what is pushed here is published until acknowledged,
    /// across outages and restarts.
    pub control: ControlSender,
}

struct ApplianceEnd {
    commands: mpsc::Sender<Command>,
    desired: mpsc::Sender<TwinDesired>,
    offers: mpsc::Sender<UpdateOffer>,
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
        }
    }

    /// Uses `identity` (for example one whose key pluton holds) instead of the key file.
    pub fn with_identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sends from `outbox` (already open) instead of opening the configured one.
    pub fn with_outbox(mut self, outbox: SharedOutbox) -> Self {
        self.outbox = Some(outbox);
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
        self.commands = Some(ApplianceEnd {
            commands: command_tx,
            desired: desired_tx,
            offers: offers_tx,
        });
        Ok(CommandChannel {
            commands,
            desired,
            offers,
            control,
        })
    }

    /// The link's status, updated as it runs.
    pub fn status(&self) -> Arc<Mutex<LinkStatus>> {
        Arc::clone(&self.status)
    }

    /// Runs until `shutdown` fires or `readings` closes; then writes what it holds to
    /// the outbox, so nothing read is lost across a restart.
    pub async fn run(
        mut self,
        mut readings: mpsc::Receiver<Reading>,
        shutdown: CancellationToken,
    ) -> Result<(), LinkError> {
        let identity = match self.identity.take() {
            Some(identity) => identity,
            None => client_identity(&self.config)?,
        };
        let tls = client_config(&self.config.fleet_ca, identity)?;
        let shared = match self.outbox.take() {
            Some(shared) => shared,
            None => Arc::new(Mutex::new(Outbox::open(self.config.outbox.clone())?)),
        };
        let control = self.control()?;
        let control_epoch = control.lock().epoch();
        let epoch = lock(&shared).epoch();
        let mut options = MqttOptions::new(
            self.device_id.clone(),
            &self.config.broker_host,
            self.config.broker_port,
        );
        options.set_keep_alive(Duration::from_secs(15));
        options.set_max_packet_size(crate::outbox::MAX_RECORD_PAYLOAD + 1024, 256 * 1024);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (events_tx, mut events) = mpsc::channel(1024);
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
            },
            events_tx,
            shutdown.clone(),
        ));
        let quote_topic = attestation_quote_topic(&self.device_id);
        let mut reported_loss = {
            let stats = lock(&shared).stats();
            (stats.dropped_oldest, stats.refused)
        };
        let pluton_socket = self.config.pluton_socket.clone();
        let (command_tx, desired_tx, offers_tx) = match self.commands.take() {
            Some(end) => (Some(end.commands), Some(end.desired), Some(end.offers)),
            None => (None, None, None),
        };
        let limits = DispatchLimits {
            max_per_second: self.config.max_send_per_second,
            ..DispatchLimits::default()
        };
        let settings_path = self.config.outbox.dir.join(LINK_SETTINGS_FILE);
        let mut running_settings = load_link_settings(&settings_path);
        let (mut batch_interval_ms, mut limits) = (self.config.batch_interval_ms, limits);
        if let Some(settings) = &running_settings {
            tracing::info!(version = settings.version, "link settings from the fleet");
            batch_interval_ms = settings.batch_interval_ms;
            limits.max_per_second = settings.max_send_per_second;
            control
                .lock()
                .set_link_settings(Some(settings.clone()), None)?;
        }
        let mut control_dispatcher = Dispatcher::new(limits);
        // When the link went down (for the `link-restored` event), if it is down.
        let mut down_since: Option<u64> = None;

        let topic = telemetry_topic(&self.device_id);
        let mut dispatcher = Dispatcher::new(limits);
        let mut pending: Vec<Reading> = Vec::new();
        let mut batch_tick =
            tokio::time::interval(Duration::from_millis(batch_interval_ms.max(10)));
        let mut pump = tokio::time::interval(PUMP_INTERVAL);
        pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let status = Arc::clone(&self.status);
        let mut result = Ok(());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                reading = readings.recv() => match reading {
                    Some(reading) if pending.len() < MAX_PENDING_READINGS => pending.push(reading),
                    Some(_) => update(&status, |s| s.readings_dropped += 1),
                    None => break,
                },
                _ = batch_tick.tick() => {
                    let mut outbox = lock(&shared);
                    if let Err(error) = enqueue(&mut outbox, &mut pending, &status) {
                        result = Err(error);
                        break;
                    }
                    if let Err(error) = outbox.sync() {
                        tracing::error!(%error, "outbox sync failed");
                    }
                    // Overflow is never silent: each new drop or refusal is an event.
                    let stats = outbox.stats();
                    if stats.dropped_oldest > reported_loss.0 || stats.refused > reported_loss.1 {
                        let event = DeviceEvent::now(
                            event_kind::OUTBOX_OVERFLOW,
                            format!(
                                "store-and-forward queue full: {} batches dropped (oldest first), {} appends refused so far",
                                stats.dropped_oldest, stats.refused
                            ),
                        );
                        tracing::warn!(detail = %event.detail, "outbox overflow");
                        drop(outbox);
                        control.send_or_log(&ControlMessage::Event(event));
                        reported_loss = (stats.dropped_oldest, stats.refused);
                    }
                }
                event = events.recv() => match event {
                    Some(NetworkEvent::Connected) => {
                        dispatcher.on_connected();
                        control_dispatcher.on_connected();
                        if let Some(since) = down_since.take() {
                            let waiting = lock(&shared).stats().depth;
                            let event = DeviceEvent::now(
                                event_kind::LINK_RESTORED,
                                format!(
                                    "link up again after {} s down; {waiting} telemetry batches waiting to be sent",
                                    unix_millis().saturating_sub(since) / 1000
                                ),
                            );
                            control.send_or_log(&ControlMessage::Event(event));
                        }
                        update(&status, |s| { s.state = LinkState::Connected; s.last_error = None; });
                    }
                    Some(NetworkEvent::Disconnected(error)) => {
                        dispatcher.on_disconnected();
                        control_dispatcher.on_disconnected();
                        down_since.get_or_insert_with(unix_millis);
                        update(&status, |s| { s.state = LinkState::Disconnected; s.last_error = Some(error); });
                    }
                    Some(NetworkEvent::Ack(ack)) if ack.stream == CONTROL_STREAM => {
                        let mut queue = control.lock();
                        if ack.epoch == control_epoch && queue.is_pending(ack.seq) {
                            queue.ack(ack.seq)?;
                            control_dispatcher.on_ack(ack.seq);
                            update(&status, |s| s.control_acknowledged += 1);
                        }
                    }
                    Some(NetworkEvent::Ack(ack)) => {
                        let mut outbox = lock(&shared);
                        if ack.epoch == epoch && ack.stream == TELEMETRY_STREAM && outbox.is_pending(ack.seq) {
                            outbox.ack(ack.seq)?;
                            dispatcher.on_ack(ack.seq);
                            update(&status, |s| s.batches_acknowledged += 1);
                        }
                    }
                    Some(NetworkEvent::Command(command)) => {
                        let refused = match &command_tx {
                            Some(tx) => tx.try_send(command).err().map(|e| (e.into_inner(), "the device is busy; retry later")),
                            None => Some((command, "this device takes no commands")),
                        };
                        if let Some((command, why)) = refused {
                            let result = CommandResult { v: PROTOCOL_VERSION, id: command.id, status: CommandStatus::Failed, detail: why.to_owned() };
                            control.send_or_log(&ControlMessage::CommandResult(result));
                        }
                    }
                    Some(NetworkEvent::Challenge(challenge)) => {
                        let answer = answer_challenge(pluton_socket.clone(), challenge).await;
                        let published = client.try_publish(&quote_topic, QoS::AtLeastOnce, false, crate::topics::encode(&answer));
                        update(&status, |s| {
                            s.attestation.answered += 1;
                            s.attestation.last_answered_ms = Some(unix_millis());
                            s.attestation.last_error = answer.error.clone().or_else(|| {
                                published.err().map(|e| format!("quote not published: {e}"))
                            });
                        });
                    }
                    Some(NetworkEvent::Verdict(verdict)) => {
                        if verdict.trusted {
                            tracing::info!(release = ?verdict.release, "the fleet trusts this unit");
                        } else {
                            tracing::warn!(detail = %verdict.detail, "the fleet does not trust this unit");
                        }
                        update(&status, |s| {
                            s.attestation.verdict = Some(FleetVerdict {
                                trusted: verdict.trusted,
                                release: verdict.release,
                                detail: verdict.detail,
                                received_ms: unix_millis(),
                            });
                        });
                    }
                    Some(NetworkEvent::Desired(desired, link)) => {
                        if let Some(applied) = change_link_settings(link, &mut running_settings, &settings_path, &control) {
                            batch_tick = tokio::time::interval(Duration::from_millis(applied.batch_interval_ms));
                            dispatcher.set_max_per_second(applied.max_send_per_second);
                            control_dispatcher.set_max_per_second(applied.max_send_per_second);
                        }
                        match &desired_tx {
                        Some(tx) => {
                            if tx.try_send(desired).is_err() {
                                tracing::warn!("desired state dropped: the appliance is busy applying the previous one");
                            }
                        }
                        None => tracing::warn!("desired state ignored: this link has no appliance behind it"),
                    }},
                    Some(NetworkEvent::Offer(offer)) => match &offers_tx {
                        Some(tx) => {
                            if tx.try_send(offer).is_err() {
                                tracing::warn!("update offer dropped: the appliance is busy with the previous one");
                            }
                        }
                        None => tracing::warn!("update offer ignored: this link has no appliance behind it"),
                    },
                    None => break,
                },
                _ = pump.tick() => {
                    let now = unix_millis();
                    let outbox = lock(&shared);
                    while let Some(seq) = dispatcher.next_to_send(&outbox, now) {
                        let payload = outbox.read(seq)?;
                        if client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_err() {
                            break; // the client's queue is full; retransmission picks it up
                        }
                        update(&status, |s| s.messages_sent += 1);
                    }
                    let stats = outbox.stats();
                    drop(outbox);
                    let queue = control.lock();
                    while let Some(seq) = control_dispatcher.next_to_send(queue.outbox(), now) {
                        let (topic, payload) = queue.publication(&self.device_id, seq)?;
                        if client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_err() {
                            break; // retransmission picks it up
                        }
                        update(&status, |s| s.messages_sent += 1);
                    }
                    let control_stats = queue.stats();
                    update(&status, |s| { s.outbox = stats; s.control = control_stats; });
                }
            }
        }
        // Keep what was read: it goes out after the next start.
        {
            let mut outbox = lock(&shared);
            if let Err(error) = enqueue(&mut outbox, &mut pending, &status) {
                tracing::error!(%error, "cannot save the last readings to the outbox");
            }
            outbox.sync()?;
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), network).await;
        result
    }
}

/// Where the link settings from the fleet are kept (in the outbox directory).
const LINK_SETTINGS_FILE: &str = "link-settings.json";

/// The saved link settings, if any and valid (an invalid file is ignored, logged).
fn load_link_settings(path: &Path) -> Option<LinkSettings> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<LinkSettings>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|settings| settings.validate().map(|()| settings))
    {
        Ok(settings) => Some(settings),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "saved link settings ignored");
            None
        }
    }
}

/// Applies a link settings change from the twin, whole or not at all: validated,
/// newer than the running one, saved (atomically) before it takes effect. Returns the
/// settings to use from now on, if they changed; every outcome is reported.
fn change_link_settings(
    change: Result<Option<LinkSettings>, String>,
    running: &mut Option<LinkSettings>,
    path: &Path,
    control: &ControlSender,
) -> Option<LinkSettings> {
    let proposed = match change {
        Ok(None) => return None,
        Ok(Some(settings)) if running.as_ref() == Some(&settings) => return None,
        Ok(Some(settings)) => settings,
        Err(why) => return refuse_link_settings(why, running, control),
    };
    if let Err(why) = proposed.validate() {
        return refuse_link_settings(why, running, control);
    }
    if let Some(current) = running.as_ref()
        && proposed.version <= current.version
    {
        let why = format!(
            "link settings: version {} is not above the running version {}",
            proposed.version, current.version
        );
        return refuse_link_settings(why, running, control);
    }
    if let Err(error) = save_link_settings(path, &proposed) {
        let why = format!("link settings: cannot save {}: {error}", path.display());
        return refuse_link_settings(why, running, control);
    }
    tracing::info!(
        version = proposed.version,
        "link settings from the fleet applied"
    );
    *running = Some(proposed.clone());
    if let Err(error) = control
        .lock()
        .set_link_settings(Some(proposed.clone()), None)
    {
        tracing::error!(%error, "cannot report the new link settings");
    }
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::CONFIG_APPLIED,
        format!(
            "link settings version {}: batches every {} ms, at most {} messages/s",
            proposed.version, proposed.batch_interval_ms, proposed.max_send_per_second
        ),
    )));
    Some(proposed)
}

fn refuse_link_settings(
    why: String,
    running: &Option<LinkSettings>,
    control: &ControlSender,
) -> Option<LinkSettings> {
    tracing::warn!(%why, "link settings refused; the running ones stay");
    if let Err(error) = control
        .lock()
        .set_link_settings(running.clone(), Some(why.clone()))
    {
        tracing::error!(%error, "cannot report the refused link settings");
    }
    control.send_or_log(&ControlMessage::Event(DeviceEvent::now(
        event_kind::CONFIG_REFUSED,
        format!("{why}; nothing was changed"),
    )));
    None
}

fn save_link_settings(path: &Path, settings: &LinkSettings) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&crate::topics::encode(settings))?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
            warden_pluton_api::PlutonClient::connect(&socket)
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
fn client_identity(config: &LinkConfig) -> Result<ClientIdentity, LinkError> {
    match (&config.pluton_socket, &config.device_key) {
        (Some(socket), None) => {
            let key = warden_pluton_api::PlutonSigningKey::connect(socket)
                .map_err(|e| LinkError::Pluton(format!("{}: {e}", socket.display())))?;
            let chain = crate::tls::load_certificates(&config.device_cert)?;
            Ok(ClientIdentity::from_signer(chain, Arc::new(key)))
        }
        (None, Some(key)) => Ok(ClientIdentity::from_pem_files(&config.device_cert, key)?),
        _ => Err(LinkError::Identity),
    }
}

/// Writes the pending readings to the outbox as one telemetry batch.
fn enqueue(
    outbox: &mut Outbox,
    pending: &mut Vec<Reading>,
    status: &Mutex<LinkStatus>,
) -> Result<(), LinkError> {
    if pending.is_empty() {
        return Ok(());
    }
    let appended = outbox.append(|seq, epoch| {
        TelemetryBatch {
            v: PROTOCOL_VERSION,
            stream: TELEMETRY_STREAM.to_owned(),
            epoch,
            seq,
            readings: pending.clone(),
        }
        .encode()
    });
    match appended {
        Ok(_) => {
            pending.clear();
            update(status, |s| s.batches_queued += 1);
            Ok(())
        }
        Err(OutboxError::Full { .. }) => Ok(()), // kept in memory; retried next batch
        Err(error) => Err(error.into()),
    }
}

/// The topics the device subscribes to.
struct Topics {
    ack: String,
    commands: String,
    desired: String,
    challenge: String,
    verdict: String,
    offers: String,
}

async fn network_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    topics: Topics,
    events: mpsc::Sender<NetworkEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("link connected");
                backoff = Duration::from_millis(200);
                for topic in [
                    &topics.ack,
                    &topics.commands,
                    &topics.desired,
                    &topics.challenge,
                    &topics.verdict,
                    &topics.offers,
                ] {
                    if let Err(error) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::warn!(%error, topic, "cannot subscribe");
                    }
                }
                Some(NetworkEvent::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.commands => {
                match Command::decode(&publish.payload) {
                    Ok(command) => Some(NetworkEvent::Command(command)),
                    Err(error) => {
                        tracing::warn!(%error, "malformed command ignored");
                        None
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.challenge => {
                match serde_json::from_slice::<AttestationChallenge>(&publish.payload) {
                    Ok(challenge) => Some(NetworkEvent::Challenge(challenge)),
                    Err(error) => {
                        tracing::warn!(%error, "malformed attestation challenge ignored");
                        None
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.verdict => {
                match serde_json::from_slice::<AttestationVerdict>(&publish.payload) {
                    Ok(verdict) if verdict.v == PROTOCOL_VERSION => {
                        Some(NetworkEvent::Verdict(verdict))
                    }
                    Ok(verdict) => {
                        tracing::warn!(
                            v = verdict.v,
                            "attestation verdict of another version ignored"
                        );
                        None
                    }
                    Err(error) => {
                        tracing::warn!(%error, "malformed attestation verdict ignored");
                        None
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.desired => {
                match TwinDesired::decode(&publish.payload) {
                    Ok(desired) => Some(NetworkEvent::Desired(
                        desired,
                        LinkSettings::of_desired(&publish.payload),
                    )),
                    Err(error) => {
                        tracing::warn!(%error, "malformed desired state ignored");
                        None
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.offers => {
                match UpdateOffer::decode(&publish.payload) {
                    Ok(offer) => Some(NetworkEvent::Offer(offer)),
                    Err(error) => {
                        tracing::warn!(%error, "malformed update offer ignored");
                        None
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == topics.ack => {
                match Ack::decode(&publish.payload) {
                    Ok(ack) => Some(NetworkEvent::Ack(ack)),
                    Err(error) => {
                        tracing::warn!(%error, "malformed acknowledgement ignored");
                        None
                    }
                }
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "link connection failed; reconnecting");
                let _ = events
                    .send(NetworkEvent::Disconnected(error.to_string()))
                    .await;
                let delay = with_jitter(backoff);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                None
            }
        };
        if let Some(event) = forward
            && events.send(event).await.is_err()
        {
            return;
        }
    }
}

fn lock(outbox: &SharedOutbox) -> std::sync::MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(PoisonError::into_inner)
}

fn update(status: &Mutex<LinkStatus>, change: impl FnOnce(&mut LinkStatus)) {
    change(&mut status.lock().unwrap_or_else(PoisonError::into_inner));
}

/// `delay` plus up to 25 % jitter, so a fleet of devices does not reconnect in step.
fn with_jitter(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let quarter = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(u64::from(nanos) % (quarter + 1))
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::TwinReported;

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
    fn a_desired_state_without_link_settings_reads_as_none() {
        assert_eq!(
            LinkSettings::of_desired(br#"{"v":1,"policy_bundle":"00"}"#),
            Ok(None)
        );
        let with = br#"{"v":1,"policy_bundle":null,"link":{"version":2,"batch_interval_ms":100,"max_send_per_second":50}}"#;
        assert_eq!(
            LinkSettings::of_desired(with),
            Ok(Some(LinkSettings {
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
        assert!(LinkSettings::of_desired(unknown).is_err_and(|e| e.contains("unknown field")));
    }
}
