//! Peer channels under tokio: open (with retries), accept, and run a session.
//!
//! A session moves typed frames both ways until the channel closes: the caller side
//! then opens a fresh channel (the peer may have restarted), the callee side waits for
//! the next one the monitor offers. A malformed frame, or a link payload inside one
//! that does not decode, closes the channel and is reported to the monitor.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_os::monitor::compartment::Compartment;
use warden_os::monitor::frame::{FrameError, read_frame_async, write_frame_async};

use crate::ports::messages::Incoming;

/// First and largest wait between attempts to open a channel to a peer.
const OPEN_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

fn into_async(stream: StdUnixStream) -> std::io::Result<UnixStream> {
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Opens a channel to `peer`, retrying with backoff while the monitor refuses (the
/// peer is starting or restarting); `None` once `shutdown` fires.
pub async fn open(
    compartment: &Arc<Compartment>,
    peer: &str,
    shutdown: &CancellationToken,
) -> Option<UnixStream> {
    let mut delay = OPEN_RETRY.0;
    loop {
        let asking = Arc::clone(compartment);
        let name = peer.to_owned();
        let answer = tokio::task::spawn_blocking(move || asking.open_channel(&name)).await;
        match answer {
            Ok(Ok(Some(stream))) => match into_async(stream) {
                Ok(stream) => return Some(stream),
                Err(error) => tracing::warn!(peer, %error, "cannot use a peer channel"),
            },
            Ok(Ok(None)) => tracing::debug!(peer, "channel refused; the peer may be starting"),
            Ok(Err(error)) => tracing::warn!(peer, %error, "cannot ask the monitor for a channel"),
            Err(error) => tracing::warn!(peer, %error, "channel request failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(OPEN_RETRY.1);
    }
}

/// Channels other compartments open to this one, as they arrive: `(peer, channel)`.
pub fn offers(compartment: Arc<Compartment>) -> mpsc::Receiver<(String, StdUnixStream)> {
    let (sender, receiver) = mpsc::channel(8);
    std::thread::spawn(move || {
        while let Ok(offer) = compartment.accept_channel() {
            if sender.blocking_send(offer).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Sorts offered channels by peer: `routes` names the peers this compartment talks to;
/// a channel from any other peer is closed at once.
pub fn route_offers(
    compartment: Arc<Compartment>,
    routes: Vec<(&'static str, mpsc::Sender<UnixStream>)>,
) {
    let mut offers = offers(compartment);
    tokio::spawn(async move {
        while let Some((peer, stream)) = offers.recv().await {
            let Some((_, route)) = routes.iter().find(|(name, _)| *name == peer) else {
                tracing::warn!(%peer, "channel from a peer this role does not talk to; closed");
                continue;
            };
            match into_async(stream) {
                Ok(stream) => {
                    let _ = route.send(stream).await;
                }
                Err(error) => tracing::warn!(%peer, %error, "cannot use a peer channel"),
            }
        }
    });
}

/// Where a session reports a peer's malformed frame or refused payload (the
/// monitor, for a compartment).
pub trait PeerReports: Send + Sync + 'static {
    /// A frame from `peer` was too long or did not decode.
    fn malformed_frame(&self, peer: &str, error: &FrameError);
    /// A frame from `peer` carried a payload that did not decode.
    fn refused_payload(&self, peer: &str, detail: &str);
}

impl PeerReports for Compartment {
    fn malformed_frame(&self, peer: &str, error: &FrameError) {
        let _ = self.report_peer_frame(peer, error);
    }

    fn refused_payload(&self, peer: &str, detail: &str) {
        let _ = self.report_peer_rejected(peer, detail);
    }
}

/// The next frame from `peer`; `None` when the channel is closed or broken. A frame
/// that is too long or does not decode is reported, and ends the channel.
pub async fn receive<T: DeserializeOwned>(
    reports: &dyn PeerReports,
    peer: &str,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<T> {
    match read_frame_async::<T>(reader).await {
        Ok(Some(message)) => Some(message),
        Ok(None) | Err(FrameError::Io(_)) => None,
        Err(error) => {
            tracing::warn!(peer, %error, "malformed frame from a peer; channel closed");
            reports.malformed_frame(peer, &error);
            None
        }
    }
}

/// Runs one session on `stream`: `greeting` first, then whatever `outgoing` yields is
/// written; frames read go to `incoming`. Returns when the channel closes, `outgoing`
/// ends or `shutdown` fires.
pub async fn session<Out, In>(
    reports: &Arc<dyn PeerReports>,
    peer: &'static str,
    stream: UnixStream,
    greeting: Vec<Out>,
    outgoing: &mut mpsc::Receiver<Out>,
    incoming: &mpsc::Sender<In>,
    shutdown: &CancellationToken,
) where
    Out: Serialize,
    In: Incoming,
{
    let (mut reader, mut writer) = stream.into_split();
    let reading_reports = Arc::clone(reports);
    let sink = incoming.clone();
    let mut reading = tokio::spawn(async move {
        while let Some(message) = receive::<In>(&*reading_reports, peer, &mut reader).await {
            if let Err(detail) = message.check() {
                refuse_payload(&*reading_reports, peer, &detail.to_string());
                return;
            }
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });
    for message in &greeting {
        if write_frame_async(&mut writer, message).await.is_err() {
            reading.abort();
            return;
        }
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = &mut reading => break,
            message = outgoing.recv() => match message {
                Some(message) => {
                    if let Err(error) = write_frame_async(&mut writer, &message).await {
                        tracing::debug!(peer, %error, "peer channel closed while writing");
                        break;
                    }
                }
                None => break,
            },
        }
    }
    reading.abort();
}

/// Refuses a link payload inside a frame: reports it like a malformed frame. The
/// caller then closes the channel.
pub fn refuse_payload(reports: &dyn PeerReports, peer: &str, detail: &str) {
    tracing::warn!(
        peer,
        detail,
        "refused a payload from a peer; channel closed"
    );
    reports.refused_payload(peer, detail);
}

/// Serves each channel `peer` opens, one at a time.
pub async fn callee_sessions<Out, In>(
    reports: Arc<dyn PeerReports>,
    peer: &'static str,
    mut streams: mpsc::Receiver<tokio::net::UnixStream>,
    mut outgoing: mpsc::Receiver<Out>,
    incoming: mpsc::Sender<In>,
    shutdown: CancellationToken,
) where
    Out: serde::Serialize + Send,
    In: Incoming,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            stream = streams.recv() => match stream {
                Some(stream) => stream,
                None => return,
            },
        };
        session(
            &reports,
            peer,
            stream,
            Vec::new(),
            &mut outgoing,
            &incoming,
            &shutdown,
        )
        .await;
        tracing::info!(peer, "channel closed; waiting for the next");
    }
}
