//! Pluton as this binary runs it (`warden pluton`, the `pluton` compartment): whom it
//! gives which role.
//!
//! The host that starts pluton says who is who, and nothing else does:
//! - the launch tokens in pluton's environment (`WARDEN_PLUTON_TOKEN_<ROLE>`, minted by
//!   `warden boot`, the security monitor or the demo; see
//!   `warden_pluton_api::launch_tokens`): a caller presenting one has that role;
//! - `WARDEN_PLUTON_ROLE_UIDS` (`link=61003,…`, set by a monitor running as root from
//!   the manifest's uids): a caller with that uid has that role from its first byte;
//! - `--unseparated` (transitional, for hosts not yet handing out roles): every other
//!   caller gets the `unseparated` role (every compartment right, never the boot
//!   registers).
//!
//! A caller none of these names has no rights except presenting a token or the
//! provisioning capability (which makes it the boot role): deny by default.

use warden_pluton::server::CallerRoles;
use warden_pluton_api::LaunchTokenError;
use warden_pluton_api::launch_tokens::{LaunchTokens, ROLE_UIDS_ENV, parse_role_uids};

/// The roles pluton gives its callers, from its environment (and `--unseparated`).
pub fn caller_roles_from_env(unseparated: bool) -> Result<CallerRoles, LaunchTokenError> {
    let by_uid = match std::env::var(ROLE_UIDS_ENV) {
        Ok(text) => parse_role_uids(&text)?,
        Err(std::env::VarError::NotPresent) => Default::default(),
        // Not ignored: a map that cannot be read must not silently become "no roles".
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(LaunchTokenError::RoleUid {
                entry: "<not UTF-8>".to_owned(),
            });
        }
    };
    let tokens = LaunchTokens::from_env()?;
    let roles = CallerRoles {
        by_uid,
        by_capability: tokens
            .iter()
            .map(|(role, token)| (role, token.clone()))
            .collect(),
        unseparated,
    };
    if unseparated {
        tracing::warn!(
            "pluton runs unseparated: any local process that reaches its socket may sign as the device"
        );
    } else if roles.by_uid.is_empty() && roles.by_capability.is_empty() {
        tracing::warn!(
            "pluton was given no roles (no launch tokens, no role uids): only the holder of the provisioning capability has rights"
        );
    }
    Ok(roles)
}
