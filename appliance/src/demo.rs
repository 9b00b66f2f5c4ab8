//! `warden demo`: the whole walking skeleton on loopback, in one command.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use warden_hil::demo::{DemoPorts, DemoWorld};

use crate::config::ApplianceConfig;

/// Options of `warden demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's certificates, configs and fleet database.
    #[arg(long, default_value = "warden-demo")]
    pub state_dir: PathBuf,
    /// Let the kernel pick free ports instead of 8080, 8081, 8883 and 5020.
    #[arg(long)]
    pub ephemeral_ports: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("warden-demo"),
            ephemeral_ports: false,
        }
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let ports = if args.ephemeral_ports {
        DemoPorts::EPHEMERAL
    } else {
        DemoPorts::FIXED
    };
    let shutdown = CancellationToken::new();
    let world = match DemoWorld::start(&args.state_dir, ports, shutdown.clone()).await {
        Ok(world) => world,
        Err(error) => {
            shutdown.cancel();
            return Err(error.context(
                "cannot start the demo (if a port is taken, try `warden demo --ephemeral-ports`)",
            ));
        }
    };
    let config = ApplianceConfig::load(&world.appliance_config)?;
    let appliance = match crate::runtime::start(config, shutdown.clone()).await {
        Ok(appliance) => appliance,
        Err(error) => {
            shutdown.cancel();
            world.fleet.stopped().await;
            return Err(error);
        }
    };
    let fleet = world.fleet.http_address;
    println!(
        "Warden demo is running (state in {}).",
        args.state_dir.display()
    );
    println!("  fleet dashboard:  http://{fleet}/");
    println!("  fleet API:        http://{fleet}/api/v1/devices");
    println!(
        "  device telemetry: http://{fleet}/api/v1/devices/{}/telemetry",
        world.pki.device_id
    );
    println!("  status page:      http://{}/", appliance.status_address);
    println!(
        "  simulated device: modbus-tcp://{} (unit 1)",
        world.equipment.address()
    );
    println!("  appliance config: {}", world.appliance_config.display());
    println!(
        "No credentials yet: every page listens on 127.0.0.1 only. Certificates are throwaway,"
    );
    println!(
        "made at start under {}/pki until provisioning lands. Ctrl-C stops.",
        args.state_dir.display()
    );
    crate::signals::wait_for_stop().await;
    shutdown.cancel();
    appliance.stopped().await;
    world.fleet.stopped().await;
    println!("Warden demo stopped.");
    Ok(ExitCode::SUCCESS)
}
