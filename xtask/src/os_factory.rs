//! `cargo xtask os-image --dev-unit`: a development factory for Warden OS's disk, so the
//! guest's boot stage has something to verify and measure.
//!
//! It plays the vendor and the factory in one step, with throw-away keys:
//! 1. a vendor root key and an image release key certified by it (kept in
//!    `target/os/work/vendor`, never on the disk);
//! 2. a signed image (`1.0.0`, counter 1) of the stripped `warden` binary for the
//!    shipped manifest's product;
//! 3. pluton, run on the host on the state partition's `pluton/` directory with the
//!    **unit's TPM**: a fresh swtpm state in `target/os/tpm`, the one `os-run` gives the
//!    guest (`-tpmdev emulator`), reached here over swtpm's TCP socket. Pluton's TPM
//!    backend keeps its keys, measurement registers (PCRs 8–15) and counters there;
//!    identity created, the vendor root installed (the station's job on a real line);
//! 4. the boot monitor installs the image into slot A (`slots/a.wim`, the boot state
//!    recorded), then `slots/a.wim` becomes a symlink to the root slot partition's copy
//!    (`/run/warden/slots/a/warden.wim`, read-only erofs), so the factory image is read
//!    from the slot and verified there at every boot. An update replaces the symlink
//!    with a file on the state partition (the boot monitor's install).
//!
//! 5. the factory boots it once and confirms it (as the provisioning station's self-test
//!    does), so slot A is the confirmed primary and the anti-rollback counter is 1;
//! 6. the provisioning station: a manufacturer CA (`warden_provision::ca`, the
//!    station's own code; in `target/os/work/factory/ca`, its passphrase beside it)
//!    certifies the identity key pluton created **in the unit's TPM** (device ID = the
//!    certificate's common name, serial `WOS-DEV-0001`);
//! 7. the fleet: a development `warden-fleet` made for this unit (`os_fleet`, in
//!    `target/os/work/fleet`, trusting the vendor root for images) is started once to
//!    take the product with its manufacturer CA, the unit's registration (the station's
//!    `POST /api/v1/devices`) and the factory release 1.0.0 (so the unit attests as
//!    running a known release), then stopped; `os-run` starts it again;
//! 8. the unit's configuration goes to `etc/` on the state partition (PID 1 binds each
//!    file to the same path under `/etc`): the appliance config (`os_unit/`, with the
//!    device ID; the broker is `fleet.example.com:8883`) and policy, the device
//!    certificate and the fleet CA it pins, `hosts` (`fleet.example.com` is QEMU's
//!    forward to the host's fleet) and `resolv.conf` for QEMU's user network, and the
//!    status page's password hash (`warden passwd`; the password is printed and kept in
//!    `target/os/work/vendor/status-page-password`, never on the disk).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, save_public_key, save_secret_key,
};
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
/// The development unit's serial number (its certificate's `serialNumber`).
pub const SERIAL: &str = "WOS-DEV-0001";
/// The file under `work/factory` holding the unit's device ID.
pub const DEVICE_ID_FILE: &str = "device-id";
/// The device certificate's validity (the station's default).
const CERTIFICATE_DAYS: u32 = 365;

/// Makes the vendor, signs `binary` into `work/vendor/warden.wim` and provisions
/// `state` (the state partition's tree) with it in slot A. `warden` runs pluton on the
/// host. Returns the signed image, for the root slot.
pub fn provision(
    warden: &Path,
    binary: &Path,
    manifest: &Path,
    work: &Path,
    state: &Path,
    tpm_state: &Path,
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
    let signed = vendor.join("warden.wim");
    sign_release(binary, &vendor, &product, VERSION, COUNTER, &signed)?;

    let pluton_dir = state.join("pluton");
    let socket = work.join("pluton.sock");
    // A new unit, a new TPM: the old state would hold another unit's keys and counters.
    let _ = std::fs::remove_dir_all(tpm_state);
    let tpm = FactoryTpm::start(tpm_state)?;
    let mut pluton = Pluton::start(warden, &socket, &pluton_dir, &tpm.tcti())?;
    let identity = install(
        &socket,
        &pluton_dir.join("provisioning.capability"),
        &root.public_key(),
        &product,
        state,
        &signed,
    );
    pluton.stop();
    drop(tpm);
    let (device_id, device_key) = identity?;
    let vendor_root_file = vendor.join("vendor-root.pub.pem");
    save_public_key(&vendor_root_file, &root.public_key())
        .map_err(|e| format!("{}: {e}", vendor_root_file.display()))?;
    let unit = station(work, &device_id, &device_key)?;
    let fleet = crate::os_fleet::DevFleet::init(&work.join("fleet"), &vendor_root_file)?;
    register(&fleet, &product, &unit, &signed)?;
    write_unit_config(warden, &vendor, state, &unit, &fleet.ca())?;
    let in_state = state.join(warden_os::boot::slot_image_path(warden_os::Slot::A));
    std::fs::remove_file(&in_state).map_err(|e| format!("{}: {e}", in_state.display()))?;
    std::os::unix::fs::symlink(SLOT_A_IMAGE, &in_state)
        .map_err(|e| format!("{}: {e}", in_state.display()))?;
    Ok(signed)
}

