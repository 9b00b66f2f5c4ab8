//! Attestation: a fresh nonce to the device, pluton's quote back, verified here with
//! only the public key the device authenticated with, and the measured image checked
//! against the releases uploaded for the device's product.
//!
//! Devices are challenged when their session can first receive a challenge (see
//! [`crate::broker::Broker::challengeable_devices`]), again every
//! `rollouts.attestation_interval_secs`, and when an operator asks through the API.
//! A verified quote over a known release makes the device `trusted`; a refused one
//! makes it `untrusted` and raises a failure report of kind `attestation`. No answer
//! and late answers reach no verdict (the status stays, the detail says why).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_wire::topics::{
    AttestationChallenge, AttestationQuote, AttestationVerdict, FailureReportMessage,
    MIN_NONCE_LEN, PROTOCOL_VERSION, attestation_challenge_topic, attestation_verdict_topic,
    device_of_topic, encode, from_hex, to_hex,
};

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::store::{ChallengeUse, Store, StoreError};
use warden_wire::fleet_api::{Attestation, ImageRecord};

/// Filter matching every device's quotes.
pub const ALL_QUOTES: &str = "warden/v1/devices/+/attestation/quote";
/// How long an operator's API call waits for the device's quote.
pub const QUOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a challenge made on connect or by the schedule waits for its quote; no
/// challenge is answerable after this.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// How long answered and expired nonces are remembered in the store (to tell a replay
/// or a late answer from a quote nobody asked for); older ones are purged.
pub const NONCE_MEMORY: Duration = Duration::from_secs(3600);
/// The measurement register boot extends with the image it runs (the image header's
/// SHA-256), as `warden_os::root_of_trust::IMAGE_MEASUREMENT_REGISTER`.
pub const IMAGE_MEASUREMENT_REGISTER: usize = 0;

/// Challenges issued. The challenges themselves (device, nonce, issued, deadline) and
/// the answers live in the store, so a nonce is usable once even across a fleet restart
/// or by two fleet instances; here are only the attestations waiting in this process.
#[derive(Default)]
pub struct PendingChallenges(Mutex<HashMap<(String, String), oneshot::Sender<AttestationQuote>>>);

/// Why a quote answers no pending challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsolicited {
    /// The very quote that already answered this nonce, delivered again (MQTT QoS 1
    /// redelivery): ignored.
    Duplicate,
    /// A different quote for a nonce already answered: refused.
    Replayed,
    /// The challenge was not answered by its deadline: refused.
    Expired {
        /// The challenge's age when the quote came.
        age: Duration,
        /// How long it was answerable.
        lifetime: Duration,
    },
    /// No challenge with this nonce was sent to this device (within [`NONCE_MEMORY`]):
    /// refused.
    Unknown,
}

/// What became of a quote that used its challenge.
#[derive(Debug)]
pub enum Answered {
    /// Handed to the attestation waiting for it.
    Delivered,
    /// Nothing in this process waits for it (the fleet restarted since the challenge,
    /// or the wait just ended): the caller verifies it.
    Orphaned(AttestationQuote),
}

