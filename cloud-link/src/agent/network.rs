//! The MQTT connection: the event loop, reconnects with backoff and jitter, the broker's
//! liveness, and what each message from the fleet means for the agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status::{LinkStatus, update};
use crate::clock::unix_millis;
use warden_wire::renewal::{CertificateRenewOrder, CertificateResponse};
use warden_wire::revocation::RevocationListMessage;
use warden_wire::topics::{
    Ack, AttestationChallenge, AttestationVerdict, Command, LinkSettings, LinkSettingsError,
    PROTOCOL_VERSION, TwinDesired, UpdateOffer,
};

/// First reconnect delay after the connection is lost (plus up to 25 % jitter).
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// Longest reconnect delay (plus up to 25 % jitter): the broker is probed at least
/// every 2.5 s, so the link is back within a few seconds of the fleet.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// What the connection tells the agent.
pub(super) enum NetworkEvent {
    Connected,
    Disconnected(String),
    Ack(Ack),
    Command(Command),
    Desired(TwinDesired, Result<Option<LinkSettings>, LinkSettingsError>),
    Challenge(AttestationChallenge),
    Verdict(AttestationVerdict),
    Offer(UpdateOffer),
    CertificateResponse(CertificateResponse),
    RenewOrder,
    /// A release-key revocation list (its bytes, not yet verified: the updater does).
    RevocationList(Vec<u8>),
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay before the next attempt; the one after doubles, up to the cap.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay (after a success).
    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Whether the broker still answers: something must come in within two keep-alives.
///
/// rumqttc pings only on its own timer and a live link carries PUBACKs for every
/// telemetry batch, so any incoming packet counts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Liveness {
    limit: Duration,
    last_heard: Instant,
}

impl Liveness {
    pub(super) fn new(keep_alive: Duration, now: Instant) -> Self {
        Self {
            limit: keep_alive * 2,
            last_heard: now,
        }
    }

    /// Something came in from the broker at `now`.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When the broker is declared dead if nothing comes in before.
    pub(super) fn deadline(&self) -> Instant {
        self.last_heard + self.limit
    }

