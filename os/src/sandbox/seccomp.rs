//! The seccomp allowlists: the system calls each compartment may make.
//!
//! One list per compartment, built from its manifest grants ([`Profile::for_grants`]),
//! so each role gets only what its grants need:
//!
//! | grant | adds |
//! |---|---|
//! | (always) | memory, threads, files (landlock decides which), time, polling, I/O on descriptors it holds, `ioctl` for `FIONBIO`/`FIOCLEX`/`FIONCLEX`/`FIONREAD`/`TCGETS`/`TIOCGWINSZ` only |
//! | `connect` | `socket(AF_INET/AF_INET6)`, `connect` |
//! | `listen` | `socket(AF_INET/AF_INET6)`, `bind`, `listen`, `accept`, `accept4` |
//! | `unix_listen` | `socket(AF_UNIX)`, `bind`, `listen`, `accept`, `accept4` |
//! | `unix_connect` | `socket(AF_UNIX)`, `connect` |
//! | `serial` | the termios, modem-line, flush and RS-485 `ioctl`s |
//! | `serial` naming `/dev/net/tun` | `TUNSETIFF` (attach to a TAP the OS image made, owned by the compartment's uid) and `SIOCGIFMTU` (its MTU): the private equipment network's port |
//!
//! So pluton (`unix_listen` only) cannot create an IP socket or connect anywhere; the
//! status page (`listen`) can accept but not connect; the link (`connect`,
//! `unix_connect`) can connect but not listen; a bridge (`connect`, `serial`) gets the
//! serial `ioctl`s nobody else gets. Every compartment may create a local
//! `socketpair(AF_UNIX)` (tokio's I/O driver makes one for its signal wake-ups; a pair
//! reaches nothing outside the process).
//!
//! Anything not listed fails with `EPERM` (not a kill), so a denial is visible to the
//! compartment and ends up in a failure report. Absent for every role: `execve`/`execveat`,
//! `ptrace`, `kill`, `mount`, `unshare`, `setns`, `bpf`, module loading, `reboot`,
//! `process_vm_*`, `keyctl`, `perf_event_open`, `userfaultfd`, `chroot`, `pivot_root`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::monitor::manifest::Grants;

/// Calls every compartment needs: memory, threads, files (landlock decides which),
/// time, polling, and I/O on the descriptors it holds.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    // The kernel restarts an interrupted sleep (e.g. on SIGCHLD) with this call.
    libc::SYS_restart_syscall,
    libc::SYS_sigaltstack,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fadvise64,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_umask,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_gettimeofday,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getrandom,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_wait4,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_prctl,
    libc::SYS_arch_prctl,
    libc::SYS_membarrier,
    // On descriptors the compartment already holds (its control and IPC channels,
    // and sockets a grant let it create): creating and connecting are granted apart.
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
];

// The request numbers are `c_ulong`, which is `u64` on the 64-bit targets the filter
// is built for (`TargetArch::x86_64`).

/// `ioctl` requests every compartment may make: non-blocking and close-on-exec flags
/// (the standard library and tokio set them this way), bytes waiting, and the
/// "is this a terminal" probe of the log writer.
const BASE_IOCTLS: &[u64] = &[
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
    libc::TIOCGWINSZ,
];

/// `ioctl` requests a compartment with `serial` grants may make as well: line
/// settings (termios and termios2 for arbitrary baud rates), flushing, modem lines,
/// exclusive mode, breaks and RS-485 settings.
const SERIAL_IOCTLS: &[u64] = &[
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TCGETS2,
    libc::TCSETS2,
    libc::TCSETSW2,
    libc::TCSETSF2,
    libc::TCFLSH,
    libc::TCSBRK,
    libc::TIOCSBRK,
    libc::TIOCCBRK,
    libc::TIOCMGET,
    libc::TIOCMSET,
    libc::TIOCMBIS,
    libc::TIOCMBIC,
    libc::TIOCEXCL,
    libc::TIOCNXCL,
    libc::TIOCOUTQ,
    libc::TIOCGSERIAL,
    libc::TIOCSSERIAL,
    libc::TIOCGRS485,
    libc::TIOCSRS485,
];

/// The TUN/TAP clone device; a `serial` grant naming it is a TAP port.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// `ioctl` requests a compartment whose `serial` grants name [`TUN_DEVICE`] may make:
/// attach to an existing TAP interface and read its MTU. Not `TUNSETPERSIST`,
/// `TUNSETOWNER` or any interface configuration: the TAP is made, owned and bridged by
/// the OS image, and attaching needs no capability when the compartment's uid owns it.
const TAP_IOCTLS: &[u64] = &[libc::TUNSETIFF, libc::SIOCGIFMTU];

/// What a compartment's grants let it do with sockets and devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// Outbound TCP (`connect` grants).
    pub tcp_connect: bool,
    /// Inbound TCP (`listen` grants).
    pub tcp_listen: bool,
    /// Serves a Unix socket (`unix_listen`).
    pub unix_listen: bool,
    /// Connects to Unix sockets (`unix_connect`).
    pub unix_connect: bool,
    /// Drives serial lines (`serial`).
    pub serial: bool,
    /// Runs a TAP port (`serial` names [`TUN_DEVICE`]).
    pub tap: bool,
}

