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
    /// The demo tour's provisioning station runs its unit's pluton as this (started by
    /// `warden demo`, not by hand; `warden-provision pluton` in a factory).
    #[cfg(feature = "demo")]
    #[command(name = warden_hil::tour::STATION_PLUTON_COMMAND, hide = true)]
    DemoStationPluton {
        /// The socket to serve.
        #[arg(long)]
        socket: PathBuf,
        /// Pluton's state directory (the unit's).
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Run the appliance from a config file.
    Run {
        /// The appliance config.
        #[arg(long, default_value = "/etc/warden/warden.toml")]
        config: PathBuf,
        /// Run the security monitor: start each compartment of this manifest sandboxed.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Development only: run even where the kernel lacks a sandbox feature.
        #[arg(long, requires = "manifest")]
        insecure_dev: bool,
    },
    /// Boot stage: select and verify a slot, run its image, reboot it after an update,
    /// roll back a crashing trial (`warden boot … -- run --manifest …`).
    Boot(warden::boot::BootArgs),
    /// Run one sandboxed compartment (started by the monitor, not by hand).
    Compartment {
        /// The role, e.g. `pluton`, `bridges`, `link`, `status-page`, `selftest-hostile`.
        role: String,
        /// The role's arguments, from the manifest.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Ask the running appliance for its status (link, outbox, bridges, values).
    Status {
        /// The appliance config (names the status page's state directory, where the
        /// control socket is). Default: the config the running appliance was started
        /// with, else /etc/warden/warden.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON status instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Write the status page's password hash (`[status_page] password_file`): prompts
    /// twice without echo on a terminal, else reads one line from standard input.
    Passwd {
        /// The appliance config naming the password file.
        #[arg(
            long,
            default_value = "/etc/warden/warden.toml",
            conflicts_with = "file"
        )]
        config: PathBuf,
        /// Write this file instead of the config's `password_file`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Replace an existing password file.
        #[arg(long)]
        force: bool,
    },
    /// List and show failure reports.
    #[command(subcommand)]
    Report(warden_os::monitor::cli::ReportCommand),
    /// Check an appliance config and the policy it names; print what is wrong.
    CheckConfig {
        /// The appliance config.
        config: PathBuf,
        /// A config as shipped, before a unit is provisioned: the fleet CA, device
        /// certificate and key, and the status page's password hash are not checked
        /// (the provisioning station writes them); everything else is.
        #[arg(long)]
        before_provisioning: bool,
        /// Also check that this manifest grants each compartment what the config
        /// needs of it (device ports, serial lines, listening ports, sockets).
        #[arg(long)]
        manifest: Option<PathBuf>,
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
        /// Stop when this process is no longer pluton's parent (the boot stage passes
        /// its own PID, so a boot stage killed outright does not leave pluton behind).
        #[arg(long)]
        parent_pid: Option<u32>,
        /// Give every caller not named by a launch token or a role uid the transitional
        /// `unseparated` role (any local process may then sign as the device; for hosts
        /// that do not hand out roles).
        #[arg(long)]
        unseparated: bool,
        /// Where pluton keeps its keys: `software` (its state directory) or `tpm` (a TPM
        /// 2.0; needs a build with the `tpm` feature). Default: the backend the state
        /// directory belongs to (recorded at its first start; the provisioning station's
        /// `[pluton] backend`), `software` for a new one. Asking for the other backend
        /// than the state's is refused.
        #[arg(long, value_parser = ["software", "tpm"])]
        backend: Option<String>,
        /// The TPM's TCTI with `--backend tpm`: `device:/dev/tpmrm0` on hardware,
        /// `swtpm:host=127.0.0.1,port=2321` for swtpm.
        #[arg(long, default_value = "device:/dev/tpmrm0")]
        tcti: String,
    },
    /// Build, sign, inspect and verify firmware images.
    #[command(subcommand)]
    Image(warden_os::cli::ImageCommand),
    /// Updates on this unit.
    #[command(subcommand)]
    Update(UpdateCommand),
}

