//! The seccomp allowlists: the system calls each compartment may make.
//!
//! One list per compartment, built from its manifest grants ([`Profile::for_grants`]),
//! so each role gets only what its grants need:
//!
//! | grant | adds |
//! |---|---|
//! | (always) | memory, threads, files (landlock decides which), time, polling, I/O on descriptors it holds, `ioctl` for `FIONBIO`/`FIOCLEX`/`FIONCLEX`/`FIONREAD`/`TCGETS`/`TIOCGWINSZ` only |
//! | `connect` | `socket(AF_INET/AF_INET6, SOCK_STREAM)`, `connect` |
//! | `connect` naming a host (not an IP address) | `socket(AF_INET/AF_INET6, SOCK_DGRAM)` and `sendto` to an address: name resolution (DNS over UDP) |
//! | `listen` | `socket(AF_INET/AF_INET6, SOCK_STREAM)`, `bind`, `listen`, `accept`, `accept4` |
//! | `unix_listen` | `socket(AF_UNIX, SOCK_STREAM)`, `bind`, `listen`, `accept`, `accept4` |
//! | `unix_connect` | `socket(AF_UNIX, SOCK_STREAM)`, `connect` |
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
//! Sending is filtered by arguments (issue #22 item 9): a role that sends no datagrams
//! may call `sendto` only without an address and without `MSG_FASTOPEN`, and
//! `sendmsg`/`sendmmsg` only without `MSG_FASTOPEN` (a listen-only compartment can
//! neither send UDP anywhere nor connect through TCP Fast Open; it cannot make a UDP
//! socket either). `clone` is allowed only without namespace flags (`CLONE_NEW*`), and
//! `clone3` fails with `ENOSYS` (its flags are in memory seccomp cannot read), so
//! glibc falls back to `clone` for threads.
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
    // `clone` is allowed without namespace flags only, `clone3` answers ENOSYS (its
    // flags sit in a struct seccomp cannot read; glibc then falls back to `clone`):
    // see `allowlist_program` and `clone3_program`.
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
    // `sendto`, `sendmsg` and `sendmmsg` are filtered by their arguments
    // (`Profile::sends_datagrams`).
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
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
    /// Sends datagrams to addresses: resolves host names (a `connect` grant names a
    /// host, not an IP address), which is DNS over UDP.
    pub sends_datagrams: bool,
}

