//! `warden boot`: the boot stage that selects a slot, runs its image and reboots it.
//!
//! The boot stage is the installed binary (never a slot's image) and plays the part of
//! the machine's boot ROM and power cycle:
//!
//! 1. it starts pluton (this binary's `pluton` command) on the unit's pluton state, so
//!    every boot starts with fresh measurement registers, as a real reboot would, and
//!    mints the role tokens pluton and the image get at launch
//!    (`warden_pluton_api::launch_tokens`);
//! 2. the boot monitor ([`BootMonitor::select_boot`]) picks the slot, verifies its
//!    image and measures it into pluton's boot registers (as the boot role, with the
//!    provisioning capability), then latches them (`EndBoot`): from then on no process
//!    on the unit can extend them until the next boot;
//! 3. [`launch::command`] unpacks the verified payload (hashing it again) and the image
//!    runs with `WARDEN_SLOT`, `WARDEN_TRIAL` and the trial deadline in its
//!    environment;
//! 4. when the image exits, the boot stage decides ([`after_exit`]):
//!    - [`RESTART_EXIT_CODE`]: the image installed an update, gave up its trial or was
//!      rolled back by its own monitor: boot again at once;
//!    - `0`: a requested stop: the boot stage stops too;
//!    - anything else is a crash, written to the failure-report ring: on a slot still on
//!      trial it is reported to the boot monitor ([`BootMonitor::report_crash`]), whose
//!      K-th crash gives the slot up, and the next boot runs the other image; a
//!      confirmed image is restarted after a backoff that doubles up to a maximum.
//!
//!    Under Warden OS (PID 1 started the boot stage, [`BootPlan::machine_reboots`])
//!    each of these "boot again" ends the boot stage instead, after the same
//!    bookkeeping, and PID 1 reboots the machine (`reboot(2)`): a TPM's registers
//!    cannot be reset by a process, only by a reboot.
//!
//! Confirmation has one mechanism: the image itself judges its trial with
//! [`warden_os::TrialHealthCheck`] (link up, bridges healthy) and calls
//! [`BootMonitor::confirm`] (see `crate::updates`). The boot stage only enforces the
//! deadline as a backstop for an image that hangs: a slot still on trial after the
//! deadline and a grace period is stopped and given up.

use std::path::PathBuf;
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use warden_os::PlutonRootOfTrust;
use warden_os::boot::{BootConfig, BootDecision, BootError, BootMonitor};
use warden_os::file_system::StdFileSystem;
use warden_os::image::ProductId;
use warden_os::launch::{self, RESTART_EXIT_CODE};
use warden_os::monitor::PLUTON_SERVED_ENV;
use warden_os::monitor::manifest::Manifest;
use warden_os::monitor::trial::TRIAL_DEADLINE_ENV;
use warden_os::reports::{FailureKind, ReportStore};
use warden_os::root_of_trust::RootOfTrustError;
use warden_os::slots::{CrashVerdict, Slot, SlotStatus};
use warden_pluton_api::launch_tokens::LaunchTokens;

/// The compartment name the boot stage files an image's own crash under.
pub const IMAGE_COMPARTMENT: &str = "image";
/// How long a stopping image or pluton gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the running image is looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long pluton gets to listen on its socket.
const PLUTON_START: Duration = Duration::from_secs(10);
/// Failure reports the boot stage keeps (the monitor's ring, same directory).
const REPORT_CAPACITY: usize = 256;

