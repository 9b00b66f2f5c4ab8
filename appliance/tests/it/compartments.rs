//! `warden run --manifest`: the appliance split into sandboxed compartments, with
//! real processes and real kernel enforcement (root: dedicated uids and groups).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use warden_hil::demo::{DemoPorts, DemoWorld, DeviceIdentity};
use warden_os::reports::{FailureKind, FailureReport, ReportStore};
use warden_test_support::ports::free_port;

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
const NEEDS: &str = "needs root (dedicated uids and groups) and landlock ABI 6, seccomp filters and network namespaces";

/// Root and the kernel features; says what is missing otherwise.
fn ready() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"));
    let missing = warden_os::sandbox::KernelSupport::probe().missing();
    if !root || !missing.is_empty() {
        eprintln!("SKIPPED: {NEEDS} (root: {root}, kernel lacks: {missing:?})");
        return false;
    }
    true
}

fn quoted(paths: &[&Path]) -> String {
    let items: Vec<String> = paths
        .iter()
        .map(|path| format!("{:?}", path.display().to_string()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// One compartment's table: every grant written out, `grants` overriding the empty ones.
fn compartment(
    name: &str,
    role: &str,
    args: &[String],
    grants: &[(&str, String)],
    uid: u32,
) -> String {
    let mut text = format!(
        "[compartment.{name}]\nrole = \"{role}\"\nargs = [{}]\n",
        args.iter()
            .map(|arg| format!("{arg:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for key in [
        "read",
        "read_write",
        "serial",
        "connect",
        "listen",
        "unix_listen",
        "unix_connect",
        "peers",
    ] {
        let value = grants
            .iter()
            .find(|(granted, _)| *granted == key)
            .map_or_else(|| "[]".to_owned(), |(_, value)| value.clone());
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str(&format!(
        "memory_mib = 256\nopen_files = 256\nuid = {uid}\n\n"
    ));
    text
}

fn monitor_section(reports: &Path) -> String {
    format!(
        "[monitor]\nheartbeat_interval_ms = 200\nwatchdog_timeout_ms = 5000\n\
         restart_backoff_initial_ms = 200\nrestart_backoff_max_ms = 3000\n\
         report_dir = {:?}\nreport_capacity = 256\n\n",
        reports.display().to_string()
    )
}

/// `warden run --manifest`, stopped with SIGTERM (the monitor then stops every
/// compartment) when dropped.
struct MonitorProcess {
    child: Child,
    log: PathBuf,
}

impl MonitorProcess {
    fn start(manifest: &Path, log: PathBuf) -> Self {
        let output = std::fs::File::create(&log).expect("log file");
        let child = Command::new(WARDEN)
            .arg("run")
            .arg("--manifest")
            .arg(manifest)
            .env("RUST_LOG", "info,warden=debug")
            .stdout(Stdio::from(output.try_clone().expect("log")))
            .stderr(Stdio::from(output))
            .spawn()
            .expect("warden run starts");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the monitor exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- monitor log ---\n{}", self.log());
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PIDs of the processes running `warden compartment <role>` with `marker` (a path of
/// this test) among their arguments.
fn compartment_pids(role: &str, marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .map(|word| String::from_utf8_lossy(word).into_owned())
            .collect();
        if words.get(1).map(String::as_str) == Some("compartment")
            && words.get(2).map(String::as_str) == Some(role)
            && words.iter().any(|word| word.contains(marker))
        {
            pids.push(pid);
        }
    }
    pids
}

async fn eventually<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 request with the fleet API token (ignored elsewhere); the
/// status code and body.
async fn http(
    token: &str,
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    // Chunked bodies: the JSON is found inside whatever framing there is.
    Some((status, body.to_owned()))
}

fn json_in(body: &str) -> Option<serde_json::Value> {
    let start = body.find(['{', '['])?;
    let end = body.rfind(['}', ']'])?;
    serde_json::from_str(body.get(start..=end)?).ok()
}

/// Pluton's identity, made once as the factory would, before it runs as a compartment.
fn provision_pluton(socket: &Path, state: &Path) -> DeviceIdentity {
    let mut pluton = Command::new(WARDEN)
        .arg("pluton")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pluton starts");
    let mut client = None;
    for _ in 0..200 {
        if let Ok(connected) = warden_pluton_api::PlutonClient::connect(socket) {
            client = Some(connected);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(client.expect("pluton listens"));
    // The factory is the boot role: it presents the provisioning capability.
    let capability = warden_pluton::server::read_capability_file(
        &state.join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME),
    )
    .expect("capability");
    let mut client =
        warden_pluton_api::PlutonClient::connect_as_boot(socket, &capability).expect("boot role");
    let identity = client.create_identity(None).expect("identity");
    drop(client);
    let _ = pluton.kill();
    let _ = pluton.wait();
    let _ = std::fs::remove_file(socket);
    DeviceIdentity {
        device_id: identity.device_id.to_string(),
        public_key: identity.public_key.0,
        pluton_socket: socket.to_owned(),
    }
}

fn denied<'a>(
    reports: &'a [FailureReport],
    compartment: &str,
    action: &str,
) -> Option<&'a FailureReport> {
    reports.iter().find(|report| {
        report.compartment == compartment
            && matches!(&report.kind, FailureKind::PolicyDenied { action: a, .. } if a == action)
    })
}

fn errno_of(report: &FailureReport) -> i32 {
    match report.kind {
        FailureKind::PolicyDenied { errno, .. } => errno,
        _ => 0,
    }
}

/// Bridges, link, status page and pluton as four sandboxed compartments: telemetry
/// crosses bridges → link → fleet, a fleet command crosses link → bridges → policy →
/// equipment, the page is fed by both over IPC, the link reaches pluton's socket
/// through pluton's group, each compartment's grants hold against probes with the
/// same grants, and a killed link is restarted and the data flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (dedicated uids and groups) and landlock ABI 6, seccomp filters and network namespaces"]
async fn the_split_appliance_runs_each_piece_sandboxed_and_the_data_still_flows() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_owned();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let marker = state.display().to_string();
    let path = |name: &str| state.join(name);
    for sub in [
        "pluton-run",
        "outbox",
        "bridges",
        "policy-bundles",
        "status-page",
        "reports",
    ] {
        std::fs::create_dir_all(path(sub)).expect("mkdir");
    }
    let socket = path("pluton-run/pluton.sock");
    let identity = provision_pluton(&socket, &path("pluton"));
    let pluton_file = std::fs::read_dir(path("pluton"))
        .expect("pluton state")
        .flatten()
        .map(|entry| entry.path())
        .find(|file| file.is_file())
        .expect("a pluton state file");

    let shutdown = CancellationToken::new();
    let world = DemoWorld::start(
        &state,
        DemoPorts::EPHEMERAL,
        Some(identity),
        shutdown.clone(),
    )
    .await
    .expect("fleet and equipment start");
    let (page_port, metrics_port, facade_port) = (free_port(), free_port(), free_port());
    let config = world.appliance_config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    // The metrics line first: the page's `listen = "127.0.0.1:0"` is inside it too.
    let text = text
        .replace(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        )
        .replace(
            &format!("\nlisten = {:?}", world.status_listen),
            &format!("\nlisten = \"127.0.0.1:{page_port}\""),
        )
        // The demo's gateway facade: on a port the bridges compartment is granted.
        .replace(
            "\nlisten = '127.0.0.1:0'",
            &format!("\nlisten = \"127.0.0.1:{facade_port}\""),
        );
    assert!(text.contains(&format!("127.0.0.1:{page_port}")), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{facade_port}")), "{text}");
    // The link uploads the monitor's failure reports (read-only for it).
    let text = format!(
        "{text}\n[reports]\ndir = {:?}\nscan_interval_secs = 1\n",
        path("reports").display().to_string()
    );
    std::fs::write(&config, text).expect("config");
    let hash = warden::status_page::auth::hash_password("correct horse battery").expect("hash");
    warden::status_page::auth::write_password_hash(&path("status-page/password.phc"), &hash)
        .expect("password");
    // A stand-in serial device (the null device, world-writable so only landlock can
    // keep the other compartments off it).
    let serial = path("ttyFAKE");
    assert!(
        Command::new("mknod")
            .arg(&serial)
            .args(["c", "1", "3"])
            .status()
            .expect("mknod")
            .success()
    );
    std::fs::set_permissions(&serial, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");

    let equipment = format!("127.0.0.1:{}", world.equipment.address().port());
    let broker = format!("127.0.0.1:{}", world.fleet.mqtt_address.port());
    let config_arg = config.display().to_string();
    let socket_list = quoted(&[&socket]);
    let link_grants = |rw: bool| {
        let mut grants = vec![
            ("read", quoted(&[&config, &path("pki"), &path("reports")])),
            ("connect", format!("[{broker:?}]")),
            ("unix_connect", socket_list.clone()),
        ];
        if rw {
            grants.push(("read_write", quoted(&[&path("outbox")])));
            grants.push(("peers", "[\"status-page\"]".to_owned()));
        }
        grants
    };
    let page_listen = format!("[{page_port}, {metrics_port}]");
    let mut manifest = monitor_section(&path("reports"));
    manifest += &compartment(
        "pluton",
        "pluton",
        &[
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            path("pluton").display().to_string(),
        ],
        &[
            (
                "read_write",
                quoted(&[&path("pluton"), &path("pluton-run")]),
            ),
            ("unix_listen", socket_list.clone()),
        ],
        62001,
    );
    manifest += &compartment(
        "bridges",
        "bridges",
        &[
            "--config".into(),
            config_arg.clone(),
            "--state-dir".into(),
            path("bridges").display().to_string(),
        ],
        &[
            ("read", quoted(&[&config, &path("policy.toml")])),
            (
                "read_write",
                quoted(&[&path("bridges"), &path("policy-bundles")]),
            ),
            ("serial", quoted(&[&serial])),
            ("connect", format!("[{equipment:?}]")),
            ("listen", format!("[{facade_port}]")),
            ("unix_connect", socket_list.clone()),
            ("peers", "[\"link\", \"status-page\"]".to_owned()),
        ],
        62002,
    );
    manifest += &compartment(
        "link",
        "link",
        &["--config".into(), config_arg.clone()],
        &link_grants(true),
        62003,
    );
    let control_socket = path("status-page").join("control.sock");
    manifest += &compartment(
        "status-page",
        "status-page",
        &[
            "--config".into(),
            config_arg.clone(),
            "--control-socket".into(),
            control_socket.display().to_string(),
        ],
        &[
            ("read", quoted(&[&config])),
            ("read_write", quoted(&[&path("status-page")])),
            ("listen", page_listen.clone()),
            ("unix_listen", quoted(&[control_socket.as_path()])),
        ],
        62004,
    );
    // Probes: the same grants as the real compartments (without read_write and
    // serial, which the monitor would hand to the probe's uid), trying what those must
    // not do.
    let probe = |actions: &[String]| -> Vec<String> { actions.to_vec() };
    manifest += &compartment(
        "link-probe",
        "selftest-probe",
        &probe(&[
            format!("open-rw:{}", serial.display()),
            format!("read:{}", pluton_file.display()),
            format!("connect:{equipment}"),
        ]),
        &link_grants(false),
        62013,
    );
    manifest += &compartment(
        "page-probe",
        "selftest-probe",
        &probe(&[
            format!("connect:{broker}"),
            format!("unix:{}", socket.display()),
        ]),
        &[
            ("read", quoted(&[&config])),
            ("listen", page_listen.clone()),
        ],
        62014,
    );
    manifest += &compartment(
        "bridges-probe",
        "selftest-probe",
        &probe(&[format!("connect:{broker}")]),
        &[
            ("read", quoted(&[&config, &path("policy.toml")])),
            ("connect", format!("[{equipment:?}]")),
            ("unix_connect", socket_list.clone()),
        ],
        62012,
    );
    let manifest_path = path("manifest.toml");
    std::fs::write(&manifest_path, &manifest).expect("manifest");
    let mut monitor = MonitorProcess::start(&manifest_path, path("monitor.log"));
    let store = ReportStore::open(&path("reports"), 256, "").expect("reports");
    let fleet = world.fleet.http_address.to_string();
    let token = world.pki.fleet_token().expect("fleet API token");
    let device = world.pki.device_id.clone();

    // Telemetry: bridges → (IPC) → link → (mTLS, key in pluton) → fleet.
    let telemetry =
        format!("/api/v1/devices/{device}/telemetry?point=line1/oil_temperature&limit=5");
    let first = eventually_async(
        "telemetry at the fleet",
        Duration::from_secs(60),
        || async {
            let (status, body) = http(&token, &fleet, "GET", &telemetry, None).await?;
            let json = json_in(&body)?;
            (status == 200 && json["readings"].as_array().is_some_and(|r| !r.is_empty()))
                .then_some(json)
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "no telemetry reached the fleet; reports {:#?}\n{}",
            store.list(),
            monitor.log()
        )
    });
    assert!(first["readings"][0]["value"].as_f64().is_some(), "{first}");
    monitor.assert_running();

    // A command: fleet → link → (IPC) → bridges → policy → equipment, and back.
    let commands = format!("/api/v1/devices/{device}/commands");
    let run_command = |body: String| {
        let fleet = fleet.clone();
        let commands = commands.clone();
        let token = token.clone();
        async move {
            let (status, sent) = http(&token, &fleet, "POST", &commands, Some(&body))
                .await
                .expect("post");
            assert!(status < 300, "{status} {sent}");
            let id = json_in(&sent).expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned();
            let url = format!("{commands}/{id}");
            eventually_async("a command result", Duration::from_secs(30), || async {
                let (_, body) = http(&token, &fleet, "GET", &url, None).await?;
                let view = json_in(&body)?;
                (view["status"] != "sent").then_some(view)
            })
            .await
            .expect("command result")
        }
    };
    let written = run_command(
        serde_json::json!({"bridge": "line1", "point": "spindle_setpoint", "value": 1200.0, "id": "split-1200"}).to_string(),
    )
    .await;
    assert_eq!(written["status"], "written", "{written}");
    assert_eq!(world.equipment.holding_register(2).await, Some(1200));
    let refused = run_command(
        serde_json::json!({"bridge": "line1", "point": "spindle_setpoint", "value": 5000.0})
            .to_string(),
    )
    .await;
    assert_eq!(refused["status"], "denied", "{refused}");
    assert_eq!(world.equipment.holding_register(2).await, Some(1200));

    // The status page is fed by both over IPC: its metrics show the bridge's reads and
    // the link's state.
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let metrics = eventually_async("the page's metrics", Duration::from_secs(20), || async {
        let (_, body) = http(&token, &metrics_address, "GET", "/metrics", None).await?;
        let reads = body
            .lines()
            .find(|line| line.starts_with("warden_bridge_reads_ok_total{"))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()?;
        (reads > 0
            && body
                .lines()
                .any(|line| line.starts_with("warden_link_up") && line.ends_with(" 1")))
        .then_some(body)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the page never showed the bridges' and link's state\n{}",
            monitor.log()
        )
    });
    assert!(metrics.contains("bridge=\"line1\""));

    // `warden status` asks the page compartment over its control socket.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("warden status runs");
    assert!(
        status.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&status.stderr),
        monitor.log()
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON status");
    assert_eq!(status["device_id"], device.as_str());
    assert!(
        status["bridges"][0]["health"]["reads_ok"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{status:#}"
    );

    // The grants hold: each refusal by the kernel, reported.
    let reports = eventually("the probes' six refusals", Duration::from_secs(20), || {
        let reports = store.list().ok()?;
        let probes = reports
            .iter()
            .filter(|r| {
                r.compartment.ends_with("-probe")
                    && matches!(r.kind, FailureKind::PolicyDenied { .. })
            })
            .count();
        (probes >= 6).then_some(reports)
    })
    .await;
    let expect = |compartment: &str, action: String, errno: i32| {
        let report = denied(&reports, compartment, &action)
            .unwrap_or_else(|| panic!("{compartment}: `{action}` was not refused: {reports:#?}"));
        assert_eq!(errno_of(report), errno, "{compartment}: {action}");
    };
    expect(
        "link-probe",
        format!("open-rw:{}", serial.display()),
        libc_eacces(),
    );
    expect(
        "link-probe",
        format!("read:{}", pluton_file.display()),
        libc_eacces(),
    );
    expect("link-probe", format!("connect:{equipment}"), libc_eacces());
    expect("bridges-probe", format!("connect:{broker}"), libc_eacces());
    // The page may not connect at all, nor create a Unix socket: seccomp, EPERM.
    expect("page-probe", format!("connect:{broker}"), libc_eperm());
    expect(
        "page-probe",
        format!("unix:{}", socket.display()),
        libc_eperm(),
    );
    assert!(
        !reports.iter().any(|r| !r.compartment.ends_with("-probe")),
        "the real compartments ran without failures: {reports:#?}"
    );

    // Kill the link: it is restarted (with backoff), reported, and telemetry resumes.
    let old = compartment_pids("link", &marker);
    assert_eq!(old.len(), 1, "{old:?}");
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    assert!(
        Command::new("kill")
            .arg("-KILL")
            .arg(old[0].to_string())
            .status()
            .expect("kill")
            .success()
    );
    eventually(
        "a report of the killed link",
        Duration::from_secs(10),
        || {
            store.list().ok()?.into_iter().find(|r| {
                r.compartment == "link" && matches!(r.kind, FailureKind::Signaled { signal: 9 })
            })
        },
    )
    .await;
    eventually("a new link process", Duration::from_secs(10), || {
        compartment_pids("link", &marker)
            .into_iter()
            .find(|pid| *pid != old[0])
    })
    .await;
    // The restarted link uploads the report of its own death to the fleet.
    let uploaded = eventually_async(
        "the link's crash report at the fleet",
        Duration::from_secs(60),
        || async {
            let url = format!("/api/v1/reports?device={device}");
            let (_, body) = http(&token, &fleet, "GET", &url, None).await?;
            json_in(&body)?
                .as_array()?
                .iter()
                .any(|r| r["compartment"] == "link")
                .then_some(())
        },
    )
    .await;
    assert!(
        uploaded.is_some(),
        "no link report reached the fleet\n{}",
        monitor.log()
    );
    let fresh = eventually_async(
        "telemetry after the restart",
        Duration::from_secs(60),
        || async {
            let (_, body) = http(&token, &fleet, "GET", &telemetry, None).await?;
            let json = json_in(&body)?;
            json["readings"]
                .as_array()?
                .iter()
                .any(|r| r["ts_ms"].as_u64().is_some_and(|ts| ts > killed_at_ms))
                .then_some(())
        },
    )
    .await;
    assert!(
        fresh.is_some(),
        "no telemetry after the link restarted\n{}",
        monitor.log()
    );
    monitor.assert_running();

    drop(monitor);
    // The monitor stopped every compartment with it.
    for role in ["pluton", "bridges", "link", "status-page"] {
        assert!(
            compartment_pids(role, &marker).is_empty(),
            "{role} outlived the monitor"
        );
    }
    shutdown.cancel();
}

/// A peer sending a frame that does not decode: the status page closes that channel,
/// reports it, and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (dedicated uids and groups) and landlock ABI 6, seccomp filters and network namespaces"]
async fn a_malformed_frame_from_a_peer_closes_the_channel_and_is_reported() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_owned();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let page_dir = state.join("status-page");
    std::fs::create_dir_all(&page_dir).expect("mkdir");
    let hash = warden::status_page::auth::hash_password("correct horse battery").expect("hash");
    warden::status_page::auth::write_password_hash(&page_dir.join("password.phc"), &hash)
        .expect("password");
    let port = free_port();
    let config = state.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"wd-garbage\"\n[policy]\nfile = \"policy.toml\"\n\
             [link]\nbroker_host = \"127.0.0.1\"\nbroker_port = 1\nfleet_ca = \"ca.pem\"\n\
             device_cert = \"device.pem\"\ndevice_key = \"device.key\"\noutbox = {{ dir = \"outbox\" }}\n\
             [status_page]\nlisten = \"127.0.0.1:{port}\"\npassword_file = \"status-page/password.phc\"\n\
             state_dir = \"status-page\"\n"
        ),
    )
    .expect("config");
    let mut manifest = monitor_section(&state.join("reports"));
    manifest += &compartment(
        "status-page",
        "status-page",
        &["--config".into(), config.display().to_string()],
        &[
            ("read", quoted(&[&config])),
            ("read_write", quoted(&[&page_dir])),
            ("listen", format!("[{port}]")),
        ],
        62104,
    );
    // Named `link`, so the page decodes its frames as the link's.
    manifest += &compartment(
        "link",
        "selftest-garbage-peer",
        &["status-page".into()],
        &[("peers", "[\"status-page\"]".to_owned())],
        62103,
    );
    let manifest_path = state.join("manifest.toml");
    std::fs::write(&manifest_path, &manifest).expect("manifest");
    let mut monitor = MonitorProcess::start(&manifest_path, state.join("monitor.log"));
    let store = ReportStore::open(&state.join("reports"), 256, "").expect("reports");
    let report = eventually(
        "the page's report of the malformed frame",
        Duration::from_secs(20),
        || {
            store
                .list()
                .ok()?
                .into_iter()
                .find(|r| matches!(r.kind, FailureKind::MalformedFrame { .. }))
        },
    )
    .await;
    assert_eq!(report.compartment, "status-page", "{report:?}");
    assert!(
        matches!(&report.kind, FailureKind::MalformedFrame { detail } if detail.contains("`link`")),
        "{report:?}"
    );
    // The page survives it: no crash, no watchdog expiry, still one process.
    tokio::time::sleep(Duration::from_secs(1)).await;
    monitor.assert_running();
    let reports = store.list().expect("reports");
    assert!(
        reports.iter().all(|r| r.compartment != "status-page"
            || matches!(r.kind, FailureKind::MalformedFrame { .. })),
        "{reports:#?}\n{}",
        monitor.log()
    );
    assert_eq!(
        compartment_pids("status-page", &state.display().to_string()).len(),
        1
    );
}

async fn eventually_async<T, F, Fut>(_what: &str, limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn libc_eacces() -> i32 {
    13
}

fn libc_eperm() -> i32 {
    1
}
