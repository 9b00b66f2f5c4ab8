//! API authorisation: bearer tokens with roles, deny by default, failures slowed.
//!
//! The config holds only SHA-256 hashes of tokens; a presented token is hashed and
//! compared with every configured hash in constant time. Each request needs one
//! [`Permission`], derived from its method and path in one place ([`required`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything (devices, telemetry, reports, deployments).
    Viewer,
    /// Reads, and changes the fleet: commands, twins, groups, revocation, images,
    /// deployments, attestation.
    Operator,
    /// The factory station: reads, creates products and registers devices.
    Provisioner,
    /// Everything.
    Admin,
}

/// One kind of access a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anything that only reads.
    Read,
    /// Changes to devices and rollouts.
    Operate,
    /// Creating products and registering devices.
    Register,
    /// Reading the audit log (who did what): admins only, not viewers.
    Audit,
}

impl Role {
    /// Every role, by its name in the config.
    pub const ALL: [(Self, &'static str); 4] = [
        (Self::Viewer, "viewer"),
        (Self::Operator, "operator"),
        (Self::Provisioner, "provisioner"),
        (Self::Admin, "admin"),
    ];

    /// The role's name in the config (`provisioner`, …).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(role, _)| *role == self)
            .map_or("viewer", |(_, name)| name)
    }

    /// The role named `name` in the config.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, known)| *known == name)
            .map(|(role, _)| *role)
    }

    /// Whether this role grants `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Self::Admin, _)
                | (_, Permission::Read)
                | (Self::Operator, Permission::Operate)
                | (Self::Provisioner, Permission::Register)
        )
    }
}

/// One configured token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (written to the audit log; never the token itself).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token, lowercase hex ([`hash_token`]).
    pub sha256: String,
}

/// The `[api]` section of the fleet config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Tokens that may call the API. None configured: every API call is refused.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Role of requests without a token. Absent (the default): they are refused.
    /// Only for a loopback demo (the dashboard without a login).
    #[serde(default)]
    pub anonymous_role: Option<Role>,
}

/// SHA-256 of a token, lowercase hex: what the config stores.
pub fn hash_token(token: &str) -> String {
    warden_wire::topics::to_hex(&Sha256::digest(token.as_bytes()))
}

/// A fresh random token (32 bytes, hex).
pub fn generate_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TokenError)?;
    Ok(warden_wire::topics::to_hex(&bytes))
}

/// No random source was available for a token.
#[derive(Debug, thiserror::Error)]
#[error("no random source for an api token")]
pub struct TokenError;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `anonymous`.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why a request was not authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that matches nothing (401).
    Unauthenticated,
    /// A valid token whose role lacks the permission (403).
    Forbidden(Role, Permission),
    /// Too many failed attempts from this address (429 after `backoff`; only failed
    /// attempts are refused so: a valid token is always let through).
    RateLimited {
        /// How long the answer is held back (grows with the failures).
        backoff: Duration,
    },
}

/// Failed attempts allowed per address and window before further failures from it are
/// answered 429 after a backoff.
pub const MAX_FAILURES: u32 = 10;
/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The longest a failed attempt's answer is held back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Addresses (IPv4) and IPv6 /64 networks whose failures are counted one by one; past
/// it (after expired ones are forgotten), further ones share one count, so the map
/// stays bounded whatever the number of addresses an attacker uses.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// A configured token whose `sha256` is not a SHA-256 in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("api.tokens[{index}] ({name}): sha256 is not 64 hex digits")]
pub struct TokenHashError {
    /// Its position in `api.tokens`, from 0.
    pub index: usize,
    /// Its name.
    pub name: String,
}

impl TokenHashError {
    /// The config key at fault, as a TOML path.
    pub fn field(&self) -> String {
        format!("api.tokens[{}].sha256", self.index)
    }
}

/// Verifies tokens against the configured hashes.
#[derive(Debug, Clone)]
pub struct Authorizer {
    tokens: Arc<Vec<(String, Role, [u8; 32])>>,
    anonymous: Option<Role>,
    failures: Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>>,
}

