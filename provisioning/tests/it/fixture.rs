//! A factory in a temp dir: vendor keys, signed images, a policy bundle, a config
//! template, the manufacturer CA (made by the real binary) and the real fleet process.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use sha2::Digest as _;
use warden_keychain::Purpose;
use warden_keychain::tooling::{
    SecretSigningKey, issue_release_cert, save_public_key, save_secret_key,
};
use warden_os::image::{ProductId, SemanticVersion};
use warden_os::release::{BuildRequest, build_unsigned, sign_file};

pub const PRODUCT: &str = "warden-gw";
pub const GROUP: &str = "Production";
pub const PASSPHRASE: &str = "factory-line-7 passphrase";
pub const TOKEN: &str = "station-token-0123456789abcdef";

pub fn station_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden-provision"))
}

/// The real `warden-fleet` binary.
pub fn fleet_exe() -> PathBuf {
    workspace_bin("warden-fleet", "warden-fleet")
}

/// The real appliance binary (`warden`).
pub fn appliance_exe() -> PathBuf {
    workspace_bin("warden", "warden")
}

/// A binary of another workspace package. Cargo sets `CARGO_BIN_EXE_` only for this
/// package's own binaries, so it is looked up next to this test's executable
/// (`target/<profile>/`, where `cargo test --workspace` builds it) and built with the
/// same Cargo and target directory otherwise.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/it-HASH → target/<profile>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_owned();
    let exe = profile_dir.join(bin);
    if !exe.is_file() {
        // Cargo releases its build-directory lock while tests and benches run, so a
        // nested build into the same target directory works.
        let target_dir = profile_dir.parent().expect("target dir");
        let mut args = vec!["build", "-p", package, "--bin", bin];
        if profile_dir.ends_with("release") {
            args.push("--release");
        }
        let status = Command::new(env!("CARGO"))
            .args(&args)
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    assert!(exe.is_file(), "{} missing after building it", exe.display());
    exe
}

pub struct FleetProcess {
    child: Child,
    pub url: String,
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FleetProcess {
    pub fn get_device(&self, device_id: &str) -> (u16, serde_json::Value) {
        let response = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/devices/{device_id}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .expect("fleet GET");
        let status = response.status().as_u16();
        let body = response.json().unwrap_or(serde_json::Value::Null);
        (status, body)
    }
}

pub struct Factory {
    pub dir: tempfile::TempDir,
    pub fleet: Option<FleetProcess>,
}

/// How the factory image's `bin/warden` behaves when the self-test starts it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Healthy,
    Broken,
}

