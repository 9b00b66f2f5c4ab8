//! `cargo xtask os-image [SIGNED_IMAGE]`: lays out Warden OS's disk, `target/os/warden-os.img`.
//!
//! A GPT disk of four partitions, each built as a file and copied in at its offset (no
//! loop devices, no root):
//!
//! | # | name     | content |
//! |---|----------|---------|
//! | 1 | `boot`   | FAT ESP: Debian's kernel (`linux-image-amd64`'s dependency, downloaded with `apt-get download` into `target/os/cache`, never installed on the host) and `initrd.img` |
//! | 2 | `slot-a` | read-only erofs holding the signed Warden image as `warden.wim` (empty without `SIGNED_IMAGE`) |
//! | 3 | `slot-b` | the same for slot B |
//! | 4 | `state`  | ext4 for `/var/lib/warden` (the shipped manifest and layout directories) |
//!
//! The initramfs (newc cpio, written here) holds the `warden` binary as `/init`, the
//! manifest, and the kernel modules the Debian kernel keeps as modules for a QEMU guest
//! (virtio, erofs, ext4, dm-verity) with their dependencies from `modules.dep`.
//!
//! The kernel runs `/init` as PID 1, which is `warden`'s PID-1 mode
//! (`appliance/src/os_init.rs`): it loads these modules, mounts the state and slot
//! partitions by GPT name and starts the boot stage. `vmlinuz` and `initrd.img` are also
//! left next to the disk for `cargo xtask os-run` (`os_run.rs`), which starts them
//! directly.
//!
//! Needs `strip` (binutils), Debian's `gdisk` (sgdisk), `erofs-utils`, `dosfstools`, `mtools`, `e2fsprogs`,
//! and apt (for the kernel package).

use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::package::{run, target_dir};

/// The kernel modules the guest needs, by name; their dependencies are added.
/// `crc32c_generic` comes first: ext4's and erofs's checksums (through `libcrc32c`)
/// ask the crypto API for `crc32c` by name, not by symbol, so `depends=` misses it.
const MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "erofs",
    "ext4",
    "dm-verity",
];
/// Partition sizes, MiB: boot, each slot; the state partition takes the rest.
const BOOT_MIB: u64 = 96;
const SLOT_MIB: u64 = 64;
/// The state partition holds an update twice while it is installed (the verified
/// download, then `slots/install.tmp` before its rename into the slot) beside the
/// running image and the outbox, reports and pluton state.
const STATE_MIB: u64 = 256;
const SECTOR: u64 = 512;
/// The unit's TPM state, next to the disk (`os-run` gives it to the guest).
pub const TPM_STATE: &str = "tpm";
/// The TPM transport pluton's TPM backend loads at run time (`dlopen`, so `ldd` does not
/// name it): the kernel's TPM device.
const TPM_TCTI_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0";
/// iproute2's `ip`, copied into the initramfs at the same path
/// (`appliance/src/os_init.rs` runs it).
const GUEST_IP: &str = "/usr/sbin/ip";

/// How the guest's `warden` is built (`os-image` runs it first): the production
/// binary (no demo simulators), with pluton's TPM backend.
pub const WARDEN_BUILD: &[&str] = &[
    "build",
    "-p",
    "warden",
    "--no-default-features",
    "--features",
    "tpm",
];

/// The job (after [`WARDEN_BUILD`]): lay out the disk, with the signed image
/// named on the command line, if any.
pub fn build() -> Result<(), String> {
    match std::env::args().nth(2).as_deref() {
        None => build_with(&SlotContent::Empty),
        Some("--dev-unit") => build_with(&SlotContent::DevUnit),
        Some(path) => build_with(&SlotContent::Signed(PathBuf::from(path))),
    }
}

/// What the root slots and the state partition start with.
pub enum SlotContent {
    /// Nothing: the guest's boot stage finds no image.
    Empty,
    /// This signed image in both root slots (the state partition knows nothing of it:
    /// a provisioning step still has to install it).
    Signed(PathBuf),
    /// `os_factory`'s development unit: throw-away vendor keys, the `warden` binary
    /// signed as 1.0.0 in slot A, the state partition provisioned for it.
    DevUnit,
}