/// The vendor's release step: `binary` built into an image of `product` at `version`
/// with anti-rollback `counter`, signed with the release key and certificate in
/// `vendor` (`release.pem`, `release.cert`), written to `out`.
pub fn sign_release(
    binary: &Path,
    vendor: &Path,
    product: &str,
    version: SemanticVersion,
    counter: u64,
    out: &Path,
) -> Result<(), String> {
    let unsigned = out.with_extension("unsigned");
    build_unsigned(
        &BuildRequest {
            binary: binary.to_owned(),
            defaults: None,
            product: ProductId::new(product)
                .ok_or_else(|| format!("product {product:?} is not a product id"))?,
            version,
            security_counter: counter,
            build_id: None,
            created_at: Some(CREATED_AT),
        },
        &unsigned,
    )
    .map_err(|e| format!("building the image: {e}"))?;
    let signed = sign_file(
        &unsigned,
        &vendor.join("release.pem"),
        &vendor.join("release.cert"),
        out,
        &mut |_| {},
    )
    .map_err(|e| format!("signing the image: {e}"));
    let _ = std::fs::remove_file(&unsigned);
    signed.map(drop)
}

/// Pluton's factory steps (identity, vendor root), then the boot monitor's install.
/// Returns the identity pluton created: the device ID and its public key.
fn install(
    socket: &Path,
    capability_file: &Path,
    vendor_root: &[u8; 65],
    product: &str,
    state: &Path,
    signed: &Path,
) -> Result<(String, [u8; 65]), String> {
    let capability = warden_pluton::server::read_capability_file(capability_file)
        .map_err(|e| format!("{}: {e}", capability_file.display()))?;
    let mut client = warden_pluton_api::PlutonClient::connect(socket)
        .map_err(|e| format!("pluton on {}: {e}", socket.display()))?;
    client
        .authenticate_boot(&capability)
        .map_err(|e| format!("pluton boot role: {e}"))?;
    let identity = client
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
    let decision = monitor
        .select_boot()
        .map_err(|e| format!("the factory boot of slot A: {e}"))?;
    monitor
        .confirm(decision.slot)
        .map_err(|e| format!("confirming slot A: {e}"))?;
    Ok((identity.device_id.to_string(), identity.public_key.0))
}

/// What the provisioning station made for the unit.
struct ProvisionedUnit {
    device_id: String,
    certificate_pem: String,
    manufacturer_ca_pem: String,
}

/// The station's steps: a manufacturer CA (`work/factory/ca`, its random passphrase in
/// `work/factory/ca-passphrase`, mode 0600) certifies the key pluton holds in the TPM.
fn station(work: &Path, device_id: &str, device_key: &[u8; 65]) -> Result<ProvisionedUnit, String> {
    use warden_provision::ca;
    let factory = work.join("factory");
    std::fs::create_dir_all(&factory).map_err(|e| format!("{}: {e}", factory.display()))?;
    let passphrase = zeroize::Zeroizing::new(hex_of(&rand_bytes::<24>()?));
    crate::os_fleet::write_private(&factory.join("ca-passphrase"), &passphrase)?;
    let ca_dir = factory.join("ca");
    ca::init(
        &ca_dir,
        &ca::CaSubject {
            common_name: "Warden OS development manufacturer CA",
            organization: "Warden development factory",
            valid_years: ca::CA_VALID_YEARS,
        },
        passphrase.as_bytes(),
        warden_provision::key_envelope::KdfCost::default(),
    )
    .map_err(|e| format!("manufacturer CA in {}: {e}", ca_dir.display()))?;
    let ca = ca::ManufacturerCa::open(&ca_dir, passphrase.as_bytes())
        .map_err(|e| format!("manufacturer CA in {}: {e}", ca_dir.display()))?;
    let issued = ca
        .issue_device_certificate(device_id, SERIAL, device_key, CERTIFICATE_DAYS)
        .map_err(|e| format!("device certificate for {device_id}: {e}"))?;
    let id_file = factory.join(DEVICE_ID_FILE);
    std::fs::write(&id_file, format!("{device_id}\n"))
        .map_err(|e| format!("{}: {e}", id_file.display()))?;
    Ok(ProvisionedUnit {
        device_id: device_id.to_owned(),
        certificate_pem: issued.pem,
        manufacturer_ca_pem: ca.cert_pem().to_owned(),
    })
}

