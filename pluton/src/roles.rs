//! Who may ask pluton for what: roles, the one rights table, role tokens, budgets.
//!
//! The server learns a caller's role from the kernel (`SO_PEERCRED` uid, mapped by the
//! host's configuration) or from a role token the host handed the compartment at launch
//! and the compartment presents in [`crate::protocol::Request::Authenticate`]. The
//! provisioning capability presented the same way makes the caller [`Role::Boot`].
//! Everything a role may do is written in [`permitted_roles`] (operations),
//! [`NAMED_COUNTERS`] (counters) and [`connection_budget`] (connections), and nowhere
//! else; the README's "Rights per caller" section is the same tables in prose. A caller
//! without a role may only authenticate: deny by default.

use core::fmt;

use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::byte_array::ByteArray;

/// Who a caller is, as far as pluton's rights go. Wire encoding is by position: append,
/// never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Role {
    /// `warden boot`, the security monitor, and the provisioning station: whoever holds
    /// the provisioning capability. Measures the image into the boot registers, until
    /// the boot latch.
    Boot,
    /// The cloud link: the device's TLS identity and attestation quotes.
    Link,
    /// The protocol bridges: parse bytes from equipment; read the policy roots, own the
    /// policy bundle floor.
    Bridges,
    /// The operator's status page.
    StatusPage,
    /// An update agent running apart from the link (today the link is the update agent).
    Updates,
    /// A host that has not separated its compartments yet (transitional: every right a
    /// compartment role has, as before per-caller rights; never the boot registers).
    Unseparated,
}

/// Every role, in wire order.
pub const ROLES: [Role; 6] = [
    Role::Boot,
    Role::Link,
    Role::Bridges,
    Role::StatusPage,
    Role::Updates,
    Role::Unseparated,
];

impl Role {
    /// The role's position in [`ROLES`] (its wire discriminant).
    pub const fn index(self) -> usize {
        match self {
            Self::Boot => 0,
            Self::Link => 1,
            Self::Bridges => 2,
            Self::StatusPage => 3,
            Self::Updates => 4,
            Self::Unseparated => 5,
        }
    }

    /// The role's name in configuration (`boot`, `link`, `bridges`, `status-page`,
    /// `updates`, `unseparated`); the compartment names of `appliance/manifest.toml`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Link => "link",
            Self::Bridges => "bridges",
            Self::StatusPage => "status-page",
            Self::Updates => "updates",
            Self::Unseparated => "unseparated",
        }
    }

    /// The role named `name` in configuration.
    pub fn from_name(name: &str) -> Option<Self> {
        ROLES.into_iter().find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The operations the rights table names (one per request kind that needs a right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `Status`, `ExportIdentity`, `ReadRegisters`: public facts.
    ReadPublic,
    /// `CreateIdentity`, `InstallRootKey`, `LockManufacturing`, `AdvanceCounter`
    /// (these also need the provisioning capability itself).
    Provision,
    /// `ListRootKeys`: the vendor roots, read only.
    ReadRoots,
    /// `ExtendRegister` of registers 4 to 7 (every extension shows in the quote).
    ExtendRuntimeRegister,
    /// `ExtendRegister` of registers 0 to 3 ([`BOOT_REGISTERS`]), until the boot latch.
    ExtendBootRegister,
    /// `EndBoot`: latch the boot registers.
    EndBoot,
    /// `ReadCounters`: all counters at once (the quote shows them too).
    ReadAllCounters,
    /// `Quote`.
    Quote,
    /// `SignTls13ClientCertificateVerify`: the device's TLS identity.
    SignTls,
    /// `SignCertificateRequest`: a CSR for the device's own identity key (certificate
    /// renewal over the link).
    SignCertificateRequest,
    /// `Seal` and `Unseal`, in the caller's own namespace.
    Seal,
}

/// Registers `0..BOOT_REGISTERS` hold what the boot stage measured.
pub const BOOT_REGISTERS: u8 = 4;

use Role::{Boot, Bridges, Link, StatusPage, Unseparated, Updates};

/// THE rights table: the roles allowed to perform `operation`. Anything not listed is
/// refused with `NotPermitted`; a caller with no role may only authenticate.
pub const fn permitted_roles(operation: Operation) -> &'static [Role] {
    match operation {
        Operation::ReadPublic => &[Boot, Link, Bridges, StatusPage, Updates, Unseparated],
        Operation::Provision => &[Boot, Unseparated],
        Operation::ReadRoots => &[Boot, Link, Bridges, Updates, Unseparated],
        Operation::ExtendRuntimeRegister => {
            &[Boot, Link, Bridges, StatusPage, Updates, Unseparated]
        }
        Operation::ExtendBootRegister | Operation::EndBoot => &[Boot],
        Operation::ReadAllCounters => &[Boot, Link, Updates, Unseparated],
        Operation::Quote | Operation::SignTls | Operation::SignCertificateRequest => {
            &[Link, Unseparated]
        }
        Operation::Seal => &[Boot, Link, Bridges, StatusPage, Updates, Unseparated],
    }
}