fn write_script(path: &Path, exit_code: i32) {
    std::fs::write(path, format!("#!/bin/sh\nexit {exit_code}\n")).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn build_image(
    dir: &Path,
    name: &str,
    binary: &Path,
    version: SemanticVersion,
    counter: u64,
    key: &Path,
    cert: &Path,
) -> PathBuf {
    let unsigned = dir.join(format!("{name}.unsigned"));
    let signed = dir.join(format!("{name}.wim"));
    build_unsigned(
        &BuildRequest {
            binary: binary.to_owned(),
            defaults: None,
            product: ProductId::new(PRODUCT).expect("product"),
            version,
            security_counter: counter,
            build_id: None,
            created_at: Some(1_700_000_000),
        },
        &unsigned,
    )
    .expect("build image");
    sign_file(&unsigned, key, cert, &signed, &mut |_| {}).expect("sign image");
    signed
}

const POLICY: &str = r#"
[policy]
name = "factory-default"
description = "read-only polling of line 1"

[[modbus]]
name = "line1-process-values"
bridge = "line1"
units = 1
functions = ["read_holding_registers"]
addresses = "0..=9"
sources = ["poll"]
"#;

const TEMPLATE: &str = r#"
[device]
id = "template"
product = "template"

[policy]
file = "policy.toml"
bundle_dir = "../../var/lib/warden/policy-bundles"

[[bridges.modbus_tcp]]
name = "line1"
address = "192.168.50.10:502"
unit = 1
timeout_ms = 1000

[[bridges.modbus_tcp.points]]
name = "oil_temperature"
kind = "holding"
address = 0
type = "u16"
poll_interval_ms = 500

[link]
broker_host = "fleet.example.invalid"
broker_port = 8883
fleet_ca = "set-by-station.pem"
device_cert = "set-by-station.pem"
pluton_socket = "../../run/warden/pluton/pluton.sock"

[link.outbox]
dir = "../../var/lib/warden/appliance/outbox"

[status_page]
listen = "0.0.0.0:8081"
password_file = "../../var/lib/warden/appliance/status-page/password.phc"
state_dir = "../../var/lib/warden/appliance/status-page"
"#;

impl Factory {
    /// A factory whose station config is `station.toml` in the temp dir. `fleet`
    /// starts the real fleet service; otherwise the config names a closed port.
    pub fn new(probe: Probe, fleet: bool) -> Self {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // Keep the factory for inspection (e.g. `warden check-config` on a unit).
        if std::env::var_os("WARDEN_PROVISION_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("factory kept in {}", dir.path().display());
        }
        let root = dir.path();
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let vendor_root = SecretSigningKey::generate().expect("root");
        let release = SecretSigningKey::generate().expect("release");
        let cert = issue_release_cert(
            &vendor_root,
            &release.public_key(),
            Purpose::IMAGE | Purpose::POLICY,
            1,
        )
        .expect("release cert");
        save_public_key(&keys.join("vendor-root.pub.pem"), &vendor_root.public_key())
            .expect("save root");
        save_secret_key(&keys.join("release.pem"), &release).expect("save release");
        std::fs::write(keys.join("release.cert"), cert).expect("cert");

        let images = root.join("images");
        std::fs::create_dir_all(&images).expect("images dir");
        let healthy = images.join("warden-ok");
        write_script(&healthy, 0);
        let broken = images.join("warden-broken");
        write_script(&broken, 3);
        let factory_binary = if probe == Probe::Healthy {
            &healthy
        } else {
            &broken
        };
        let v100 = SemanticVersion {
            major: 1,
            minor: 0,
            patch: 0,
        };
        let v101 = SemanticVersion {
            major: 1,
            minor: 0,
            patch: 1,
        };
        build_image(
            &images,
            "factory",
            factory_binary,
            v100,
            3,
            &keys.join("release.pem"),
            &keys.join("release.cert"),
        );
        build_image(
            &images,
            "selftest",
            &healthy,
            v101,
            3,
            &keys.join("release.pem"),
            &keys.join("release.cert"),
        );

        std::fs::write(root.join("policy.toml"), POLICY).expect("policy");
        let (bundle, _) = warden_policy::bundle::build::build_bundle_from_files(
            &root.join("policy.toml"),
            warden_policy::bundle::ProductId::new(PRODUCT).expect("product"),
            1,
            &keys.join("release.pem"),
            &keys.join("release.cert"),
        )
        .expect("bundle");
        std::fs::write(root.join("policy.bundle"), bundle).expect("bundle file");
        std::fs::write(root.join("warden.toml"), TEMPLATE).expect("template");

        // Fleet server PKI (the fleet CA the units pin).
        let fleet_ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let fleet_ca = ca_params.self_signed(&fleet_ca_key).expect("fleet ca");
        let issuer = rcgen::Issuer::new(ca_params, fleet_ca_key);
        let server_key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        std::fs::write(root.join("fleet-ca.pem"), fleet_ca.pem()).expect("fleet ca");
        std::fs::write(root.join("fleet-server.pem"), server.pem()).expect("server");
        std::fs::write(root.join("fleet-server.key"), server_key.serialize_pem()).expect("key");

        let mut factory = Self { dir, fleet: None };
        let init = factory.run(&[
            "ca",
            "init",
            "--ca-dir",
            "ca",
            "--name",
            "Test manufacturer CA",
        ]);
        assert!(init.status.success(), "ca init: {}", stderr(&init));

        let url = if fleet {
            let fleet = factory.start_fleet();
            let url = fleet.url.clone();
            factory.fleet = Some(fleet);
            url
        } else {
            "http://127.0.0.1:9".to_owned()
        };
        let station = format!(
            r#"
product = "{PRODUCT}"
group = "{GROUP}"
ca_dir = "ca"
units_dir = "units"
factory_image = "images/factory.wim"
selftest_image = "images/selftest.wim"
policy_bundle = "policy.bundle"
config_template = "warden.toml"
policy_file = "policy.toml"
fleet_ca = "fleet-ca.pem"

[[vendor_root]]
public_key = "keys/vendor-root.pub.pem"
purposes = ["image", "policy"]

[selftest]
probe_args = ["--version"]
probe_timeout_secs = 20

[fleet]
url = "{url}"
token_env = "TEST_FLEET_TOKEN"
timeout_secs = 10
"#
        );
        std::fs::write(factory.path().join("station.toml"), station).expect("station");
        factory
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Provision on a TPM from now on: `[pluton] backend = "tpm"` with `tcti`.
    #[cfg_attr(
        not(feature = "tpm"),
        allow(dead_code, reason = "the TPM tests need the feature")
    )]
    pub fn set_pluton_tpm(&self, tcti: &str) {
        let path = self.path().join("station.toml");
        let text = std::fs::read_to_string(&path).expect("station.toml");
        let base = text
            .split("\n[pluton]\n")
            .next()
            .unwrap_or(&text)
            .to_owned();
        let text = format!("{base}\n[pluton]\nbackend = \"tpm\"\ntcti = \"{tcti}\"\n");
        std::fs::write(&path, text).expect("station.toml");
    }

    pub fn unit_dir(&self, serial: &str) -> PathBuf {
        self.path().join("units").join(serial)
    }

    /// The station binary with the passphrase and token in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(station_exe());
        command
            .args(args)
            .current_dir(self.path())
            .env("WARDEN_CA_PASSPHRASE", PASSPHRASE)
            .env("TEST_FLEET_TOKEN", TOKEN)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run warden-provision")
    }

    fn start_fleet(&self) -> FleetProcess {
        let root = self.path();
        let token_hash = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()));
        let config = format!(
            r#"
http_listen = "127.0.0.1:0"
mqtt_listen = "127.0.0.1:0"
database_url = "sqlite://{db}"
server_cert = "{root}/fleet-server.pem"
server_key = "{root}/fleet-server.key"
manufacturer_ca = "{root}/fleet-ca.pem"

[api]
tokens = [{{ name = "station", role = "provisioner", sha256 = "{token_hash}" }}]
"#,
            db = root.join("fleet.db").display(),
            root = root.display(),
        );
        std::fs::write(root.join("fleet.toml"), config).expect("fleet config");
        let mut child = Command::new(fleet_exe())
            .arg("--config")
            .arg(root.join("fleet.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start warden-fleet");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("fleet exited before printing its address")
                .expect("read fleet stdout");
            if let Some(rest) = line.strip_prefix("fleet dashboard: ") {
                break rest.trim().trim_end_matches('/').to_owned();
            }
        };
        // Keep draining stdout so the fleet never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        FleetProcess { child, url }
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn read_record(factory: &Factory, serial: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(factory.unit_dir(serial).join("factory/unit.json"))
        .expect("unit.json");
    serde_json::from_str(&text).expect("unit.json parses")
}
