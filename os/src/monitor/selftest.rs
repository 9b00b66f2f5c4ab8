//! Test roles: a hostile compartment, a crashing one, a hung one, a garbage sender.
//!
//! They run as real sandboxed processes so the tests see real kernel enforcement.
//! `warden compartment selftest-…` and the `compartment-selftest` binary both run them.

use std::io::ErrorKind;
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
        "selftest-echo" => {
            compartment.start_heartbeat();
            echo(&compartment)
        }
        "selftest-caller" => {
            compartment.start_heartbeat();
            call(&compartment, args);
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
