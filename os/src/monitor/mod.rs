//! The security monitor: starts compartments from the manifest and supervises them.
//!
//! Each compartment is `<binary> compartment <role> [args…]`: the same binary, with
//! its control channel (a Unix socketpair) as stdin and its grants in the environment.
//! The monitor reads heartbeats and reports from each channel on a thread of its own,
//! restarts a compartment that exits with exponential backoff, kills one whose
//! heartbeats stop, and writes a failure report for each of these.

pub mod channel;
pub mod cli;
pub mod compartment;
pub mod frame;
pub mod manifest;
pub mod selftest;
pub mod trial;

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use frame::{FrameError, ToCompartment, ToMonitor, read_frame, write_frame};
use manifest::Manifest;

use crate::reports::{FailureKind, ReportError, ReportStore};
use crate::sandbox::{KernelSupport, SandboxMode};
use trial::{TrialCrashSink, TrialCrashVerdict};
use warden_pluton::Role;
use warden_pluton_api::LaunchTokenError;
use warden_pluton_api::launch_tokens::{
    COMPARTMENT_ROLES, LaunchTokens, ROLE_UIDS_ENV, format_role_uids,
};

/// Set by the boot stage (`warden boot`) on the image it runs: the pluton socket it
/// already serves, with the boot's measurement in its registers. The compartment whose
/// `unix_listen` is that socket is then not started (a second pluton would replace the
/// socket with fresh, unmeasured registers); the others reach the boot stage's.
pub const PLUTON_SERVED_ENV: &str = "WARDEN_PLUTON_SERVED";

