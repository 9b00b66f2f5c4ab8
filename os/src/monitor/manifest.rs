//! The compartment manifest: what each compartment may touch, from TOML.
//!
//! Every grant is required, so an empty list is written out on purpose (as in
//! Hubris's `app.toml`); an unknown key is an error, not a silent typo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole manifest: the monitor's settings and one entry per compartment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// How the monitor supervises.
    pub monitor: MonitorSettings,
    /// Compartments by name, in name order.
    pub compartment: BTreeMap<String, CompartmentManifest>,
}

/// The monitor's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// How often each compartment must heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// A compartment silent this long is killed and restarted, in milliseconds.
    pub watchdog_timeout_ms: u64,
    /// First restart delay, in milliseconds; doubled after each crash.
    pub restart_backoff_initial_ms: u64,
    /// Largest restart delay, in milliseconds.
    pub restart_backoff_max_ms: u64,
    /// Where failure reports are kept.
    pub report_dir: PathBuf,
    /// How many reports the on-disk ring keeps.
    pub report_capacity: usize,
    /// Where the A/B boot state lives, so that a trial image's repeated compartment
    /// crashes roll it back. Absent: crashes are only reported and restarted.
    #[serde(default)]
    pub boot: Option<BootSettings>,
}

/// The boot state the monitor reports trial crashes to (`[monitor.boot]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSettings {
    /// The boot monitor's state directory (`slots/`, `boot/state`).
    pub state_dir: PathBuf,
    /// This device's product, as images name it.
    pub product: String,
    /// Pluton's socket (the root of trust that verifies images if the state must be
    /// rebuilt).
    pub pluton_socket: PathBuf,
    /// Pluton's provisioning capability file (only the monitor reads it).
    pub capability_file: PathBuf,
}

/// One compartment: the role it runs and what it is granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompartmentManifest {
    /// The role: `warden compartment <role>` runs it.
    pub role: String,
    /// Extra arguments after the role.
    pub args: Vec<String>,
    /// Paths (files or directory trees) it may read.
    pub read: Vec<PathBuf>,
    /// Paths it may read, write, create and delete in.
    pub read_write: Vec<PathBuf>,
    /// Serial devices it may open.
    pub serial: Vec<PathBuf>,
    /// Outbound TCP connections, `host:port`.
    pub connect: Vec<String>,
    /// TCP ports it may listen on.
    pub listen: Vec<u16>,
    /// Unix sockets it serves (the socket file lives in one of its `read_write` trees).
    pub unix_listen: Vec<PathBuf>,
    /// Unix sockets of other compartments it may connect to; each must be another
    /// compartment's `unix_listen`. The monitor adds that compartment's gid to this
    /// one's groups, so the socket (mode 0660) admits it and nobody else.
    pub unix_connect: Vec<PathBuf>,
    /// Compartments it may open an IPC channel to.
    pub peers: Vec<String>,
    /// Address-space limit, MiB.
    pub memory_mib: u64,
    /// Open file descriptor limit.
    pub open_files: u64,
    /// The dedicated uid (and gid) it runs as when the monitor is root.
    pub uid: u32,
    /// May ask the monitor to end the run so the boot stage boots the image it just
    /// installed (the compartment that runs the update agent). Off unless granted.
    #[serde(default)]
    pub restart_for_update: bool,
}

impl CompartmentManifest {
    /// The grants the sandbox enforces (the manifest entry without role and args),
    /// without supplementary groups: [`Manifest::grants_for`] adds those.
    pub fn grants(&self) -> Grants {
        Grants {
            read: self.read.clone(),
            read_write: self.read_write.clone(),
            serial: self.serial.clone(),
            connect: self.connect.clone(),
            listen: self.listen.clone(),
            unix_listen: self.unix_listen.clone(),
            unix_connect: self.unix_connect.clone(),
            peers: self.peers.clone(),
            memory_mib: self.memory_mib,
            open_files: self.open_files,
            uid: self.uid,
            groups: Vec::new(),
        }
    }
}

