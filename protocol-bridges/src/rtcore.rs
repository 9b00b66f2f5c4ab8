//! An RTU line driven by the real-time core, reached over the mailbox UART.
//!
//! With `transport = "rtcore"` a bridge does not open the RS-485 port itself: the
//! firmware in `protocol-bridges/rtcore/firmware` owns it, runs the same sans-IO
//! `RtuMaster`, and checks every request against a policy bundle it verified itself.
//! This module is the application side: one task owns the mailbox device, says
//! hello, configures the line, uploads the signed bundle, then turns calls into
//! `ToCore::Transact` frames and `FromCore::Outcome` frames back into answers.
//! Results, counters (timeouts, retries, CRC errors, noise) and failures land in the
//! same [`BridgeHealth`] as a native bus, so points and reports look the same.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_rtcore_mailbox::framing::decode_message;
use warden_rtcore_mailbox::message::ConfigureRefusal;
use warden_rtcore_mailbox::{
    BUNDLE_CHUNK_LEN, BundleRefusal, CoreCounters, FrameDecoder, FromCore, LineSettings,
    MAX_BUNDLE_LEN, MAX_FRAME_LEN, Outcome, PROTOCOL_VERSION, Parity as MailboxParity,
    RequestSource as MailboxSource, ToCore, encode_frame,
};

use crate::bridge::{BridgeHealth, HealthEvent};
use crate::config::{ConfigProblem, ModbusRtuBridgeConfig};
use crate::modbus::pdu::{ExceptionCode, Request, Response};
use crate::modbus::rtu_bus::Parity;
use crate::modbus::{Answer, ClientError, MAX_PDU_LEN};
use crate::request_policy::RequestSource;

/// Who drives an RTU line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtuTransport {
    /// This process opens the serial port (tokio-serial) and runs the master.
    #[default]
    Native,
    /// The real-time core owns the port; this process talks to it over `mailbox`.
    Rtcore,
}

/// How long the core may take to say hello, accept settings or verify a bundle.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the core's counters are read into the bridge's health.
const COUNTER_PERIOD: Duration = Duration::from_millis(500);

/// Checks the transport fields of an RTU bridge at `at` (`bridges.modbus_rtu[0]`).
pub fn check_transport(bridge: &ModbusRtuBridgeConfig, at: &str) -> Result<(), ConfigProblem> {
    let problem = |field: &str, message: &str| ConfigProblem {
        field: format!("{at}.{field}"),
        message: message.to_owned(),
    };
    match bridge.transport {
        RtuTransport::Native => {
            if bridge.mailbox.is_some() {
                return Err(problem(
                    "mailbox",
                    "only a transport = \"rtcore\" line has a mailbox",
                ));
            }
            if bridge.policy_bundle.is_some() {
                return Err(problem(
                    "policy_bundle",
                    "only a transport = \"rtcore\" line takes a policy bundle",
                ));
            }
        }
        RtuTransport::Rtcore => {
            if bridge.mailbox.as_deref().is_none_or(str::is_empty) {
                return Err(problem(
                    "mailbox",
                    "transport = \"rtcore\" needs the mailbox device of the real-time core",
                ));
            }
            if bridge.policy_bundle.is_none() {
                return Err(problem(
                    "policy_bundle",
                    "transport = \"rtcore\" needs the signed policy bundle the core verifies",
                ));
            }
            if !(1200..=921_600).contains(&bridge.baud) {
                return Err(problem(
                    "baud",
                    &format!(
                        "{} is outside what the real-time core drives (1200..=921600)",
                        bridge.baud
                    ),
                ));
            }
            if bridge.timeout_ms > u64::from(u32::MAX) {
                return Err(problem("timeout_ms", "is too large"));
            }
        }
    }
    Ok(())
}

/// Everything the mailbox task needs to bring the core up.
#[derive(Debug, Clone)]
pub struct CoreSetup {
    /// The policy's name of this bridge (the core evaluates requests as this bridge).
    pub bridge: String,
    /// The line the core drives.
    pub line: LineSettings,
    /// The signed policy bundle to upload after every (re)connection.
    pub bundle: Arc<Vec<u8>>,
}

impl CoreSetup {
    /// From an RTU bridge's config, with the bundle read from `policy_bundle`.
    pub fn from_config(bridge: &ModbusRtuBridgeConfig) -> Result<Self, RtCoreError> {
        let path = bridge
            .policy_bundle
            .clone()
            .ok_or_else(|| RtCoreError::Bundle("no policy_bundle configured".into()))?;
        let bundle = std::fs::read(&path)
            .map_err(|e| RtCoreError::Bundle(format!("cannot read {}: {e}", path.display())))?;
        Ok(Self {
            bridge: bridge.name.clone(),
            line: line_settings(bridge),
            bundle: Arc::new(bundle),
        })
    }
}

