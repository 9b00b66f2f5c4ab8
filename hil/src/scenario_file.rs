//! Simulation scenarios from a TOML file: Modbus TCP slaves and RTU lines to start.
//!
//! ```toml
//! [[tcp]]
//! listen = "127.0.0.1:5020"
//! [[tcp.devices]]
//! unit = 1
//! holding.0 = { model = "sine", center = 500.0, amplitude = 100.0, period_ms = 10000 }
//!
//! [[rtu]]
//! baud = 19200
//! link = "/tmp/warden-line2"          # optional: a symlink to the pseudo-terminal
//! [[rtu.devices]]
//! unit = 3
//! faults = { crc_corruption = 0.02, silence = 0.01 }
//! input.0 = { model = "random_walk", start = 200, step = 3, min = 150, max = 250, period_ms = 500 }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::modbus_rtu_slave::{RtuLineModel, RtuSlaveSimulator};
use crate::modbus_tcp_slave::SimulatedSlave;
use crate::simulated_device::DeviceModel;

/// A scenario file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Modbus TCP slaves (each may hold several units).
    #[serde(default)]
    pub tcp: Vec<TcpSlaveModel>,
    /// Modbus RTU lines.
    #[serde(default)]
    pub rtu: Vec<RtuLineEntry>,
}

/// One simulated TCP slave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSlaveModel {
    /// Address to listen on (port 0: any free port).
    pub listen: String,
    /// Its units.
    pub devices: Vec<DeviceModel>,
}

/// One simulated RTU line, with an optional stable path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuLineEntry {
    /// A symlink created to the pseudo-terminal, so configs can name a fixed path.
    #[serde(default)]
    pub link: Option<PathBuf>,
    /// Baud rate the simulator paces at.
    pub baud: u32,
    /// Parity.
    #[serde(default)]
    pub parity: warden_bridges::modbus::rtu_bus::Parity,
    /// Stop bits.
    #[serde(default = "one")]
    pub stop_bits: u8,
    /// Extra turnaround in microseconds.
    #[serde(default)]
    pub turnaround_us: u64,
    /// Its units.
    pub devices: Vec<DeviceModel>,
}

fn one() -> u8 {
    1
}

/// The simulators a scenario started.
pub struct RunningScenario {
    /// TCP slaves, in file order.
    pub tcp: Vec<SimulatedSlave>,
    /// RTU lines, in file order.
    pub rtu: Vec<RtuSlaveSimulator>,
}

impl ScenarioFile {
    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Starts every simulator; they stop on `shutdown` (TCP) or when dropped (RTU).
    pub async fn start(&self, shutdown: CancellationToken) -> anyhow::Result<RunningScenario> {
        let mut tcp = Vec::new();
        for slave in &self.tcp {
            tcp.push(
                SimulatedSlave::start_many(&slave.listen, slave.devices.clone(), shutdown.clone())
                    .await?,
            );
        }
        let mut rtu = Vec::new();
        for line in &self.rtu {
            let simulator = RtuSlaveSimulator::start(RtuLineModel {
                baud: line.baud,
                parity: line.parity,
                stop_bits: line.stop_bits,
                turnaround_us: line.turnaround_us,
                devices: line.devices.clone(),
            })?;
            if let Some(link) = &line.link {
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(simulator.path(), link)?;
            }
            rtu.push(simulator);
        }
        Ok(RunningScenario { tcp, rtu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
[[tcp]]
listen = "127.0.0.1:0"
[[tcp.devices]]
unit = 1
holding.0 = { model = "sine", center = 500.0, amplitude = 100.0, period_ms = 10000 }

[[rtu]]
baud = 19200
[[rtu.devices]]
unit = 3
faults = { crc_corruption = 0.02, silence = 0.01 }
input.0 = { model = "random_walk", start = 200, step = 3, min = 150, max = 250, period_ms = 500 }
"#;
        let scenario: ScenarioFile = toml::from_str(text).expect("parses");
        assert_eq!(scenario.rtu[0].devices[0].faults.crc_corruption, 0.02);
        assert_eq!(scenario.tcp[0].devices[0].holding.len(), 1);
    }
}
