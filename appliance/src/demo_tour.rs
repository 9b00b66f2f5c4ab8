//! `warden demo`'s guided tour: each step printed as it happens, with the page that
//! shows it; then the unit keeps running until Ctrl-C.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use warden_hil::demo::DemoPorts;
use warden_hil::tour::{SERIAL, Tour, TourStep};

/// Runs the tour under `state_dir/tour` until Ctrl-C or SIGTERM.
pub async fn run(state_dir: &Path, ports: DemoPorts) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let warden = std::env::current_exe().context("cannot find the warden binary")?;
    let tour_dir = state_dir.join("tour");
    println!(
        "Warden demo tour (state in {}, made afresh; `warden demo --quick` skips the tour).",
        tour_dir.display()
    );
    let mut say = move |step: TourStep| {
        println!(
            "[{:5.1} s] step {}: {}\n           see: {}",
            started.elapsed().as_secs_f64(),
            step.number,
            step.what,
            step.url
        );
    };
    let shutdown = CancellationToken::new();
    let mut tour = match Tour::start(&tour_dir, ports, &warden, shutdown.clone(), &mut say).await {
        Ok(tour) => tour,
        Err(error) => {
            shutdown.cancel();
            return Err(error.context(
                "the demo tour cannot start (if a port is taken, try `warden demo --ephemeral-ports`)",
            ));
        }
    };
    if let Err(error) = tour.run_rollouts(&mut say).await {
        tour.stop(&shutdown).await;
        return Err(error.context("the demo tour stopped short"));
    }
    let fleet = tour.fleet.http_address;
    println!(
        "Tour complete in {:.1} s: the unit runs 1.1.0, the 1.2.0 rollout stays halted.",
        started.elapsed().as_secs_f64()
    );
    println!("  fleet dashboard:  http://{fleet}/");
    println!(
        "  device page:      http://{fleet}/devices/{} (attestation, values, charts)",
        tour.device_id
    );
    println!("  deployments:      http://{fleet}/deployments");
    println!("  failure reports:  http://{fleet}/reports");
    println!("  fleet API:        http://{fleet}/api/v1/devices");
    println!(
        "  device telemetry: http://{fleet}/api/v1/devices/{}/telemetry",
        tour.device_id
    );
    println!("  status page:      https://{}/", tour.status_listen);
    println!(
        "  status password:  {} (from the unit's label, {})",
        tour.status_password,
        tour.unit.label_text().display()
    );
    println!(
        "  simulated device: modbus-tcp://{} (unit 1)",
        tour.equipment.address()
    );
    println!(
        "  unit {SERIAL}:   {} (its root file system; console in {})",
        tour.unit.root().display(),
        tour.boot_log().display()
    );
    println!(
        "  fleet API token:  {} (admin; `Authorization: Bearer …`; reads need none on this loopback demo)",
        tour.pki.fleet_api_token.display()
    );
    println!("Every page listens on 127.0.0.1 only; every key is throwaway. Ctrl-C stops.");
    crate::signals::wait_for_stop().await;
    tour.stop(&shutdown).await;
    println!("Warden demo stopped.");
    Ok(ExitCode::SUCCESS)
}