impl Authorizer {
    /// From the config; a hash that is not 64 hex digits is an error naming the token.
    pub fn new(config: &ApiConfig) -> Result<Self, TokenHashError> {
        let mut tokens = Vec::with_capacity(config.tokens.len());
        for (index, token) in config.tokens.iter().enumerate() {
            let hash = warden_wire::topics::from_hex(&token.sha256)
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| TokenHashError {
                    index,
                    name: token.name.clone(),
                })?;
            tokens.push((token.name.clone(), token.role, hash));
        }
        Ok(Self {
            tokens: Arc::new(tokens),
            anonymous: config.anonymous_role,
            failures: Arc::default(),
        })
    }

    /// Who presents `bearer` (the `Authorization` header's token, if any) from `peer`,
    /// and whether they may do `permission`. A valid token is never refused for the
    /// failures of its address; a failure from an address past [`MAX_FAILURES`] is
    /// [`Denied::RateLimited`] with a backoff that slows that address only.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<Caller, Denied> {
        let caller = match bearer {
            Some(token) => self.lookup(token),
            None => self.anonymous.map(|role| Caller {
                name: "anonymous".to_owned(),
                role,
            }),
        };
        let Some(caller) = caller else {
            return Err(match peer.map(|peer| self.record_failure(peer)) {
                Some(failures) if failures > MAX_FAILURES => Denied::RateLimited {
                    backoff: backoff_after(failures),
                },
                _ => Denied::Unauthenticated,
            });
        };
        if caller.role.grants(permission) {
            Ok(caller)
        } else {
            Err(Denied::Forbidden(caller.role, permission))
        }
    }

    fn lookup(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured hash is compared, matched or not: the time taken does not
        // depend on which token (if any) matched.
        let mut found = None;
        for (name, role, hash) in self.tokens.iter() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    /// Counts a failure from `peer`; its failures in the current window.
    fn record_failure(&self, peer: IpAddr) -> u32 {
        let mut key = failure_key(peer);
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if !failures.contains_key(&key) && failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                key = OVERFLOW_KEY;
            }
        }
        let entry = failures.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
        entry.0
    }
}

/// The count addresses share once [`MAX_TRACKED_ADDRESSES`] are tracked (`::`, never a
/// peer's address: nothing connects from it).
const OVERFLOW_KEY: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// Whose failures `peer`'s count with: an IPv4 address alone (IPv4-mapped IPv6 too), an
/// IPv6 address with its /64, since one host usually holds a whole /64 and could
/// otherwise start a fresh count from each of its addresses.
fn failure_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// The backoff of the `failures`-th failure in a window (past [`MAX_FAILURES`]): 100 ms,
/// doubling, at most [`MAX_BACKOFF`].
fn backoff_after(failures: u32) -> Duration {
    let beyond = failures.saturating_sub(MAX_FAILURES + 1).min(16);
    (Duration::from_millis(100) * 2u32.pow(beyond)).min(MAX_BACKOFF)
}

