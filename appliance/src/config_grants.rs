//! Whether the manifest grants each compartment what the config asks of it.
//!
//! On a unit, the bridges, link and status page each run sandboxed with only their
//! manifest grants (`appliance/manifest.toml`): a config that names a Modbus TCP
//! device, a serial line or a listening port the manifest does not grant starts, and
//! then its compartment fails in the kernel (landlock refuses the connect or bind, the
//! device node is not there for it) and is restarted over and over. This names each
//! such mismatch up front, by the config field and the compartment, for `warden
//! check-config --manifest` and for the monitor's start.
//!
//! Compared are the facts the kernel enforces: TCP ports (landlock checks the port,
//! not the host), device paths and Unix socket paths. A port below the unprivileged
//! start (`net.ipv4.ip_unprivileged_port_start`, 1024 unless lowered) cannot be bound
//! by a compartment, which never runs as root.

use std::path::Path;

use warden_ble::hci_transport::HciTransportSpec;
use warden_bridges::config::RtuTransport;
use warden_os::monitor::manifest::{CompartmentManifest, Manifest};

use crate::config::ApplianceConfig;

/// The manifest's role names of the appliance's compartments.
const BRIDGES: &str = "bridges";
const LINK: &str = "link";
const STATUS_PAGE: &str = "status-page";

/// Every grant the config needs and the manifest does not give, as `(config field,
/// message)`. `unprivileged_port_start` is the lowest port a non-root process may bind
/// on the unit. A role the manifest does not run at all is not checked.
pub fn missing_grants(
    config: &ApplianceConfig,
    manifest: &Manifest,
    unprivileged_port_start: u16,
) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    if let Some((name, bridges)) = compartment_of(manifest, BRIDGES) {
        let need = Needs {
            name,
            grants: bridges,
            unprivileged_port_start,
        };
        for (i, bridge) in config.bridges.modbus_tcp.iter().enumerate() {
            need.connect(
                &format!("bridges.modbus_tcp[{i}].address"),
                &bridge.address,
                &mut missing,
            );
        }
        for (i, bridge) in config.bridges.modbus_rtu.iter().enumerate() {
            if bridge.transport == RtuTransport::Native {
                need.serial(
                    &format!("bridges.modbus_rtu[{i}].port"),
                    &bridge.port,
                    &mut missing,
                );
            }
        }
        if let Some(facade) = &config.bridges.facade {
            need.listen("bridges.facade.listen", &facade.listen, &mut missing);
        }
        for (i, sensor) in config.bridges.ble.iter().enumerate() {
            let field = format!("bridges.ble[{i}].hci");
            match HciTransportSpec::parse(&sensor.hci) {
                Ok(HciTransportSpec::Tcp(target)) => need.connect(&field, &target, &mut missing),
                Ok(HciTransportSpec::Serial { path, .. }) => {
                    need.serial(&field, &path, &mut missing);
                }
                Err(_) => {} // The config's own check names it.
            }
        }
        if let Some(privnet) = &config.privnet {
            need.serial("privnet.interface", "/dev/net/tun", &mut missing);
            for (i, forward) in privnet.forward.iter().enumerate() {
                let field = format!("privnet.forward[{i}].listen");
                let listen = forward.listen.to_string();
                need.listen(&field, &listen, &mut missing);
                need.connect(&field, &listen, &mut missing);
            }
        }
    }
    if let Some((name, link)) = compartment_of(manifest, LINK) {
        let need = Needs {
            name,
            grants: link,
            unprivileged_port_start,
        };
        let broker = format!("{}:{}", config.link.broker_host, config.link.broker_port);
        need.connect("link.broker_port", &broker, &mut missing);
        if let Some(socket) = &config.link.pluton_socket {
            need.unix_connect("link.pluton_socket", socket, &mut missing);
        }
    }
    if let Some((name, page)) = compartment_of(manifest, STATUS_PAGE) {
        let need = Needs {
            name,
            grants: page,
            unprivileged_port_start,
        };
        need.listen(
            "status_page.listen",
            &config.status_page.listen,
            &mut missing,
        );
        if let Some(metrics) = &config.status_page.metrics_listen {
            need.listen("status_page.metrics_listen", metrics, &mut missing);
        }
    }
    missing
}

