//! The compartment side: sandbox itself, heartbeat, report denials and panics.
//!
//! The monitor starts `<binary> compartment <role> [args…]` with the control channel
//! (one end of a Unix socketpair) as stdin, and the grants in environment variables.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use super::channel::recv_frame_with_fd;
use super::frame::{FrameError, ToCompartment, ToMonitor, write_frame};
use super::manifest::Grants;
use crate::sandbox::{self, SandboxMode};

/// Environment variable: the compartment's name in the manifest.
pub const NAME_ENV: &str = "WARDEN_COMPARTMENT";
/// Environment variable: the grants, as TOML.
pub const GRANTS_ENV: &str = "WARDEN_GRANTS";
/// Environment variable: `enforce` or `insecure-dev`.
pub const MODE_ENV: &str = "WARDEN_SANDBOX_MODE";
/// Environment variable: the heartbeat interval, ms.
pub const HEARTBEAT_ENV: &str = "WARDEN_HEARTBEAT_MS";

/// A compartment that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompartmentError {
    /// An environment variable the monitor sets is missing or malformed.
    #[error("environment variable {name}: {problem} (is this running under `warden run`?)")]
    Environment {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// stdin is not the monitor's control channel.
    #[error("stdin is not a control channel: {0}")]
    Control(std::io::Error),
    /// The sandbox could not be applied.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    /// The control channel failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A running, sandboxed compartment's link to the monitor.
#[derive(Debug, Clone)]
pub struct Compartment {
    /// The compartment's name in the manifest.
    pub name: String,
    /// What it was granted.
    pub grants: Grants,
    /// What the sandbox put in place.
    pub sandbox: sandbox::SandboxReport,
    heartbeat: Duration,
    control: Arc<Mutex<UnixStream>>,
    inbox: Arc<Inbox>,
}

/// What the monitor sent, sorted by the control channel's one reader thread: answers
/// to this compartment's own requests, and channels other compartments opened to it.
/// (Two readers on one socket would steal each other's frames.)
#[derive(Debug)]
struct Inbox {
    /// Serialises `open_channel` calls, so each answer belongs to the one request.
    requests: Mutex<()>,
    answers: Mutex<mpsc::Receiver<Option<UnixStream>>>,
    offers: Mutex<mpsc::Receiver<(String, UnixStream)>>,
}

impl Inbox {
    /// Starts the reader thread on `control` (after the sandbox is in place).
    fn start(control: UnixStream) -> Self {
        let (answer_tx, answers) = mpsc::channel();
        let (offer_tx, offers) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                match recv_frame_with_fd::<ToCompartment>(&control) {
                    Ok(Some((ToCompartment::ChannelGranted { .. }, fd))) => {
                        let _ = answer_tx.send(fd.map(UnixStream::from));
                    }
                    Ok(Some((ToCompartment::ChannelDenied { .. }, _))) => {
                        let _ = answer_tx.send(None);
                    }
                    Ok(Some((ToCompartment::ChannelOffered { peer }, Some(fd)))) => {
                        let _ = offer_tx.send((peer, UnixStream::from(fd)));
                    }
                    Ok(Some((ToCompartment::ChannelOffered { .. }, None))) => {}
                    // The monitor closed the channel (it refused a frame, or it is
                    // gone): a compartment never outlives its supervision.
                    Ok(None) | Err(_) => std::process::exit(i32::from(MONITOR_GONE_EXIT)),
                }
            }
        });
        Self {
            requests: Mutex::new(()),
            answers: Mutex::new(answers),
            offers: Mutex::new(offers),
        }
    }
}

/// The exit code of a compartment whose control channel closed.
pub const MONITOR_GONE_EXIT: u8 = 75;

/// How long `open_channel` waits for the monitor's answer.
const CHANNEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Enters the compartment: takes the control channel, installs the panic hook and
/// applies the sandbox. Call first thing in a role's main, before any thread starts.
pub fn enter_from_env() -> Result<Compartment, CompartmentError> {
    let environment = |name: &'static str| {
        std::env::var(name).map_err(|error| CompartmentError::Environment {
            name,
            problem: error.to_string(),
        })
    };
    let name = environment(NAME_ENV)?;
    let grants: Grants = toml::from_str(&environment(GRANTS_ENV)?).map_err(|error| {
        CompartmentError::Environment {
            name: GRANTS_ENV,
            problem: error.to_string(),
        }
    })?;
    let mode = match environment(MODE_ENV)?.as_str() {
        "insecure-dev" => SandboxMode::InsecureDev,
        _ => SandboxMode::Enforce,
    };
    let heartbeat_ms: u64 =
        environment(HEARTBEAT_ENV)?
            .parse()
            .map_err(|_| CompartmentError::Environment {
                name: HEARTBEAT_ENV,
                problem: "not a number of milliseconds".into(),
            })?;
    let control = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .map_err(CompartmentError::Control)?;
    // A socketpair answers peer_addr; a terminal or a file does not.
    control.peer_addr().map_err(CompartmentError::Control)?;
    let control = Arc::new(Mutex::new(control));
    install_panic_hook(Arc::clone(&control));
    let sandbox = match sandbox::enter(&grants, mode) {
        Ok(report) => report,
        Err(error) => {
            let message = ToMonitor::SandboxFailed {
                detail: error.to_string(),
            };
            send(&control, &message)?;
            return Err(error.into());
        }
    };
    let reader = control
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .try_clone()
        .map_err(CompartmentError::Control)?;
    Ok(Compartment {
        name,
        grants,
        sandbox,
        heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
        control,
        inbox: Arc::new(Inbox::start(reader)),
    })
}

