//! The real-time core in QEMU: the firmware boots on an emulated Cortex-M4
//! (`mps2-an386`), its bus UART wired to the paced RTU simulator's pseudo-terminal,
//! its mailbox UART to the application side (`warden_bridges::rtcore`) on a second
//! pseudo-terminal. Checks that bundles are verified on the core (unsigned, tampered
//! and foreign-signed ones refused, nothing passes before a valid one), that polled
//! values arrive as samples, and that a write the core's policy denies never reaches
//! the line: QEMU logs every byte the core sends on the bus, and the simulator counts
//! every frame it received.
//!
//! Needs `qemu-system-arm`, the `thumbv7em-none-eabihf` target and `defmt-print`
//! (`cargo install defmt-print`); the firmware is built by the test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warden_bridges::bridge::{BridgeHandle, Downstream, WriteOutcome, WriteTarget};
use warden_bridges::config::BridgesConfig;
use warden_bridges::modbus::pdu::{FunctionCode, Request};
use warden_bridges::modbus::rtu::{CharTiming, Direction, RtuFramer};
use warden_bridges::modbus::rtu_bus::Parity;
use warden_bridges::modbus::{Answer, ClientError};
use warden_bridges::point::{RegisterKind, WriteValue};
use warden_bridges::request_policy::{PolicyGate, RequestSource};
use warden_bridges::rtcore::{CoreSetup, RtCoreBus, RtCoreError};
use warden_bridges::{BridgeHealth, Poller};
use warden_hil::demo_pki::DemoPki;
use warden_hil::modbus_rtu_slave::{RtuLineModel, RtuSlaveSimulator};
use warden_hil::register_model::RegisterModel;
use warden_hil::simulated_device::DeviceModel;
use warden_hil::simulated_device::Faults;
use warden_keychain::tooling::{SecretSigningKey, issue_release_cert, load_secret_key};
use warden_policy::bundle::ProductId;
use warden_policy::bundle::build::build_bundle;
use warden_rtcore_mailbox::BundleRefusal;

const PRODUCT: &str = "warden-gw";
const BAUD: u32 = 19_200;

const POLICY: &str = r#"
[policy]
name = "rtcore-hil"

[[modbus]]
name = "rt-reads"
bridge = "rtline"
units = 1
functions = ["read_holding_registers"]
addresses = "0..=9"
sources = ["poll", "cloud"]

[[modbus]]
name = "rt-setpoint"
bridge = "rtline"
units = 1
functions = ["write_single_register"]
addresses = 5
sources = ["cloud"]
values = "0..=500"
"#;

fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol-bridges/rtcore/firmware")
}

/// Builds the firmware with `root` baked in; returns the ELF.
fn build_firmware(root_key_file: &Path) -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rtcore-firmware");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(firmware_dir())
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "thumbv7em-none-eabihf",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("WARDEN_RTCORE_VENDOR_ROOT", root_key_file)
        .env("WARDEN_RTCORE_PRODUCT", PRODUCT)
        .env("DEFMT_LOG", "info")
        .status()
        .expect("run cargo for the firmware");
    assert!(status.success(), "the firmware did not build");
    target_dir.join("thumbv7em-none-eabihf/release/warden-rtcore")
}

/// QEMU and defmt-print, killed when dropped.
struct Qemu {
    qemu: Child,
    decoder: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = self.decoder.kill();
        let _ = self.decoder.wait();
        println!("---- defmt from the real-time core ----\n{}", self.defmt());
    }
}

