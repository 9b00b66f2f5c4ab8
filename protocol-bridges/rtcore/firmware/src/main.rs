//! Warden's real-time core: the Modbus RTU master and the policy evaluator as
//! `no_std` firmware for a Cortex-M4F (QEMU `mps2-an386`).
//!
//! UART0 is the RS-485 bus, UART1 the mailbox to the application core. Two tasks:
//! the mailbox task checks every request against the policy (verified on this core
//! from a signed bundle; deny by default) and queues allowed ones for the bus task,
//! which drives the sans-IO `RtuMaster` with embassy-time. defmt goes out over
//! semihosting. See `protocol-bridges/rtcore/README.md`.

#![no_std]
#![no_main]

mod bus;
mod cmsdk_uart;
mod core_policy;
mod counters;
mod mailbox;
mod stack;
mod systick_time;

use core::sync::atomic::{AtomicBool, Ordering};
use cortex_m_rt::exception;
use defmt_semihosting as _;

use embassy_executor::raw;

use crate::bus::BUS_RX_QUEUE;
use crate::cmsdk_uart::Uart;
use crate::mailbox::MAILBOX_RX_QUEUE;

/// The RS-485 line (first `-serial` of QEMU).
static BUS_UART: Uart<BUS_RX_QUEUE> = Uart::board(0);
/// The mailbox to the application core (second `-serial`).
static MAILBOX_UART: Uart<MAILBOX_RX_QUEUE> = Uart::board(1);

/// Mailbox speed; a pseudo-terminal or unix socket in QEMU ignores it.
const MAILBOX_BAUD: u32 = 921_600;
/// Bus speed until the application configures the line.
const DEFAULT_BUS_BAUD: u32 = 19_200;

/// Set by the executor's pender when a task was woken.
static WOKEN: AtomicBool = AtomicBool::new(false);

#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WOKEN.store(true, Ordering::Release);
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        defmt::panic!("core peripherals taken twice");
    };
    systick_time::start(peripherals.SYST);
    BUS_UART.start(DEFAULT_BUS_BAUD);
    MAILBOX_UART.start(MAILBOX_BAUD);
    defmt::info!("warden real-time core up");
    let Some(executor) =
        cortex_m::singleton!(: raw::Executor = raw::Executor::new(core::ptr::null_mut()))
    else {
        defmt::panic!("executor created twice");
    };
    let executor: &'static raw::Executor = executor;
    let spawner = executor.spawner();
    match (bus_task(), mailbox_task()) {
        (Ok(bus), Ok(mailbox)) => {
            spawner.spawn(bus);
            spawner.spawn(mailbox);
        }
        _ => defmt::panic!("tasks spawned twice"),
    }
    loop {
        WOKEN.store(false, Ordering::Release);
        // SAFETY: `poll` is only ever called here, from thread mode, never
        // re-entrantly (no interrupt handler polls the executor).
        unsafe { executor.poll() };
        // Sleep until an interrupt unless a task was woken meanwhile. With interrupts
        // masked, a wake-up from a handler cannot slip between the check and WFI: a
        // pending interrupt ends WFI at once, then runs when the mask lifts.
        cortex_m::interrupt::free(|_| {
            if !WOKEN.load(Ordering::Acquire) {
                cortex_m::asm::wfi();
            }
        });
    }
}

#[embassy_executor::task]
async fn mailbox_task() {
    mailbox::run(&MAILBOX_UART).await;
}

#[embassy_executor::task]
async fn bus_task() {
    bus::run(&BUS_UART).await;
}

#[exception]
unsafe fn DefaultHandler(irq: i16) {
    if BUS_UART.owns(irq) {
        BUS_UART.on_interrupt();
    } else if MAILBOX_UART.owns(irq) {
        MAILBOX_UART.on_interrupt();
    }
}

#[exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {:#010x}", frame.pc());
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

defmt::timestamp!("{=u64:us}", embassy_time::Instant::now().as_micros());