fn send(control: &Mutex<UnixStream>, message: &ToMonitor) -> Result<(), FrameError> {
    let mut stream = control.lock().unwrap_or_else(PoisonError::into_inner);
    write_frame(&mut *stream, message)?;
    stream.flush()?;
    Ok(())
}

fn install_panic_hook(control: Arc<Mutex<UnixStream>>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let location = info
            .location()
            .map(|at| format!(" at {}:{}", at.file(), at.line()))
            .unwrap_or_default();
        let message = ToMonitor::Panic {
            message: format!("{payload}{location}"),
            backtrace: truncate(backtrace, 8 * 1024),
        };
        // Best effort: the process is dying; stderr still gets the default output.
        let _ = send(&control, &message);
        previous(info);
    }));
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n…(truncated)");
    }
    text
}

impl Compartment {
    /// Starts the heartbeat thread (roles call it once they are ready).
    pub fn start_heartbeat(&self) {
        let control = Arc::clone(&self.control);
        let interval = self.heartbeat;
        std::thread::spawn(move || {
            while send(&control, &ToMonitor::Heartbeat).is_ok() {
                std::thread::sleep(interval);
            }
        });
    }

    /// Reports a denial the kernel returned to this compartment.
    pub fn report_denied(&self, action: &str, errno: i32) -> Result<(), FrameError> {
        send(
            &self.control,
            &ToMonitor::Denied {
                action: action.to_owned(),
                errno,
            },
        )
    }

    /// Asks the monitor to end the run so the boot stage boots again (after an install,
    /// or a trial given up). The monitor honours it only if the manifest grants this
    /// compartment `restart_for_update` and the boot state has something new to boot.
    pub fn request_restart_for_update(&self) -> Result<(), FrameError> {
        send(&self.control, &ToMonitor::RestartForUpdate)
    }

    /// Asks the monitor for a channel to `peer`; `Ok(None)` when the manifest denies it
    /// (or the peer is not running).
    pub fn open_channel(&self, peer: &str) -> Result<Option<UnixStream>, FrameError> {
        let _one_request = self
            .inbox
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let answers = self
            .inbox
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // An answer left over from a request that timed out belongs to nobody.
        while answers.try_recv().is_ok() {}
        send(
            &self.control,
            &ToMonitor::OpenChannel {
                peer: peer.to_owned(),
            },
        )?;
        match answers.recv_timeout(CHANNEL_ANSWER_TIMEOUT) {
            Ok(channel) => Ok(channel),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(FrameError::Io(std::io::ErrorKind::TimedOut.into()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            }
        }
    }

    /// Waits for a peer to open a channel to this compartment: `(peer, channel)`.
    pub fn accept_channel(&self) -> Result<(String, UnixStream), FrameError> {
        self.inbox
            .offers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv()
            .map_err(|_| FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
    }

    /// Reports that a peer sent a frame that does not decode (the caller closes it).
    pub fn report_peer_frame(&self, peer: &str, error: &FrameError) -> Result<(), FrameError> {
        send(
            &self.control,
            &ToMonitor::PeerFrameRejected {
                peer: peer.to_owned(),
                detail: error.to_string(),
            },
        )
    }

    /// Reports that a peer sent a frame whose content this compartment refuses (a
    /// payload inside the frame that does not decode); the caller closes the channel.
    pub fn report_peer_rejected(&self, peer: &str, detail: &str) -> Result<(), FrameError> {
        send(
            &self.control,
            &ToMonitor::PeerFrameRejected {
                peer: peer.to_owned(),
                detail: detail.to_owned(),
            },
        )
    }

    /// Writes raw bytes on the control channel (the garbage test role uses it).
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut stream = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        stream.write_all(bytes)
    }
}
