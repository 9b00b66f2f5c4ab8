//! Kernel sandboxing a compartment applies to itself, first thing in its role's main.
//!
//! Order: rlimits; the landlock ruleset is built (granted paths opened while still
//! privileged); a private network namespace when nothing network is granted; the
//! dedicated uid/gid when started as root; `no_new_privs`; landlock applied (files,
//! TCP ports, signal and abstract-socket scope); the seccomp allowlist last. Everything here uses safe APIs (nix, landlock,
//! seccompiler); no `unsafe`.

pub mod seccomp;

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;

use crate::monitor::manifest::Grants;

/// The landlock ABI the sandbox asks for (V6: files, TCP ports, signal scope).
const WANTED_ABI: ABI = ABI::V6;

/// Whether a missing kernel feature stops the compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Production: every layer must be fully enforced.
    Enforce,
    /// `--insecure-dev`: a missing layer is logged loudly and skipped.
    InsecureDev,
}

/// What the kernel offers, probed by the monitor before it starts anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// Landlock file-system rules.
    pub landlock_fs: bool,
    /// Landlock TCP bind/connect rules (ABI 4).
    pub landlock_net: bool,
    /// Landlock signal scoping (ABI 6).
    pub landlock_scope: bool,
    /// seccomp filters.
    pub seccomp_filter: bool,
    /// Network namespaces.
    pub network_namespace: bool,
}

impl KernelSupport {
    /// Probes the running kernel without restricting this process.
    pub fn probe() -> Self {
        let landlock_with = |abi: ABI, net: bool| {
            let ruleset = Ruleset::default().set_compatibility(CompatLevel::HardRequirement);
            let ruleset = if net {
                ruleset.handle_access(AccessNet::from_all(abi))
            } else {
                ruleset.handle_access(AccessFs::from_all(abi))
            };
            ruleset.and_then(|ruleset| ruleset.create()).is_ok()
        };
        let landlock_scope = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .scope(Scope::from_all(ABI::V6))
            .and_then(|ruleset| ruleset.create())
            .is_ok();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            landlock_fs: landlock_with(ABI::V1, false),
            landlock_net: landlock_with(ABI::V4, true),
            landlock_scope,
            seccomp_filter: status
                .lines()
                .any(|line| line.starts_with("Seccomp_filters:")),
            network_namespace: Path::new("/proc/self/ns/net").exists(),
        }
    }

    /// The features that are missing, by name; empty when everything is there.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.landlock_fs, "landlock file-system rules"),
            (self.landlock_net, "landlock TCP port rules (ABI 4)"),
            (self.landlock_scope, "landlock signal scoping (ABI 6)"),
            (self.seccomp_filter, "seccomp filters"),
            (self.network_namespace, "network namespaces"),
        ]
        .into_iter()
        .filter(|(present, _)| !present)
        .map(|(_, name)| name)
        .collect()
    }
}

/// What [`enter`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// Landlock's verdict (`FullyEnforced` in production).
    pub landlock: String,
    /// A private, empty network namespace was entered.
    pub network_isolated: bool,
    /// The uid it switched to (only when started as root).
    pub dropped_to_uid: Option<u32>,
    /// The seccomp allowlist is installed.
    pub seccomp: bool,
    /// Layers that were skipped (only with [`SandboxMode::InsecureDev`]).
    pub skipped: Vec<String>,
}

