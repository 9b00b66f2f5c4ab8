//! The owner of one RS-485 line: a tokio task driving the sans-IO [`RtuMaster`].
//!
//! Exactly one task owns a serial port (opened exclusively); every caller, the
//! pollers of each unit, cloud writes and the facade, sends it requests through an
//! [`RtuBus`] handle. The task serves units round-robin from a [`FairQueue`], times
//! each attempt out, retries with per-unit backoff, and counts CRC errors and noise.
//!
//! Timing: tokio's timers tick in milliseconds, but the 3.5-character gap before the
//! next request is 1.75 ms at 115200 baud. The task sleeps on the timer until about a
//! millisecond before the line is free and yields in a loop for the rest, so a gap
//! costs the line tens of microseconds, not a whole timer tick.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::fair_queue::{BackoffPolicy, FairQueue};
use super::pdu::{Request, Response};
use super::precise_timer::PreciseTimer;
use super::rtu::{CharTiming, MAX_ADU_LEN, MasterCounters, MasterEvent, RtuMaster};
use super::{Answer, ClientError};
use crate::health::{BridgeHealth, HealthEvent};

/// Parity of the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus default).
    #[default]
    Even,
    /// Odd parity.
    Odd,
}

/// The serial line settings of an RTU bridge (8 data bits always).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialLine {
    /// Serial device path (`/dev/ttyUSB0`).
    pub port: String,
    /// Baud rate (1200..=921600).
    pub baud: u32,
    /// Parity; `even` unless said otherwise, as the Modbus spec asks.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (the spec asks for 2 without parity).
    #[serde(default = "one_stop_bit")]
    pub stop_bits: u8,
}

fn one_stop_bit() -> u8 {
    1
}

impl SerialLine {
    /// Character timing on this line.
    pub fn timing(&self) -> CharTiming {
        CharTiming::for_line(
            self.baud,
            CharTiming::bits_per_char(self.parity != Parity::None, self.stop_bits),
        )
    }

    /// `/dev/ttyUSB0 9600 8E1`, for people.
    pub fn describe(&self) -> String {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        format!("{} {} 8{parity}{}", self.port, self.baud, self.stop_bits)
    }

    fn builder(&self) -> tokio_serial::SerialPortBuilder {
        tokio_serial::new(&self.port, self.baud)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(if self.stop_bits >= 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
    }
}

/// How the bus task treats requests.
#[derive(Debug, Clone, Copy)]
pub struct BusOptions {
    /// Line timing.
    pub timing: CharTiming,
    /// Per-attempt response timeout, from the end of the request on the line.
    pub response_timeout: Duration,
    /// Further attempts after a timeout or a garbled answer.
    pub retries: u32,
    /// Per-unit backoff after failures.
    pub backoff: BackoffPolicy,
}

struct Job {
    unit: u8,
    request: Request,
    attempt: u32,
    /// A gateway facade request: its client waits on the line, so it goes ahead of
    /// the queued poll requests, ignores the unit's backoff and is sent once.
    urgent: bool,
    reply: oneshot::Sender<Result<Answer, ClientError>>,
}

/// A handle to one bus task; cheap to clone.
#[derive(Clone)]
pub struct RtuBus {
    jobs: mpsc::Sender<Job>,
    response_timeout: Duration,
}

impl RtuBus {
    /// Starts nothing yet: returns the handle and the task future that opens `line`
    /// (and reopens it with backoff after errors) and serves requests until `shutdown`.
    pub fn for_serial_line(
        line: SerialLine,
        options: BusOptions,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (jobs, rx) = mpsc::channel(256);
        let mut driver = BusDriver::new(rx, options, health);
        let task = async move {
            let mut failures = 0u32;
            loop {
                match tokio_serial::SerialStream::open(&line.builder()) {
                    Ok(mut port) => {
                        failures = 0;
                        driver.update_health(|h| h.connected = true);
                        tracing::info!(port = %line.describe(), "serial line open");
                        match driver.serve(&mut port, &shutdown).await {
                            Ok(()) => return,
                            Err(error) => driver.record_error(&format!("{}: {error}", line.port)),
                        }
                        driver.update_health(|h| h.connected = false);
                    }
                    Err(error) => {
                        driver.record_error(&format!("cannot open {}: {error}", line.port));
                    }
                }
                failures = failures.saturating_add(1);
                let wait = options
                    .backoff
                    .delay(failures)
                    .max(Duration::from_millis(100));
                if !driver.refuse_until(Instant::now() + wait, &shutdown).await {
                    return;
                }
            }
        };
        (
            Self {
                jobs,
                response_timeout: options.response_timeout,
            },
            task,
        )
    }