fn quote_digest(quote: &AttestationQuote) -> String {
    to_hex(
        &Sha256::new()
            .chain_update(quote.quote.as_bytes())
            .chain_update([0])
            .chain_update(quote.error.as_deref().unwrap_or_default().as_bytes())
            .finalize(),
    )
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl PendingChallenges {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), oneshot::Sender<AttestationQuote>>>
    {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a challenge sent to `device`, answerable for `lifetime`; the receiver
    /// gets its quote.
    pub async fn issue(
        &self,
        store: &Store,
        device: &str,
        nonce_hex: &str,
        lifetime: Duration,
    ) -> Result<oneshot::Receiver<AttestationQuote>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let key = (device.to_owned(), nonce_hex.to_owned());
        self.lock().insert(key.clone(), tx);
        let now = now_ms();
        if let Err(error) = store
            .issue_challenge(device, nonce_hex, now, now.saturating_add(millis(lifetime)))
            .await
        {
            self.lock().remove(&key);
            return Err(error);
        }
        Ok(rx)
    }

    /// The attestation stopped waiting for `nonce_hex` (its deadline passed). The
    /// challenge stays in the store: a later quote for it is refused as expired.
    pub fn forget(&self, device: &str, nonce_hex: &str) {
        self.lock()
            .remove(&(device.to_owned(), nonce_hex.to_owned()));
    }

    /// Uses the challenge `quote` answers (once: the store deletes it as it finds it)
    /// and hands the quote to whoever waits for it, or says why it answers none.
    pub async fn answer(
        &self,
        store: &Store,
        device: &str,
        quote: AttestationQuote,
    ) -> Result<Result<Answered, Unsolicited>, StoreError> {
        let digest = quote_digest(&quote);
        let now = now_ms();
        let age = |issued_ms: i64| {
            Duration::from_millis(u64::try_from(now.saturating_sub(issued_ms)).unwrap_or(0))
        };
        Ok(
            match store
                .use_challenge(device, &quote.nonce, &digest, now)
                .await?
            {
                ChallengeUse::Accepted { .. } => {
                    let waiter = self
                        .lock()
                        .remove(&(device.to_owned(), quote.nonce.clone()));
                    Ok(match waiter {
                        Some(waiter) => match waiter.send(quote) {
                            Ok(()) => Answered::Delivered,
                            Err(quote) => Answered::Orphaned(quote),
                        },
                        None => Answered::Orphaned(quote),
                    })
                }
                ChallengeUse::Expired {
                    issued_ms,
                    deadline_ms,
                } => Err(Unsolicited::Expired {
                    age: age(issued_ms),
                    lifetime: Duration::from_millis(
                        u64::try_from(deadline_ms.saturating_sub(issued_ms)).unwrap_or(0),
                    ),
                }),
                ChallengeUse::Answered { quote_sha256 } if quote_sha256 == digest => {
                    Err(Unsolicited::Duplicate)
                }
                ChallengeUse::Answered { .. } => Err(Unsolicited::Replayed),
                ChallengeUse::Unknown => Err(Unsolicited::Unknown),
            },
        )
    }
}

/// The value boot leaves in the image register after measuring an image whose header
/// digest is `measurement` (one extend from zero: `SHA-256(0³² ‖ measurement)`).
pub fn image_register_after_boot(measurement: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(measurement)
        .finalize()
        .into()
}

/// What the image register says about the releases of the device's product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseCheck {
    /// It is the register a known release leaves.
    Known(ImageRecord),
    /// The product has no uploaded release yet: nothing to compare with (accepted).
    NoReleases,
    /// It matches none of the product's releases (refused).
    NotARelease {
        /// How many releases the product has.
        releases: usize,
    },
}

/// Compares an image register with the releases of one product.
pub fn check_release(register: &[u8; 32], releases: &[ImageRecord]) -> ReleaseCheck {
    if releases.is_empty() {
        return ReleaseCheck::NoReleases;
    }
    releases
        .iter()
        .find(|release| {
            from_hex(&release.measurement)
                .and_then(|m| <[u8; 32]>::try_from(m.as_slice()).ok())
                .is_some_and(|m| image_register_after_boot(&m) == *register)
        })
        .map_or(
            ReleaseCheck::NotARelease {
                releases: releases.len(),
            },
            |release| ReleaseCheck::Known(release.clone()),
        )
}

/// Challenges devices, verifies their quotes and records the verdicts.
#[derive(Clone)]
pub struct Attestor {
    /// Where verdicts, details and failure reports go.
    pub store: Store,
    /// Publishes challenges; knows each device's authenticated key.
    pub devices: LocalPublisher,
    /// Challenges issued.
    pub pending: Arc<PendingChallenges>,
}