/// Lays out `target/os/warden-os.img` with `content` in its slots.
pub fn build_with(content: &SlotContent) -> Result<(), String> {
    let out = target_dir().join("os");
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    mkdir(&work)?;
    let (kernel, modules_dir) = debian_kernel(&out.join("cache"))?;
    let binary = target_dir().join("debug").join("warden");
    if !binary.exists() {
        return Err(format!(
            "{} is missing: `cargo build -p warden` first",
            binary.display()
        ));
    }
    // The debug build's symbols are most of its size; the guest needs none of them.
    let stripped = work.join("warden");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary))?;
    let initrd = work.join("initrd.img");
    write_initramfs(&initrd, &stripped, &modules_dir)?;

    let boot = work.join("boot.vfat");
    run(Command::new("mkfs.vfat")
        .args(["-n", "WARDEN-BOOT", "-C"])
        .arg(&boot)
        .arg((BOOT_MIB * 1024).to_string()))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&boot)
        .arg(&kernel)
        .arg("::vmlinuz"))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&boot)
        .arg(&initrd)
        .arg("::initrd.img"))?;

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/manifest.toml");
    let state_tree = work.join("state");
    for dir in state_directories(&manifest)? {
        mkdir(&state_tree.join(dir))?;
    }
    let (slot_a, slot_b) = match content {
        SlotContent::Empty => (None, None),
        SlotContent::Signed(signed) => (Some(signed.clone()), Some(signed.clone())),
        SlotContent::DevUnit => {
            let signed = crate::os_factory::provision(
                &binary,
                &stripped,
                &manifest,
                &work,
                &state_tree,
                &out.join(TPM_STATE),
            )?;
            (Some(signed), None)
        }
    };
    let mut slots = Vec::new();
    for (name, signed) in [("a", &slot_a), ("b", &slot_b)] {
        let tree = work.join(format!("slot-{name}"));
        mkdir(&tree)?;
        if let Some(signed) = signed {
            copy(signed, &tree.join("warden.wim"))?;
        }
        let fs = work.join(format!("slot-{name}.erofs"));
        run(Command::new("mkfs.erofs")
            .arg("-T0")
            .arg("--all-root")
            .arg(&fs)
            .arg(&tree))?;
        slots.push(fs);
    }

    let state = work.join("state.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "warden-state", "-d"])
        .arg(&state_tree)
        .arg(&state)
        .arg(format!("{STATE_MIB}M")))?;

    let disk = out.join("warden-os.img");
    let parts: [(&str, &Path, u64, &str); 4] = [
        ("boot", &boot, BOOT_MIB, "ef00"),
        ("slot-a", &slots[0], SLOT_MIB, "8300"),
        ("slot-b", &slots[1], SLOT_MIB, "8300"),
        ("state", &state, STATE_MIB, "8300"),
    ];
    // 1 MiB before the first partition, 1 MiB after the last for the backup table.
    let total_mib = 2 + parts.iter().map(|(_, _, mib, _)| mib).sum::<u64>();
    let _ = std::fs::remove_file(&disk);
    let file = std::fs::File::create(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    file.set_len(total_mib << 20)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    drop(file);
    let mut sgdisk = Command::new("sgdisk");
    sgdisk.arg("--clear");
    for (number, (name, _, mib, kind)) in parts.iter().enumerate() {
        let n = number + 1;
        sgdisk
            .arg(format!("--new={n}:0:+{mib}M"))
            .arg(format!("--typecode={n}:{kind}"))
            .arg(format!("--change-name={n}:{name}"));
    }
    run(sgdisk.arg(&disk))?;
    let mut image = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    for (number, (name, content, mib, _)) in parts.iter().enumerate() {
        let first = first_sector(&disk, number + 1)?;
        let bytes = std::fs::read(content).map_err(|e| format!("{}: {e}", content.display()))?;
        if bytes.len() as u64 > mib << 20 {
            return Err(format!(
                "{name}: {} bytes do not fit {mib} MiB",
                bytes.len()
            ));
        }
        image
            .seek(SeekFrom::Start(first * SECTOR))
            .and_then(|_| image.write_all(&bytes))
            .map_err(|e| format!("{}: writing {name}: {e}", disk.display()))?;
    }
    image
        .sync_all()
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    run(Command::new("sgdisk").arg("--verify").arg(&disk))?;
    // `os-run` starts these directly (the boot partition has no boot loader yet).
    copy(&kernel, &out.join("vmlinuz"))?;
    copy(&initrd, &out.join("initrd.img"))?;
    eprintln!(
        "    {}: {total_mib} MiB (boot {BOOT_MIB}, slots {SLOT_MIB} each, state {STATE_MIB}){}",
        disk.display(),
        match content {
            SlotContent::Empty => "; slots empty (no SIGNED_IMAGE given)",
            SlotContent::Signed(_) => "",
            SlotContent::DevUnit => "; development unit: 1.0.0 in slot A",
        }
    );
    Ok(())
}