/// Options of `warden boot`.
///
/// With `--manifest` (the packaged unit, the OS image), the unit's facts come from the
/// compartment manifest's `[monitor]` and `[monitor.boot]` (product, state directory,
/// pluton socket and capability, report ring) and pluton's state directory from the
/// manifest's `pluton` compartment: one place for each, so the flags that would repeat
/// them conflict with it.
#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// The compartment manifest the image runs (`run --manifest` names the same file):
    /// the boot stage takes the unit's facts from it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The boot monitor's state directory: `slots/a.wim`, `slots/b.wim`, `boot/state`
    /// (the provisioning station's layout of `/var/lib/warden`) [default:
    /// /var/lib/warden].
    #[arg(long, conflicts_with = "manifest")]
    pub state_dir: Option<PathBuf>,
    /// Where the chosen image's payload is unpacked (`<run-dir>/<slot>/bin/warden`).
    #[arg(long, default_value = "/run/warden/image")]
    pub run_dir: PathBuf,
    /// This unit's product (images for another product never boot).
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    pub product: Option<String>,
    /// Pluton's state directory (identity, counters); pluton is started on it at every
    /// boot [default: /var/lib/warden/pluton].
    #[arg(long, conflicts_with = "manifest")]
    pub pluton_state_dir: Option<PathBuf>,
    /// The socket pluton serves (the image's config names the same one) [default:
    /// /run/warden/pluton/pluton.sock].
    #[arg(long, conflicts_with = "manifest")]
    pub pluton_socket: Option<PathBuf>,
    /// Where pluton keeps its keys: `software` or `tpm` (`warden pluton --backend`).
    /// Default: the backend pluton's state directory belongs to (the station's choice).
    #[arg(long, value_parser = ["software", "tpm"])]
    pub pluton_backend: Option<String>,
    /// The TPM's TCTI with `--pluton-backend tpm`.
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    pub pluton_tcti: String,
    /// Pluton's provisioning capability (default: `provisioning.capability` in its
    /// state directory).
    #[arg(long, conflicts_with = "manifest")]
    pub capability_file: Option<PathBuf>,
    /// The failure-report ring (the manifest's `report_dir`, the config's `[reports]`)
    /// [default: /var/lib/warden/reports].
    #[arg(long, conflicts_with = "manifest")]
    pub report_dir: Option<PathBuf>,
    /// How long a trial image has to confirm itself healthy.
    #[arg(long, default_value_t = 300)]
    pub trial_deadline_secs: u64,
    /// First pause before a crashed confirmed image is started again.
    #[arg(long, default_value_t = 1000)]
    pub restart_backoff_initial_ms: u64,
    /// Longest pause between restarts of a crashing confirmed image.
    #[arg(long, default_value_t = 60_000)]
    pub restart_backoff_max_ms: u64,
    /// The image's arguments, after `--` (e.g. `run --manifest /etc/warden/manifest.toml`).
    #[arg(last = true, required = true)]
    pub image_args: Vec<String>,
}

/// `warden boot`'s settings once the manifest (if any) has been read.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The boot monitor's state directory.
    pub state_dir: PathBuf,
    /// Where payloads are unpacked.
    pub run_dir: PathBuf,
    /// This unit's product.
    pub product: String,
    /// Pluton's state directory.
    pub pluton_state_dir: PathBuf,
    /// Pluton's socket.
    pub pluton_socket: PathBuf,
    /// Pluton's key backend, if chosen here.
    pub pluton_backend: Option<String>,
    /// The TPM's TCTI.
    pub pluton_tcti: String,
    /// Pluton's provisioning capability.
    pub capability_file: PathBuf,
    /// The failure-report ring.
    pub report_dir: PathBuf,
    /// The uid and gid pluton's socket is handed to (the manifest's `pluton`
    /// compartment, whose gid the monitor gives the compartments allowed to call it);
    /// `None` leaves it the boot stage's.
    pub pluton_owner: Option<u32>,
    trial_deadline_secs: u64,
    restart_backoff_initial_ms: u64,
    restart_backoff_max_ms: u64,
    /// The image's arguments.
    pub image_args: Vec<String>,
    /// Under Warden OS (PID 1 set [`crate::os_init::CONSOLE_ENV`]): every "boot again"
    /// ends the boot stage instead, and PID 1 reboots the machine (`reboot(2)`), so
    /// the TPM's measurement registers start afresh and the next slot is measured
    /// alone, as on a power cycle. Otherwise the boot stage plays the power cycle
    /// itself and boots again in its loop.
    pub machine_reboots: bool,
}

/// The role of the manifest's compartment that serves pluton.
const PLUTON_ROLE: &str = "pluton";