impl Attestor {
    /// Challenges `device`, waits up to `wait` for its quote, verifies it, records the
    /// verdict (and a failure report when refused) and returns it.
    pub async fn attest(&self, device: &str, wait: Duration) -> Result<Attestation, AttestError> {
        let public_key = self
            .devices
            .live_device_key(device)
            .await
            .ok_or(AttestError::NotConnected)?;
        let mut nonce = [0u8; MIN_NONCE_LEN];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut nonce)
            .map_err(|_| AttestError::Random)?;
        let nonce_hex = to_hex(&nonce);
        let answer = self
            .pending
            .issue(&self.store, device, &nonce_hex, wait)
            .await
            .map_err(AttestError::Store)?;
        let challenge = AttestationChallenge {
            v: PROTOCOL_VERSION,
            nonce: nonce_hex.clone(),
        };
        self.devices
            .publish(attestation_challenge_topic(device), encode(&challenge))
            .await;
        let quote = match tokio::time::timeout(wait, answer).await {
            Ok(Ok(quote)) => quote,
            _ => {
                self.pending.forget(device, &nonce_hex);
                let detail = format!(
                    "no answer to the challenge of {} ms within {wait:?}: unverified until \
                     a quote verifies (challenged again on reconnect and on the schedule)",
                    now_ms().saturating_sub(millis(wait))
                );
                self.unanswered(device, &nonce_hex, &detail).await;
                return Err(AttestError::NoAnswer(wait));
            }
        };
        let outcome = match self.verify(device, &quote, &public_key, &nonce).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(device, %error, "attestation: cannot read the releases");
                return Err(AttestError::Store(error));
            }
        };
        self.record(&outcome, "fleet/attestation/quote-refused")
            .await;
        Ok(outcome)
    }

    /// Verifies a quote answering `nonce`, then its image against the releases.
    async fn verify(
        &self,
        device: &str,
        quote: &AttestationQuote,
        public_key: &[u8],
        nonce: &[u8],
    ) -> Result<Attestation, StoreError> {
        if let Some(error) = &quote.error {
            return Ok(Attestation::refused(
                device,
                format!("the device could not quote: {error}"),
            ));
        }
        let Some(bytes) = from_hex(&quote.quote) else {
            return Ok(Attestation::refused(device, "the quote is not hex".into()));
        };
        let report = match warden_pluton::verify_quote(&bytes, public_key, nonce) {
            Ok(report) => report,
            Err(error) => {
                return Ok(Attestation::refused(
                    device,
                    format!("quote refused: {error:?}"),
                ));
            }
        };
        let register = report.registers[IMAGE_MEASUREMENT_REGISTER];
        let register_hex = to_hex(&register);
        let (verified, release, detail) = match self.store.registered_device(device).await? {
            None => (
                true,
                None,
                format!(
                    "quote verified; the device is not registered, so no product to check \
                     the measured image {register_hex} against"
                ),
            ),
            Some(registered) => {
                let releases = self.store.images_of_product(&registered.product).await?;
                match check_release(&register, &releases) {
                    ReleaseCheck::Known(image) => (
                        true,
                        Some(image.version.clone()),
                        format!(
                            "runs release {} {} (image {})",
                            image.product, image.version, image.sha256
                        ),
                    ),
                    ReleaseCheck::NoReleases => (
                        true,
                        None,
                        format!(
                            "no releases known for product {}: quote verified, measured \
                             image {register_hex} not checked",
                            registered.product
                        ),
                    ),
                    ReleaseCheck::NotARelease { releases } => (
                        false,
                        None,
                        if register == [0u8; 32] {
                            format!(
                                "no image was measured at boot, and product {} has {releases} \
                                 known release(s)",
                                registered.product
                            )
                        } else {
                            format!(
                                "measured image {register_hex} is not a known release of \
                                 product {} ({releases} known)",
                                registered.product
                            )
                        },
                    ),
                }
            }
        };
        Ok(Attestation {
            device: device.to_owned(),
            verified,
            reason: (!verified).then(|| detail.clone()),
            detail,
            measured_image: Some(register_hex),
            release,
            firmware_version: Some(report.firmware_version),
            registers: report
                .registers
                .iter()
                .map(|r| to_hex(r.as_ref()))
                .collect(),
            counters: report.counters.to_vec(),
        })
    }

    /// Stores a verdict; a refusal marks the device `untrusted` and raises a failure
    /// report with `signature`.
    async fn record(&self, outcome: &Attestation, signature: &str) {
        let device = outcome.device.as_str();
        let status = if outcome.verified {
            tracing::info!(device, detail = %outcome.detail, "attestation verified");
            "trusted"
        } else {
            tracing::warn!(device, detail = %outcome.detail, "attestation refused");
            "untrusted"
        };
        if let Err(error) = self
            .store
            .record_attestation(device, status, &outcome.detail, now_ms())
            .await
        {
            tracing::error!(device, %error, "cannot record an attestation verdict");
        }
        if !outcome.verified {
            raise_failure_report(&self.store, device, &outcome.detail, signature).await;
        }
        // The unit shows it on its status page (best effort, like every delivery).
        let verdict = AttestationVerdict {
            v: PROTOCOL_VERSION,
            trusted: outcome.verified,
            release: outcome.release.clone(),
            detail: outcome.detail.clone(),
        };
        self.devices
            .publish(attestation_verdict_topic(device), encode(&verdict))
            .await;
    }

    async fn note(&self, device: &str, detail: &str) {
        tracing::warn!(device, detail, "attestation reached no verdict");
        if let Err(error) = self.store.note_attestation(device, detail).await {
            tracing::error!(device, %error, "cannot record an attestation detail");
        }
    }

    /// A challenge went unanswered: the device is `unverified` (unless `untrusted`),
    /// unless a quote used the challenge meanwhile.
    async fn unanswered(&self, device: &str, nonce_hex: &str, detail: &str) {
        match self
            .store
            .challenge_unanswered(device, nonce_hex, detail)
            .await
        {
            Ok(true) => tracing::warn!(device, detail, "attestation unanswered: unverified"),
            Ok(false) => {}
            Err(error) => tracing::error!(device, %error, "cannot record an unanswered challenge"),
        }
    }

    /// Verifies a quote that used its challenge while no attestation in this process
    /// waited for it (the fleet restarted since it sent the challenge), and records
    /// the verdict.
    async fn verify_orphan(&self, device: &str, quote: &AttestationQuote) {
        let Some(public_key) = self.devices.live_device_key(device).await else {
            self.note(
                device,
                "a quote came for a pending challenge, but the device's key is unknown \
                 (not connected): no verdict",
            )
            .await;
            return;
        };
        let Some(nonce) = from_hex(&quote.nonce) else {
            return;
        };
        match self.verify(device, quote, &public_key, &nonce).await {
            Ok(outcome) => {
                self.record(&outcome, "fleet/attestation/quote-refused")
                    .await;
            }
            Err(error) => tracing::error!(device, %error, "attestation: cannot read the releases"),
        }
    }

    /// A quote that answers no pending challenge.
    async fn unsolicited(&self, device: &str, nonce: &str, why: Unsolicited) {
        match why {
            Unsolicited::Duplicate => {
                tracing::debug!(device, "quote delivered again; ignored");
            }
            Unsolicited::Expired { age, lifetime } => {
                let detail = format!(
                    "a quote answered a challenge {} s old (answerable for {} s): refused; \
                     status unchanged",
                    age.as_secs(),
                    lifetime.as_secs()
                );
                self.note(device, &detail).await;
            }
            Unsolicited::Replayed | Unsolicited::Unknown => {
                let detail = if why == Unsolicited::Replayed {
                    format!("a second, different quote for the already answered nonce {nonce}")
                } else {
                    format!("a quote for nonce {nonce}, which the fleet never sent this device")
                };
                let outcome = Attestation::refused(device, format!("replay refused: {detail}"));
                self.record(&outcome, "fleet/attestation/nonce-refused")
                    .await;
            }
        }
    }
}

