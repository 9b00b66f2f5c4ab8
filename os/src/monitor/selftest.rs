//! Test roles: a hostile compartment, a crashing one, a hung one, a garbage sender.
//!
//! They run as real sandboxed processes so the tests see real kernel enforcement.
//! `warden compartment selftest-…` and the `compartment-selftest` binary both run them.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use super::compartment::{self, Compartment};
use super::frame::{FrameError, read_frame, write_frame};

/// The selftest roles.
pub const ROLES: &[&str] = &[
    "selftest-hostile",
    "selftest-crash",
    "selftest-hang",
    "selftest-garbage",
    "selftest-idle",
    "selftest-echo",
    "selftest-caller",
    "selftest-syscalls",
    "selftest-unix-server",
    "selftest-unix-client",
    "selftest-probe",
    "selftest-garbage-peer",
    "selftest-restart-request",
];

/// Runs a selftest role; `None` when `role` is not one of [`ROLES`].
pub fn run_role(role: &str, args: &[String]) -> Option<ExitCode> {
    if !ROLES.contains(&role) {
        return None;
    }
    let compartment = match compartment::enter_from_env() {
        Ok(compartment) => compartment,
        Err(error) => {
            eprintln!("{role}: {error}");
            return Some(ExitCode::from(3));
        }
    };
    match role {
        "selftest-hostile" => {
            compartment.start_heartbeat();
            hostile(&compartment, args);
            park()
        }
        "selftest-crash" => {
            compartment.start_heartbeat();
            std::thread::sleep(Duration::from_millis(50));
            panic!("selftest crash on purpose");
        }
        "selftest-hang" => park(),
        "selftest-restart-request" => {
            compartment.start_heartbeat();
            std::thread::sleep(Duration::from_millis(50));
            if let Err(error) = compartment.request_restart_for_update() {
                eprintln!("selftest-restart-request: {error}");
            }
            park()
        }
        "selftest-echo" => {
            compartment.start_heartbeat();
            echo(&compartment)
        }
        "selftest-caller" => {
            compartment.start_heartbeat();
            call(&compartment, args);
            park()
        }
        "selftest-syscalls" => {
            compartment.start_heartbeat();
            syscalls(&compartment, args);
            park()
        }
        "selftest-unix-server" => {
            compartment.start_heartbeat();
            unix_server(&compartment, args)
        }
        "selftest-unix-client" => {
            compartment.start_heartbeat();
            unix_client(&compartment, args);
            park()
        }
        "selftest-probe" => {
            compartment.start_heartbeat();
            probe(&compartment, args);
            park()
        }
        "selftest-garbage-peer" => {
            compartment.start_heartbeat();
            garbage_to_peer(&compartment, args);
            park()
        }
        "selftest-garbage" => {
            compartment.start_heartbeat();
            std::thread::sleep(Duration::from_millis(50));
            let _ = compartment.send_raw(&[3, 0, 0, 0, 0xfe, 0xfe, 0xfe, 0xff, 0xff]);
            park()
        }
        _ => {
            compartment.start_heartbeat();
            park()
        }
    }
}

fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Tries each forbidden thing; prints `DENIED <action> <errno>` or `ALLOWED <action>`.
/// `args`: `[file outside the granted directory, undeclared TCP port, undeclared peer]`.
fn hostile(compartment: &Compartment, args: &[String]) {
    let outside = args
        .first()
        .map_or("/tmp/warden-hostile-escape", String::as_str);
    let port: u16 = args.get(1).and_then(|port| port.parse().ok()).unwrap_or(22);
    let peer = args.get(2).map_or("pluton", String::as_str);
    let attempts: Vec<(String, std::io::Result<()>)> = vec![
        (
            "read /etc/shadow".into(),
            std::fs::read("/etc/shadow").map(drop),
        ),
        (
            format!("write {outside}"),
            std::fs::write(outside, b"escaped"),
        ),
        (
            format!("connect 127.0.0.1:{port}"),
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(1),
            )
            .map(drop),
        ),
        (
            "exec /bin/sh".into(),
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg("true")
                .status()
                .map(drop),
        ),
    ];
    for (action, result) in attempts {
        match result {
            Ok(()) => println!("ALLOWED {action}"),
            Err(error) => {
                let errno = error.raw_os_error().unwrap_or(0);
                let denied = matches!(error.kind(), ErrorKind::PermissionDenied)
                    || errno == libc::EPERM
                    || errno == libc::EACCES;
                println!(
                    "{} {action} {errno}",
                    if denied { "DENIED" } else { "FAILED" }
                );
                let _ = compartment.report_denied(&action, errno);
            }
        }
    }
    match compartment.open_channel(peer) {
        Ok(None) => println!("DENIED ipc {peer} {}", libc::EPERM),
        Ok(Some(_)) => println!("ALLOWED ipc {peer}"),
        Err(error) => println!("FAILED ipc {peer}: {error}"),
    }
}

/// Echoes every frame of every channel offered to it; reports a malformed frame and
/// closes that channel.
fn echo(compartment: &Compartment) -> ! {
    loop {
        let Ok((peer, mut channel)) = compartment.accept_channel() else {
            park()
        };
        loop {
            match read_frame::<String>(&mut channel) {
                Ok(Some(text)) => {
                    if write_frame(&mut channel, &text).is_err() {
                        break;
                    }
                }
                Ok(None) | Err(FrameError::Io(_)) => break,
                Err(error) => {
                    let _ = compartment.report_peer_frame(&peer, &error);
                    let _ = channel.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
        }
    }
}

/// Opens a channel to `args[1]`, checks an echo, writes `args[0]` (a file in its own
/// directory) on success, then sends garbage on a second channel.
fn call(compartment: &Compartment, args: &[String]) {
    let (Some(proof), Some(peer)) = (args.first(), args.get(1)) else {
        return;
    };
    let Ok(Some(mut channel)) = compartment.open_channel(peer) else {
        return;
    };
    let echoed = write_frame(&mut channel, &"ping".to_owned())
        .and_then(|()| read_frame::<String>(&mut channel));
    if matches!(echoed, Ok(Some(ref text)) if text == "ping") {
        let _ = std::fs::write(proof, b"echo ok");
    }
    drop(channel);
    if let Ok(Some(mut channel)) = compartment.open_channel(peer) {
        use std::io::Write as _;
        let _ = channel.write_all(&[2, 0, 0, 0, 0xff, 0xff]);
        let _ = channel.flush();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints and reports one attempt's outcome.
fn outcome(compartment: &Compartment, action: &str, result: std::io::Result<()>) {
    match result {
        Ok(()) => println!("ALLOWED {action}"),
        Err(error) => {
            let errno = error.raw_os_error().unwrap_or(0);
            println!("DENIED {action} {errno}");
            let _ = compartment.report_denied(action, errno);
        }
    }
}

/// Tries each system call named in `args` and reports those that fail:
/// `socket-inet` (UDP), `socket-unix`, `socketpair`, `connect-tcp:PORT`,
/// `sendto-address:PORT` (a TCP Fast Open send to an address without `connect`).
fn syscalls(compartment: &Compartment, args: &[String]) {
    for action in args {
        let result = match action.as_str() {
            "socket-inet" => std::net::UdpSocket::bind("127.0.0.1:0").map(drop),
            "socket-unix" => std::os::unix::net::UnixDatagram::unbound().map(drop),
            "socketpair" => UnixStream::pair().map(drop),
            other if other.starts_with("sendto-address:") => {
                match other.trim_start_matches("sendto-address:").parse::<u16>() {
                    Ok(port) => send_to_address(port),
                    Err(_) => continue,
                }
            }
            other => match other.strip_prefix("connect-tcp:").map(str::parse::<u16>) {
                Some(Ok(port)) => std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(1),
                )
                .map(drop),
                _ => continue,
            },
        };
        outcome(compartment, action, result);
    }
}

/// `sendto` with an address and `MSG_FASTOPEN` on a TCP socket never connected:
/// connects (and sends) without `connect`, unless seccomp refuses it.
fn send_to_address(port: u16) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, sendto, socket,
    };
    use std::os::fd::AsRawFd as _;
    let io = |errno: nix::errno::Errno| std::io::Error::from_raw_os_error(errno as i32);
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io)?;
    let target = SockaddrIn::new(127, 0, 0, 1, port);
    sendto(
        fd.as_raw_fd(),
        b"x",
        &target,
        MsgFlags::from_bits_retain(libc::MSG_FASTOPEN),
    )
    .map(drop)
    .map_err(io)
}

