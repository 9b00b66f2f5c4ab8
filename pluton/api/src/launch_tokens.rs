//! Role tokens handed to a process at launch, and connecting to pluton with them.
//!
//! Where uids cannot tell pluton's callers apart (the single-process `warden run
//! --config`, the demo, a monitor not running as root), the host that starts pluton
//! mints one [`RoleToken`] per role and hands it over at launch, in the environment:
//! `WARDEN_PLUTON_TOKEN_<ROLE>` (`LINK`, `BRIDGES`, `STATUS_PAGE`, `UPDATES`), 64 hex
//! digits. Pluton gets every role's variable and accepts those tokens in `Authenticate`;
//! each compartment gets only its own role's variable (the security monitor removes the
//! others), and the single-process appliance, which is every role at once, gets them
//! all. A process holds the tokens it was launched with; [`install`] lets an in-process
//! host (the demo) give them without an environment.
//!
//! Where uids do separate the roles (the monitor as root), no token is needed: pluton
//! maps each compartment's uid to its role, and [`connect_for`] connects without
//! authenticating when the process holds no token for the role.
//!
//! The environment is the channel because it is what a process is started with and
//! nothing else can read it: `/proc/PID/environ` is readable only by the same uid with
//! ptrace rights, and compartments have neither `/proc` in their landlock grants nor
//! ptrace in their seccomp list. Tokens never appear on a command line (world-readable
//! in `/proc/PID/cmdline`) nor in a log (`RoleToken`'s `Debug` is redacted).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::blocking::PlutonClient;
use crate::error::{ClientError, LaunchTokenError};
use warden_pluton::roles::ROLES;
use warden_pluton::{Role, RoleToken};

/// Prefix of the environment variables that carry role tokens.
pub const TOKEN_ENV_PREFIX: &str = "WARDEN_PLUTON_TOKEN_";

/// The roles a host hands tokens out for: every role a compartment can have. `Boot` is
/// the provisioning capability's (never a launch token), `Unseparated` no one's.
pub const COMPARTMENT_ROLES: [Role; 4] =
    [Role::Link, Role::Bridges, Role::StatusPage, Role::Updates];

/// The environment variable that carries `role`'s token.
pub fn env_name(role: Role) -> String {
    format!(
        "{TOKEN_ENV_PREFIX}{}",
        role.name().to_ascii_uppercase().replace('-', "_")
    )
}

/// The role tokens a process holds.
#[derive(Debug, Clone, Default)]
pub struct LaunchTokens {
    tokens: BTreeMap<Role, RoleToken>,
}

impl LaunchTokens {
    /// A fresh token for every compartment role (what a host mints before starting
    /// pluton and the roles).
    pub fn mint() -> Result<Self, LaunchTokenError> {
        let mut tokens = BTreeMap::new();
        for role in COMPARTMENT_ROLES {
            tokens.insert(role, RoleToken::generate().map_err(LaunchTokenError::Mint)?);
        }
        Ok(Self { tokens })
    }

