//! `cargo xtask os-run [--kvm] [--until-up SECS]`: boots `target/os/warden-os.img` in
//! `qemu-system-x86_64`, the serial console on standard output.
//!
//! The kernel and initramfs are started directly (`-kernel`, `-initrd`: the same files
//! `os-image` puts on the boot partition, kept next to the disk as `vmlinuz` and
//! `initrd.img`): the boot partition carries no boot loader yet, and QEMU's firmware
//! would need one (or OVMF) to start the kernel from it. The disk is the guest's
//! `virtio` drive, so the guest finds its slot and state partitions by GPT name as on a
//! unit.
//!
//! TCG by default; `--kvm` uses the host's KVM (when `/dev/kvm` opens read-write). KVM
//! is not the default because where it was tried (a nested, virtualised host whose
//! CPU model lacks features QEMU asks for) Debian's kernel reset right after
//! decompressing, while TCG boots everywhere. With `swtpm` installed, a
//! software TPM 2.0 runs for the guest (`-tpmdev emulator`), its state in
//! `target/os/tpm` so it survives reboots like a unit's TPM. QEMU restarts the guest
//! when it reboots (`reboot(2)`) and exits when it powers off.
//!
//! With `--until-up SECS` (what the boot test uses) the console is watched: QEMU is
//! stopped and the job succeeds once the guest prints `warden-os: up`, and fails after
//! `SECS` seconds without it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::package::target_dir;

/// The console line the guest prints when the appliance is up.
pub const UP_LINE: &str = "warden-os: up ";
/// The kernel command line: the serial console (where `warden-os:` lines go), and a
/// panic reboots after 5 s instead of hanging the unit.
const KERNEL_ARGS: &str = "console=ttyS0 panic=5 loglevel=4";
const GUEST_MIB: u32 = 512;

/// The job: boot until QEMU exits (or, with `--until-up`, until the guest is up).
pub fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(2);
    let mut until_up = None;
    let mut accel = Accel::Tcg;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--until-up" => {
                let secs = args.next().unwrap_or_default();
                until_up =
                    Some(Duration::from_secs(secs.parse().map_err(|_| {
                        format!("--until-up {secs:?}: not a number of seconds")
                    })?));
            }
            "--kvm" if kvm_available() => accel = Accel::Kvm,
            "--kvm" => return Err("--kvm: /dev/kvm does not open read-write".to_owned()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask os-run [--kvm] [--until-up SECS]"
                ));
            }
        }
    }
    match until_up {
        None => boot(&os_dir(), accel, None).map(drop),
        Some(bound) => {
            let (took, _) = boot_capturing(&os_dir(), accel, UP_LINE, bound)?;
            eprintln!("    up after {:.1} s ({accel:?})", took.as_secs_f64());
            Ok(())
        }
    }
}

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's own translator: slower, works everywhere.
    Tcg,
    /// The host's KVM.
    Kvm,
}

/// Where `os-image` leaves the disk, kernel and initramfs.
pub fn os_dir() -> PathBuf {
    target_dir().join("os")
}

/// Whether KVM can be used (the device exists and opens read-write).
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boots the image in `dir`. Without `until`, QEMU owns the terminal until it exits.
/// With `(line, bound)`, the console is echoed and watched, QEMU is stopped when a
/// console line contains `line`, and the time to it is returned (an error after
/// `bound`).
pub fn boot(dir: &Path, accel: Accel, until: Option<(&str, Duration)>) -> Result<Duration, String> {
    boot_with_console(dir, accel, until).map(|(took, _)| took)
}

/// [`boot`] until a console line contains `line`, returning the time and the console
/// up to and including it.
pub fn boot_capturing(
    dir: &Path,
    accel: Accel,
    line: &str,
    bound: Duration,
) -> Result<(Duration, String), String> {
    boot_with_console(dir, accel, Some((line, bound)))
}