/// The permission a request needs: reads need [`Permission::Read`] (the audit log
/// [`Permission::Audit`]); creating products
/// and registering devices [`Permission::Register`]; every other write
/// [`Permission::Operate`].
pub fn required(method: &axum::http::Method, path: &str) -> Permission {
    use axum::http::Method;
    let path = path.trim_end_matches('/');
    if matches!(*method, Method::GET | Method::HEAD) {
        return if path == "/api/v1/audit" {
            Permission::Audit
        } else {
            Permission::Read
        };
    }
    if *method == Method::POST && (path == "/api/v1/products" || path == "/api/v1/devices") {
        Permission::Register
    } else {
        Permission::Operate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(anonymous: Option<Role>) -> Authorizer {
        Authorizer::new(&ApiConfig {
            tokens: vec![
                TokenConfig {
                    name: "ops".into(),
                    role: Role::Operator,
                    sha256: hash_token("ops-secret"),
                },
                TokenConfig {
                    name: "station".into(),
                    role: Role::Provisioner,
                    sha256: hash_token("station-secret"),
                },
            ],
            anonymous_role: anonymous,
        })
        .expect("valid config")
    }

    #[test]
    fn tokens_grant_their_role_only() {
        let auth = authorizer(None);
        let ops = auth
            .authorize(Some("ops-secret"), None, Permission::Operate)
            .expect("operator operates");
        assert_eq!(ops.name, "ops");
        assert_eq!(
            auth.authorize(Some("ops-secret"), None, Permission::Register),
            Err(Denied::Forbidden(Role::Operator, Permission::Register))
        );
        assert!(
            auth.authorize(Some("station-secret"), None, Permission::Register)
                .is_ok()
        );
        assert_eq!(
            auth.authorize(Some("station-secret"), None, Permission::Operate),
            Err(Denied::Forbidden(Role::Provisioner, Permission::Operate))
        );
        assert_eq!(
            auth.authorize(Some("ops-secret "), None, Permission::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            auth.authorize(None, None, Permission::Read),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn anonymous_access_only_when_configured() {
        let auth = authorizer(Some(Role::Viewer));
        assert!(auth.authorize(None, None, Permission::Read).is_ok());
        assert_eq!(
            auth.authorize(None, None, Permission::Operate),
            Err(Denied::Forbidden(Role::Viewer, Permission::Operate))
        );
    }

    #[test]
    fn repeated_failures_slow_their_address_but_never_refuse_a_valid_token() {
        let auth = authorizer(None);
        let peer: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                auth.authorize(Some("guess"), Some(peer), Permission::Read),
                Err(Denied::Unauthenticated)
            );
        }
        let backoffs: Vec<Duration> = (0..8)
            .map(
                |_| match auth.authorize(Some("guess"), Some(peer), Permission::Read) {
                    Err(Denied::RateLimited { backoff }) => backoff,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(backoffs[0], Duration::from_millis(100));
        assert!(backoffs.windows(2).all(|w| w[1] >= w[0]), "{backoffs:?}");
        assert_eq!(backoffs[7], MAX_BACKOFF);
        // The right token from the same address, in the middle of the flood.
        assert!(
            auth.authorize(Some("ops-secret"), Some(peer), Permission::Read)
                .is_ok(),
            "a valid token is never refused"
        );
        // No token at all counts as a failure too, and is slowed likewise.
        assert!(matches!(
            auth.authorize(None, Some(peer), Permission::Read),
            Err(Denied::RateLimited { .. })
        ));
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(
            auth.authorize(Some("ops-secret"), Some(other), Permission::Read)
                .is_ok()
        );
    }

    #[test]
    fn ipv6_failures_count_per_64_and_the_map_stays_bounded() {
        let auth = authorizer(None);
        let v6 = |low: u64| -> IpAddr {
            std::net::Ipv6Addr::from((0x2001_0db8_0000_0001_u128 << 64) | u128::from(low)).into()
        };
        // Each failure from another address of one /64 adds to the same count.
        for low in 0..u64::from(MAX_FAILURES) {
            assert_eq!(
                auth.authorize(Some("guess"), Some(v6(low)), Permission::Read),
                Err(Denied::Unauthenticated)
            );
        }
        assert!(matches!(
            auth.authorize(Some("guess"), Some(v6(999)), Permission::Read),
            Err(Denied::RateLimited { .. })
        ));
        assert!(
            auth.authorize(Some("ops-secret"), Some(v6(1000)), Permission::Read)
                .is_ok(),
            "a valid token is never refused"
        );
        // Another /64 has its own count.
        let neighbour: IpAddr = std::net::Ipv6Addr::from(0x2001_0db8_0000_0002_u128 << 64).into();
        assert_eq!(
            auth.authorize(Some("guess"), Some(neighbour), Permission::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            failure_key([10, 0, 0, 1].into()),
            IpAddr::from([10, 0, 0, 1])
        );
        // Failures from more addresses than tracked: the map stays bounded.
        let many = MAX_TRACKED_ADDRESSES + 1_000;
        for n in 0..many {
            let address =
                std::net::Ipv4Addr::from(0x0a00_0000_u32 + u32::try_from(n).expect("small"));
            let _ = auth.authorize(Some("guess"), Some(address.into()), Permission::Read);
        }
        let tracked = auth
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(tracked <= MAX_TRACKED_ADDRESSES + 1, "{tracked} tracked");
    }

    #[test]
    fn a_malformed_hash_is_refused_with_the_token_named() {
        let error = Authorizer::new(&ApiConfig {
            tokens: vec![TokenConfig {
                name: "bad".into(),
                role: Role::Viewer,
                sha256: "abc".into(),
            }],
            anonymous_role: None,
        })
        .expect_err("refused");
        assert!(error.to_string().contains("api.tokens[0] (bad)"), "{error}");
        assert_eq!(error.field(), "api.tokens[0].sha256");
    }

    #[test]
    fn permissions_follow_method_and_path() {
        use axum::http::Method;
        assert_eq!(required(&Method::GET, "/api/v1/devices"), Permission::Read);
        assert_eq!(
            required(&Method::POST, "/api/v1/devices"),
            Permission::Register
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/products"),
            Permission::Register
        );
        assert_eq!(required(&Method::GET, "/api/v1/audit"), Permission::Audit);
        assert_eq!(required(&Method::GET, "/api/v1/audit/"), Permission::Audit);
        assert!(!Role::Viewer.grants(Permission::Audit));
        assert!(!Role::Operator.grants(Permission::Audit));
        assert!(Role::Admin.grants(Permission::Audit));
        assert_eq!(
            required(&Method::POST, "/api/v1/devices/x/revoke"),
            Permission::Operate
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/products/p/groups"),
            Permission::Operate
        );
    }
}
