//! `warden-provision`: the factory provisioning station.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use warden_provision::batch::{BatchPlan, run_batch};
use warden_provision::passphrase::{DEFAULT_PASSPHRASE_ENV, PassphraseSource};
use warden_provision::release_keys;
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
    /// The vendor's signing keys: a vendor root and release keys it certifies.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Policy bundles the station installs.
    #[command(subcommand)]
    Bundle(BundleCommand),
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
        /// Years the CA is valid (until 1 January of that year; units' certificates
        /// chain to it for their whole service life).
        #[arg(long, default_value_t = warden_provision::ca::CA_VALID_YEARS,
              value_parser = clap::value_parser!(i32).range(1..=100))]
        valid_years: i32,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a vendor root key (P-256). Keep the key offline: it certifies release keys
    /// and units trust it for their whole life.
    Root {
        /// Where the private key goes (PKCS#8 PEM, mode 0600; never overwritten).
        #[arg(long)]
        key: PathBuf,
        /// Where its public key goes (SPKI PEM: station.toml's `[[vendor_root]]`).
        #[arg(long)]
        public: PathBuf,
    },
    /// Make a release key and its certificate from the vendor root.
    Release {
        /// The vendor root's private key.
        #[arg(long)]
        root_key: PathBuf,
        /// Where the release key goes (PKCS#8 PEM, mode 0600; never overwritten).
        #[arg(long)]
        key: PathBuf,
        /// Where its certificate goes (147 bytes, WKC1).
        #[arg(long)]
        cert: PathBuf,
        /// What it may sign: `image`, `policy` (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "image,policy")]
        purposes: Vec<String>,
        /// The certificate's serial number (to tell release keys apart, and revoke one).
        #[arg(long, default_value_t = 1)]
        serial: u32,
    },
    /// Make a revocation list signed by the vendor root: units that take it refuse
    /// images signed by the keys it names.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The vendor root's private key (it signs the list; units verify it against the
    /// vendor roots they hold).
    #[arg(long)]
    root_key: PathBuf,
    /// The list's sequence: above every list published before (units keep only a newer
    /// one, so an old list cannot be replayed to un-revoke a key).
    #[arg(long)]
    sequence: u64,
    /// A release key to revoke, by its certificate (WKC1); repeat for several.
    #[arg(long = "cert")]
    certs: Vec<PathBuf>,
    /// A release key or root to revoke, by key ID (16 hex digits); repeat for several.
    #[arg(long = "key-id")]
    key_ids: Vec<String>,
    /// Where the list goes (never overwritten).
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Compile a policy and sign it with a release key certified for `policy`.
    Sign {
        /// The policy source (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// The product the bundle is for (station.toml's `product`).
        #[arg(long)]
        product: String,
        /// The bundle's version: a unit accepts only a version at least its current one.
        #[arg(long)]
        version: u64,
        /// The release key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The release key's certificate (WKC1).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the bundle.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing bundle.
        #[arg(long)]
        force: bool,
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
            valid_years,
            passphrase,
        }) => {
            let secret = passphrase.source().read_new()?;
            let cert = warden_provision::ca::init(
                &ca_dir,
                &warden_provision::ca::CaSubject {
                    common_name: &name,
                    organization: &organization,
                    valid_years,
                },
                secret.as_bytes(),
                warden_provision::key_envelope::KdfCost::default(),
            )?;
            println!("manufacturer CA created: {}", cert.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Root { key, public }) => {
            let root = release_keys::create_root(&key, &public)?;
            println!("vendor root {} created", root.key_id);
            println!("  private key: {} (keep it offline)", key.display());
            println!("  public key:  {}", public.display());
            println!("  fleet images.vendor_roots: \"{}\"", root.public_hex);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Release {
            root_key,
            key,
            cert,
            purposes,
            serial,
        }) => {
            let purposes = release_keys::purposes_from_names(purposes.iter().map(String::as_str))
                .map_err(release_keys::ReleaseKeyError::from)?;
            let release = release_keys::create_release(&root_key, &key, &cert, purposes, serial)?;
            println!(
                "release key {} certified by {} for {:?} (serial {serial})",
                release.key_id, release.issuer, release.purposes
            );
            println!("  private key: {}", key.display());
            println!("  certificate: {}", cert.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Revoke(args)) => {
            let mut revoked: Vec<release_keys::RevokedKey> = args
                .certs
                .iter()
                .cloned()
                .map(release_keys::RevokedKey::Certificate)
                .collect();
            for id in &args.key_ids {
                revoked.push(release_keys::RevokedKey::KeyId(release_keys::parse_key_id(
                    id,
                )?));
            }
            let ids = release_keys::create_revocation_list(
                &args.root_key,
                args.sequence,
                &revoked,
                &args.output,
            )?;
            println!(
                "revocation list {} (sequence {}) signed: {} key(s) revoked",
                args.output.display(),
                args.sequence,
                ids.len()
            );
            for id in ids {
                println!("  {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle(BundleCommand::Sign {
            policy,
            product,
            version,
            key,
            cert,
            output,
            force,
        }) => {
            let warnings = release_keys::sign_bundle(&release_keys::BundleRequest {
                policy: &policy,
                product: &product,
                version,
                key: &key,
                cert: &cert,
                output: &output,
                force,
            })?;
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "policy bundle {} (product {product}, version {version}) signed",
                output.display()
            );
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
