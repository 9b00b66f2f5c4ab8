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

use crate::os_fleet::{DevFleet, fleet_dir};
use crate::package::target_dir;

/// The console line the guest prints when the appliance is up.
pub const UP_LINE: &str = "warden-os: up ";
/// The kernel command line: the serial console (where `warden-os:` lines go), and a
/// panic reboots after 5 s instead of hanging the unit.
const KERNEL_ARGS: &str = "console=ttyS0 panic=5 loglevel=4";
const GUEST_MIB: u32 = 512;

/// The job: start the development fleet (if `os-image --dev-unit` made one, unless
/// `--no-fleet`), then boot until QEMU exits (or, with `--until-up`, until the guest is
/// up).
pub fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(2);
    let mut until_up = None;
    let mut accel = Accel::Tcg;
    let mut with_fleet = true;
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
            "--no-fleet" => with_fleet = false,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask os-run [--kvm] [--no-fleet] [--until-up SECS]"
                ));
            }
        }
    }
    let dir = os_dir();
    let fleet = if with_fleet {
        DevFleet::load(&fleet_dir(&dir))?
    } else {
        None
    };
    let mut forwards = Vec::new();
    let _running = match &fleet {
        Some(fleet) => {
            let running = fleet.start()?;
            let relay = std::env::current_exe()
                .map_err(|e| format!("where is this program (the forwards' relay)? {e}"))?;
            forwards = fleet.guest_forwards(&relay)?;
            eprintln!(
                "    fleet: {} (CA {}, admin token in {}, log {}); the unit's broker is {} \
                 (the guest's {}:{})",
                fleet.url(),
                fleet.ca().display(),
                fleet.dir.join("admin-token").display(),
                fleet.dir.join("fleet.log").display(),
                fleet.mqtt,
                crate::os_fleet::FLEET_HOST,
                crate::os_fleet::GUEST_MQTT_PORT,
            );
            Some(running)
        }
        None if with_fleet => {
            eprintln!(
                "    no development fleet in {} (`cargo xtask os-image --dev-unit` makes one): \
                 the guest connects nowhere",
                fleet_dir(&dir).display()
            );
            None
        }
        None => None,
    };
    match until_up {
        None => boot_interactive(&dir, accel, &forwards),
        Some(bound) => {
            let mut guest = Guest::start(&dir, accel, &forwards)?;
            let took = guest.wait_for(UP_LINE, bound)?;
            guest.stop();
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

/// The QEMU command for the image in `dir` (`-nic user` with `forwards`, each a
/// `guestfwd=…` rule), and the TPM it uses (`None` without swtpm).
fn qemu_command(
    dir: &Path,
    accel: Accel,
    forwards: &[String],
) -> Result<(Command, Option<Swtpm>), String> {
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
    let tpm = Swtpm::start(&dir.join(crate::os_image::TPM_STATE))?;
    let mut nic = "user,model=virtio-net-pci".to_owned();
    for forward in forwards {
        nic.push(',');
        nic.push_str(forward);
    }
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
        .arg("-nic")
        .arg(nic);
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
    Ok((qemu, tpm))
}

/// Boots the image in `dir` with QEMU owning the terminal until it exits.
fn boot_interactive(dir: &Path, accel: Accel, forwards: &[String]) -> Result<(), String> {
    let (mut qemu, mut tpm) = qemu_command(dir, accel, forwards)?;
    let status = qemu
        .status()
        .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"));
    if let Some(tpm) = &mut tpm {
        tpm.stop();
    }
    let status = status?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("qemu-system-x86_64 exited with {status}"))
    }
}

/// A booted guest whose console is echoed to standard output and watched. QEMU restarts
/// the guest when it reboots, so one `Guest` spans reboots. Stopped when dropped.
pub struct Guest {
    child: Child,
    tpm: Option<Swtpm>,
    lines: std::sync::mpsc::Receiver<String>,
    started: Instant,
    /// Every console line so far.
    pub console: String,
}

