//! Staged rollouts: waves that advance on success and halt on failures or crashes.
//!
//! A deployment assigns an image to a device group; its members are split into waves
//! when it is created. The rollout task offers the image to the current wave's
//! trusted devices, follows their update statuses and crash reports, and appends
//! `wave-succeeded` (then the next `wave-started`, or `completed`) when the wave's
//! success rate reaches the threshold, or `halted` when its failure rate does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warden_wire::topics::{
    PROTOCOL_VERSION, UpdateOffer, UpdateState, UpdateStatus, device_of_topic, encode,
    update_offer_topic,
};

use crate::broker::{LocalPublisher, LocalSubscription};
use crate::clock::now_ms;
use crate::enrollment::DeviceTrust;
use crate::store::{Store, StoreError, StoredDeployment};

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

/// How big one wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WaveSize {
    /// A percentage (1..=100) of the group's devices, rounded up.
    Percent(u32),
    /// A number of devices (at least 1).
    Count(u32),
}

/// A deployment request (`POST /api/v1/deployments`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// SHA-256 of an uploaded image.
    pub image: String,
    /// The target group of the image's product.
    pub group: String,
    /// Wave sizes in order; devices left after the last wave join it. Default: one
    /// wave of everything.
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSize>,
    /// Fraction (0..=1] of a wave's offered devices that must confirm the update
    /// before the next wave starts. Default 0.9.
    #[serde(default = "default_success")]
    pub success_threshold: f64,
    /// Fraction (0..=1] of a wave's offered devices failing, rolling back or crashing
    /// on the new version that halts the deployment. Default 0.2.
    #[serde(default = "default_failure")]
    pub failure_threshold: f64,
    /// Maintenance window start, ms since the epoch (waves start only inside it).
    #[serde(default)]
    pub window_start_ms: Option<i64>,
    /// Maintenance window end.
    #[serde(default)]
    pub window_end_ms: Option<i64>,
}

fn default_waves() -> Vec<WaveSize> {
    vec![WaveSize::Percent(100)]
}
fn default_success() -> f64 {
    0.9
}
fn default_failure() -> f64 {
    0.2
}

impl DeploymentRequest {
    /// Checks the numbers; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("waves: at least one wave is needed".into());
        }
        for (index, wave) in self.waves.iter().enumerate() {
            match wave {
                WaveSize::Percent(p) if !(1..=100).contains(p) => {
                    return Err(format!("waves[{index}].percent {p} is outside 1..=100"));
                }
                WaveSize::Count(0) => {
                    return Err(format!("waves[{index}].count must be at least 1"));
                }
                _ => {}
            }
        }
        for (name, value) in [
            ("success_threshold", self.success_threshold),
            ("failure_threshold", self.failure_threshold),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(format!("{name} {value} is outside (0, 1]"));
            }
        }
        if let (Some(start), Some(end)) = (self.window_start_ms, self.window_end_ms)
            && end <= start
        {
            return Err("window_end_ms must be after window_start_ms".into());
        }
        Ok(())
    }
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

    /// Moves one deployment forward as far as its members' states allow.
    pub async fn step(&self, id: &str) -> Result<(), StoreError> {
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
        };
        let mut offered = 0usize;
        let mut withheld = 0usize;
        for member in deployment.members.iter().filter(|m| m.wave == wave) {
            match self
                .eligibility(&member.device_id, &deployment.group)
                .await?
            {
                Ok(()) => {
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
                            &reason,
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

    /// Why a device may not be offered an update, if it may not.
    async fn eligibility(
        &self,
        device_id: &str,
        group: &str,
    ) -> Result<Result<(), String>, StoreError> {
        let Some(device) = self.store.registered_device(device_id).await? else {
            return Ok(Err("not registered".into()));
        };
        Ok(
            if device.revoked || self.trust.is_revoked(&device.fingerprint) {
                Err("certificate revoked".into())
            } else if device.group == NO_UPDATES_GROUP || device.group != group {
                Err(format!("now in group {:?}", device.group))
            } else if device.attestation != "trusted" {
                Err(format!("attestation is {}", device.attestation))
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
                };
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

    #[test]
    fn requests_are_checked_field_by_field() {
        let good: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"Production"}"#).expect("defaults");
        assert!(good.validate().is_ok());
        let bad: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"g","waves":[{"percent":0}]}"#)
                .expect("parses");
        assert_eq!(
            bad.validate(),
            Err("waves[0].percent 0 is outside 1..=100".into())
        );
        let bad: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"g","failure_threshold":1.5}"#)
                .expect("parses");
        assert!(
            bad.validate()
                .expect_err("refused")
                .starts_with("failure_threshold")
        );
    }
}
