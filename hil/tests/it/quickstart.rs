//! The fleet README's quick start, run as written: its `sh quickstart` blocks, in
//! order, in an empty directory, with this build's binaries on `PATH`. The document
//! cannot drift from what works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The README whose blocks are run.
const README: &str = include_str!("../../../cloud-link/fleet/README.md");

/// The shell text of every block fenced as ```` ```sh quickstart ````, in order.
fn quickstart_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == "```sh quickstart" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The directory of this build's binaries (`target/<profile>/`, beside `deps/`).
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_owned()
}

fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.to_string())
        .expect("a free port")
}

/// The whole script's deadline: every wait in it is a bounded loop, this catches a
/// command that hangs.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn the_readme_has_the_quick_start_blocks() {
    let blocks = quickstart_blocks(README);
    assert!(blocks.len() >= 3, "{blocks:?}");
    // From zero to a trusted unit, in this order.
    let steps = [
        "warden-provision keys root",
        "warden-provision keys release",
        "warden-fleet init",
        "token create --role provisioner",
        "warden-provision ca init",
        "/api/v1/products",
        "warden image sign",
        "warden-provision bundle sign",
        "/api/v1/images",
        "warden-provision unit",
        "warden boot",
        "\"trusted\"",
    ];
    let script = blocks.concat();
    let mut from = 0;
    for step in steps {
        let found = script[from..]
            .find(step)
            .unwrap_or_else(|| panic!("the quick start lacks {step:?} after byte {from}"));
        from += found + step.len();
    }
    // The station gets its own token, never the admin's.
    assert!(
        !script.contains("WARDEN_FLEET_TOKEN=\"$(sed -n 's/^admin"),
        "{script}"
    );
}

/// `curl` with the fleet CA, and a token if given; the answer's body.
fn curl(dir: &Path, url: &str, token: Option<&str>) -> String {
    let mut command = Command::new("curl");
    command
        .current_dir(dir)
        .args(["-sf", "--max-time", "20", "--cacert", "fleet/fleet-ca.pem"]);
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = command.arg(url).output().expect("run curl");
    assert!(output.status.success(), "curl {url}: {}", output.status);
    String::from_utf8(output.stdout).expect("utf-8")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// A token the script printed, from the file it teed it into (`<role> token: …`).
fn token(dir: &Path, file: &str, role: &str) -> String {
    let text = std::fs::read_to_string(dir.join(file)).expect("token file");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{role} token:")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {role} token in {file}: {text}"))
        .to_owned()
}