/// What one compartment is granted; everything else is denied by the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Paths (files or directory trees) it may read.
    pub read: Vec<PathBuf>,
    /// Paths (files or directory trees) it may read, write, create and delete in.
    pub read_write: Vec<PathBuf>,
    /// Serial devices it may open for reading and writing.
    pub serial: Vec<PathBuf>,
    /// Outbound TCP connections, `host:port` (the kernel enforces the port).
    pub connect: Vec<String>,
    /// TCP ports it may listen on.
    pub listen: Vec<u16>,
    /// Unix sockets it serves.
    pub unix_listen: Vec<PathBuf>,
    /// Unix sockets (of other compartments) it may connect to.
    pub unix_connect: Vec<PathBuf>,
    /// Compartments it may open an IPC channel to.
    pub peers: Vec<String>,
    /// Address-space limit, MiB.
    pub memory_mib: u64,
    /// Open file descriptor limit.
    pub open_files: u64,
    /// The dedicated uid and gid (applied only when started as root).
    pub uid: u32,
    /// Supplementary groups (applied only when started as root): the gids of the
    /// compartments whose `unix_listen` sockets it may connect to.
    pub groups: Vec<u32>,
}

impl Grants {
    /// True when the compartment may use the (TCP/IP) network at all.
    pub fn has_network(&self) -> bool {
        !self.connect.is_empty() || !self.listen.is_empty()
    }

    /// True when the compartment may create Unix sockets (to serve or to connect).
    pub fn has_unix_sockets(&self) -> bool {
        !self.unix_listen.is_empty() || !self.unix_connect.is_empty()
    }

    /// The ports of the `connect` grants.
    pub fn connect_ports(&self) -> Result<Vec<u16>, ManifestError> {
        self.connect
            .iter()
            .map(|target| parse_host_port(target))
            .collect()
    }
}

