//! `warden-provision`: the factory provisioning station.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use warden_provision::batch::{BatchPlan, run_batch};
use warden_provision::passphrase::{DEFAULT_PASSPHRASE_ENV, PassphraseSource};
use warden_provision::{Station, StationConfig};

/// The Warden factory provisioning station.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The manufacturer CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Provision one unit.
    Unit {
        #[command(flatten)]
        station: StationArgs,
        /// The unit's serial number (its directory under `units_dir`).
        #[arg(long)]
        serial: String,
    },
    /// Provision (or resume) a batch of units with consecutive serial numbers.
    Batch {
        #[command(flatten)]
        station: StationArgs,
        /// Batch name (its records go to `units_dir/batches/NAME`).
        #[arg(long)]
        batch: String,
        /// Number of units.
        #[arg(long)]
        count: u64,
        /// Serial number prefix.
        #[arg(long, default_value = "WG")]
        prefix: String,
        /// First serial number.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// Digits of the zero-padded number.
        #[arg(long, default_value_t = 6)]
        digits: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Check a provisioned unit end to end.
    Verify {
        #[command(flatten)]
        station: StationArgs,
        /// The unit's serial number.
        #[arg(long, conflicts_with = "unit")]
        serial: Option<String>,
        /// Or the unit's directory.
        #[arg(long)]
        unit: Option<PathBuf>,
    },
    /// Pluton for one unit (started by the station itself).
    #[command(hide = true)]
    Pluton {
        /// Socket path.
        #[arg(long)]
        socket: PathBuf,
        /// State directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// `software` or `tpm` (station.toml's `[pluton] backend`).
        #[arg(long, value_parser = ["software", "tpm"], default_value = "software")]
        backend: String,
        /// The TPM's TCTI with `--backend tpm`.
        #[arg(long, default_value = warden_pluton::server::DEFAULT_TCTI)]
        tcti: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the manufacturer CA (P-256; the key file encrypted with the passphrase).
    Init {
        /// Directory for `manufacturer-ca.pem` and `manufacturer-ca.key.enc`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The CA's common name.
        #[arg(long)]
        name: String,
        /// The CA's organization.
        #[arg(long, default_value = "Warden")]
        organization: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, Args)]
struct PassphraseArgs {
    /// Environment variable holding the CA passphrase.
    #[arg(long, default_value = DEFAULT_PASSPHRASE_ENV)]
    passphrase_env: String,
    /// File holding the CA passphrase (instead of the environment).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    fn source(&self) -> PassphraseSource {
        match &self.passphrase_file {
            Some(file) => PassphraseSource::File(file.clone()),
            None => PassphraseSource::Env(self.passphrase_env.clone()),
        }
    }
}

#[derive(Debug, Args)]
struct StationArgs {
    /// The station config.
    #[arg(long, default_value = "station.toml")]
    station: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

impl StationArgs {
    fn open(&self) -> anyhow::Result<Station> {
        let config = StationConfig::load(&self.station)?;
        let passphrase = self.passphrase.source().read()?;
        let ca = warden_provision::ca::ManufacturerCa::open(&config.ca_dir, passphrase.as_bytes())
            .context("cannot open the manufacturer CA")?;
        drop(passphrase);
        let exe = std::env::current_exe().context("cannot find this executable")?;
        Ok(Station::open(config, ca, exe)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("warden-provision: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ca(CaCommand::Init {
            ca_dir,
            name,
            organization,
            passphrase,
        }) => {
            let secret = passphrase.source().read_new()?;
            let cert = warden_provision::ca::init(
                &ca_dir,
                &name,
                &organization,
                secret.as_bytes(),
                warden_provision::key_envelope::KdfCost::default(),
            )?;
            println!("manufacturer CA created: {}", cert.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Unit { station, serial } => {
            let station = station.open()?;
            let unit = warden_provision::provision_unit(&station, &serial)?;
            println!(
                "provisioned {} device {} sha256 {}",
                unit.record.serial,
                unit.record.device_id.unwrap_or_default(),
                unit.record.fingerprint.unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Batch {
            station,
            batch,
            count,
            prefix,
            first,
            digits,
            quiet,
        } => {
            let station = station.open()?;
            let plan = BatchPlan {
                name: batch,
                prefix,
                first,
                count,
                digits,
            };
            let summary = run_batch(&station, &plan, !quiet)?;
            let minutes = summary.elapsed.as_secs_f64() / 60.0;
            let rate = if minutes > 0.0 {
                summary.provisioned as f64 / minutes
            } else {
                0.0
            };
            println!(
                "batch {}: {} provisioned, {} already done, {} failed in {:.1} s ({rate:.1} units/min); manifest {}",
                plan.name,
                summary.provisioned,
                summary.skipped,
                summary.failed,
                summary.elapsed.as_secs_f64(),
                summary.manifest_csv.display()
            );
            Ok(if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify {
            station,
            serial,
            unit,
        } => {
            let station = station.open()?;
            let root = match (unit, serial) {
                (Some(dir), _) => dir,
                (None, Some(serial)) => station.units_dir().join(serial),
                (None, None) => anyhow::bail!("give --serial or --unit"),
            };
            let report = warden_provision::verify::verify_unit(&station, &root);
            for check in &report.checks {
                match &check.outcome {
                    Ok(detail) => println!("ok      {}: {detail}", check.name),
                    Err(reason) => println!("FAILED  {}: {reason}", check.name),
                }
            }
            Ok(if report.passed() {
                println!("unit {} verifies", root.display());
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Pluton {
            socket,
            state_dir,
            backend,
            tcti,
        } => {
            let kind = warden_pluton::backend_record::BackendKind::from_name(&backend)
                .unwrap_or(warden_pluton::backend_record::BackendKind::Software);
            let backend = warden_pluton::server::Backend::of_kind(kind, tcti);
            warden_provision::pluton_process::run_role(&socket, &state_dir, backend)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
