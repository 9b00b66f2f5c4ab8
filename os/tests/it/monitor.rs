//! The monitor with real sandboxed processes: denials, restarts, watchdog, garbage.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_os::monitor::compartment::MONITOR_GONE_EXIT;
use warden_os::monitor::manifest::Manifest;
use warden_os::monitor::trial::{BootTrial, TrialCrashSink};
use warden_os::monitor::{Monitor, MonitorOptions, MonitorOutcome, StartRecord};
use warden_os::reports::{FailureKind, FailureReport, ReportStore};
use warden_os::sandbox::{KernelSupport, SandboxMode};

const SELFTEST: &str = env!("CARGO_BIN_EXE_compartment-selftest");

fn kernel_ready() -> bool {
    let missing = KernelSupport::probe().missing();
    if missing.is_empty() {
        true
    } else {
        eprintln!("SKIPPED: this kernel lacks {}", missing.join(", "));
        false
    }
}

fn compartment(name: &str, role: &str, args: &[&str], extra: &str) -> String {
    // A dedicated uid per compartment name (the monitor switches to it as root).
    let uid = 61000 + name.bytes().map(u32::from).sum::<u32>();
    let args: Vec<String> = args.iter().map(|arg| format!("{arg:?}")).collect();
    let mut grants = String::from(
        "read = []\nread_write = []\nserial = []\nconnect = []\nlisten = []\nunix_listen = []\nunix_connect = []\npeers = []\n",
    );
    for line in extra.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        grants = grants
            .lines()
            .map(|existing| {
                if existing.starts_with(&format!("{key} =")) {
                    line.to_owned()
                } else {
                    existing.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    format!(
        "[compartment.{name}]\nrole = \"{role}\"\nargs = [{}]\n{grants}memory_mib = 256\nopen_files = 64\nuid = {uid}\n\n",
        args.join(", ")
    )
}

fn manifest(reports: &Path, watchdog_ms: u64, compartments: &[String]) -> Manifest {
    let text = format!(
        "[monitor]\nheartbeat_interval_ms = 50\nwatchdog_timeout_ms = {watchdog_ms}\n\
         restart_backoff_initial_ms = 100\nrestart_backoff_max_ms = 2000\n\
         report_dir = {:?}\nreport_capacity = 64\n\n{}",
        reports.display().to_string(),
        compartments.concat()
    );
    Manifest::parse(&text, "test-manifest.toml").expect("test manifest parses")
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(MonitorOutcome, Vec<StartRecord>)>,
    store: ReportStore,
}

fn start(manifest: Manifest, trial: Option<Box<dyn TrialCrashSink>>) -> Running {
    let store = ReportStore::open(&manifest.monitor.report_dir, 64, "test").expect("store");
    let options = MonitorOptions {
        program: SELFTEST.into(),
        program_prefix: vec!["compartment".into()],
        mode: SandboxMode::Enforce,
        image_version: "9.9.9-test".into(),
        running_slot: None,
    };
    let mut monitor = Monitor::new(manifest, options).expect("monitor starts");
    if let Some(trial) = trial {
        monitor.on_trial(trial);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let outcome = monitor.run(&flag).expect("monitor runs");
        (outcome, monitor.starts().to_vec())
    });
    Running {
        stop,
        thread,
        store,
    }
}

impl Running {
    fn wait_for(&self, what: &str, done: impl Fn(&[FailureReport]) -> bool) -> Vec<FailureReport> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let reports = self.store.list().expect("list");
            if done(&reports) {
                return reports;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; reports: {reports:#?}"
            );
            assert!(!self.thread.is_finished(), "the monitor stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> (MonitorOutcome, Vec<StartRecord>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("monitor thread")
    }
}

fn denied<'a>(reports: &'a [FailureReport], prefix: &str) -> Option<&'a FailureReport> {
    reports.iter().find(|report| {
        matches!(&report.kind, FailureKind::PolicyDenied { action, .. } if action.starts_with(prefix))
    })
}

#[test]
fn hostile_compartment_is_denied_everything_not_granted_and_each_denial_is_reported() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // World-writable, so only landlock stands between the compartment and `outside`.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let own = dir.path().join("own");
    std::fs::create_dir(&own).expect("own dir");
    let outside = dir.path().join("outside.txt");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    let own_grant = format!(
        "read_write = [{:?}]\nconnect = [\"127.0.0.1:9\"]",
        own.display().to_string()
    );
    let outside_arg = outside.display().to_string();
    let compartments = [
        compartment(
            "hostile",
            "selftest-hostile",
            &[&outside_arg, &port, "idle"],
            &own_grant,
        ),
        compartment("idle", "selftest-idle", &[], ""),
    ];
    let running = start(
        manifest(&dir.path().join("reports"), 400, &compartments),
        None,
    );
    running.wait_for("five denials", |reports| {
        reports
            .iter()
            .filter(|r| r.compartment == "hostile")
            .count()
            >= 5
    });
    // The denials must not break the compartment: it keeps heartbeating (a sleep
    // interrupted by SIGCHLD from the failed exec is restarted, not denied).
    std::thread::sleep(Duration::from_millis(800));
    let reports = running.store.list().expect("list");
    let _ = running.stop();
    assert!(
        !reports
            .iter()
            .any(|r| matches!(r.kind, FailureKind::WatchdogExpired { .. })),
        "the hostile compartment stopped heartbeating: {reports:#?}"
    );

    let shadow = denied(&reports, "read /etc/shadow").expect("shadow read reported");
    assert!(
        matches!(shadow.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EACCES)
    );
    let write = denied(&reports, "write ").expect("outside write reported");
    assert!(matches!(write.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EACCES));
    let connect = denied(&reports, "connect ").expect("undeclared connect reported");
    assert!(
        matches!(connect.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EACCES)
    );
    let exec = denied(&reports, "exec /bin/sh").expect("exec reported");
    assert!(matches!(exec.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EPERM));
    assert!(
        reports.iter().any(|r| r.compartment == "hostile"
            && matches!(&r.kind, FailureKind::PeerDenied { peer } if peer == "idle")),
        "undeclared IPC peer reported: {reports:#?}"
    );
    assert!(
        !outside.exists(),
        "the write outside the granted directory happened"
    );
    assert!(
        listener.accept().is_err(),
        "the undeclared connection reached the listener"
    );
    assert!(reports.iter().all(|r| r.image_version == "9.9.9-test"));
    if nix_is_root() {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&own).expect("own"));
        assert_ne!(
            owner, 0,
            "the granted directory was handed to the compartment's uid"
        );
    }
}

