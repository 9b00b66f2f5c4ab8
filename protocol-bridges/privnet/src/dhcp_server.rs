//! A sans-IO DHCP server with static leases by MAC (smoltcp's DHCP wire types).
//!
//! Only equipment the integrator listed gets an address: a DISCOVER from an unknown
//! MAC is not answered (and counted), a REQUEST for another address is refused with a
//! NAK. Leases carry the subnet mask, the lease time and, when SNTP is on, option 42
//! (NTP servers) pointing at the appliance; no router and no DNS are given, so the
//! equipment has no way off the private network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
};

/// DHCP option 42: NTP servers.
const OPTION_NTP_SERVERS: u8 = 42;
/// Largest reply we emit (a BOOTP packet plus our few options).
pub const MAX_REPLY_LEN: usize = 576;

/// One piece of equipment and the address it always gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticLease {
    /// Its Ethernet address.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// A name for people and logs.
    pub name: String,
}

/// What the server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpServerConfig {
    /// The appliance's address on the private network (server identifier).
    pub server_ip: Ipv4Addr,
    /// Prefix length of the private network.
    pub prefix_len: u8,
    /// Lease duration in seconds.
    pub lease_secs: u32,
    /// Advertise the appliance as NTP server (option 42).
    pub offer_ntp: bool,
    /// The equipment.
    pub leases: Vec<StaticLease>,
}

/// Counters, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpCounters {
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent (leases granted or renewed).
    pub acks: u64,
    /// NAKs sent (a request for an address that is not the client's).
    pub naks: u64,
    /// Messages from MACs that have no lease (not answered).
    pub unknown_clients: u64,
    /// Packets that were not DHCP or were malformed.
    pub malformed: u64,
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The encoded BOOTP/DHCP packet.
    pub bytes: Vec<u8>,
    /// The lease it concerns.
    pub lease: StaticLease,
    /// OFFER, ACK or NAK.
    pub message_type: DhcpMessageType,
}

/// The server state: configuration and counters (leases are static, so there is no
/// binding table to lose on restart).
#[derive(Debug, Clone)]
pub struct DhcpServer {
    config: DhcpServerConfig,
    by_mac: BTreeMap<[u8; 6], StaticLease>,
    counters: DhcpCounters,
}

