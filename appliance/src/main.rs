//! `warden`: the appliance's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use warden::config::ApplianceConfig;

/// Warden: a guardian-module gateway between brownfield equipment and the network.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole demo on loopback: simulated equipment, the appliance, the fleet (default).
    #[cfg(feature = "demo")]
    Demo(warden::demo::DemoArgs),
    /// Run the appliance from a config file.
    Run {
        /// The appliance config.
        #[arg(long, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
    },
    /// Check an appliance config and the policy it names; print what is wrong.
    CheckConfig {
        /// The appliance config.
        config: PathBuf,
    },
    /// Check or query a policy file.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the pluton compartment: the root of trust, serving its socket.
    Pluton {
        /// The Unix socket to serve.
        #[arg(long)]
        socket: PathBuf,
        /// Pluton's state directory (identity, counters, sealed storage).
        #[arg(long)]
        state_dir: PathBuf,
        /// The firmware version the monitor verified (reported in quotes).
        #[arg(long, default_value_t = 0)]
        firmware_version: u32,
    },
    /// Build, sign, inspect and verify firmware images.
    #[command(subcommand)]
    Image(warden_os::cli::ImageCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile a policy; print errors and warnings with file, line and column.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Show the rule that decides a request, or why it is denied.
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The request, e.g. `modbus bridge=line1 unit=1 fn=3 addr=0 count=2 source=poll`.
        #[arg(long)]
        request: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        #[cfg(feature = "demo")]
        None => run_async(warden::demo::run(warden::demo::DemoArgs::default())),
        #[cfg(not(feature = "demo"))]
        None => Err(anyhow::anyhow!(
            "no command given; try `warden run --config FILE` or `warden --help`"
        )),
        #[cfg(feature = "demo")]
        Some(Command::Demo(args)) => run_async(warden::demo::run(args)),
        Some(Command::Run { config }) => run_async(run(config)),
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::Policy(PolicyCommand::Check { file })) => policy_check(&file),
        Some(Command::Policy(PolicyCommand::Explain { file, request })) => {
            policy_explain(&file, &request)
        }
        Some(Command::Image(command)) => command.run(),
        Some(Command::Pluton {
            socket,
            state_dir,
            firmware_version,
        }) => run_async(async move {
            let options = warden_pluton::server::ServeOptions {
                firmware_version,
                ..Default::default()
            };
            warden_pluton::server::serve(&socket, &state_dir, options).await?;
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,rumqttc=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run_async(
    future: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

async fn run(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = ApplianceConfig::load(&config_path)?;
    let shutdown = CancellationToken::new();
    let appliance = warden::runtime::start(config, shutdown.clone()).await?;
    println!("status page: http://{}/", appliance.status_address);
    warden::signals::wait_for_stop().await;
    shutdown.cancel();
    appliance.stopped().await;
    Ok(ExitCode::SUCCESS)
}

fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = ApplianceConfig::load(path)?;
    let report = warden_policy::cli::check_file(&config.policy.file)?;
    print!("{report}");
    if report.is_ok() {
        println!("{}: ok", path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn policy_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let report = warden_policy::cli::check_file(file)?;
    print!("{report}");
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn policy_explain(file: &std::path::Path, request: &str) -> anyhow::Result<ExitCode> {
    let explanation = warden_policy::cli::explain_file(file, request)?;
    println!("{explanation}");
    Ok(ExitCode::SUCCESS)
}
