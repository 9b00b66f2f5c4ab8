#![doc = include_str!("../README.md")]

pub mod api;
pub mod attestation;
pub mod broker;
pub mod ingest;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The fleet service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// HTTP API and dashboard address (`127.0.0.1:8080`; port 0 picks a free one).
    pub http_listen: String,
    /// MQTT over TLS address of the embedded broker (`127.0.0.1:8883`).
    pub mqtt_listen: String,
    /// `sqlite://PATH` (default kind) or `postgres://…`.
    pub database_url: String,
    /// PEM: the broker's server certificate.
    pub server_cert: PathBuf,
    /// PEM: the broker's server key.
    pub server_key: PathBuf,
    /// PEM: the manufacturer CA whose device certificates the fleet accepts.
    pub manufacturer_ca: PathBuf,
}

/// A started fleet service.
pub struct RunningFleet {
    /// Where the HTTP API and dashboard listen.
    pub http_address: SocketAddr,
    /// Where the MQTT broker listens.
    pub mqtt_address: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningFleet {
    /// Waits until the service has stopped (after its shutdown token fired) and its
    /// store is closed.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Starts the store, the broker, telemetry ingest and the HTTP API.
pub async fn start(
    config: &FleetConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningFleet> {
    use anyhow::Context as _;

    let store = store::Store::open(&config.database_url)
        .await
        .with_context(|| format!("cannot open fleet store {}", config.database_url))?;
    let tls = tls::broker_tls_config(
        &config.server_cert,
        &config.server_key,
        &config.manufacturer_ca,
    )?;
    let broker = broker::Broker::start(&config.mqtt_listen, tls, shutdown.clone())
        .await
        .with_context(|| format!("cannot listen for mqtt on {}", config.mqtt_listen))?;
    let mqtt_address = broker.address();
    let telemetry = broker.subscribe_local(warden_link::topics::ALL_TELEMETRY, 1024);
    let ingest = tokio::spawn(ingest::run(
        store.clone(),
        telemetry,
        broker.publisher(),
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen for http on {}", config.http_listen))?;
    let http_address = listener.local_addr()?;
    let results = broker.subscribe_local(warden_link::topics::ALL_COMMAND_RESULTS, 256);
    let command_results = tokio::spawn(ingest::command_results(
        store.clone(),
        results,
        shutdown.clone(),
    ));
    let reports = broker.subscribe_local(warden_link::topics::ALL_TWIN_REPORTED, 64);
    let twin_reports = tokio::spawn(ingest::twin_reports(
        store.clone(),
        reports,
        shutdown.clone(),
    ));
    let challenges = std::sync::Arc::new(attestation::PendingChallenges::default());
    let quotes = broker.subscribe_local(attestation::ALL_QUOTES, 64);
    tokio::spawn(attestation::collect_quotes(
        std::sync::Arc::clone(&challenges),
        quotes,
        shutdown.clone(),
    ));
    let app = api::router(api::ApiState {
        store: store.clone(),
        devices: broker.publisher(),
        challenges,
    });
    let http_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "fleet http server failed");
        }
        // The broker stops on the same token; ingest stores what it already holds, and
        // the store closes after the last write.
        drop(broker);
        let _ = ingest.await;
        let _ = command_results.await;
        let _ = twin_reports.await;
        store.close().await;
        tracing::info!("fleet stopped; store closed");
    });
    tracing::info!(%http_address, "fleet api listening");
    Ok(RunningFleet {
        http_address,
        mqtt_address,
        task,
    })
}