/// Stops what the script started in the background (by the PIDs it wrote).
fn stop_background(dir: &Path) {
    for file in ["unit.pid", "fleet.pid"] {
        if let Ok(pid) = std::fs::read_to_string(dir.join(file)) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// Runs the script with a deadline; its exit status, or `None` if it was killed.
fn run_script(dir: &Path, bin: &Path) -> Option<std::process::ExitStatus> {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stdout = std::fs::File::create(dir.join("script.out")).expect("stdout file");
    let stderr = std::fs::File::create(dir.join("script.err")).expect("stderr file");
    let mut child = Command::new("bash")
        .arg("quickstart.sh")
        .current_dir(dir)
        .env("PATH", path)
        .env("FLEET_HTTP", free_address())
        .env("FLEET_MQTT", free_address())
        .env("FLEET_METRICS", free_address())
        .env("UNIT_STATUS", free_address())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("run bash");
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
#[ignore = "needs the warden, warden-fleet and warden-provision binaries built, curl, jq and strip"]
fn the_fleet_readme_quick_start_runs_as_written() {
    let bin = binary_dir();
    for name in ["warden", "warden-fleet", "warden-provision"] {
        assert!(
            bin.join(name).is_file(),
            "{} missing: `cargo build -p warden -p warden-fleet -p warden-provision --bins`",
            bin.join(name).display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let script = format!("set -euo pipefail\n{}", quickstart_blocks(README).concat());
    std::fs::write(dir.join("quickstart.sh"), &script).expect("script");
    let status = run_script(dir, &bin);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let logs = || {
        format!(
            "--- stdout\n{}\n--- stderr\n{}\n--- fleet.log\n{}\n--- unit.log\n{}",
            read("script.out"),
            read("script.err"),
            read("fleet.log"),
            read("unit.log")
        )
    };
    if status.is_none_or(|status| !status.success()) {
        stop_background(dir);
        panic!(
            "the quick start failed ({status:?}, deadline {SCRIPT_DEADLINE:?}):\n{}",
            logs()
        );
    }

    // The end state, asked of the running fleet independently of the script's checks.
    let fleet = format!("https://{}", http_listen(dir));
    let admin = token(dir, "init.txt", "admin");
    let station = token(dir, "station-token.txt", "provisioner");
    assert_ne!(admin, station, "the station has a token of its own");
    let record = json(&read("units/WG000001/factory/unit.json"));
    let device_id = record["device_id"].as_str().expect("device ID").to_owned();
    let device = json(&curl(
        dir,
        &format!("{fleet}/api/v1/devices/{device_id}"),
        Some(&admin),
    ));
    let checks = (|| {
        expect_that(device["serial"] == "WG000001", "serial", &device)?;
        expect_that(device["product"] == "warden-gw", "product", &device)?;
        expect_that(device["group"] == "Production", "group", &device)?;
        expect_that(
            device["fingerprint"] == record["fingerprint"],
            "fingerprint",
            &device,
        )?;
        expect_that(device["attestation"] == "trusted", "attestation", &device)?;
        expect_that(
            device["attestation_detail"]
                .as_str()
                .is_some_and(|detail| detail.starts_with("runs release warden-gw 1.0.0")),
            "attestation_detail",
            &device,
        )?;
        expect_that(device["revoked"] == false, "revoked", &device)?;
        // The station registered it with its provisioner token (the audit log names
        // the token), not with the admin's.
        let audit = json(&curl(dir, &format!("{fleet}/api/v1/audit"), Some(&admin)));
        let registered_by = audit.as_array().and_then(|lines| {
            lines
                .iter()
                .find(|line| line["method"] == "POST" && line["path"] == "/api/v1/devices")
        });
        expect_that(
            registered_by.is_some_and(|line| line["actor"] == "station-1"),
            "audit: POST /api/v1/devices by station-1",
            &audit,
        )?;
        // The dashboard: its device page is served, and the endpoint it renders from
        // (with the viewer rights any token has) shows the unit online and trusted.
        let page = curl(dir, &format!("{fleet}/devices/{device_id}"), None);
        expect_that(
            page.contains("<html") && page.contains("/assets/dashboard.js"),
            "dashboard page",
            &serde_json::Value::String(page.clone()),
        )?;
        let shown = json(&curl(
            dir,
            &format!("{fleet}/api/v1/dashboard/devices/{device_id}"),
            Some(&station),
        ));
        expect_that(shown["online"] == true, "dashboard: online", &shown)?;
        expect_that(
            shown["registered"]["attestation"] == "trusted",
            "dashboard: trusted",
            &shown,
        )?;
        Ok::<_, String>(())
    })();
    stop_background(dir);
    if let Err(failed) = checks {
        panic!("{failed}\n{}", logs());
    }
}

/// `Err` naming `what` and showing `value` unless `ok`.
fn expect_that(ok: bool, what: &str, value: &serde_json::Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what} is not as expected in {value:#}"))
    }
}

/// The `http_listen` the fleet's config holds (the script's `FLEET_HTTP`).
fn http_listen(dir: &Path) -> String {
    let config = std::fs::read_to_string(dir.join("fleet/fleet.toml")).expect("fleet.toml");
    config
        .lines()
        .find_map(|line| line.strip_prefix("http_listen = "))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .expect("http_listen")
}
