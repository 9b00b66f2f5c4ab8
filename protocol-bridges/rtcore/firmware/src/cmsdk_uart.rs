//! The CMSDK APB UART of the mps2-an386 board: receive by interrupt into a bounded
//! queue (each byte stamped with the microsecond it arrived), transmit by waiting
//! for the holding register to empty.
//!
//! The only `unsafe` is turning the documented register address into a reference
//! and unmasking the interrupts; every register access goes through `VolatileCell`.

use core::cell::RefCell;
use core::future::poll_fn;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Poll;

use critical_section::Mutex;
use embassy_sync::waitqueue::AtomicWaker;
use heapless::Deque;
use vcell::VolatileCell;

use crate::systick_time::CORE_CLOCK_HZ;

/// The UART's registers (ARM CMSDK APB UART, DDI 0479).
#[repr(C)]
struct Registers {
    data: VolatileCell<u32>,
    state: VolatileCell<u32>,
    ctrl: VolatileCell<u32>,
    int_status_clear: VolatileCell<u32>,
    baud_div: VolatileCell<u32>,
}

const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const STATE_RX_OVERRUN: u32 = 1 << 3;
const CTRL_TX_ENABLE: u32 = 1 << 0;
const CTRL_RX_ENABLE: u32 = 1 << 1;
const CTRL_TX_INTERRUPT: u32 = 1 << 2;
const CTRL_RX_INTERRUPT: u32 = 1 << 3;
const INT_TX: u32 = 1 << 0;
const INT_RX: u32 = 1 << 1;

/// A byte and the low 32 bits of the microsecond it was taken from the UART.
#[derive(Clone, Copy)]
pub struct Received {
    /// The byte.
    pub byte: u8,
    /// `embassy_time::Instant::now().as_micros() as u32` at reception.
    pub at_us_low: u32,
}

/// One UART: its base address, interrupt numbers and receive queue.
pub struct Uart<const N: usize> {
    base: usize,
    rx_interrupt: u16,
    tx_interrupt: u16,
    rx: Mutex<RefCell<Deque<Received, N>>>,
    rx_waker: AtomicWaker,
    tx_waker: AtomicWaker,
    dropped: AtomicU32,
}

/// An interrupt number of the board, for the NVIC.
#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: the numbers come from the board's interrupt map (UART0..4 RX/TX are 0..=9
// on mps2-an386) and are valid NVIC lines.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

impl<const N: usize> Uart<N> {
    /// UART `index` (0..=3) of the board: base 0x4000_4000 + index × 0x1000,
    /// receive interrupt 2 × index, transmit interrupt 2 × index + 1.
    pub const fn board(index: u16) -> Self {
        Self {
            base: 0x4000_4000 + index as usize * 0x1000,
            rx_interrupt: 2 * index,
            tx_interrupt: 2 * index + 1,
            rx: Mutex::new(RefCell::new(Deque::new())),
            rx_waker: AtomicWaker::new(),
            tx_waker: AtomicWaker::new(),
            dropped: AtomicU32::new(0),
        }
    }

    fn registers(&self) -> &'static Registers {
        // SAFETY: `base` is one of the board's UART register blocks (fixed MMIO,
        // always mapped, 20 bytes, 4-byte aligned); `Registers` is `repr(C)` of
        // `VolatileCell`s, so every access through the reference is a volatile
        // access to device memory, which the compiler never assumes it owns.
        unsafe { &*(self.base as *const Registers) }
    }

    /// Sets the baud divisor and enables transmit, receive and both interrupts.
    pub fn start(&self, baud: u32) {
        let registers = self.registers();
        self.set_baud(baud);
        registers
            .ctrl
            .set(CTRL_TX_ENABLE | CTRL_RX_ENABLE | CTRL_TX_INTERRUPT | CTRL_RX_INTERRUPT);
        for irq in [self.rx_interrupt, self.tx_interrupt] {
            // SAFETY: the handlers for these lines (`on_interrupt`, called from the
            // default handler) only touch this UART's queue under a critical
            // section and atomics, so unmasking cannot break a critical section.
            unsafe { cortex_m::peripheral::NVIC::unmask(Irq(irq)) };
        }
    }

    /// Changes the baud divisor (the line format of this UART is fixed at 8N1).
    pub fn set_baud(&self, baud: u32) {
        // The divisor must be at least 16.
        let divisor = (CORE_CLOCK_HZ / baud.max(1)).max(16);
        self.registers().baud_div.set(divisor);
    }

    /// True if `irq` is one of this UART's lines.
    pub fn owns(&self, irq: i16) -> bool {
        irq == self.rx_interrupt as i16 || irq == self.tx_interrupt as i16
    }

    /// Interrupt handler: drains the receive register into the queue, wakes readers
    /// and writers, clears the interrupt.
    pub fn on_interrupt(&self) {
        let registers = self.registers();
        let status = registers.int_status_clear.get();
        registers.int_status_clear.set(status & (INT_TX | INT_RX));
        let at_us_low = embassy_time::Instant::now().as_micros() as u32;
        while registers.state.get() & STATE_RX_FULL != 0 {
            let byte = registers.data.get() as u8;
            let pushed = critical_section::with(|cs| {
                self.rx
                    .borrow_ref_mut(cs)
                    .push_back(Received { byte, at_us_low })
                    .is_ok()
            });
            if !pushed {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if registers.state.get() & STATE_RX_OVERRUN != 0 {
            registers.state.set(STATE_RX_OVERRUN);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if status & INT_RX != 0 {
            self.rx_waker.wake();
        }
        if status & INT_TX != 0 {
            self.tx_waker.wake();
        }
    }

    /// Bytes lost because the queue was full or the receiver overran.
    pub fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The next received byte, if one is queued.
    pub fn try_read(&self) -> Option<Received> {
        critical_section::with(|cs| self.rx.borrow_ref_mut(cs).pop_front())
    }

    /// Waits for the next received byte.
    pub async fn read(&self) -> Received {
        poll_fn(|cx| {
            self.rx_waker.register(cx.waker());
            match self.try_read() {
                Some(received) => Poll::Ready(received),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Writes `bytes`, each as soon as the transmit holding register is free.
    pub async fn write_all(&self, bytes: &[u8]) {
        let registers = self.registers();
        for &byte in bytes {
            poll_fn(|cx| {
                self.tx_waker.register(cx.waker());
                if registers.state.get() & STATE_TX_FULL == 0 {
                    registers.data.set(u32::from(byte));
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}
