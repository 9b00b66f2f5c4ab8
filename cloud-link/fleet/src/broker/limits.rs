//! The broker listener's limits: `[broker]` in fleet.toml, connection slots, fairness.
//!
//! Sans-IO: the accept loop in `mod.rs` asks [`ConnectionSlots`] whether a new
//! connection may start; it reads no clock or socket, so it is unit-tested here. The
//! accept backoff is every listener's (`warden_listeners::AcceptBackoff`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

/// The `[broker]` section of fleet.toml: the broker listener's limits. The defaults
/// are documented in `cloud-link/fleet/README.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Connections open at once (default 16384, the scale target of 10,000 devices per
    /// instance with room); held to the broker's share of the descriptor budget.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections in their TLS handshake or before CONNECT, from all addresses
    /// (default 1024; at most `max_connections`).
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    /// Connections in their TLS handshake or before CONNECT from one address (default
    /// 256; at most `max_pending`): a NAT in front of many devices needs room.
    #[serde(default = "default_max_pending_per_address")]
    pub max_pending_per_address: u32,
    /// Seconds to finish the TLS handshake (default 10).
    #[serde(default = "default_timeout_secs")]
    pub tls_handshake_timeout_secs: u64,
    /// Seconds from the end of the TLS handshake to a complete CONNECT (default 10).
    #[serde(default = "default_timeout_secs")]
    pub connect_timeout_secs: u64,
}

fn default_max_connections() -> u32 {
    16_384
}
fn default_max_pending() -> u32 {
    1_024
}
fn default_max_pending_per_address() -> u32 {
    256
}
fn default_timeout_secs() -> u64 {
    10
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_pending: default_max_pending(),
            max_pending_per_address: default_max_pending_per_address(),
            tls_handshake_timeout_secs: default_timeout_secs(),
            connect_timeout_secs: default_timeout_secs(),
        }
    }
}

/// A `[broker]` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerLimitError {
    /// A limit or timeout of zero: a broker that admits nothing.
    #[error("broker.{field} must be at least 1")]
    Zero {
        /// The key, without `broker.`.
        field: &'static str,
    },
    /// A limit larger than the one it is part of.
    #[error("broker.{field} ({value}) must not exceed broker.{bound} ({bound_value})")]
    Exceeds {
        /// The key, without `broker.`.
        field: &'static str,
        /// Its value.
        value: u32,
        /// The key it must not exceed.
        bound: &'static str,
        /// That key's value.
        bound_value: u32,
    },
}

impl BrokerLimitError {
    /// The config key at fault, as a TOML path.
    pub fn field(&self) -> String {
        let (Self::Zero { field } | Self::Exceeds { field, .. }) = self;
        format!("broker.{field}")
    }
}

impl BrokerConfig {
    /// Refuses limits of zero and pending limits above the ones they are part of.
    pub fn check(&self) -> Result<(), BrokerLimitError> {
        for (field, value) in [
            ("max_connections", u64::from(self.max_connections)),
            ("max_pending", u64::from(self.max_pending)),
            (
                "max_pending_per_address",
                u64::from(self.max_pending_per_address),
            ),
            (
                "tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
            ("connect_timeout_secs", self.connect_timeout_secs),
        ] {
            if value == 0 {
                return Err(BrokerLimitError::Zero { field });
            }
        }
        for (field, value, bound, bound_value) in [
            (
                "max_pending",
                self.max_pending,
                "max_connections",
                self.max_connections,
            ),
            (
                "max_pending_per_address",
                self.max_pending_per_address,
                "max_pending",
                self.max_pending,
            ),
        ] {
            if value > bound_value {
                return Err(BrokerLimitError::Exceeds {
                    field,
                    value,
                    bound,
                    bound_value,
                });
            }
        }
        Ok(())
    }
}

/// The broker's limits, in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Connections open at once, authenticated or not (each holds a descriptor).
    pub max_connections: usize,
    /// Connections still in their TLS handshake or before CONNECT, from all addresses.
    pub max_pending: usize,
    /// Connections still in their TLS handshake or before CONNECT, from one address:
    /// one address cannot take every pending slot.
    pub max_pending_per_address: usize,
    /// Time to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time from the end of the TLS handshake to a complete CONNECT packet.
    pub connect_timeout: Duration,
}

impl BrokerLimits {
    /// From `config`, the connection cap held to the broker's share of `open_files`
    /// descriptors (`None`: unknown, as configured); the pending caps never above it.
    pub fn new(config: &BrokerConfig, open_files: Option<u64>) -> Self {
        let max_connections = crate::descriptors::connection_cap(
            open_files,
            config.max_connections,
            crate::descriptors::BROKER_PERCENT,
        );
        let as_count = |value: u32| usize::try_from(value.max(1)).unwrap_or(usize::MAX);
        let max_pending = config.max_pending.min(max_connections);
        Self {
            max_connections: as_count(max_connections),
            max_pending: as_count(max_pending),
            max_pending_per_address: as_count(config.max_pending_per_address.min(max_pending)),
            tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs.max(1)),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs.max(1)),
        }
    }
}

impl Default for BrokerLimits {
    /// [`BrokerConfig::default`], with no descriptor limit applied.
    fn default() -> Self {
        Self::new(&BrokerConfig::default(), None)
    }
}

