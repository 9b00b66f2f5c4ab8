//! The bus task: owns the RS-485 UART and drives the sans-IO `RtuMaster` with
//! embassy-time, one transaction at a time, retrying timeouts and garbled answers.

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_time::{Instant, Timer};
use warden_modbus::MAX_PDU_LEN;
use warden_modbus::pdu::Request;
use warden_modbus::rtu::{CharTiming, MAX_ADU_LEN, MasterEvent, RtuMaster};
use warden_rtcore_mailbox::{LineSettings, Parity};

use crate::cmsdk_uart::{Received, Uart};
use crate::counters;

/// Bytes the bus UART can queue between two reads of the task.
pub const BUS_RX_QUEUE: usize = 256;

/// A request the policy allowed, for the bus.
pub struct Job {
    /// Echoed in the outcome.
    pub id: u32,
    /// Modbus unit (0: broadcast).
    pub unit: u8,
    /// The request.
    pub request: Request,
}

/// What the mailbox asks of the bus.
// Held inline in a fixed-size channel (no heap on the core): the slots are sized for
// the largest variant either way.
#[allow(clippy::large_enum_variant)]
pub enum BusCommand {
    /// Apply line settings (once per boot, before any job).
    Configure(LineSettings),
    /// Run one transaction.
    Transact(Job),
}

/// How a job ended on the line.
// Held inline in a fixed-size channel (no heap on the core): the slots are sized for
// the largest variant either way.
#[allow(clippy::large_enum_variant)]
pub enum BusOutcome {
    /// The response PDU (normal or exception).
    Response(heapless::Vec<u8, MAX_PDU_LEN>),
    /// A broadcast left the line.
    BroadcastSent,
    /// No answer after every attempt.
    Timeout,
    /// Only garbled answers after every attempt.
    Corrupted,
}

/// The mailbox's requests to the bus.
pub static COMMANDS: Channel<CriticalSectionRawMutex, BusCommand, 4> = Channel::new();
/// The bus's results, by job id.
pub static RESULTS: Channel<CriticalSectionRawMutex, (u32, BusOutcome), 4> = Channel::new();

fn now_us() -> u64 {
    Instant::now().as_micros()
}

/// The full timestamp of a byte stamped with the low 32 bits of the microsecond clock.
fn widen(received: Received) -> u64 {
    let now = now_us();
    now - u64::from((now as u32).wrapping_sub(received.at_us_low))
}

/// Serves the bus until the end of time.
pub async fn run(uart: &'static Uart<BUS_RX_QUEUE>) -> ! {
    let mut line: Option<(RtuMaster, u8)> = None;
    loop {
        match COMMANDS.receive().await {
            BusCommand::Configure(settings) => {
                uart.set_baud(settings.baud);
                let timing = CharTiming::for_line(
                    settings.baud,
                    CharTiming::bits_per_char(settings.parity != Parity::None, settings.stop_bits),
                );
                defmt::info!(
                    "bus: {} baud, char {} us, t1.5 {} us, t3.5 {} us, timeout {} ms, {} retries",
                    settings.baud,
                    timing.char_us,
                    timing.t1_5_us,
                    timing.t3_5_us,
                    settings.response_timeout_ms,
                    settings.retries
                );
                let master = RtuMaster::new(timing, u64::from(settings.response_timeout_ms) * 1000);
                line = Some((master, settings.retries));
            }
            BusCommand::Transact(job) => {
                // The mailbox only queues jobs after the line is configured.
                let Some((master, retries)) = line.as_mut() else {
                    RESULTS.send((job.id, BusOutcome::Timeout)).await;
                    continue;
                };
                let outcome = transact(uart, master, *retries, &job).await;
                counters::record_master(master.counters(), uart.dropped());
                RESULTS.send((job.id, outcome)).await;
            }
        }
    }
}

async fn transact(
    uart: &Uart<BUS_RX_QUEUE>,
    master: &mut RtuMaster,
    retries: u8,
    job: &Job,
) -> BusOutcome {
    let mut tx = [0u8; MAX_ADU_LEN];
    let mut attempt = 0u8;
    loop {
        // Wait for 3.5 characters of silence; bytes that arrive meanwhile (late
        // answers, noise) go to the master and push the moment back.
        let len = loop {
            while let Some(received) = uart.try_read() {
                let _ = master.receive(&[received.byte], widen(received));
            }
            let ready = master.ready_at();
            if now_us() < ready {
                Timer::at(Instant::from_micros(ready)).await;
                continue;
            }
            match master.start(job.unit, &job.request, now_us(), &mut tx) {
                Ok(len) => break len,
                Err(warden_modbus::rtu::MasterError::LineNotIdle { .. }) => continue,
                Err(_) => return BusOutcome::Corrupted,
            }
        };
        uart.write_all(&tx[..len]).await;
        if job.unit == 0 {
            return BusOutcome::BroadcastSent;
        }
        let event = loop {
            // The master always has a deadline while a transaction is open.
            let deadline = master.next_deadline().unwrap_or_else(now_us);
            match select(uart.read(), Timer::at(Instant::from_micros(deadline))).await {
                Either::First(received) => {
                    if let Some(event) = master.receive(&[received.byte], widen(received)) {
                        break event;
                    }
                }
                Either::Second(()) => {
                    // A byte already queued is not silence: feed it first.
                    if let Some(received) = uart.try_read() {
                        if let Some(event) = master.receive(&[received.byte], widen(received)) {
                            break event;
                        }
                        continue;
                    }
                    if let Some(event) = master.poll(now_us()) {
                        break event;
                    }
                }
            }
        };
        let failed = match event {
            MasterEvent::Response(frame) => {
                let mut pdu = heapless::Vec::new();
                // A frame's PDU is at most 253 bytes: it always fits.
                let _ = pdu.extend_from_slice(frame.pdu());
                return BusOutcome::Response(pdu);
            }
            MasterEvent::BroadcastSent => return BusOutcome::BroadcastSent,
            MasterEvent::Timeout => BusOutcome::Timeout,
            MasterEvent::Corrupted => BusOutcome::Corrupted,
        };
        if attempt >= retries {
            return failed;
        }
        attempt += 1;
        counters::record_retry();
        defmt::debug!("unit {}: attempt {} failed, retrying", job.unit, attempt);
    }
}
