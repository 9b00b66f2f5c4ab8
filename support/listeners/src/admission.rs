//! Connection caps with per-address fairness: who gets a slot, and who gives one up.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A connection idle (answered, nothing since) for this long may give its slot to a
/// newcomer when the gate is full: a browser reopens a closed keep-alive connection
/// without the operator noticing.
pub const IDLE_YIELDS_AFTER: Duration = Duration::from_secs(2);

/// A connection awaiting an answer (new, or its request unanswered) moves no byte for
/// this long before it may give its slot to a newcomer: one opened a moment ago, or a
/// facade request waiting on a slow RTU unit, keeps its slot; a silent or slowloris
/// client gives it up after this grace.
pub const UNANSWERED_YIELDS_AFTER: Duration = Duration::from_secs(1);

/// How many connections a listener holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All addresses together.
    pub total: usize,
    /// One client address.
    pub per_address: usize,
}

/// No slot for a newcomer: every connection holding one is busy being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The newcomer's address holds its whole share.
    #[error("the client's address holds its whole share of connections, all busy")]
    AddressFull,
    /// The listener holds its whole cap.
    #[error("the listener holds its whole cap of connections, all busy")]
    Full,
}

/// What a connection reports about itself, read by the gate when it picks whom to evict.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Milliseconds since the gate's epoch of the last byte read or written.
    last_progress_ms: AtomicU64,
    /// A request has arrived (or the connection is new) and was not answered yet.
    awaiting_answer: AtomicBool,
    epoch: Instant,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            last_progress_ms: AtomicU64::new(millis_since(epoch, Instant::now())),
            awaiting_answer: AtomicBool::new(true),
            epoch,
        }
    }

    /// Bytes moved at `now`; `answered` when they were written (an answer).
    pub(crate) fn progressed(&self, now: Instant, answered: bool) {
        self.last_progress_ms
            .store(millis_since(self.epoch, now), Ordering::Relaxed);
        self.awaiting_answer.store(!answered, Ordering::Relaxed);
    }

    pub(crate) fn last_progress(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed))
    }

    fn yields(&self, now: Instant) -> bool {
        let quiet = now.saturating_duration_since(self.last_progress());
        let grace = if self.awaiting_answer.load(Ordering::Relaxed) {
            UNANSWERED_YIELDS_AFTER
        } else {
            IDLE_YIELDS_AFTER
        };
        quiet >= grace
    }
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Entry {
    address: IpAddr,
    evict: CancellationToken,
    activity: Arc<Activity>,
}

#[derive(Debug, Default)]
struct GateState {
    next_id: u64,
    /// By admission order: the smallest id is the oldest.
    entries: BTreeMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
    evicted: u64,
}

impl GateState {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&entry.address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&entry.address);
            }
        }
        Some(entry)
    }

    /// The oldest connection that may yield its slot, among those `eligible` allows,
    /// preferring the address holding the most slots.
    fn victim(&self, now: Instant, eligible: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, entry)| eligible(entry) && entry.activity.yields(now))
            .max_by_key(|(id, entry)| {
                let held = self.per_address.get(&entry.address).copied().unwrap_or(0);
                (held, std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }

    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.evict.cancel();
            self.evicted += 1;
        }
    }
}

/// The slots of one listener. Cheap to clone; clones share the slots.
#[derive(Debug, Clone)]
pub struct AdmissionGate {
    state: Arc<Mutex<GateState>>,
    limits: Limits,
    epoch: Instant,
}