/// Raises a failure report of kind `attestation` at the fleet for `device`.
pub async fn raise_failure_report(store: &Store, device: &str, message: &str, signature: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let image_version = store
        .registered_device(device)
        .await
        .ok()
        .flatten()
        .map(|d| d.image_version)
        .unwrap_or_default();
    let report = FailureReportMessage {
        v: PROTOCOL_VERSION,
        id: format!(
            "fleet-attestation-{now}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        ts_ms: u64::try_from(now).unwrap_or(0),
        compartment: "fleet".into(),
        kind: "attestation".into(),
        image_version,
        signature: signature.to_owned(),
        message: message.to_owned(),
    };
    if let Err(error) = store.insert_report(device, &report, now).await {
        tracing::error!(device, %error, "cannot record an attestation failure report");
    }
}

/// Resolves waiting challenges with the quotes devices send, refusing the others,
/// until shutdown.
pub async fn collect_quotes(
    attestor: Attestor,
    mut quotes: LocalSubscription,
    shutdown: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => return,
            publish = quotes.recv() => match publish {
                Some(publish) => publish,
                None => return,
            },
        };
        let Some(device) = device_of_topic(&publish.topic) else {
            continue;
        };
        let Ok(quote) = serde_json::from_slice::<AttestationQuote>(&publish.payload) else {
            tracing::warn!(device, "malformed attestation quote ignored");
            continue;
        };
        let nonce = quote.nonce.clone();
        match attestor
            .pending
            .answer(&attestor.store, device, quote)
            .await
        {
            Ok(Ok(Answered::Delivered)) => {}
            Ok(Ok(Answered::Orphaned(quote))) => attestor.verify_orphan(device, &quote).await,
            Ok(Err(why)) => attestor.unsolicited(device, &nonce, why).await,
            // The challenge stays pending: the device's QoS 1 redelivery or the next
            // challenge gets another chance.
            Err(error) => tracing::error!(device, %error, "cannot use an attestation challenge"),
        }
    }
}