    /// How long the broker has been silent, if that is too long.
    pub(super) fn dead_for(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_heard);
        (silent >= self.limit).then_some(silent)
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The topics the device subscribes to.
pub(super) struct Topics {
    pub(super) ack: String,
    pub(super) commands: String,
    pub(super) desired: String,
    pub(super) challenge: String,
    pub(super) verdict: String,
    pub(super) offers: String,
    pub(super) certificate_response: String,
    pub(super) certificate_renew: String,
    pub(super) revocation_list: String,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn network_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    topics: Topics,
    events: mpsc::Sender<NetworkEvent>,
    status: Arc<Mutex<LinkStatus>>,
    keep_alive: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    // While connected: when the broker last sent anything.
    let mut liveness: Option<Liveness> = None;
    loop {
        let deadline = liveness.as_ref().map(Liveness::deadline);
        let polled = tokio::select! {
            () = shutdown.cancelled() => return,
            event = eventloop.poll() => Some(event),
            () = sleep_until(deadline) => None,
        };
        let event = match polled {
            Some(event) => event,
            None => {
                let now = Instant::now();
                let Some(silent) = liveness.as_ref().and_then(|l| l.dead_for(now)) else {
                    continue;
                };
                // Frozen or gone without a word: drop the connection (what was in
                // flight is resent after the reconnect) and start over.
                liveness = None;
                eventloop.clean();
                let why = format!("no answer from the broker for {} s", silent.as_secs());
                tracing::warn!(%why, "link connection dead; reconnecting");
                if events.send(NetworkEvent::Disconnected(why)).await.is_err() {
                    return;
                }
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if let Ok(Event::Incoming(_)) = &event {
            if let Some(liveness) = &mut liveness {
                liveness.heard(Instant::now());
            }
            update(&status, |s| s.last_connected_ms = Some(unix_millis()));
        }
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("link connected");
                backoff.reset();
                liveness = Some(Liveness::new(keep_alive, Instant::now()));
                for topic in [
                    &topics.ack,
                    &topics.commands,
                    &topics.desired,
                    &topics.challenge,
                    &topics.verdict,
                    &topics.offers,
                    &topics.certificate_response,
                    &topics.certificate_renew,
                    &topics.revocation_list,
                ] {
                    if let Err(error) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::warn!(%error, topic, "cannot subscribe");
                    }
                }
                Some(NetworkEvent::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => decode_publish(&topics, &publish),
            Ok(_) => None,
            Err(error) => {
                liveness = None;
                tracing::warn!(%error, "link connection failed; reconnecting");
                if events
                    .send(NetworkEvent::Disconnected(error.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                if !pause(backoff.next_delay(), &shutdown).await {
                    return;
                }
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

/// Waits `delay` plus jitter; false if shut down meanwhile.
pub(super) async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(with_jitter(delay)) => true,
    }
}

/// What a message from the fleet means for the agent, if anything.
pub(super) fn decode_publish(topics: &Topics, publish: &rumqttc::Publish) -> Option<NetworkEvent> {
    let topic = publish.topic.as_str();
    if topic == topics.commands {
        match Command::decode(&publish.payload) {
            Ok(command) => Some(NetworkEvent::Command(command)),
            Err(error) => {
                tracing::warn!(%error, "malformed command ignored");
                None
            }
        }
    } else if topic == topics.challenge {
        match serde_json::from_slice::<AttestationChallenge>(&publish.payload) {
            Ok(challenge) => Some(NetworkEvent::Challenge(challenge)),
            Err(error) => {
                tracing::warn!(%error, "malformed attestation challenge ignored");
                None
            }
        }
    } else if topic == topics.verdict {
        match serde_json::from_slice::<AttestationVerdict>(&publish.payload) {
            Ok(verdict) if verdict.v == PROTOCOL_VERSION => Some(NetworkEvent::Verdict(verdict)),
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
    } else if topic == topics.desired {
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
    } else if topic == topics.offers {
        match UpdateOffer::decode(&publish.payload) {
            Ok(offer) => Some(NetworkEvent::Offer(offer)),
            Err(error) => {
                tracing::warn!(%error, "malformed update offer ignored");
                None
            }
        }
    } else if topic == topics.certificate_response {
        match CertificateResponse::decode(&publish.payload) {
            Ok(response) => Some(NetworkEvent::CertificateResponse(response)),
            Err(error) => {
                tracing::warn!(%error, "malformed certificate response ignored");
                None
            }
        }
    } else if topic == topics.certificate_renew {
        match CertificateRenewOrder::decode(&publish.payload) {
            Ok(_) => Some(NetworkEvent::RenewOrder),
            Err(error) => {
                tracing::warn!(%error, "malformed certificate renewal order ignored");
                None
            }
        }
    } else if topic == topics.revocation_list {
        match RevocationListMessage::decode(&publish.payload) {
            Ok((message, list)) => {
                tracing::info!(
                    sequence = message.sequence,
                    "release-key revocation list from the fleet"
                );
                Some(NetworkEvent::RevocationList(list))
            }
            Err(error) => {
                tracing::warn!(%error, "malformed release-key revocation list ignored; nothing changed");
                None
            }
        }
    } else if topic == topics.ack {
        match Ack::decode(&publish.payload) {
            Ok(ack) => Some(NetworkEvent::Ack(ack)),
            Err(error) => {
                tracing::warn!(%error, "malformed acknowledgement ignored");
                None
            }
        }
    } else {
        None
    }
}

/// `delay` plus up to 25 % jitter, so a fleet of devices does not reconnect in step.
pub(super) fn with_jitter(delay: Duration) -> Duration {
    let nanos = crate::clock::subsec_nanos();
    let quarter = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(u64::from(nanos) % (quarter + 1))
}
