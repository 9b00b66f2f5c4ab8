//! The broker listener's limits: connection slots, per-address fairness, accept backoff.
//!
//! Sans-IO: the accept loop in `mod.rs` asks [`ConnectionSlots`] whether a new
//! connection may start and [`AcceptBackoff`] how long to wait after a failed accept;
//! neither reads a clock or a socket, so both are unit-tested here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The broker's limits. The defaults are documented in `cloud-link/README.md`.
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
    /// First wait after a failed accept (doubled per further failure).
    pub accept_backoff_min: Duration,
    /// Longest wait after failed accepts.
    pub accept_backoff_max: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            // The fleet's scale target is 10,000 devices per instance.
            max_connections: 16_384,
            max_pending: 1_024,
            max_pending_per_address: 256,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            accept_backoff_min: Duration::from_millis(10),
            accept_backoff_max: Duration::from_secs(1),
        }
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

/// What to do after a failed accept: wait (doubling), and log the first failure of an
/// episode only. Descriptor exhaustion (`EMFILE`) makes every accept fail at once;
/// retrying without a wait spins a core and logs millions of lines.
#[derive(Debug)]
pub struct AcceptBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u64,
}

impl AcceptBackoff {
    /// Waits between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            failures: 0,
        }
    }

    /// An accept failed: how long to wait, and whether to log it (the first of an
    /// episode).
    pub fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        (wait, self.failures == 1)
    }

    /// An accept succeeded: the number of failures of the episode that ended, if any.
    pub fn succeeded(&mut self) -> Option<u64> {
        self.next = self.min;
        let failures = std::mem::take(&mut self.failures);
        (failures > 0).then_some(failures)
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
    fn accept_failures_back_off_and_log_once_per_episode() {
        let mut backoff = AcceptBackoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let waits: Vec<_> = (0..10).map(|_| backoff.failed()).collect();
        assert_eq!(waits[0], (Duration::from_millis(10), true));
        assert_eq!(waits[1], (Duration::from_millis(20), false));
        assert!(waits[2..].iter().all(|(_, log)| !log));
        assert_eq!(waits[9].0, Duration::from_secs(1));
        assert_eq!(backoff.succeeded(), Some(10));
        assert_eq!(backoff.succeeded(), None);
        assert_eq!(backoff.failed(), (Duration::from_millis(10), true));
    }
}
