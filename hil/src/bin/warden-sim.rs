//! `warden-sim SCENARIO.toml`: runs the simulators of a scenario file until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use warden_hil::scenario_file::ScenarioFile;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: warden-sim SCENARIO.toml")?;
    let scenario = ScenarioFile::load(&path)?;
    let shutdown = CancellationToken::new();
    let running = scenario.start(shutdown.clone()).await?;
    for slave in &running.tcp {
        println!("modbus tcp slave listening on {}", slave.address());
    }
    for (line, entry) in running.rtu.iter().zip(&scenario.rtu) {
        let link = entry
            .link
            .as_ref()
            .map(|l| format!(" (link {})", l.display()))
            .unwrap_or_default();
        println!(
            "modbus rtu line at {} baud on {}{link}",
            entry.baud,
            line.path()
        );
    }
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    Ok(())
}