#[test]
fn a_crashing_compartment_restarts_with_growing_delays_and_is_reported() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let compartments = [compartment("crasher", "selftest-crash", &[], "")];
    let running = start(
        manifest(&dir.path().join("reports"), 2000, &compartments),
        None,
    );
    let reports = running.wait_for("four panics", |reports| {
        reports
            .iter()
            .filter(|r| matches!(r.kind, FailureKind::Panic { .. }))
            .count()
            >= 4
    });
    let groups = running.store.groups().expect("groups");
    let (_, starts) = running.stop();
    let panic = reports
        .iter()
        .find_map(|r| match &r.kind {
            FailureKind::Panic { message, backtrace } => Some((message, backtrace)),
            _ => None,
        })
        .expect("a panic report");
    assert!(panic.0.contains("selftest crash on purpose"), "{}", panic.0);
    assert!(!panic.1.is_empty(), "backtrace captured");
    assert!(groups[0].count >= 4 && groups[0].signature.starts_with("crasher/panic/"));
    // The backoff doubles (100, 200, 400 ms, …) and each restart really waited it.
    let delays: Vec<u64> = starts.iter().map(|start| start.delay_ms).collect();
    assert!(delays.len() >= 4, "starts: {starts:?}");
    assert_eq!(delays[..4], [0, 100, 200, 400], "delays grow");
    for pair in starts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(pair[1].delay_ms), "{starts:?}");
    }
}