impl Guest {
    /// Starts QEMU on the image in `dir`, the guest's network with `forwards`.
    pub fn start(dir: &Path, accel: Accel, forwards: &[String]) -> Result<Self, String> {
        let (mut qemu, mut tpm) = qemu_command(dir, accel, forwards)?;
        let spawned = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"));
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                if let Some(tpm) = &mut tpm {
                    tpm.stop();
                }
                return Err(error);
            }
        };
        let stdout = child.stdout.take().ok_or("qemu has no stdout")?;
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("{line}");
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            tpm,
            lines,
            started: Instant::now(),
            console: String::new(),
        })
    }

    /// Waits until a console line contains `wanted`; the time since QEMU started. An
    /// error after `bound`, or when QEMU exits first.
    pub fn wait_for(&mut self, wanted: &str, bound: Duration) -> Result<Duration, String> {
        self.wait_for_line(wanted, bound)
            .map(|_| self.started.elapsed())
    }

    /// [`Guest::wait_for`], returning the line.
    pub fn wait_for_line(&mut self, wanted: &str, bound: Duration) -> Result<String, String> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.console.push_str(&line);
                    self.console.push('\n');
                    if line.contains(wanted) {
                        return Ok(line);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no `{}` line within {bound:?}", wanted.trim()));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "qemu exited ({:?}) before the guest printed `{}`",
                        self.child.wait().ok(),
                        wanted.trim()
                    ));
                }
            }
        }
    }

    /// Stops QEMU (SIGKILL: a power cut) and the TPM.
    pub fn stop(&mut self) {
        stop(&mut self.child);
        if let Some(tpm) = &mut self.tpm {
            tpm.stop();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
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
    pub(crate) const TCG_BOUND: Duration = Duration::from_secs(300);

    /// The measurement a console line ends with.
    fn measurement_of<'a>(console: &'a str, prefix: &str) -> &'a str {
        let line = console
            .lines()
            .find(|line| line.contains(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line on the console"));
        line.split(prefix).nth(1).map(str::trim).unwrap_or_default()
    }

    /// Builds `warden` (the guest's) and `warden-fleet` into this target directory,
    /// then the development unit's image (with its fleet).
    pub(crate) fn build_dev_unit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        // Cargo releases its build-directory lock while tests run, so a nested build
        // into the same target directory works.
        // xtask itself: the forwards' relay (`os-relay`).
        let xtask: &[&str] = &["build", "-p", "xtask"];
        for build in [
            crate::os_image::WARDEN_BUILD,
            crate::os_fleet::FLEET_BUILD,
            xtask,
        ] {
            let mut cargo = Command::new(env!("CARGO"));
            // Without the variables cargo sets for this test process (CARGO_PKG_NAME,
            // CARGO_MANIFEST_DIR, …): build scripts watch some of them
            // (`rerun-if-env-changed`, ring's among them), so a nested build that saw
            // them would rebuild those crates and everything above them, and the next
            // `cargo test` outside would rebuild them back.
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(|name| {
                    name.starts_with("CARGO_") && !KEPT_CARGO_ENV.contains(&name)
                }) {
                    cargo.env_remove(name);
                }
            }
            let status = cargo
                .args(build)
                .env("CARGO_TARGET_DIR", target_dir())
                .current_dir(root)
                .status()
                .expect("cargo build");
            assert!(status.success(), "cargo {} failed", build.join(" "));
        }
        crate::os_image::build_with(&crate::os_image::SlotContent::DevUnit).expect("os image");
    }

    /// The `CARGO_*` variables a nested build keeps: the caller's own settings (see
    /// [`build_dev_unit`]); the rest are what cargo sets for a test process.
    const KEPT_CARGO_ENV: &[&str] = &[
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_JOBS",
        "CARGO_INCREMENTAL",
        "CARGO_TERM_COLOR",
        "CARGO_NET_OFFLINE",
    ];

    /// The xtask binary [`build_dev_unit`] built (the test harness is not it).
    fn relay() -> PathBuf {
        target_dir().join("debug").join("xtask")
    }

    /// Polls the fleet's record of `device` every second until `check` accepts it;
    /// the record.
    pub(crate) fn wait_for_record(
        api: &crate::os_fleet::FleetApi,
        device: &str,
        what: &str,
        bound: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + bound;
        let mut last = Err(String::new());
        while Instant::now() < deadline {
            last = api.get(&format!("/api/v1/devices/{device}"));
            if let Ok(record) = &last
                && check(record)
            {
                return record.clone();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("the fleet did not see {what} within {bound:?}; last answer: {last:?}");
    }

    /// A development unit boots Debian's 6.12 kernel in QEMU: PID 1 mounts the state
    /// partition and both slots, binds the unit's configuration, and the boot stage
    /// verifies slot A's image against the vendor root pluton holds and measures it;
    /// the image's security monitor then starts every compartment in its sandbox
    /// (landlock ABI 6) and, once all of them are up, prints the up line with the
    /// measurement the boot stage extended: the signed image's header digest. Pluton
    /// runs on the guest's TPM (swtpm through `-tpmdev emulator`), where the factory
    /// created the unit's keys and counters. Then the unit reaches the fleet on the
    /// host (through QEMU's forwards): its link connects to the broker over mutual TLS
    /// with the device certificate the factory's manufacturer CA issued for the key in
    /// the TPM, the fleet attests it (a TPM quote of the measurement register) and
    /// names the release it runs.
    /// The tests share `target/os`: one at a time.
    static OS_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    #[ignore = "needs qemu-system-x86 and swtpm (and apt access to bookworm-backports)"]
    fn the_os_image_boots_slot_a_up_in_qemu_and_the_fleet_attests_it() {
        let _one = OS_DIR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        build_dev_unit();
        let dir = os_dir();
        let fleet = DevFleet::load(&fleet_dir(&dir))
            .expect("fleet config")
            .expect("the factory made a fleet");
        let running = fleet.start().expect("the fleet starts");
        let device = std::fs::read_to_string(
            dir.join("work/factory")
                .join(crate::os_factory::DEVICE_ID_FILE),
        )
        .expect("device id");
        let device = device.trim();
        let registered = running
            .api
            .get(&format!("/api/v1/devices/{device}"))
            .expect("the factory registered the unit");
        assert_eq!(registered["serial"], crate::os_factory::SERIAL);
        // `last_seen_ms` is the unit's last telemetry, which this unit (no bridges, no
        // equipment) never sends: its connection shows as an attestation, which the
        // fleet runs only over the broker connection it admitted with the device
        // certificate.
        assert!(
            registered["attested_ms"].is_null() && registered["attestation"] == "unknown",
            "not attested before it boots: {registered}"
        );

        let mut guest = Guest::start(
            &dir,
            Accel::Tcg,
            &fleet.guest_forwards(&relay()).expect("forwards"),
        )
        .expect("qemu starts");
        let took = guest.wait_for(UP, TCG_BOUND).expect("the guest comes up");
        eprintln!("up after {:.1} s (TCG)", took.as_secs_f64());
        let console = guest.console.clone();
        let signed = dir.join("work/vendor/warden.wim");
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

        // The broker admitted it only with its certificate (mutual TLS), and over that
        // connection the fleet attested it from a quote its TPM signed over the
        // measurement register.
        let record = wait_for_record(
            &running.api,
            device,
            "the unit connected and attested",
            TCG_BOUND,
            |record| !record["attested_ms"].is_null() && record["attestation"] == "trusted",
        );
        let detail = record["attestation_detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("runs release press-guardian 1.0.0"),
            "the fleet names the release the quote proves: {record}"
        );
        assert_eq!(record["image_version"], "1.0.0", "{record}");
        guest.stop();
    }

    /// The development unit, up and attested at its fleet (the first test's steps,
    /// without its console checks).
    struct UpUnit {
        dir: PathBuf,
        fleet: crate::os_fleet::RunningFleet,
        guest: Guest,
        device: String,
    }

    fn up_and_attested() -> UpUnit {
        build_dev_unit();
        let dir = os_dir();
        let made = DevFleet::load(&fleet_dir(&dir))
            .expect("fleet config")
            .expect("the factory made a fleet");
        let fleet = made.start().expect("the fleet starts");
        let device = std::fs::read_to_string(
            dir.join("work/factory")
                .join(crate::os_factory::DEVICE_ID_FILE),
        )
        .expect("device id")
        .trim()
        .to_owned();
        let mut guest = Guest::start(
            &dir,
            Accel::Tcg,
            &made.guest_forwards(&relay()).expect("forwards"),
        )
        .expect("qemu starts");
        guest.wait_for(UP, TCG_BOUND).expect("the guest comes up");
        wait_for_record(&fleet.api, &device, "1.0.0 attested", TCG_BOUND, |record| {
            record["attestation"] == "trusted"
        });
        UpUnit {
            dir,
            fleet,
            guest,
            device,
        }
    }

    /// Signs the guest's `warden` (or `payload`) as `version` with the factory's
    /// release key, uploads it, and starts a one-wave rollout of it to the Production
    /// group; the deployment's ID.
    fn roll_out(unit: &UpUnit, version: [u32; 3], counter: u64, payload: Option<&str>) -> String {
        let [major, minor, patch] = version;
        let work = unit.dir.join("work");
        let binary = match payload {
            Some(script) => {
                let path = work.join(format!("payload-{major}.{minor}.{patch}"));
                std::fs::write(&path, script).expect("payload");
                path
            }
            None => work.join("warden"),
        };
        let image = work.join(format!("vendor/warden-{major}.{minor}.{patch}.wim"));
        crate::os_factory::sign_release(
            &binary,
            &work.join("vendor"),
            "press-guardian",
            warden_os::image::SemanticVersion {
                major,
                minor,
                patch,
            },
            counter,
            &image,
        )
        .expect("release");
        let uploaded = unit
            .fleet
            .api
            .post_file("/api/v1/images", &image)
            .expect("upload");
        let sha = uploaded["sha256"].as_str().expect("sha256").to_owned();
        let deployment = unit
            .fleet
            .api
            .post_json(
                "/api/v1/deployments",
                &serde_json::json!({ "image": sha, "group": "Production" }),
            )
            .expect("deployment");
        deployment["id"].as_str().expect("deployment id").to_owned()
    }

    /// Waits until the deployment's state is `state`; the deployment.
    fn wait_for_deployment(unit: &UpUnit, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + UPDATE_BOUND;
        let mut last = Err(String::new());
        while Instant::now() < deadline {
            last = unit.fleet.api.get(&format!("/api/v1/deployments/{id}"));
            if let Ok(deployment) = &last
                && deployment["state"] == state
            {
                return deployment.clone();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!("deployment {id} not {state} within {UPDATE_BOUND:?}: {last:?}");
    }

    /// Download (through QEMU's user network), verify, install, reboot and a trial
    /// boot to confirmation, under TCG.
    const UPDATE_BOUND: Duration = Duration::from_secs(900);

    /// A staged rollout from the fleet's API across real reboots: 1.1.0 is downloaded
    /// into the inactive slot B, verified and installed; the appliance asks for a
    /// restart, the boot stage ends, PID 1 reboots the machine (`reboot(2)`, QEMU
    /// restarts the guest with the TPM's registers reset), slot B boots on trial,
    /// confirms itself once its link is up, and the fleet sees 1.1.0 confirmed and
    /// attests it (the quote now proves 1.1.0 alone). Then 1.2.0, whose entry point
    /// exits with an error at start, is installed into slot A: each trial boot crashes,
    /// the guest reboots after each, the third crash gives it up, 1.1.0 runs again from
    /// slot B, and the fleet has the failure reports and halts the rollout.
    #[test]
    #[ignore = "needs qemu-system-x86 and swtpm (and apt access to bookworm-backports)"]
    fn a_staged_rollout_updates_the_guest_across_real_reboots_and_rolls_a_crashing_image_back() {
        let _one = OS_DIR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut unit = up_and_attested();
        let started = Instant::now();
        let deployment = roll_out(&unit, [1, 1, 0], 2, None);
        unit.guest
            .wait_for(
                "warden-os: reboot: the image asked to boot again",
                UPDATE_BOUND,
            )
            .expect("the guest reboots after installing 1.1.0");
        unit.guest
            .wait_for("warden-os: init", TCG_BOUND)
            .expect("the kernel starts PID 1 again after reboot(2)");
        unit.guest
            .wait_for("warden-os: up slot=b version=1.1.0 ", TCG_BOUND)
            .expect("slot B boots 1.1.0");
        let done = wait_for_deployment(&unit, &deployment, "completed");
        eprintln!(
            "1.1.0 confirmed at the fleet {:.1} s after the deployment",
            started.elapsed().as_secs_f64()
        );
        let member = &done["members"][0];
        assert_eq!(member["device_id"], unit.device.as_str(), "{done}");
        assert_eq!(member["state"], "confirmed", "{done}");
        let record = wait_for_record(
            &unit.fleet.api,
            &unit.device,
            "1.1.0 attested",
            TCG_BOUND,
            |record| {
                record["image_version"] == "1.1.0"
                    && record["attestation"] == "trusted"
                    && record["attestation_detail"].as_str().is_some_and(|detail| {
                        detail.starts_with("runs release press-guardian 1.1.0")
                    })
            },
        );
        eprintln!("after the update: {record}");

        // 1.2.0 cannot start: its entry point is a script whose interpreter is the
        // initramfs's `/init` (`warden`), which refuses the arguments and exits 2.
        let crashing = "#!/init\n# 1.2.0: refuses to start (exits 2)\n";
        let deployment = roll_out(&unit, [1, 2, 0], 2, Some(crashing));
        unit.guest
            .wait_for("warden-os: verified slot=a version=1.2.0 ", UPDATE_BOUND)
            .expect("1.2.0 boots on trial in slot A");
        unit.guest
            .wait_for("warden-os: up slot=b version=1.1.0 ", UPDATE_BOUND)
            .expect("the guest rolls back to 1.1.0 in slot B");
        let trial_boots = unit
            .guest
            .console
            .matches("warden-os: verified slot=a version=1.2.0 ")
            .count();
        assert_eq!(
            trial_boots, 3,
            "three trial boots of 1.2.0, each after a reboot"
        );
        let halted = wait_for_deployment(&unit, &deployment, "halted");
        assert_eq!(halted["members"][0]["state"], "rolled-back", "{halted}");
        let deadline = Instant::now() + TCG_BOUND;
        loop {
            let reports = unit
                .fleet
                .api
                .get(&format!("/api/v1/reports?device={}", unit.device))
                .expect("reports");
            let crashes = reports
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter(|report| report["image_version"] == "1.2.0")
                        .count()
                })
                .unwrap_or(0);
            if crashes >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the fleet has {crashes} failure reports of 1.2.0: {reports}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        unit.guest.stop();
    }
}
