//! Release-key revocation lists: verified on upload, stored, and carried to every
//! device (not device certificates: those are revoked in the registry).
//!
//! An operator uploads the vendor-signed `WRL1` file (`POST /api/v1/revocation-lists`).
//! The fleet verifies it against the vendor roots it verifies images with
//! (`images.vendor_roots`) and refuses it unless its sequence is above that of every
//! list it holds. Then the newest list goes, on `updates/revocation-list`
//! ([`warden_wire::revocation`]):
//! - to every device online on any instance, when it is uploaded (a device on another
//!   instance gets it through that instance, as every message to a device does:
//!   [`LocalPublisher::publish`]);
//! - to a device each time its session subscribes to the topic (every connect), on the
//!   instance that holds the session ([`crate::broker::Router`] tells);
//! - to a device whose reported twin shows an older sequence (or none).
//!
//! Delivery is QoS 0 and nothing is retained: a device that misses it gets it at its
//! next connect or twin report. The device verifies the list again against the roots
//! in its own root of trust; the fleet is only the carrier.

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_image::RootKey;
use warden_keychain::RevocationList;
use warden_wire::fleet_api::RevocationListRecord;
use warden_wire::revocation::{
    MAX_REVOCATION_LIST_LEN, RevocationListMessage, revocation_list_topic,
};
use warden_wire::topics::{TwinReported, device_of_topic, to_hex};

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::store::{Store, StoreError};

/// Why an uploaded list was refused (the API answers 422 naming `revocation_list`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The fleet has no vendor roots to verify with.
    #[error(
        "the fleet has no vendor roots configured (images.vendor_roots); it accepts no revocation list"
    )]
    NoRoots,
    /// Larger than a list may be.
    #[error("the revocation list is {0} bytes; a list is at most {MAX_REVOCATION_LIST_LEN} bytes")]
    TooLarge(usize),
    /// It does not verify (framing, unknown root, signature).
    #[error("the revocation list does not verify against the fleet's vendor roots: {0}")]
    Invalid(warden_keychain::RevocationError),
    /// Its sequence does not fit the store.
    #[error("the revocation list's sequence {0} is above {max}", max = i64::MAX)]
    SequenceTooLarge(u64),
    /// Not newer than the newest list the fleet holds.
    #[error(
        "the revocation list's sequence {offered} is not above the sequence {held} of the newest list the fleet holds; sign the new list with a higher sequence"
    )]
    NotNewer {
        /// The uploaded list's.
        offered: u64,
        /// The newest held list's.
        held: u64,
    },
}

/// Verifies an uploaded list against `roots`: what to store about it.
pub fn verify_upload(
    roots: &[RootKey],
    bytes: &[u8],
    now_ms: i64,
) -> Result<RevocationListRecord, UploadError> {
    if bytes.len() > MAX_REVOCATION_LIST_LEN {
        return Err(UploadError::TooLarge(bytes.len()));
    }
    if roots.is_empty() {
        return Err(UploadError::NoRoots);
    }
    let list = RevocationList::verify(bytes, roots, &[]).map_err(UploadError::Invalid)?;
    if i64::try_from(list.sequence()).is_err() {
        return Err(UploadError::SequenceTooLarge(list.sequence()));
    }
    Ok(RevocationListRecord {
        sequence: list.sequence(),
        issuer: to_hex(&list.issuer().0),
        revoked: list.revoked().map(|id| to_hex(&id.0)).collect(),
        sha256: to_hex(&Sha256::digest(bytes)),
        size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        uploaded_ms: now_ms,
    })
}

/// Carries the newest list to devices.
#[derive(Clone)]
pub struct RevocationLists {
    /// Where the lists are.
    pub store: Store,
    /// Reaches the devices (here or through the instance holding their session).
    pub devices: LocalPublisher,
}

