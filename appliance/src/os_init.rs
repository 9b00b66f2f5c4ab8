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
//! 5. binds the unit's configuration, the files under the state partition's
//!    [`UNIT_CONFIG_DIR`], each to the same path under `/etc` (never over a file the
//!    initramfs has: the manifest and the module list are the verified boot's);
//! 6. names the unit's serial lines ([`SERIAL_LINES`]) and brings the network up with
//!    iproute2's `ip` ([`IP_COMMAND`]): the loopback, and the Ethernet interface as
//!    QEMU's user network addresses it ([`NETWORK`]);
//! 7. starts the boot stage (`warden boot --manifest … -- run --manifest …`) as its
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
/// The console line of a unit that is up: the booted slot, its image's version and
/// the measurement the boot stage extended (`cargo xtask os-run` waits for it).
pub fn up_line(slot: &str, version: &str, measurement: &str) -> String {
    format!("warden-os: up slot={slot} version={version} measurement={measurement}")
}

/// The line the monitor prints when every compartment is up ([`up_line`]), when it
/// runs on Warden OS's console ([`CONSOLE_ENV`]) as the image the boot stage started.
pub fn up_line_from_env() -> Option<String> {
    std::env::var_os(CONSOLE_ENV)?;
    let (slot, version, measurement) = warden_os::monitor::trial::booted_image_from_env()?;
    Some(up_line(slot.name(), &version, &measurement))
}

/// The unit's configuration on the state partition, relative to the state directory:
/// `etc/warden/warden.toml` there is `/etc/warden/warden.toml` in the guest.
pub const UNIT_CONFIG_DIR: &str = "etc";
/// The unit's serial lines by the names the manifest grants, as (path, major, minor):
/// the RS-485 line is the guest's second serial port (`ttyS1`; `ttyS0` is the console).
pub const SERIAL_LINES: &[(&str, u64, u64)] = &[("/dev/ttyRS485-1", 4, 65)];
/// iproute2's `ip` in the initramfs (`cargo xtask os-image` copies the builder's there).
pub const IP_COMMAND: &str = "/usr/sbin/ip";
/// The network as QEMU's user networking gives it: `ip` arguments, in order.
pub const NETWORK: &[&[&str]] = &[
    &["link", "set", "lo", "up"],
    &["link", "set", "eth0", "up"],
    &["address", "add", "10.0.2.15/24", "dev", "eth0"],
    &["route", "add", "default", "via", "10.0.2.2"],
];
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

/// Steps 1–6: pseudo file systems, modules, partitions, mounts, configuration,
/// devices and network.
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
    let bound = bind_unit_config(&state_dir.join(UNIT_CONFIG_DIR), Path::new("/etc"))?;
    console(&format!(
        "warden-os: {bound} unit configuration files bound"
    ));
    name_serial_lines();
    bring_up_network();
    Ok(())
}

/// Binds every file under `from` to the same relative path under `to`, creating the
/// mount point; a path that already exists under `to` is left alone (and said so).
/// Returns how many files were bound.
fn bind_unit_config(from: &Path, to: &Path) -> Result<usize, InitError> {
    let Ok(entries) = std::fs::read_dir(from) else {
        console(&format!(
            "warden-os: no unit configuration at {}",
            from.display()
        ));
        return Ok(0);
    };
    let mut bound = 0;
    for entry in entries {
        let entry = entry.map_err(io_at(from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io_at(&source))?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_at(&target))?;
            bound += bind_unit_config(&source, &target)?;
        } else if kind.is_file() {
            if target.exists() {
                console(&format!(
                    "warden-os: {} is the initramfs's; {} is not bound over it",
                    target.display(),
                    source.display()
                ));
                continue;
            }
            std::fs::write(&target, b"").map_err(io_at(&target))?;
            nix::mount::mount(
                Some(&source),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|errno| InitError::Mount {
                what: "bind".to_owned(),
                source_path: source.display().to_string(),
                target: target.clone(),
                errno,
            })?;
            bound += 1;
        }
    }
    Ok(bound)
}

/// Creates [`SERIAL_LINES`]' device nodes (root's, mode 0660: the monitor hands each
/// to the compartment granted it). A failure is printed; the compartment that needs
/// the line then names it.
fn name_serial_lines() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    for (path, major, minor) in SERIAL_LINES {
        let made = mknod(
            Path::new(path),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            makedev(*major, *minor),
        );
        if let Err(errno) = made {
            console(&format!("warden-os: cannot create {path}: {errno}"));
        }
    }
}

/// Runs [`NETWORK`]'s `ip` commands; a failure is printed and the rest still run (a
/// unit without network still comes up, and its link says it is offline).
fn bring_up_network() {
    for args in NETWORK {
        let status = std::process::Command::new(IP_COMMAND)
            .args(*args)
            .stdin(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => console(&format!(
                "warden-os: ip {} failed: {status}",
                args.join(" ")
            )),
            Err(error) => console(&format!("warden-os: cannot run {IP_COMMAND}: {error}")),
        }
    }
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

/// Step 7: the boot stage, this binary with the shipped manifest.
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
