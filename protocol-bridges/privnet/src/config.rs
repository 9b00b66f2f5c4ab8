//! The `[privnet]` config: the port, its address, DHCP leases, SNTP, forwards.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::Deserialize;

use crate::dhcp_server::{DhcpServerConfig, StaticLease};
use crate::sntp::SntpServerConfig;

/// The private equipment network as the integrator configures it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivnetConfig {
    /// The TAP interface of the downstream Ethernet port (`warden-eq0`). The kernel
    /// holds no address on it: only this userspace stack speaks on the port.
    pub interface: String,
    /// The appliance's Ethernet address on the port (unicast).
    pub mac: String,
    /// The appliance's address and prefix on the private network (`10.77.0.1/24`).
    pub address: String,
    /// The DHCP server.
    #[serde(default)]
    pub dhcp: DhcpConfig,
    /// The SNTP server.
    #[serde(default)]
    pub sntp: SntpConfig,
    /// Loopback ports forwarded to equipment (how the Modbus TCP bridge reaches it).
    #[serde(default)]
    pub forward: Vec<ForwardConfig>,
}

/// `[privnet.dhcp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// Serve DHCP (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Lease duration in seconds (60..=86400*7, default 3600).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// The equipment, one lease each; other MACs get no address.
    #[serde(default)]
    pub static_leases: Vec<StaticLeaseConfig>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_secs: default_lease_secs(),
            static_leases: Vec::new(),
        }
    }
}

/// `[[privnet.dhcp.static_leases]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticLeaseConfig {
    /// The equipment's Ethernet address (`02:00:00:00:00:10`).
    pub mac: String,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// A name for people and logs.
    #[serde(default)]
    pub name: String,
}

/// `[privnet.sntp]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SntpConfig {
    /// Serve SNTP on UDP 123 and announce it in DHCP (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Stratum announced (1..=15, default 3).
    #[serde(default = "default_stratum")]
    pub stratum: u8,
}

impl Default for SntpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stratum: default_stratum(),
        }
    }
}

/// `[[privnet.forward]]`: a loopback listener whose connections go to equipment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Loopback address to listen on (`127.0.0.1:15020`).
    pub listen: SocketAddr,
    /// Equipment address on the private network (`10.77.0.10:502`).
    pub to: SocketAddrV4,
}

fn yes() -> bool {
    true
}

fn default_lease_secs() -> u32 {
    3600
}

fn default_stratum() -> u8 {
    3
}

/// A config value that is wrong, naming the field (`privnet.dhcp.static_leases[1].ip`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A validated private network, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivnetSpec {
    /// TAP interface name.
    pub interface: String,
    /// Our MAC.
    pub mac: [u8; 6],
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// DHCP server, if enabled.
    pub dhcp: Option<DhcpServerConfig>,
    /// SNTP server, if enabled.
    pub sntp: Option<SntpServerConfig>,
    /// Loopback forwards.
    pub forward: Vec<ForwardConfig>,
}

impl PrivnetConfig {
    /// Checks every field; `path` (`privnet`) prefixes every error's field.
    pub fn validate(&self, path: &str) -> Result<PrivnetSpec, ConfigError> {
        let error = |field: &str, message: String| ConfigError {
            field: format!("{path}.{field}"),
            message,
        };
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            return Err(error(
                "interface",
                format!(
                    "{:?} is not an interface name (1 to 15 bytes, no '/')",
                    self.interface
                ),
            ));
        }
        let mac = parse_mac(&self.mac).map_err(|e| error("mac", e.to_string()))?;
        if mac[0] & 1 == 1 {
            return Err(error("mac", format!("{} is a multicast address", self.mac)));
        }
        let (address, prefix_len) =
            parse_cidr(&self.address).map_err(|e| error("address", e.to_string()))?;
        let network =
            |ip: Ipv4Addr| u32::from(ip) & u32::from(crate::dhcp_server::prefix_mask(prefix_len));
        let mut leases: Vec<StaticLease> = Vec::new();
        for (index, lease) in self.dhcp.static_leases.iter().enumerate() {
            let field = |name: &str| format!("dhcp.static_leases[{index}].{name}");
            let lease_mac =
                parse_mac(&lease.mac).map_err(|e| error(&field("mac"), e.to_string()))?;
            if network(lease.ip) != network(address)
                || lease.ip == address
                || host_part_is_edge(lease.ip, prefix_len)
            {
                return Err(error(
                    &field("ip"),
                    format!(
                        "{} is not a host address of {}/{} other than the appliance's",
                        lease.ip, address, prefix_len
                    ),
                ));
            }
            if let Some(other) = leases.iter().position(|l| l.mac == lease_mac) {
                return Err(error(
                    &field("mac"),
                    format!("{} already has a lease (static_leases[{other}])", lease.mac),
                ));
            }
            if let Some(other) = leases.iter().position(|l| l.ip == lease.ip) {
                return Err(error(
                    &field("ip"),
                    format!("{} is already leased (static_leases[{other}])", lease.ip),
                ));
            }
            leases.push(StaticLease {
                mac: lease_mac,
                ip: lease.ip,
                name: lease.name.clone(),
            });
        }
        if !(60..=7 * 86_400).contains(&self.dhcp.lease_secs) {
            return Err(error(
                "dhcp.lease_secs",
                format!("{} is outside 60..=604800", self.dhcp.lease_secs),
            ));
        }
        if !(1..=15).contains(&self.sntp.stratum) {
            return Err(error(
                "sntp.stratum",
                format!("{} is outside 1..=15", self.sntp.stratum),
            ));
        }
        for (index, forward) in self.forward.iter().enumerate() {
            if !forward.listen.ip().is_loopback() {
                return Err(error(
                    &format!("forward[{index}].listen"),
                    format!(
                        "{} is not a loopback address: equipment is reachable only from inside \
                         the appliance",
                        forward.listen
                    ),
                ));
            }
            if network(*forward.to.ip()) != network(address) {
                return Err(error(
                    &format!("forward[{index}].to"),
                    format!("{} is not on {}/{}", forward.to, address, prefix_len),
                ));
            }
        }
        Ok(PrivnetSpec {
            interface: self.interface.clone(),
            mac,
            address,
            prefix_len,
            dhcp: self.dhcp.enabled.then_some(DhcpServerConfig {
                server_ip: address,
                prefix_len,
                lease_secs: self.dhcp.lease_secs,
                offer_ntp: self.sntp.enabled,
                leases,
            }),
            sntp: self.sntp.enabled.then(|| SntpServerConfig {
                stratum: self.sntp.stratum,
                ..SntpServerConfig::default()
            }),
            forward: self.forward.clone(),
        })
    }
}

