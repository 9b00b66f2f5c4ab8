//! A real Mosquitto broker with the fleet's configuration template (Debian `mosquitto`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ports::wait_for_listener;

/// The files Mosquitto's TLS listener needs.
#[derive(Debug, Clone)]
pub struct BrokerPki {
    /// CA that signed the devices' certificates (`require_certificate`).
    pub client_ca: PathBuf,
    /// The broker's certificate chain.
    pub server_cert: PathBuf,
    /// The broker's private key.
    pub server_key: PathBuf,
}

/// A running Mosquitto; killed and reaped when dropped.
pub struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fleet's Mosquitto folder (`cloud-link/fleet/mosquitto`: the config template, ACL).
fn fleet_mosquitto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cloud-link/fleet/mosquitto")
}

/// Starts Mosquitto on `port` from the fleet's `mosquitto.conf.in` (mutual TLS with
/// per-device ACLs), its config written in `dir`; returns once it listens.
pub fn start(dir: &Path, pki: &BrokerPki, port: u16) -> Mosquitto {
    let fleet_dir = fleet_mosquitto_dir();
    let template = std::fs::read_to_string(fleet_dir.join("mosquitto.conf.in"))
        .expect("the fleet's mosquitto.conf.in");
    let conf = template
        .replace("{{PORT}}", &port.to_string())
        .replace("{{MANUFACTURER_CA}}", &pki.client_ca.display().to_string())
        .replace("{{SERVER_CERT}}", &pki.server_cert.display().to_string())
        .replace("{{SERVER_KEY}}", &pki.server_key.display().to_string())
        .replace("{{ACL_FILE}}", &fleet_dir.join("acl").display().to_string())
        // Started as root, Mosquitto drops to the `mosquitto` user, which cannot read
        // the test's 0600 key files; keep the test's own user instead.
        + "user root\n";
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf).expect("write mosquitto.conf");
    let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|candidate| Path::new(candidate).exists())
        .unwrap_or("mosquitto");
    // Wrapped at once: the guard kills and reaps it on every path, panics included.
    let broker = Mosquitto(
        Command::new(binary)
            .arg("-c")
            .arg(&path)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (Debian package mosquitto)"),
    );
    wait_for_listener(port, "mosquitto");
    broker
}
