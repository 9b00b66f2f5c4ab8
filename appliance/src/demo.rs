//! `warden demo`: the whole walking skeleton on loopback, in one command: the guided
//! tour (provisioning, boot, a confirmed and a rolled-back rollout), or with `--quick`
//! the appliance alone beside its fleet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use warden_hil::demo::{DemoPorts, DemoWorld, DeviceIdentity};
use warden_pluton::ProvisioningCapability;
use warden_pluton_api::launch_tokens::LaunchTokens;

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
    /// Skip the tour: start the appliance at once beside its fleet (no provisioning
    /// station, no boot stage, no rollouts).
    #[arg(long)]
    pub quick: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("warden-demo"),
            ephemeral_ports: false,
            quick: false,
        }
    }
}

/// Runs the demo (the tour, or with `--quick` the minimal demo) until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.quick {
        run_quick(args).await
    } else {
        crate::demo_tour::run(&args.state_dir, ports(&args)).await
    }
}

/// The ports `args` asks for.
fn ports(args: &DemoArgs) -> DemoPorts {
    if args.ephemeral_ports {
        DemoPorts::EPHEMERAL
    } else {
        DemoPorts::FIXED
    }
}

/// The minimal demo: the appliance at once, with an identity in pluton, beside the
/// fleet and the equipment.
async fn run_quick(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let ports = ports(&args);
    let shutdown = CancellationToken::new();
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    // The demo is the host: it mints pluton's role tokens, hands them all to pluton and
    // holds them itself (one process plays every compartment).
    let tokens = LaunchTokens::mint().context("minting pluton's role tokens")?;
    let mut pluton = start_pluton(&args.state_dir, &tokens).await?;
    if !warden_pluton_api::launch_tokens::install(tokens) {
        anyhow::bail!("pluton role tokens were already set in this process");
    }
    let identity = pluton_identity(&args.state_dir).await?;
    let world =
        match DemoWorld::start(&args.state_dir, ports, Some(identity), shutdown.clone()).await {
            Ok(world) => world,
            Err(error) => {
                shutdown.cancel();
                return Err(error.context(
                "cannot start the demo (if a port is taken, try `warden demo --ephemeral-ports`)",
            ));
            }
        };
    install_vendor_root(&args.state_dir, &world.pki).await?;
    let config = ApplianceConfig::load(&world.appliance_config)?;
    // The demo's "label": a fresh operator password at every start; only its hash is
    // written, the password itself is printed below.
    let status_password = crate::status_page::auth::generate_password()?;
    crate::status_page::auth::write_password_hash(
        &config.status_page.password_file,
        &crate::status_page::auth::hash_password(&status_password)?,
    )?;
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
    println!(
        "  device page:      http://{fleet}/devices/{} (latest values, charts)",
        world.pki.device_id
    );
    println!("  fleet API:        http://{fleet}/api/v1/devices");
    println!(
        "  device telemetry: http://{fleet}/api/v1/devices/{}/telemetry",
        world.pki.device_id
    );
    println!("  status page:      https://{}/", appliance.status_address);
    println!("  status password:  {status_password} (the unit's label; new at every start)");
    println!(
        "  status page cert: SHA-256 {} (self-signed; pin it)",
        appliance.status_fingerprint
    );
    if let Some(metrics) = appliance.metrics_address {
        println!("  metrics:          http://{metrics}/metrics");
    }
    println!(
        "  simulated device: modbus-tcp://{} (unit 1)",
        world.equipment.address()
    );
    println!("  appliance config: {}", world.appliance_config.display());
    println!(
        "  device identity:  {} (key held by the pluton process)",
        world.pki.device_id
    );
    println!(
        "  fleet API token:  {} (admin; `Authorization: Bearer …`; reads need none on this loopback demo)",
        world.pki.fleet_api_token.display()
    );
    println!(
        "Every page listens on 127.0.0.1 only. Certificates are throwaway, made at start under {}/pki",
        args.state_dir.display()
    );
    println!(
        "(a real unit gets its identity from `warden-provision`); the device key stays in pluton. Ctrl-C stops.",
    );
    let ending = appliance.run_until(crate::signals::wait_for_stop()).await;
    shutdown.cancel();
    world.fleet.stopped().await;
    // Pluton's store is crash-safe by design (atomic renames), so a kill is a clean stop.
    let _ = pluton.kill().await;
    match ending {
        crate::runtime::Ending::Failed(failure) => {
            Err(anyhow::anyhow!(failure).context("the demo's appliance cannot go on"))
        }
        crate::runtime::Ending::Stopped | crate::runtime::Ending::RestartRequested => {
            println!("Warden demo stopped.");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Pluton's socket, relative to the demo's state directory.
const PLUTON_SOCKET: &str = "pluton.sock";

/// Starts pluton as its own process: this binary with the `pluton` role.
async fn start_pluton(
    state_dir: &std::path::Path,
    tokens: &LaunchTokens,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find the warden binary")?;
    let socket = state_dir.join(PLUTON_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let mut command = std::process::Command::new(exe);
    tokens.hand_to(&mut command);
    tokio::process::Command::from(command)
        .arg("pluton")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(state_dir.join("pluton"))
        // A demo killed outright (SIGKILL) does not leave pluton behind.
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the pluton process")
}

/// Connects to pluton as the factory would: the boot role, with the provisioning
/// capability pluton wrote on its first start (returned too, for the requests that
/// take it).
fn provisioning_client(
    state_dir: &std::path::Path,
) -> anyhow::Result<(warden_pluton_api::PlutonClient, ProvisioningCapability)> {
    let capability_file = state_dir
        .join("pluton")
        .join(warden_pluton::server::DEFAULT_CAPABILITY_FILE_NAME);
    let capability = warden_pluton::server::read_capability_file(&capability_file)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = warden_pluton_api::PlutonClient::connect_as_boot(
        state_dir.join(PLUTON_SOCKET),
        &capability,
    )
    .map_err(|e| anyhow::anyhow!("pluton as the boot role: {e}"))?;
    Ok((client, capability))
}

/// Connects to pluton (waiting for it to listen) and returns its identity, creating
/// one on first start.
async fn pluton_identity(state_dir: &std::path::Path) -> anyhow::Result<DeviceIdentity> {
    let socket = state_dir.join(PLUTON_SOCKET);
    let state_dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut client = None;
        for _ in 0..100 {
            match warden_pluton_api::PlutonClient::connect(&socket) {
                Ok(connected) => {
                    client = Some(connected);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        drop(client.with_context(|| format!("pluton did not listen on {}", socket.display()))?);
        let (mut client, _) = provisioning_client(&state_dir)?;
        let identity = match client.export_identity() {
            Ok(identity) => identity,
            Err(_) => client
                .create_identity(None)
                .context("pluton cannot create an identity")?,
        };
        Ok(DeviceIdentity {
            device_id: identity.device_id.to_string(),
            public_key: identity.public_key.0,
            pluton_socket: PathBuf::from(PLUTON_SOCKET),
        })
    })
    .await?
}

/// Installs the demo's vendor root into pluton (once), as provisioning would: policy
/// bundles signed by its release keys are then accepted.
async fn install_vendor_root(
    state_dir: &std::path::Path,
    pki: &warden_hil::demo_pki::DemoPki,
) -> anyhow::Result<()> {
    let root = pki.vendor_root_public_key()?;
    let state_dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let (mut client, capability) = provisioning_client(&state_dir)?;
        let installed = client
            .root_keys()
            .map_err(|e| anyhow::anyhow!("pluton root keys: {e}"))?;
        if installed.iter().any(|key| key.public_key.0 == root) {
            return Ok(());
        }
        client
            .install_root_key(&capability, &root, warden_keychain::Purpose::ALL.bits())
            .map_err(|e| anyhow::anyhow!("pluton refused the vendor root: {e}"))
    })
    .await?
}