impl RevocationLists {
    /// Stores a verified list (refusing one not newer than the newest held) and sends
    /// it to every device online on any instance.
    pub async fn publish(
        &self,
        record: &RevocationListRecord,
        bytes: &[u8],
    ) -> Result<Result<(), UploadError>, StoreError> {
        if !self.store.insert_revocation_list(record, bytes).await? {
            let held = self
                .store
                .newest_revocation_sequence()
                .await?
                .unwrap_or(record.sequence);
            return Ok(Err(UploadError::NotNewer {
                offered: record.sequence,
                held,
            }));
        }
        let payload = RevocationListMessage::new(record.sequence, bytes).encode();
        let online = self.devices.online_device_ids().await;
        tracing::info!(
            sequence = record.sequence,
            revoked = record.revoked.len(),
            devices = online.len(),
            "release-key revocation list stored; sending it to the online devices"
        );
        for device in online {
            self.devices
                .publish(revocation_list_topic(&device), payload.clone())
                .await;
        }
        Ok(Ok(()))
    }

    /// Sends the newest list (if the fleet holds one) to `device`.
    pub async fn send_newest(&self, device: &str) {
        match self.store.newest_revocation_list().await {
            Ok(Some((sequence, list))) => {
                tracing::debug!(device, sequence, "sending the release-key revocation list");
                self.devices
                    .publish(
                        revocation_list_topic(device),
                        RevocationListMessage::new(sequence, &list).encode(),
                    )
                    .await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, device, "cannot read the newest release-key revocation list")
            }
        }
    }

    /// Whether a device whose reported twin is `reported` should get the newest list.
    async fn behind(&self, reported: &[u8]) -> bool {
        let Ok(twin) = TwinReported::decode(reported) else {
            return false;
        };
        match self.store.newest_revocation_sequence().await {
            Ok(Some(newest)) => twin
                .revocation_list_sequence
                .is_none_or(|held| held < newest),
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot read the newest release-key revocation list");
                false
            }
        }
    }
}

/// Sends the newest list to each device that subscribes to it (`listeners`, from the
/// broker) and to each whose reported twin (`reported`) shows an older one, until
/// `shutdown`.
pub async fn run(
    lists: RevocationLists,
    mut listeners: mpsc::Receiver<String>,
    mut reported: LocalSubscription,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            device = listeners.recv() => match device {
                Some(device) => lists.send_newest(&device).await,
                None => return,
            },
            publish = reported.recv() => match publish {
                Some(publish) => {
                    let Some(device) = device_of_topic(&publish.topic) else { continue };
                    if lists.behind(&publish.payload).await {
                        lists.send_newest(device).await;
                    }
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_keychain::tooling::{SecretSigningKey, sign_revocation_list};

    #[test]
    fn an_upload_is_verified_against_the_vendor_roots_and_bounded() {
        let vendor = SecretSigningKey::generate().expect("rng");
        let foreign = SecretSigningKey::generate().expect("rng");
        let roots = [RootKey::from_public_key(&vendor.public_key()).expect("root")];
        let revoked = SecretSigningKey::generate().expect("rng").key_id();
        let list = sign_revocation_list(&vendor, 3, &[revoked]).expect("list");
        let record = verify_upload(&roots, &list, 7).expect("verifies");
        assert_eq!(record.sequence, 3);
        assert_eq!(record.revoked, vec![to_hex(&revoked.0)]);
        assert_eq!(record.issuer, to_hex(&vendor.key_id().0));
        assert_eq!(record.size, list.len() as i64);

        let by_foreign = sign_revocation_list(&foreign, 4, &[revoked]).expect("list");
        let error = verify_upload(&roots, &by_foreign, 7).expect_err("foreign root");
        assert!(
            error
                .to_string()
                .contains("not signed by an installed root"),
            "{error}"
        );
        let mut tampered = list.clone();
        let last = tampered.len() - 70;
        tampered[last] ^= 1;
        let error = verify_upload(&roots, &tampered, 7).expect_err("tampered");
        assert!(error.to_string().contains("signature"), "{error}");
        let error =
            verify_upload(&roots, &[0u8; MAX_REVOCATION_LIST_LEN + 1], 7).expect_err("oversized");
        assert!(error.to_string().contains("at most 4096 bytes"), "{error}");
        assert!(matches!(
            verify_upload(&[], &list, 7),
            Err(UploadError::NoRoots)
        ));
    }
}