/// At the monitor's start: logs, as errors, every grant the appliance's config (the
/// `--config` its compartments are started with) needs and `manifest_file` does not
/// give. The monitor starts anyway: each compartment still runs what it is granted,
/// and the one that fails says so again when it does.
pub fn log_missing_at_start(manifest_file: &Path) {
    let Ok(manifest) = Manifest::load(manifest_file) else {
        return; // The monitor refuses it with its own error.
    };
    let Some(config_file) = config_of(&manifest) else {
        return;
    };
    let Ok(config) = ApplianceConfig::load(Path::new(config_file)) else {
        return; // Each role names the config's problem as it starts.
    };
    for (field, problem) in missing_grants(&config, &manifest, unprivileged_port_start()) {
        tracing::error!(
            config = %config_file,
            manifest = %manifest_file.display(),
            %field,
            "{problem}"
        );
    }
}

/// The config file the appliance's compartments are started with (`--config F`).
fn config_of(manifest: &Manifest) -> Option<&str> {
    manifest
        .compartment
        .values()
        .filter(|entry| [BRIDGES, LINK, STATUS_PAGE].contains(&entry.role.as_str()))
        .find_map(|entry| {
            let at = entry.args.iter().position(|arg| arg == "--config")?;
            entry.args.get(at + 1).map(String::as_str)
        })
}

/// The lowest port a non-root process may bind here (1024 when it cannot be read).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_UNPRIVILEGED_PORT_START)
}

/// Linux's default `net.ipv4.ip_unprivileged_port_start`.
pub const DEFAULT_UNPRIVILEGED_PORT_START: u16 = 1024;

/// The (first) compartment that runs `role`, and its name.
fn compartment_of<'m>(
    manifest: &'m Manifest,
    role: &str,
) -> Option<(&'m str, &'m CompartmentManifest)> {
    manifest
        .compartment
        .iter()
        .find(|(_, entry)| entry.role == role)
        .map(|(name, entry)| (name.as_str(), entry))
}

/// One compartment's grants, checked against what the config asks of it.
struct Needs<'m> {
    name: &'m str,
    grants: &'m CompartmentManifest,
    unprivileged_port_start: u16,
}

impl Needs<'_> {
    fn connect(&self, field: &str, target: &str, missing: &mut Vec<(String, String)>) {
        let Some(port) = port_of(target) else {
            return; // The config's own check names a bad address.
        };
        let granted = self
            .grants
            .connect
            .iter()
            .any(|grant| port_of(grant) == Some(port));
        if !granted {
            missing.push((
                field.to_owned(),
                format!(
                    "{target}: port {port} is not in compartment `{}`'s `connect` grants of the manifest ({}): the kernel refuses the connection",
                    self.name,
                    list(&self.grants.connect)
                ),
            ));
        }
    }

    fn listen(&self, field: &str, address: &str, missing: &mut Vec<(String, String)>) {
        let Some(port) = port_of(address) else {
            return;
        };
        if port == 0 {
            return; // Any free port: landlock cannot grant it and the unit never ships it.
        }
        if !self.grants.listen.contains(&port) {
            missing.push((
                field.to_owned(),
                format!(
                    "{address}: port {port} is not in compartment `{}`'s `listen` grants of the manifest ({}): the kernel refuses the bind",
                    self.name,
                    list(&self.grants.listen)
                ),
            ));
        } else if port < self.unprivileged_port_start {
            missing.push((
                field.to_owned(),
                format!(
                    "{address}: port {port} is below {}, and compartment `{}` runs as uid {}, never root: the kernel refuses the bind (use a port from {} up, or lower net.ipv4.ip_unprivileged_port_start on the unit)",
                    self.unprivileged_port_start,
                    self.name,
                    self.grants.uid,
                    self.unprivileged_port_start
                ),
            ));
        }
    }

    fn serial(&self, field: &str, device: &str, missing: &mut Vec<(String, String)>) {
        if !self
            .grants
            .serial
            .iter()
            .any(|grant| grant == Path::new(device))
        {
            missing.push((
                field.to_owned(),
                format!(
                    "{device} is not in compartment `{}`'s `serial` grants of the manifest ({}): the compartment cannot open it",
                    self.name,
                    list(
                        &self
                            .grants
                            .serial
                            .iter()
                            .map(|p| p.display())
                            .collect::<Vec<_>>()
                    )
                ),
            ));
        }
    }

    fn unix_connect(&self, field: &str, socket: &Path, missing: &mut Vec<(String, String)>) {
        if !self.grants.unix_connect.iter().any(|grant| grant == socket) {
            missing.push((
                field.to_owned(),
                format!(
                    "{} is not in compartment `{}`'s `unix_connect` grants of the manifest ({}): the compartment cannot reach it",
                    socket.display(),
                    self.name,
                    list(
                        &self
                            .grants
                            .unix_connect
                            .iter()
                            .map(|p| p.display())
                            .collect::<Vec<_>>()
                    )
                ),
            ));
        }
    }
}