    /// The tokens this process was launched with (`WARDEN_PLUTON_TOKEN_*`); none is fine.
    pub fn from_env() -> Result<Self, LaunchTokenError> {
        Self::from_vars(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    /// The tokens among `vars` (name, value pairs; other names are ignored).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, LaunchTokenError> {
        let mut tokens = BTreeMap::new();
        for (variable, value) in vars {
            if !variable.starts_with(TOKEN_ENV_PREFIX) {
                continue;
            }
            let value = Zeroizing::new(value);
            let Some(role) = COMPARTMENT_ROLES
                .into_iter()
                .find(|role| env_name(*role) == variable)
            else {
                return Err(LaunchTokenError::UnknownRole { variable });
            };
            let token = parse_token(&value).ok_or(LaunchTokenError::Malformed { variable })?;
            tokens.insert(role, token);
        }
        Ok(Self { tokens })
    }

    /// The token for `role`, if this process holds one.
    pub fn token(&self, role: Role) -> Option<&RoleToken> {
        self.tokens.get(&role)
    }

    /// Every (role, token) held, for pluton's side.
    pub fn iter(&self) -> impl Iterator<Item = (Role, &RoleToken)> {
        self.tokens.iter().map(|(role, token)| (*role, token))
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Only `role`'s token (what a compartment of that role is handed).
    pub fn only(&self, role: Role) -> Self {
        let tokens = self
            .tokens
            .get(&role)
            .map(|token| BTreeMap::from([(role, token.clone())]))
            .unwrap_or_default();
        Self { tokens }
    }

    /// Hand these tokens (and no other) to `command`'s process: every
    /// `WARDEN_PLUTON_TOKEN_*` of this process is removed from its environment first.
    pub fn hand_to(&self, command: &mut Command) {
        for role in ROLES {
            command.env_remove(env_name(role));
        }
        for (role, token) in &self.tokens {
            command.env(env_name(*role), Zeroizing::new(to_hex(token)).as_str());
        }
    }
}

fn to_hex(token: &RoleToken) -> String {
    hex::encode(token.as_bytes())
}

fn parse_token(text: &str) -> Option<RoleToken> {
    let mut bytes = Zeroizing::new([0u8; warden_pluton::roles::ROLE_TOKEN_LEN]);
    hex::decode_to_slice(text.trim(), bytes.as_mut_slice()).ok()?;
    Some(RoleToken::from_bytes(*bytes))
}

/// The environment variable with which a security monitor running as root tells pluton
/// each compartment role's uid (`link=61003,bridges=61002`): pluton then knows those
/// callers from `SO_PEERCRED`, which no compartment can forge.
pub const ROLE_UIDS_ENV: &str = "WARDEN_PLUTON_ROLE_UIDS";

/// The [`ROLE_UIDS_ENV`] text for `pairs`.
pub fn format_role_uids(pairs: impl IntoIterator<Item = (Role, u32)>) -> String {
    pairs
        .into_iter()
        .map(|(role, uid)| format!("{}={uid}", role.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Roles by uid from a [`ROLE_UIDS_ENV`] text; only compartment roles, uid 0 never.
pub fn parse_role_uids(text: &str) -> Result<BTreeMap<u32, Role>, LaunchTokenError> {
    let mut uids = BTreeMap::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let bad = || LaunchTokenError::RoleUid {
            entry: entry.to_owned(),
        };
        let (name, uid) = entry.split_once('=').ok_or_else(bad)?;
        let role = Role::from_name(name.trim())
            .filter(|role| COMPARTMENT_ROLES.contains(role))
            .ok_or_else(bad)?;
        let uid: u32 = uid.trim().parse().map_err(|_| bad())?;
        if uid == 0 || uids.insert(uid, role).is_some_and(|other| other != role) {
            return Err(bad());
        }
    }
    Ok(uids)
}

static HELD: OnceLock<LaunchTokens> = OnceLock::new();

/// Give this process its tokens without an environment (an in-process host such as the
/// demo, which minted them itself). Only the first call counts; `false` if the tokens
/// were already set (by an earlier call or by a [`held`] that read the environment).
pub fn install(tokens: LaunchTokens) -> bool {
    HELD.set(tokens).is_ok()
}

/// The tokens this process holds: those [`install`]ed, else the environment's (read
/// once). A malformed variable is an error every time it is asked, never "no token".
pub fn held() -> Result<&'static LaunchTokens, LaunchTokenError> {
    if let Some(tokens) = HELD.get() {
        return Ok(tokens);
    }
    let tokens = LaunchTokens::from_env()?;
    Ok(HELD.get_or_init(|| tokens))
}

/// Connect to pluton as `role`: present the role's launch token when this process holds
/// one; otherwise connect as is (pluton then knows the caller by its uid, or gives it no
/// rights).
pub fn connect_for(socket: impl AsRef<Path>, role: Role) -> Result<PlutonClient, ClientError> {
    let tokens = held()?;
    match tokens.token(role) {
        Some(token) => PlutonClient::connect_as(socket, token),
        None => PlutonClient::connect(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte equality for tests (tokens have no `PartialEq` on purpose).
    fn same(a: &RoleToken, b: &RoleToken) -> bool {
        a.as_bytes() == b.as_bytes()
    }

    #[test]
    fn role_uids_round_trip_and_refuse_root_unknown_roles_and_clashes() {
        let text = format_role_uids([(Role::Link, 61003), (Role::Bridges, 61002)]);
        assert_eq!(text, "link=61003,bridges=61002");
        let uids = parse_role_uids(&text).expect("well-formed");
        assert_eq!(uids.get(&61003), Some(&Role::Link));
        assert_eq!(uids.get(&61002), Some(&Role::Bridges));
        assert!(parse_role_uids("").expect("empty").is_empty());
        for bad in ["link=0", "boot=61001", "link=x", "link", "link=5,bridges=5"] {
            let error = parse_role_uids(bad).expect_err(bad);
            assert!(error.to_string().contains(ROLE_UIDS_ENV), "{error}");
        }
    }

    #[test]
    fn env_names_follow_the_role_names() {
        assert_eq!(env_name(Role::Link), "WARDEN_PLUTON_TOKEN_LINK");
        assert_eq!(
            env_name(Role::StatusPage),
            "WARDEN_PLUTON_TOKEN_STATUS_PAGE"
        );
    }

    #[test]
    fn minted_tokens_round_trip_through_the_environment_text() {
        let minted = LaunchTokens::mint().expect("randomness");
        let vars = minted
            .iter()
            .map(|(role, token)| (env_name(role), to_hex(token)))
            .chain([("PATH".to_owned(), "/usr/bin".to_owned())]);
        let read = LaunchTokens::from_vars(vars).expect("well-formed");
        for role in COMPARTMENT_ROLES {
            assert!(same(
                read.token(role).expect("present"),
                minted.token(role).expect("minted")
            ));
        }
        let link = minted.token(Role::Link).expect("minted");
        let bridges = minted.token(Role::Bridges).expect("minted");
        assert!(!same(link, bridges), "each role gets its own token");
    }

    #[test]
    fn a_compartment_is_handed_only_its_own_token() {
        let minted = LaunchTokens::mint().expect("randomness");
        let bridges = minted.only(Role::Bridges);
        assert!(bridges.token(Role::Bridges).is_some());
        assert!(bridges.token(Role::Link).is_none());
        let mut command = Command::new("true");
        bridges.hand_to(&mut command);
        let envs: Vec<_> = command
            .get_envs()
            .filter_map(|(name, value)| Some((name.to_str()?.to_owned(), value.is_some())))
            .collect();
        assert!(envs.contains(&("WARDEN_PLUTON_TOKEN_BRIDGES".to_owned(), true)));
        assert!(
            envs.contains(&("WARDEN_PLUTON_TOKEN_LINK".to_owned(), false)),
            "removed, not inherited: {envs:?}"
        );
    }

    #[test]
    fn malformed_or_unknown_variables_are_errors_naming_the_variable() {
        let short = LaunchTokens::from_vars([("WARDEN_PLUTON_TOKEN_LINK".into(), "abcd".into())])
            .expect_err("too short");
        assert!(
            short.to_string().contains("WARDEN_PLUTON_TOKEN_LINK"),
            "{short}"
        );
        let not_hex =
            LaunchTokens::from_vars([("WARDEN_PLUTON_TOKEN_LINK".into(), "zz".repeat(32))])
                .expect_err("not hex");
        assert!(matches!(not_hex, LaunchTokenError::Malformed { .. }));
        let boot = LaunchTokens::from_vars([("WARDEN_PLUTON_TOKEN_BOOT".into(), "00".repeat(32))])
            .expect_err("boot is the capability's, never a launch token");
        assert!(
            matches!(boot, LaunchTokenError::UnknownRole { .. }),
            "{boot}"
        );
    }
}
