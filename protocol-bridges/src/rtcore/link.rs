//! The application side of one mailbox connection: the handshake, the bundle upload,
//! matching outcomes to calls by id, and counting into the bridge's health.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_rtcore_mailbox::framing::decode_message;
use warden_rtcore_mailbox::{
    BUNDLE_CHUNK_LEN, CoreCounters, FrameDecoder, FromCore, MAX_BUNDLE_LEN, MAX_FRAME_LEN,
    PROTOCOL_VERSION, RequestSource as MailboxSource, ToCore, encode_frame,
};

use crate::health::{BridgeHealth, HealthEvent};
use crate::modbus::pdu::{Request, Response};
use crate::modbus::{Answer, ClientError, MAX_PDU_LEN};
use crate::request_policy::RequestSource;
use crate::rtcore::error::{BundleError, RtCoreError, denial};
use crate::rtcore::messages::{BundleReply, CallReply, Command, OwnedOutcome, Received};
use crate::rtcore::setup::CoreSetup;

/// How long the core may take to say hello, accept settings or verify a bundle.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the core's counters are read into the bridge's health.
const COUNTER_PERIOD: Duration = Duration::from_millis(500);

struct Pending {
    unit: u8,
    request: Request,
    reply: CallReply,
}

/// The application side of one mailbox connection.
pub(crate) struct Link {
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
    pub(crate) fn new(setup: CoreSetup, health: Arc<Mutex<BridgeHealth>>) -> Self {
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
    pub(crate) async fn serve<S>(
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
                _ => Err(BundleError::UnexpectedAnswer.into()),
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
            return Ok(Err(BundleError::TooLarge {
                len: bundle.len(),
                max: MAX_BUNDLE_LEN,
            }
            .into()));
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
    pub(crate) fn fail_pending(&mut self, commands: &mut mpsc::Receiver<Command>) {
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

    pub(crate) fn set_connected(&self, connected: bool) {
        self.update_health(|h| h.connected = connected);
    }

    pub(crate) fn record_error(&self, error: &str) {
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
