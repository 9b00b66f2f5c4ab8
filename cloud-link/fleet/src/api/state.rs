//! What every handler of the fleet's HTTP API shares.

use std::sync::Arc;

use crate::auth::Authorizer;
use crate::broker::LocalPublisher;
use crate::deployments::Rollouts;
use crate::enrollment::DeviceTrust;
use crate::images::ImageStore;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// Publishes to devices through the broker.
    pub devices: LocalPublisher,
    /// Challenges devices and records the verdicts.
    pub attestor: crate::attestation::Attestor,
    /// Answers certificate renewal requests; asks devices to renew.
    pub renewer: crate::renewal::Renewer,
    /// Who may call what.
    pub authorizer: Authorizer,
    /// What the broker trusts (products' CAs, registrations, revocations).
    pub trust: Arc<DeviceTrust>,
    /// Uploaded images.
    pub images: ImageStore,
    /// The rollout engine (stepped right after a deployment is created).
    pub rollouts: Rollouts,
    /// Stores release-key revocation lists and carries the newest to the devices.
    pub revocation_lists: crate::revocations::RevocationLists,
    /// Image downloads in progress, at most `http.max_downloads` (a permit is held
    /// until the response body is sent or dropped).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// This instance's ID in a cluster (PostgreSQL); `None` for a single instance.
    pub instance: Option<String>,
}
