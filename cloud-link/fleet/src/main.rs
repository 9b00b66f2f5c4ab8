//! `warden-fleet`: runs the fleet service from a TOML config, makes a new fleet's
//! config and PKI (`init`), and backs up and restores its SQLite store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The Warden fleet service: broker, store, API and dashboard.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the fleet's TOML config (`warden-fleet init` makes one).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The config used when `--config` is not given.
const DEFAULT_CONFIG: &str = "fleet.toml";

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once, at start")]
enum Command {
    /// Run the fleet service (the default).
    Run,
    /// Make a new fleet: a commented fleet.toml, a fleet CA, a server certificate and
    /// an admin token (printed once). Refuses to overwrite anything.
    Init(InitArgs),
    /// Copy the SQLite store to FILE while the fleet runs (PostgreSQL: pg_dump).
    Backup {
        /// The backup file to write.
        #[arg(long)]
        to: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// API tokens in the config.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make a product's own issuing CA (its devices' renewed certificates chain to it,
    /// not to the fleet's) and print the config section that uses it. Refuses to
    /// overwrite.
    IssuingCa {
        /// The product (as created with `POST /api/v1/products`).
        #[arg(long)]
        product: String,
        /// Where the certificate and key go (default: the config's folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Apply the store's pending schema migrations and exit (PostgreSQL: one
    /// instance at a time under an advisory lock). Migrations only add tables and
    /// columns, so instances of the previous version keep serving meanwhile.
    Migrate,
    /// Replace the SQLite store with a backup. Refused while a fleet runs on it.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing database.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Add an API token to the config (e.g. a station's `provisioner` token): printed
    /// once, only its SHA-256 kept. A running fleet admits it once restarted.
    Create {
        /// What it may do: viewer, operator, provisioner or admin.
        #[arg(long, value_parser = ["viewer", "operator", "provisioner", "admin"])]
        role: String,
        /// Who holds it (the audit log names it): unique in the config.
        #[arg(long)]
        name: String,
    },
}

/// `warden-fleet init`'s arguments.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Where the config and certificates go (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Where the SQLite database and images go (default: --dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A DNS name or IP address units and stations reach the fleet by; repeat for
    /// several (default: localhost and 127.0.0.1).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// The API and dashboard address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    http_listen: String,
    /// The MQTT broker's address.
    #[arg(long, default_value = "0.0.0.0:8883")]
    mqtt_listen: String,
    /// The Prometheus /metrics address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// An existing fleet CA certificate (PEM) to issue the server certificate
    /// from (with --ca-key), or that --server-cert chains to.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// The existing fleet CA's key (PKCS#8 PEM).
    #[arg(long, requires = "ca_cert", conflicts_with = "server_cert")]
    ca_key: Option<PathBuf>,
    /// An existing server certificate (PEM) to use as it is (with --server-key and
    /// --ca-cert).
    #[arg(long, requires_all = ["server_key", "ca_cert"])]
    server_cert: Option<PathBuf>,
    /// The existing server certificate's key (PEM).
    #[arg(long, requires = "server_cert")]
    server_key: Option<PathBuf>,
    /// A vendor root's public key (SPKI PEM, `warden-provision keys root`) that
    /// uploaded images must chain to; repeat for several.
    #[arg(long = "vendor-root")]
    vendor_roots: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match args.command {
        None | Some(Command::Run) => run(args.config.as_deref()).await,
        Some(Command::Init(args)) => {
            let pki = match (args.ca_cert, args.ca_key, args.server_cert, args.server_key) {
                (Some(cert), Some(key), None, None) => {
                    warden_fleet::init::Pki::FromCa { cert, key }
                }
                (Some(ca), None, Some(cert), Some(key)) => {
                    warden_fleet::init::Pki::Existing { ca, cert, key }
                }
                (None, None, None, None) => warden_fleet::init::Pki::Generate,
                _ => anyhow::bail!(
                    "give --ca-cert with --ca-key (issue the server certificate from that CA), \
                     or --ca-cert with --server-cert and --server-key (use them as they are)"
                ),
            };
            let made = warden_fleet::init::init(&warden_fleet::init::InitRequest {
                dir: args.dir,
                state_dir: args.state_dir,
                hostnames: if args.hostnames.is_empty() {
                    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
                } else {
                    args.hostnames
                },
                http_listen: args.http_listen,
                mqtt_listen: args.mqtt_listen,
                metrics_listen: args.metrics_listen,
                pki,
                vendor_roots: args.vendor_roots,
            })?;
            println!("fleet config:   {}", made.config.display());
            println!(
                "fleet CA:       {} (units and stations pin it)",
                made.fleet_ca.display()
            );
            println!(
                "admin token:    {} (shown once; only its SHA-256 is kept)",
                made.admin_token
            );
            println!(
                "start it:       warden-fleet --config {}",
                made.config.display()
            );
            Ok(())
        }
        Some(Command::Backup { to, force }) => {
            let config = load(args.config.as_deref())?;
            let copied = warden_fleet::backup::backup(&config.database_url, &to, force).await?;
            println!("backed up {} bytes to {}", copied.bytes, to.display());
            Ok(())
        }
        Some(Command::Migrate) => {
            let config = load(args.config.as_deref())?;
            let store = warden_fleet::store::Store::open_with(&config.database_url, 0)
                .await
                .with_context(|| format!("cannot migrate {}", config.database_url))?;
            let version = store.schema_version().await?;
            store.close().await;
            println!("store schema at version {version}");
            Ok(())
        }
        Some(Command::Token(TokenCommand::Create { role, name })) => {
            let path = args.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
            let role = warden_fleet::auth::Role::from_name(&role).with_context(|| {
                format!("--role {role:?}: viewer, operator, provisioner or admin")
            })?;
            let token = warden_fleet::tokens::create_token(path, &name, role)?;
            println!(
                "{} token: {token} (shown once; only its SHA-256 is kept in {})",
                role.name(),
                path.display()
            );
            println!("restart the fleet to admit it");
            Ok(())
        }
        Some(Command::IssuingCa { product, dir }) => {
            let config = args.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
            let dir = dir.unwrap_or_else(|| {
                config
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_owned()
            });
            let made = warden_fleet::init::product_issuing_ca(&dir, &product)?;
            println!(
                "wrote {} and {} (key mode 0600)",
                made.cert.display(),
                made.key.display()
            );
            println!(
                "add this to {} and restart the fleet:\n\n{}",
                config.display(),
                made.section
            );
            Ok(())
        }
        Some(Command::Restore { from, force }) => {
            let config = load(args.config.as_deref())?;
            let copied = warden_fleet::backup::restore(&config.database_url, &from, force).await?;
            println!(
                "restored {} bytes from {} to {}",
                copied.bytes,
                from.display(),
                config.database_url
            );
            Ok(())
        }
    }
}

/// Loads the config; a missing default config says what to run instead.
fn load(config: Option<&Path>) -> anyhow::Result<warden_fleet::FleetConfig> {
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    if !path.exists() {
        anyhow::bail!(
            "no fleet config at {}: make one with `warden-fleet init --dir DIR [--hostname NAME …]`, \
             then run `warden-fleet --config DIR/fleet.toml`",
            path.display()
        );
    }
    Ok(warden_fleet::FleetConfig::load(path)?)
}

async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let config = load(config)?;
    // A restore must not replace the database under a running fleet.
    let _lock = match warden_fleet::backup::sqlite_path(&config.database_url) {
        Ok(database) => Some(
            warden_fleet::backup::DatabaseLock::take(&database)
                .context("another warden-fleet runs on this database")?,
        ),
        Err(_) => None,
    };
    let shutdown = CancellationToken::new();
    let fleet = warden_fleet::start(&config, shutdown.clone()).await?;
    println!(
        "fleet dashboard: {}://{}/",
        fleet.http_scheme, fleet.http_address
    );
    println!("fleet broker:    mqtts://{}", fleet.mqtt_address);
    if let Some(metrics) = fleet.metrics_address {
        println!("fleet metrics:   http://{metrics}/metrics");
    }
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
