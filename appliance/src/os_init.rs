//! PID-1 mode of `warden boot`: Warden OS's init, run by the kernel as the initramfs's
//! `/init` (the `warden` binary itself, entered when its process id is 1).
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs);
//! 2. loads the kernel modules listed in [`MODULE_LIST`] (the image build writes them in
//!    dependency order) with `finit_module`;
//! 3. finds the disk's partitions by their GPT names ([`STATE_PARTITION`],
//!    [`SLOT_PARTITIONS`]; the kernel's `PARTNAME` in `/sys/class/block/*/uevent`);
//! 4. mounts the state partition (ext4, read-write) at the manifest's state directory
//!    and each root slot (erofs, read-only) under [`SLOTS_MOUNT`];
//! 5. starts the boot stage (`warden boot --manifest … -- run --manifest …`) as its
//!    child and from then on only reaps: its own child and every orphan the kernel
//!    hands to PID 1.
//!
//! PID 1 never returns: the kernel panics when init exits. When the boot stage stops
//! (an update asks for a reboot, or it gave up) PID 1 syncs and reboots with
//! `reboot(2)`; when the unit cannot come up at all (no state partition, a mount
//! refused) it prints the reason on the console and powers off, since a reboot would
//! only fail the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::reboot::RebootMode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The module list in the initramfs: one path a line, dependencies first.
pub const MODULE_LIST: &str = "/etc/warden/modules";
/// The shipped manifest in the initramfs (`[monitor.boot]` names the state directory).
pub const MANIFEST: &str = "/etc/warden/manifest.toml";
/// The GPT name of the writable state partition.
pub const STATE_PARTITION: &str = "state";
/// The GPT names of the root slots A and B.
pub const SLOT_PARTITIONS: [(&str, &str); 2] = [("a", "slot-a"), ("b", "slot-b")];
/// Where the root slots are mounted read-only (`<SLOTS_MOUNT>/a`, `<SLOTS_MOUNT>/b`).
pub const SLOTS_MOUNT: &str = "/run/warden/slots";
/// Set in the boot stage's environment by PID 1: the boot stage then prints its
/// `warden-os:` lines (the verified slot) on the console.
pub const CONSOLE_ENV: &str = "WARDEN_OS_CONSOLE";
/// How long the disk gets to appear after its driver is loaded.
const DISK_WAIT: Duration = Duration::from_secs(20);
/// The pause before a deliberate power-off or reboot, so the console shows why.
const LAST_WORDS: Duration = Duration::from_secs(2);
/// How often PID 1 looks for exited children.
const REAP_POLL: Duration = Duration::from_millis(100);

/// Why the unit cannot come up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("cannot mount {what} ({source_path}) on {target}: {errno}")]
    Mount {
        /// The file system type.
        what: String,
        /// The device or pseudo source.
        source_path: String,
        /// The mount point.
        target: PathBuf,
        /// Why.
        errno: nix::errno::Errno,
    },
    /// A file PID 1 needs could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A partition did not appear.
    #[error("no partition named {name:?} appeared within {waited:?} (partitions seen: {seen})")]
    NoPartition {
        /// The GPT partition name.
        name: String,
        /// How long PID 1 waited.
        waited: Duration,
        /// The names seen.
        seen: String,
    },
    /// The shipped manifest is unusable.
    #[error("manifest {MANIFEST}: {0}")]
    Manifest(String),
    /// The boot stage could not be started.
    #[error("cannot start the boot stage: {0}")]
    Spawn(std::io::Error),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// PID 1: brings the unit up, runs the boot stage, and never returns.
pub fn run() -> ! {
    console("warden-os: init");
    match bring_up().and_then(|()| start_boot_stage()) {
        Ok(child) => supervise(child),
        Err(error) => {
            console(&format!("warden-os: fatal: {error}"));
            halt(RebootMode::RB_POWER_OFF)
        }
    }
}

