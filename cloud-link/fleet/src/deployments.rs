//! Staged rollouts: waves that advance on success and halt on failures or crashes.
//!
//! A deployment assigns an image to a device group; its members are split into waves
//! when it is created. The rollout task offers the image to the current wave's
//! trusted devices, follows their update statuses and crash reports, and appends
//! `wave-succeeded` (then the next `wave-started`, or `completed`) when the wave's
//! success rate reaches the threshold, or `halted` when its failure rate does.
//!
//! Each offer names the full image, and beside it the uploaded delta whose base is the
//! image the device reports it runs (its twin's `image_sha256`), if there is one: the
//! device uses the delta when its installed image is that base and falls back to the
//! full image otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_wire::topics::{
    PROTOCOL_VERSION, TwinReported, UPDATE_SOURCE_LOCAL, UpdateOffer, UpdateOfferDelta,
    UpdateState, UpdateStatus, device_of_topic, encode, update_offer_topic,
};

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::enrollment::DeviceTrust;
use crate::store::{Store, StoreError};
use warden_wire::fleet_api::{DeploymentRequest, StoredDeployment, WaveSize};

/// The group that never receives updates.
pub const NO_UPDATES_GROUP: &str = "No Updates";

/// Whether an update state counts as a failure of the wave.
fn is_failure(state: &str) -> bool {
    state == UpdateState::Failed.as_str() || state == UpdateState::RolledBack.as_str()
}

/// Whether an update state counts as a success.
fn is_success(state: &str) -> bool {
    state == UpdateState::Confirmed.as_str()
}

/// Splits `devices` (already in a stable order) into waves: each wave takes its size
/// of what remains, the last takes everything left, empty waves are dropped.
pub fn assign_waves(devices: &[String], waves: &[WaveSize]) -> Vec<(String, i64)> {
    let total = devices.len();
    let mut out = Vec::with_capacity(total);
    let mut next = 0usize;
    for (index, size) in waves.iter().enumerate() {
        let wave = i64::try_from(index).unwrap_or(i64::MAX);
        if next >= total {
            break;
        }
        let remaining = total - next;
        let take = if index + 1 == waves.len() {
            remaining
        } else {
            let wanted = match *size {
                WaveSize::Percent(p) => (total * p as usize).div_ceil(100).max(1),
                WaveSize::Count(n) => n as usize,
            };
            wanted.min(remaining)
        };
        for device in &devices[next..next + take] {
            out.push((device.clone(), wave));
        }
        next += take;
    }
    out
}

/// Why a member of a wave is not offered the image (its `withheld` state's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Withheld {
    /// It is no longer registered.
    #[error("not registered")]
    NotRegistered,
    /// Its certificate is revoked.
    #[error("certificate revoked")]
    Revoked,
    /// It moved out of the deployment's group (or into `No Updates`).
    #[error("now in group {0:?}")]
    Group(String),
    /// It is not trusted now.
    #[error("attestation is {0}")]
    Attestation(String),
}

