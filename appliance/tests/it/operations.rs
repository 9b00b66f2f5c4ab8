//! What an integrator does on a running unit: `warden status`, `warden check-config`
//! on the shipped example config.

use std::path::Path;
use std::process::Command;

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

/// `warden status` asks the running appliance over its control socket and shows the
/// live values the bridges read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_asks_the_running_appliance() {
    let state = tempfile::tempdir().expect("tempdir");
    let demo = warden_hil::scenario::DemoProcess::start(
        Path::new(env!("CARGO_BIN_EXE_warden")),
        state.path(),
    )
    .await
    .expect("demo starts");
    warden_hil::scenario::wait_for_reading(&demo, "line1/oil_temperature")
        .await
        .expect("a reading");
    let config = state.path().join("warden.toml");

    let json = warden()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("warden status runs");
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON status");
    assert_eq!(status["device_id"], demo.urls.device_id.as_str());
    let line1 = &status["bridges"][0];
    assert_eq!(line1["name"], "line1");
    assert!(
        line1["health"]["reads_ok"].as_u64().unwrap_or(0) > 0,
        "{status:#}"
    );

    let text = warden()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("warden status runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&demo.urls.device_id), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("oil_temperature") && l.contains("°C")),
        "{text}"
    );

    demo.stop().await.expect("demo stops");
    // Stopped: the socket is gone and the command says what is wrong.
    let after = warden()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("warden status runs");
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("cannot reach the running appliance"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}

/// The files the example config names that only a provisioned unit has.
const PROVISIONED: [(&str, &str); 3] = [
    ("link.fleet_ca", "/etc/warden/fleet-ca.pem"),
    ("link.device_cert", "/etc/warden/device-cert.pem"),
    (
        "status_page.password_file",
        "/var/lib/warden/status-page/password.phc",
    ),
];

/// The example `text` pointed at provisioning files made in `dir`: a fleet CA, a
/// device certificate made out to the example's device ID, a password hash.
fn provisioned(text: &str, dir: &Path) -> String {
    let ca = rcgen::generate_simple_self_signed(vec!["fleet-ca".into()]).expect("ca");
    std::fs::write(dir.join("fleet-ca.pem"), ca.cert.pem()).expect("ca");
    // The fleet takes the device ID from the certificate's common name.
    let name = "wd-0000000000000001";
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let device = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join("device-cert.pem"), device.pem()).expect("cert");
    let hash = warden::status_page::auth::hash_password("label").expect("hash");
    warden::status_page::auth::write_password_hash(&dir.join("password.phc"), &hash).expect("hash");
    let mut text = text.to_owned();
    for ((_, path), file) in
        PROVISIONED
            .iter()
            .zip(["fleet-ca.pem", "device-cert.pem", "password.phc"])
    {
        assert!(text.contains(path), "the example names {path}");
        text = text.replace(path, &dir.join(file).display().to_string());
    }
    text
}

/// The fully commented example config shipped in the package validates as shipped,
/// except for the files only a provisioned unit has (each named, with its line), and
/// passes once they exist.
#[test]
fn the_shipped_example_config_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/warden.toml");
    let output = warden()
        .arg("check-config")
        .arg(&example)
        .output()
        .expect("warden check-config runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(&example).expect("example");
    for (field, path) in PROVISIONED {
        let line = text.lines().position(|l| l.contains(path)).expect("named") + 1;
        let expected = format!(
            "{}:{line}: {field}: {path} does not exist",
            example.display()
        );
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("{}: 3 problem(s)", example.display())),
        "only the provisioning files are missing:\n{stderr}"
    );
    // As the package checks it: everything but the provisioning files, ok.
    let output = warden()
        .arg("check-config")
        .arg("--before-provisioning")
        .arg(&example)
        .output()
        .expect("warden check-config runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("warden.toml: ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::write(
        dir.path().join("warden.toml"),
        provisioned(&text, dir.path()),
    )
    .expect("write");
    std::fs::copy(source.join("policy.toml"), dir.path().join("policy.toml")).expect("copy");
    let output = warden()
        .arg("check-config")
        .arg(dir.path().join("warden.toml"))
        .output()
        .expect("warden check-config runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("warden.toml: ok"), "{stdout}");
}

/// A mistake in the example is reported with file and field, not accepted.
#[test]
fn check_config_names_the_file_and_field_of_a_mistake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = std::fs::read_to_string(source.join("warden.toml")).expect("example");
    let broken = text.replacen("deadband = 0.05", "deadband = -1.0", 1);
    assert_ne!(
        text, broken,
        "the example has an energy meter deadband to break"
    );
    std::fs::write(dir.path().join("warden.toml"), broken).expect("write");
    std::fs::copy(source.join("policy.toml"), dir.path().join("policy.toml")).expect("copy");
    let output = warden()
        .arg("check-config")
        .arg(dir.path().join("warden.toml"))
        .output()
        .expect("warden check-config runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warden.toml"), "{stderr}");
    assert!(stderr.contains("deadband"), "{stderr}");
}