/// The directories the state partition starts with, relative to it: the boot state's
/// (`slots`, `boot`) and every directory the manifest grants a compartment under the
/// state directory (`read_write`: a granted path must exist for the sandbox to
/// grant it).
fn state_directories(manifest: &Path) -> Result<Vec<PathBuf>, String> {
    let manifest = warden_os::monitor::manifest::Manifest::load(manifest)
        .map_err(|e| format!("{}: {e}", manifest.display()))?;
    let state_dir = manifest
        .monitor
        .boot
        .as_ref()
        .map(|boot| boot.state_dir.clone())
        .ok_or_else(|| "the manifest has no [monitor.boot] state_dir".to_owned())?;
    let mut dirs = vec![PathBuf::from("slots"), PathBuf::from("boot")];
    let granted = manifest
        .compartment
        .values()
        .flat_map(|compartment| compartment.read_write.iter())
        .chain(std::iter::once(&manifest.monitor.report_dir));
    for path in granted {
        if let Ok(relative) = path.strip_prefix(&state_dir)
            && !dirs.iter().any(|dir| dir == relative)
        {
            dirs.push(relative.to_owned());
        }
    }
    Ok(dirs)
}

/// Where the kernel comes from: Debian 12's backports suite, whose `linux-image-amd64`
/// is a 6.12 kernel. Debian 12's own 6.1 lacks landlock ABI 4 (TCP port rules) and 6
/// (signal and abstract-socket scoping), and the security monitor refuses to run
/// compartments without them.
const KERNEL_MIRROR: &str = "http://deb.debian.org/debian";
const KERNEL_SUITE: &str = "bookworm-backports";
/// The keyring the suite's `InRelease` is checked against (Debian's
/// `debian-archive-keyring`, on every Debian host).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt, on a private configuration under `cache/apt`: only [`KERNEL_SUITE`] is in its
/// sources, and its package lists and downloads stay there. The host's sources,
/// package lists and installed packages are left as they are (nothing is installed).
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(cache: &Path) -> Result<Self, String> {
        let root = cache.join("apt");
        for dir in ["lists/partial", "archives/partial"] {
            mkdir(&root.join(dir))?;
        }
        let sources = root.join("sources.list");
        std::fs::write(
            &sources,
            format!("deb [signed-by={ARCHIVE_KEYRING}] {KERNEL_MIRROR} {KERNEL_SUITE} main\n"),
        )
        .map_err(|e| format!("{}: {e}", sources.display()))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            // No other sources: the host's sources.list.d is not read.
            format!(
                "Dir::Etc::SourceParts={}",
                root.join("sources.list.d").display()
            ),
            format!("Dir::State::Lists={}", root.join("lists").display()),
            format!("Dir::Cache={}", root.display()),
            // The lists directory is the builder's, not the `_apt` user's.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        Ok(Self { options })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }
}