impl AdmissionGate {
    /// A gate holding at most `limits` connections (each limit at least 1).
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Arc::default(),
            limits: Limits {
                total: limits.total.max(1),
                per_address: limits.per_address.max(1),
            },
            epoch: Instant::now(),
        }
    }

    /// The gate's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for a connection from `address`, evicting an unanswered connection
    /// quiet for [`UNANSWERED_YIELDS_AFTER`] or an idle one quiet for
    /// [`IDLE_YIELDS_AFTER`] (its address's oldest first, else one of the address
    /// holding the most slots) when the gate is full.
    pub fn admit(&self, address: IpAddr) -> Result<Admission, Refused> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let held = state.per_address.get(&address).copied().unwrap_or(0);
        if held >= self.limits.per_address {
            let victim = state
                .victim(now, |entry| entry.address == address)
                .ok_or(Refused::AddressFull)?;
            state.evict(victim);
        }
        if state.entries.len() >= self.limits.total {
            let victim = state.victim(now, |_| true).ok_or(Refused::Full)?;
            state.evict(victim);
        }
        let id = state.next_id;
        state.next_id += 1;
        let evict = CancellationToken::new();
        let activity = Arc::new(Activity::new(self.epoch));
        state.entries.insert(
            id,
            Entry {
                address,
                evict: evict.clone(),
                activity: Arc::clone(&activity),
            },
        );
        *state.per_address.entry(address).or_insert(0) += 1;
        Ok(Admission {
            state: Arc::clone(&self.state),
            id,
            evict,
            activity,
        })
    }

    /// Connections holding a slot now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// Whether no connection holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted for newcomers since the gate was made.
    pub fn evicted(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evicted
    }
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Admission {
    state: Arc<Mutex<GateState>>,
    id: u64,
    evict: CancellationToken,
    activity: Arc<Activity>,
}

impl Admission {
    /// Completes when the gate gave this slot to a newcomer: close the connection.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.evict.clone().cancelled_owned()
    }

    /// Whether the gate gave this slot to a newcomer.
    pub fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_give_their_slots_to_a_newcomer() {
        let gate = AdmissionGate::new(Limits {
            total: 32,
            per_address: 32,
        });
        let silent: Vec<_> = (0..32)
            .map(|_| gate.admit(address(2)).expect("room"))
            .collect();
        // Just opened, they keep their slots: a client gets time to speak.
        assert_eq!(gate.admit(address(1)).err(), Some(Refused::Full));
        tokio::time::advance(UNANSWERED_YIELDS_AFTER).await;
        let operator = gate.admit(address(1)).expect("a silent connection yields");
        assert!(silent[0].is_evicted(), "the oldest silent one went");
        assert!(!silent[1].is_evicted());
        assert_eq!(gate.len(), 32);
        assert!(!operator.is_evicted());
        drop(silent);
        assert_eq!(gate.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_gate_refuses_and_an_address_has_its_share() {
        let gate = AdmissionGate::new(Limits {
            total: 4,
            per_address: 2,
        });
        let answered: Vec<_> = (1..=2)
            .flat_map(|last| [gate.admit(address(last)), gate.admit(address(last))])
            .map(|admitted| admitted.expect("room"))
            .collect();
        for admission in &answered {
            admission.activity().progressed(Instant::now(), true);
        }
        assert_eq!(gate.admit(address(3)).err(), Some(Refused::Full));
        assert_eq!(gate.admit(address(1)).err(), Some(Refused::AddressFull));
        // Idle long enough, an answered connection yields too: the address holding
        // the most slots gives first.
        tokio::time::advance(IDLE_YIELDS_AFTER).await;
        let newcomer = gate.admit(address(3)).expect("an idle one yields");
        assert!(answered[0].is_evicted());
        assert_eq!(gate.evicted(), 1);
        drop(newcomer);
    }

    #[tokio::test(start_paused = true)]
    async fn the_address_holding_most_slots_yields_first() {
        let gate = AdmissionGate::new(Limits {
            total: 4,
            per_address: 4,
        });
        let operator = gate.admit(address(1)).expect("room");
        let flood: Vec<_> = (0..3)
            .map(|_| gate.admit(address(9)).expect("room"))
            .collect();
        tokio::time::advance(UNANSWERED_YIELDS_AFTER).await;
        let _next = gate.admit(address(5)).expect("a flood connection yields");
        assert!(!operator.is_evicted());
        assert!(flood[0].is_evicted());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_keeps_its_slot_while_bytes_move_within_the_grace() {
        let gate = AdmissionGate::new(Limits {
            total: 1,
            per_address: 1,
        });
        let waiting = gate.admit(address(1)).expect("room");
        // A request read: unanswered (a slow RTU unit behind the facade).
        tokio::time::advance(Duration::from_millis(900)).await;
        waiting.activity().progressed(Instant::now(), false);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(gate.admit(address(2)).err(), Some(Refused::Full));
        assert!(!waiting.is_evicted());
        tokio::time::advance(Duration::from_millis(100)).await;
        let _newcomer = gate
            .admit(address(2))
            .expect("quiet past the grace: it yields");
        assert!(waiting.is_evicted());
    }
}
