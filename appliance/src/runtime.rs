//! The appliance in one process: the three roles over in-process ports, supervised.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::ApplianceConfig;
use crate::status_page;
use crate::supervision::{Supervisor, TaskFailure};

/// A started appliance.
pub struct RunningAppliance {
    /// Where the status page listens (HTTPS).
    pub status_address: SocketAddr,
    /// SHA-256 fingerprint of the status page's certificate (`AA:BB:…`).
    pub status_fingerprint: String,
    /// Where `/metrics` listens (plain HTTP, loopback), if configured.
    pub metrics_address: Option<SocketAddr>,
    /// Cancelled when the appliance wants the boot stage to boot again (an update was
    /// installed, or its trial was given up): stop and exit with
    /// `warden_os::launch::RESTART_EXIT_CODE`.
    pub restart_requested: CancellationToken,
    shutdown: CancellationToken,
    tasks: Supervisor,
}

/// Why a running appliance stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Asked to stop (signal, Ctrl-C): a clean stop.
    Stopped,
    /// An update wants the boot stage to boot again
    /// (`warden_os::launch::RESTART_EXIT_CODE`).
    RestartRequested,
    /// A task that cannot be restarted ended: the process must exit non-zero so that
    /// systemd (or the boot stage) starts it again.
    Failed(TaskFailure),
}

impl RunningAppliance {
    /// Runs until `stop` resolves, an update asks for a restart, or a task fails;
    /// then stops every task and says which of the three it was (a task failing while
    /// the others stop still counts as a failure).
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Ending {
        let restart = self.restart_requested.clone();
        let ending = tokio::select! {
            biased;
            () = restart.cancelled() => Ending::RestartRequested,
            () = stop => Ending::Stopped,
            failed = self.tasks.failed() => match failed {
                Some(failure) => Ending::Failed(failure),
                None => Ending::Failed(TaskFailure {
                    task: "appliance".into(),
                    cause: "has no task left running".into(),
                }),
            },
        };
        if let Ending::Failed(failure) = &ending {
            tracing::error!(task = %failure.task, cause = %failure.cause, "the appliance cannot go on; stopping so that it is started again");
        }
        self.shutdown.cancel();
        let late = self.tasks.stopped().await;
        match (ending, late) {
            (Ending::Stopped, Some(failure)) => {
                tracing::error!(task = %failure.task, cause = %failure.cause, "a task failed while the appliance stopped");
                Ending::Failed(failure)
            }
            (ending, _) => ending,
        }
    }

    /// Waits until every task has stopped (after the shutdown token fired); the first
    /// task that failed, if one did.
    pub async fn stopped(self) -> Option<TaskFailure> {
        self.tasks.stopped().await
    }
}

/// Starts the bridges, the link and the status page from `config`, in this process:
/// the three roles of [`crate::roles`] over [`crate::ports::in_process`] ports.
pub async fn start(
    config: ApplianceConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningAppliance> {
    // Before anything runs: no password hash (or no web key) means no appliance.
    let page = status_page::prepare(&config.status_page, &config.device.id)?;
    // Which tasks may be restarted, and why: see each role and `crate::supervision`.
    // A task that holds what a restart would lose (a channel's end, a bound listener,
    // the link agent's session) ends the process when it ends.
    let mut tasks = Supervisor::new(shutdown.clone());
    let restart = CancellationToken::new();
    let (bridges, link, page_ports) = crate::ports::in_process(restart.clone());
    // One process holds the command log beside the outbox (its own state directory).
    std::fs::create_dir_all(&config.link.outbox.dir)
        .with_context(|| format!("cannot create {}", config.link.outbox.dir.display()))?;
    let command_log = config.link.outbox.dir.join("command-log.json");
    crate::roles::bridges::start(&config, &command_log, bridges, &mut tasks, shutdown.clone())
        .await?;
    crate::roles::link::start(&config, link, &mut tasks, shutdown.clone())?;
    let control_socket = crate::control::socket_path(&config.status_page);
    let page = crate::roles::page::start(
        &config,
        page,
        Some(&control_socket),
        page_ports,
        &mut tasks,
        shutdown.clone(),
    )
    .await?;
    Ok(RunningAppliance {
        restart_requested: restart,
        status_address: page.address,
        status_fingerprint: page.fingerprint,
        metrics_address: page.metrics_address,
        shutdown,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use warden_link::Reading;

    use super::*;

    fn running(tasks: Supervisor, shutdown: CancellationToken) -> RunningAppliance {
        RunningAppliance {
            status_address: SocketAddr::from(([127, 0, 0, 1], 1)),
            status_fingerprint: String::new(),
            metrics_address: None,
            restart_requested: CancellationToken::new(),
            shutdown,
            tasks,
        }
    }

    /// The bug this replaces: the link agent died, the pump blocked on its channel and
    /// the process ran on. Now the agent's end stops everything with its cause.
    #[tokio::test]
    async fn a_dead_link_stops_the_appliance_with_its_cause() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn_unit("status page", async move { stop.cancelled().await });
        let (reading_tx, reading_rx) = mpsc::channel::<Reading>(1);
        tasks.spawn("link agent", async move {
            drop(reading_rx);
            anyhow::bail!("the cloud link cannot run: no identity")
        });
        tasks.spawn("sample pump", async move {
            loop {
                let reading = Reading::number("line1/p".into(), 1.0, "bar".into(), 7);
                if reading_tx.send(reading).await.is_err() {
                    anyhow::bail!("the link agent no longer takes readings");
                }
            }
        });
        let ending = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            running(tasks, shutdown.clone()).run_until(std::future::pending()),
        )
        .await
        .expect("the appliance stops instead of hanging");
        let Ending::Failed(failure) = ending else {
            panic!("not a failure: {ending:?}");
        };
        assert!(
            failure.task == "link agent" || failure.task == "sample pump",
            "{failure}"
        );
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_requested_restart_and_a_stop_are_not_failures() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn_unit("status page", async move { stop.cancelled().await });
        let appliance = running(tasks, shutdown.clone());
        appliance.restart_requested.cancel();
        assert_eq!(
            appliance.run_until(std::future::pending()).await,
            Ending::RestartRequested
        );
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn_unit("status page", async move { stop.cancelled().await });
        assert_eq!(
            running(tasks, shutdown).run_until(async {}).await,
            Ending::Stopped
        );
    }
}
