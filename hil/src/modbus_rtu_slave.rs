//! A simulated Modbus RTU line: units behind a pseudo-terminal, paced at the baud rate.
//!
//! Pseudo-terminals do not throttle (96 kB cross a "9600 baud" pty in under a
//! millisecond), so the simulator models the line itself: a request's bytes are taken
//! to end on the line one character time apart from when they arrive, the answer
//! starts 3.5 characters after the request ended, and each answer byte is written at
//! the moment its last bit would leave a real UART. A dedicated thread does this with
//! `std` sleeps and a short spin, which keeps each byte within tens of microseconds.
//!
//! Faults, per unit: CRC corruption, dropped bytes, late replies, silence, exceptions,
//! and answers paused in the middle (what a descheduled writer produces on a loaded
//! machine; the answer is still good and a master must take it).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serialport::{SerialPort, TTYPort};
use warden_bridges::modbus::MAX_PDU_LEN;
use warden_bridges::modbus::pdu::{self, ExceptionCode};
use warden_bridges::modbus::rtu::{CharTiming, Direction, MAX_ADU_LEN, RtuFramer, encode_adu};
use warden_bridges::modbus::rtu_bus::Parity;

use crate::register_model::xorshift;
use crate::simulated_device::{DeviceModel, Faults, SimulatedDevice};

/// One simulated RS-485 line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuLineModel {
    /// Baud rate the simulator paces at.
    pub baud: u32,
    /// Parity (only its effect on character time is simulated).
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    #[serde(default = "one")]
    pub stop_bits: u8,
    /// Extra turnaround before answering, in microseconds, beyond 3.5 characters.
    #[serde(default)]
    pub turnaround_us: u64,
    /// The units on the line.
    pub devices: Vec<DeviceModel>,
}

fn one() -> u8 {
    1
}

impl RtuLineModel {
    /// Character timing of the line.
    pub fn timing(&self) -> CharTiming {
        CharTiming::for_line(
            self.baud,
            CharTiming::bits_per_char(self.parity != Parity::None, self.stop_bits),
        )
    }
}

/// What the simulator did, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtuSimStats {
    /// Frames received with a good CRC (any unit).
    pub requests: u64,
    /// Answers sent (including faulty ones).
    pub answers: u64,
    /// Answers sent with a corrupted CRC.
    pub corrupted: u64,
    /// Answers sent with a byte missing.
    pub dropped_bytes: u64,
    /// Answers sent late.
    pub late: u64,
    /// Requests deliberately left unanswered.
    pub silences: u64,
    /// Exceptions injected.
    pub exceptions: u64,
    /// Answers paused in the middle.
    pub paused: u64,
    /// Received bytes the framer discarded as noise.
    pub noise_bytes: u64,
}

struct Shared {
    stop: AtomicBool,
    stats: Mutex<RtuSimStats>,
    faults: Mutex<Vec<(u8, Faults)>>,
}

