//! The appliance at run time: bridges → policy → link, and the status page beside them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::Sample;
use warden_link::{LinkAgent, Reading};

use crate::compartments::bridges::telemetry_reading;
use crate::config::ApplianceConfig;
use crate::starting_policy::StartingPolicy;
use crate::state::ApplianceState;
use crate::state::updates::UpdateDecision;
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

/// Starts the bridges, the link and the status page from `config`.
pub async fn start(
    config: ApplianceConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningAppliance> {
    let StartingPolicy {
        policy,
        bundle_store,
        initial_report,
        bundle_file,
    } = StartingPolicy::load(&config)?;
    // Before anything runs: no password hash (or no web key) means no appliance.
    let page = status_page::prepare(&config.status_page, &config.device.id)?;
    // The report ring and the boot record, for the page (read before parts move).
    let config_facts = config.clone();

    // Which tasks may be restarted, and why (see `crate::supervision`):
    // - restartable, they re-read everything from disk: the unit-facts reader, the
    //   failure-report uploader (its upload marks are in the ring);
    // - not restartable, each holds what a restart would lose, so its end stops the
    //   process: the bridges (pollers feeding the sample channel), the sample pump,
    //   the link agent (its reading channel and session), the update agent (the
    //   offers channel), the twin and the command runner (the fleet's channels), the
    //   control socket and the status page (their bound listeners).
    let mut tasks = Supervisor::new(shutdown.clone());
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(4096);
    let mut bridge_tasks = JoinSet::new();
    let started = crate::bridge_set::start(
        config.bridges.with_core_bundle(bundle_file.as_deref()),
        config.privnet.clone(),
        Arc::clone(&policy),
        sample_tx.clone(),
        shutdown.clone(),
        &mut bridge_tasks,
    )
    .await?;
    tasks.adopt("bridges", bridge_tasks);
    let handles = started.set.clone();
    let bridges = started.listings;
    if let Some(address) = &started.facade {
        tracing::info!(%address, "gateway facade listening");
    }
    let _privnet = started.privnet;
    drop(sample_tx);

    let command_log_path = config.link.outbox.dir.join("command-log.json");
    std::fs::create_dir_all(&config.link.outbox.dir)
        .with_context(|| format!("cannot create {}", config.link.outbox.dir.display()))?;
    let command_log = crate::commands::CommandLog::open(&command_log_path)?;
    let pluton_socket = config.link.pluton_socket.clone();
    let mut agent = LinkAgent::new(config.device.id.clone(), config.link);
    let mut command_channel = agent.command_channel()?;
    let desired = std::mem::replace(&mut command_channel.desired, mpsc::channel(1).1);
    let offers = std::mem::replace(&mut command_channel.offers, mpsc::channel(1).1);
    let update_decision: Arc<Mutex<UpdateDecision>> = Arc::default();
    let restart = CancellationToken::new();
    match &config.updates {
        Some(updates) => {
            let link_status = agent.status();
            let bridge_health: Vec<_> = bridges.iter().map(|b| Arc::clone(&b.health)).collect();
            let health: crate::updates::HealthProbe = Arc::new(move || warden_os::HealthReport {
                link_up: link_status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state
                    == warden_link::LinkState::Connected,
                bridges_healthy: bridge_health.iter().all(|health| {
                    health
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .connected
                }),
            });
            let context = crate::updates::UpdateContext {
                control: command_channel.control.clone(),
                decision: Arc::clone(&update_decision),
                offers,
                health,
                restart: Some(restart.clone()),
                shutdown: shutdown.clone(),
            };
            let agent = crate::updates::start(
                updates,
                pluton_socket.as_deref(),
                &config.device.product,
                crate::updates::PlutonAccess::Privileged,
                context,
            )?;
            let (restarting, stopping) = (restart.clone(), shutdown.clone());
            tasks.spawn("update agent", async move {
                agent.await;
                // Done because it asked the boot stage for a restart: not a failure,
                // the process is about to stop anyway.
                if restarting.is_cancelled() {
                    stopping.cancelled().await;
                }
                Ok(())
            });
        }
        None => {
            tasks.spawn_unit(
                "update refusal",
                crate::updates::refuse_all(
                    offers,
                    command_channel.control.clone(),
                    shutdown.clone(),
                ),
            );
        }
    }
    if let Some(reports) = &config.reports {
        // Opened once here so that a ring that cannot be opened stops the start.
        crate::failure_reports::open_ring(&reports.dir).with_context(|| {
            format!(
                "cannot open the failure reports in {}",
                reports.dir.display()
            )
        })?;
        let (dir, control, stop) = (
            reports.dir.clone(),
            command_channel.control.clone(),
            shutdown.clone(),
        );
        let interval = std::time::Duration::from_secs(reports.scan_interval_secs.max(1));
        tasks.spawn_restartable("failure-report uploader", move || {
            let ring = crate::failure_reports::open_ring(&dir)
                .with_context(|| format!("cannot open the failure reports in {}", dir.display()));
            let (control, stop) = (control.clone(), stop.clone());
            async move {
                crate::failure_reports::run(ring?, control, interval, stop).await;
                Ok(())
            }
        });
    }
    tasks.spawn_unit(
        "twin",
        crate::twin::run(
            desired,
            command_channel.control.clone(),
            bundle_store,
            handles.clone(),
            initial_report,
            shutdown.clone(),
        ),
    );
    tasks.spawn_unit(
        "fleet commands",
        crate::commands::run(command_channel, handles, command_log, shutdown.clone()),
    );
    let state = ApplianceState {
        device_id: config.device.id,
        bridges,
        values: Arc::default(),
        link: agent.status(),
        history: Arc::default(),
        updates: update_decision,
        unit: Arc::default(),
        tasks: tasks.health(),
    };
    let facts = crate::status_page::unit_facts::UnitFactsSource::new(&config_facts, None);
    let (unit, stop) = (Arc::clone(&state.unit), shutdown.clone());
    tasks.spawn_restartable("unit facts reader", move || {
        let reading = facts.clone().keep_reading(Arc::clone(&unit), stop.clone());
        async move {
            reading.await;
            Ok(())
        }
    });
    let (reading_tx, reading_rx) = mpsc::channel::<Reading>(4096);
    let link_shutdown = shutdown.clone();
    // The agent retries what can get better by itself (broker away, pluton
    // restarting) and returns an error only for what never will: then the process
    // exits, and the reading pump below cannot block on a link that is gone.
    tasks.spawn("link agent", async move {
        agent
            .run(reading_rx, link_shutdown)
            .await
            .map_err(|error| anyhow::anyhow!("the cloud link cannot run: {error}"))
    });

    let page_state = state.clone();
    let readings_stop = shutdown.clone();
    tasks.spawn("sample pump", async move {
        while let Some(sample) = sample_rx.recv().await {
            page_state.record_sample(&sample);
            let Some(reading) = telemetry_reading(sample) else {
                continue;
            };
            tokio::select! {
                () = readings_stop.cancelled() => return Ok(()),
                sent = reading_tx.send(reading) => if sent.is_err() {
                    anyhow::bail!("the link agent no longer takes readings");
                },
            }
        }
        // A unit without bridges has no samples at all: the link (which stops when its
        // readings close) must still run, for attestation, reports and updates.
        readings_stop.cancelled().await;
        drop(reading_tx);
        Ok(())
    });

    let mut control_tasks = JoinSet::new();
    crate::control::serve(
        &crate::control::socket_path(&config.status_page),
        state.clone(),
        shutdown.clone(),
        &mut control_tasks,
    )?;
    tasks.adopt("control socket", control_tasks);
    let mut page_tasks = JoinSet::new();
    let page = page
        .start(state, shutdown.clone(), &mut page_tasks)
        .await
        .context("cannot start the status page")?;
    tasks.adopt("status page", page_tasks);
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