impl DhcpServer {
    /// A server for `config`.
    pub fn new(config: DhcpServerConfig) -> Self {
        let by_mac = config
            .leases
            .iter()
            .map(|lease| (lease.mac, lease.clone()))
            .collect();
        Self {
            config,
            by_mac,
            counters: DhcpCounters::default(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> DhcpCounters {
        self.counters
    }

    /// Handles one datagram received on port 67; returns the reply to broadcast to
    /// port 68, if any.
    pub fn handle(&mut self, datagram: &[u8]) -> Option<DhcpReply> {
        let Ok(packet) = DhcpPacket::new_checked(datagram) else {
            self.counters.malformed += 1;
            return None;
        };
        let Ok(request) = DhcpRepr::parse(&packet) else {
            self.counters.malformed += 1;
            return None;
        };
        let mac = request.client_hardware_address.0;
        let Some(lease) = self.by_mac.get(&mac).cloned() else {
            self.counters.unknown_clients += 1;
            return None;
        };
        let lease_ip = Ipv4Address::from(lease.ip.octets());
        let message_type = match request.message_type {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => {
                // A REQUEST for another server's offer is none of our business.
                if request
                    .server_identifier
                    .is_some_and(|id| id != Ipv4Address::from(self.config.server_ip.octets()))
                {
                    return None;
                }
                let asked = request.requested_ip.unwrap_or(request.client_ip);
                if asked == lease_ip {
                    DhcpMessageType::Ack
                } else {
                    DhcpMessageType::Nak
                }
            }
            // Decline, release and inform change nothing for a static lease.
            _ => return None,
        };
        let bytes = self.encode(&request, lease_ip, message_type)?;
        match message_type {
            DhcpMessageType::Offer => self.counters.offers += 1,
            DhcpMessageType::Ack => self.counters.acks += 1,
            _ => self.counters.naks += 1,
        }
        Some(DhcpReply {
            bytes,
            lease,
            message_type,
        })
    }

    fn encode(
        &mut self,
        request: &DhcpRepr<'_>,
        lease_ip: Ipv4Address,
        message_type: DhcpMessageType,
    ) -> Option<Vec<u8>> {
        let nak = message_type == DhcpMessageType::Nak;
        let server = self.config.server_ip.octets();
        let ntp = [DhcpOption {
            kind: OPTION_NTP_SERVERS,
            data: &server,
        }];
        let mask = prefix_mask(self.config.prefix_len);
        let reply = DhcpRepr {
            message_type,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: if nak {
                Ipv4Address::UNSPECIFIED
            } else {
                lease_ip
            },
            server_ip: Ipv4Address::from(server),
            router: None,
            subnet_mask: (!nak).then_some(Ipv4Address::from(mask.octets())),
            relay_agent_ip: request.relay_agent_ip,
            broadcast: true,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(Ipv4Address::from(server)),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (!nak).then_some(self.config.lease_secs),
            renew_duration: (!nak).then_some(self.config.lease_secs / 2),
            rebind_duration: (!nak).then_some(self.config.lease_secs / 8 * 7),
            additional_options: if self.config.offer_ntp && !nak {
                &ntp
            } else {
                &[]
            },
        };
        let mut bytes = vec![0u8; reply.buffer_len()];
        let mut packet = DhcpPacket::new_unchecked(&mut bytes[..]);
        if reply.emit(&mut packet).is_err() {
            self.counters.malformed += 1;
            return None;
        }
        Some(bytes)
    }
}

/// The netmask of a prefix length (`24` → `255.255.255.0`).
pub fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// Formats a MAC as `02:00:00:00:00:10`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|byte| hex::encode([byte])).join(":")
}

/// The client MAC of a DHCP message, for tests and logs.
pub fn client_mac(datagram: &[u8]) -> Option<EthernetAddress> {
    let packet = DhcpPacket::new_checked(datagram).ok()?;
    Some(packet.client_hardware_address())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EQUIPMENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
    const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

    fn server() -> DhcpServer {
        DhcpServer::new(DhcpServerConfig {
            server_ip: Ipv4Addr::new(10, 77, 0, 1),
            prefix_len: 24,
            lease_secs: 3600,
            offer_ntp: true,
            leases: vec![StaticLease {
                mac: EQUIPMENT,
                ip: Ipv4Addr::new(10, 77, 0, 10),
                name: "press-7".into(),
            }],
        })
    }

    fn client_message(
        message_type: DhcpMessageType,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: EthernetAddress(mac),
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: Ipv4Address::UNSPECIFIED,
            server_ip: Ipv4Address::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested.map(|ip| Ipv4Address::from(ip.octets())),
            client_identifier: Some(EthernetAddress(mac)),
            server_identifier: requested.map(|_| Ipv4Address::new(10, 77, 0, 1)),
            parameter_request_list: Some(&[1, 3, 6, 42]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut bytes[..]))
            .expect("emits");
        bytes
    }

    fn parse(bytes: &[u8]) -> DhcpRepr<'_> {
        // Leaked for the test's lifetime only: DhcpRepr borrows the packet.
        let packet = Box::leak(Box::new(DhcpPacket::new_checked(bytes).expect("packet")));
        DhcpRepr::parse(packet).expect("repr")
    }

    #[test]
    fn discover_then_request_gets_the_static_lease() {
        let mut server = server();
        let offer = server
            .handle(&client_message(DhcpMessageType::Discover, EQUIPMENT, None))
            .expect("offer");
        let repr = parse(&offer.bytes);
        assert_eq!(repr.message_type, DhcpMessageType::Offer);
        assert_eq!(repr.your_ip, Ipv4Address::new(10, 77, 0, 10));
        assert_eq!(repr.subnet_mask, Some(Ipv4Address::new(255, 255, 255, 0)));
        assert_eq!(repr.router, None);
        assert_eq!(repr.lease_duration, Some(3600));
        assert_eq!(repr.transaction_id, 0x1234_5678);

        let ack = server
            .handle(&client_message(
                DhcpMessageType::Request,
                EQUIPMENT,
                Some(Ipv4Addr::new(10, 77, 0, 10)),
            ))
            .expect("ack");
        assert_eq!(parse(&ack.bytes).message_type, DhcpMessageType::Ack);
        assert_eq!(ack.lease.name, "press-7");
        assert_eq!(server.counters().acks, 1);
    }

    #[test]
    fn strangers_get_nothing_and_wrong_requests_get_a_nak() {
        let mut server = server();
        assert!(
            server
                .handle(&client_message(DhcpMessageType::Discover, STRANGER, None))
                .is_none()
        );
        assert_eq!(server.counters().unknown_clients, 1);
        let nak = server
            .handle(&client_message(
                DhcpMessageType::Request,
                EQUIPMENT,
                Some(Ipv4Addr::new(10, 77, 0, 99)),
            ))
            .expect("nak");
        let repr = parse(&nak.bytes);
        assert_eq!(repr.message_type, DhcpMessageType::Nak);
        assert_eq!(repr.your_ip, Ipv4Address::UNSPECIFIED);
        assert!(server.handle(b"not dhcp at all").is_none());
        assert_eq!(server.counters().malformed, 1);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::new(255, 255, 255, 255));
    }
}
