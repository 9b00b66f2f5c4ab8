//! The policy the bridges start with: the last verified bundle, else the local file.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ApplianceConfig;
use crate::twin::TwinError;

/// Why the bridges have no policy to start with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartingPolicyError {
    /// The bundle store could not be opened.
    #[error(transparent)]
    Store(#[from] TwinError),
    /// The local policy file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The local policy file does not compile.
    #[error("policy {origin} does not compile:\n{errors}")]
    Compile {
        /// The policy file, as the compiler names it.
        origin: String,
        /// The compiler's errors, one per line.
        errors: String,
    },
}

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
    pub fn load(config: &ApplianceConfig) -> Result<Self, StartingPolicyError> {
        let bundle_store = match &config.policy.bundle_dir {
            Some(dir) => {
                let pluton = config.link.pluton_socket.as_deref();
                let roots = crate::twin::policy_roots(pluton)?;
                let mut store = crate::twin::open_store(dir, &roots, &config.device.product)?;
                crate::twin::enforce_bundle_floor(&mut store, dir, pluton)?;
                Some(store)
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
        let initial_report = warden_link::topics::TwinReported {
            point_decimals: config.bridges.point_decimals(),
            ..crate::twin::reported_for(&policy, bundle_version, None)
        };
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
fn compile_policy_file(
    path: &std::path::Path,
) -> Result<warden_policy::CompiledPolicy, StartingPolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartingPolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let compiled =
        warden_policy::compile(&text, &origin).map_err(|errors| StartingPolicyError::Compile {
            origin: origin.clone(),
            errors: errors.to_string(),
        })?;
    for warning in &compiled.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    Ok(compiled.policy)
}