/// What the rollout task needs.
#[derive(Clone)]
pub struct Rollouts {
    /// The store.
    pub store: Store,
    /// Publishes offers.
    pub devices: LocalPublisher,
    /// Revocations.
    pub trust: Arc<DeviceTrust>,
    /// Base URL devices download images from (`http://host:port`).
    pub image_base_url: String,
    /// How long an offered device may stay silent before the offer is sent again.
    pub reoffer_after: Duration,
    /// Serialises steps within this process (the API and the task both step).
    pub step_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether this instance steps deployments (of a cluster, only the leader does;
    /// the others record update statuses, and the leader's next tick acts on them).
    pub leader: crate::cluster::Leadership,
}

impl Rollouts {
    /// Steps every active deployment each `tick`, and records update statuses as they
    /// arrive, until shutdown.
    pub async fn run(
        self,
        tick: Duration,
        mut statuses: LocalSubscription,
        shutdown: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    if let Err(error) = self.step_all().await {
                        tracing::error!(%error, "rollout step failed");
                    }
                }
                publish = statuses.recv() => {
                    let Some(publish) = publish else { return };
                    if let Err(error) = self.on_status(&publish).await {
                        tracing::error!(%error, "cannot record an update status");
                    }
                }
            }
        }
    }

    /// Steps every active deployment once.
    pub async fn step_all(&self) -> Result<(), StoreError> {
        for id in self.store.active_deployments().await? {
            self.step(&id).await?;
        }
        Ok(())
    }

    async fn on_status(&self, publish: &rumqttc::Publish) -> Result<(), StoreError> {
        let Some(device) = device_of_topic(&publish.topic) else {
            return Ok(());
        };
        let handled = self.record_status(device, publish).await?;
        // Stored, or refused for good: either way the device may forget it.
        if handled {
            crate::ingest::acknowledge(&self.devices, device, &publish.payload).await;
        }
        Ok(())
    }

    /// Records an update status; `false` only if it could not be handled now.
    async fn record_status(
        &self,
        device: &str,
        publish: &rumqttc::Publish,
    ) -> Result<bool, StoreError> {
        let status: UpdateStatus = match serde_json::from_slice(&publish.payload) {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(device, %error, "malformed update status ignored");
                return Ok(true);
            }
        };
        if status.source.as_deref() == Some(UPDATE_SOURCE_LOCAL) {
            return self.record_local_status(device, &status).await;
        }
        let Some((deployment_id, _wave)) = status.id.rsplit_once("-w") else {
            tracing::warn!(device, id = %status.id, "update status for an unknown offer ignored");
            return Ok(true);
        };
        let Some(deployment) = self.store.deployment(deployment_id).await? else {
            tracing::warn!(device, id = %status.id, "update status for an unknown deployment ignored");
            return Ok(true);
        };
        if !deployment.members.iter().any(|m| m.device_id == device) {
            tracing::warn!(device, id = %status.id, "update status from a device outside the deployment ignored");
            return Ok(true);
        }
        let now = now_ms();
        self.store
            .record_member_state(deployment_id, device, &status.state, &status.detail, now)
            .await?;
        if is_success(&status.state) {
            self.store
                .set_image_version(device, &deployment.version)
                .await?;
        }
        if deployment.state == "wave-started" {
            self.step(deployment_id).await?;
        }
        Ok(true)
    }

    /// Records the status of an image installed on the unit from a file (no deployment
    /// of ours): its `update-state` events are the device's record of it; a confirmed
    /// one is the version the device now runs.
    async fn record_local_status(
        &self,
        device: &str,
        status: &UpdateStatus,
    ) -> Result<bool, StoreError> {
        tracing::info!(device, id = %status.id, state = %status.state, version = ?status.version, "local update status");
        if is_success(&status.state)
            && let Some(version) = status.version.as_deref()
        {
            self.store.set_image_version(device, version).await?;
        }
        Ok(true)
    }

    /// Moves one deployment forward as far as its members' states allow.
    pub async fn step(&self, id: &str) -> Result<(), StoreError> {
        if !self.leader.is_leader() {
            return Ok(());
        }
        let _serial = self.step_lock.lock().await;
        // A few transitions may happen in one step (a wave succeeds, the next starts).
        for _ in 0..4 {
            let Some(deployment) = self.store.deployment(id).await? else {
                return Ok(());
            };
            let request: DeploymentRequest = match serde_json::from_value(deployment.spec.clone()) {
                Ok(request) => request,
                Err(error) => {
                    self.append(
                        &deployment,
                        "halted",
                        deployment.wave,
                        &format!("unreadable spec: {error}"),
                    )
                    .await?;
                    return Ok(());
                }
            };
            let now = now_ms();
            let moved = match deployment.state.as_str() {
                "created" => self.start_wave(&deployment, &request, 0, now).await?,
                "wave-succeeded" => {
                    let next = deployment.wave + 1;
                    if deployment.members.iter().any(|m| m.wave == next) {
                        self.start_wave(&deployment, &request, next, now).await?
                    } else {
                        self.append(
                            &deployment,
                            "completed",
                            deployment.wave,
                            "every wave succeeded",
                        )
                        .await?;
                        true
                    }
                }
                "wave-started" => self.evaluate_wave(&deployment, &request, now).await?,
                _ => false,
            };
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn start_wave(
        &self,
        deployment: &StoredDeployment,
        request: &DeploymentRequest,
        wave: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        if request.window_start_ms.is_some_and(|start| now < start) {
            return Ok(false);
        }
        if request.window_end_ms.is_some_and(|end| now > end) {
            self.append(
                deployment,
                "halted",
                wave,
                "the maintenance window closed before the wave could start",
            )
            .await?;
            return Ok(true);
        }
        let Some(image) = self.store.image(&deployment.image_sha256).await? else {
            self.append(deployment, "halted", wave, "the image is gone")
                .await?;
            return Ok(true);
        };
        let offer = UpdateOffer {
            v: PROTOCOL_VERSION,
            id: offer_id(&deployment.id, wave),
            url: format!("{}/images/{}", self.image_base_url, image.sha256),
            sha256: image.sha256.clone(),
            size: u64::try_from(image.size).unwrap_or(0),
            version: image.version.clone(),
            window_start_ms: request
                .window_start_ms
                .map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
            window_end_ms: request
                .window_end_ms
                .map_or(i64::MAX as u64, |ms| u64::try_from(ms).unwrap_or(0)),
            delta: None,
        };
        let mut offered = 0usize;
        let mut withheld = 0usize;
        for member in deployment.members.iter().filter(|m| m.wave == wave) {
            match self
                .eligibility(&member.device_id, &deployment.group)
                .await?
            {
                Ok(()) => {
                    let offer = self.with_delta(&offer, &member.device_id).await?;
                    self.store
                        .record_member_state(&deployment.id, &member.device_id, "offered", "", now)
                        .await?;
                    self.devices
                        .publish(update_offer_topic(&member.device_id), encode(&offer))
                        .await;
                    offered += 1;
                }
                Err(reason) => {
                    self.store
                        .record_member_state(
                            &deployment.id,
                            &member.device_id,
                            "withheld",
                            &reason.to_string(),
                            now,
                        )
                        .await?;
                    withheld += 1;
                }
            }
        }
        self.append(
            deployment,
            "wave-started",
            wave,
            &format!("offered to {offered} devices, withheld from {withheld}"),
        )
        .await?;
        Ok(true)
    }

    /// `offer` with the delta to its image from the image `device` reports it runs, if
    /// one was uploaded; as it is otherwise.
    async fn with_delta(
        &self,
        offer: &UpdateOffer,
        device: &str,
    ) -> Result<UpdateOffer, StoreError> {
        let mut offer = offer.clone();
        offer.delta = None;
        let Some(installed) = self.reported_image(device).await? else {
            return Ok(offer);
        };
        if installed == offer.sha256 {
            return Ok(offer);
        }
        if let Some(delta) = self.store.delta_between(&installed, &offer.sha256).await? {
            offer.delta = Some(UpdateOfferDelta {
                url: format!("{}/deltas/{}", self.image_base_url, delta.sha256),
                sha256: delta.sha256,
                size: u64::try_from(delta.size).unwrap_or(0),
                base_sha256: delta.base_sha256,
            });
        }
        Ok(offer)
    }

    /// The image (whole-file SHA-256, hex) `device` last reported it runs, if it did.
    async fn reported_image(&self, device: &str) -> Result<Option<String>, StoreError> {
        let Some((_, Some(reported))) = self.store.twin(device).await? else {
            return Ok(None);
        };
        Ok(TwinReported::decode(reported.as_bytes())
            .ok()
            .and_then(|reported| reported.image_sha256)
            .filter(|sha256| crate::images::is_sha256_hex(sha256)))
    }

    /// Why a device may not be offered an update, if it may not.
    async fn eligibility(
        &self,
        device_id: &str,
        group: &str,
    ) -> Result<Result<(), Withheld>, StoreError> {
        let Some(device) = self.store.registered_device(device_id).await? else {
            return Ok(Err(Withheld::NotRegistered));
        };
        Ok(
            if device.revoked || self.trust.is_revoked(&device.fingerprint) {
                Err(Withheld::Revoked)
            } else if device.group == NO_UPDATES_GROUP || device.group != group {
                Err(Withheld::Group(device.group))
            } else if device.attestation != "trusted" {
                Err(Withheld::Attestation(device.attestation))
            } else {
                Ok(())
            },
        )
    }

    async fn evaluate_wave(
        &self,
        deployment: &StoredDeployment,
        request: &DeploymentRequest,
        now: i64,
    ) -> Result<bool, StoreError> {
        let wave = deployment.wave;
        let started_ms = deployment
            .events
            .iter()
            .rev()
            .find(|e| e.kind == "wave-started" && e.wave == wave)
            .map_or(deployment.created_ms, |e| e.ts_ms);
        let crashed = self
            .store
            .crashed_devices(&deployment.version, started_ms)
            .await?;
        let members: Vec<_> = deployment
            .members
            .iter()
            .filter(|m| m.wave == wave && m.state != "withheld" && m.state != "pending")
            .collect();
        let offered = members.len();
        if offered == 0 {
            self.append(
                deployment,
                "halted",
                wave,
                "no device of the wave could be offered the update (none trusted and attested)",
            )
            .await?;
            return Ok(true);
        }
        let failed = members
            .iter()
            .filter(|m| is_failure(&m.state) || crashed.contains(&m.device_id))
            .count();
        let succeeded = members
            .iter()
            .filter(|m| is_success(&m.state) && !crashed.contains(&m.device_id))
            .count();
        #[allow(clippy::cast_precision_loss)]
        let (failure_rate, success_rate) = (
            failed as f64 / offered as f64,
            succeeded as f64 / offered as f64,
        );
        if failed > 0 && failure_rate >= request.failure_threshold {
            self.append(
                deployment,
                "halted",
                wave,
                &format!(
                    "{failed} of {offered} devices failed, rolled back or crashed on {} (threshold {})",
                    deployment.version, request.failure_threshold
                ),
            )
            .await?;
            return Ok(true);
        }
        if success_rate >= request.success_threshold {
            self.append(
                deployment,
                "wave-succeeded",
                wave,
                &format!(
                    "{succeeded} of {offered} devices confirmed {}",
                    deployment.version
                ),
            )
            .await?;
            return Ok(true);
        }
        // Offers travel at most once: one lost while a device was away is sent again.
        let stale = i64::try_from(self.reoffer_after.as_millis()).unwrap_or(i64::MAX);
        for member in members
            .iter()
            .filter(|m| m.state == "offered" && m.updated_ms.is_some_and(|t| now - t >= stale))
        {
            if let Some(image) = self.store.image(&deployment.image_sha256).await? {
                let offer = UpdateOffer {
                    v: PROTOCOL_VERSION,
                    id: offer_id(&deployment.id, wave),
                    url: format!("{}/images/{}", self.image_base_url, image.sha256),
                    sha256: image.sha256.clone(),
                    size: u64::try_from(image.size).unwrap_or(0),
                    version: image.version.clone(),
                    window_start_ms: request
                        .window_start_ms
                        .map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
                    window_end_ms: request
                        .window_end_ms
                        .map_or(i64::MAX as u64, |ms| u64::try_from(ms).unwrap_or(0)),
                    delta: None,
                };
                let offer = self.with_delta(&offer, &member.device_id).await?;
                self.store
                    .record_member_state(
                        &deployment.id,
                        &member.device_id,
                        "offered",
                        "offer sent again",
                        now,
                    )
                    .await?;
                self.devices
                    .publish(update_offer_topic(&member.device_id), encode(&offer))
                    .await;
            }
        }
        Ok(false)
    }

    /// Appends a state change after the last one `deployment` holds; if another
    /// fleet instance appended first, nothing is written (it moved the deployment).
    async fn append(
        &self,
        deployment: &StoredDeployment,
        kind: &str,
        wave: i64,
        detail: &str,
    ) -> Result<(), StoreError> {
        let after = deployment.events.last().map_or(-1, |e| e.seq);
        let appended = self
            .store
            .append_deployment_event(&deployment.id, after, kind, wave, detail, now_ms())
            .await?;
        if appended {
            tracing::info!(deployment = %deployment.id, kind, wave, detail, "deployment state change");
        }
        Ok(())
    }
}

/// The offer ID of a deployment's wave (`{deployment}-w{wave}`).
pub fn offer_id(deployment: &str, wave: i64) -> String {
    format!("{deployment}-w{wave}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("wd-{i:02}")).collect()
    }

    fn sizes(assigned: &[(String, i64)]) -> Vec<usize> {
        let waves = assigned.iter().map(|a| a.1).max().map_or(0, |w| w + 1);
        (0..waves)
            .map(|w| assigned.iter().filter(|a| a.1 == w).count())
            .collect()
    }

    #[test]
    fn waves_take_their_share_and_the_last_takes_the_rest() {
        let ten = devices(10);
        assert_eq!(
            sizes(&assign_waves(
                &ten,
                &[WaveSize::Percent(10), WaveSize::Percent(50)]
            )),
            vec![1, 9]
        );
        assert_eq!(
            sizes(&assign_waves(
                &ten,
                &[
                    WaveSize::Count(2),
                    WaveSize::Percent(25),
                    WaveSize::Count(1)
                ]
            )),
            vec![2, 3, 5]
        );
        // More waves than devices: the empty ones disappear.
        assert_eq!(
            sizes(&assign_waves(
                &devices(2),
                &[WaveSize::Count(1), WaveSize::Count(1), WaveSize::Count(1)]
            )),
            vec![1, 1]
        );
        // A small percentage still takes one device.
        assert_eq!(
            sizes(&assign_waves(
                &ten,
                &[WaveSize::Percent(1), WaveSize::Percent(100)]
            )),
            vec![1, 9]
        );
        assert!(assign_waves(&[], &[WaveSize::Percent(100)]).is_empty());
    }
}