fn boot_with_console(
    dir: &Path,
    accel: Accel,
    until: Option<(&str, Duration)>,
) -> Result<(Duration, String), String> {
    let disk = dir.join("warden-os.img");
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    for file in [&disk, &kernel, &initrd] {
        if !file.exists() {
            return Err(format!(
                "{} is missing: `cargo xtask os-image` first",
                file.display()
            ));
        }
    }
    let mut tpm = Swtpm::start(&dir.join(crate::os_image::TPM_STATE))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-m", &GUEST_MIB.to_string(), "-smp", "1", "-nographic"])
        .args(["-no-user-config", "-nodefaults", "-serial", "stdio"])
        // The unit's RS-485 line (`ttyS1`, `/dev/ttyRS485-1` in the guest): unplugged.
        .args(["-serial", "null"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", KERNEL_ARGS])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .args(["-nic", "user,model=virtio-net-pci"]);
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg"]),
    };
    if let Some(tpm) = &tpm {
        qemu.arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", tpm.socket.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"]);
    }
    let started = Instant::now();
    let Some((wanted, bound)) = until else {
        let status = qemu
            .status()
            .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"))?;
        if let Some(tpm) = &mut tpm {
            tpm.stop();
        }
        return if status.success() {
            Ok((started.elapsed(), String::new()))
        } else {
            Err(format!("qemu-system-x86_64 exited with {status}"))
        };
    };
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"))?;
    let stdout = child.stdout.take().ok_or("qemu has no stdout")?;
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let outcome = loop {
        let left = bound.saturating_sub(started.elapsed());
        match seen.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.contains(wanted) {
                    break Ok((started.elapsed(), std::mem::take(&mut console)));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("no `{}` line within {bound:?}", wanted.trim()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(format!(
                    "qemu exited ({:?}) before the guest printed `{}`",
                    child.wait().ok(),
                    wanted.trim()
                ));
            }
        }
    };
    stop(&mut child);
    if let Some(tpm) = &mut tpm {
        tpm.stop();
    }
    outcome
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A software TPM 2.0 for the guest, its state kept in a directory.
struct Swtpm {
    child: Child,
    socket: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on `state`, or `None` when swtpm is not installed.
    fn start(state: &Path) -> Result<Option<Self>, String> {
        if Command::new("swtpm").arg("--version").output().is_err() {
            eprintln!("    swtpm is not installed: the guest runs without a TPM");
            return Ok(None);
        }
        std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
        let socket = state.join("swtpm.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start swtpm: {e}"))?;
        let mut tpm = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tpm.socket.exists() {
            if Instant::now() > deadline {
                tpm.stop();
                return Err(format!("swtpm did not listen on {}", tpm.socket.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(tpm))
    }

    fn stop(&mut self) {
        stop(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot stage's line once it verified and measured slot A's image.
    const VERIFIED: &str = "warden-os: verified slot=a version=1.0.0 measurement=";
    /// The monitor's line once every compartment is up (`appliance/src/os_init.rs`).
    const UP: &str = "warden-os: up slot=a version=1.0.0 measurement=";
    /// TCG on a loaded two-core builder (the guest is up in about a minute).
    const TCG_BOUND: Duration = Duration::from_secs(300);

    /// The measurement a console line ends with.
    fn measurement_of<'a>(console: &'a str, prefix: &str) -> &'a str {
        let line = console
            .lines()
            .find(|line| line.contains(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line on the console"));
        line.split(prefix).nth(1).map(str::trim).unwrap_or_default()
    }

    /// A development unit boots Debian's 6.12 kernel in QEMU: PID 1 mounts the state
    /// partition and both slots, binds the unit's configuration, and the boot stage
    /// verifies slot A's image against the vendor root pluton holds and measures it;
    /// the image's security monitor then starts every compartment in its sandbox
    /// (landlock ABI 6) and, once all of them are up, prints the up line with the
    /// measurement the boot stage extended: the signed image's header digest. Pluton
    /// runs on the guest's TPM (swtpm through `-tpmdev emulator`), where the factory
    /// created the unit's keys and counters.
    #[test]
    #[ignore = "needs qemu, apt access to bookworm-backports and the os image"]
    fn the_os_image_boots_slot_a_up_in_qemu() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        // Cargo releases its build-directory lock while tests run, so a nested build
        // into the same target directory works.
        let status = Command::new(env!("CARGO"))
            .args(crate::os_image::WARDEN_BUILD)
            .env("CARGO_TARGET_DIR", target_dir())
            .current_dir(root)
            .status()
            .expect("cargo build");
        assert!(status.success(), "cargo build -p warden failed");
        crate::os_image::build_with(&crate::os_image::SlotContent::DevUnit).expect("os image");
        let (took, console) =
            boot_capturing(&os_dir(), Accel::Tcg, UP, TCG_BOUND).expect("the guest comes up");
        eprintln!("up after {:.1} s (TCG)", took.as_secs_f64());
        let signed = os_dir().join("work/vendor/warden.wim");
        let image = warden_os::release::inspect_file(&signed).expect("the signed image");
        let expected = warden_os::launch::measurement_hex(&image.measurement);
        assert_eq!(
            measurement_of(&console, VERIFIED),
            expected,
            "the boot stage measured slot A's image"
        );
        assert_eq!(
            measurement_of(&console, UP),
            expected,
            "the up line names the measurement the boot stage extended"
        );
        let verified_at = console.find(VERIFIED).expect("verified line");
        let up_at = console.find(UP).expect("up line");
        assert!(verified_at < up_at, "verified before up");
        assert!(
            !console.contains("lacks"),
            "the monitor found every sandbox feature in the kernel"
        );
        assert!(
            console.contains("pluton serving (tpm backend)"),
            "the boot stage's pluton runs on the guest's TPM (swtpm), as the factory provisioned it"
        );
    }
}