/// The line settings of an RTU bridge as the core takes them.
pub fn line_settings(bridge: &ModbusRtuBridgeConfig) -> LineSettings {
    LineSettings {
        baud: bridge.baud,
        parity: match bridge.parity {
            Parity::None => MailboxParity::None,
            Parity::Even => MailboxParity::Even,
            Parity::Odd => MailboxParity::Odd,
        },
        stop_bits: bridge.stop_bits,
        response_timeout_ms: u32::try_from(bridge.timeout_ms).unwrap_or(u32::MAX),
        retries: u8::try_from(bridge.retries).unwrap_or(u8::MAX),
    }
}

/// Why a call through the core, or the core itself, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtCoreError {
    /// The core's policy refused the request; nothing went on the line.
    #[error("the real-time core's policy denied the request: {reason}")]
    Denied {
        /// The policy's reason (`address-not-allowed`) and rule.
        reason: String,
        /// What a Modbus server answers in its place (02 for addresses, else 01).
        exception: ExceptionCode,
    },
    /// The core has no verified policy bundle: it denies everything.
    #[error("the real-time core has no verified policy bundle; every request is denied")]
    NoPolicy,
    /// The core refused a bundle.
    #[error("the real-time core refused the policy bundle: {0}")]
    BundleRefused(BundleRefusal),
    /// The bundle could not be read or is too large to upload.
    #[error("policy bundle for the real-time core: {0}")]
    Bundle(String),
    /// The core refused the line settings.
    #[error("the real-time core refused the line settings: {0}")]
    ConfigureRefused(ConfigureRefusal),
    /// The core speaks another mailbox protocol.
    #[error("the real-time core speaks mailbox protocol {core}, this build {ours}")]
    Protocol {
        /// The core's.
        core: u16,
        /// Ours.
        ours: u16,
    },
    /// The core refused the request as malformed, busy or unconfigured.
    #[error("the real-time core did not take the request: {0}")]
    NotTaken(&'static str),
    /// The line failed (timeout, garbled answers) or the mailbox did.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl RtCoreError {
    /// As a [`ClientError`] for the bridge's downstream: a policy refusal by the core
    /// becomes `PermissionDenied` (it is also counted as a denial in the health).
    pub fn into_client_error(self) -> ClientError {
        match self {
            Self::Client(error) => error,
            Self::Denied { .. } | Self::NoPolicy => {
                ClientError::Io(std::io::ErrorKind::PermissionDenied)
            }
            Self::NotTaken(_) => ClientError::Io(std::io::ErrorKind::InvalidInput),
            _ => ClientError::Io(std::io::ErrorKind::NotConnected),
        }
    }
}

type CallReply = oneshot::Sender<Result<Answer, RtCoreError>>;
type BundleReply = oneshot::Sender<Result<u64, RtCoreError>>;

// A request is held inline (as the native bus's jobs hold it): one command per call,
// moved once, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Command {
    Transact {
        unit: u8,
        request: Request,
        source: RequestSource,
        reply: CallReply,
    },
    LoadBundle {
        bundle: Arc<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, RtCoreError>>,
    },
    Counters {
        reply: oneshot::Sender<CoreCounters>,
    },
}

/// A handle to the task that owns the mailbox; cheap to clone.
#[derive(Clone)]
pub struct RtCoreBus {
    commands: mpsc::Sender<Command>,
    call_timeout: Duration,
}

impl std::fmt::Debug for RtCoreBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtCoreBus").finish_non_exhaustive()
    }
}

