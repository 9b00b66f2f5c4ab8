//! The appliance at run time: bridges → policy → link, and the status page beside them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warden_bridges::{BridgeHandle, BridgeHealth, Sample};
use warden_link::{LinkAgent, LinkStatus, Reading};

use crate::config::ApplianceConfig;
use crate::status_page;

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

/// One bridge as the status page shows it.
#[derive(Debug, Clone)]
pub struct BridgeView {
    /// Bridge name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Point names in config order.
    pub points: Vec<String>,
    /// Counters, shared with the poller.
    pub health: Arc<Mutex<BridgeHealth>>,
    /// The bridge itself: writes from cloud commands go through
    /// `handle.write(target, value, RequestSource::Cloud)`.
    pub handle: BridgeHandle,
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
}

/// A started appliance.
pub struct RunningAppliance {
    /// Where the status page listens.
    pub status_address: SocketAddr,
    tasks: JoinSet<()>,
}

impl RunningAppliance {
    /// Waits until every task has stopped (after the shutdown token fired).
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the bridges, the link and the status page from `config`.
pub async fn start(
    config: ApplianceConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningAppliance> {
    let policy_text = std::fs::read_to_string(&config.policy.file)
        .with_context(|| format!("cannot read policy {}", config.policy.file.display()))?;
    let origin = config.policy.file.display().to_string();
    let compiled = warden_policy::compile(&policy_text, &origin)
        .map_err(|errors| anyhow::anyhow!("policy {origin} does not compile:\n{errors}"))?;
    for warning in &compiled.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    let policy = Arc::new(compiled.policy);

    let mut tasks = JoinSet::new();
    let (sample_tx, mut sample_rx) = mpsc::channel::<Sample>(4096);
    let started = warden_bridges::runtime::start(
        config.bridges,
        Arc::clone(&policy),
        sample_tx.clone(),
        shutdown.clone(),
        &mut tasks,
    )
    .await
    .context("cannot start the bridges")?;
    let bridges: Vec<BridgeView> = started
        .bridges
        .into_iter()
        .map(|bridge| BridgeView {
            name: bridge.handle.name().to_owned(),
            address: bridge.address,
            points: bridge.points,
            health: bridge.handle.health(),
            handle: bridge.handle,
        })
        .collect();
    if let Some((address, _)) = &started.facade {
        tracing::info!(%address, "gateway facade listening");
    }
    drop(sample_tx);

    let command_log_path = config.link.outbox.dir.join("command-log.json");
    std::fs::create_dir_all(&config.link.outbox.dir)
        .with_context(|| format!("cannot create {}", config.link.outbox.dir.display()))?;
    let command_log = crate::commands::CommandLog::open(&command_log_path)?;
    let mut agent = LinkAgent::new(config.device.id.clone(), config.link);
    let command_channel = agent.command_channel();
    let handles = bridges.iter().map(|b| b.handle.clone()).collect();
    tasks.spawn(crate::commands::run(
        command_channel,
        handles,
        command_log,
        shutdown.clone(),
    ));
    let state = ApplianceState {
        device_id: config.device.id,
        bridges,
        values: Arc::default(),
        link: agent.status(),
    };
    let (reading_tx, reading_rx) = mpsc::channel::<Reading>(4096);
    let link_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(error) = agent.run(reading_rx, link_shutdown).await {
            tracing::error!(%error, "cloud link cannot start");
        }
    });

    let values = Arc::clone(&state.values);
    tasks.spawn(async move {
        while let Some(sample) = sample_rx.recv().await {
            values
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    (sample.bridge.clone(), sample.point.clone()),
                    LiveValue {
                        value: sample.value,
                        unit: sample.unit.clone(),
                        ts_ms: sample.timestamp_ms,
                    },
                );
            if !sample.value.is_finite() {
                // String points carry text, not a number; telemetry v1 carries numbers
                // only, and a NaN would make the whole batch unreadable at the fleet.
                tracing::debug!(bridge = %sample.bridge, point = %sample.point, "non-numeric sample not sent as telemetry");
                continue;
            }
            let reading = Reading {
                point: format!("{}/{}", sample.bridge, sample.point),
                value: sample.value,
                unit: sample.unit,
                ts_ms: sample.timestamp_ms,
            };
            if reading_tx.send(reading).await.is_err() {
                break;
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(&config.status_page.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the status page on {}",
                config.status_page.listen
            )
        })?;
    let status_address = listener.local_addr()?;
    let page_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, status_page::router(state))
            .with_graceful_shutdown(async move { page_shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "status page failed");
        }
    });
    Ok(RunningAppliance {
        status_address,
        tasks,
    })
}