#[test]
fn a_hung_compartment_is_killed_by_the_watchdog() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let compartments = [compartment("sleeper", "selftest-hang", &[], "")];
    let running = start(
        manifest(&dir.path().join("reports"), 300, &compartments),
        None,
    );
    running.wait_for("a watchdog expiry", |reports| {
        reports.iter().any(
            |r| matches!(r.kind, FailureKind::WatchdogExpired { silent_ms } if silent_ms >= 300),
        )
    });
    let (_, starts) = running.stop();
    assert!(!starts.is_empty());
}

#[test]
fn garbage_on_a_channel_closes_it_is_reported_and_the_monitor_keeps_supervising() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let compartments = [
        compartment("noisy", "selftest-garbage", &[], ""),
        compartment("calm", "selftest-idle", &[], ""),
    ];
    let running = start(
        manifest(&dir.path().join("reports"), 400, &compartments),
        None,
    );
    // The garbage closes noisy's channel; the compartment, cut off from its monitor,
    // exits; it is restarted and sends garbage again: the monitor keeps going.
    let reports = running.wait_for("two malformed frames and an exit", |reports| {
        let malformed = reports
            .iter()
            .filter(|r| matches!(r.kind, FailureKind::MalformedFrame { .. }))
            .count();
        malformed >= 2
            && reports.iter().any(|r| {
                matches!(r.kind, FailureKind::Exited { code } if code == i32::from(MONITOR_GONE_EXIT))
            })
    });
    let (outcome, _) = running.stop();
    assert_eq!(outcome, MonitorOutcome::Stopped);
    assert!(
        reports.iter().all(|r| r.compartment == "noisy"),
        "{reports:#?}"
    );
}

