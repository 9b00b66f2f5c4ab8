//! `warden-fleet`: runs the fleet service from a TOML config.

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Warden fleet service: broker, store, API and dashboard.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the fleet's TOML config.
    #[arg(long, default_value = "fleet.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = warden_fleet::FleetConfig::load(&args.config)?;
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone()).await?;
    println!(
        "fleet dashboard: {}://{}/",
        fleet.http_scheme, fleet.http_address
    );
    println!("fleet broker:    mqtts://{}", fleet.mqtt_address);
    wait_for_signal().await;
    shutdown.cancel();
    fleet.stopped().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}
