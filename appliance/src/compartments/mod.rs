//! The appliance split into sandboxed compartments: bridges, cloud link, status page.
//!
//! `warden run --manifest appliance/manifest.toml` starts each as
//! `warden compartment <role> --config FILE` (the same binary), sandboxed by the
//! monitor's manifest grants, next to `pluton`:
//!
//! ```text
//!   bridges ──samples, results, reported──► link ══mTLS══► fleet
//!      ▲   ◄──commands, desired states────   │
//!      │ (policy at the bridge)              │ status, update offer
//!      └──inventory, counters, samples──► status-page ◄┘ ──update decision──► link
//! ```
//!
//! Each runs its role from [`crate::roles`] over IPC ports ([`ipc_ports`]): the same
//! code `warden demo` and `warden run --config` run in one process
//! ([`crate::runtime`]). The messages are in [`crate::ports::messages`]; the channels
//! are the monitor's (only between peers the manifest allows, postcard frames with a
//! length limit, a malformed frame closes the channel and is reported).

pub mod ipc;
pub mod ipc_ports;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::ApplianceConfig;
use crate::ports::messages;
use crate::supervision::{Supervisor, TaskFailure};

/// The roles of the split appliance.
pub const ROLES: &[&str] = &[messages::BRIDGES, messages::LINK, messages::STATUS_PAGE];

/// Arguments of every appliance role (from the manifest's `args`).
#[derive(Debug, Parser)]
struct RoleArgs {
    /// The appliance config.
    #[arg(long)]
    config: PathBuf,
    /// The role's own state directory (the bridges keep their command log there).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The status page only: serve `warden status` on this Unix socket (the manifest
    /// must grant it in `unix_listen`).
    #[arg(long)]
    control_socket: Option<PathBuf>,
}

/// Runs appliance role `role`; `None` when `role` is not one of [`ROLES`].
///
/// Enters the sandbox first (before the runtime starts any thread), then reads the
/// config with only the grants the manifest gives.
pub fn run_role(role: &str, args: &[String]) -> Option<anyhow::Result<ExitCode>> {
    ROLES.contains(&role).then(|| run(role, args))
}

/// The tokio runtime of a sandboxed role: I/O and timers, but no signal driver (it
/// needs a socketpair, which no compartment's seccomp list allows; the monitor stops
/// compartments with SIGKILL, so there is no signal to wait for).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .enable_time()
        .build()
}

/// How long a role waits for pluton's socket at start (pluton starts beside it).
const PLUTON_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until pluton's socket (if the config names one) accepts a connection, so a
/// role started at the same moment as pluton does not fail its first start.
fn wait_for_pluton(config: &ApplianceConfig) {
    let Some(socket) = &config.link.pluton_socket else {
        return;
    };
    let deadline = std::time::Instant::now() + PLUTON_WAIT;
    while std::os::unix::net::UnixStream::connect(socket).is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn run(role: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let options =
        RoleArgs::try_parse_from(std::iter::once(role).chain(args.iter().map(String::as_str)))?;
    let compartment = Arc::new(warden_os::monitor::compartment::enter_from_env()?);
    compartment.start_heartbeat();
    let config = ApplianceConfig::load(&options.config)?;
    if role != messages::STATUS_PAGE {
        wait_for_pluton(&config);
    }
    let runtime = runtime()?;
    // The monitor stops a compartment with SIGKILL; nothing here waits for a signal.
    let shutdown = CancellationToken::new();
    runtime.block_on(async move {
        let mut tasks = Supervisor::new(shutdown.clone());
        match role {
            messages::BRIDGES => {
                let state_dir = options.state_dir.ok_or_else(|| {
                    anyhow::anyhow!("the bridges role needs --state-dir (its command log)")
                })?;
                let ports = ipc_ports::bridges(&compartment, &mut tasks, &shutdown);
                crate::roles::bridges::start(
                    &config,
                    &state_dir.join("command-log.json"),
                    ports,
                    &mut tasks,
                    shutdown.clone(),
                )
                .await?;
            }
            messages::LINK => {
                let ports = ipc_ports::link(&compartment, &mut tasks, &shutdown);
                crate::roles::link::start(&config, ports, &mut tasks, shutdown.clone())?;
            }
            _ => {
                // Before anything runs: no password hash (or no web key) means no page.
                let page = crate::status_page::prepare(&config.status_page, &config.device.id)?;
                let ports = ipc_ports::page(&compartment, &mut tasks, &shutdown);
                let started = crate::roles::page::start(
                    &config,
                    page,
                    options.control_socket.as_deref(),
                    ports,
                    &mut tasks,
                    shutdown.clone(),
                )
                .await?;
                println!("status page: https://{}/", started.address);
                println!("status page cert: SHA-256 {}", started.fingerprint);
            }
        }
        Err::<(), _>(until_failure(role, tasks, shutdown).await)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a role's tasks until one of them ends, then stops the rest and names it. The
/// monitor stops a compartment only by killing it, so a task that ends has lost a
/// part of the role: the compartment exits non-zero for the monitor to restart it
/// (with backoff, counted against a trial image).
pub async fn until_failure(
    role: &str,
    mut tasks: Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Error {
    let failure = tasks.failed().await.unwrap_or_else(|| TaskFailure {
        task: role.to_owned(),
        cause: "has no task left running".into(),
    });
    tracing::error!(task = %failure.task, cause = %failure.cause, "the {role} compartment cannot go on; exiting for the monitor to restart it");
    shutdown.cancel();
    let _ = tasks.stopped().await;
    anyhow::Error::new(failure).context(format!(
        "the {role} compartment's work ended; exiting for the monitor to restart it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every role, the bridges included, exits when one of its own tasks ends: the
    /// failure names the task, and the role's other tasks are stopped.
    #[tokio::test]
    async fn a_role_whose_task_ends_exits_naming_it() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn_unit("link channel", async move { stop.cancelled().await });
        tasks.spawn("sample pump", async {
            anyhow::bail!("the link no longer takes readings")
        });
        let error = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            until_failure(messages::BRIDGES, tasks, shutdown.clone()),
        )
        .await
        .expect("the role stops instead of hanging");
        let failure = error.downcast_ref::<TaskFailure>().expect("a task failure");
        assert_eq!(failure.task, "sample pump");
        assert!(
            failure.cause.contains("no longer takes readings"),
            "{failure}"
        );
        assert!(shutdown.is_cancelled());
        assert!(format!("{error:#}").starts_with("the bridges compartment's work ended"));
    }
}