impl BootArgs {
    /// The settings, from the manifest when one is named, else from the flags and their
    /// defaults.
    pub fn plan(self) -> anyhow::Result<BootPlan> {
        let mut plan = BootPlan {
            state_dir: self
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/warden")),
            run_dir: self.run_dir,
            product: self.product.unwrap_or_default(),
            pluton_state_dir: self
                .pluton_state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/warden/pluton")),
            pluton_socket: self
                .pluton_socket
                .unwrap_or_else(|| PathBuf::from("/run/warden/pluton/pluton.sock")),
            pluton_backend: self.pluton_backend,
            pluton_tcti: self.pluton_tcti,
            capability_file: PathBuf::new(),
            report_dir: self
                .report_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/warden/reports")),
            pluton_owner: None,
            trial_deadline_secs: self.trial_deadline_secs,
            restart_backoff_initial_ms: self.restart_backoff_initial_ms,
            restart_backoff_max_ms: self.restart_backoff_max_ms,
            image_args: self.image_args,
            machine_reboots: std::env::var_os(crate::os_init::CONSOLE_ENV).is_some(),
        };
        plan.capability_file = self
            .capability_file
            .unwrap_or_else(|| plan.pluton_state_dir.join("provisioning.capability"));
        if let Some(path) = &self.manifest {
            let manifest = Manifest::load(path)?;
            plan.take_from_manifest(&manifest)
                .with_context(|| format!("manifest {}", path.display()))?;
        }
        Ok(plan)
    }
}

impl BootPlan {
    fn take_from_manifest(&mut self, manifest: &Manifest) -> anyhow::Result<()> {
        let boot = manifest
            .monitor
            .boot
            .as_ref()
            .context("[monitor.boot] is missing: the boot stage takes the product, state directory and pluton socket from it")?;
        self.state_dir.clone_from(&boot.state_dir);
        self.product.clone_from(&boot.product);
        self.pluton_socket.clone_from(&boot.pluton_socket);
        self.capability_file.clone_from(&boot.capability_file);
        self.report_dir.clone_from(&manifest.monitor.report_dir);
        let (name, pluton) = manifest
            .unix_listener_of(&boot.pluton_socket)
            .with_context(|| {
                format!(
                    "no compartment serves the pluton socket {} ([monitor.boot] pluton_socket)",
                    boot.pluton_socket.display()
                )
            })?;
        anyhow::ensure!(
            pluton.role == PLUTON_ROLE,
            "compartment {name:?} serves the pluton socket but its role is {:?}",
            pluton.role
        );
        self.pluton_state_dir = flag_value(&pluton.args, "--state-dir")
            .map(PathBuf::from)
            .with_context(|| format!("compartment {name:?} names no --state-dir in its args"))?;
        self.pluton_owner = Some(pluton.uid);
        Ok(())
    }

    fn trial_deadline(&self) -> Duration {
        Duration::from_secs(self.trial_deadline_secs.max(1))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.restart_backoff_initial_ms.max(1)),
            Duration::from_millis(self.restart_backoff_max_ms.max(1)),
        )
    }
}

/// The value after `flag` in `args` (`--flag value` or `--flag=value`).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// How an image's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageExit {
    /// It exited 0: it was asked to stop.
    Stopped,
    /// It exited with [`RESTART_EXIT_CODE`]: boot again now.
    RestartRequested,
    /// Anything else: a crash.
    Crashed(FailureKind),
}

/// Classifies an exit status.
pub fn classify(status: ExitStatus) -> ImageExit {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(0), _) => ImageExit::Stopped,
        (Some(code), _) if code == i32::from(RESTART_EXIT_CODE) => ImageExit::RestartRequested,
        (Some(code), _) => ImageExit::Crashed(FailureKind::Exited { code }),
        (None, Some(signal)) => ImageExit::Crashed(FailureKind::Signaled { signal }),
        (None, None) => ImageExit::Crashed(FailureKind::Exited { code: -1 }),
    }
}

/// What the boot stage does after the image ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextBoot {
    /// Stop booting (exit 0).
    Stop,
    /// Boot again at once.
    Now,
    /// Report a crash of the trial slot to the boot monitor, then boot again (the boot
    /// monitor picks the other slot once the trial is given up).
    ReportTrialCrash(Slot),
    /// Boot the same (confirmed) image again after a backoff.
    RestartAfterBackoff,
}

