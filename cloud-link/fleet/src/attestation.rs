//! Attestation: a fresh nonce to the device, pluton's quote back, verified here with
//! only the public key the device authenticated with.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use warden_link::topics::{
    AttestationChallenge, AttestationQuote, MIN_NONCE_LEN, PROTOCOL_VERSION,
    attestation_challenge_topic, device_of_topic, encode, from_hex, to_hex,
};

use crate::broker::{LocalPublisher, LocalSubscription};

/// Filter matching every device's quotes.
pub const ALL_QUOTES: &str = "warden/v1/devices/+/attestation/quote";
/// How long a device has to answer a challenge.
pub const QUOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Challenges waiting for their quote, by `(device, nonce hex)`.
#[derive(Default)]
pub struct PendingChallenges(Mutex<BTreeMap<(String, String), oneshot::Sender<AttestationQuote>>>);

/// The outcome of one attestation.
#[derive(Debug, Clone, Serialize)]
pub struct Attestation {
    /// The device.
    pub device: String,
    /// Whether the quote verified against the device's key and the fresh nonce.
    pub verified: bool,
    /// Why it did not.
    pub reason: Option<String>,
    /// The firmware version pluton reported.
    pub firmware_version: Option<u32>,
    /// The measurement registers, hex.
    pub registers: Vec<String>,
    /// The anti-rollback counters.
    pub counters: Vec<u64>,
}

/// Resolves waiting challenges with the quotes devices send, until shutdown.
pub async fn collect_quotes(
    pending: Arc<PendingChallenges>,
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
        let waiter = pending
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(device.to_owned(), quote.nonce.clone()));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(quote);
            }
            None => tracing::warn!(
                device,
                "quote for no pending challenge (stale or replayed) ignored"
            ),
        }
    }
}

/// Challenges `device` and verifies its answer.
pub async fn attest(
    device: &str,
    devices: &LocalPublisher,
    pending: &PendingChallenges,
) -> Result<Attestation, AttestError> {
    let public_key = devices
        .device_key(device)
        .ok_or(AttestError::NotConnected)?;
    let mut nonce = [0u8; MIN_NONCE_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| AttestError::Random)?;
    let nonce_hex = to_hex(&nonce);
    let (tx, rx) = oneshot::channel();
    pending
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((device.to_owned(), nonce_hex.clone()), tx);
    let challenge = AttestationChallenge {
        v: PROTOCOL_VERSION,
        nonce: nonce_hex.clone(),
    };
    devices
        .publish(attestation_challenge_topic(device), encode(&challenge))
        .await;
    let answer = tokio::time::timeout(QUOTE_TIMEOUT, rx).await;
    pending
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&(device.to_owned(), nonce_hex));
    let quote = match answer {
        Ok(Ok(quote)) => quote,
        _ => return Err(AttestError::NoAnswer),
    };
    let failed = |reason: String| Attestation {
        device: device.to_owned(),
        verified: false,
        reason: Some(reason),
        firmware_version: None,
        registers: Vec::new(),
        counters: Vec::new(),
    };
    if let Some(error) = quote.error {
        return Ok(failed(format!("the device could not quote: {error}")));
    }
    let Some(bytes) = from_hex(&quote.quote) else {
        return Ok(failed("the quote is not hex".into()));
    };
    match warden_pluton::verify_quote(&bytes, &public_key, &nonce) {
        Ok(report) => Ok(Attestation {
            device: device.to_owned(),
            verified: true,
            reason: None,
            firmware_version: Some(report.firmware_version),
            registers: report
                .registers
                .iter()
                .map(|r| to_hex(r.as_ref()))
                .collect(),
            counters: report.counters.to_vec(),
        }),
        Err(error) => Ok(failed(format!("quote refused: {error:?}"))),
    }
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
    #[error("the device did not answer the challenge within {QUOTE_TIMEOUT:?}")]
    NoAnswer,
}