/// Steps 1–4: pseudo file systems, modules, partitions, mounts.
pub fn bring_up() -> Result<(), InitError> {
    mount_pseudo(
        "proc",
        "/proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    mount_pseudo(
        "sysfs",
        "/sys",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    mount_pseudo("devtmpfs", "/dev", MsFlags::MS_NOSUID)?;
    mount_pseudo("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    load_modules(Path::new(MODULE_LIST));
    let state_dir = state_dir_of_manifest()?;
    let state = wait_for_partition(STATE_PARTITION)?;
    mount_device(
        &state,
        &state_dir,
        "ext4",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    console(&format!(
        "warden-os: state {} mounted on {}",
        state.display(),
        state_dir.display()
    ));
    for (slot, name) in SLOT_PARTITIONS {
        let device = wait_for_partition(name)?;
        let target = Path::new(SLOTS_MOUNT).join(slot);
        // An empty or damaged slot is the boot monitor's business (it boots the other
        // one); it must not stop the unit from coming up.
        match mount_device(
            &device,
            &target,
            "erofs",
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        ) {
            Ok(()) => console(&format!(
                "warden-os: slot {slot} ({}) mounted read-only on {}",
                device.display(),
                target.display()
            )),
            Err(error) => console(&format!("warden-os: slot {slot}: {error}")),
        }
    }
    Ok(())
}

/// The state directory the shipped manifest's `[monitor.boot]` names.
fn state_dir_of_manifest() -> Result<PathBuf, InitError> {
    let manifest = warden_os::monitor::manifest::Manifest::load(Path::new(MANIFEST))
        .map_err(|error| InitError::Manifest(error.to_string()))?;
    manifest
        .monitor
        .boot
        .map(|boot| boot.state_dir)
        .ok_or_else(|| InitError::Manifest("[monitor.boot] is missing".to_owned()))
}

fn mount_pseudo(kind: &str, target: &str, flags: MsFlags) -> Result<(), InitError> {
    let target = Path::new(target);
    std::fs::create_dir_all(target).map_err(io_at(target))?;
    nix::mount::mount(Some(kind), target, Some(kind), flags, None::<&str>).map_err(|errno| {
        InitError::Mount {
            what: kind.to_owned(),
            source_path: kind.to_owned(),
            target: target.to_owned(),
            errno,
        }
    })
}

fn mount_device(device: &Path, target: &Path, kind: &str, flags: MsFlags) -> Result<(), InitError> {
    std::fs::create_dir_all(target).map_err(io_at(target))?;
    nix::mount::mount(Some(device), target, Some(kind), flags, None::<&str>).map_err(|errno| {
        InitError::Mount {
            what: kind.to_owned(),
            source_path: device.display().to_string(),
            target: target.to_owned(),
            errno,
        }
    })
}

/// Loads each module of the list; a module the kernel already has (built in, or
/// loaded as a dependency) is fine, any other failure is printed and skipped: the
/// mount that needs it then names what is missing.
fn load_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        console(&format!("warden-os: no module list at {}", list.display()));
        return;
    };
    let mut loaded = 0;
    for path in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let result = std::fs::File::open(path)
            .map_err(|error| error.to_string())
            .and_then(|file| {
                nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty())
                    .or_else(|errno| match errno {
                        nix::errno::Errno::EEXIST => Ok(()),
                        other => Err(other),
                    })
                    .map_err(|errno| errno.to_string())
            });
        match result {
            Ok(()) => loaded += 1,
            Err(reason) => console(&format!("warden-os: module {path}: {reason}")),
        }
    }
    console(&format!("warden-os: {loaded} kernel modules loaded"));
}

/// The device node of the partition whose GPT name is `name`, waiting for the disk to
/// be probed.
fn wait_for_partition(name: &str) -> Result<PathBuf, InitError> {
    let started = Instant::now();
    loop {
        let partitions = partitions_by_name(Path::new("/sys/class/block"));
        if let Some((_, device)) = partitions.iter().find(|(found, _)| found == name) {
            let node = Path::new("/dev").join(device);
            if node.exists() {
                return Ok(node);
            }
        }
        if started.elapsed() > DISK_WAIT {
            return Err(InitError::NoPartition {
                name: name.to_owned(),
                waited: DISK_WAIT,
                seen: partitions
                    .iter()
                    .map(|(name, device)| format!("{name}={device}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        std::thread::sleep(REAP_POLL);
    }
}

/// `(PARTNAME, DEVNAME)` of every block device under `sys_class_block` that has both.
pub fn partitions_by_name(sys_class_block: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("uevent")).ok())
        .filter_map(|uevent| parse_uevent(&uevent))
        .collect()
}

/// `(PARTNAME, DEVNAME)` of one `uevent` file, if it names both.
pub fn parse_uevent(uevent: &str) -> Option<(String, String)> {
    let field = |key: &str| {
        uevent
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some((field("PARTNAME")?, field("DEVNAME")?))
}

/// Step 5: the boot stage, this binary with the shipped manifest.
fn start_boot_stage() -> Result<std::process::Child, InitError> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    std::process::Command::new(exe)
        .args([
            "boot",
            "--manifest",
            MANIFEST,
            "--",
            "run",
            "--manifest",
            MANIFEST,
        ])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(CONSOLE_ENV, "1")
        .spawn()
        .map_err(InitError::Spawn)
}

/// Reaps every child until the boot stage ends, then reboots.
fn supervise(boot_stage: std::process::Child) -> ! {
    let boot_pid = Pid::from_raw(i32::try_from(boot_stage.id()).unwrap_or(i32::MAX));
    // The boot stage is reaped here with every orphan (`waitpid(-1)`), not through
    // `Child`, so the handle is only kept for its pid.
    drop(boot_stage);
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == boot_pid => {
                console(&format!(
                    "warden-os: the boot stage exited ({code}); rebooting"
                ));
                halt(RebootMode::RB_AUTOBOOT)
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == boot_pid => {
                console(&format!(
                    "warden-os: the boot stage was killed by {signal}; rebooting"
                ));
                halt(RebootMode::RB_AUTOBOOT)
            }
            // Another orphan reaped: look again at once.
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {}
            Ok(_) | Err(_) => std::thread::sleep(REAP_POLL),
        }
    }
}

/// Syncs, waits so the console shows the last line, and reboots or powers off. If the
/// kernel refuses, PID 1 stays (sleeping) rather than exit into a panic.
fn halt(mode: RebootMode) -> ! {
    nix::unistd::sync();
    std::thread::sleep(LAST_WORDS);
    let error = nix::sys::reboot::reboot(mode).err();
    console(&format!(
        "warden-os: reboot(2) refused: {error:?}; halting here"
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// One line on the console (PID 1's standard error is `/dev/console`).
fn console(line: &str) {
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_named_by_its_gpt_label() {
        let uevent = "MAJOR=254\nMINOR=4\nDEVNAME=vda4\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=4\nPARTNAME=state\n";
        assert_eq!(
            parse_uevent(uevent),
            Some(("state".to_owned(), "vda4".to_owned()))
        );
        assert_eq!(
            parse_uevent("MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"),
            None,
            "a whole disk has no partition name"
        );
    }
}