/// The compartments the monitor starts: all of the manifest's but the one serving
/// `served` (the socket the boot stage's pluton serves, [`PLUTON_SERVED_ENV`]).
pub fn compartments_to_start(manifest: &Manifest, served: Option<&std::path::Path>) -> Vec<String> {
    manifest
        .compartment
        .iter()
        .filter(|(name, entry)| {
            let skip = served.is_some_and(|socket| entry.unix_listen.iter().any(|s| s == socket));
            if skip {
                tracing::info!(
                    compartment = name.as_str(),
                    "not started: the boot stage serves its socket"
                );
            }
            !skip
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Heartbeat intervals a compartment keeps beating after its first before it counts as
/// up ([`Monitor::all_up`]).
pub const UP_AFTER_HEARTBEATS: u64 = 3;

/// How the monitor runs compartments.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// The binary to run (normally this one: `std::env::current_exe()`).
    pub program: PathBuf,
    /// Arguments before the role (normally `["compartment"]`).
    pub program_prefix: Vec<String>,
    /// Production or `--insecure-dev`.
    pub mode: SandboxMode,
    /// The running image's version, stamped on reports.
    pub image_version: String,
    /// The slot the running image was booted from (`WARDEN_SLOT`), if the boot stage
    /// started it: a restart for an update is honoured only when booting again would
    /// run something else.
    pub running_slot: Option<crate::slots::Slot>,
}

/// Why [`Monitor::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorOutcome {
    /// The stop flag was raised; every compartment was stopped.
    Stopped,
    /// The image is on trial and its compartments crashed too often: the boot monitor
    /// gave its slot up; the caller reboots (into the other image).
    RolledBack {
        /// Compartment crashes reported to the boot monitor.
        crashes: u32,
        /// The boot state's reason.
        reason: String,
    },
    /// A granted compartment asked for a restart and the boot state has something new
    /// to boot (an installed update, or a trial given up); every compartment was
    /// stopped. The caller exits so the boot stage boots again.
    RestartForUpdate {
        /// The compartment that asked.
        by: String,
    },
}

/// The monitor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The kernel lacks sandbox features and the mode is production.
    #[error(
        "this kernel lacks {0}; refusing to run compartments without it (--insecure-dev allows it, for development only)"
    )]
    KernelLacks(String),
    /// The report store failed.
    #[error(transparent)]
    Reports(#[from] ReportError),
    /// A compartment could not be spawned.
    #[error("cannot start compartment `{name}`: {source}")]
    Spawn {
        /// The compartment.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// Pluton's role tokens are malformed in the environment or cannot be minted.
    #[error(transparent)]
    PlutonTokens(#[from] LaunchTokenError),
    /// The grants could not be serialised.
    #[error("cannot encode the grants of `{name}`: {detail}")]
    Grants {
        /// The compartment.
        name: String,
        /// Why.
        detail: String,
    },
}

/// One start of a compartment (for tests and the status page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRecord {
    /// The compartment.
    pub name: String,
    /// When it was started.
    pub at: Instant,
    /// The backoff it waited after its previous exit, ms (0 for the first start).
    pub delay_ms: u64,
}

/// An event from a compartment's channel: its name, its start generation, the event.
type ChannelEvent = (String, u64, Event);

enum Event {
    Frame(ToMonitor),
    Malformed(String),
    Closed,
}

struct Supervised {
    child: Option<Child>,
    control: Option<UnixStream>,
    generation: u64,
    last_heartbeat: Instant,
    /// The first heartbeat of this start, if one came.
    first_heartbeat: Option<Instant>,
    started: Instant,
    next_start: Option<Instant>,
    delay_ms: u64,
    consecutive_crashes: u32,
    panicked: bool,
    killed_by_watchdog: bool,
}

/// The supervisor of every compartment in a manifest.
pub struct Monitor {
    manifest: Manifest,
    options: MonitorOptions,
    store: ReportStore,
    supervised: BTreeMap<String, Supervised>,
    events: (mpsc::Sender<ChannelEvent>, mpsc::Receiver<ChannelEvent>),
    starts: Vec<StartRecord>,
    trial: Option<Box<dyn TrialCrashSink>>,
    trial_crashes: u32,
    rolled_back: Option<String>,
    /// The compartment whose restart request was honoured.
    restart_for_update: Option<String>,
    /// The line to print on standard error once every compartment is up
    /// ([`Monitor::announce_when_up`]); `None` once printed.
    up_announcement: Option<String>,
    /// Pluton's role tokens: inherited from the boot stage, else minted here. Pluton
    /// gets all of them, each compartment named after a role only its own.
    pluton_tokens: LaunchTokens,
}

impl Monitor {
    /// Probes the kernel (refusing production mode if a feature is missing) and opens
    /// the report store. Logs what the kernel lacks either way.
    pub fn new(manifest: Manifest, options: MonitorOptions) -> Result<Self, MonitorError> {
        let missing = KernelSupport::probe().missing();
        if !missing.is_empty() {
            let missing = missing.join(", ");
            if options.mode == SandboxMode::Enforce {
                return Err(MonitorError::KernelLacks(missing));
            }
            tracing::error!(%missing, "INSECURE: the kernel lacks sandbox features; running anyway because of --insecure-dev");
        }
        if options.mode == SandboxMode::InsecureDev {
            tracing::warn!("INSECURE DEV MODE: sandbox layers the kernel lacks are skipped");
        }
        let store = ReportStore::open(
            &manifest.monitor.report_dir,
            manifest.monitor.report_capacity,
            &options.image_version,
        )?;
        let inherited = LaunchTokens::from_env()?;
        let pluton_tokens = if inherited.is_empty() {
            LaunchTokens::mint()?
        } else {
            inherited
        };
        Ok(Self {
            pluton_tokens,
            manifest,
            options,
            store,
            supervised: BTreeMap::new(),
            events: mpsc::channel(),
            starts: Vec::new(),
            trial: None,
            trial_crashes: 0,
            rolled_back: None,
            restart_for_update: None,
            up_announcement: None,
        })
    }

    /// The running image is on trial: every compartment crash (non-zero exit, signal,
    /// watchdog kill) is reported to `sink`, and a rollback ends [`Monitor::run`].
    pub fn on_trial(&mut self, sink: Box<dyn TrialCrashSink>) {
        self.trial = Some(sink);
    }

    /// Prints `line` on standard error (Warden OS's console) once, when every
    /// compartment is up ([`Monitor::all_up`]).
    pub fn announce_when_up(&mut self, line: String) {
        self.up_announcement = Some(line);
    }

    /// Whether every compartment is up: running, and heartbeating for at least
    /// [`UP_AFTER_HEARTBEATS`] intervals since this start's first heartbeat. A
    /// compartment that fails at start (its config, its sandbox, a port it may not
    /// bind) exits before that, and its restart starts the count again.
    pub fn all_up(&self) -> bool {
        let steady = Duration::from_millis(
            self.manifest
                .monitor
                .heartbeat_interval_ms
                .saturating_mul(UP_AFTER_HEARTBEATS),
        );
        !self.supervised.is_empty()
            && self.supervised.values().all(|state| {
                state.child.is_some()
                    && state
                        .first_heartbeat
                        .is_some_and(|first| first.elapsed() >= steady)
            })
    }

    /// The report store the monitor writes to.
    pub fn reports(&self) -> &ReportStore {
        &self.store
    }

    /// Every start so far, in order.
    pub fn starts(&self) -> &[StartRecord] {
        &self.starts
    }

    /// Starts every compartment, then supervises until `stop` is raised.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<MonitorOutcome, MonitorError> {
        let served = std::env::var_os(PLUTON_SERVED_ENV).map(PathBuf::from);
        let names = compartments_to_start(&self.manifest, served.as_deref());
        if nix::unistd::geteuid().is_root() {
            for entry in self.manifest.compartment.values() {
                for path in &entry.read_write {
                    give_to_uid(path, entry.uid);
                }
                for device in &entry.serial {
                    give_device_to_uid(device, entry.uid);
                }
            }
        }
        let now = Instant::now();
        for name in names {
            self.supervised.insert(
                name,
                Supervised {
                    child: None,
                    control: None,
                    generation: 0,
                    last_heartbeat: now,
                    first_heartbeat: None,
                    started: now,
                    next_start: Some(now),
                    delay_ms: 0,
                    consecutive_crashes: 0,
                    panicked: false,
                    killed_by_watchdog: false,
                },
            );
        }
        let tick = Duration::from_millis(10);
        let outcome = loop {
            if stop.load(Ordering::SeqCst) {
                break MonitorOutcome::Stopped;
            }
            if let Some(reason) = self.rolled_back.take() {
                break MonitorOutcome::RolledBack {
                    crashes: self.trial_crashes,
                    reason,
                };
            }
            if let Some(by) = self.restart_for_update.take() {
                break MonitorOutcome::RestartForUpdate { by };
            }
            self.start_due()?;
            match self.events.1.recv_timeout(tick) {
                Ok((name, generation, event)) => self.handle(&name, generation, event),
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
            }
            self.reap();
            self.watchdog();
            if self.up_announcement.is_some()
                && self.all_up()
                && let Some(line) = self.up_announcement.take()
            {
                tracing::info!("every compartment is up");
                eprintln!("{line}");
            }
        };
        self.stop_all();
        Ok(outcome)
    }

    /// Why `name`'s restart request is refused, or `None` to honour it. Deny by
    /// default: the manifest must grant it, and the boot state must have something new
    /// to boot, so a compromised compartment cannot restart the unit at will.
    fn restart_refusal(&self, name: &str) -> Option<String> {
        let granted = self
            .manifest
            .compartment
            .get(name)
            .is_some_and(|compartment| compartment.restart_for_update);
        if !granted {
            return Some("the manifest does not grant restart_for_update".into());
        }
        let Some(boot) = &self.manifest.monitor.boot else {
            return Some("no [monitor.boot]: no boot stage to boot again".into());
        };
        match crate::boot::read_boot_state(&boot.state_dir) {
            Ok(Some(state)) if state.restart_boots_something_else(self.options.running_slot) => {
                None
            }
            Ok(Some(_)) => Some("the boot state has nothing new to boot".into()),
            Ok(None) => Some("no boot state record".into()),
            Err(error) => Some(format!("cannot read the boot state: {error}")),
        }
    }

    fn start_due(&mut self) -> Result<(), MonitorError> {
        let now = Instant::now();
        let due: Vec<String> = self
            .supervised
            .iter()
            .filter(|(_, state)| state.next_start.is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.start(&name)?;
        }
        Ok(())
    }

    fn start(&mut self, name: &str) -> Result<(), MonitorError> {
        let Some(entry) = self.manifest.compartment.get(name) else {
            return Ok(());
        };
        let grants = self
            .manifest
            .grants_for(name)
            .unwrap_or_else(|| entry.grants());
        let grants = toml::to_string(&grants).map_err(|error| MonitorError::Grants {
            name: name.to_owned(),
            detail: error.to_string(),
        })?;
        let spawn_error = |source| MonitorError::Spawn {
            name: name.to_owned(),
            source,
        };
        let (ours, theirs) = UnixStream::pair().map_err(spawn_error)?;
        let mut command = Command::new(&self.options.program);
        self.hand_pluton_roles(name, &entry.role, &mut command);
        let child = command
            .args(&self.options.program_prefix)
            .arg(&entry.role)
            .args(&entry.args)
            .env(compartment::NAME_ENV, name)
            .env(compartment::GRANTS_ENV, grants)
            .env(
                compartment::MODE_ENV,
                match self.options.mode {
                    SandboxMode::Enforce => "enforce",
                    SandboxMode::InsecureDev => "insecure-dev",
                },
            )
            .env(
                compartment::HEARTBEAT_ENV,
                self.manifest.monitor.heartbeat_interval_ms.to_string(),
            )
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            // Its own process group: a Ctrl-C at the terminal reaches only the monitor,
            // which then stops every compartment itself.
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        let reader = ours.try_clone().map_err(spawn_error)?;
        let Some(state) = self.supervised.get_mut(name) else {
            return Ok(());
        };
        state.generation += 1;
        let generation = state.generation;
        let now = Instant::now();
        state.child = Some(child);
        state.control = Some(ours);
        state.last_heartbeat = now;
        state.first_heartbeat = None;
        state.started = now;
        state.next_start = None;
        state.panicked = false;
        state.killed_by_watchdog = false;
        self.starts.push(StartRecord {
            name: name.to_owned(),
            at: now,
            delay_ms: state.delay_ms,
        });
        tracing::info!(compartment = name, generation, "compartment started");
        let sender = self.events.0.clone();
        let name = name.to_owned();
        std::thread::spawn(move || read_channel(reader, &name, generation, &sender));
        Ok(())
    }

    /// What a compartment learns at launch about pluton's roles: pluton every role's
    /// token (and, as root, every role's uid from the manifest); a compartment named
    /// after a role (`link`, `bridges`, `status-page`, `updates`) that role's token; any
    /// other compartment none.
    fn hand_pluton_roles(&self, name: &str, role: &str, command: &mut Command) {
        command.env_remove(ROLE_UIDS_ENV);
        if role == "pluton" {
            self.pluton_tokens.hand_to(command);
            if nix::unistd::geteuid().is_root() {
                let uids = self
                    .manifest
                    .compartment
                    .iter()
                    .filter_map(|(name, entry)| {
                        let role = pluton_role(name)?;
                        Some((role, entry.uid))
                    });
                command.env(ROLE_UIDS_ENV, format_role_uids(uids));
            }
            return;
        }
        match pluton_role(name) {
            Some(role) => self.pluton_tokens.only(role).hand_to(command),
            None => LaunchTokens::default().hand_to(command),
        }
    }

    fn handle(&mut self, name: &str, generation: u64, event: Event) {
        if self
            .supervised
            .get(name)
            .is_none_or(|state| state.generation != generation)
        {
            return;
        }
        if let Event::Frame(ToMonitor::OpenChannel { peer }) = event {
            if let Some(kind) = self.open_channel(name, peer) {
                self.record(name, kind);
            }
            return;
        }
        if let Event::Frame(ToMonitor::RestartForUpdate) = event {
            match self.restart_refusal(name) {
                None => {
                    tracing::warn!(
                        compartment = name,
                        "restart for an update: stopping every compartment so the boot stage boots again"
                    );
                    self.restart_for_update = Some(name.to_owned());
                }
                Some(why) => {
                    tracing::warn!(compartment = name, %why, "restart request refused");
                    self.record(
                        name,
                        FailureKind::PolicyDenied {
                            action: format!("restart for update ({why})"),
                            errno: libc::EPERM,
                        },
                    );
                }
            }
            return;
        }
        let Some(state) = self.supervised.get_mut(name) else {
            return;
        };
        let kind = match event {
            Event::Frame(ToMonitor::Heartbeat) => {
                let now = Instant::now();
                state.last_heartbeat = now;
                state.first_heartbeat.get_or_insert(now);
                return;
            }
            Event::Frame(ToMonitor::Denied { action, errno }) => {
                FailureKind::PolicyDenied { action, errno }
            }
            Event::Frame(ToMonitor::Panic { message, backtrace }) => {
                state.panicked = true;
                FailureKind::Panic { message, backtrace }
            }
            Event::Frame(ToMonitor::SandboxFailed { detail }) => {
                FailureKind::SandboxFailed { detail }
            }
            Event::Frame(ToMonitor::OpenChannel { .. } | ToMonitor::RestartForUpdate) => return,
            Event::Frame(ToMonitor::PeerFrameRejected { peer, detail }) => {
                FailureKind::MalformedFrame {
                    detail: format!("from peer `{peer}`: {detail}"),
                }
            }
            Event::Malformed(detail) => {
                // The reader thread has stopped; closing our end ends the channel.
                if let Some(control) = state.control.take() {
                    let _ = control.shutdown(std::net::Shutdown::Both);
                }
                FailureKind::MalformedFrame { detail }
            }
            Event::Closed => {
                tracing::debug!(
                    compartment = name,
                    "control channel closed by the compartment"
                );
                return;
            }
        };
        self.record(name, kind);
    }

    /// Grants or denies `name`'s request for a channel to `peer`; a denial is returned
    /// as the failure to report. A granted channel is a fresh socketpair, one end sent
    /// to each side over its control channel.
    fn open_channel(&mut self, name: &str, peer: String) -> Option<FailureKind> {
        let allowed = self
            .manifest
            .compartment
            .get(name)
            .is_some_and(|entry| entry.peers.contains(&peer));
        let requester = self.supervised.get(name)?.control.as_ref()?;
        let deny = |requester: &UnixStream, peer: String| {
            let mut writer = requester;
            let _ = write_frame(&mut writer, &ToCompartment::ChannelDenied { peer });
        };
        if !allowed {
            deny(requester, peer.clone());
            return Some(FailureKind::PeerDenied { peer });
        }
        let target = self
            .supervised
            .get(&peer)
            .and_then(|state| state.control.as_ref());
        let handed_out = target.and_then(|target| {
            let (ours, theirs) = UnixStream::pair().ok()?;
            let offer = ToCompartment::ChannelOffered {
                peer: name.to_owned(),
            };
            channel::send_frame_with_fd(target, &offer, theirs.as_fd()).ok()?;
            let grant = ToCompartment::ChannelGranted { peer: peer.clone() };
            channel::send_frame_with_fd(requester, &grant, ours.as_fd()).ok()
        });
        if handed_out.is_none() {
            tracing::warn!(compartment = name, %peer, "peer is not running; channel refused");
            deny(requester, peer);
        }
        None
    }

    fn record(&self, name: &str, kind: FailureKind) {
        tracing::warn!(compartment = name, failure = %kind.summary(), "failure report");
        if let Err(error) = self.store.record(name, kind) {
            tracing::error!(%error, "cannot persist a failure report");
        }
    }

    fn reap(&mut self) {
        let settings = &self.manifest.monitor;
        let mut reports = Vec::new();
        let mut crashed = Vec::new();
        for (name, state) in &mut self.supervised {
            let Some(child) = state.child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) | Err(_) => continue,
            };
            state.child = None;
            state.control = None;
            let ran = state.started.elapsed();
            if ran > Duration::from_millis(settings.restart_backoff_max_ms) {
                state.consecutive_crashes = 0;
            }
            state.consecutive_crashes += 1;
            let exponent = state.consecutive_crashes.saturating_sub(1).min(20);
            let delay = settings
                .restart_backoff_initial_ms
                .saturating_mul(1 << exponent)
                .min(settings.restart_backoff_max_ms);
            state.next_start = Some(Instant::now() + Duration::from_millis(delay));
            state.delay_ms = delay;
            tracing::warn!(compartment = %name, %status, restart_in_ms = delay, "compartment exited");
            if !status.success() {
                crashed.push(name.clone());
            }
            if state.panicked || state.killed_by_watchdog {
                continue;
            }
            if let Some(signal) = status.signal() {
                reports.push((name.clone(), FailureKind::Signaled { signal }));
            } else if let Some(code) = status.code().filter(|code| *code != 0) {
                reports.push((name.clone(), FailureKind::Exited { code }));
            }
        }
        for (name, kind) in reports {
            self.record(&name, kind);
        }
        for name in crashed {
            self.report_trial_crash(&name);
        }
    }

    /// On a trial image, one more crash for the boot monitor; a rollback is recorded
    /// and ends the run.
    fn report_trial_crash(&mut self, name: &str) {
        let Some(sink) = self.trial.as_mut() else {
            return;
        };
        self.trial_crashes += 1;
        match sink.compartment_crashed(name) {
            Ok(TrialCrashVerdict::Restart) => {}
            Ok(TrialCrashVerdict::RolledBack { reason }) => {
                let kind = FailureKind::RebootReason {
                    reason: format!("trial image rolled back after `{name}` crashed: {reason}"),
                };
                self.record("monitor", kind);
                self.rolled_back = Some(reason);
            }
            Err(error) => {
                tracing::error!(compartment = name, %error, "cannot report a trial crash to the boot monitor");
            }
        }
    }

    fn watchdog(&mut self) {
        let timeout = Duration::from_millis(self.manifest.monitor.watchdog_timeout_ms);
        let mut reports = Vec::new();
        for (name, state) in &mut self.supervised {
            if state.killed_by_watchdog {
                continue;
            }
            let Some(child) = state.child.as_mut() else {
                continue;
            };
            let silent = state.last_heartbeat.elapsed();
            if silent > timeout {
                let _ = child.kill();
                state.killed_by_watchdog = true;
                let silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
                reports.push((name.clone(), FailureKind::WatchdogExpired { silent_ms }));
            }
        }
        for (name, kind) in reports {
            self.record(&name, kind);
        }
    }

    fn stop_all(&mut self) {
        for state in self.supervised.values_mut() {
            if let Some(mut child) = state.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            state.control = None;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The pluton role of the compartment named `name`, if it is named after one.
fn pluton_role(name: &str) -> Option<Role> {
    Role::from_name(name).filter(|role| COMPARTMENT_ROLES.contains(role))
}

/// Makes `path` (recursively, not following symlinks) owned by `uid`:`uid`, so the
/// compartment can use what its manifest grants after dropping root. A path that does
/// not exist is left alone: the compartment's sandbox then names it and fails.
fn give_to_uid(path: &std::path::Path, uid: u32) {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return;
    };
    if let Err(error) = std::os::unix::fs::lchown(path, Some(uid), Some(uid)) {
        tracing::warn!(path = %path.display(), uid, %error, "cannot hand a granted path to its compartment");
    }
    if metadata.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            give_to_uid(&entry.path(), uid);
        }
    }
}

