//! The world around the appliance in `warden demo`: equipment, fleet and PKI.
//!
//! The appliance is the unit under test; this module starts everything else on
//! loopback and writes the appliance's config files for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::demo_pki::DemoPki;
use crate::modbus_tcp_slave::{DeviceModel, SimulatedSlave};

/// The simulated equipment's registers.
pub const EQUIPMENT_MODEL: &str = include_str!("../scenarios/demo/equipment.toml");
/// The appliance config template.
pub const APPLIANCE_CONFIG_TEMPLATE: &str = include_str!("../scenarios/demo/warden.toml.in");
/// The demo policy.
pub const DEMO_POLICY: &str = include_str!("../scenarios/demo/policy.toml");

/// Ports of the demo's services; 0 picks a free port.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    /// Fleet HTTP API and dashboard.
    pub fleet_http: u16,
    /// Fleet MQTT broker (TLS).
    pub fleet_mqtt: u16,
    /// The appliance's status page.
    pub status_page: u16,
    /// The simulated Modbus TCP device.
    pub equipment: u16,
}

impl DemoPorts {
    /// Fixed ports, easy to type.
    pub const FIXED: Self = Self {
        fleet_http: 8080,
        fleet_mqtt: 8883,
        status_page: 8081,
        equipment: 5020,
    };
    /// Free ports chosen by the kernel (tests, or when the fixed ones are taken).
    pub const EPHEMERAL: Self = Self {
        fleet_http: 0,
        fleet_mqtt: 0,
        status_page: 0,
        equipment: 0,
    };
}

/// The running world: simulated equipment and the fleet service.
pub struct DemoWorld {
    /// Throwaway certificates.
    pub pki: DemoPki,
    /// The simulated device.
    pub equipment: SimulatedSlave,
    /// The fleet service.
    pub fleet: warden_fleet::RunningFleet,
    /// The appliance config written for this run.
    pub appliance_config: PathBuf,
    /// The status page address the config asks for.
    pub status_listen: String,
}

impl DemoWorld {
    /// Creates the PKI under `state_dir/pki`, starts the equipment and the fleet, and
    /// writes `state_dir/warden.toml` and `state_dir/policy.toml` for the appliance.
    ///
    /// With `device`, the appliance's certificate is issued for that identity (its key
    /// stays in pluton, reached through `pluton.sock` in `state_dir`); without, a
    /// device key file is used.
    pub async fn start(
        state_dir: &Path,
        ports: DemoPorts,
        device: Option<DeviceIdentity>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut pki = DemoPki::generate(&state_dir.join("pki"))?;
        let key_line = match &device {
            Some(identity) => {
                let cert =
                    pki.issue_device_certificate(&identity.device_id, &identity.public_key)?;
                pki.device_id = identity.device_id.clone();
                pki.device_cert = cert;
                format!("pluton_socket = \"{}\"", identity.pluton_socket.display())
            }
            None => "device_key = \"pki/device.key\"".to_owned(),
        };
        let equipment = start_equipment(ports.equipment, shutdown.clone()).await?;
        let fleet_config = pki.fleet_config(state_dir, ports.fleet_http, ports.fleet_mqtt);
        let fleet = warden_fleet::start(&fleet_config, shutdown).await?;
        let status_listen = format!("127.0.0.1:{}", ports.status_page);
        let appliance_config = state_dir.join("warden.toml");
        let config_text = appliance_config_text(
            &pki,
            equipment.address(),
            fleet.mqtt_address,
            &status_listen,
        )
        .replace("{{DEVICE_KEY}}", &key_line);
        write_file(&appliance_config, &config_text)?;
        write_file(&state_dir.join("policy.toml"), DEMO_POLICY)?;
        Ok(Self {
            pki,
            equipment,
            fleet,
            appliance_config,
            status_listen,
        })
    }
}

/// Starts the simulated press controller on `127.0.0.1:port` (0: a free port).
pub async fn start_equipment(
    port: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<SimulatedSlave> {
    let model: DeviceModel =
        toml::from_str(EQUIPMENT_MODEL).context("the built-in equipment model is invalid")?;
    SimulatedSlave::start(&format!("127.0.0.1:{port}"), model, shutdown)
        .await
        .with_context(|| format!("cannot start the simulated device on port {port}"))
}

/// An identity held by pluton.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    /// Pluton's device ID.
    pub device_id: String,
    /// Its public key, uncompressed SEC1.
    pub public_key: [u8; 65],
    /// Pluton's socket, absolute or relative to the state directory.
    pub pluton_socket: PathBuf,
}

fn appliance_config_text(
    pki: &DemoPki,
    equipment: SocketAddr,
    broker: SocketAddr,
    status_listen: &str,
) -> String {
    APPLIANCE_CONFIG_TEMPLATE
        .replace("{{DEVICE_ID}}", &pki.device_id)
        .replace(
            "{{DEVICE_CERT}}",
            &pki.device_cert
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .replace("{{EQUIPMENT}}", &equipment.to_string())
        .replace("{{BROKER_PORT}}", &broker.port().to_string())
        .replace("{{STATUS_LISTEN}}", status_listen)
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}