/// Whether `role` may perform `operation` (no role: nothing).
pub fn permits(role: Option<Role>, operation: Operation) -> bool {
    role.is_some_and(|role| permitted_roles(operation).contains(&role))
}

/// A counter with a name, an owner who may advance it and the roles who may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CounterName {
    /// The firmware images' anti-rollback floor (counter 0; raised by the boot stage).
    ImageFloor,
    /// The policy bundles' anti-rollback floor (counter 1; raised when a bundle is
    /// applied, checked against `current.bundle` at start).
    PolicyBundleFloor,
    /// The held release-key revocation list's floor (counter 2; raised by the boot
    /// stage to the sequence of the held list once it verified): a list deleted or
    /// replaced by an older one on disk cannot un-revoke a key
    /// (`warden_os::revocations`).
    RevocationListFloor,
}

/// Who may do what with one named counter.
#[derive(Debug, Clone, Copy)]
pub struct CounterRights {
    /// The counter.
    pub name: CounterName,
    /// Its index among the monotonic counters (and in the quote).
    pub index: u8,
    /// Roles that may advance it (upward only).
    pub advance: &'static [Role],
    /// Roles that may read it.
    pub read: &'static [Role],
}

/// The named counters and their rights. Each role sees only the counters listed for it.
pub const NAMED_COUNTERS: [CounterRights; 3] = [
    CounterRights {
        name: CounterName::ImageFloor,
        index: 0,
        advance: &[Boot],
        read: &[Boot, Link, Updates, Unseparated],
    },
    CounterRights {
        name: CounterName::PolicyBundleFloor,
        index: 1,
        advance: &[Bridges, Unseparated],
        read: &[Bridges, Unseparated],
    },
    CounterRights {
        name: CounterName::RevocationListFloor,
        index: 2,
        // Raised only by the boot stage (and the single-process appliance) to the
        // sequence of a held list that verified: a compartment that could raise it to
        // u64::MAX would make every future image refused for good.
        advance: &[Boot, Unseparated],
        read: &[Boot, Link, Updates, Unseparated],
    },
];

impl CounterName {
    /// The counter's rights row.
    pub fn rights(self) -> &'static CounterRights {
        match self {
            Self::ImageFloor => &NAMED_COUNTERS[0],
            Self::PolicyBundleFloor => &NAMED_COUNTERS[1],
            Self::RevocationListFloor => &NAMED_COUNTERS[2],
        }
    }
}

/// How many connections a role may hold at once and how long one may sit idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Connections the role may hold at once; these are reserved for it (other roles'
    /// connections never take them), so the link's attestation path is never `Busy`
    /// because another role holds slots.
    pub slots: usize,
    /// Milliseconds a connection may wait for its next request.
    pub idle_timeout_ms: u64,
}

/// The connection budget of `role`; `None` is a caller that has not authenticated yet
/// (it has one second to do so, and those connections share their own pool).
pub const fn connection_budget(role: Option<Role>) -> ConnectionBudget {
    let (slots, idle_timeout_ms) = match role {
        None => (128, 1_000),
        Some(Role::Boot) => (4, 60_000),
        // The TLS signer keeps one connection open for the session's lifetime.
        Some(Role::Link) => (8, 300_000),
        Some(Role::Bridges | Role::StatusPage | Role::Updates) => (4, 10_000),
        // The single pool every caller shared before per-caller rights.
        Some(Role::Unseparated) => (32, 300_000),
    };
    ConnectionBudget {
        slots,
        idle_timeout_ms,
    }
}