impl Qemu {
    /// Boots `elf`: UART0 on `bus_path` (every byte the core sends logged to
    /// `bus_log`), UART1 on a new pseudo-terminal, whose path is returned.
    fn boot(elf: &Path, bus_path: &str, bus_log: &Path) -> (Self, String) {
        let mut qemu = Command::new("qemu-system-arm")
            .args(["-cpu", "cortex-m4", "-machine", "mps2-an386"])
            .args(["-display", "none", "-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-chardev")
            .arg(format!(
                "serial,id=bus,path={bus_path},logfile={}",
                bus_log.display()
            ))
            .args(["-chardev", "pty,id=mailbox"])
            .args(["-serial", "chardev:bus", "-serial", "chardev:mailbox"])
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-arm (apt-get install qemu-system-arm)");
        // QEMU names the mailbox pseudo-terminal on stdout ("char device redirected
        // to /dev/pts/N (label mailbox)") before the guest runs; everything after it
        // is semihosting output: defmt frames, for defmt-print.
        let mut stdout = BufReader::new(qemu.stdout.take().expect("qemu stdout"));
        let mut mailbox = None;
        let mut line = String::new();
        while mailbox.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("qemu exited before naming the mailbox pty");
            }
            eprint!("qemu: {line}");
            if line.contains("(label mailbox)") {
                mailbox = line
                    .split_whitespace()
                    .find(|word| word.starts_with("/dev/pts/"))
                    .map(str::to_owned);
            }
        }
        let mut decoder = Command::new("defmt-print")
            .arg("-e")
            .arg(elf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start defmt-print (cargo install defmt-print)");
        let mut decoder_in = decoder.stdin.take().expect("defmt-print stdin");
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut decoder_in);
        });
        let log = Arc::new(Mutex::new(String::new()));
        let decoded = decoder.stdout.take().expect("defmt-print stdout");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(decoded).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stderr = qemu.stderr.take().expect("qemu stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("qemu: {line}");
            }
        });
        let mailbox = mailbox.expect("mailbox pty");
        (Self { qemu, decoder, log }, mailbox)
    }

    fn defmt(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Request frames (unit, PDU) found in the bytes the core sent on the bus.
fn frames_on_the_bus(log: &Path) -> Vec<(u8, Vec<u8>)> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let timing = CharTiming::for_line(BAUD, 11);
    let mut framer = RtuFramer::new(Direction::Request, timing, false);
    let mut frames = Vec::new();
    // Time is not in the log: space the bytes one character apart.
    let mut now = 0u64;
    for byte in bytes {
        now += u64::from(timing.char_us);
        if let Some(frame) = framer.push(byte, now) {
            frames.push((frame.unit(), frame.pdu().to_vec()));
        }
    }
    if let Some(frame) = framer.poll(now + 10 * u64::from(timing.t3_5_us)) {
        frames.push((frame.unit(), frame.pdu().to_vec()));
    }
    frames
}

struct Bundles {
    good: Vec<u8>,
    tampered: Vec<u8>,
    unsigned: Vec<u8>,
    foreign: Vec<u8>,
}

fn bundles(pki: &DemoPki) -> Bundles {
    let compiled = warden_policy::compile(POLICY, "rtcore-hil.toml").expect("policy compiles");
    let product = ProductId::new(PRODUCT).expect("product");
    let release = load_secret_key(&pki.policy_release_key).expect("release key");
    let cert = std::fs::read(&pki.policy_release_cert).expect("release cert");
    let good = build_bundle(&compiled.policy, product, 1, &release, &cert).expect("bundle");
    let mut tampered = good.clone();
    // One bit of the tables flipped after signing.
    tampered[warden_policy::bundle::HEADER_LEN + 3] ^= 0x01;
    let mut unsigned = good.clone();
    let signature_at = unsigned.len() - 64;
    unsigned[signature_at..].fill(0);
    // Properly signed, by a release key another root certified.
    let other_root = SecretSigningKey::generate().expect("key");
    let other_release = SecretSigningKey::generate().expect("key");
    let other_cert = issue_release_cert(
        &other_root,
        &other_release.public_key(),
        warden_keychain::Purpose::POLICY,
        9,
    )
    .expect("cert");
    let foreign =
        build_bundle(&compiled.policy, product, 2, &other_release, &other_cert).expect("bundle");
    Bundles {
        good,
        tampered,
        unsigned,
        foreign,
    }
}

fn device() -> DeviceModel {
    let mut holding = BTreeMap::new();
    for address in 0..10u16 {
        holding.insert(
            address,
            RegisterModel::Constant {
                value: 1000 + address,
            },
        );
    }
    DeviceModel {
        unit: 1,
        holding,
        ..DeviceModel::default()
    }
}

fn write(address: u16, value: u16) -> Request {
    Request::WriteSingleRegister { address, value }
}