impl RtCoreBus {
    /// Returns the handle and the task that opens the mailbox device `path` (and
    /// reopens it with backoff), brings the core up with `setup` and serves calls
    /// until `shutdown`.
    pub fn for_mailbox_device(
        path: String,
        setup: CoreSetup,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (bus, mut rx) = Self::channel(&setup.line);
        let task = async move {
            let mut failures = 0u32;
            let mut link = Link::new(setup, health);
            loop {
                match tokio_serial::SerialStream::open(&tokio_serial::new(&path, 921_600)) {
                    Ok(mut port) => {
                        failures = 0;
                        match link.serve(&mut port, &mut rx, &shutdown).await {
                            Ok(()) => return,
                            Err(error) => link.record_error(&format!("mailbox {path}: {error}")),
                        }
                    }
                    Err(error) => {
                        link.record_error(&format!("cannot open mailbox {path}: {error}"))
                    }
                }
                link.set_connected(false);
                link.fail_pending(&mut rx);
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(100 << failures.min(5));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        };
        (bus, task)
    }

    /// The same over any byte stream (a socket or pty in tests); ends on the first
    /// mailbox error.
    pub fn over_stream<S>(
        stream: S,
        setup: CoreSetup,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (bus, mut rx) = Self::channel(&setup.line);
        let task = async move {
            let mut stream = stream;
            let mut link = Link::new(setup, health);
            if let Err(error) = link.serve(&mut stream, &mut rx, &shutdown).await {
                link.record_error(&format!("mailbox: {error}"));
            }
            link.set_connected(false);
            link.fail_pending(&mut rx);
        };
        (bus, task)
    }

    fn channel(line: &LineSettings) -> (Self, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(64);
        // Every attempt may wait for its timeout, plus the line time and the mailbox.
        let attempts = u64::from(line.retries) + 1;
        let call_timeout =
            Duration::from_millis(attempts * (u64::from(line.response_timeout_ms) + 50) + 2_000);
        (
            Self {
                commands,
                call_timeout,
            },
            rx,
        )
    }

    /// Sends `request` to `unit` on behalf of `source` through the core's policy.
    pub async fn call(
        &self,
        unit: u8,
        request: Request,
        source: RequestSource,
    ) -> Result<Answer, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Transact {
                unit,
                request,
                source,
                reply,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(self.call_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }

    /// Uploads a new signed bundle; the core verifies it before it applies it.
    pub async fn load_bundle(&self, bundle: Arc<Vec<u8>>) -> Result<u64, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::LoadBundle { bundle, reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }

    /// The core's counters since its boot.
    pub async fn counters(&self) -> Result<CoreCounters, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Counters { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await {
            Ok(Ok(counters)) => Ok(counters),
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }
}

/// A message from the core, copied out of the frame buffer.
#[derive(Debug)]
enum Received {
    Ready {
        protocol: u16,
        policy_version: Option<u64>,
    },
    Configured,
    ConfigureRefused(ConfigureRefusal),
    BundleAccepted(u64),
    BundleRefused(BundleRefusal),
    Outcome {
        id: u32,
        outcome: OwnedOutcome,
    },
    Counters(CoreCounters),
    Garbled,
}

#[derive(Debug)]
enum OwnedOutcome {
    Response(Vec<u8>),
    BroadcastSent,
    Timeout,
    Corrupted,
    Denied { reason: u8, rule: Option<u16> },
    NoPolicy,
    NotTaken(&'static str),
}

impl Received {
    fn from_frame(message: FromCore<'_>) -> Option<Self> {
        Some(match message {
            FromCore::Ready {
                protocol,
                policy_version,
                ..
            } => Self::Ready {
                protocol,
                policy_version,
            },
            FromCore::Configured => Self::Configured,
            FromCore::ConfigureRefused { reason } => Self::ConfigureRefused(reason),
            FromCore::BundleAccepted { version } => Self::BundleAccepted(version),
            FromCore::BundleRefused { reason } => Self::BundleRefused(reason),
            FromCore::Outcome { id, outcome } => Self::Outcome {
                id,
                outcome: match outcome {
                    Outcome::Response { pdu } => OwnedOutcome::Response(pdu.to_vec()),
                    Outcome::BroadcastSent => OwnedOutcome::BroadcastSent,
                    Outcome::Timeout => OwnedOutcome::Timeout,
                    Outcome::Corrupted => OwnedOutcome::Corrupted,
                    Outcome::Denied { reason, rule } => OwnedOutcome::Denied { reason, rule },
                    Outcome::NoPolicy => OwnedOutcome::NoPolicy,
                    Outcome::NotConfigured => OwnedOutcome::NotTaken("the line is not configured"),
                    Outcome::BadRequest => OwnedOutcome::NotTaken("malformed request"),
                    Outcome::Busy => OwnedOutcome::NotTaken("the core's queue is full"),
                    _ => OwnedOutcome::NotTaken("unknown outcome"),
                },
            },
            FromCore::Counters(counters) => Self::Counters(counters),
            FromCore::Garbled => Self::Garbled,
            _ => return None,
        })
    }
}

/// Turns a core denial into the text and exception a native denial would carry.
fn denial(reason: u8, rule: Option<u16>) -> RtCoreError {
    let reason = warden_policy::Reason::from_code(reason);
    let exception = if reason == Some(warden_policy::Reason::AddressNotAllowed) {
        ExceptionCode::ILLEGAL_DATA_ADDRESS
    } else {
        ExceptionCode::ILLEGAL_FUNCTION
    };
    let name = reason.map_or("unknown reason", warden_policy::Reason::name);
    let reason = match rule {
        Some(rule) => format!("{name} (rule #{rule})"),
        None => name.to_owned(),
    };
    RtCoreError::Denied { reason, exception }
}

struct Pending {
    unit: u8,
    request: Request,
    reply: CallReply,
}

/// The application side of one mailbox connection.
struct Link {
    setup: CoreSetup,
    health: Arc<Mutex<BridgeHealth>>,
    decoder: FrameDecoder,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    /// Bundles uploaded at run time, each with whoever waits for the core's verdict.
    bundle_waiters: VecDeque<(Arc<Vec<u8>>, BundleReply)>,
    counter_waiters: VecDeque<oneshot::Sender<CoreCounters>>,
    reported: CoreCounters,
}

impl Link {
    fn new(setup: CoreSetup, health: Arc<Mutex<BridgeHealth>>) -> Self {
        Self {
            setup,
            health,
            decoder: FrameDecoder::new(),
            next_id: 1,
            pending: HashMap::new(),
            bundle_waiters: VecDeque::new(),
            counter_waiters: VecDeque::new(),
            reported: CoreCounters::default(),
        }
    }

    /// Brings the core up, then serves commands until shutdown (`Ok`) or a mailbox
    /// error (`Err`).
    async fn serve<S>(
        &mut self,
        stream: &mut S,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.decoder = FrameDecoder::new();
        // A lone delimiter ends whatever the core's decoder held.
        stream.write_all(&[0]).await?;
        send(stream, &ToCore::Hello).await?;
        let Received::Ready { protocol, .. } = self
            .expect(stream, |m| matches!(m, Received::Ready { .. }))
            .await?
        else {
            return Err(std::io::ErrorKind::InvalidData.into());
        };
        if protocol != PROTOCOL_VERSION {
            let error = RtCoreError::Protocol {
                core: protocol,
                ours: PROTOCOL_VERSION,
            };
            return Err(std::io::Error::other(error.to_string()));
        }
        let bridge = self.setup.bridge.clone();
        send(
            stream,
            &ToCore::Configure {
                line: self.setup.line,
                bridge: &bridge,
            },
        )
        .await?;
        match self
            .expect(stream, |m| {
                matches!(m, Received::Configured | Received::ConfigureRefused(_))
            })
            .await?
        {
            Received::ConfigureRefused(reason) => {
                return Err(std::io::Error::other(
                    RtCoreError::ConfigureRefused(reason).to_string(),
                ));
            }
            _ => self.set_connected(true),
        }
        let bundle = Arc::clone(&self.setup.bundle);
        match self.upload(stream, &bundle).await? {
            Ok(version) => {
                tracing::info!(bridge = %self.setup.bridge, version, "real-time core verified the policy bundle")
            }
            Err(error) => self.record_error(&error.to_string()),
        }
        let mut rx = [0u8; 1024];
        let mut counters_tick = tokio::time::interval(COUNTER_PERIOD);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                read = stream.read(&mut rx) => {
                    let n = read?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    for message in self.decode(&rx[..n]) {
                        self.dispatch(message);
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.command(stream, command).await?,
                    None => return Ok(()),
                },
                _ = counters_tick.tick() => send(stream, &ToCore::ReadCounters).await?,
            }
        }
    }

    async fn command<S>(&mut self, stream: &mut S, command: Command) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match command {
            Command::Transact {
                unit,
                request,
                source,
                reply,
            } => {
                let mut pdu = [0u8; MAX_PDU_LEN];
                let len = match request.encode(&mut pdu) {
                    Ok(len) => len,
                    Err(error) => {
                        let _ = reply.send(Err(ClientError::Pdu(error).into()));
                        return Ok(());
                    }
                };
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                let message = ToCore::Transact {
                    id,
                    unit,
                    source: match source {
                        RequestSource::Poll => MailboxSource::Poll,
                        RequestSource::Cloud => MailboxSource::Cloud,
                        RequestSource::Facade => MailboxSource::Facade,
                    },
                    pdu: &pdu[..len],
                };
                send(stream, &message).await?;
                self.pending.insert(
                    id,
                    Pending {
                        unit,
                        request,
                        reply,
                    },
                );
            }
            Command::LoadBundle { bundle, reply } => {
                match self.begin_upload(stream, &bundle).await? {
                    Ok(()) => self.bundle_waiters.push_back((bundle, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Counters { reply } => {
                send(stream, &ToCore::ReadCounters).await?;
                self.counter_waiters.push_back(reply);
            }
        }
        Ok(())
    }

    /// Sends a bundle in chunks and waits for the verdict (start-up path).
    async fn upload<S>(
        &mut self,
        stream: &mut S,
        bundle: &[u8],
    ) -> std::io::Result<Result<u64, RtCoreError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Err(error) = self.begin_upload(stream, bundle).await? {
            return Ok(Err(error));
        }
        Ok(
            match self
                .expect(stream, |m| {
                    matches!(m, Received::BundleAccepted(_) | Received::BundleRefused(_))
                })
                .await?
            {
                Received::BundleAccepted(version) => Ok(version),
                Received::BundleRefused(reason) => Err(RtCoreError::BundleRefused(reason)),
                _ => Err(RtCoreError::Bundle("unexpected answer".into())),
            },
        )
    }

    /// Sends begin, the chunks and commit; the verdict comes later.
    async fn begin_upload<S>(
        &mut self,
        stream: &mut S,
        bundle: &[u8],
    ) -> std::io::Result<Result<(), RtCoreError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if bundle.len() > MAX_BUNDLE_LEN {
            return Ok(Err(RtCoreError::Bundle(format!(
                "{} bytes is more than the core accepts ({MAX_BUNDLE_LEN})",
                bundle.len()
            ))));
        }
        send(
            stream,
            &ToCore::BundleBegin {
                len: bundle.len() as u32,
            },
        )
        .await?;
        for (index, data) in bundle.chunks(BUNDLE_CHUNK_LEN).enumerate() {
            let offset = (index * BUNDLE_CHUNK_LEN) as u32;
            send(stream, &ToCore::BundleChunk { offset, data }).await?;
        }
        send(stream, &ToCore::BundleCommit).await?;
        Ok(Ok(()))
    }

    /// Reads until a message `wanted` accepts arrives (others are dispatched).
    async fn expect<S>(
        &mut self,
        stream: &mut S,
        wanted: impl Fn(&Received) -> bool,
    ) -> std::io::Result<Received>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut rx = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut queued: VecDeque<Received> = VecDeque::new();
        loop {
            while let Some(message) = queued.pop_front() {
                if wanted(&message) {
                    for rest in queued.drain(..) {
                        self.dispatch(rest);
                    }
                    return Ok(message);
                }
                self.dispatch(message);
            }
            let n = tokio::time::timeout_at(deadline, stream.read(&mut rx))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the real-time core did not answer",
                    )
                })??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            queued.extend(self.decode(&rx[..n]));
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Vec<Received> {
        let mut out = Vec::new();
        for &byte in bytes {
            match self.decoder.push(byte) {
                Ok(Some(payload)) => match decode_message::<FromCore<'_>>(payload)
                    .ok()
                    .and_then(Received::from_frame)
                {
                    Some(message) => out.push(message),
                    None => tracing::warn!("mailbox: a frame from the core is not a message"),
                },
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "mailbox frame from the core dropped"),
            }
        }
        out
    }

    fn dispatch(&mut self, message: Received) {
        match message {
            Received::Outcome { id, outcome } => {
                let Some(pending) = self.pending.remove(&id) else {
                    tracing::warn!(id, "mailbox: outcome for no pending request");
                    return;
                };
                let result = match outcome {
                    OwnedOutcome::Response(pdu) => Response::decode_for(&pending.request, &pdu)
                        .map(Answer::from)
                        .map_err(|e| ClientError::Pdu(e).into()),
                    OwnedOutcome::BroadcastSent => Ok(Answer::Written),
                    OwnedOutcome::Timeout => Err(ClientError::Timeout.into()),
                    OwnedOutcome::Corrupted => Err(ClientError::Corrupted.into()),
                    OwnedOutcome::Denied { reason, rule } => Err(denial(reason, rule)),
                    OwnedOutcome::NoPolicy => Err(RtCoreError::NoPolicy),
                    OwnedOutcome::NotTaken(why) => Err(RtCoreError::NotTaken(why)),
                };
                if let Err(error @ (RtCoreError::Denied { .. } | RtCoreError::NoPolicy)) = &result {
                    let text = format!(
                        "unit {} request refused by the real-time core: {error}",
                        pending.unit
                    );
                    self.update_health(|h| h.record(Some(pending.unit), HealthEvent::Denied(text)));
                }
                let _ = pending.reply.send(result);
            }
            Received::Counters(counters) => {
                self.report_counters(counters);
                if let Some(waiter) = self.counter_waiters.pop_front() {
                    let _ = waiter.send(counters);
                }
            }
            Received::BundleAccepted(version) => {
                tracing::info!(bridge = %self.setup.bridge, version, "real-time core applied a policy bundle");
                if let Some((bundle, waiter)) = self.bundle_waiters.pop_front() {
                    // The core's policy is in RAM: after a reconnection (a core reset)
                    // it gets the newest bundle it accepted, not the one from start-up.
                    self.setup.bundle = bundle;
                    let _ = waiter.send(Ok(version));
                }
            }
            Received::BundleRefused(reason) => {
                let error = RtCoreError::BundleRefused(reason);
                self.record_error(&error.to_string());
                if let Some((_refused, waiter)) = self.bundle_waiters.pop_front() {
                    let _ = waiter.send(Err(error));
                }
            }
            Received::Ready { policy_version, .. } => {
                tracing::warn!(?policy_version, "the real-time core restarted");
            }
            Received::Garbled => tracing::warn!("the real-time core could not read a frame"),
            Received::Configured | Received::ConfigureRefused(_) => {}
        }
    }

    fn report_counters(&mut self, now: CoreCounters) {
        let before = self.reported;
        self.reported = now;
        let delta = |now: u32, before: u32| u64::from(now.saturating_sub(before));
        self.update_health(|h| {
            h.timeouts += delta(now.timeouts, before.timeouts);
            h.retries += delta(now.retries, before.retries);
            h.crc_errors += delta(now.crc_errors, before.crc_errors);
            h.noise_bytes += delta(now.noise_bytes, before.noise_bytes);
        });
    }

    /// Answers every call still waiting (and queued) with an error.
    fn fail_pending(&mut self, commands: &mut mpsc::Receiver<Command>) {
        for (_, pending) in self.pending.drain() {
            let _ = pending
                .reply
                .send(Err(ClientError::Io(std::io::ErrorKind::NotConnected).into()));
        }
        for (_, waiter) in self.bundle_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Io(std::io::ErrorKind::NotConnected).into()));
        }
        self.counter_waiters.clear();
        while let Ok(command) = commands.try_recv() {
            let error = RtCoreError::from(ClientError::Io(std::io::ErrorKind::NotConnected));
            match command {
                Command::Transact { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                Command::LoadBundle { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                Command::Counters { .. } => {}
            }
        }
        // The core's counters start again from zero after it reboots.
        self.reported = CoreCounters::default();
    }

    fn set_connected(&self, connected: bool) {
        self.update_health(|h| h.connected = connected);
    }

    fn record_error(&self, error: &str) {
        tracing::warn!(bridge = %self.setup.bridge, %error, "real-time core");
        self.update_health(|h| {
            h.errors += 1;
            h.last_error = Some(error.to_owned());
        });
    }

    fn update_health(&self, change: impl FnOnce(&mut BridgeHealth)) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut health);
    }
}