/// A sandbox layer that could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A resource limit could not be set.
    #[error("cannot set {resource} to {value}: {errno}")]
    Rlimit {
        /// The limit.
        resource: &'static str,
        /// The value asked for.
        value: u64,
        /// The kernel's answer.
        errno: nix::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed.
    #[error("cannot enter a private network namespace: {0}")]
    NetworkNamespace(nix::Error),
    /// Switching to the dedicated uid/gid failed.
    #[error("cannot switch to uid/gid {uid}: {errno}")]
    DropUid {
        /// The manifest's uid.
        uid: u32,
        /// The kernel's answer.
        errno: nix::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    /// A granted path cannot be opened to build its landlock rule.
    #[error("granted path {path} cannot be opened: {reason}")]
    GrantedPath {
        /// The path from the manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Building or applying the landlock ruleset failed.
    #[error("landlock: {0}")]
    Landlock(String),
    /// Landlock is not fully enforced and the mode is [`SandboxMode::Enforce`].
    #[error("landlock is only {0} on this kernel; refusing to run without --insecure-dev")]
    LandlockIncomplete(String),
    /// The manifest's grants do not parse.
    #[error("grants: {0}")]
    Grants(String),
    /// Building or installing the seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// Applies every sandbox layer for `grants` to this process (and its threads).
///
/// Call it before starting threads or opening anything not granted: after it returns,
/// the compartment can reach only what the manifest grants.
pub fn enter(grants: &Grants, mode: SandboxMode) -> Result<SandboxReport, SandboxError> {
    let mut skipped = Vec::new();
    set_limits(grants)?;
    let ruleset = landlock_ruleset(grants)?;
    let mut network_isolated = false;
    // Unix sockets are file-system objects: reaching pluton's needs no TCP/IP, so a
    // compartment with only Unix-socket grants still gets the empty namespace.
    if !grants.has_network() {
        match nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => network_isolated = true,
            Err(nix::errno::Errno::EPERM) => {
                // Not root: an unprivileged user namespace gives the right to it.
                match nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET) {
                    Ok(()) => network_isolated = true,
                    Err(error) if mode == SandboxMode::InsecureDev => {
                        skipped.push(format!("network namespace: {error}"));
                    }
                    Err(error) => return Err(SandboxError::NetworkNamespace(error)),
                }
            }
            Err(error) if mode == SandboxMode::InsecureDev => {
                skipped.push(format!("network namespace: {error}"));
            }
            Err(error) => return Err(SandboxError::NetworkNamespace(error)),
        }
    }
    let dropped_to_uid = drop_to_dedicated_uid(grants.uid, &grants.groups)?;
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let landlock = ruleset
        .restrict_self()
        .map_err(|error| SandboxError::Landlock(error.to_string()))?
        .ruleset;
    if landlock != RulesetStatus::FullyEnforced {
        let status = format!("{landlock:?}");
        if mode == SandboxMode::Enforce {
            return Err(SandboxError::LandlockIncomplete(status));
        }
        skipped.push(format!("landlock: {status}"));
    }
    let program = seccomp::allowlist_program(&seccomp::Profile::for_grants(grants))
        .map_err(|error| SandboxError::Seccomp(error.to_string()))?;
    let clone3 =
        seccomp::clone3_program().map_err(|error| SandboxError::Seccomp(error.to_string()))?;
    // `clone3`'s filter first: once the allowlist is in, installing another filter
    // (the `seccomp` call) is not allowed.
    let seccomp = match seccompiler::apply_filter_all_threads(&clone3)
        .and_then(|()| seccompiler::apply_filter_all_threads(&program))
    {
        Ok(()) => true,
        Err(error) if mode == SandboxMode::InsecureDev => {
            skipped.push(format!("seccomp: {error}"));
            false
        }
        Err(error) => return Err(SandboxError::Seccomp(error.to_string())),
    };
    Ok(SandboxReport {
        landlock: format!("{landlock:?}"),
        network_isolated,
        dropped_to_uid,
        seccomp,
        skipped,
    })
}

fn set_limits(grants: &Grants) -> Result<(), SandboxError> {
    let memory = grants.memory_mib.saturating_mul(1024 * 1024);
    // RLIMIT_DATA counts what a compartment actually maps writable (heap, anonymous
    // mmap); RLIMIT_AS would also count reserved-but-unused thread stacks and arenas.
    for (resource, name, value) in [
        (Resource::RLIMIT_DATA, "RLIMIT_DATA", memory),
        (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", grants.open_files),
        (Resource::RLIMIT_CORE, "RLIMIT_CORE", 0),
    ] {
        nix::sys::resource::setrlimit(resource, value, value).map_err(|errno| {
            SandboxError::Rlimit {
                resource: name,
                value,
                errno,
            }
        })?;
    }
    Ok(())
}

/// As root: only the granted supplementary groups, then gid, then uid (all three of
/// each set).
fn drop_to_dedicated_uid(uid: u32, groups: &[u32]) -> Result<Option<u32>, SandboxError> {
    use nix::unistd::{Gid, Uid};
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let error = |errno| SandboxError::DropUid { uid, errno };
    let groups: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&groups).map_err(error)?;
    let gid = Gid::from_raw(uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(error)?;
    let user = Uid::from_raw(uid);
    nix::unistd::setresuid(user, user, user).map_err(error)?;
    Ok(Some(uid))
}

fn landlock_ruleset(grants: &Grants) -> Result<landlock::RulesetCreated, SandboxError> {
    let landlock = |error: landlock::RulesetError| SandboxError::Landlock(error.to_string());
    let abi = WANTED_ABI;
    let execute: AccessFs = AccessFs::Execute;
    let read = AccessFs::from_read(abi) & !execute;
    let read_write = AccessFs::from_all(abi) & !execute;
    let serial = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock)?
        .scope(Scope::from_all(abi))
        .map_err(landlock)?
        .create()
        .map_err(landlock)?;
    // The compartment's own binary stays readable so panic backtraces can be symbolised.
    let own_binary = std::env::current_exe().ok();
    let rules = grants
        .read
        .iter()
        .chain(own_binary.iter())
        .map(|path| (path, read))
        .chain(grants.read_write.iter().map(|path| (path, read_write)))
        .chain(grants.serial.iter().map(|path| (path, serial)));
    for (path, access) in rules {
        let fd = PathFd::new(path).map_err(|error| SandboxError::GrantedPath {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        // A file gets only the file rights of its grant; a directory the whole grant.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(landlock)?;
    }
    let connect_ports = grants
        .connect_ports()
        .map_err(|error| SandboxError::Grants(error.to_string()))?;
    for port in connect_ports {
        ruleset = ruleset
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(landlock)?;
    }
    for port in &grants.listen {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::BindTcp))
            .map_err(landlock)?;
    }
    Ok(ruleset)
}