/// Debian's kernel from [`KERNEL_SUITE`], extracted under `cache`: the `vmlinuz` and
/// the modules directory.
fn debian_kernel(cache: &Path) -> Result<(PathBuf, PathBuf), String> {
    mkdir(cache)?;
    let apt = PrivateApt::new(cache)?;
    run(apt.command("apt-get").arg("-q").arg("update"))?;
    let depends = run(apt
        .command("apt-cache")
        .args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .ok_or_else(|| {
            format!("{KERNEL_SUITE}'s linux-image-amd64 names no kernel package:\n{depends}")
        })?
        .to_owned();
    let version = package.trim_start_matches("linux-image-").to_owned();
    let root = cache.join(&package);
    let kernel = root.join("boot").join(format!("vmlinuz-{version}"));
    if !kernel.exists() {
        run(apt
            .command("apt-get")
            .args(["-q", "download", &package])
            .current_dir(cache))?;
        let deb = std::fs::read_dir(cache)
            .map_err(|e| format!("{}: {e}", cache.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| {
                        name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
                    })
            })
            .ok_or_else(|| {
                format!(
                    "apt-get download {package} left no .deb in {}",
                    cache.display()
                )
            })?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    Ok((kernel, root.join("lib/modules").join(version)))
}

/// The modules of [`MODULES`] and their dependencies, dependencies first, as paths
/// relative to `modules_dir`; those built into the kernel (`modules.builtin`) are left
/// out. The package ships no `modules.dep` (its postinst runs depmod), so each
/// module's own `depends=` (its `.modinfo` section) is read.
fn modules_in_load_order(modules_dir: &Path) -> Result<Vec<String>, String> {
    let mut by_name = std::collections::BTreeMap::new();
    index_modules(modules_dir, modules_dir, &mut by_name)?;
    let builtin_list = modules_dir.join("modules.builtin");
    let builtin: std::collections::BTreeSet<String> = std::fs::read_to_string(&builtin_list)
        .map_err(|e| format!("{}: {e}", builtin_list.display()))?
        .lines()
        .filter_map(module_name)
        .collect();
    let mut order = Vec::new();
    for wanted in MODULES {
        add_with_dependencies(
            &wanted.replace('-', "_"),
            &by_name,
            &builtin,
            modules_dir,
            &mut order,
        )?;
    }
    Ok(order)
}

/// A module's name (`-` as `_`) from its file name or path: `kernel/fs/ext4/ext4.ko`
/// or, compressed as Debian ships them since 6.x, `….ko.xz`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko.xz")
        .or_else(|| file.strip_suffix(".ko"))?;
    Some(stem.replace('-', "_"))
}

