//! The appliance at run time: bridges → policy → link, and the status page beside them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::{BridgeHealth, Sample};
use warden_link::{LinkAgent, LinkStatus, Reading};

use crate::config::ApplianceConfig;
use crate::status_page;
use crate::supervision::{Supervisor, TaskFailure, TaskHealthTable};

/// The last value of one point, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveValue {
    /// Engineering value.
    pub value: f64,
    /// Engineering unit.
    pub unit: String,
    /// When it was read, ms since the epoch.
    pub ts_ms: u64,
}

/// One bridge as the status page shows it (of any kind; see [`crate::bridge_set`]).
#[derive(Debug, Clone)]
pub struct BridgeView {
    /// Bridge name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Point names in config order.
    pub points: Vec<String>,
    /// Counters, shared with the poller (or, in the status-page compartment, filled
    /// from the bridges compartment's frames).
    pub health: Arc<Mutex<BridgeHealth>>,
}

/// Recent values kept per point for the status page's trend charts.
pub const HISTORY_LENGTH: usize = 60;

/// The last [`HISTORY_LENGTH`] numeric values by `(bridge, point)`, oldest first.
pub type PointHistory = BTreeMap<(String, String), VecDeque<f64>>;

/// An update the fleet offers, waiting for the operator (set by `crate::updates` when
/// an offer arrives over the link).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateOffer {
    /// The offered image version.
    pub version: String,
    /// The operator may defer installing it until this time, ms since the epoch.
    pub window_ends_ms: u64,
}

/// What the operator decided about updates; the update agent reads it before
/// installing anything.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateDecision {
    /// The pending offer, if any.
    pub offer: Option<UpdateOffer>,
    /// No update is installed before this time (ms since the epoch).
    pub deferred_until_ms: Option<u64>,
    /// The offered version the operator allowed to install now.
    pub allowed_version: Option<String>,
    /// When the operator last decided (ms since the epoch).
    pub decided_at_ms: Option<u64>,
}

impl UpdateDecision {
    /// How long one "defer" postpones updates when no offer bounds it.
    pub const DEFER_FOR_MS: u64 = 4 * 60 * 60 * 1000;

    /// Defers updates from `now_ms`: by [`Self::DEFER_FOR_MS`], but never past the
    /// pending offer's window.
    pub fn defer(&mut self, now_ms: u64) {
        let mut until = now_ms.saturating_add(Self::DEFER_FOR_MS);
        if let Some(offer) = &self.offer {
            until = until.min(offer.window_ends_ms);
        }
        self.deferred_until_ms = Some(until);
        self.allowed_version = None;
        self.decided_at_ms = Some(now_ms);
    }

    /// Allows the pending offer (if any) now and lifts any deferral.
    pub fn allow(&mut self, now_ms: u64) {
        self.deferred_until_ms = None;
        self.allowed_version = self.offer.as_ref().map(|offer| offer.version.clone());
        self.decided_at_ms = Some(now_ms);
    }
}

/// Everything the status page reads; written by the runtime.
#[derive(Debug, Clone)]
pub struct ApplianceState {
    /// This unit's ID.
    pub device_id: String,
    /// Bridges in config order.
    pub bridges: Vec<BridgeView>,
    /// Last values by `(bridge, point)`.
    pub values: Arc<Mutex<BTreeMap<(String, String), LiveValue>>>,
    /// The link's state and counters.
    pub link: Arc<Mutex<LinkStatus>>,
    /// The last [`HISTORY_LENGTH`] numeric values by `(bridge, point)`, oldest first.
    pub history: Arc<Mutex<PointHistory>>,
    /// The operator's decision about updates (read by the update agent).
    pub updates: Arc<Mutex<UpdateDecision>>,
    /// Image slots and failure reports, read from disk every few seconds.
    pub unit: Arc<Mutex<crate::status_page::unit_facts::UnitFacts>>,
    /// Restarts and last failure of each restartable task of this process.
    pub tasks: TaskHealthTable,
}

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

/// The policy the bridges start with, and the store of signed bundles from the fleet.
pub struct StartingPolicy {
    /// The last verified bundle's policy, else the local policy file's.
    pub policy: Arc<warden_policy::CompiledPolicy>,
    /// The bundle store (with `[policy] bundle_dir`).
    pub bundle_store: Option<warden_policy::bundle::store::BundleStore>,
    /// What the twin reports first.
    pub initial_report: warden_link::topics::TwinReported,
    /// The stored signed bundle the policy came from, if it came from one: real-time
    /// cores get it instead of their configured `policy_bundle` (it is newer).
    pub bundle_file: Option<std::path::PathBuf>,
}

