//! Pluton as its own process for the unit being provisioned.
//!
//! The station never holds a device key: it starts the unit's pluton (this binary's
//! hidden `pluton` role, which runs `warden_pluton::server::serve`, exactly what the
//! appliance runs) on the unit's state directory, and talks to it over its Unix socket
//! with `warden-pluton-api`. The child dies with the station (`PR_SET_PDEATHSIG`), so an
//! interrupted batch never leaves a second pluton on a unit's state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_pluton::ProvisioningCapability;
use warden_pluton::server::Backend;
use warden_pluton_api::PlutonClient;

/// Environment variable telling the pluton role its parent's pid.
pub const PARENT_PID_ENV: &str = "WARDEN_PROVISION_PARENT";

/// Pluton could not be started or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlutonProcessError {
    /// The process could not be spawned.
    #[error("cannot start pluton ({exe}): {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Pluton did not listen in time, or exited.
    #[error("pluton on {state_dir} did not come up: {reason}")]
    NotListening {
        /// The state directory.
        state_dir: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The capability file could not be read.
    #[error("pluton capability: {0}")]
    Capability(String),
}

/// A running pluton for one unit; stopped (killed and reaped) on drop.
#[derive(Debug)]
pub struct PlutonProcess {
    child: Child,
    socket: PathBuf,
    capability_file: PathBuf,
}

impl PlutonProcess {
    /// Start `exe pluton --socket … --state-dir … [--backend tpm --tcti …]` and wait
    /// until it answers.
    pub fn start(
        exe: &Path,
        backend: &Backend,
        socket: &Path,
        state_dir: &Path,
        capability_file: &Path,
    ) -> Result<Self, PlutonProcessError> {
        if let Some(parent) = socket.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::remove_file(socket);
        let mut command = Command::new(exe);
        command
            .arg("pluton")
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir);
        if let Backend::Tpm { tcti } = backend {
            command.args(["--backend", "tpm", "--tcti", tcti]);
        }
        let mut child = command
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| PlutonProcessError::Spawn {
                exe: exe.to_owned(),
                source,
            })?;
        let last_words = forward_stderr(&mut child);
        let mut process = Self {
            child,
            socket: socket.to_owned(),
            capability_file: capability_file.to_owned(),
        };
        let not_listening = |reason: String| PlutonProcessError::NotListening {
            state_dir: state_dir.to_owned(),
            reason,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let said = last_words.wait();
                return Err(not_listening(if said.is_empty() {
                    format!("exited with {status}")
                } else {
                    format!("exited with {status}: {said}")
                }));
            }
            if let Ok(mut client) = PlutonClient::connect(socket)
                && client.status().is_ok()
            {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(not_listening("no answer within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new client connection.
    pub fn client(&self) -> Result<PlutonClient, warden_pluton_api::ClientError> {
        PlutonClient::connect(&self.socket)
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The provisioning capability pluton wrote on its first start (the station acts
    /// for the security monitor in the factory).
    pub fn capability(&self) -> Result<ProvisioningCapability, PlutonProcessError> {
        warden_pluton::server::read_capability_file(&self.capability_file)
            .map_err(|error| PlutonProcessError::Capability(error.to_string()))
    }

    /// The capability file's path.
    pub fn capability_file(&self) -> &Path {
        &self.capability_file
    }
}

/// The last line pluton wrote to stderr, once its stderr has closed.
struct LastWords(Option<std::thread::JoinHandle<String>>);

impl LastWords {
    /// Wait for pluton's stderr to close (it has exited) and return its last line.
    fn wait(self) -> String {
        self.0
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

/// Copy pluton's stderr to the station's, line by line, keeping the last line: when
/// pluton refuses to start, its reason goes into the unit's report, not only the log.
fn forward_stderr(child: &mut Child) -> LastWords {
    use std::io::BufRead as _;
    LastWords(child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut last = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        })
    }))
}

impl Drop for PlutonProcess {
    fn drop(&mut self) {
        // Pluton's store is crash-safe (atomic renames), so a kill is a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The hidden `pluton` role could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// Asking to die with the station failed.
    #[error("cannot ask to die with the station: {0}")]
    DeathSignal(#[source] nix::Error),
    /// The station died before pluton started.
    #[error("the provisioning station exited before pluton started")]
    StationGone,
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Pluton's server failed.
    #[error(transparent)]
    Serve(#[from] warden_pluton::server::ServerError),
}

/// The hidden `pluton` role: die with the station, then serve on `backend`.
pub fn run_role(socket: &Path, state_dir: &Path, backend: Backend) -> Result<(), RoleError> {
    // Ask the kernel to kill this process when the station dies, then check that the
    // station did not die before the request took effect.
    nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
        .map_err(RoleError::DeathSignal)?;
    if let Ok(expected) = std::env::var(PARENT_PID_ENV)
        && nix::unistd::getppid().as_raw().to_string() != expected
    {
        return Err(RoleError::StationGone);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(RoleError::Runtime)?;
    runtime.block_on(warden_pluton::server::serve(
        socket,
        state_dir,
        // At the station there are no compartments to tell apart (issue #19).
        warden_pluton::server::ServeOptions {
            backend,
            roles: warden_pluton::server::CallerRoles::unseparated(),
            ..Default::default()
        },
    ))?;
    Ok(())
}