#[test]
fn repeated_crashes_of_a_trial_image_roll_it_back_through_the_boot_monitor() {
    use warden_os::file_system::StdFileSystem;
    use warden_os::{BootConfig, BootMonitor, MemoryRootOfTrust, SlotStatus};
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A device running 1.0.1 (confirmed) that installed 1.0.2 and booted it on trial.
    let keys = crate::support::Keys::new();
    let roots = MemoryRootOfTrust::new(keys.roots());
    let state = dir.path().join("boot-state");
    let mut boot = BootMonitor::new(
        StdFileSystem::new(&state),
        roots.snapshot(),
        BootConfig::new(crate::support::product()),
    );
    let old = keys.image(1, 1, "#!/bin/sh\n", 64);
    boot.install(&mut std::io::Cursor::new(&old), old.len() as u64)
        .expect("install 1.0.1");
    let first = boot.select_boot().expect("boot 1.0.1");
    boot.confirm(first.slot).expect("confirm 1.0.1");
    let new = keys.image(2, 1, "#!/bin/sh\n", 64);
    boot.install(&mut std::io::Cursor::new(&new), new.len() as u64)
        .expect("install 1.0.2");
    let trial = boot.select_boot().expect("boot 1.0.2");
    assert!(trial.trial && trial.slot != first.slot);

    let compartments = [compartment("crasher", "selftest-crash", &[], "")];
    let sink = BootTrial {
        boot,
        slot: trial.slot,
    };
    let running = start(
        manifest(&dir.path().join("reports"), 2000, &compartments),
        Some(Box::new(sink)),
    );
    let (outcome, starts) = running.thread.join().expect("monitor thread");
    // The boot monitor's K (3 attempts) decides, not the monitor.
    let MonitorOutcome::RolledBack { crashes, reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert_eq!(crashes, 3, "{reason}");
    assert_eq!(starts.len(), 3);
    let reports = running.store.list().expect("reports");
    assert!(
        reports.iter().any(|r| r.compartment == "monitor"
            && matches!(&r.kind, FailureKind::RebootReason { reason } if reason.contains("crasher"))),
        "{reports:#?}"
    );
    // The next boot runs the confirmed image; the trial slot is given up.
    let mut boot = BootMonitor::new(
        StdFileSystem::new(&state),
        roots.snapshot(),
        BootConfig::new(crate::support::product()),
    );
    let next = boot.select_boot().expect("boot after rollback");
    assert_eq!(next.slot, first.slot);
    assert!(!next.trial);
    let status = boot.load_state().expect("state").slot(trial.slot).clone();
    assert!(matches!(status, SlotStatus::Failed { .. }), "{status:?}");
}

/// A manifest whose `[monitor.boot]` names `state_dir`, with one compartment that asks
/// for a restart as soon as it runs, granted `restart_for_update` or not.
fn restart_manifest(dir: &Path, state_dir: &Path, granted: bool) -> Manifest {
    let mut asking = compartment("updater", "selftest-restart-request", &[], "");
    if granted {
        asking.push_str("restart_for_update = true\n");
    }
    let text = format!(
        "[monitor]\nheartbeat_interval_ms = 50\nwatchdog_timeout_ms = 2000\n\
         restart_backoff_initial_ms = 100\nrestart_backoff_max_ms = 2000\n\
         report_dir = {:?}\nreport_capacity = 64\n\n\
         [monitor.boot]\nstate_dir = {:?}\nproduct = \"test-product\"\n\
         pluton_socket = \"/nonexistent/pluton.sock\"\ncapability_file = \"/nonexistent/cap\"\n\n{asking}",
        dir.join("reports").display().to_string(),
        state_dir.display().to_string(),
    );
    Manifest::parse(&text, "test-manifest.toml").expect("test manifest parses")
}

/// A boot state where 1.0.1 runs confirmed and, with `pending`, 1.0.2 is installed.
fn boot_state(dir: &Path, pending: bool) -> std::path::PathBuf {
    use warden_os::file_system::StdFileSystem;
    use warden_os::{BootConfig, BootMonitor, MemoryRootOfTrust};
    let keys = crate::support::Keys::new();
    let state = dir.join("boot-state");
    let mut boot = BootMonitor::new(
        StdFileSystem::new(&state),
        MemoryRootOfTrust::new(keys.roots()),
        BootConfig::new(crate::support::product()),
    );
    let old = keys.image(1, 1, "#!/bin/sh\n", 64);
    boot.install(&mut std::io::Cursor::new(&old), old.len() as u64)
        .expect("install 1.0.1");
    let first = boot.select_boot().expect("boot 1.0.1");
    boot.confirm(first.slot).expect("confirm 1.0.1");
    if pending {
        let new = keys.image(2, 1, "#!/bin/sh\n", 64);
        boot.install(&mut std::io::Cursor::new(&new), new.len() as u64)
            .expect("install 1.0.2");
    }
    state
}

#[test]
fn a_granted_restart_request_with_an_installed_update_ends_the_run() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = boot_state(dir.path(), true);
    let running = start(restart_manifest(dir.path(), &state, true), None);
    let (outcome, starts) = running.thread.join().expect("monitor thread");
    assert_eq!(
        outcome,
        MonitorOutcome::RestartForUpdate {
            by: "updater".into()
        }
    );
    assert_eq!(starts.len(), 1, "ended, not restarted: {starts:?}");
}