/// How often the store forgets old challenges and answers.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Trust lapses: every `trusted` device whose last verified attestation is older than
/// `valid_for` becomes `unverified`. The devices changed.
pub async fn lapse_stale_trust(
    store: &Store,
    valid_for: Duration,
) -> Result<Vec<String>, StoreError> {
    let detail = format!(
        "trust lapsed: no verified attestation within {} s (rollouts.attestation_valid_secs); \
         the device is challenged again when it reconnects and on the schedule",
        valid_for.as_secs()
    );
    let lapsed = store
        .lapse_stale_trust(now_ms().saturating_sub(millis(valid_for)), &detail)
        .await?;
    for device in &lapsed {
        tracing::warn!(device, "attestation trust lapsed: unverified");
    }
    Ok(lapsed)
}

/// Attestations in flight at once. A connect storm (thousands of devices reconnecting
/// after a broker restart) queues here, not on the store's single writer, where an
/// attestation waiting past the pool's acquire timeout would fail and leave its device
/// unchallenged until the schedule.
pub const MAX_ATTESTATIONS_IN_FLIGHT: usize = 64;

/// Challenges each device when it becomes challengeable (`challengeable`), and every
/// `interval` after its last challenge while it stays connected (`None`: no schedule);
/// makes trust older than `valid_for` lapse (`None`: it never does); purges old
/// challenges; until shutdown.
pub async fn run(
    attestor: Attestor,
    mut challengeable: mpsc::Receiver<String>,
    interval: Option<Duration>,
    valid_for: Option<Duration>,
    shutdown: CancellationToken,
) {
    let in_flight: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_ATTESTATIONS_IN_FLIGHT));
    let mut last_started: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let period = interval
        .into_iter()
        .chain(valid_for)
        .min()
        .map_or(Duration::from_secs(1), |i| {
            i.clamp(Duration::from_millis(100), Duration::from_secs(1))
        });
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = Instant::now();
    let start = |device: String, tasks: &mut tokio::task::JoinSet<()>| {
        in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.clone());
        let (attestor, in_flight, shutdown, permits) = (
            attestor.clone(),
            Arc::clone(&in_flight),
            shutdown.clone(),
            Arc::clone(&permits),
        );
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                attested = async {
                    // The nonce is made after the permit: its lifetime is not spent queueing.
                    let _permit = permits.acquire_owned().await;
                    attestor.attest(&device, NONCE_LIFETIME).await
                } => {
                    if let Err(error) = attested {
                        tracing::warn!(device, %error, "attestation reached no verdict");
                    }
                }
            }
            in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&device);
        });
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            device = challengeable.recv() => {
                let Some(device) = device else { break };
                // On (re)connect always: a challenge still waiting went to the old session.
                last_started.insert(device.clone(), Instant::now());
                start(device, &mut tasks);
            }
            _ = tick.tick() => {
                if let Some(valid_for) = valid_for
                    && let Err(error) = lapse_stale_trust(&attestor.store, valid_for).await
                {
                    tracing::error!(%error, "cannot sweep lapsed attestations");
                }
                if last_purge.elapsed() >= PURGE_EVERY {
                    last_purge = Instant::now();
                    let before = now_ms().saturating_sub(millis(NONCE_MEMORY));
                    if let Err(error) = attestor.store.purge_challenges(before).await {
                        tracing::error!(%error, "cannot purge old attestation challenges");
                    }
                }
                let Some(every) = interval else { continue };
                let connected = attestor.devices.connected_device_ids();
                last_started.retain(|device, _| connected.binary_search(device).is_ok());
                for device in connected {
                    // First seen here: its interval starts now (its connect challenge
                    // comes when it subscribes to challenges).
                    let due = last_started
                        .entry(device.clone())
                        .or_insert_with(Instant::now)
                        .elapsed()
                        >= every;
                    let busy = in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&device);
                    if due && !busy {
                        last_started.insert(device.clone(), Instant::now());
                        start(device, &mut tasks);
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// Why no attestation could be made.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The device has not connected since the fleet started (its key is unknown).
    #[error("device is not connected")]
    NotConnected,
    /// No random nonce could be made.
    #[error("no random source")]
    Random,
    /// The device did not answer in time.
    #[error("the device did not answer the challenge within {0:?}")]
    NoAnswer(Duration),
    /// The releases could not be read.
    #[error("{0}")]
    Store(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(nonce: &str, body: &str) -> AttestationQuote {
        AttestationQuote {
            v: PROTOCOL_VERSION,
            nonce: nonce.into(),
            quote: body.into(),
            error: None,
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn a_nonce_is_answerable_once_and_only_by_its_device() {
        let (_dir, store) = store().await;
        let pending = PendingChallenges::default();
        let lifetime = Duration::from_secs(60);
        let mut rx = pending
            .issue(&store, "wd-1", "aa", lifetime)
            .await
            .expect("issue");
        let answer = |device: &'static str, q: AttestationQuote| {
            let (pending, store) = (&pending, &store);
            async move {
                pending
                    .answer(store, device, q)
                    .await
                    .expect("store")
                    .map(|a| matches!(a, Answered::Delivered))
            }
        };
        assert_eq!(
            answer("wd-2", quote("aa", "01")).await,
            Err(Unsolicited::Unknown)
        );
        assert_eq!(
            answer("wd-1", quote("bb", "01")).await,
            Err(Unsolicited::Unknown)
        );
        assert_eq!(answer("wd-1", quote("aa", "01")).await, Ok(true));
        assert_eq!(rx.try_recv().map(|q| q.quote), Ok("01".to_owned()));
        assert_eq!(
            answer("wd-1", quote("aa", "01")).await,
            Err(Unsolicited::Duplicate)
        );
        assert_eq!(
            answer("wd-1", quote("aa", "02")).await,
            Err(Unsolicited::Replayed)
        );
        // Still a replay after a duplicate was seen.
        assert_eq!(
            answer("wd-1", quote("aa", "03")).await,
            Err(Unsolicited::Replayed)
        );
    }

    #[tokio::test]
    async fn an_expired_challenge_is_not_answerable_and_old_ones_are_purged() {
        let (_dir, store) = store().await;
        let pending = PendingChallenges::default();
        let _rx = pending
            .issue(&store, "wd-1", "aa", Duration::ZERO)
            .await
            .expect("issue");
        tokio::time::sleep(Duration::from_millis(5)).await;
        pending.forget("wd-1", "aa");
        assert!(matches!(
            pending.answer(&store, "wd-1", quote("aa", "01")).await,
            Ok(Err(Unsolicited::Expired { .. }))
        ));
        // A challenge whose waiter is gone (a restart) is answered, for the caller to
        // verify.
        drop(
            pending
                .issue(&store, "wd-1", "bb", Duration::from_secs(60))
                .await
                .expect("issue"),
        );
        assert!(matches!(
            pending.answer(&store, "wd-1", quote("bb", "01")).await,
            Ok(Ok(Answered::Orphaned(_)))
        ));
        // Purged: both forgotten, a quote for them is now unknown.
        assert_eq!(
            store.purge_challenges(now_ms() + 1).await.expect("purge"),
            2
        );
        assert!(matches!(
            pending.answer(&store, "wd-1", quote("aa", "01")).await,
            Ok(Err(Unsolicited::Unknown))
        ));
    }

    fn release(version: &str, measurement: [u8; 32]) -> ImageRecord {
        ImageRecord {
            sha256: "ab".repeat(32),
            product: "press".into(),
            version: version.into(),
            size: 1,
            security_counter: 0,
            measurement: to_hex(&measurement),
            uploaded_ms: 0,
        }
    }

    #[test]
    fn the_image_register_must_be_one_boot_of_a_known_release() {
        let releases = [release("1.0.0", [1; 32]), release("1.1.0", [2; 32])];
        let booted = image_register_after_boot(&[2; 32]);
        assert_eq!(
            check_release(&booted, &releases),
            ReleaseCheck::Known(releases[1].clone())
        );
        // The raw header digest is not what boot leaves in the register.
        assert_eq!(
            check_release(&[2; 32], &releases),
            ReleaseCheck::NotARelease { releases: 2 }
        );
        // Two boots without a restart of pluton chain two measurements: not one release.
        let twice = Sha256::new()
            .chain_update(booted)
            .chain_update([2u8; 32])
            .finalize()
            .into();
        assert_eq!(
            check_release(&twice, &releases),
            ReleaseCheck::NotARelease { releases: 2 }
        );
        assert_eq!(check_release(&booted, &[]), ReleaseCheck::NoReleases);
    }

    /// A `WPT1` quote pluton's TPM backend made on swtpm (recorded once by
    /// `pluton/tests/it/tpm.rs`), so this runs without a TPM.
    const SWTPM_QUOTE: &str = include_str!("../../../pluton/tests/fixtures/swtpm-quote.txt");

    fn swtpm_fixture() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let field = |name: &str| {
            SWTPM_QUOTE
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(from_hex)
                .expect("fixture field")
        };
        (field("public_key"), field("nonce"), field("quote"))
    }

    #[test]
    fn a_tpm_quote_from_swtpm_verifies_and_its_image_register_is_checked() {
        let (public_key, nonce, quote) = swtpm_fixture();
        assert_eq!(&quote[..4], b"WPT1");
        let report = warden_pluton::verify_quote(&quote, &public_key, &nonce).expect("verifies");
        // The recording measured [1; 32] into register 0, as boot measures an image.
        let releases = [release("1.0.0", [1; 32])];
        assert_eq!(
            check_release(&report.registers[IMAGE_MEASUREMENT_REGISTER], &releases),
            ReleaseCheck::Known(releases[0].clone())
        );
        assert_eq!(report.counters[3], 42);
    }

    #[test]
    fn a_tampered_tpm_quote_is_refused_by_each_check() {
        use warden_pluton::QuoteError;
        let (public_key, nonce, quote) = swtpm_fixture();
        // Layout (pluton/src/quote/tpm.rs): report, AK at 348 + L, binding at 413 + L,
        // attest length at 477 + L, attest at 479 + L, then the AK's and the identity's
        // signatures.
        let nonce_len = usize::from(quote[7]);
        let ak = 348 + nonce_len;
        let binding = ak + 65;
        let attest = binding + 64 + 2;
        let attest_len = usize::from(u16::from_le_bytes([quote[attest - 2], quote[attest - 1]]));
        let attest_signature = attest + attest_len;
        let envelope = quote.len() - 64;
        let flipped = |at: usize| {
            let mut copy = quote.clone();
            copy[at] ^= 0x01;
            warden_pluton::verify_quote(&copy, &public_key, &nonce)
        };
        // Everything before the envelope signature is covered by it.
        for (what, at) in [
            ("device id", 8),
            ("firmware version", 24),
            ("nonce", 28),
            ("register 0", 28 + nonce_len),
            ("counter 3", 28 + nonce_len + 256 + 24),
            ("attestation key", ak + 10),
            ("attestation key binding", binding + 3),
            ("attest magic", attest),
            ("attest extra data", attest + 8),
            ("attest pcr digest", attest_signature - 1),
            ("attest signature", attest_signature + 5),
            ("envelope signature", envelope + 5),
        ] {
            let refused = flipped(at);
            assert!(refused.is_err(), "{what}: a flipped byte was accepted");
            if what != "device id" {
                assert_eq!(refused, Err(QuoteError::SignatureInvalid), "{what}");
            }
        }
        assert_eq!(flipped(8), Err(QuoteError::DeviceIdMismatch));
        assert_eq!(
            warden_pluton::verify_quote(&quote, &public_key, &[0x34; 32]),
            Err(QuoteError::NonceMismatch)
        );
        let mut other_key = public_key.clone();
        other_key[64] ^= 1;
        assert!(warden_pluton::verify_quote(&quote, &other_key, &nonce).is_err());
        assert_eq!(
            warden_pluton::verify_quote(&quote[..quote.len() - 1], &public_key, &nonce),
            Err(QuoteError::Truncated)
        );
        let mut longer = quote.clone();
        longer.push(0);
        assert_eq!(
            warden_pluton::verify_quote(&longer, &public_key, &nonce),
            Err(QuoteError::TrailingBytes)
        );
        // The checks behind the envelope (AK binding, AK signature, attest magic and
        // type, extra data, PCR selection, PCR digest) each refuse their own fault in
        // pluton's unit tests, where the envelope can be re-signed with a test key.
    }
}