/// Length of a role token.
pub const ROLE_TOKEN_LEN: usize = 32;

/// A secret a host hands a compartment at launch, where uids cannot tell roles apart.
/// Zeroized on drop; `Debug` never shows it; compared in constant time.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct RoleToken(ByteArray<ROLE_TOKEN_LEN>);

impl RoleToken {
    /// A token from its bytes.
    pub fn from_bytes(token: [u8; ROLE_TOKEN_LEN]) -> Self {
        Self(ByteArray(token))
    }

    /// The token bytes (to hand to the compartment).
    pub fn as_bytes(&self) -> &[u8; ROLE_TOKEN_LEN] {
        &self.0.0
    }

    /// A fresh token from the OS random source.
    #[cfg(feature = "std")]
    pub fn generate() -> Result<Self, crate::PlutonError> {
        let mut bytes = [0u8; ROLE_TOKEN_LEN];
        getrandom::fill(&mut bytes).map_err(|_| crate::PlutonError::RandomFailed)?;
        let token = Self::from_bytes(bytes);
        bytes.zeroize();
        Ok(token)
    }
}

impl ConstantTimeEq for RoleToken {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.0.ct_eq(&other.0.0)
    }
}

impl fmt::Debug for RoleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoleToken(<redacted>)")
    }
}

/// Maps a presented token to the role it was issued for.
pub trait RoleTokens {
    /// The role `token` was issued for, if any. Implementations compare with every
    /// issued token in constant time, without stopping at a match.
    fn role_of(&self, token: &RoleToken) -> Option<Role>;
}

/// No role tokens issued (uids alone decide, or a test without a host).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRoleTokens;

impl RoleTokens for NoRoleTokens {
    fn role_of(&self, _: &RoleToken) -> Option<Role> {
        None
    }
}

impl RoleTokens for [(Role, RoleToken)] {
    fn role_of(&self, token: &RoleToken) -> Option<Role> {
        let mut found = None;
        for (role, issued) in self {
            if bool::from(issued.ct_eq(token)) {
                found = Some(*role);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_without_a_role_has_any_right() {
        for operation in [
            Operation::ReadPublic,
            Operation::Provision,
            Operation::ReadRoots,
            Operation::ExtendRuntimeRegister,
            Operation::ExtendBootRegister,
            Operation::EndBoot,
            Operation::ReadAllCounters,
            Operation::Quote,
            Operation::SignTls,
            Operation::SignCertificateRequest,
            Operation::Seal,
        ] {
            assert!(!permits(None, operation), "{operation:?}");
        }
    }

    #[test]
    fn only_the_link_signs_and_quotes_and_only_boot_measures_boot() {
        for role in ROLES {
            let link_like = matches!(role, Role::Link | Role::Unseparated);
            assert_eq!(permits(Some(role), Operation::SignTls), link_like);
            assert_eq!(
                permits(Some(role), Operation::SignCertificateRequest),
                link_like
            );
            assert_eq!(permits(Some(role), Operation::Quote), link_like);
            assert_eq!(
                permits(Some(role), Operation::ExtendBootRegister),
                role == Role::Boot
            );
        }
    }

    #[test]
    fn names_round_trip_and_indexes_are_wire_order() {
        for (index, role) in ROLES.into_iter().enumerate() {
            assert_eq!(Role::from_name(role.name()), Some(role));
            assert_eq!(role.index(), index);
        }
        for (index, row) in NAMED_COUNTERS.iter().enumerate() {
            assert_eq!(row.name.rights().index, row.index);
            assert_eq!(usize::from(row.index), index);
        }
    }

    #[test]
    fn tokens_map_to_their_role_only() {
        let issued = [
            (Role::Link, RoleToken::from_bytes([1; 32])),
            (Role::Bridges, RoleToken::from_bytes([2; 32])),
        ];
        assert_eq!(
            issued.role_of(&RoleToken::from_bytes([2; 32])),
            Some(Role::Bridges)
        );
        assert_eq!(issued.role_of(&RoleToken::from_bytes([3; 32])), None);
        assert_eq!(format!("{:?}", issued[0].1), "RoleToken(<redacted>)");
    }
}