/// Serves `args[0]` as pluton serves its socket (mode 0660, its own uid and gid) and
/// answers every connection with `hello`.
fn unix_server(compartment: &Compartment, args: &[String]) -> ! {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = args.first() else { park() };
    let _ = std::fs::remove_file(path);
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(error) => {
            outcome(compartment, &format!("listen unix {path}"), Err(error));
            park()
        }
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(b"hello");
    }
    park()
}

/// Connects to the Unix socket `args[0]`; on a `hello`, writes `args[1]` (a file in its
/// own directory); a refusal is reported.
fn unix_client(compartment: &Compartment, args: &[String]) {
    use std::io::Read as _;
    let (Some(path), Some(proof)) = (args.first(), args.get(1)) else {
        return;
    };
    // The server may still be starting.
    let mut last = Err(std::io::Error::from(ErrorKind::NotFound));
    for _ in 0..50 {
        last = UnixStream::connect(path);
        match &last {
            Err(error) if error.kind() == ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break,
        }
    }
    let result = last.and_then(|mut stream| {
        let mut greeting = [0_u8; 5];
        stream.read_exact(&mut greeting)?;
        if &greeting == b"hello" {
            std::fs::write(proof, b"connected")
        } else {
            Err(std::io::Error::other("unexpected greeting"))
        }
    });
    outcome(compartment, &format!("connect unix {path}"), result);
}

/// Tries each access in `args` with the compartment's grants and reports each refusal
/// (`DENIED <action> <errno>` on stdout too): `read:PATH`, `write:PATH` (create or
/// append), `open-rw:PATH` (a device), `connect:HOST:PORT`, `unix:PATH`.
fn probe(compartment: &Compartment, args: &[String]) {
    use std::io::Read as _;
    for action in args {
        let Some((kind, target)) = action.split_once(':') else {
            continue;
        };
        let result = match kind {
            "read" => std::fs::File::open(target).and_then(|mut file| {
                let mut byte = [0_u8; 1];
                file.read(&mut byte).map(drop)
            }),
            "write" => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(target)
                .map(drop),
            "open-rw" => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(target)
                .map(drop),
            "connect" => target
                .parse::<std::net::SocketAddr>()
                .map_err(std::io::Error::other)
                .and_then(|address| {
                    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1))
                })
                .map(drop),
            "unix" => UnixStream::connect(target).map(drop),
            _ => continue,
        };
        outcome(compartment, action, result);
    }
}

/// Opens a channel to `args[0]` and sends a frame that does not decode as any
/// message (an enum variant far out of range), then keeps the channel open.
fn garbage_to_peer(compartment: &Compartment, args: &[String]) {
    use std::io::Write as _;
    let Some(peer) = args.first() else { return };
    for _ in 0..100 {
        if let Ok(Some(mut channel)) = compartment.open_channel(peer) {
            let _ = channel.write_all(&[3, 0, 0, 0, 0xfe, 0xfe, 0x7f]);
            let _ = channel.flush();
            std::thread::sleep(Duration::from_secs(3600));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