#[test]
fn a_restart_request_is_refused_without_the_grant_or_without_an_update() {
    if !kernel_ready() {
        return;
    }
    for (granted, pending, why) in [
        (false, true, "does not grant restart_for_update"),
        (true, false, "nothing new to boot"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = boot_state(dir.path(), pending);
        let running = start(restart_manifest(dir.path(), &state, granted), None);
        let reports = running.wait_for("the refused request's report", |reports| {
            reports.iter().any(|r| {
                matches!(&r.kind, FailureKind::PolicyDenied { action, .. } if action.contains("restart for update"))
            })
        });
        assert!(
            reports.iter().any(|r| r.compartment == "updater"
                && matches!(&r.kind, FailureKind::PolicyDenied { action, .. } if action.contains(why))),
            "{reports:#?}"
        );
        // The unit keeps running: the request changed nothing.
        std::thread::sleep(Duration::from_millis(300));
        let (outcome, starts) = running.stop();
        assert_eq!(
            outcome,
            MonitorOutcome::Stopped,
            "granted={granted} pending={pending}"
        );
        assert_eq!(starts.len(), 1, "{starts:?}");
    }
}

#[test]
fn the_appliance_manifest_parses_and_writes_every_grant_out() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance/manifest.toml");
    let manifest = Manifest::load(&path).expect("appliance/manifest.toml is valid");
    let grants = |name: &str| manifest.grants_for(name).expect(name);
    let (pluton, bridges, link, page) = (
        grants("pluton"),
        grants("bridges"),
        grants("link"),
        grants("status-page"),
    );
    assert!(!pluton.has_network() && pluton.peers.is_empty());
    // Only the bridges reach equipment, only the link the fleet, only the page listens.
    for other in [&pluton, &link, &page] {
        assert!(other.serial.is_empty());
    }
    assert!(
        bridges
            .connect
            .iter()
            .all(|target| target.ends_with(":502"))
    );
    // The fleet's broker (MQTT over TLS) and its image server (HTTPS, update downloads).
    assert!(
        link.connect
            .iter()
            .all(|target| target.ends_with(":8883") || target.ends_with(":443"))
    );
    assert!(page.connect.is_empty() && !page.listen.is_empty());
    assert!(bridges.listen.is_empty() && link.listen.is_empty() && pluton.listen.is_empty());
    assert!(page.peers.is_empty(), "the exposed page opens no channel");
    // The link reaches pluton's socket through pluton's group; the page does not: its
    // one group is the link's, for the updater's local install socket (offline
    // updates uploaded on the page), and nothing else of the link's.
    assert_eq!(link.groups, vec![pluton.uid]);
    assert!(!page.groups.contains(&pluton.uid));
    assert_eq!(page.groups, vec![link.uid]);
    assert_eq!(
        page.unix_connect,
        vec![Path::new("/var/lib/warden/downloads/update.sock").to_path_buf()]
    );
    // The update agent (the link) writes exactly the boot monitor's slots and state,
    // where the provisioning station lays them out (`/var/lib/warden/{slots,boot}`).
    let boot = manifest.monitor.boot.as_ref().expect("[monitor.boot]");
    assert_eq!(boot.state_dir, Path::new("/var/lib/warden"));
    for dir in [warden_os::boot::SLOTS_DIR, warden_os::boot::BOOT_DIR] {
        assert!(
            link.read_write.contains(&boot.state_dir.join(dir)),
            "the link cannot write {dir}/ under {}: {:?}",
            boot.state_dir.display(),
            link.read_write
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn granted_peers_get_a_channel_and_garbage_on_it_is_reported_by_the_receiver() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let own = dir.path().join("own");
    std::fs::create_dir(&own).expect("own dir");
    let proof = own.join("echo-ok");
    let proof_arg = proof.display().to_string();
    let caller_grants = format!(
        "read_write = [{:?}]\npeers = [\"echo\"]",
        own.display().to_string()
    );
    let compartments = [
        compartment(
            "caller",
            "selftest-caller",
            &[&proof_arg, "echo"],
            &caller_grants,
        ),
        compartment("echo", "selftest-echo", &[], ""),
    ];
    let running = start(
        manifest(&dir.path().join("reports"), 2000, &compartments),
        None,
    );
    let reports = running.wait_for("the echo's report of a malformed peer frame", |reports| {
        reports
            .iter()
            .any(|r| matches!(r.kind, FailureKind::MalformedFrame { .. }))
    });
    let _ = running.stop();
    assert_eq!(
        std::fs::read(&proof).expect("the echo came back"),
        b"echo ok"
    );
    let malformed = reports
        .iter()
        .find(|r| matches!(r.kind, FailureKind::MalformedFrame { .. }))
        .expect("malformed");
    assert_eq!(malformed.compartment, "echo");
    assert!(
        matches!(&malformed.kind, FailureKind::MalformedFrame { detail } if detail.contains("`caller`")),
        "{malformed:?}"
    );
    assert!(
        !reports
            .iter()
            .any(|r| matches!(r.kind, FailureKind::PeerDenied { .. })),
        "{reports:#?}"
    );
}

#[test]
fn each_role_gets_its_own_syscall_list_and_a_call_outside_it_is_eperm_and_reported() {
    if !kernel_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let connect = format!("connect-tcp:{port}");
    let fast_open = format!("sendto-address:{port}");
    let compartments = [
        // Nothing granted (a pluton-like role without its socket): no socket at all.
        compartment(
            "sealed",
            "selftest-syscalls",
            &["socket-inet", "socket-unix"],
            "",
        ),
        // A listening role (the status page): may accept, may not connect out, even
        // to a port it could bind, nor through TCP Fast Open, nor make a UDP socket.
        compartment(
            "listener",
            "selftest-syscalls",
            &[&connect, "socket-unix", "socket-inet", &fast_open],
            &format!("listen = [{port}]"),
        ),
    ];
    let running = start(
        manifest(&dir.path().join("reports"), 2000, &compartments),
        None,
    );
    let reports = running.wait_for("six denials", |reports| {
        reports
            .iter()
            .filter(|r| matches!(r.kind, FailureKind::PolicyDenied { .. }))
            .count()
            >= 6
    });
    let _ = running.stop();
    for (compartment, action) in [
        ("sealed", "socket-inet"),
        ("sealed", "socket-unix"),
        ("listener", connect.as_str()),
        ("listener", "socket-unix"),
        ("listener", "socket-inet"),
        ("listener", fast_open.as_str()),
    ] {
        let report = reports
            .iter()
            .find(|r| {
                r.compartment == compartment
                    && matches!(&r.kind, FailureKind::PolicyDenied { action: a, .. } if a == action)
            })
            .unwrap_or_else(|| panic!("{compartment}: {action} not reported: {reports:#?}"));
        assert!(
            matches!(report.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EPERM),
            "{compartment}: {action} must fail with EPERM (seccomp), not landlock's EACCES: {report:?}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the listening compartment connected out"
    );
}

#[test]
fn a_unix_socket_admits_the_compartment_granted_unix_connect_and_nobody_else() {
    if !kernel_ready() {
        return;
    }
    if !nix_is_root() {
        // Without root there are no dedicated uids and groups to check.
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mkdir = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).expect("mkdir");
        path.display().to_string()
    };
    let (served, granted, other) = (mkdir("served"), mkdir("granted"), mkdir("other"));
    let socket = format!("{served}/server.sock");
    let granted_proof = format!("{granted}/connected");
    let other_proof = format!("{other}/connected");
    let compartments = [
        compartment(
            "server",
            "selftest-unix-server",
            &[&socket],
            &format!("read_write = [{served:?}]\nunix_listen = [{socket:?}]"),
        ),
        compartment(
            "granted",
            "selftest-unix-client",
            &[&socket, &granted_proof],
            &format!("read_write = [{granted:?}]\nunix_connect = [{socket:?}]"),
        ),
        // Not in the server's group.
        compartment(
            "other",
            "selftest-unix-client",
            &[&socket, &other_proof],
            // It may create Unix sockets (it serves its own) and connect (a TCP
            // grant), so only the socket's group stands in its way.
            &format!(
                "read_write = [{other:?}]\nunix_listen = [\"{other}/own.sock\"]\nconnect = [\"127.0.0.1:9\"]"
            ),
        ),
    ];
    let running = start(
        manifest(&dir.path().join("reports"), 2000, &compartments),
        None,
    );
    let reports = running.wait_for("the other compartment's refusal", |reports| {
        reports.iter().any(|r| r.compartment == "other")
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&granted_proof).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = running.stop();
    assert_eq!(
        std::fs::read(&granted_proof).expect("the granted compartment connected"),
        b"connected"
    );
    assert!(!Path::new(&other_proof).exists());
    let refused = reports
        .iter()
        .find(|r| r.compartment == "other")
        .expect("reported");
    assert!(
        matches!(refused.kind, FailureKind::PolicyDenied { errno, .. } if errno == libc::EACCES),
        "{refused:?}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);
}