    /// A bus over any byte stream (a pseudo-terminal in tests and benchmarks).
    pub fn over_stream<S>(
        stream: S,
        options: BusOptions,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel(256);
        let mut driver = BusDriver::new(rx, options, health);
        let task = async move {
            let mut stream = stream;
            if let Err(error) = driver.serve(&mut stream, &shutdown).await {
                driver.record_error(&error.to_string());
            }
        };
        (
            Self {
                jobs,
                response_timeout: options.response_timeout,
            },
            task,
        )
    }

    /// Sends `request` to `unit` and waits for its answer (after retries).
    pub async fn call(&self, unit: u8, request: Request) -> Result<Answer, ClientError> {
        self.send(unit, request, false).await
    }

    /// Sends `request` to `unit` for a client that is waiting (the gateway facade):
    /// ahead of queued requests, regardless of the unit's backoff, without retries,
    /// and answered within the configured response timeout whatever the line is
    /// busy with ([`ClientError::Timeout`] when it is not). A request still queued
    /// at the deadline is dropped by the bus task unsent.
    pub async fn call_now(&self, unit: u8, request: Request) -> Result<Answer, ClientError> {
        tokio::time::timeout(self.response_timeout, self.send(unit, request, true))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn send(&self, unit: u8, request: Request, urgent: bool) -> Result<Answer, ClientError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            unit,
            request,
            attempt: 0,
            urgent,
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }
}

struct BusDriver {
    jobs: mpsc::Receiver<Job>,
    queue: FairQueue<Job>,
    /// Facade requests, served before the fair queue in arrival order.
    urgent: std::collections::VecDeque<Job>,
    master: RtuMaster,
    options: BusOptions,
    epoch: Instant,
    health: Arc<Mutex<BridgeHealth>>,
    reported: MasterCounters,
}

impl BusDriver {
    fn new(
        jobs: mpsc::Receiver<Job>,
        options: BusOptions,
        health: Arc<Mutex<BridgeHealth>>,
    ) -> Self {
        Self {
            jobs,
            queue: FairQueue::new(options.backoff),
            urgent: std::collections::VecDeque::new(),
            master: RtuMaster::new(options.timing, options.response_timeout.as_micros() as u64),
            options,
            epoch: Instant::now(),
            health,
            reported: MasterCounters::default(),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn instant(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    /// Serves requests over `port` until shutdown (`Ok`) or an I/O error (`Err`).
    async fn serve<S>(&mut self, port: &mut S, shutdown: &CancellationToken) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut rx = [0u8; 512];
        let mut tx = [0u8; MAX_ADU_LEN];
        let gap_timer = PreciseTimer::new();
        loop {
            while let Ok(job) = self.jobs.try_recv() {
                self.enqueue(job);
            }
            let next = match self.urgent.pop_front() {
                Some(job) => Some((job.unit, job)),
                None => self.queue.pop(Instant::now()),
            };
            let Some((unit, job)) = next else {
                let wake = self
                    .queue
                    .next_ready()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    job = self.jobs.recv() => match job {
                        Some(job) => self.enqueue(job),
                        None => return Ok(()),
                    },
                    () = tokio::time::sleep_until(wake.into()) => {}
                    read = port.read(&mut rx) => {
                        // Bytes while idle: late answers or noise; they also delay the line.
                        let n = read?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        let _ = self.master.receive(&rx[..n], self.micros(Instant::now()));
                        self.report_counters(None);
                    }
                }
                continue;
            };
            if job.reply.is_closed() {
                continue;
            }
            gap_timer
                .sleep_until(self.instant(self.master.ready_at()))
                .await;
            let now = self.micros(Instant::now());
            let len = match self.master.start(unit, &job.request, now, &mut tx) {
                Ok(len) => len,
                Err(error) => {
                    let _ = job
                        .reply
                        .send(Err(ClientError::Io(std::io::ErrorKind::InvalidInput)));
                    self.record_error(&format!("unit {unit}: {error}"));
                    continue;
                }
            };
            if let Err(error) = port.write_all(&tx[..len]).await {
                self.master.abort();
                if job.urgent {
                    self.urgent.push_front(job);
                } else {
                    self.queue.push_front(unit, job);
                }
                return Err(error);
            }
            if unit == 0 {
                let _ = job.reply.send(Ok(Answer::Written));
                continue;
            }
            let event = loop {
                let deadline = self
                    .master
                    .next_deadline()
                    .map_or_else(Instant::now, |d| self.instant(d));
                tokio::select! {
                    // Bytes already waiting must be seen before the silence timer is
                    // believed: a late wake-up is not silence on the line.
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    read = port.read(&mut rx) => {
                        let n = read?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        if let Some(event) = self.master.receive(&rx[..n], self.micros(Instant::now())) {
                            break event;
                        }
                    }
                    () = tokio::time::sleep_until(deadline.into()) => {
                        if let Some(event) = self.master.poll(self.micros(Instant::now())) {
                            break event;
                        }
                    }
                }
            };
            self.report_counters(Some(unit));
            self.finish(unit, job, event);
        }
    }

    fn enqueue(&mut self, job: Job) {
        if job.urgent {
            self.urgent.push_back(job);
        } else {
            self.queue.push(job.unit, job);
        }
    }

    fn finish(&mut self, unit: u8, mut job: Job, event: MasterEvent) {
        let failure = match event {
            MasterEvent::Response(frame) => {
                self.queue.record_success(unit);
                let answer = Response::decode_for(&job.request, frame.pdu())
                    .map(Answer::from)
                    .map_err(ClientError::from);
                let _ = job.reply.send(answer);
                return;
            }
            MasterEvent::BroadcastSent => {
                let _ = job.reply.send(Ok(Answer::Written));
                return;
            }
            MasterEvent::Timeout => ClientError::Timeout,
            MasterEvent::Corrupted => ClientError::Corrupted,
        };
        let backoff = self.queue.record_failure(unit, Instant::now());
        if !job.urgent && job.attempt < self.options.retries && !job.reply.is_closed() {
            job.attempt += 1;
            tracing::debug!(unit, attempt = job.attempt, ?backoff, %failure, "retrying");
            self.update_health(|h| h.record(Some(unit), HealthEvent::Retry));
            self.queue.push_front(unit, job);
        } else {
            let _ = job.reply.send(Err(failure));
        }
    }

    /// Moves the master's line counters into the bridge's health; what happened since the
    /// last report belongs to `unit`'s transaction when there is one (noise never does).
    fn report_counters(&mut self, unit: Option<u8>) {
        let now = self.master.counters();
        let before = self.reported;
        self.reported = now;
        let timeouts = now.timeouts - before.timeouts;
        let crc_errors = now.framer.crc_errors - before.framer.crc_errors;
        let noise = now.framer.noise_bytes - before.framer.noise_bytes;
        if timeouts == 0 && crc_errors == 0 && noise == 0 {
            return;
        }
        self.update_health(|h| {
            for _ in 0..timeouts {
                h.record(unit, HealthEvent::Timeout);
            }
            if crc_errors > 0 {
                h.record(unit, HealthEvent::CrcErrors(u64::from(crc_errors)));
            }
            if noise > 0 {
                h.record(None, HealthEvent::NoiseBytes(u64::from(noise)));
            }
        });
    }

    /// While the port is closed: answers every request with an error until `until`.
    /// Returns false on shutdown.
    async fn refuse_until(&mut self, until: Instant, shutdown: &CancellationToken) -> bool {
        let waiting: Vec<Job> = self.urgent.drain(..).chain(self.queue.drain()).collect();
        for job in waiting {
            let _ = job
                .reply
                .send(Err(ClientError::Io(std::io::ErrorKind::NotConnected)));
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep_until(until.into()) => return true,
                job = self.jobs.recv() => match job {
                    Some(job) => {
                        let _ = job.reply.send(Err(ClientError::Io(std::io::ErrorKind::NotConnected)));
                    }
                    None => return false,
                },
            }
        }
    }

    fn record_error(&self, error: &str) {
        tracing::warn!(%error, "rtu bus error");
        self.update_health(|h| h.record(None, HealthEvent::Error(error.to_owned())));
    }

    fn update_health(&self, change: impl FnOnce(&mut BridgeHealth)) {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut health);
    }
}