/// A manifest that could not be read or does not make sense.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {file}: {source}")]
    Read {
        /// The manifest file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is missing or unknown (the message names line and key).
    #[error("manifest {file}: {message}")]
    Parse {
        /// The manifest file.
        file: String,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("manifest {file}{line}: compartment `{compartment}`, field `{field}`: {problem}")]
    Invalid {
        /// The manifest file.
        file: String,
        /// `:LINE` of the compartment's table when known, else empty.
        line: String,
        /// The compartment.
        compartment: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A `host:port` grant that does not parse.
    #[error("`{0}` is not host:port with a port in 1..=65535")]
    HostPort(String),
}

fn parse_host_port(target: &str) -> Result<u16, ManifestError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| ManifestError::HostPort(target.to_owned()))?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 && !host.is_empty() => Ok(port),
        _ => Err(ManifestError::HostPort(target.to_owned())),
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(file: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, &file.display().to_string())
    }

    /// The grants of compartment `name`, with the supplementary groups its
    /// `unix_connect` entries need (each listening compartment's gid, sorted).
    pub fn grants_for(&self, name: &str) -> Option<Grants> {
        let entry = self.compartment.get(name)?;
        let mut grants = entry.grants();
        let mut groups: Vec<u32> = entry
            .unix_connect
            .iter()
            .filter_map(|socket| self.unix_listener_of(socket))
            .map(|(_, listener)| listener.uid)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        grants.groups = groups;
        Some(grants)
    }

    /// The compartment that serves the Unix socket `socket`.
    pub fn unix_listener_of(&self, socket: &Path) -> Option<(&str, &CompartmentManifest)> {
        self.compartment
            .iter()
            .find(|(_, entry)| entry.unix_listen.iter().any(|path| path == socket))
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|error| ManifestError::Parse {
            file: origin.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        manifest.validate(text, origin)?;
        Ok(manifest)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ManifestError> {
        for (name, compartment) in &self.compartment {
            let invalid = |field: &'static str, problem: String| ManifestError::Invalid {
                file: origin.to_owned(),
                line: table_line(text, name).map_or_else(String::new, |n| format!(":{n}")),
                compartment: name.clone(),
                field,
                problem,
            };
            if compartment.role.is_empty() {
                return Err(invalid("role", "is empty".into()));
            }
            let grants = &compartment.grants();
            for (field, paths) in [
                ("read", &grants.read),
                ("read_write", &grants.read_write),
                ("serial", &grants.serial),
                ("unix_listen", &grants.unix_listen),
                ("unix_connect", &grants.unix_connect),
            ] {
                if let Some(path) = paths.iter().find(|path| !path.is_absolute()) {
                    return Err(invalid(
                        field,
                        format!("`{}` is not an absolute path", path.display()),
                    ));
                }
            }
            if let Err(error) = grants.connect_ports() {
                return Err(invalid("connect", error.to_string()));
            }
            if let Some(port) = grants.listen.iter().find(|port| **port == 0) {
                return Err(invalid("listen", format!("port {port} is not a port")));
            }
            if let Some(socket) = grants.unix_listen.iter().find(|socket| {
                !grants
                    .read_write
                    .iter()
                    .any(|tree| socket.parent().is_some_and(|dir| dir.starts_with(tree)))
            }) {
                return Err(invalid(
                    "unix_listen",
                    format!(
                        "`{}` is not inside one of its `read_write` trees",
                        socket.display()
                    ),
                ));
            }
            for socket in &grants.unix_connect {
                match self.unix_listener_of(socket) {
                    None => {
                        return Err(invalid(
                            "unix_connect",
                            format!(
                                "`{}` is no compartment's `unix_listen` socket",
                                socket.display()
                            ),
                        ));
                    }
                    Some((listener, _)) if listener == name => {
                        return Err(invalid(
                            "unix_connect",
                            format!("`{}` is its own socket", socket.display()),
                        ));
                    }
                    Some(_) => {}
                }
            }
            for peer in &grants.peers {
                if !self.compartment.contains_key(peer) {
                    return Err(invalid(
                        "peers",
                        format!("`{peer}` is not a compartment in this manifest"),
                    ));
                }
                if peer == name {
                    return Err(invalid(
                        "peers",
                        "a compartment cannot be its own peer".into(),
                    ));
                }
            }
            if grants.uid == 0 {
                return Err(invalid(
                    "uid",
                    "0 is root; give each compartment its own uid".into(),
                ));
            }
            if let Some((other, _)) = self
                .compartment
                .iter()
                .find(|(other, entry)| *other != name && entry.uid == grants.uid)
            {
                return Err(invalid(
                    "uid",
                    format!(
                        "uid {} is also `{other}`'s; each compartment gets its own",
                        grants.uid
                    ),
                ));
            }
            if grants.memory_mib == 0 {
                return Err(invalid("memory_mib", "must be at least 1".into()));
            }
            if grants.open_files < 8 {
                return Err(invalid(
                    "open_files",
                    "must be at least 8 (stdio, the control channel)".into(),
                ));
            }
        }
        let settings = &self.monitor;
        let monitor_invalid = |field: &'static str, problem: &str| ManifestError::Invalid {
            file: origin.to_owned(),
            line: String::new(),
            compartment: "(monitor)".into(),
            field,
            problem: problem.into(),
        };
        if settings.heartbeat_interval_ms == 0
            || settings.watchdog_timeout_ms <= settings.heartbeat_interval_ms
        {
            return Err(monitor_invalid(
                "watchdog_timeout_ms",
                "must be longer than heartbeat_interval_ms, which must be > 0",
            ));
        }
        if settings.restart_backoff_initial_ms == 0
            || settings.restart_backoff_max_ms < settings.restart_backoff_initial_ms
        {
            return Err(monitor_invalid(
                "restart_backoff_max_ms",
                "must be ≥ restart_backoff_initial_ms, which must be > 0",
            ));
        }
        if settings.report_capacity == 0 {
            return Err(monitor_invalid("report_capacity", "must be at least 1"));
        }
        Ok(())
    }
}