/// A module file's contents, decompressed (`xz -dc`) when it is `.ko.xz`: the
/// `.modinfo` section is read from it, and the guest loads it as it is.
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    if path.extension().is_some_and(|extension| extension == "xz") {
        let output = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run xz (xz-utils) on {}: {e}", path.display()))?;
        if !output.status.success() {
            return Err(format!(
                "xz -dc {}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        return Ok(output.stdout);
    }
    read(path)
}

/// Module name (`-` as `_`) → path relative to `root`, for every `.ko` under `dir`.
fn index_modules(
    root: &Path,
    dir: &Path,
    by_name: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            index_modules(root, &path, by_name)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(module_name)
        {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            by_name.insert(name, relative.display().to_string());
        }
    }
    Ok(())
}

fn add_with_dependencies(
    name: &str,
    by_name: &std::collections::BTreeMap<String, String>,
    builtin: &std::collections::BTreeSet<String>,
    modules_dir: &Path,
    order: &mut Vec<String>,
) -> Result<(), String> {
    if builtin.contains(name) {
        return Ok(());
    }
    let path = by_name
        .get(name)
        .ok_or_else(|| format!("module {name} is not under {}", modules_dir.display()))?;
    if order.contains(path) {
        return Ok(());
    }
    let bytes = read_module(&modules_dir.join(path))?;
    let marker = b"\0depends=";
    let depends = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .map(|at| {
            let rest = &bytes[at + marker.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_default();
    for needed in depends.split(',').filter(|d| !d.is_empty()) {
        add_with_dependencies(
            &needed.replace('-', "_"),
            by_name,
            builtin,
            modules_dir,
            order,
        )?;
    }
    order.push(path.clone());
    Ok(())
}

/// A newc cpio archive: `/init` (the warden binary), the manifest, the modules and
/// `/etc/warden/modules` (their load order).
fn write_initramfs(path: &Path, binary: &Path, modules_dir: &Path) -> Result<(), String> {
    let mut archive = Cpio::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "etc",
        "etc/warden",
        "lib",
        "lib/modules",
        "var",
        "var/lib",
        "var/lib/warden",
    ] {
        archive.dir(dir);
    }
    // The kernel opens /dev/console for init's standard streams before init runs (and
    // mounts devtmpfs): without the node, PID 1 has no console to print to.
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("init", 0o755, &read(binary)?);
    archive.libraries_of(binary)?;
    // PID 1 brings the network up with iproute2's `ip` (the builder's, from Debian's
    // iproute2): the loopback, and the first Ethernet interface as QEMU's user network
    // addresses it.
    archive.parents_of(GUEST_IP);
    archive.file(
        GUEST_IP.trim_start_matches('/'),
        0o755,
        &read(Path::new(GUEST_IP))?,
    );
    archive.libraries_of(Path::new(GUEST_IP))?;
    archive.parents_of(TPM_TCTI_LIBRARY);
    archive.file(
        TPM_TCTI_LIBRARY.trim_start_matches('/'),
        0o755,
        &read(Path::new(TPM_TCTI_LIBRARY))?,
    );
    archive.libraries_of(Path::new(TPM_TCTI_LIBRARY))?;
    archive.file(
        "etc/warden/manifest.toml",
        0o644,
        &read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/manifest.toml"))?,
    );
    let order = modules_in_load_order(modules_dir)?;
    let mut list = String::new();
    for module in &order {
        let name = module_name(module).unwrap_or_else(|| module.clone());
        archive.file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            &read_module(&modules_dir.join(module))?,
        );
        list.push_str(&format!("/lib/modules/{name}.ko\n"));
    }
    archive.file("etc/warden/modules", 0o644, list.as_bytes());
    std::fs::write(path, archive.finish()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The absolute paths of the shared libraries and loader `binary` needs (`ldd`).
fn shared_libraries(binary: &Path) -> Result<Vec<String>, String> {
    let listing = run(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// A newc ("070701") cpio archive in memory, as the kernel unpacks an initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: std::collections::BTreeSet<String>,
    /// Shared libraries already in (several binaries need the same ones).
    files: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry_with_device(name, mode, data, (0, 0));
    }

    /// An entry; `device` is the (major, minor) of a device node.
    fn entry_with_device(&mut self, name: &str, mode: u32, data: &[u8], device: (u32, u32)) {
        self.inode += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            device.0,
            device.1,
            name.len() + 1,
            0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.dirs.insert(name.to_owned());
        self.entry(name, 0o040_755, &[]);
    }

    /// A directory, unless the archive has it already.
    fn dir_once(&mut self, name: &str) {
        if !self.dirs.contains(name) {
            self.dir(name);
        }
    }

    /// Every directory above `path` (absolute or not), each once.
    fn parents_of(&mut self, path: &str) {
        let mut parent = String::new();
        for part in Path::new(path.trim_start_matches('/'))
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.as_os_str().to_string_lossy());
            self.dir_once(&parent);
        }
    }

    /// The loader and shared libraries `binary` needs (the host's, as `ldd` names
    /// them; Debian's on a Debian builder), at the same paths, each once.
    fn libraries_of(&mut self, binary: &Path) -> Result<(), String> {
        for library in shared_libraries(binary)? {
            let inside = library.trim_start_matches('/').to_owned();
            if self.files.insert(inside.clone()) {
                self.parents_of(&inside);
                self.file(&inside, 0o755, &read(Path::new(&library))?);
            }
        }
        Ok(())
    }

    fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | permissions, data);
    }

    fn char_device(&mut self, name: &str, permissions: u32, major: u32, minor: u32) {
        self.entry_with_device(name, 0o020_000 | permissions, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

/// The first sector of partition `number` of `disk` (`sgdisk --info`).
fn first_sector(disk: &Path, number: usize) -> Result<u64, String> {
    let info = run(Command::new("sgdisk")
        .arg(format!("--info={number}"))
        .arg(disk))?;
    info.lines()
        .find_map(|line| line.strip_prefix("First sector: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|sector| sector.parse().ok())
        .ok_or_else(|| format!("sgdisk names no first sector for partition {number}:\n{info}"))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("{} → {}: {e}", from.display(), to.display()))
}
