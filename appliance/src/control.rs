//! The local control socket: `warden status` asks the running appliance through it.
//!
//! A unix socket, `control.sock` in the status page's state directory, mode 0600: only
//! the appliance's own user (and root) can connect. The protocol is one line: a
//! connection receives the status snapshot the status page shows (JSON, the same
//! [`crate::status_page::status::Status`]) and is closed; nothing is read from the client, so
//! the socket offers nothing to attack but a read of what the operator may see.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use warden_listeners::{AcceptBackoff, AdmissionGate, GuardedStream, Limits};

use crate::config::StatusPageConfig;
use crate::listening::CONTROL_DEADLINES;
use crate::state::ApplianceState;

/// File name of the socket inside the status page's state directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Largest answer a client accepts.
const MAX_ANSWER: u64 = 4 << 20;

/// Where the appliance configured by `config` serves its control socket.
pub fn socket_path(config: &StatusPageConfig) -> PathBuf {
    config.state_dir.join(SOCKET_NAME)
}

/// Binds the socket (replacing a stale one; never reachable before it is the owner's
/// alone: [`warden_listeners::bind_unix_socket`]) and serves snapshots until
/// `shutdown`, to at most `limits` clients at once; the socket file is removed when it
/// stops.
pub fn serve(
    path: &Path,
    state: ApplianceState,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let listener = warden_listeners::bind_unix_socket(path, 0o600)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    let path = path.to_path_buf();
    // One local user: every client shares the one "address".
    let gate = AdmissionGate::new(limits);
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    tasks.spawn(async move {
        let mut backoff = AcceptBackoff::new("control socket");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        let admission = match gate.admit(local) {
                            Ok(admission) => admission,
                            Err(refused) => {
                                tracing::debug!(%refused, "control socket client refused");
                                continue;
                            }
                        };
                        let mut answer = serde_json::to_vec(&crate::status_page::status::snapshot(&state))
                            .unwrap_or_default();
                        answer.push(b'\n');
                        let mut stream = GuardedStream::new(stream, admission, CONTROL_DEADLINES);
                        tokio::spawn(async move {
                            if let Err(error) = stream.write_all(&answer).await {
                                tracing::debug!(%error, "control socket client gone or too slow; closed");
                            }
                        });
                    }
                    Err(error) => {
                        let wait = backoff.failed(&error);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Where `warden status` looks when no config is named and no appliance is found
/// running.
pub const DEFAULT_CONFIG: &str = "/etc/warden/warden.toml";

/// The config `warden status` reads to find the control socket: the one named, else
/// the one the running appliance was started with (found in the command lines of
/// this host's processes: `warden run --config FILE` or its status page compartment
/// `warden compartment status-page --config FILE`), else [`DEFAULT_CONFIG`]. Two
/// appliances running with different configs is an error naming both.
pub fn config_for_status(named: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(named) = named {
        return Ok(named);
    }
    let mut running = running_configs();
    running.sort();
    running.dedup();
    match running.as_slice() {
        [] => Ok(PathBuf::from(DEFAULT_CONFIG)),
        [one] => Ok(one.clone()),
        several => anyhow::bail!(
            "several appliances are running ({}); name one with --config",
            several
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The configs of the appliances running on this host, from `/proc/*/cmdline`
/// (relative paths resolved against the process's working directory, when this user
/// may read it).
fn running_configs() -> Vec<PathBuf> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for process in processes.flatten() {
        let dir = process.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&byte| byte == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let Some(config) = config_in_command_line(&args) else {
            continue;
        };
        if config.is_absolute() {
            found.push(config);
        } else if let Ok(cwd) = std::fs::read_link(dir.join("cwd")) {
            found.push(cwd.join(config));
        }
    }
    found
}

/// The config of a `warden run --config FILE` or `warden compartment status-page
/// --config FILE` command line (the processes that serve the control socket).
pub fn config_in_command_line(args: &[String]) -> Option<PathBuf> {
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if program != "warden" {
        return None;
    }
    // Global flags (`--log-json`) may come before the command.
    let command = args.iter().skip(1).position(|arg| !arg.starts_with('-'))? + 1;
    let serves_control = match args[command].as_str() {
        "run" => !args
            .iter()
            .any(|arg| arg == "--manifest" || arg.starts_with("--manifest=")),
        "compartment" => args
            .get(command + 1)
            .is_some_and(|role| role == "status-page"),
        _ => false,
    };
    if !serves_control {
        return None;
    }
    let mut rest = args.iter().skip(command + 1);
    while let Some(arg) = rest.next() {
        if arg == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    // `warden run` without --config runs the default.
    (args[command] == "run").then(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Asks the appliance behind `path` for its status.
pub fn query(path: &Path) -> anyhow::Result<serde_json::Value> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the running appliance at {} (is it running, and are you its user?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {}", path.display()))?;
    serde_json::from_slice(&answer)
        .with_context(|| format!("{} answered something that is not a status", path.display()))
}

/// The status for people: identity, link, outbox, bridges and their counters.
pub fn render(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let link = &status["link"];
    let outbox = &link["outbox"];
    let _ = writeln!(out, "device        {}", text(&status["device_id"]));
    let _ = writeln!(out, "software      {}", text(&status["software_version"]));
    let _ = writeln!(out, "attestation   {}", text(&status["attestation"]));
    let certificate = &status["device_certificate"];
    if let Some(error) = certificate["error"].as_str() {
        let _ = writeln!(out, "certificate   unreadable: {error}");
    } else if certificate.is_object() {
        let days = match certificate["days_left"].as_i64() {
            Some(days) => format!(", {days} days left"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "certificate   {} (valid until {}{days})",
            text(&certificate["standing"]),
            text(&certificate["not_after"]),
        );
    }
    // Renewal over the link, once something happened (an older appliance has none).
    let renewal = &link["certificate"];
    if let Some(state) = renewal["state"].as_str()
        && state != "idle"
    {
        let _ = writeln!(
            out,
            "renewal       {state}: {}",
            renewal["detail"].as_str().unwrap_or("")
        );
    }
    // The summary says the state and, when not connected, the cause; an older
    // appliance without it still shows its raw state.
    let summary = match &status["link_summary"] {
        serde_json::Value::Null => text(&link["state"]),
        summary => text(summary),
    };
    let last_ack = match status["last_ack_age_secs"].as_u64() {
        Some(age) => format!("last ack {age} s ago"),
        None => "no ack since start".to_owned(),
    };
    let _ = writeln!(
        out,
        "link          {summary} ({last_ack}; batches queued {}, acknowledged {}; restarts {})",
        text(&link["batches_queued"]),
        text(&link["batches_acknowledged"]),
        text(&link["restarts"]),
    );
    let _ = writeln!(
        out,
        "outbox        {} batches, {} bytes waiting",
        text(&outbox["depth"]),
        text(&outbox["bytes"]),
    );
    for (task, health) in status["tasks"].as_object().into_iter().flatten() {
        if health["restarts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "task          {task}: restarted {} times, last failure {}",
                text(&health["restarts"]),
                text(&health["last_failure"]),
            );
        }
    }
    let bridges = status["bridges"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "bridges       {}", bridges.len());
    for bridge in &bridges {
        let health = &bridge["health"];
        let _ = writeln!(
            out,
            "  {:<12} {:<24} {} reads ok, {} errors, {} exceptions, {} denied",
            text(&bridge["name"]),
            text(&bridge["address"]),
            text(&health["reads_ok"]),
            text(&health["errors"]),
            text(&health["exceptions"]),
            text(&health["denied"]),
        );
        // Transport trouble, only when there is some (an older appliance has no
        // `wrong_unit`: shown as 0).
        let timeouts = health["timeouts"].as_u64().unwrap_or(0);
        let wrong_unit = health["wrong_unit"].as_u64().unwrap_or(0);
        if timeouts > 0 || wrong_unit > 0 {
            let _ = writeln!(
                out,
                "  {:<12} {timeouts} timeouts, {wrong_unit} answers from the wrong unit",
                ""
            );
        }
        for point in bridge["points"].as_array().into_iter().flatten() {
            let last = &point["last"];
            let value = if last.is_null() {
                "-".to_owned()
            } else {
                let shown = match (last["value"].as_f64(), point["decimals"].as_u64()) {
                    (Some(number), Some(decimals)) => {
                        format!("{number:.*}", usize::try_from(decimals).unwrap_or(0))
                    }
                    _ => text(&last["value"]),
                };
                format!("{shown} {}", text(&last["unit"]))
            };
            let _ = writeln!(out, "    {:<22} {}", text(&point["name"]), value.trim_end());
        }
    }
    let facade = &status["facade"];
    if facade.is_object() {
        let _ = writeln!(
            out,
            "facade        {} clients; {} requests: {} forwarded, {} denied, {} failed; {} connections refused",
            text(&facade["clients"]),
            text(&facade["requests"]),
            text(&facade["forwarded"]),
            text(&facade["denied"]),
            text(&facade["failed"]),
            text(&facade["refused_connections"]),
        );
        if let Some(denial) = facade["last_denial"].as_str() {
            let _ = writeln!(out, "  last denial {denial}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_the_device_link_and_each_bridge() {
        let status = serde_json::json!({
            "device_id": "wd-1",
            "software_version": "0.1.0",
            "attestation": null,
            "device_certificate": {"not_before": "2026-01-01 00:00:00 UTC",
                                   "not_after": "2027-01-01 00:00:00 UTC",
                                   "not_after_ms": 1_798_761_600_000_i64,
                                   "standing": "renewal-due", "error": null},
            "link": {"state": "connected", "batches_queued": 4, "batches_acknowledged": 3,
                     "last_error": null, "outbox": {"depth": 1, "bytes": 120}},
            "facade": {"clients": 1, "requests": 9, "forwarded": 5, "denied": 2, "failed": 2,
                       "refused_connections": 0, "last_denial": "unit 1 read 8: not allowed"},
            "bridges": [{"name": "line1", "address": "10.0.0.2:502",
                         "health": {"reads_ok": 7, "errors": 1, "exceptions": 0, "denied": 2,
                                    "timeouts": 3, "wrong_unit": 1},
                         "points": [{"name": "oil", "last": {"value": 21.5, "unit": "°C"}},
                                    {"name": "flow", "decimals": 2,
                                     "last": {"value": 73.100_000_000_000_01, "unit": "bar"}},
                                    {"name": "batch", "last": {"value": "AB-17", "unit": ""}},
                                    {"name": "code", "last": null}]}],
        });
        let text = render(&status);
        assert!(text.contains("device        wd-1"), "{text}");
        assert!(
            text.contains("certificate   renewal-due (valid until 2027-01-01 00:00:00 UTC)"),
            "{text}"
        );
        assert!(
            text.contains("connected (no ack since start; batches queued 4, acknowledged 3"),
            "{text}"
        );
        assert!(text.contains("1 batches, 120 bytes"), "{text}");
        assert!(
            text.contains("line1") && text.contains("7 reads ok, 1 errors, 0 exceptions, 2 denied"),
            "{text}"
        );
        assert!(text.contains("oil") && text.contains("21.5 °C"), "{text}");
        assert!(
            text.contains("73.10 bar"),
            "a point with decimals is shown with them: {text}"
        );
        assert!(
            text.contains("3 timeouts, 1 answers from the wrong unit"),
            "{text}"
        );
        assert!(
            text.contains(
                "facade        1 clients; 9 requests: 5 forwarded, 2 denied, 2 failed; 0 connections refused"
            ) && text.contains("last denial unit 1 read 8: not allowed"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("batch") && l.trim_end().ends_with("AB-17")),
            "a string point shows its text: {text}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("code") && l.trim_end().ends_with('-')),
            "{text}"
        );
    }

    #[test]
    fn render_says_why_the_link_is_down_and_which_task_restarted() {
        let status = serde_json::json!({
            "device_id": "wd-1",
            "link_summary": "link down: connection refused",
            "last_ack_age_secs": 42,
            "link": {"state": "disconnected", "batches_queued": 4, "batches_acknowledged": 3,
                     "restarts": 1, "last_error": "connection refused",
                     "outbox": {"depth": 1, "bytes": 120}},
            "tasks": {"unit facts reader": {"restarts": 2, "last_failure": "panicked: x"},
                      "failure-report uploader": {"restarts": 0, "last_failure": null}},
            "bridges": [],
        });
        let text = render(&status);
        assert!(
            text.contains("link          link down: connection refused (last ack 42 s ago;"),
            "{text}"
        );
        assert!(!text.contains("link          connected"), "{text}");
        assert!(
            text.contains("unit facts reader: restarted 2 times, last failure panicked: x"),
            "{text}"
        );
        assert!(!text.contains("failure-report uploader"), "{text}");
    }

    #[test]
    fn the_running_appliances_config_is_read_from_its_command_line() {
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            config_in_command_line(&args("/usr/bin/warden run --config /srv/unit/warden.toml")),
            Some(PathBuf::from("/srv/unit/warden.toml"))
        );
        assert_eq!(
            config_in_command_line(&args("warden --log-json run --config=site.toml")),
            Some(PathBuf::from("site.toml")),
            "a global flag before the command"
        );
        assert_eq!(
            config_in_command_line(&args("warden run --config=site.toml")),
            Some(PathBuf::from("site.toml"))
        );
        assert_eq!(
            config_in_command_line(&args("warden run")),
            Some(PathBuf::from(DEFAULT_CONFIG))
        );
        assert_eq!(
            config_in_command_line(&args(
                "/usr/lib/warden/warden compartment status-page --config /etc/w/warden.toml"
            )),
            Some(PathBuf::from("/etc/w/warden.toml"))
        );
        // Not the processes that serve the socket.
        for line in [
            "warden compartment link --config /etc/w/warden.toml",
            "warden run --manifest /etc/warden/manifest.toml",
            "warden status --config /etc/w/warden.toml",
            "wardenish run --config /x.toml",
            "vim /etc/warden/warden.toml",
        ] {
            assert_eq!(config_in_command_line(&args(line)), None, "{line}");
        }
        assert_eq!(
            config_for_status(Some(PathBuf::from("/named.toml"))).expect("named"),
            PathBuf::from("/named.toml")
        );
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let error = query(Path::new("/nonexistent/warden/control.sock"))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            error.contains("cannot reach the running appliance"),
            "{error}"
        );
    }
}