/// Makes a granted device node `uid`'s unless everyone may already read and write it
/// (`/dev/net/tun`, mode 0666): the host's ownership of such a shared node is not the
/// appliance's to change, and the compartment's sandbox limits its use anyway.
fn give_device_to_uid(path: &std::path::Path, uid: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let world_read_write = std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.permissions().mode() & 0o006 == 0o006);
    if !world_read_write {
        give_to_uid(path, uid);
    }
}

fn read_channel(
    mut reader: UnixStream,
    name: &str,
    generation: u64,
    sender: &mpsc::Sender<ChannelEvent>,
) {
    loop {
        let event = match read_frame::<ToMonitor>(&mut reader) {
            Ok(Some(message)) => Event::Frame(message),
            Ok(None) => Event::Closed,
            Err(FrameError::Io(error)) => {
                tracing::debug!(compartment = name, %error, "control channel closed");
                Event::Closed
            }
            Err(error) => Event::Malformed(error.to_string()),
        };
        let last = !matches!(event, Event::Frame(_));
        if sender.send((name.to_owned(), generation, event)).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    #[test]
    fn a_world_usable_device_keeps_its_owner_and_a_private_one_is_handed_over() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing owners needs root (CI runs it as root)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("tun");
        let private = dir.path().join("ttyS9");
        for (path, mode) in [(&shared, 0o666), (&private, 0o660)] {
            std::fs::write(path, b"").expect("node");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        give_device_to_uid(&shared, 61_002);
        give_device_to_uid(&private, 61_002);
        let owner = |path: &std::path::Path| std::fs::metadata(path).expect("stat").uid();
        assert_eq!(owner(&shared), 0, "a 0666 node stays the host's");
        assert_eq!(
            owner(&private),
            61_002,
            "a private node goes to its compartment"
        );
    }

    #[test]
    fn the_compartment_serving_the_boot_stages_pluton_socket_is_not_started() {
        let manifest = Manifest::parse(
            include_str!("../../../appliance/manifest.toml"),
            "appliance/manifest.toml",
        )
        .expect("the shipped manifest");
        let all = compartments_to_start(&manifest, None);
        assert!(all.iter().any(|name| name == "pluton"));
        let served = std::path::Path::new("/run/warden/pluton/pluton.sock");
        let started = compartments_to_start(&manifest, Some(served));
        assert!(!started.iter().any(|name| name == "pluton"));
        assert_eq!(started.len(), all.len() - 1, "only pluton is left out");
    }
}