/// The fleet's side of the factory: the product with its manufacturer CA, the unit's
/// registration, and the factory release (so the unit attests as running it).
fn register(
    fleet: &crate::os_fleet::DevFleet,
    product: &str,
    unit: &ProvisionedUnit,
    signed: &Path,
) -> Result<(), String> {
    let running = fleet.start()?;
    let api = &running.api;
    api.post_json(
        "/api/v1/products",
        &serde_json::json!({ "name": product, "manufacturer_ca_pem": unit.manufacturer_ca_pem }),
    )?;
    api.post_json(
        "/api/v1/devices",
        &serde_json::json!({
            "device_id": unit.device_id,
            "serial": SERIAL,
            "product": product,
            "group": "Production",
            "certificate_pem": unit.certificate_pem,
            "image_version": format!("{}.{}.{}", VERSION.major, VERSION.minor, VERSION.patch),
        }),
    )?;
    api.post_file("/api/v1/images", signed)?;
    eprintln!(
        "    development unit {} registered at the fleet in {}",
        unit.device_id,
        fleet.dir.display()
    );
    Ok(())
}

/// The unit's files under the state partition's `etc/`, each bound by PID 1 to the same
/// path under the guest's `/etc`.
const UNIT_CONFIG: &[(&str, &str)] = &[
    (
        "etc/warden/warden.toml",
        include_str!("os_unit/warden.toml"),
    ),
    (
        "etc/warden/policy.toml",
        include_str!("os_unit/policy.toml"),
    ),
    ("etc/hosts", include_str!("os_unit/hosts")),
    ("etc/resolv.conf", include_str!("os_unit/resolv.conf")),
];

/// The placeholder in `os_unit/warden.toml` the unit's device ID replaces.
const DEVICE_ID_PLACEHOLDER: &str = "set-by-the-factory";

/// Writes [`UNIT_CONFIG`] (the config naming `unit`'s device ID), the device
/// certificate, the fleet CA and the status page's password hash into `state`.
fn write_unit_config(
    warden: &Path,
    vendor: &Path,
    state: &Path,
    unit: &ProvisionedUnit,
    fleet_ca: &Path,
) -> Result<(), String> {
    let fleet_ca =
        std::fs::read_to_string(fleet_ca).map_err(|e| format!("{}: {e}", fleet_ca.display()))?;
    let config = UNIT_CONFIG
        .iter()
        .map(|(path, text)| (*path, text.replace(DEVICE_ID_PLACEHOLDER, &unit.device_id)))
        .chain([
            ("etc/warden/device-cert.pem", unit.certificate_pem.clone()),
            ("etc/warden/fleet-ca.pem", fleet_ca),
        ]);
    for (path, text) in config {
        let path = state.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let password = hex_of(&rand_bytes::<12>()?);
    let kept = vendor.join("status-page-password");
    std::fs::write(&kept, format!("{password}\n"))
        .map_err(|e| format!("{}: {e}", kept.display()))?;
    let hash_file = state.join("status-page/password.phc");
    let mut passwd = Command::new(warden)
        .arg("passwd")
        .arg("--file")
        .arg(&hash_file)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} passwd: {e}", warden.display()))?;
    if let Some(mut stdin) = passwd.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .map_err(|e| format!("warden passwd: {e}"))?;
    }
    let status = passwd.wait().map_err(|e| format!("warden passwd: {e}"))?;
    if !status.success() {
        return Err(format!(
            "warden passwd --file {} failed: {status}",
            hash_file.display()
        ));
    }
    eprintln!(
        "    development unit: status page password in {}",
        kept.display()
    );
    Ok(())
}

fn rand_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The unit's TPM during the factory steps: swtpm on the state directory QEMU later
/// gives the guest, serving TCP on loopback (`swtpm:` TCTI).
struct FactoryTpm {
    child: Child,
    port: u16,
}

impl FactoryTpm {
    fn start(state: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
        let port = free_port_pair()?;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .args(["--flags", "startup-clear,not-need-init"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start swtpm (Debian: swtpm, swtpm-tools): {e}"))?;
        let mut tpm = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            if Instant::now() > deadline {
                tpm.stop();
                return Err(format!("swtpm did not listen on 127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FactoryTpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two consecutive free loopback ports (swtpm's data and control sockets).
fn free_port_pair() -> Result<u16, String> {
    for _ in 0..64 {
        let first = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| format!("no free port: {e}"))?;
        let port = first.local_addr().map_err(|e| e.to_string())?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err("no two consecutive free loopback ports".to_owned())
}

/// `warden pluton` on the host, for the factory steps.
struct Pluton {
    child: Child,
}

impl Pluton {
    fn start(warden: &Path, socket: &Path, state: &Path, tcti: &str) -> Result<Self, String> {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(warden)
            .arg("pluton")
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .arg("--backend")
            .arg("tpm")
            .arg("--tcti")
            .arg(tcti)
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