/// The namespace flags `clone` may not carry (a new namespace is the monitor's call,
/// and `unshare`/`setns` are absent for the same reason).
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// `SOCK_TYPE_MASK`: the `socket()` type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCKET_TYPE_MASK: u64 = 0xf;

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
            sends_datagrams: grants.connect.iter().any(|target| names_a_host(target)),
        }
    }

    /// The `(family, type)` pairs `socket()` may create.
    pub fn socket_kinds(&self) -> Vec<(i32, i32)> {
        let mut kinds = Vec::new();
        if self.unix_listen || self.unix_connect {
            kinds.push((libc::AF_UNIX, libc::SOCK_STREAM));
        }
        if self.tcp_connect || self.tcp_listen {
            kinds.extend([
                (libc::AF_INET, libc::SOCK_STREAM),
                (libc::AF_INET6, libc::SOCK_STREAM),
            ]);
        }
        if self.sends_datagrams {
            kinds.extend([
                (libc::AF_INET, libc::SOCK_DGRAM),
                (libc::AF_INET6, libc::SOCK_DGRAM),
            ]);
        }
        kinds
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

    /// Whether `socket(family, kind)` is allowed (`kind` may carry `SOCK_NONBLOCK`
    /// and `SOCK_CLOEXEC`).
    pub fn allows_socket(&self, family: i32, kind: i32) -> bool {
        let kind = kind & (SOCKET_TYPE_MASK as i32);
        self.socket_kinds().contains(&(family, kind))
    }

    /// The calls allowed whatever their arguments.
    pub fn unconditional_calls(&self) -> Vec<i64> {
        let mut calls = BASE.to_vec();
        if self.sends_datagrams {
            calls.extend([libc::SYS_sendto, libc::SYS_sendmsg, libc::SYS_sendmmsg]);
        }
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
            || call == libc::SYS_clone
            || (call == libc::SYS_socket && !self.socket_families().is_empty())
            || matches!(
                call,
                libc::SYS_sendto | libc::SYS_sendmsg | libc::SYS_sendmmsg
            )
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
    let rule = |conditions: Vec<Result<SeccompCondition, seccompiler::BackendError>>| {
        conditions
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .and_then(SeccompRule::new)
    };
    let condition = |index: u8, length: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(index, length, op, value)
    };
    let sockets = profile
        .socket_kinds()
        .into_iter()
        .map(|(family, kind)| {
            rule(vec![
                condition(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    u64::from(family.unsigned_abs()),
                ),
                condition(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(SOCKET_TYPE_MASK),
                    u64::from(kind.unsigned_abs()),
                ),
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !sockets.is_empty() {
        rules.insert(libc::SYS_socket, sockets);
    }
    let fastopen = u64::from(libc::MSG_FASTOPEN.unsigned_abs());
    let no_fastopen = |index: u8| {
        condition(
            index,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(fastopen),
            0,
        )
    };
    if !profile.sends_datagrams {
        // sendto(fd, buf, len, flags, dest_addr, addrlen): no address, no Fast Open.
        rules.insert(
            libc::SYS_sendto,
            vec![rule(vec![
                no_fastopen(3),
                condition(4, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0),
            ])?],
        );
        // sendmsg(fd, msg, flags), sendmmsg(fd, msgvec, vlen, flags): the address is
        // in memory seccomp cannot read, but without a datagram socket only Fast Open
        // could use it.
        rules.insert(libc::SYS_sendmsg, vec![rule(vec![no_fastopen(2)])?]);
        rules.insert(libc::SYS_sendmmsg, vec![rule(vec![no_fastopen(3)])?]);
    }
    // Allowed here so that `clone3_program`'s ENOSYS decides: of two filters answering
    // with an errno, the kernel takes the most recently installed one's, and this one
    // would answer EPERM (glibc falls back to `clone` only on ENOSYS).
    rules.insert(libc::SYS_clone3, Vec::new());
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![condition(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
            0,
        )])?],
    );
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

/// A filter that answers `clone3` with `ENOSYS` and lets everything else through to
/// the allowlist: installed beside it (the kernel takes the strictest answer), so
/// glibc's thread creation falls back to `clone`, whose flags the allowlist checks.
pub fn clone3_program() -> Result<BpfProgram, seccompiler::BackendError> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    filter.try_into()
}

/// Whether a `connect` grant (`host:port`) names a host rather than an IP address.
fn names_a_host(target: &str) -> bool {
    let host = target
        .rsplit_once(':')
        .map_or(target, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_err()
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
        // Stream sockets only, unless a role resolves names.
        assert!(page.allows_socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC));
        assert!(!page.allows_socket(libc::AF_INET, libc::SOCK_DGRAM));
        assert!(!page.unconditional_calls().contains(&libc::SYS_sendto));
        assert!(!pluton.allows_socket(libc::AF_UNIX, libc::SOCK_DGRAM));
        assert!(!link.unconditional_calls().contains(&libc::SYS_clone));
        assert!(!link.allows(libc::SYS_clone3) || clone3_program().is_ok());
        for profile in [pluton, page, link, bridge, none] {
            assert!(!profile.allows(libc::SYS_execve) && !profile.allows(libc::SYS_ptrace));
            allowlist_program(&profile).expect("the program builds");
        }
    }

    #[test]
    fn only_a_role_that_resolves_names_sends_datagrams() {
        let grants = |connect: &[&str]| Grants {
            read: Vec::new(),
            read_write: Vec::new(),
            serial: Vec::new(),
            connect: connect.iter().map(|target| (*target).to_owned()).collect(),
            listen: Vec::new(),
            unix_listen: Vec::new(),
            unix_connect: Vec::new(),
            peers: Vec::new(),
            memory_mib: 128,
            open_files: 256,
            uid: 61003,
            groups: Vec::new(),
        };
        let link = Profile::for_grants(&grants(&["fleet.example.com:8883"]));
        assert!(link.sends_datagrams);
        assert!(link.allows_socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK));
        assert!(link.unconditional_calls().contains(&libc::SYS_sendto));
        let bridge = Profile::for_grants(&grants(&["192.168.50.10:502", "[::1]:502"]));
        assert!(!bridge.sends_datagrams);
        assert!(!bridge.allows_socket(libc::AF_INET, libc::SOCK_DGRAM));
        allowlist_program(&link).expect("the program builds");
        allowlist_program(&bridge).expect("the program builds");
        clone3_program().expect("the program builds");
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