/// The example's optional blocks (BLE sensor, private network), commented out as
/// shipped, also validate once enabled the way their comments say: one "# " removed
/// from each line of the block (and of the policy's [[ble]] rules), line1 pointed at
/// the private network's forward.
#[test]
fn the_examples_optional_ble_and_privnet_blocks_validate_when_enabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = std::fs::read_to_string(source.join("warden.toml")).expect("example");
    let policy = std::fs::read_to_string(source.join("policy.toml")).expect("policy");
    let enabled = enable_blocks(&config, &["# [[bridges.ble]]", "# [privnet]"]).replacen(
        "address = \"192.168.50.10:502\"",
        "address = \"127.0.0.1:15020\"",
        1,
    );
    assert!(enabled.contains("\n[[bridges.ble]]\n") && enabled.contains("\n[privnet]\n"));
    assert!(enabled.contains("address = \"127.0.0.1:15020\""));
    let policy = enable_blocks(&policy, &["# [[ble]]"]);
    assert!(policy.contains("\n[[ble]]\n"), "{policy}");
    let enabled = provisioned(&enabled, dir.path());
    std::fs::write(dir.path().join("warden.toml"), &enabled).expect("write");
    std::fs::write(dir.path().join("policy.toml"), &policy).expect("write");
    let output = warden()
        .arg("check-config")
        .arg(dir.path().join("warden.toml"))
        .output()
        .expect("warden check-config runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("warden.toml: ok"), "{stdout}");

    // A mistake in an enabled block names the file and the field.
    let broken = enabled.replacen("to = \"10.77.0.10:502\"", "to = \"10.78.0.10:502\"", 1);
    std::fs::write(dir.path().join("warden.toml"), broken).expect("write");
    let output = warden()
        .arg("check-config")
        .arg(dir.path().join("warden.toml"))
        .output()
        .expect("warden check-config runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = enabled
        .lines()
        .position(|l| l.starts_with("to = \"10.77.0.10:502\""))
        .expect("the forward's target")
        + 1;
    assert!(
        stderr.contains(&format!("warden.toml:{line}: privnet.forward[0].to")),
        "{stderr}"
    );
}

/// Removes one "# " from every line of each block that starts at a line equal to one
/// of `starts` and runs to the next blank line that is followed by a line not
/// starting with "#", or to the next `# ---` section header.
fn enable_blocks(text: &str, starts: &[&str]) -> String {
    let mut out = Vec::new();
    let mut enabling = false;
    for line in text.lines() {
        if starts.contains(&line) {
            enabling = true;
        } else if enabling && (line.starts_with("# ---") || !line.starts_with('#')) {
            enabling = false;
        }
        out.push(if enabling {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        } else {
            line
        });
    }
    out.join("\n") + "\n"
}

/// Pluton started by the boot stage stops when the boot stage is killed outright
/// (SIGKILL leaves it no chance to stop its children): `--parent-pid`.
#[test]
fn pluton_stops_when_its_parent_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pluton.sock");
    // A shell plays the boot stage: it starts pluton naming itself as the parent.
    let script = format!(
        "{} pluton --socket {} --state-dir {} --parent-pid $$ >/dev/null 2>&1 & echo $!; wait",
        env!("CARGO_BIN_EXE_warden"),
        socket.display(),
        dir.path().join("state").display()
    );
    let mut parent = Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("pluton's pid");
    let pluton: u32 = line.trim().parse().expect("a pid");
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim().to_owned()))
            .is_some_and(|rest| !rest.starts_with('Z'))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < until, "pluton never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(alive(pluton), "pluton runs while its parent does");
    parent.kill().expect("SIGKILL the parent");
    parent.wait().expect("reap the parent");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pluton) {
        assert!(
            std::time::Instant::now() < until,
            "pluton {pluton} outlived its killed parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `warden passwd` writes the hash file the status page loads, from a line on
/// standard input, mode 0600, and replaces one only with `--force`.
#[test]
fn passwd_writes_the_hash_the_status_page_accepts() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("status-page/password.phc");
    let set = |password: &str, force: bool| {
        let mut command = warden();
        command.args(["passwd", "--file"]).arg(&file);
        if force {
            command.arg("--force");
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("warden passwd runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
        child.wait_with_output().expect("exits")
    };
    let first = set("plant floor 7", false);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let mode = std::fs::metadata(&file)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let verifier =
        warden::status_page::auth::PasswordVerifier::load(&file).expect("the page loads it");
    assert!(verifier.verify("plant floor 7"));
    let refused = set("other", false);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let forced = set("other", true);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(
        warden::status_page::auth::PasswordVerifier::load(&file)
            .expect("loads")
            .verify("other")
    );
}