async fn send<S>(stream: &mut S, message: &ToCore<'_>) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut frame = [0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut frame)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    stream.write_all(&frame[..len]).await?;
    stream.flush().await
}

/// The mailbox device path of a config that runs the line through the core.
pub fn mailbox_path(bridge: &ModbusRtuBridgeConfig) -> Option<&str> {
    match bridge.transport {
        RtuTransport::Rtcore => bridge.mailbox.as_deref(),
        RtuTransport::Native => None,
    }
}

/// Where the bundle for the core comes from, for people.
pub fn describe(bridge: &ModbusRtuBridgeConfig) -> String {
    let bundle = bridge
        .policy_bundle
        .as_ref()
        .map_or_else(PathBuf::new, Clone::clone);
    format!(
        "{} via real-time core on {} (bundle {})",
        bridge.line().describe(),
        bridge.mailbox.as_deref().unwrap_or("?"),
        bundle.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first byte of a bundle the scripted core takes for "signed by the vendor".
    const SIGNED: u8 = 9;

    /// A scripted core on the other end of a duplex pipe: answers like the firmware
    /// does (its policy stands in as "unit 1 only"), so the link's handshake,
    /// bundle upload, id matching and health counting are tested without QEMU. It
    /// accepts every bundle with `accept_bundle`, else only those starting with
    /// [`SIGNED`]; until it accepted one it denies everything.
    async fn scripted_core(stream: tokio::io::DuplexStream, accept_bundle: bool) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 512];
        let mut bundle_len = 0usize;
        let mut bundle_first = 0u8;
        let mut verified = false;
        loop {
            let Ok(n) = reader.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            for &byte in &buf[..n] {
                let Ok(Some(payload)) = decoder.push(byte) else {
                    continue;
                };
                let message: ToCore<'_> = decode_message(payload).expect("a request");
                let mut out = [0u8; MAX_FRAME_LEN];
                let answer = match message {
                    ToCore::Hello => FromCore::Ready {
                        protocol: PROTOCOL_VERSION,
                        configured: false,
                        policy_version: None,
                    },
                    ToCore::Configure { bridge, .. } => {
                        assert_eq!(bridge, "line9");
                        FromCore::Configured
                    }
                    ToCore::BundleBegin { len } => {
                        bundle_len = len as usize;
                        continue;
                    }
                    ToCore::BundleChunk { offset, data } => {
                        assert!(offset as usize + data.len() <= bundle_len);
                        if offset == 0 {
                            bundle_first = data.first().copied().unwrap_or(0);
                        }
                        continue;
                    }
                    ToCore::BundleCommit if accept_bundle || bundle_first == SIGNED => {
                        verified = true;
                        FromCore::BundleAccepted {
                            version: 4 + u64::from(bundle_first == SIGNED),
                        }
                    }
                    ToCore::BundleCommit => FromCore::BundleRefused {
                        reason: BundleRefusal::SignatureInvalid,
                    },
                    ToCore::Transact {
                        id, unit: 1, pdu, ..
                    } if verified => {
                        let request = Request::decode(pdu).expect("valid pdu");
                        let mut response = [0u8; MAX_PDU_LEN];
                        let len = crate::modbus::pdu::encode_read_response(
                            request.function(),
                            (0..request.count()).map(|i| 40 + i),
                            &mut response,
                        )
                        .expect("fits");
                        let len = encode_frame(
                            &FromCore::Outcome {
                                id,
                                outcome: Outcome::Response {
                                    pdu: &response[..len],
                                },
                            },
                            &mut out,
                        )
                        .expect("frame");
                        writer.write_all(&out[..len]).await.expect("write");
                        continue;
                    }
                    ToCore::Transact { id, .. } if verified => FromCore::Outcome {
                        id,
                        outcome: Outcome::Denied {
                            reason: warden_policy::Reason::UnitNotAllowed.code(),
                            rule: None,
                        },
                    },
                    ToCore::Transact { id, .. } => FromCore::Outcome {
                        id,
                        outcome: Outcome::NoPolicy,
                    },
                    ToCore::ReadCounters => FromCore::Counters(CoreCounters {
                        crc_errors: 3,
                        timeouts: 2,
                        ..CoreCounters::default()
                    }),
                    _ => FromCore::Garbled,
                };
                let len = encode_frame(&answer, &mut out).expect("frame");
                writer.write_all(&out[..len]).await.expect("write");
            }
        }
    }

    fn setup() -> CoreSetup {
        CoreSetup {
            bridge: "line9".into(),
            line: LineSettings {
                baud: 19_200,
                parity: MailboxParity::Even,
                stop_bits: 1,
                response_timeout_ms: 100,
                retries: 1,
            },
            bundle: Arc::new(vec![7u8; 700]),
        }
    }

    fn read(count: u16) -> Request {
        Request::ReadRegisters {
            function: crate::modbus::pdu::FunctionCode::ReadHoldingRegisters,
            address: 0,
            count,
        }
    }

    #[tokio::test]
    async fn calls_answers_denials_and_counters_go_through_the_mailbox() {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(scripted_core(theirs, true));
        let health = Arc::new(Mutex::new(BridgeHealth::default()));
        let shutdown = CancellationToken::new();
        let (bus, task) =
            RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
        tokio::spawn(task);
        assert_eq!(
            bus.call(1, read(3), RequestSource::Poll).await,
            Ok(Answer::Registers(vec![40, 41, 42]))
        );
        let denied = bus.call(2, read(1), RequestSource::Cloud).await;
        assert_eq!(
            denied,
            Err(RtCoreError::Denied {
                reason: "unit-not-allowed".into(),
                exception: ExceptionCode::ILLEGAL_FUNCTION
            })
        );
        let counters = bus.counters().await.expect("counters");
        assert_eq!(counters.crc_errors, 3);
        let health = health.lock().expect("health").clone();
        assert!(health.connected);
        assert_eq!(health.denied, 1);
        assert_eq!(
            health.unit(2).map(|u| u.denied),
            Some(1),
            "the refusal is the denied unit's: {health:?}"
        );
        assert_eq!(health.unit(1).map(|u| u.denied), None);
        assert_eq!(health.crc_errors, 3);
        assert_eq!(health.timeouts, 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_refused_bundle_is_reported_and_requests_are_denied() {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(scripted_core(theirs, false));
        let health = Arc::new(Mutex::new(BridgeHealth::default()));
        let shutdown = CancellationToken::new();
        let (bus, task) =
            RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
        tokio::spawn(task);
        assert_eq!(
            bus.call(1, read(1), RequestSource::Poll).await,
            Err(RtCoreError::NoPolicy)
        );
        let health = health.lock().expect("health").clone();
        assert_eq!(
            health.last_error.as_deref(),
            Some(
                "unit 1 request refused by the real-time core: the real-time core has no verified policy bundle; every request is denied"
            )
        );
        assert_eq!(
            health.errors, 1,
            "the refused bundle is an error: {health:?}"
        );
        shutdown.cancel();
    }

    /// A bundle pushed at run time (the appliance applied a new signed policy) is
    /// verified by the core and takes effect there; one it refuses changes nothing.
    #[tokio::test]
    async fn a_bundle_loaded_at_run_time_replaces_the_cores_policy() {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(scripted_core(theirs, false));
        let health = Arc::new(Mutex::new(BridgeHealth::default()));
        let shutdown = CancellationToken::new();
        let (bus, task) =
            RtCoreBus::over_stream(ours, setup(), Arc::clone(&health), shutdown.clone());
        tokio::spawn(task);
        assert_eq!(
            bus.call(1, read(1), RequestSource::Poll).await,
            Err(RtCoreError::NoPolicy),
            "the start-up bundle is not signed"
        );
        assert_eq!(
            bus.load_bundle(Arc::new(vec![7u8; 300])).await,
            Err(RtCoreError::BundleRefused(BundleRefusal::SignatureInvalid))
        );
        assert_eq!(
            bus.call(1, read(1), RequestSource::Poll).await,
            Err(RtCoreError::NoPolicy)
        );
        let mut signed = vec![SIGNED; 1000];
        signed[999] = 1;
        assert_eq!(bus.load_bundle(Arc::new(signed)).await, Ok(5));
        assert_eq!(
            bus.call(1, read(2), RequestSource::Poll).await,
            Ok(Answer::Registers(vec![40, 41]))
        );
        shutdown.cancel();
    }

    #[test]
    fn transport_fields_are_checked() {
        let base = r#"
name = "line2"
port = "core:uart0"
baud = 19200
[[points]]
name = "flow"
kind = "input"
address = 3
type = "u16"
"#;
        let parse = |extra: &str| -> ModbusRtuBridgeConfig {
            toml::from_str(&format!("{extra}\n{base}")).expect("parses")
        };
        let rtcore = parse("transport = \"rtcore\"");
        assert_eq!(
            check_transport(&rtcore, "bridges.modbus_rtu[0]")
                .expect_err("no mailbox")
                .to_string(),
            "bridges.modbus_rtu[0].mailbox: transport = \"rtcore\" needs the mailbox device of the real-time core"
        );
        let rtcore = parse("transport = \"rtcore\"\nmailbox = \"/dev/ttyS1\"");
        assert_eq!(
            check_transport(&rtcore, "bridges.modbus_rtu[0]")
                .expect_err("no bundle")
                .field,
            "bridges.modbus_rtu[0].policy_bundle"
        );
        let rtcore = parse(
            "transport = \"rtcore\"\nmailbox = \"/dev/ttyS1\"\npolicy_bundle = \"/var/lib/warden/policy.wpb\"",
        );
        check_transport(&rtcore, "bridges.modbus_rtu[0]").expect("complete");
        assert_eq!(mailbox_path(&rtcore), Some("/dev/ttyS1"));
        let native = parse("mailbox = \"/dev/ttyS1\"");
        assert_eq!(
            check_transport(&native, "x")
                .expect_err("stray mailbox")
                .field,
            "x.mailbox"
        );
        assert_eq!(mailbox_path(&native), None);
    }
}
