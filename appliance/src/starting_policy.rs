//! The policy the bridges start with: the last verified bundle, else the local file.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::ApplianceConfig;

/// The policy the bridges start with, and the store of signed bundles from the fleet.
pub struct StartingPolicy {
    /// The last verified bundle's policy, else the local policy file's.
    pub policy: Arc<warden_policy::CompiledPolicy>,
    /// The bundle store (with `[policy] bundle_dir`).
    pub bundle_store: Option<warden_policy::bundle::store::BundleStore>,
    /// What the twin reports first.
    pub initial_report: warden_link::topics::TwinReported,
    /// The stored signed bundle the policy came from, if it came from one: real-time
    /// cores get it instead of their configured `policy_bundle` (it is newer).
    pub bundle_file: Option<std::path::PathBuf>,
}

impl StartingPolicy {
    /// The last verified bundle from the fleet wins over the local file.
    pub fn load(config: &ApplianceConfig) -> anyhow::Result<Self> {
        let bundle_store = match &config.policy.bundle_dir {
            Some(dir) => {
                let roots = crate::twin::policy_roots(config.link.pluton_socket.as_deref())?;
                Some(crate::twin::open_store(
                    dir,
                    &roots,
                    &config.device.product,
                )?)
            }
            None => None,
        };
        let (policy, bundle_version) = match bundle_store.as_ref().and_then(|store| store.current())
        {
            Some(applied) => {
                tracing::info!(
                    version = applied.header.version,
                    "policy from the last verified bundle"
                );
                (
                    Arc::new(applied.policy.clone()),
                    Some(applied.header.version),
                )
            }
            None => (Arc::new(compile_policy_file(&config.policy.file)?), None),
        };
        let initial_report = crate::twin::reported_for(&policy, bundle_version, None);
        let bundle_file = match (&config.policy.bundle_dir, bundle_version) {
            (Some(dir), Some(_)) => Some(dir.join(warden_policy::bundle::store::CURRENT_FILE)),
            _ => None,
        };
        Ok(Self {
            policy,
            bundle_store,
            initial_report,
            bundle_file,
        })
    }
}

/// Compiles the local policy file, logging its warnings.
fn compile_policy_file(path: &std::path::Path) -> anyhow::Result<warden_policy::CompiledPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    let origin = path.display().to_string();
    let compiled = warden_policy::compile(&text, &origin)
        .map_err(|errors| anyhow::anyhow!("policy {origin} does not compile:\n{errors}"))?;
    for warning in &compiled.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    Ok(compiled.policy)
}