fn host_part_is_edge(ip: Ipv4Addr, prefix_len: u8) -> bool {
    let host_mask = !u32::from(crate::dhcp_server::prefix_mask(prefix_len));
    let host = u32::from(ip) & host_mask;
    prefix_len < 31 && (host == 0 || host == host_mask)
}

/// A text that is not six hex bytes separated by ':'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an Ethernet address (six hex bytes separated by ':')")]
pub struct MacAddressError {
    /// The text as configured.
    pub text: String,
}

/// Parses `02:00:00:00:00:10`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], MacAddressError> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || MacAddressError {
        text: text.to_owned(),
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Why the port's address (`10.77.0.1/24`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// Not an address, a '/' and a prefix length.
    #[error("{text:?} is not an IPv4 address with a prefix (10.77.0.1/24)")]
    Malformed {
        /// The text as configured.
        text: String,
    },
    /// A prefix too short for a private segment or too long for hosts.
    #[error("{text:?}: the prefix must be 8..=30")]
    PrefixOutOfRange {
        /// The text as configured.
        text: String,
    },
    /// The address is the network's or its broadcast address, not a host's.
    #[error("{text:?} is the network or broadcast address")]
    NotAHost {
        /// The text as configured.
        text: String,
    },
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), CidrError> {
    let bad = || CidrError::Malformed {
        text: text.to_owned(),
    };
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(CidrError::PrefixOutOfRange {
            text: text.to_owned(),
        });
    }
    if host_part_is_edge(ip, prefix) {
        return Err(CidrError::NotAHost {
            text: text.to_owned(),
        });
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface = "warden-eq0"
mac = "02:00:00:00:00:01"
address = "10.77.0.1/24"

[dhcp]
lease_secs = 600
[[dhcp.static_leases]]
mac = "02:00:00:00:00:10"
ip = "10.77.0.10"
name = "press-7"

[[forward]]
listen = "127.0.0.1:15020"
to = "10.77.0.10:502"
"#;

    fn parse(text: &str) -> PrivnetConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn a_good_config_validates() {
        let spec = parse(GOOD).validate("privnet").expect("valid");
        assert_eq!(spec.address, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(spec.prefix_len, 24);
        let dhcp = spec.dhcp.expect("dhcp on");
        assert_eq!(dhcp.leases[0].mac, [2, 0, 0, 0, 0, 0x10]);
        assert!(dhcp.offer_ntp);
        assert!(spec.sntp.is_some());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "ip = \"10.77.0.10\"",
                "ip = \"10.78.0.10\"",
                "privnet.dhcp.static_leases[0].ip",
            ),
            (
                "ip = \"10.77.0.10\"",
                "ip = \"10.77.0.1\"",
                "privnet.dhcp.static_leases[0].ip",
            ),
            (
                "mac = \"02:00:00:00:00:10\"",
                "mac = \"02:00:00:00:10\"",
                "privnet.dhcp.static_leases[0].mac",
            ),
            (
                "mac = \"02:00:00:00:00:01\"",
                "mac = \"01:00:00:00:00:01\"",
                "privnet.mac",
            ),
            ("10.77.0.1/24", "10.77.0.1", "privnet.address"),
            (
                "127.0.0.1:15020",
                "0.0.0.0:15020",
                "privnet.forward[0].listen",
            ),
            (
                "10.77.0.10:502",
                "192.168.1.10:502",
                "privnet.forward[0].to",
            ),
            (
                "lease_secs = 600",
                "lease_secs = 5",
                "privnet.dhcp.lease_secs",
            ),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            let error = parse(&text).validate("privnet").expect_err(to);
            assert_eq!(error.field, field, "{to}: {error}");
        }
    }

    #[test]
    fn duplicate_leases_are_refused() {
        let text = format!(
            "{GOOD}\n[[dhcp.static_leases]]\nmac = \"02:00:00:00:00:11\"\nip = \"10.77.0.10\"\n"
        );
        // The forward table must come last in TOML; rebuild with leases first.
        let text = text.replace(
            "[[forward]]\nlisten = \"127.0.0.1:15020\"\nto = \"10.77.0.10:502\"\n",
            "",
        );
        let error = parse(&text).validate("privnet").expect_err("duplicate ip");
        assert_eq!(error.field, "privnet.dhcp.static_leases[1].ip");
    }
}