impl Profile {
    /// The profile that `grants` call for.
    pub fn for_grants(grants: &Grants) -> Self {
        Self {
            tcp_connect: !grants.connect.is_empty(),
            tcp_listen: !grants.listen.is_empty(),
            unix_listen: !grants.unix_listen.is_empty(),
            unix_connect: !grants.unix_connect.is_empty(),
            serial: !grants.serial.is_empty(),
            tap: grants
                .serial
                .iter()
                .any(|path| path == std::path::Path::new(TUN_DEVICE)),
        }
    }

    /// The socket families `socket()` may create.
    pub fn socket_families(&self) -> Vec<i32> {
        let mut families = Vec::new();
        if self.unix_listen || self.unix_connect {
            families.push(libc::AF_UNIX);
        }
        if self.tcp_connect || self.tcp_listen {
            families.extend([libc::AF_INET, libc::AF_INET6]);
        }
        families
    }

    /// The calls allowed whatever their arguments.
    pub fn unconditional_calls(&self) -> Vec<i64> {
        let mut calls = BASE.to_vec();
        if self.tcp_connect || self.unix_connect {
            calls.push(libc::SYS_connect);
        }
        if self.tcp_listen || self.unix_listen {
            calls.extend([
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_accept,
                libc::SYS_accept4,
            ]);
        }
        calls
    }

    /// The `ioctl` requests allowed.
    pub fn ioctls(&self) -> Vec<u64> {
        let mut requests = BASE_IOCTLS.to_vec();
        if self.serial {
            requests.extend_from_slice(SERIAL_IOCTLS);
        }
        if self.tap {
            requests.extend_from_slice(TAP_IOCTLS);
        }
        requests
    }

    /// True when `call` is allowed with some arguments (for tests and explanations).
    pub fn allows(&self, call: i64) -> bool {
        self.unconditional_calls().contains(&call)
            || call == libc::SYS_ioctl
            || call == libc::SYS_socketpair
            || (call == libc::SYS_socket && !self.socket_families().is_empty())
    }
}

/// Builds the allowlist program for `profile`.
pub fn allowlist_program(profile: &Profile) -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = profile
        .unconditional_calls()
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    let equal = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|condition| SeccompRule::new(vec![condition]))
    };
    let sockets = profile
        .socket_families()
        .into_iter()
        .map(|family| equal(0, u64::from(family.unsigned_abs())))
        .collect::<Result<Vec<_>, _>>()?;
    if !sockets.is_empty() {
        rules.insert(libc::SYS_socket, sockets);
    }
    let ioctls = profile
        .ioctls()
        .into_iter()
        .map(|request| equal(1, request & 0xffff_ffff))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    rules.insert(
        libc::SYS_socketpair,
        vec![equal(0, u64::from(libc::AF_UNIX.unsigned_abs()))?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    filter.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_gets_only_the_socket_calls_its_grants_need() {
        let pluton = Profile {
            unix_listen: true,
            ..Profile::default()
        };
        assert_eq!(pluton.socket_families(), vec![libc::AF_UNIX]);
        assert!(!pluton.allows(libc::SYS_connect));
        assert!(pluton.allows(libc::SYS_accept4));
        let page = Profile {
            tcp_listen: true,
            ..Profile::default()
        };
        assert!(!page.allows(libc::SYS_connect));
        assert!(page.allows(libc::SYS_accept4));
        assert!(!page.socket_families().contains(&libc::AF_UNIX));
        let link = Profile {
            tcp_connect: true,
            unix_connect: true,
            ..Profile::default()
        };
        assert!(link.allows(libc::SYS_connect));
        assert!(!link.allows(libc::SYS_listen) && !link.allows(libc::SYS_accept4));
        let bridge = Profile {
            tcp_connect: true,
            serial: true,
            ..Profile::default()
        };
        assert!(bridge.ioctls().contains(&libc::TCSETS));
        assert!(!link.ioctls().contains(&libc::TCSETS));
        assert!(!bridge.ioctls().contains(&libc::TUNSETIFF));
        let none = Profile::default();
        assert!(!none.allows(libc::SYS_socket));
        for profile in [pluton, page, link, bridge, none] {
            assert!(!profile.allows(libc::SYS_execve) && !profile.allows(libc::SYS_ptrace));
            allowlist_program(&profile).expect("the program builds");
        }
    }

    #[test]
    fn only_a_serial_grant_of_the_tun_device_allows_attaching_to_a_tap() {
        let grants = |serial: &[&str]| Grants {
            read: Vec::new(),
            read_write: Vec::new(),
            serial: serial.iter().map(std::path::PathBuf::from).collect(),
            connect: vec!["127.0.0.1:15020".into()],
            listen: vec![15020],
            unix_listen: Vec::new(),
            unix_connect: Vec::new(),
            peers: Vec::new(),
            memory_mib: 128,
            open_files: 256,
            uid: 61002,
            groups: Vec::new(),
        };
        let rs485 = Profile::for_grants(&grants(&["/dev/ttyRS485-1"]));
        assert!(!rs485.tap && !rs485.ioctls().contains(&libc::TUNSETIFF));
        let port = Profile::for_grants(&grants(&["/dev/ttyRS485-1", TUN_DEVICE]));
        assert!(port.tap);
        assert!(port.ioctls().contains(&libc::TUNSETIFF));
        assert!(port.ioctls().contains(&libc::SIOCGIFMTU));
        assert!(!port.ioctls().contains(&libc::TUNSETPERSIST));
        allowlist_program(&port).expect("the program builds");
    }
}
