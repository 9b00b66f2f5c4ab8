//! `warden run --manifest` and `warden report list|show`: the monitor's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;

use super::manifest::Manifest;
use super::{Monitor, MonitorOptions, MonitorOutcome};
use crate::reports::ReportStore;
use crate::sandbox::SandboxMode;

/// Where reports live unless a manifest says otherwise.
pub const DEFAULT_REPORT_DIR: &str = "/var/lib/warden/reports";

/// `warden report …`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// List failure reports (oldest first), or their groups with counts.
    List {
        /// The report directory (the manifest's `report_dir`).
        #[arg(long, default_value = DEFAULT_REPORT_DIR)]
        dir: PathBuf,
        /// Group by signature, most frequent first.
        #[arg(long)]
        groups: bool,
    },
    /// Show one report in full, with its backtrace.
    Show {
        /// The report ID.
        id: u64,
        /// The report directory.
        #[arg(long, default_value = DEFAULT_REPORT_DIR)]
        dir: PathBuf,
    },
}

impl ReportCommand {
    /// Runs the command, printing to stdout.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::List { dir, groups } => {
                let store = open_existing(&dir)?;
                if groups {
                    println!("{:>5}  {:>6}  {:>6}  signature", "count", "first", "last");
                    for group in store.groups()? {
                        println!(
                            "{:>5}  {:>6}  {:>6}  {}",
                            group.count, group.first_id, group.last_id, group.signature
                        );
                    }
                } else {
                    println!(
                        "{:>6}  {:>13}  {:<12} {:<16} summary",
                        "id", "time_ms", "version", "compartment"
                    );
                    for report in store.list()? {
                        println!(
                            "{:>6}  {:>13}  {:<12} {:<16} {}",
                            report.id,
                            report.created_ms,
                            report.image_version,
                            report.compartment,
                            report.kind.summary()
                        );
                    }
                }
            }
            Self::Show { id, dir } => {
                let report = open_existing(&dir)?.show(id)?;
                println!("id:          {}", report.id);
                println!("time_ms:     {}", report.created_ms);
                println!("version:     {}", report.image_version);
                println!("compartment: {}", report.compartment);
                println!("kind:        {}", report.kind.name());
                println!("signature:   {}", report.signature());
                println!("summary:     {}", report.kind.summary());
                if let crate::reports::FailureKind::Panic { backtrace, .. } = &report.kind {
                    println!("backtrace:\n{backtrace}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn open_existing(dir: &Path) -> anyhow::Result<ReportStore> {
    anyhow::ensure!(dir.is_dir(), "no report directory at {}", dir.display());
    Ok(ReportStore::open(dir, usize::MAX, "")?)
}

/// Runs the monitor for `manifest` with this binary's `compartment` subcommand until
/// `stop` is raised (or a trial image crashes too often). `up_line`, if any, is printed
/// on standard error once every compartment is up ([`Monitor::announce_when_up`]).
pub fn run_monitor(
    manifest: &Path,
    insecure_dev: bool,
    image_version: &str,
    up_line: Option<String>,
    stop: &AtomicBool,
) -> anyhow::Result<MonitorOutcome> {
    let manifest = Manifest::load(manifest)?;
    let mode = if insecure_dev {
        tracing::error!(
            "--insecure-dev: sandbox layers the kernel lacks will be SKIPPED; never use this in production"
        );
        SandboxMode::InsecureDev
    } else {
        SandboxMode::Enforce
    };
    let program =
        std::env::current_exe().context("cannot find this binary to start compartments")?;
    let trial = manifest
        .monitor
        .boot
        .as_ref()
        .and_then(super::trial::PlutonBootTrial::from_env);
    let options = MonitorOptions {
        program,
        program_prefix: vec!["compartment".into()],
        mode,
        image_version: image_version.to_owned(),
        running_slot: super::trial::slot_from_env(),
    };
    let mut monitor = Monitor::new(manifest, options)?;
    if let Some(line) = up_line {
        monitor.announce_when_up(line);
    }
    if let Some(trial) = trial {
        tracing::warn!("this image is on trial: compartment crashes count towards rollback");
        monitor.on_trial(Box::new(trial));
    }
    Ok(monitor.run(stop)?)
}
