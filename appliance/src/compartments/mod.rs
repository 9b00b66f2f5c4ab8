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
//! The messages are in [`messages`]; the channels are the monitor's (only between
//! peers the manifest allows, postcard frames with a length limit, a malformed frame
//! closes the channel and is reported). `warden demo` and `warden run --config` still
//! run everything in one process ([`crate::runtime`]).

pub mod bridges;
pub mod ipc;
pub mod link;
pub mod messages;
pub mod page;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::ApplianceConfig;

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
        // The monitor stops a compartment only by killing it: a role whose work
        // returned has lost a part, and exits non-zero for the monitor to restart it
        // (with backoff, counted against a trial image).
        let ended = match role {
            messages::BRIDGES => {
                let state_dir = options.state_dir.ok_or_else(|| {
                    anyhow::anyhow!("the bridges role needs --state-dir (its command log)")
                })?;
                bridges::run(compartment, config, &state_dir, shutdown).await
            }
            messages::LINK => link::run(compartment, config, shutdown).await,
            _ => {
                page::run(
                    compartment,
                    config,
                    options.control_socket.as_deref(),
                    shutdown,
                )
                .await
            }
        };
        ended.and_then(|()| {
            Err(anyhow::anyhow!(
                "the {role} compartment's work ended; exiting for the monitor to restart it"
            ))
        })
    })?;
    Ok(ExitCode::SUCCESS)
}