/// A running RTU line simulator; stops when dropped.
pub struct RtuSlaveSimulator {
    path: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RtuSlaveSimulator {
    /// Opens a pseudo-terminal pair and serves `line` on it; the bridge opens
    /// [`Self::path`] as its serial port.
    pub fn start(line: RtuLineModel) -> std::io::Result<Self> {
        let (mut master, slave) = TTYPort::pair().map_err(std::io::Error::other)?;
        master
            .set_timeout(Duration::from_millis(5))
            .map_err(std::io::Error::other)?;
        let path = slave
            .name()
            .ok_or_else(|| std::io::Error::other("the pseudo-terminal has no name"))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: Mutex::new(RtuSimStats::default()),
            faults: Mutex::new(
                line.devices
                    .iter()
                    .map(|d| (d.unit, d.faults.clone()))
                    .collect(),
            ),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rtu-sim".into())
            .spawn(move || {
                // Hold the slave side open so the line exists while the bridge reopens it.
                let _slave = slave;
                serve_line(&mut master, &line, &thread_shared);
            })?;
        Ok(Self {
            path,
            shared,
            thread: Some(thread),
        })
    }

    /// The serial device path the bridge opens.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the simulator has done so far.
    pub fn stats(&self) -> RtuSimStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the faults of `unit`.
    pub fn set_faults(&self, unit: u8, faults: Faults) {
        let mut all = self
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match all.iter_mut().find(|(u, _)| *u == unit) {
            Some(entry) => entry.1 = faults,
            None => all.push((unit, faults)),
        }
    }
}

impl Drop for RtuSlaveSimulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_line(port: &mut TTYPort, line: &RtuLineModel, shared: &Shared) {
    let timing = line.timing();
    let epoch = Instant::now();
    let micros = |at: Instant| at.saturating_duration_since(epoch).as_micros() as u64;
    let mut devices: Vec<SimulatedDevice> = line.devices.iter().map(SimulatedDevice::new).collect();
    let mut framer = RtuFramer::new(Direction::Request, timing, false);
    let mut dice = 0x5EED_u64;
    let mut line_busy_until = 0u64;
    let mut buf = [0u8; 512];
    let mut noise_reported = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let read = match port.read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let now = micros(Instant::now());
                if framer
                    .silence_deadline()
                    .is_some_and(|deadline| now >= deadline)
                    && let Some(frame) = framer.poll(now)
                {
                    // Only functions of unknown length end at silence: answer them too.
                    line_busy_until = respond(
                        port,
                        &frame,
                        now,
                        line,
                        &mut devices,
                        shared,
                        &mut dice,
                        epoch,
                    );
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // EIO while nobody has the slave side open: wait for the bridge.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let arrived = micros(Instant::now());
        for &byte in &buf[..read] {
            // The byte ends on the line one character after the previous one, at the earliest.
            let at = arrived.max(line_busy_until) + u64::from(timing.char_us);
            line_busy_until = at;
            if let Some(frame) = framer.push(byte, at) {
                line_busy_until = respond(
                    port,
                    &frame,
                    at,
                    line,
                    &mut devices,
                    shared,
                    &mut dice,
                    epoch,
                );
            }
        }
        let noise = framer.counters().noise_bytes;
        if noise != noise_reported {
            let delta = u64::from(noise - noise_reported);
            noise_reported = noise;
            shared
                .stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .noise_bytes += delta;
        }
    }
}

/// Answers `frame` (which ended on the line at `ended_us`) if one of the units is
/// addressed; returns when the line is free again.
#[allow(clippy::too_many_arguments)]
fn respond(
    port: &mut TTYPort,
    frame: &warden_bridges::modbus::rtu::RtuFrame,
    ended_us: u64,
    line: &RtuLineModel,
    devices: &mut [SimulatedDevice],
    shared: &Shared,
    dice: &mut u64,
    epoch: Instant,
) -> u64 {
    let timing = line.timing();
    let mut stats = RtuSimStats {
        requests: 1,
        ..RtuSimStats::default()
    };
    let Some(device) = devices.iter_mut().find(|d| d.unit() == frame.unit()) else {
        merge(shared, &stats);
        return ended_us;
    };
    let faults = shared
        .faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(u, _)| *u == frame.unit())
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    if faults.seed != 0 && *dice == 0x5EED {
        *dice = faults.seed;
    }
    let mut roll = |rate: f64| -> bool {
        if rate <= 0.0 {
            return false;
        }
        *dice = xorshift(*dice);
        ((*dice >> 11) as f64 / (1u64 << 53) as f64) < rate
    };
    if roll(faults.silence) {
        stats.silences = 1;
        merge(shared, &stats);
        return ended_us;
    }
    let elapsed_ms = ended_us / 1000;
    let mut response = [0u8; MAX_PDU_LEN];
    let function = frame.pdu().first().copied().unwrap_or(0) & 0x7F;
    let len = if roll(faults.exception) {
        stats.exceptions = 1;
        pdu::encode_exception(
            function,
            ExceptionCode::SERVER_DEVICE_FAILURE,
            &mut response,
        )
        .unwrap_or(0)
    } else {
        device.answer(frame.pdu(), elapsed_ms, &mut response)
    };
    let mut adu = [0u8; MAX_ADU_LEN];
    let Ok(mut adu_len) = encode_adu(frame.unit(), &response[..len], &mut adu) else {
        merge(shared, &stats);
        return ended_us;
    };
    if roll(faults.crc_corruption) {
        stats.corrupted = 1;
        adu[adu_len - 1] ^= 0x5A;
    }
    if roll(faults.dropped_byte) && adu_len > 3 {
        stats.dropped_bytes = 1;
        let at = adu_len / 2;
        adu.copy_within(at + 1..adu_len, at);
        adu_len -= 1;
    }
    let mut start = ended_us + u64::from(timing.t3_5_us) + line.turnaround_us;
    if roll(faults.late_reply) {
        stats.late = 1;
        start += faults.late_reply_ms * 1000;
    }
    let pause = if roll(faults.paused_answer) {
        stats.paused = 1;
        Some((adu_len / 2, faults.pause_us))
    } else {
        None
    };
    stats.answers = 1;
    merge(shared, &stats);
    // Each byte is written when its last bit would leave the UART.
    let char_us = u64::from(timing.char_us.max(1));
    let due_at = |index: usize| {
        let paused = pause.map_or(0, |(at, us)| if index >= at { us } else { 0 });
        start + (index as u64 + 1) * char_us + paused
    };
    let mut written = 0;
    while written < adu_len {
        let now = micros_since(epoch);
        let due = (written..adu_len)
            .take_while(|&index| due_at(index) <= now)
            .count();
        if due > 0 {
            if port.write_all(&adu[written..written + due]).is_err() {
                break;
            }
            written += due;
            continue;
        }
        // The last byte ends the transaction for the master: wake earlier and spin
        // longer for it, so an OS wake-up that comes late does not delay the line.
        let spin_us = if written + 1 == adu_len { 600 } else { 150 };
        sleep_until_micros(epoch, due_at(written), spin_us);
    }
    let _ = port.flush();
    due_at(adu_len.saturating_sub(1))
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Sleeps until `target` µs after `epoch`: the OS sleep for all but the last
/// `spin_us`, then a spin, so each byte leaves on time.
fn sleep_until_micros(epoch: Instant, target: u64, spin_us: u64) {
    let now = micros_since(epoch);
    if target > now + spin_us {
        std::thread::sleep(Duration::from_micros(target - now - spin_us));
    }
    while micros_since(epoch) < target {
        std::hint::spin_loop();
    }
}

fn merge(shared: &Shared, add: &RtuSimStats) {
    let mut stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
    stats.requests += add.requests;
    stats.answers += add.answers;
    stats.corrupted += add.corrupted;
    stats.dropped_bytes += add.dropped_bytes;
    stats.late += add.late;
    stats.silences += add.silences;
    stats.exceptions += add.exceptions;
    stats.paused += add.paused;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    use warden_bridges::BridgeHealth;
    use warden_bridges::modbus::fair_queue::BackoffPolicy;
    use warden_bridges::modbus::pdu::{FunctionCode, RegisterValues, Request};
    use warden_bridges::modbus::rtu_bus::{BusOptions, RtuBus, SerialLine};
    use warden_bridges::modbus::{Answer, ClientError};

    use crate::register_model::RegisterModel;

    fn device(unit: u8, faults: Faults) -> DeviceModel {
        let mut holding = BTreeMap::new();
        for address in 0..10 {
            holding.insert(
                address,
                RegisterModel::Constant {
                    value: 100 * u16::from(unit) + address,
                },
            );
        }
        DeviceModel {
            unit,
            holding,
            faults,
            ..DeviceModel::default()
        }
    }

    fn line(baud: u32, devices: Vec<DeviceModel>) -> RtuLineModel {
        RtuLineModel {
            baud,
            parity: Parity::Even,
            stop_bits: 1,
            turnaround_us: 0,
            devices,
        }
    }

    fn bus(
        simulator: &RtuSlaveSimulator,
        baud: u32,
        timeout_ms: u64,
        retries: u32,
    ) -> (
        RtuBus,
        Arc<std::sync::Mutex<BridgeHealth>>,
        CancellationToken,
    ) {
        let serial = SerialLine {
            port: simulator.path().to_owned(),
            baud,
            parity: Parity::Even,
            stop_bits: 1,
        };
        let options = BusOptions {
            timing: serial.timing(),
            response_timeout: Duration::from_millis(timeout_ms),
            retries,
            backoff: BackoffPolicy {
                base: Duration::from_millis(10),
                max: Duration::from_millis(200),
            },
        };
        let health = Arc::new(std::sync::Mutex::new(BridgeHealth::default()));
        let shutdown = CancellationToken::new();
        let (bus, task) =
            RtuBus::for_serial_line(serial, options, Arc::clone(&health), shutdown.clone());
        tokio::spawn(task);
        (bus, health, shutdown)
    }

    fn read(address: u16, count: u16) -> Request {
        Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address,
            count,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bridge_reads_and_writes_over_a_paced_line() {
        let simulator = RtuSlaveSimulator::start(line(
            38_400,
            vec![device(1, Faults::default()), device(2, Faults::default())],
        ))
        .expect("pty");
        // No retries: every answer must arrive whole the first time, however loaded
        // the machine (see `answers_paused_in_the_middle_are_taken_whole`).
        let (bus, health, shutdown) = bus(&simulator, 38_400, 200, 0);
        assert_eq!(
            bus.call(2, read(3, 2)).await,
            Ok(Answer::Registers(vec![203, 204]))
        );
        let mut values = RegisterValues::new();
        values.extend([7u16, 8, 9]);
        // Function 16: the request modbus-core's RTU server decoder drops.
        let write = Request::WriteMultipleRegisters { address: 4, values };
        assert_eq!(bus.call(1, write).await, Ok(Answer::Written));
        assert_eq!(
            bus.call(1, read(3, 3)).await,
            Ok(Answer::Registers(vec![103, 7, 8]))
        );
        assert_eq!(
            bus.call(1, read(50, 1)).await,
            Ok(Answer::Exception(ExceptionCode::ILLEGAL_DATA_ADDRESS))
        );
        // A unit nobody answers for: silence, a timeout.
        assert_eq!(bus.call(9, read(0, 1)).await, Err(ClientError::Timeout));
        let stats = simulator.stats();
        assert_eq!(stats.requests, 5);
        assert_eq!(stats.answers, 4);
        let health = health.lock().expect("health").clone();
        assert_eq!(health.timeouts, 1);
        assert_eq!((health.crc_errors, health.retries), (0, 0), "{health:?}");
        shutdown.cancel();
    }

    /// Regression for the "garbled answers on a loaded pty" defect. Its cause: the
    /// master framed answers by the time its *reads* happened, so a writer (or
    /// reader) descheduled for more than 3.5 characters (1.75 ms) in the middle of
    /// an answer looked like the line going silent mid-frame, and the good answer
    /// was dropped as noise. Here every answer pauses for 5 ms in the middle, on
    /// purpose; with no retries every read must still be exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_paused_in_the_middle_are_taken_whole() {
        let paused = Faults {
            paused_answer: 1.0,
            pause_us: 5_000,
            ..Faults::default()
        };
        for baud in [38_400, 115_200] {
            let simulator =
                RtuSlaveSimulator::start(line(baud, vec![device(1, paused.clone())])).expect("pty");
            let (bus, health, shutdown) = bus(&simulator, baud, 200, 0);
            for address in 0..6 {
                assert_eq!(
                    bus.call(1, read(address, 4)).await,
                    Ok(Answer::Registers(
                        (address..address + 4).map(|a| 100 + a).collect()
                    )),
                    "{baud} baud"
                );
            }
            let stats = simulator.stats();
            assert_eq!((stats.requests, stats.paused), (6, 6), "{stats:?}");
            let health = health.lock().expect("health").clone();
            assert_eq!(
                (health.crc_errors, health.noise_bytes, health.retries),
                (0, 0, 0),
                "{health:?}"
            );
            shutdown.cancel();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crc_errors_are_counted_and_retried() {
        let faults = Faults {
            crc_corruption: 0.3,
            dropped_byte: 0.1,
            seed: 42,
            ..Faults::default()
        };
        let simulator =
            RtuSlaveSimulator::start(line(57_600, vec![device(1, faults)])).expect("pty");
        let (bus, health, shutdown) = bus(&simulator, 57_600, 50, 4);
        let mut ok = 0;
        for _ in 0..20 {
            if bus.call(1, read(0, 4)).await == Ok(Answer::Registers(vec![100, 101, 102, 103])) {
                ok += 1;
            }
        }
        let stats = simulator.stats();
        let health = health.lock().expect("health").clone();
        // The fault dice are seeded, so which answers are faulty is fixed; nothing
        // else may fail (no spurious garbles from a loaded machine).
        assert_eq!(ok, 20, "{health:?} {stats:?}");
        let injected = stats.corrupted + stats.dropped_bytes;
        assert!(injected > 0);
        // Each faulty answer (one or both faults) costs exactly one CRC error (a
        // truncated answer counts when its time is up) and one retry.
        assert_eq!(stats.requests, 20 + health.retries, "{health:?} {stats:?}");
        assert_eq!(health.crc_errors, health.retries, "{health:?} {stats:?}");
        assert!(
            health.retries >= stats.corrupted.max(stats.dropped_bytes)
                && health.retries <= injected,
            "{health:?} {stats:?}"
        );
        assert_eq!(health.timeouts, 0);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_unit_does_not_starve_a_live_one() {
        let dead = Faults {
            silence: 1.0,
            ..Faults::default()
        };
        let simulator = RtuSlaveSimulator::start(line(
            115_200,
            vec![device(1, Faults::default()), device(2, dead)],
        ))
        .expect("pty");
        let (bus, health, shutdown) = bus(&simulator, 115_200, 30, 1);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for unit in [2u8, 1] {
            let count = if unit == 1 { 20 } else { 5 };
            let bus = bus.clone();
            let order = Arc::clone(&order);
            tasks.spawn(async move {
                for _ in 0..count {
                    let result = bus.call(unit, read(0, 1)).await;
                    order.lock().expect("order").push((unit, result.is_ok()));
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let order = order.lock().expect("order").clone();
        assert!(order.iter().filter(|(u, ok)| *u == 1 && *ok).count() == 20);
        assert!(order.iter().filter(|(u, ok)| *u == 2 && !*ok).count() == 5);
        let last_live = order.iter().rposition(|(u, _)| *u == 1).expect("live");
        let last_dead = order.iter().rposition(|(u, _)| *u == 2).expect("dead");
        assert!(
            last_live < last_dead,
            "the live unit waited for the dead one: {order:?}"
        );
        // The line's counters tell the operator which unit is dead: every timeout and
        // retry is the silent unit's, none the live one's.
        let health = health.lock().expect("health").clone();
        let silent = health.unit(2).expect("unit 2 counted");
        assert_eq!(
            silent.timeouts, 10,
            "5 calls x (1 try + 1 retry): {health:?}"
        );
        assert_eq!(silent.retries, 5, "{health:?}");
        assert_eq!(
            health.unit(1).map_or(0, |u| u.timeouts + u.retries),
            0,
            "{health:?}"
        );
        assert_eq!(health.timeouts, 10);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokio_modbus_rtu_client_talks_to_the_simulator() {
        use tokio_modbus::prelude::*;
        let simulator = RtuSlaveSimulator::start(line(38_400, vec![device(5, Faults::default())]))
            .expect("pty");
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(simulator.path(), 38_400))
            .expect("open pty");
        let mut ctx = rtu::attach_slave(port, Slave(5));
        let values = ctx
            .read_holding_registers(1, 3)
            .await
            .expect("io")
            .expect("no exception");
        assert_eq!(values, vec![501, 502, 503]);
        ctx.write_multiple_registers(6, &[11, 12])
            .await
            .expect("io")
            .expect("no exception");
        let values = ctx
            .read_holding_registers(6, 2)
            .await
            .expect("io")
            .expect("no exception");
        assert_eq!(values, vec![11, 12]);
        let missing = ctx.read_holding_registers(40, 1).await.expect("io");
        assert_eq!(
            missing,
            Err(tokio_modbus::ExceptionCode::IllegalDataAddress)
        );
    }
}