/// The 1-based line of `[compartment.NAME]` in `text`, if written that way.
fn table_line(text: &str, name: &str) -> Option<usize> {
    let header = format!("[compartment.{name}]");
    text.lines()
        .position(|line| line.trim() == header)
        .map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[monitor]
heartbeat_interval_ms = 100
watchdog_timeout_ms = 1000
restart_backoff_initial_ms = 50
restart_backoff_max_ms = 1000
report_dir = "/tmp/r"
report_capacity = 8

[compartment.a]
role = "x"
args = []
read = ["/etc/a"]
read_write = []
serial = []
connect = ["10.0.0.1:502"]
listen = []
unix_listen = []
unix_connect = ["/run/b/b.sock"]
peers = ["b"]
memory_mib = 64
open_files = 32
uid = 61001

[compartment.b]
role = "y"
args = []
read = []
read_write = ["/run/b"]
serial = []
connect = []
listen = [8081]
unix_listen = ["/run/b/b.sock"]
unix_connect = []
peers = []
memory_mib = 64
open_files = 32
uid = 61002
"#;

    #[test]
    fn parses_a_good_manifest() {
        let manifest = Manifest::parse(GOOD, "m.toml").expect("parses");
        assert_eq!(manifest.compartment.len(), 2);
        let a = &manifest.compartment["a"].grants();
        assert!(a.has_network());
        assert_eq!(a.connect_ports().expect("ports"), vec![502]);
        assert!(manifest.compartment["b"].grants().has_network());
        assert_eq!(manifest.grants_for("a").expect("a").groups, vec![61002]);
        assert!(manifest.grants_for("b").expect("b").groups.is_empty());
    }

    #[test]
    fn unix_sockets_must_be_served_by_a_compartment_from_its_own_tree() {
        let text = GOOD.replacen(
            "unix_connect = [\"/run/b/b.sock\"]",
            "unix_connect = [\"/run/x.sock\"]",
            1,
        );
        let error = Manifest::parse(&text, "m.toml")
            .expect_err("unserved")
            .to_string();
        assert!(
            error.contains("`unix_connect`") && error.contains("/run/x.sock"),
            "{error}"
        );
        let text = GOOD.replacen("read_write = [\"/run/b\"]", "read_write = []", 1);
        let error = Manifest::parse(&text, "m.toml")
            .expect_err("outside")
            .to_string();
        assert!(
            error.contains("`unix_listen`") && error.contains("read_write"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_grant_is_an_error_naming_it() {
        let text = GOOD.replacen("serial = []\n", "", 1);
        let error = Manifest::parse(&text, "m.toml")
            .expect_err("missing")
            .to_string();
        assert!(
            error.contains("m.toml") && error.contains("serial"),
            "{error}"
        );
        assert!(error.contains("line"), "{error}");
    }

    #[test]
    fn an_unknown_peer_names_file_line_and_field() {
        let text = GOOD.replacen("peers = [\"b\"]", "peers = [\"ghost\"]", 1);
        let error = Manifest::parse(&text, "m.toml")
            .expect_err("ghost")
            .to_string();
        assert!(
            error.contains("m.toml:10") && error.contains("`peers`") && error.contains("ghost"),
            "{error}"
        );
    }

    #[test]
    fn bad_host_port_and_relative_paths_are_refused() {
        let text = GOOD.replacen("10.0.0.1:502", "10.0.0.1", 1);
        assert!(Manifest::parse(&text, "m").is_err());
        let text = GOOD.replacen("/etc/a", "etc/a", 1);
        let error = Manifest::parse(&text, "m")
            .expect_err("relative")
            .to_string();
        assert!(error.contains("`read`"), "{error}");
    }
}
