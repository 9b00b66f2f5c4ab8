//! The core's counters since boot, shared by the bus and mailbox tasks.

use core::cell::Cell;

use critical_section::Mutex;
use warden_modbus::rtu::MasterCounters;
use warden_rtcore_mailbox::CoreCounters;

static COUNTERS: Mutex<Cell<CoreCounters>> = Mutex::new(Cell::new(CoreCounters {
    requests: 0,
    responses: 0,
    timeouts: 0,
    corrupted: 0,
    retries: 0,
    crc_errors: 0,
    noise_bytes: 0,
    unexpected_frames: 0,
    denied: 0,
    bundles_refused: 0,
    mailbox_errors: 0,
    stack_used: 0,
}));

fn update(change: impl FnOnce(&mut CoreCounters)) {
    critical_section::with(|cs| {
        let cell = COUNTERS.borrow(cs);
        let mut counters = cell.get();
        change(&mut counters);
        cell.set(counters);
    });
}

/// The counters now, with the stack's high-water mark.
pub fn snapshot() -> CoreCounters {
    let mut counters = critical_section::with(|cs| COUNTERS.borrow(cs).get());
    counters.stack_used = crate::stack::high_water_bytes();
    counters
}

/// Copies the master's own counters (it counts since boot too); bytes the bus UART
/// had to drop (`uart_dropped`) count as noise.
pub fn record_master(master: MasterCounters, uart_dropped: u32) {
    update(|c| {
        c.requests = master.requests;
        c.responses = master.responses;
        c.timeouts = master.timeouts;
        c.corrupted = master.corrupted;
        c.unexpected_frames = master.unexpected_frames;
        c.crc_errors = master.framer.crc_errors;
        c.noise_bytes = master.framer.noise_bytes.saturating_add(uart_dropped);
    });
}

/// One retry.
pub fn record_retry() {
    update(|c| c.retries = c.retries.saturating_add(1));
}

/// One request refused by policy.
pub fn record_denied() {
    update(|c| c.denied = c.denied.saturating_add(1));
}

/// One bundle refused.
pub fn record_bundle_refused() {
    update(|c| c.bundles_refused = c.bundles_refused.saturating_add(1));
}

/// One mailbox frame dropped.
pub fn record_mailbox_error() {
    update(|c| c.mailbox_errors = c.mailbox_errors.saturating_add(1));
}