/// The port of `host:port` (`[v6]:port` too).
fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED_MANIFEST: &str = include_str!("../manifest.toml");

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text, "manifest.toml").expect("manifest parses")
    }

    fn config(text: &str) -> ApplianceConfig {
        ApplianceConfig::parse_unchecked(text, Path::new("warden.toml")).expect("config parses")
    }

    /// The shipped config as a unit runs it: paths made absolute as on the unit.
    fn shipped_config() -> ApplianceConfig {
        config(include_str!("../config/warden.toml"))
    }

    #[test]
    fn the_shipped_config_needs_nothing_the_shipped_manifest_does_not_grant() {
        let missing = missing_grants(
            &shipped_config(),
            &manifest(SHIPPED_MANIFEST),
            DEFAULT_UNPRIVILEGED_PORT_START,
        );
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn an_ungranted_device_port_line_or_socket_is_named_by_field() {
        let text = include_str!("../config/warden.toml")
            .replace("192.168.50.10:502", "192.168.50.10:503")
            .replace("/dev/ttyRS485-1", "/dev/ttyUSB7")
            .replace("broker_port = 8883", "broker_port = 1883");
        let missing = missing_grants(
            &config(&text),
            &manifest(SHIPPED_MANIFEST),
            DEFAULT_UNPRIVILEGED_PORT_START,
        );
        let fields: Vec<&str> = missing.iter().map(|(field, _)| field.as_str()).collect();
        assert!(
            fields.contains(&"bridges.modbus_tcp[0].address"),
            "{missing:#?}"
        );
        assert!(
            fields.contains(&"bridges.modbus_rtu[0].port"),
            "{missing:#?}"
        );
        assert!(fields.contains(&"link.broker_port"), "{missing:#?}");
        let tcp = &missing
            .iter()
            .find(|(field, _)| field == "bridges.modbus_tcp[0].address")
            .expect("named")
            .1;
        assert!(
            tcp.contains("port 503")
                && tcp.contains("`bridges`")
                && tcp.contains("192.168.50.10:502"),
            "{tcp}"
        );
    }

    #[test]
    fn a_facade_port_must_be_granted_and_bindable_without_root() {
        let with_facade = format!(
            "{}\n[bridges.facade]\nlisten = \"0.0.0.0:502\"\nmax_clients = 4\nunits = []\n",
            include_str!("../config/warden.toml")
        );
        let config = config(&with_facade);
        // Not granted at all.
        let missing = missing_grants(&config, &manifest(SHIPPED_MANIFEST), 1024);
        let facade = missing
            .iter()
            .find(|(field, _)| field == "bridges.facade.listen")
            .expect("the facade's port is named");
        assert!(facade.1.contains("`listen` grants"), "{}", facade.1);
        // Granted, but below the unprivileged start: still refused by the kernel.
        let granted = SHIPPED_MANIFEST.replacen(
            "serial = [\"/dev/ttyRS485-1\"]\nconnect = [\"192.168.50.10:502\"]\nlisten = []",
            "serial = [\"/dev/ttyRS485-1\"]\nconnect = [\"192.168.50.10:502\"]\nlisten = [502]",
            1,
        );
        assert_ne!(
            granted, SHIPPED_MANIFEST,
            "the bridges' grants are where the test expects"
        );
        let missing = missing_grants(&config, &manifest(&granted), 1024);
        let facade = &missing
            .iter()
            .find(|(field, _)| field == "bridges.facade.listen")
            .expect("still named")
            .1;
        assert!(
            facade.contains("below 1024") && facade.contains("uid 61002"),
            "{facade}"
        );
        // With the unit's sysctl lowered to 502, it binds.
        assert!(missing_grants(&config, &manifest(&granted), 502).is_empty());
    }

    #[test]
    fn roles_the_manifest_does_not_run_are_not_checked() {
        let only_pluton: String = SHIPPED_MANIFEST
            .split("\n[compartment.")
            .filter(|section| {
                !section.starts_with("bridges]")
                    && !section.starts_with("link]")
                    && !section.starts_with("status-page]")
            })
            .collect::<Vec<_>>()
            .join("\n[compartment.");
        let text = include_str!("../config/warden.toml").replace("192.168.50.10:502", "10.0.0.1:1");
        assert!(missing_grants(&config(&text), &manifest(&only_pluton), 1024).is_empty());
    }
}