impl StartingPolicy {
    /// The last verified bundle from the fleet wins over the local file.
    pub fn load(config: &ApplianceConfig) -> anyhow::Result<Self> {
        let bundle_store = match &config.policy.bundle_dir {
            Some(dir) => {
                let roots = crate::twin::policy_roots(config.link.pluton_socket.as_deref())?;
                Some(crate::twin::open_store(
                    dir,
                    &roots,
                    &config.device.product,
                )?)
            }
            None => None,
        };
        let (policy, bundle_version) = match bundle_store.as_ref().and_then(|store| store.current())
        {
            Some(applied) => {
                tracing::info!(
                    version = applied.header.version,
                    "policy from the last verified bundle"
                );
                (
                    Arc::new(applied.policy.clone()),
                    Some(applied.header.version),
                )
            }
            None => (Arc::new(compile_policy_file(&config.policy.file)?), None),
        };
        let initial_report = crate::twin::reported_for(&policy, bundle_version, None);
        let bundle_file = match (&config.policy.bundle_dir, bundle_version) {
            (Some(dir), Some(_)) => Some(dir.join(warden_policy::bundle::store::CURRENT_FILE)),
            _ => None,
        };
        Ok(Self {
            policy,
            bundle_store,
            initial_report,
            bundle_file,
        })
    }
}

impl ApplianceState {
    /// Keeps `sample` as its point's last value and, if numeric, in its trend history.
    pub fn record_sample(&self, sample: &Sample) {
        // The page shows numbers (a bool as 0 or 1); a text point's number is NaN.
        let number = sample.value.as_number().unwrap_or(f64::NAN);
        if number.is_finite() {
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            let recent = history
                .entry((sample.bridge.clone(), sample.point.clone()))
                .or_default();
            if recent.len() == HISTORY_LENGTH {
                recent.pop_front();
            }
            recent.push_back(number);
        }
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (sample.bridge.clone(), sample.point.clone()),
                LiveValue {
                    value: number,
                    unit: sample.unit.clone(),
                    ts_ms: sample.timestamp_ms,
                },
            );
    }
}

/// The telemetry reading of `sample`, named `bridge/point`, with the same value;
/// `None` for a number that is not finite (a NaN or infinite float register: JSON
/// cannot carry it, and the fleet would refuse the whole batch).
pub fn telemetry_reading(sample: Sample) -> Option<Reading> {
    let point = format!("{}/{}", sample.bridge, sample.point);
    if sample.value.is_non_finite_number() {
        tracing::debug!(%point, value = %sample.value, "non-finite sample not sent as telemetry");
        return None;
    }
    Some(Reading::new(
        point,
        sample.value,
        sample.unit,
        sample.timestamp_ms,
    ))
}

/// Compiles the local policy file, logging its warnings.
fn compile_policy_file(path: &std::path::Path) -> anyhow::Result<warden_policy::CompiledPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    let origin = path.display().to_string();
    let compiled = warden_policy::compile(&text, &origin)
        .map_err(|errors| anyhow::anyhow!("policy {origin} does not compile:\n{errors}"))?;
    for warning in &compiled.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    Ok(compiled.policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_bridges::Value;

    fn sample(value: Value) -> Sample {
        Sample {
            bridge: "line1".into(),
            point: "p".into(),
            value,
            unit: "bar".into(),
            timestamp_ms: 7,
        }
    }

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

    #[test]
    fn string_points_travel_as_text_and_non_finite_numbers_stay_home() {
        let text = telemetry_reading(sample(Value::Text("AB-17".into()))).expect("sent");
        assert_eq!(
            (text.point.as_str(), text.value.as_text()),
            ("line1/p", Some("AB-17"))
        );
        assert_eq!(text.value.as_number(), None);
        let number = telemetry_reading(sample(Value::Number(2.5))).expect("sent");
        assert_eq!(
            (number.value.as_number(), number.value.as_text()),
            (Some(2.5), None)
        );
        let flag = telemetry_reading(sample(Value::Bool(true))).expect("sent");
        assert_eq!(flag.value, Value::Bool(true));
        assert!(telemetry_reading(sample(Value::Number(f64::INFINITY))).is_none());
    }
}