/// Why a connection was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotRefused {
    /// [`BrokerLimits::max_connections`] connections are open.
    #[error("{0} connections are open (the broker's limit)")]
    Connections(usize),
    /// [`BrokerLimits::max_pending`] connections are not yet authenticated.
    #[error("{0} connections are in their handshake (the broker's limit)")]
    Pending(usize),
    /// [`BrokerLimits::max_pending_per_address`] connections of this address are not
    /// yet authenticated.
    #[error("{0} connections of this address are in their handshake (the limit per address)")]
    PendingOfAddress(usize),
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    pending: usize,
    pending_by_address: HashMap<IpAddr, usize>,
}

/// Counts open and not-yet-authenticated connections against [`BrokerLimits`].
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    limits: BrokerLimits,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionSlots {
    /// Slots for `limits`.
    pub fn new(limits: BrokerLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A slot for a new connection from `address`, pending until
    /// [`ConnectionSlot::authenticated`]; `Err` when a limit is reached.
    pub fn admit(&self, address: IpAddr) -> Result<ConnectionSlot, SlotRefused> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.open >= self.limits.max_connections {
            return Err(SlotRefused::Connections(counts.open));
        }
        if counts.pending >= self.limits.max_pending {
            return Err(SlotRefused::Pending(counts.pending));
        }
        let of_address = counts
            .pending_by_address
            .get(&address)
            .copied()
            .unwrap_or(0);
        if of_address >= self.limits.max_pending_per_address {
            return Err(SlotRefused::PendingOfAddress(of_address));
        }
        counts.open += 1;
        counts.pending += 1;
        counts.pending_by_address.insert(address, of_address + 1);
        Ok(ConnectionSlot {
            counts: Arc::clone(&self.counts),
            address,
            pending: true,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    /// Connections not yet authenticated now.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
    }
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
    pending: bool,
}

impl ConnectionSlot {
    /// The connection completed CONNECT: it no longer counts as pending.
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            release_pending(&mut counts, self.address);
        }
    }
}

fn release_pending(counts: &mut Counts, address: IpAddr) {
    counts.pending = counts.pending.saturating_sub(1);
    if let Some(of_address) = counts.pending_by_address.get_mut(&address) {
        *of_address = of_address.saturating_sub(1);
        if *of_address == 0 {
            counts.pending_by_address.remove(&address);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.open = counts.open.saturating_sub(1);
        if self.pending {
            release_pending(&mut counts, self.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BrokerLimits {
        BrokerLimits {
            max_connections: 4,
            max_pending: 3,
            max_pending_per_address: 2,
            ..BrokerLimits::default()
        }
    }

    #[test]
    fn one_address_cannot_take_every_pending_slot() {
        let slots = ConnectionSlots::new(limits());
        let attacker: IpAddr = [10, 0, 0, 1].into();
        let device: IpAddr = [10, 0, 0, 2].into();
        let a = slots.admit(attacker).expect("first");
        let _b = slots.admit(attacker).expect("second");
        assert_eq!(
            slots.admit(attacker).err(),
            Some(SlotRefused::PendingOfAddress(2))
        );
        let mut d = slots.admit(device).expect("another address still gets in");
        assert_eq!(slots.admit(device).err(), Some(SlotRefused::Pending(3)));
        // An authenticated connection frees its pending slot, not its open one.
        d.authenticated();
        assert_eq!((slots.open(), slots.pending()), (3, 2));
        let _e = slots.admit(device).expect("pending slot freed");
        assert_eq!(slots.admit(device).err(), Some(SlotRefused::Connections(4)));
        drop(a);
        assert_eq!((slots.open(), slots.pending()), (3, 2));
        drop(d);
        assert_eq!((slots.open(), slots.pending()), (2, 2));
    }

    #[test]
    fn the_connection_cap_follows_the_descriptor_limit() {
        let config = BrokerConfig::default();
        let roomy = BrokerLimits::new(&config, Some(1_048_576));
        assert_eq!(roomy.max_connections, 16_384);
        assert_eq!(roomy.max_pending, 1_024);
        let tight = BrokerLimits::new(&config, Some(1024));
        assert_eq!(tight.max_connections, 576);
        assert_eq!(
            (tight.max_pending, tight.max_pending_per_address),
            (576, 256)
        );
        let starved = BrokerLimits::new(&config, Some(300));
        assert_eq!(
            (
                starved.max_connections,
                starved.max_pending,
                starved.max_pending_per_address
            ),
            (33, 33, 33)
        );
    }

    #[test]
    fn unusable_limits_are_refused_by_name() {
        let zero = BrokerConfig {
            connect_timeout_secs: 0,
            ..BrokerConfig::default()
        };
        let error = zero.check().expect_err("zero");
        assert_eq!(error.field(), "broker.connect_timeout_secs");
        assert_eq!(
            error.to_string(),
            "broker.connect_timeout_secs must be at least 1"
        );
        let inverted = BrokerConfig {
            max_pending_per_address: 2_000,
            ..BrokerConfig::default()
        };
        assert_eq!(
            inverted.check().expect_err("above").to_string(),
            "broker.max_pending_per_address (2000) must not exceed broker.max_pending (1024)"
        );
        assert_eq!(BrokerConfig::default().check(), Ok(()));
    }
}