fn read(address: u16, count: u16) -> Request {
    Request::ReadRegisters {
        function: FunctionCode::ReadHoldingRegisters,
        address,
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm, the thumbv7em-none-eabihf target and defmt-print"]
async fn the_real_time_core_polls_enforces_policy_and_verifies_bundles() {
    // The PKI lives in the target dir so its vendor root (and so the firmware build)
    // stays the same from run to run.
    let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rtcore-hil");
    let pki = DemoPki::generate(&state.join("pki")).expect("pki");
    let root_file = state.join("vendor-root.pub");
    let root = pki.vendor_root_public_key().expect("root");
    if std::fs::read(&root_file).ok().as_deref() != Some(&root[..]) {
        std::fs::write(&root_file, root).expect("write root");
    }
    let elf = tokio::task::spawn_blocking(move || build_firmware(&root_file))
        .await
        .expect("build");
    let bundles = bundles(&pki);
    let run = tempfile::tempdir().expect("tempdir");
    let bundle_file = run.path().join("tampered.wpb");
    std::fs::write(&bundle_file, &bundles.tampered).expect("write bundle");

    let simulator = RtuSlaveSimulator::start(RtuLineModel {
        baud: BAUD,
        parity: Parity::Even,
        stop_bits: 1,
        turnaround_us: 0,
        devices: vec![device()],
    })
    .expect("simulator pty");
    let bus_log = run.path().join("bus.log");
    let (qemu, mailbox) = Qemu::boot(&elf, simulator.path(), &bus_log);

    // The bridge config, as an integrator writes it; it boots the core with the
    // tampered bundle, so the core starts with no policy.
    let config: BridgesConfig = toml::from_str(&format!(
        r#"
[[modbus_rtu]]
name = "rtline"
port = "core:uart0"
baud = {BAUD}
timeout_ms = 200
retries = 1
transport = "rtcore"
mailbox = "{mailbox}"
policy_bundle = "{}"
[[modbus_rtu.points]]
name = "level"
kind = "holding"
address = 2
type = "u16"
poll_interval_ms = 100
"#,
        bundle_file.display()
    ))
    .expect("config parses");
    config.validate().expect("config is valid");
    let line = &config.modbus_rtu[0];
    let setup = CoreSetup::from_config(line).expect("setup");
    let health = Arc::new(Mutex::new(BridgeHealth::default()));
    let shutdown = CancellationToken::new();
    let (core, task) = RtCoreBus::for_mailbox_device(
        mailbox.clone(),
        setup,
        Arc::clone(&health),
        shutdown.clone(),
    );
    tokio::spawn(task);

    // Deny by default: the tampered bundle was refused, so nothing passes.
    let mut before_policy = Err(RtCoreError::NotTaken("not asked"));
    for _ in 0..50 {
        before_policy = core.call(1, read(0, 2), RequestSource::Poll).await;
        if !matches!(&before_policy, Err(RtCoreError::Client(_))) {
            break;
        }
        // The mailbox task is still bringing the core up.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(before_policy, Err(RtCoreError::NoPolicy));
    let refusal = health.lock().expect("health").last_error.clone();
    assert!(
        health.lock().expect("health").errors >= 1,
        "the tampered bundle was not reported: {refusal:?}"
    );
    assert_eq!(
        core.load_bundle(Arc::new(bundles.unsigned.clone())).await,
        Err(RtCoreError::BundleRefused(BundleRefusal::SignatureInvalid))
    );
    assert_eq!(
        core.load_bundle(Arc::new(bundles.foreign.clone())).await,
        Err(RtCoreError::BundleRefused(BundleRefusal::Certificate))
    );
    assert_eq!(
        core.load_bundle(Arc::new(bundles.tampered.clone())).await,
        Err(RtCoreError::BundleRefused(BundleRefusal::BodyHashMismatch))
    );
    assert_eq!(
        core.call(1, read(0, 2), RequestSource::Poll).await,
        Err(RtCoreError::NoPolicy)
    );
    assert!(
        frames_on_the_bus(&bus_log).is_empty(),
        "nothing may reach the bus before a valid bundle"
    );

    // The genuine bundle verifies on the core.
    assert_eq!(
        core.load_bundle(Arc::new(bundles.good.clone())).await,
        Ok(1)
    );

    // Values arrive: the same poller and points as a native line.
    let compiled = Arc::new(
        warden_policy::compile(POLICY, "rtcore-hil.toml")
            .expect("policy")
            .policy,
    );
    let handle = BridgeHandle::new(
        line.name.clone(),
        warden_bridges::rtcore::describe(line),
        line.unit,
        line.points.clone(),
        Downstream::RtCore(core.clone()),
        Box::new(PolicyGate::new(Arc::clone(&compiled))),
        Arc::clone(&health),
    );
    let (samples_tx, mut samples) = mpsc::channel(16);
    tokio::spawn(
        Poller::for_bridge(handle.clone(), line.max_gap).run(samples_tx, shutdown.clone()),
    );
    let sample = tokio::time::timeout(Duration::from_secs(10), samples.recv())
        .await
        .expect("a sample within 10 s")
        .expect("sample");
    assert_eq!(
        (sample.point.as_str(), sample.value.as_number()),
        ("level", Some(1002.0))
    );

    // An allowed write goes through and is read back.
    let setpoint = WriteTarget::Address {
        unit: Some(1),
        kind: RegisterKind::Holding,
        address: 5,
    };
    assert_eq!(
        handle
            .write(&setpoint, &WriteValue::Number(250.0), RequestSource::Cloud)
            .await,
        WriteOutcome::Written
    );
    assert_eq!(
        core.call(1, read(5, 1), RequestSource::Cloud).await,
        Ok(Answer::Registers(vec![250]))
    );

    // A write the policy denies, sent straight to the core as a compromised
    // application core would (no gate on this side): the core refuses it.
    let denied = core.call(1, write(7, 99), RequestSource::Cloud).await;
    let Err(RtCoreError::Denied { reason, .. }) = &denied else {
        panic!("the core let a denied write through: {denied:?}");
    };
    assert!(reason.starts_with("address-not-allowed"), "{reason}");
    let out_of_range = core.call(1, write(5, 900), RequestSource::Cloud).await;
    assert!(
        matches!(&out_of_range, Err(RtCoreError::Denied { reason, .. }) if reason.starts_with("value-not-allowed")),
        "{out_of_range:?}"
    );
    let from_poll = core.call(1, write(5, 10), RequestSource::Poll).await;
    assert!(
        matches!(from_poll, Err(RtCoreError::Denied { .. })),
        "{from_poll:?}"
    );
    // Through the bridge the application's own gate refuses it first.
    let outcome = handle
        .write(
            &WriteTarget::Address {
                unit: Some(1),
                kind: RegisterKind::Holding,
                address: 7,
            },
            &WriteValue::Number(99.0),
            RequestSource::Cloud,
        )
        .await;
    assert!(
        matches!(outcome, WriteOutcome::Denied { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        core.call(1, read(7, 1), RequestSource::Cloud).await,
        Ok(Answer::Registers(vec![1007])),
        "register 7 must be untouched"
    );

    // Line faults are counted on the core and reach the bridge's health, as on a
    // native line: every answer garbled, so both attempts fail.
    simulator.set_faults(
        1,
        Faults {
            crc_corruption: 1.0,
            ..Faults::default()
        },
    );
    assert_eq!(
        core.call(1, read(0, 1), RequestSource::Cloud).await,
        Err(RtCoreError::Client(ClientError::Corrupted))
    );
    simulator.set_faults(1, Faults::default());
    let counters = core.counters().await.expect("counters");
    assert!(
        counters.crc_errors >= 2 && counters.corrupted >= 2 && counters.retries >= 1,
        "{counters:?}"
    );
    // Bundle verification (ECDSA) ran: the deepest stack the core has needed must
    // leave room in the 64 KiB budget (about 32 KiB are static data, see BENCHMARKS).
    println!(
        "real-time core stack high-water mark: {} bytes",
        counters.stack_used
    );
    assert!(
        counters.stack_used > 0 && counters.stack_used < 32 * 1024,
        "{counters:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    {
        let health = health.lock().expect("health");
        assert!(
            health.crc_errors >= 2 && health.retries >= 1,
            "core counters did not reach the health: {health:?}"
        );
    }

    // The bus saw exactly what the policy allowed: no write other than 250 to
    // register 5, and every frame the core sent reached the simulator.
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames = frames_on_the_bus(&bus_log);
    assert!(frames.len() >= 4, "frames on the bus: {frames:?}");
    let writes: Vec<&(u8, Vec<u8>)> = frames.iter().filter(|(_, pdu)| pdu[0] == 0x06).collect();
    assert_eq!(
        writes,
        vec![&(1u8, vec![0x06, 0, 5, 0, 250])],
        "writes on the bus"
    );
    assert!(
        frames
            .iter()
            .all(|(unit, pdu)| *unit == 1 && matches!(pdu[0], 0x03 | 0x06)),
        "{frames:?}"
    );
    let stats = simulator.stats();
    assert_eq!(stats.requests, frames.len() as u64, "{stats:?}");
    assert_eq!(stats.noise_bytes, 0, "{stats:?}");
    let health = health.lock().expect("health").clone();
    assert!(health.denied >= 5, "{health:?}");
    let defmt = qemu.defmt();
    drop(qemu);
    assert!(defmt.contains("policy bundle refused"), "{defmt}");
    assert!(defmt.contains("verified and applied"), "{defmt}");
    assert!(
        defmt.contains("denied: unit 1 function 6 address 7"),
        "{defmt}"
    );
}
