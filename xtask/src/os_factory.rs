//! `cargo xtask os-image --dev-unit`: a development factory for Warden OS's disk, so the
//! guest's boot stage has something to verify and measure.
//!
//! It plays the vendor and the factory in one step, with throw-away keys:
//! 1. a vendor root key and an image release key certified by it (kept in
//!    `target/os/work/vendor`, never on the disk);
//! 2. a signed image (`1.0.0`, counter 1) of the stripped `warden` binary for the
//!    shipped manifest's product;
//! 3. pluton, run on the host on the state partition's `pluton/` directory: identity
//!    created, the vendor root installed (the station's job on a real line);
//! 4. the boot monitor installs the image into slot A (`slots/a.wim`, the boot state
//!    recorded), then `slots/a.wim` becomes a symlink to the root slot partition's copy
//!    (`/run/warden/slots/a/warden.wim`, read-only erofs), so the factory image is read
//!    from the slot and verified there at every boot. An update replaces the symlink
//!    with a file on the state partition (the boot monitor's install).
//!
//! A unit made this way is not a provisioned unit: it has no device certificate or
//! appliance config, so the appliance it boots does not connect anywhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_keychain::Purpose;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, save_secret_key};
use warden_os::image::{ProductId, SemanticVersion};
use warden_os::release::{BuildRequest, build_unsigned, sign_file};

/// Where PID 1 mounts slot A (`appliance/src/os_init.rs`'s `SLOTS_MOUNT`), and the
/// image's name in every root slot.
const SLOT_A_IMAGE: &str = "/run/warden/slots/a/warden.wim";
/// The factory image's version and anti-rollback counter.
const VERSION: SemanticVersion = SemanticVersion {
    major: 1,
    minor: 0,
    patch: 0,
};
const COUNTER: u64 = 1;
/// A fixed creation time, so two builds of one binary give one image.
const CREATED_AT: u64 = 1_790_000_000;

/// Makes the vendor, signs `binary` into `work/vendor/warden.wim` and provisions
/// `state` (the state partition's tree) with it in slot A. `warden` runs pluton on the
/// host. Returns the signed image, for the root slot.
pub fn provision(
    warden: &Path,
    binary: &Path,
    manifest: &Path,
    work: &Path,
    state: &Path,
) -> Result<PathBuf, String> {
    let manifest = warden_os::monitor::manifest::Manifest::load(manifest)
        .map_err(|e| format!("{}: {e}", manifest.display()))?;
    let product = manifest
        .monitor
        .boot
        .map(|boot| boot.product)
        .ok_or_else(|| "the manifest has no [monitor.boot] product".to_owned())?;
    let vendor = work.join("vendor");
    std::fs::create_dir_all(&vendor).map_err(|e| format!("{}: {e}", vendor.display()))?;
    let root = SecretSigningKey::generate().map_err(|e| format!("vendor root key: {e}"))?;
    let release = SecretSigningKey::generate().map_err(|e| format!("release key: {e}"))?;
    let cert = issue_release_cert(&root, &release.public_key(), Purpose::IMAGE, 1)
        .map_err(|e| format!("release certificate: {e}"))?;
    let key_file = vendor.join("release.pem");
    let cert_file = vendor.join("release.cert");
    save_secret_key(&key_file, &release).map_err(|e| format!("{}: {e}", key_file.display()))?;
    std::fs::write(&cert_file, cert).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let unsigned = vendor.join("warden.unsigned");
    let signed = vendor.join("warden.wim");
    build_unsigned(
        &BuildRequest {
            binary: binary.to_owned(),
            defaults: None,
            product: ProductId::new(&product)
                .ok_or_else(|| format!("product {product:?} is not a product id"))?,
            version: VERSION,
            security_counter: COUNTER,
            build_id: None,
            created_at: Some(CREATED_AT),
        },
        &unsigned,
    )
    .map_err(|e| format!("building the image: {e}"))?;
    sign_file(&unsigned, &key_file, &cert_file, &signed, &mut |_| {})
        .map_err(|e| format!("signing the image: {e}"))?;
    let _ = std::fs::remove_file(&unsigned);

    let pluton_dir = state.join("pluton");
    let socket = work.join("pluton.sock");
    let mut pluton = Pluton::start(warden, &socket, &pluton_dir)?;
    let installed = install(
        &socket,
        &pluton_dir.join("provisioning.capability"),
        &root.public_key(),
        &product,
        state,
        &signed,
    );
    pluton.stop();
    installed?;
    let in_state = state.join(warden_os::boot::slot_image_path(warden_os::Slot::A));
    std::fs::remove_file(&in_state).map_err(|e| format!("{}: {e}", in_state.display()))?;
    std::os::unix::fs::symlink(SLOT_A_IMAGE, &in_state)
        .map_err(|e| format!("{}: {e}", in_state.display()))?;
    Ok(signed)
}

/// Pluton's factory steps (identity, vendor root), then the boot monitor's install.
fn install(
    socket: &Path,
    capability_file: &Path,
    vendor_root: &[u8; 65],
    product: &str,
    state: &Path,
    signed: &Path,
) -> Result<(), String> {
    let capability = warden_pluton::server::read_capability_file(capability_file)
        .map_err(|e| format!("{}: {e}", capability_file.display()))?;
    let mut client = warden_pluton_api::PlutonClient::connect(socket)
        .map_err(|e| format!("pluton on {}: {e}", socket.display()))?;
    client
        .authenticate_boot(&capability)
        .map_err(|e| format!("pluton boot role: {e}"))?;
    client
        .create_identity(None)
        .map_err(|e| format!("pluton identity: {e}"))?;
    client
        .install_root_key(&capability, vendor_root, Purpose::ALL.bits())
        .map_err(|e| format!("installing the vendor root: {e}"))?;
    drop(client);
    let root_of_trust = warden_os::PlutonRootOfTrust::connect(socket, capability_file, Vec::new())
        .map_err(|e| format!("pluton as the boot root of trust: {e}"))?;
    let mut monitor = warden_os::BootMonitor::new(
        warden_os::file_system::StdFileSystem::new(state),
        root_of_trust,
        warden_os::BootConfig::new(
            ProductId::new(product)
                .ok_or_else(|| format!("product {product:?} is not a product id"))?,
        ),
    );
    let mut image =
        std::fs::File::open(signed).map_err(|e| format!("{}: {e}", signed.display()))?;
    let len = image
        .metadata()
        .map_err(|e| format!("{}: {e}", signed.display()))?
        .len();
    let slot = monitor
        .install(&mut image, len)
        .map_err(|e| format!("installing the image: {e}"))?;
    if slot != warden_os::Slot::A {
        return Err(format!("a fresh unit installed into slot {slot}, not A"));
    }
    Ok(())
}

/// `warden pluton` on the host, for the factory steps.
struct Pluton {
    child: Child,
}

impl Pluton {
    fn start(warden: &Path, socket: &Path, state: &Path) -> Result<Self, String> {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(warden)
            .arg("pluton")
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .arg("--backend")
            .arg("software")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {} pluton: {e}", warden.display()))?;
        let mut pluton = Self { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while warden_pluton_api::PlutonClient::connect(socket).is_err() {
            if Instant::now() > deadline {
                pluton.stop();
                return Err(format!("pluton did not listen on {}", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pluton)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