#[derive(Debug, Subcommand)]
enum UpdateCommand {
    /// Install a signed image from a file (a USB stick, a laptop) through the running
    /// appliance: verified, gated and installed exactly as a fleet offer; the new slot
    /// boots on trial and the result reaches the fleet when the link returns. A delta
    /// (`.wdelta`) from the installed image is applied and its result verified as an image.
    Install {
        /// The signed image (`.wim`) or delta (`.wdelta`).
        file: PathBuf,
        /// The appliance config (names `[updates] download_dir`, where the updater's
        /// socket is). Default: the config the running appliance was started with,
        /// else /etc/warden/warden.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
    // Run by the kernel as the initramfs's /init: Warden OS's PID 1 (it never returns).
    if std::process::id() == 1 {
        warden::os_init::run()
    }
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
        #[cfg(feature = "demo")]
        Some(Command::DemoStationPluton { socket, state_dir }) => {
            warden_hil::tour::run_station_pluton(&socket, &state_dir).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Run {
            config,
            manifest: None,
            ..
        }) => run_async(run(config)),
        Some(Command::Run {
            manifest: Some(manifest),
            insecure_dev,
            ..
        }) => run_async(run_monitor(manifest, insecure_dev)),
        Some(Command::Boot(args)) => run_async(warden::boot::run(args)),
        Some(Command::Compartment { role, args }) => compartment(&role, &args),
        Some(Command::Status { config, json }) => status(config, json),
        Some(Command::Passwd {
            config,
            file,
            force,
        }) => passwd(&config, file, force),
        Some(Command::Report(command)) => command.run(),
        Some(Command::CheckConfig {
            config,
            before_provisioning,
            manifest,
        }) => check_config(&config, before_provisioning, manifest.as_deref()),
        Some(Command::Policy(PolicyCommand::Check { file })) => policy_check(&file),
        Some(Command::Policy(PolicyCommand::Explain { file, request })) => {
            policy_explain(&file, &request)
        }
        Some(Command::Image(command)) => command.run(),
        Some(Command::Update(UpdateCommand::Install { file, config })) => {
            run_async(update_install(file, config))
        }
        Some(Command::Pluton {
            socket,
            state_dir,
            firmware_version,
            parent_pid,
            unseparated,
            backend,
            tcti,
        }) => run_async(async move {
            let backend = match backend {
                Some(name) => warden_pluton::backend_record::BackendKind::from_name(&name),
                None => warden_pluton::backend_record::recorded(&state_dir)?,
            };
            let options = warden_pluton::server::ServeOptions {
                backend: warden_pluton::server::Backend::of_kind(
                    backend.unwrap_or(warden_pluton::backend_record::BackendKind::Software),
                    tcti,
                ),
                firmware_version,
                roles: warden::pluton_host::caller_roles_from_env(unseparated)?,
                ..Default::default()
            };
            tokio::select! {
                served = warden_pluton::server::serve(&socket, &state_dir, options) => served?,
                () = parent_gone(parent_pid) => {
                    tracing::warn!(?parent_pid, "pluton's parent is gone; pluton stops");
                }
            }
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

/// Resolves once this process's parent is no longer `parent` (it died and the process
/// was re-parented); never without one.
async fn parent_gone(parent: Option<u32>) {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
    while std::os::unix::process::parent_id() == parent {
        every.tick().await;
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
    let appliance = warden::runtime::start(config, CancellationToken::new()).await?;
    println!("status page: https://{}/", appliance.status_address);
    println!("status page cert: SHA-256 {}", appliance.status_fingerprint);
    if let Some(metrics) = appliance.metrics_address {
        println!("metrics: http://{metrics}/metrics");
    }
    Ok(exit_code(
        appliance.run_until(warden::signals::wait_for_stop()).await,
    ))
}

/// The exit code for how the appliance ended: a failed task (already logged, with
/// its cause) exits non-zero so that systemd or the boot stage starts it again.
fn exit_code(ending: warden::runtime::Ending) -> ExitCode {
    match ending {
        warden::runtime::Ending::Stopped => ExitCode::SUCCESS,
        warden::runtime::Ending::RestartRequested => {
            tracing::info!("stopping for the boot stage to boot again");
            ExitCode::from(warden_os::launch::RESTART_EXIT_CODE)
        }
        warden::runtime::Ending::Failed(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// `warden run --manifest`: the monitor, until SIGTERM or Ctrl-C.
async fn run_monitor(manifest: PathBuf, insecure_dev: bool) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    warden::config_grants::log_missing_at_start(&manifest);
    let mut monitor = tokio::task::spawn_blocking(move || {
        warden_os::monitor::cli::run_monitor(
            &manifest,
            insecure_dev,
            env!("CARGO_PKG_VERSION"),
            warden::os_init::up_line_from_env(),
            &flag,
        )
    });
    let outcome = tokio::select! {
        result = &mut monitor => result??,
        () = warden::signals::wait_for_stop() => {
            stop.store(true, Ordering::SeqCst);
            (&mut monitor).await??
        }
    };
    match outcome {
        warden_os::monitor::MonitorOutcome::Stopped => Ok(ExitCode::SUCCESS),
        warden_os::monitor::MonitorOutcome::RolledBack { crashes, reason } => {
            tracing::error!(crashes, %reason, "the trial image crashed too often and was rolled back; reboot into the previous image");
            Ok(ExitCode::from(warden_os::launch::RESTART_EXIT_CODE))
        }
        warden_os::monitor::MonitorOutcome::RestartForUpdate { by } => {
            tracing::warn!(compartment = %by, "stopped for the boot stage to boot the installed update");
            Ok(ExitCode::from(warden_os::launch::RESTART_EXIT_CODE))
        }
    }
}

/// Options of the `pluton` compartment role.
#[derive(Debug, Parser)]
struct PlutonRoleArgs {
    /// The Unix socket to serve.
    #[arg(long)]
    socket: PathBuf,
    /// Pluton's state directory.
    #[arg(long)]
    state_dir: PathBuf,
}

/// `warden compartment <role>`: sandbox first, then the role's work.
fn compartment(role: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    if let Some(code) = warden_os::monitor::selftest::run_role(role, args) {
        return Ok(code);
    }
    if let Some(result) = warden::compartments::run_role(role, args) {
        return result;
    }
    let words = std::iter::once(role.to_owned()).chain(args.iter().cloned());
    match role {
        "pluton" => {
            let options = PlutonRoleArgs::try_parse_from(words)?;
            // Enter the sandbox before the runtime starts any thread.
            let compartment = warden_os::monitor::compartment::enter_from_env()?;
            compartment.start_heartbeat();
            warden::compartments::runtime()?.block_on(async move {
                // The monitor handed pluton every role's token, and each role's uid when
                // it runs as root.
                let serve = warden_pluton::server::ServeOptions {
                    roles: warden::pluton_host::caller_roles_from_env(false)?,
                    ..Default::default()
                };
                warden_pluton::server::serve(&options.socket, &options.state_dir, serve).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        other => Err(anyhow::anyhow!(
            "unknown compartment role `{other}` (roles: pluton, {}, {})",
            warden::compartments::ROLES.join(", "),
            warden_os::monitor::selftest::ROLES.join(", ")
        )),
    }
}

fn status(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let config = ApplianceConfig::load(&warden::control::config_for_status(config)?)?;
    let status = warden::control::query(&warden::control::socket_path(&config.status_page))?;
    if json {
        println!("{status:#}");
    } else {
        print!("{}", warden::control::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

async fn update_install(file: PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use warden::updates::local::{self, LocalInstallAnswer};
    let config = ApplianceConfig::load(&warden::control::config_for_status(config)?)?;
    let Some(updates) = &config.updates else {
        anyhow::bail!("this unit takes no updates: its config has no [updates] section");
    };
    let socket = local::socket_path(&updates.download_dir);
    eprintln!("sending {} to the updater", file.display());
    let answer = local::install_file(&socket, &file, &mut |_| {}).await?;
    match answer {
        LocalInstallAnswer::Installed { id, detail, .. } => {
            println!("installed ({id}): {detail}");
            Ok(ExitCode::SUCCESS)
        }
        LocalInstallAnswer::Waiting { id, detail, .. } => {
            println!("verified and waiting ({id}): {detail}");
            Ok(ExitCode::SUCCESS)
        }
        LocalInstallAnswer::RevocationsInstalled { detail, .. } => {
            println!("{detail}");
            Ok(ExitCode::SUCCESS)
        }
        LocalInstallAnswer::Refused { detail, .. } => {
            eprintln!("refused: {detail}");
            Ok(ExitCode::FAILURE)
        }
        other => anyhow::bail!("unexpected answer from the updater: {other:?}"),
    }
}

fn passwd(
    config: &std::path::Path,
    file: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let path = match file {
        Some(file) => file,
        // Only the path is needed: a unit being set up may not have the rest yet
        // (certificates, keys), so the values are not checked here.
        None => {
            let text = std::fs::read_to_string(config)
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", config.display()))?;
            ApplianceConfig::parse_unchecked(&text, config)?
                .status_page
                .password_file
        }
    };
    let password = warden::passwd::read_password()?;
    warden::passwd::set_password(&path, &password, force)?;
    eprintln!("wrote the status page password hash to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn check_config(
    path: &std::path::Path,
    before_provisioning: bool,
    manifest: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let stage = if before_provisioning {
        warden::config_check::Stage::BeforeProvisioning
    } else {
        warden::config_check::Stage::Provisioned
    };
    let manifest = manifest
        .map(warden_os::monitor::manifest::Manifest::load)
        .transpose()?;
    let report = warden::config_check::check_full(path, stage, manifest.as_ref())?;
    // Problems go to stderr, one per line, all of them; the policy's own report
    // (errors and warnings located in the policy file) to stdout.
    eprint!("{report}");
    if let Some(policy) = &report.policy {
        print!("{policy}");
    }
    if report.is_ok() {
        if report.warnings.is_empty() {
            println!("{}: ok", path.display());
        } else {
            println!(
                "{}: ok, {} warning(s)",
                path.display(),
                report.warnings.len()
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{}: {} problem(s){}",
            path.display(),
            report.problems.len(),
            if report.policy.as_ref().is_some_and(|p| !p.is_ok()) {
                " and the policy does not compile"
            } else {
                ""
            }
        );
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