/// The decision after the image that ran from `slot` ended with `exit`, the slot's
/// status read *after* the exit (its monitor may have confirmed it, or rolled it back
/// already and counted those crashes itself).
pub fn after_exit(slot: Slot, exit: &ImageExit, status_after: &SlotStatus) -> NextBoot {
    match exit {
        ImageExit::Stopped => NextBoot::Stop,
        ImageExit::RestartRequested => NextBoot::Now,
        ImageExit::Crashed(_) => match status_after {
            SlotStatus::Trial { .. } => NextBoot::ReportTrialCrash(slot),
            // Given up meanwhile (by the image's monitor, or verification): the next
            // selection runs the other slot.
            SlotStatus::Failed { .. } | SlotStatus::Empty | SlotStatus::Pending(_) => NextBoot::Now,
            SlotStatus::Confirmed(_) => NextBoot::RestartAfterBackoff,
        },
    }
}

/// Restart pauses for a crashing confirmed image: doubling from `initial` to `max`,
/// back to `initial` once the image ran for `max` without crashing.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The pause after an image that ran for `ran_for` crashed.
    pub fn after_crash(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.max {
            self.next = self.initial;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// The image asked for a restart (not a crash): start over from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Pluton as a child of the boot stage, for one boot (killed and reaped on drop).
struct PlutonProcess {
    child: Child,
}

impl PlutonProcess {
    /// Starts pluton with every role's launch token (`tokens`): it accepts each in
    /// `Authenticate`, the image holds them, and a monitor in the image hands each
    /// compartment its own.
    fn start(args: &BootPlan, tokens: &LaunchTokens) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this binary to start pluton")?;
        if let Some(parent) = args.pluton_socket.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let _ = std::fs::remove_file(&args.pluton_socket);
        let mut command = std::process::Command::new(&exe);
        tokens.hand_to(&mut command);
        command
            .arg("pluton")
            .arg("--socket")
            .arg(&args.pluton_socket)
            .arg("--state-dir")
            .arg(&args.pluton_state_dir)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--tcti")
            .arg(&args.pluton_tcti);
        if let Some(backend) = &args.pluton_backend {
            command.arg("--backend").arg(backend);
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start pluton ({})", exe.display()))?;
        let mut pluton = Self { child };
        let deadline = Instant::now() + PLUTON_START;
        loop {
            if warden_pluton_api::PlutonClient::connect(&args.pluton_socket).is_ok() {
                hand_socket_to_pluton_compartment(args)?;
                return Ok(pluton);
            }
            if let Some(status) = pluton.child.try_wait()? {
                anyhow::bail!(
                    "pluton on {} exited with {status} before it listened",
                    args.pluton_state_dir.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pluton did not listen on {} within {PLUTON_START:?}",
                args.pluton_socket.display()
            );
            std::thread::sleep(POLL);
        }
    }
}

/// As root with a manifest, pluton's socket (mode 0660) goes to the `pluton`
/// compartment's uid and gid: the monitor gives that gid to exactly the compartments
/// whose `unix_connect` names the socket, as if the compartment served it.
fn hand_socket_to_pluton_compartment(args: &BootPlan) -> anyhow::Result<()> {
    let Some(owner) = args.pluton_owner else {
        return Ok(());
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::chown(&args.pluton_socket, Some(owner), Some(owner)).with_context(|| {
        format!(
            "cannot hand pluton's socket {} to uid {owner}",
            args.pluton_socket.display()
        )
    })
}

impl Drop for PlutonProcess {
    fn drop(&mut self) {
        let _ = launch::stop(&mut self.child, STOP_GRACE);
    }
}

type Monitor = BootMonitor<StdFileSystem, PlutonRootOfTrust>;

fn connect_monitor(args: &BootPlan, product: ProductId) -> Result<Monitor, RootOfTrustError> {
    let root_of_trust =
        PlutonRootOfTrust::connect(&args.pluton_socket, &args.capability_file, Vec::new())?;
    Ok(BootMonitor::new(
        StdFileSystem::new(&args.state_dir),
        root_of_trust,
        BootConfig::new(product),
    ))
}

fn record(args: &BootPlan, version: &str, kind: FailureKind) {
    let stored = ReportStore::open(&args.report_dir, REPORT_CAPACITY, version)
        .and_then(|store| store.record(IMAGE_COMPARTMENT, kind));
    if let Err(error) = stored {
        tracing::error!(%error, dir = %args.report_dir.display(), "cannot record a failure report");
    }
}

/// Sleeps `pause` unless `stop` is raised first; `false` if it was.
fn pause_unless_stopped(pause: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::SeqCst)
}

/// How one boot ended.
enum BootEnd {
    /// The image exited (or could not start: `None` status, with the reason).
    Exited(ImageExit),
    /// Stop was requested; the image was stopped.
    StopRequested,
    /// The trial passed its deadline unconfirmed; the image was stopped.
    TrialDeadline,
}

/// Boots until `stop` is raised or the image stops by itself; an error only when no
/// slot can be booted at all (or pluton cannot run).
pub fn run_blocking(args: &BootPlan, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let product = ProductId::new(&args.product)
        .with_context(|| format!("--product {:?} is not a product id", args.product))?;
    let image_args: Vec<&str> = args.image_args.iter().map(String::as_str).collect();
    let mut backoff = args.backoff();
    while !stop.load(Ordering::SeqCst) {
        // Fresh role tokens at every boot, as a power cycle would give.
        let tokens = LaunchTokens::mint().context("minting pluton's role tokens")?;
        let pluton = PlutonProcess::start(args, &tokens)?;
        let mut monitor = connect_monitor(args, product).context("boot root of trust")?;
        let decision = match monitor.select_boot() {
            Ok(decision) => decision,
            Err(error @ BootError::NoBootableImage(_)) => {
                record(
                    args,
                    "",
                    FailureKind::RebootReason {
                        reason: error.to_string(),
                    },
                );
                return Err(error.into());
            }
            Err(error) => return Err(error).context("boot selection"),
        };
        // Measured: latch the boot registers before anything of the image runs, so no
        // process on the unit can extend them with a measurement of its choosing.
        monitor
            .root_of_trust()
            .end_boot()
            .context("latching pluton's boot registers")?;
        let version = decision.version.to_string();
        if std::env::var_os(crate::os_init::CONSOLE_ENV).is_some() {
            // Warden OS's console: the verified, measured slot, before anything of it runs.
            eprintln!(
                "warden-os: verified slot={} version={version} measurement={}",
                decision.slot.name(),
                launch::measurement_hex(&decision.measurement)
            );
        }
        for (slot, reason) in &decision.given_up {
            record(
                args,
                &version,
                FailureKind::RebootReason {
                    reason: format!("slot {slot} given up at boot: {reason}"),
                },
            );
        }
        tracing::info!(slot = %decision.slot, %version, trial = decision.trial, "booting");
        let started = Instant::now();
        let end = run_image(args, &decision, &image_args, &tokens, &mut monitor, stop);
        let ran_for = started.elapsed();
        let exit = match end {
            BootEnd::StopRequested => break,
            BootEnd::TrialDeadline => {
                match monitor.trial_timed_out(decision.slot) {
                    Ok(reason) => record(
                        args,
                        &version,
                        FailureKind::RebootReason {
                            reason: format!("slot {} rolled back: {reason}", decision.slot),
                        },
                    ),
                    Err(error) => tracing::warn!(%error, "cannot give the trial up"),
                }
                if args.machine_reboots {
                    return Ok(reboot_the_machine("the trial passed its deadline"));
                }
                continue;
            }
            BootEnd::Exited(exit) => exit,
        };
        if let ImageExit::Crashed(kind) = &exit {
            tracing::error!(slot = %decision.slot, %version, what = %kind.summary(), "the image crashed");
            record(args, &version, kind.clone());
        }
        let status_after = monitor
            .load_state()
            .map(|state| state.slot(decision.slot).clone())
            .unwrap_or(SlotStatus::Empty);
        match after_exit(decision.slot, &exit, &status_after) {
            NextBoot::Stop => {
                tracing::info!("the image stopped; the boot stage stops");
                drop(pluton);
                return Ok(ExitCode::SUCCESS);
            }
            NextBoot::Now => {
                tracing::info!(slot = %decision.slot, "the image asked to boot again");
                backoff.reset();
            }
            NextBoot::ReportTrialCrash(slot) => match monitor.report_crash(slot) {
                Ok(CrashVerdict::RolledBack(reason)) => {
                    tracing::error!(%slot, %version, %reason, "trial rolled back");
                    record(
                        args,
                        &version,
                        FailureKind::RebootReason {
                            reason: format!(
                                "slot {slot} (version {version}) rolled back: {reason}"
                            ),
                        },
                    );
                }
                Ok(CrashVerdict::Restart) => {
                    // Bounded by the trial policy (K crashes), but never a busy loop.
                    if !pause_unless_stopped(backoff.after_crash(ran_for), stop) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot report the crash to the boot monitor");
                    if !pause_unless_stopped(backoff.after_crash(ran_for), stop) {
                        break;
                    }
                }
            },
            NextBoot::RestartAfterBackoff => {
                let pause = backoff.after_crash(ran_for);
                tracing::warn!(?pause, "restarting the confirmed image after a pause");
                if !pause_unless_stopped(pause, stop) {
                    break;
                }
            }
        }
        if args.machine_reboots {
            return Ok(reboot_the_machine(match exit {
                ImageExit::RestartRequested => "the image asked to boot again",
                _ => "the image crashed",
            }));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Under Warden OS, the boot stage ends where it would boot again: it says why on the
/// console and PID 1 reboots the machine (`crate::os_init`).
fn reboot_the_machine(why: &str) -> ExitCode {
    tracing::info!(why, "ending the boot stage: the machine reboots");
    eprintln!("warden-os: reboot: {why}");
    ExitCode::SUCCESS
}

fn run_image(
    args: &BootPlan,
    decision: &BootDecision,
    image_args: &[&str],
    tokens: &LaunchTokens,
    monitor: &mut Monitor,
    stop: &AtomicBool,
) -> BootEnd {
    let deadline = args.trial_deadline();
    let spawned = launch::command(decision, &args.state_dir, &args.run_dir, image_args)
        .map_err(|error| error.to_string())
        .and_then(|mut command| {
            tokens.hand_to(&mut command);
            command
                .env(TRIAL_DEADLINE_ENV, deadline.as_millis().to_string())
                // The monitor in the image must not start a second pluton on the
                // socket: the one the boot stage started holds this boot's measurement.
                .env(PLUTON_SERVED_ENV, &args.pluton_socket)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|error| format!("cannot start the image: {error}"))
        });
    let mut child = match spawned {
        Ok(child) => child,
        Err(reason) => {
            tracing::error!(slot = %decision.slot, %reason, "the image did not start");
            return BootEnd::Exited(ImageExit::Crashed(FailureKind::RebootReason { reason }));
        }
    };
    // The backstop: the image confirms itself by the deadline; this waits a grace
    // period longer before it gives the trial up.
    let trial_ends = decision
        .trial
        .then(|| Instant::now() + deadline + deadline / 4 + Duration::from_secs(5));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return BootEnd::Exited(classify(status)),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot wait for the image"),
        }
        if stop.load(Ordering::SeqCst) {
            let _ = launch::stop(&mut child, STOP_GRACE);
            return BootEnd::StopRequested;
        }
        if trial_ends.is_some_and(|end| Instant::now() > end) {
            let still_on_trial = monitor
                .load_state()
                .is_ok_and(|state| matches!(state.slot(decision.slot), SlotStatus::Trial { .. }));
            if still_on_trial {
                tracing::error!(slot = %decision.slot, "the trial image did not confirm itself in time; stopping it");
                let _ = launch::stop(&mut child, STOP_GRACE);
                return BootEnd::TrialDeadline;
            }
        }
        std::thread::sleep(POLL);
    }
}

/// `warden boot`: boots until SIGTERM or Ctrl-C, which stop the image first.
pub async fn run(args: BootArgs) -> anyhow::Result<ExitCode> {
    let args = args.plan()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let mut booting = tokio::task::spawn_blocking(move || run_blocking(&args, &flag));
    tokio::select! {
        result = &mut booting => result?,
        () = crate::signals::wait_for_stop() => {
            stop.store(true, Ordering::SeqCst);
            booting.await?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;
    use warden_os::slots::{FailureReason, ImageSummary};

    const IMAGE: ImageSummary = ImageSummary {
        version: [1, 0, 0],
        security_counter: 1,
        measurement: [7; 32],
    };

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        boot: BootArgs,
    }

    fn parse(args: &[&str]) -> Result<BootArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("boot").chain(args.iter().copied())).map(|cli| cli.boot)
    }

    #[test]
    fn the_manifest_names_the_units_facts_once() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/manifest.toml");
        let plan = parse(&["--manifest", manifest, "--", "run"])
            .expect("flags")
            .plan()
            .expect("the shipped manifest");
        assert_eq!(plan.product, "press-guardian");
        assert_eq!(plan.state_dir, PathBuf::from("/var/lib/warden"));
        assert_eq!(
            plan.pluton_socket,
            PathBuf::from("/run/warden/pluton/pluton.sock")
        );
        assert_eq!(
            plan.pluton_state_dir,
            PathBuf::from("/var/lib/warden/pluton")
        );
        assert_eq!(
            plan.capability_file,
            PathBuf::from("/var/lib/warden/pluton/provisioning.capability")
        );
        assert_eq!(plan.report_dir, PathBuf::from("/var/lib/warden/reports"));
        assert_eq!(plan.pluton_owner, Some(61001));
        assert!(
            parse(&["--manifest", manifest, "--product", "other", "--", "run"]).is_err(),
            "a flag repeating a manifest fact is refused"
        );
        assert!(
            parse(&["--", "run"]).is_err(),
            "without a manifest the product is required"
        );
        let plan = parse(&["--product", "p", "--state-dir", "/s", "--", "run"])
            .expect("flags")
            .plan()
            .expect("plan");
        assert_eq!(
            plan.capability_file,
            PathBuf::from("/var/lib/warden/pluton/provisioning.capability")
        );
        assert_eq!(plan.state_dir, PathBuf::from("/s"));
        assert_eq!(plan.pluton_owner, None);
    }

    #[test]
    fn exit_statuses_are_stop_restart_or_crash() {
        assert_eq!(classify(ExitStatus::from_raw(0)), ImageExit::Stopped);
        assert_eq!(
            classify(ExitStatus::from_raw(i32::from(RESTART_EXIT_CODE) << 8)),
            ImageExit::RestartRequested
        );
        assert_eq!(
            classify(ExitStatus::from_raw(3 << 8)),
            ImageExit::Crashed(FailureKind::Exited { code: 3 })
        );
        assert_eq!(
            classify(ExitStatus::from_raw(6)),
            ImageExit::Crashed(FailureKind::Signaled { signal: 6 })
        );
    }

    #[test]
    fn crashes_count_only_while_the_slot_is_still_on_trial() {
        let crash = ImageExit::Crashed(FailureKind::Exited { code: 1 });
        let trial = SlotStatus::Trial {
            image: IMAGE,
            boots: 1,
            crashes: 0,
        };
        assert_eq!(
            after_exit(Slot::B, &crash, &trial),
            NextBoot::ReportTrialCrash(Slot::B)
        );
        let rolled_back = SlotStatus::Failed {
            image: Some(IMAGE),
            reason: FailureReason::CrashedTooOften(3),
        };
        assert_eq!(
            after_exit(Slot::B, &crash, &rolled_back),
            NextBoot::Now,
            "the image's monitor counted these crashes already"
        );
        assert_eq!(
            after_exit(Slot::A, &crash, &SlotStatus::Confirmed(IMAGE)),
            NextBoot::RestartAfterBackoff
        );
        assert_eq!(
            after_exit(Slot::A, &ImageExit::RestartRequested, &trial),
            NextBoot::Now
        );
        assert_eq!(
            after_exit(Slot::A, &ImageExit::Stopped, &SlotStatus::Confirmed(IMAGE)),
            NextBoot::Stop
        );
    }

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets_after_a_stable_run() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let quick = Duration::from_millis(10);
        let pauses: Vec<u128> = (0..5)
            .map(|_| backoff.after_crash(quick).as_millis())
            .collect();
        assert_eq!(pauses, vec![100, 200, 400, 500, 500]);
        assert_eq!(
            backoff.after_crash(Duration::from_secs(1)).as_millis(),
            100,
            "a run as long as the maximum pause starts over"
        );
        backoff.after_crash(quick);
        backoff.reset();
        assert_eq!(backoff.after_crash(quick).as_millis(), 100);
    }
}
