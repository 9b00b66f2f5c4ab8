//! The embassy-time driver: SysTick on the 25 MHz core clock, microsecond ticks.
//!
//! SysTick interrupts every [`TICK_US`] microseconds; the handler advances the base
//! time and wakes expired timers. `now()` adds the counter's progress inside the
//! current period, so timestamps have microsecond resolution while wake-ups happen
//! on the next tick (at most [`TICK_US`] late).

use core::cell::RefCell;
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_queue_utils::Queue;

/// Core clock of the mps2-an386 board (QEMU models the FPGA's 25 MHz).
pub const CORE_CLOCK_HZ: u32 = 25_000_000;
/// SysTick period in microseconds: the resolution of timer wake-ups.
pub const TICK_US: u32 = 250;
const CYCLES_PER_US: u32 = CORE_CLOCK_HZ / 1_000_000;
const RELOAD: u32 = TICK_US * CYCLES_PER_US - 1;

struct State {
    base_us: u64,
    queue: Queue,
}

/// The driver registered with embassy-time.
pub struct SysTickDriver {
    state: Mutex<RefCell<State>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    state: Mutex::new(RefCell::new(State { base_us: 0, queue: Queue::new() })),
});

/// Starts SysTick; call once before anything reads the time.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| {
            let base = self.state.borrow_ref(cs).base_us;
            // A wrap whose interrupt has not run yet (we are in a critical section)
            // shows as a pending SysTick: count its period.
            let pending_before = SCB::is_pendst_pending();
            let mut current = SYST::get_current();
            let pending = SCB::is_pendst_pending();
            if pending && !pending_before {
                current = SYST::get_current();
            }
            let wrapped = if pending { u64::from(TICK_US) } else { 0 };
            base + wrapped + u64::from((RELOAD - current.min(RELOAD)) / CYCLES_PER_US)
        })
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            self.state.borrow_ref_mut(cs).queue.schedule_wake(at, waker);
        });
    }
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let mut state = DRIVER.state.borrow_ref_mut(cs);
        state.base_us += u64::from(TICK_US);
        let now = state.base_us;
        // Wakes every timer due by now; later ones are checked at the next tick.
        let _next = state.queue.next_expiration(now);
    });
}
