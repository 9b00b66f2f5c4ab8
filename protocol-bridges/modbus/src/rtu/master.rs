//! The RTU master's transaction state machine: one request on the line at a time.
//!
//! The caller owns the port and the clock. It asks [`RtuMaster::ready_at`] when the
//! line may carry the next request, [`RtuMaster::start`]s it, writes the bytes, and
//! feeds what it reads to [`RtuMaster::receive`] and the passing time to
//! [`RtuMaster::poll`] until an event ends the transaction. Time is microseconds on
//! the caller's monotonic clock; the master never reads a clock itself.

use super::adu::{CharTiming, encode_adu};
use super::framer::{Direction, FramerCounters, RtuFrame, RtuFramer};
use crate::pdu::Request;

/// How a transaction ended.
// The frame is held inline (no allocation in this no_std core); one event is built
// per transaction, so the size difference costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEvent {
    /// The addressed unit answered with a CRC-valid frame for the request's function
    /// (a normal or an exception response; decode it with
    /// [`crate::pdu::Response::decode_for`]).
    Response(RtuFrame),
    /// Nothing valid arrived in time.
    Timeout,
    /// Bytes arrived but the line went quiet without a CRC-valid answer.
    Corrupted,
    /// A broadcast (unit 0) was sent; no answer is expected.
    BroadcastSent,
}

/// What the master has done, for health counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MasterCounters {
    /// Requests started.
    pub requests: u32,
    /// Transactions answered (normal or exception).
    pub responses: u32,
    /// Transactions that timed out.
    pub timeouts: u32,
    /// Transactions that ended with garbled bytes only.
    pub corrupted: u32,
    /// CRC-valid frames from another unit or for another function, ignored.
    pub unexpected_frames: u32,
    /// The framer's counters (CRC errors, noise).
    pub framer: FramerCounters,
}

/// Why a request could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MasterError {
    /// A transaction is still in progress.
    Busy,
    /// The line has not been silent for 3.5 characters yet; retry at this time.
    LineNotIdle {
        /// When the line will be idle.
        ready_at_us: u64,
    },
    /// The request does not fit an RTU frame.
    Encode,
}

impl core::fmt::Display for MasterError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Busy => f.write_str("a transaction is still in progress"),
            Self::LineNotIdle { ready_at_us } => {
                write!(f, "the line is not idle until {ready_at_us} us")
            }
            Self::Encode => f.write_str("the request does not fit an rtu frame"),
        }
    }
}

impl core::error::Error for MasterError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Awaiting {
        unit: u8,
        function: u8,
        deadline_us: u64,
        saw_bytes: bool,
        crc_errors_before: u32,
    },
}

/// The sans-IO RTU master for one serial line.
#[derive(Clone)]
pub struct RtuMaster {
    timing: CharTiming,
    response_timeout_us: u64,
    framer: RtuFramer,
    state: State,
    line_idle_at_us: u64,
    counters: MasterCounters,
}

impl RtuMaster {
    /// A master for a line with `timing`. `response_timeout_us` counts from the moment
    /// the request's last character has left the line.
    pub fn new(timing: CharTiming, response_timeout_us: u64) -> Self {
        Self {
            timing,
            response_timeout_us,
            framer: RtuFramer::new(Direction::Response, timing, false),
            state: State::Idle,
            line_idle_at_us: 0,
            counters: MasterCounters::default(),
        }
    }

    /// The line's character timing.
    pub fn timing(&self) -> CharTiming {
        self.timing
    }

    /// Counters so far.
    pub fn counters(&self) -> MasterCounters {
        MasterCounters {
            framer: self.framer.counters(),
            ..self.counters
        }
    }

    /// True when no transaction is in progress.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// The earliest time the next request may start: 3.5 characters after the last
    /// character seen or sent.
    pub fn ready_at(&self) -> u64 {
        self.line_idle_at_us
    }

    /// The next time [`Self::poll`] must be called (a timeout or a silence), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            State::Idle => None,
            State::Awaiting {
                deadline_us,
                crc_errors_before,
                ..
            } => {
                // Only a garbled answer ends at silence (fail fast). A partial answer
                // is waited for until the deadline: on a general-purpose OS a silence
                // seen by the reader is often the scheduler's, not the line's.
                let garbled = self.framer.counters().crc_errors > crc_errors_before;
                let silence = if garbled {
                    self.framer
                        .last_byte_us()
                        .map(|last| last + u64::from(self.timing.t3_5_us))
                } else {
                    None
                };
                Some(silence.map_or(deadline_us, |s| s.min(deadline_us)))
            }
        }
    }

    /// Starts `request` to `unit` at `now_us`: writes the frame into `out` and returns
    /// its length. The caller writes those bytes to the line at once.
    pub fn start(
        &mut self,
        unit: u8,
        request: &Request,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, MasterError> {
        if self.state != State::Idle {
            return Err(MasterError::Busy);
        }
        if now_us < self.line_idle_at_us {
            return Err(MasterError::LineNotIdle {
                ready_at_us: self.line_idle_at_us,
            });
        }
        let mut pdu = [0u8; crate::MAX_PDU_LEN];
        let pdu_len = request.encode(&mut pdu).map_err(|_| MasterError::Encode)?;
        let len = encode_adu(unit, &pdu[..pdu_len], out).map_err(|_| MasterError::Encode)?;
        self.framer.clear();
        let sent_at = now_us + self.timing.line_time_us(len);
        self.line_idle_at_us = sent_at + u64::from(self.timing.t3_5_us);
        self.counters.requests = self.counters.requests.saturating_add(1);
        if unit == 0 {
            return Ok(len);
        }
        self.state = State::Awaiting {
            unit,
            function: request.function().code(),
            deadline_us: sent_at + self.response_timeout_us,
            saw_bytes: false,
            crc_errors_before: self.framer.counters().crc_errors,
        };
        Ok(len)
    }

    /// Feeds bytes read from the line at `now_us`; returns the event that ends the
    /// transaction, if these bytes end it.
    pub fn receive(&mut self, bytes: &[u8], now_us: u64) -> Option<MasterEvent> {
        if bytes.is_empty() {
            return None;
        }
        self.line_idle_at_us = self
            .line_idle_at_us
            .max(now_us + u64::from(self.timing.t3_5_us));
        let mut event = None;
        for &byte in bytes {
            if let State::Awaiting { saw_bytes, .. } = &mut self.state {
                *saw_bytes = true;
            }
            let Some(frame) = self.framer.push(byte, now_us) else {
                continue;
            };
            if event.is_none() {
                event = self.accept(frame);
            } else {
                self.counters.unexpected_frames = self.counters.unexpected_frames.saturating_add(1);
            }
        }
        event
    }

    /// Tells the master the time is `now_us`; returns the event that ends the
    /// transaction if its time is up.
    pub fn poll(&mut self, now_us: u64) -> Option<MasterEvent> {
        if let Some(frame) = self.framer.poll(now_us)
            && let Some(event) = self.accept(frame)
        {
            return Some(event);
        }
        let State::Awaiting {
            deadline_us,
            saw_bytes,
            crc_errors_before,
            ..
        } = self.state
        else {
            return None;
        };
        let silent = self
            .framer
            .last_byte_us()
            .is_some_and(|last| now_us >= last + u64::from(self.timing.t3_5_us));
        if saw_bytes && silent && self.framer.counters().crc_errors > crc_errors_before {
            // Garbled answer and the line has gone quiet: fail now, not at the timeout.
            self.state = State::Idle;
            self.framer.clear();
            self.counters.corrupted = self.counters.corrupted.saturating_add(1);
            return Some(MasterEvent::Corrupted);
        }
        if now_us >= deadline_us {
            self.state = State::Idle;
            self.framer.abandon();
            if saw_bytes {
                self.counters.corrupted = self.counters.corrupted.saturating_add(1);
                return Some(MasterEvent::Corrupted);
            }
            self.counters.timeouts = self.counters.timeouts.saturating_add(1);
            return Some(MasterEvent::Timeout);
        }
        None
    }

    /// Gives up on the transaction in progress (the caller's own timeout).
    pub fn abort(&mut self) {
        self.state = State::Idle;
        self.framer.clear();
    }

    fn accept(&mut self, frame: RtuFrame) -> Option<MasterEvent> {
        let State::Awaiting { unit, function, .. } = self.state else {
            self.counters.unexpected_frames = self.counters.unexpected_frames.saturating_add(1);
            return None;
        };
        let got_function = frame.pdu().first().copied().unwrap_or(0);
        if frame.unit() != unit || got_function & 0x7F != function {
            self.counters.unexpected_frames = self.counters.unexpected_frames.saturating_add(1);
            return None;
        }
        self.state = State::Idle;
        self.counters.responses = self.counters.responses.saturating_add(1);
        Some(MasterEvent::Response(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{FunctionCode, Response};
    use crate::rtu::adu::MAX_ADU_LEN;

    const TIMING: CharTiming = CharTiming::for_line(19_200, 11);

    fn read() -> Request {
        Request::ReadRegisters {
            function: FunctionCode::ReadHoldingRegisters,
            address: 0,
            count: 2,
        }
    }

    fn reply(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_ADU_LEN];
        let len = encode_adu(unit, pdu, &mut out).expect("fits");
        out[..len].to_vec()
    }

    #[test]
    fn a_transaction_respects_the_line_timing() {
        let mut master = RtuMaster::new(TIMING, 100_000);
        let mut out = [0u8; MAX_ADU_LEN];
        let len = master.start(5, &read(), 1_000, &mut out).expect("idle");
        assert_eq!(len, 8);
        assert_eq!(
            master.start(5, &read(), 1_000, &mut out),
            Err(MasterError::Busy)
        );
        let answer = reply(5, &[0x03, 4, 0, 7, 0, 8]);
        let at = 1_000 + 8 * u64::from(TIMING.char_us) + u64::from(TIMING.t3_5_us) + 9 * 573;
        let Some(MasterEvent::Response(frame)) = master.receive(&answer, at) else {
            panic!("expected a response");
        };
        let Ok(Response::Registers(registers)) = Response::decode_for(&read(), frame.pdu()) else {
            panic!("expected registers");
        };
        assert_eq!(registers.iter().collect::<Vec<_>>(), vec![7, 8]);
        // The next request must wait for 3.5 characters of silence.
        assert_eq!(master.ready_at(), at + u64::from(TIMING.t3_5_us));
        assert_eq!(
            master.start(5, &read(), at + 10, &mut out),
            Err(MasterError::LineNotIdle {
                ready_at_us: master.ready_at()
            })
        );
        assert!(
            master
                .start(5, &read(), master.ready_at(), &mut out)
                .is_ok()
        );
    }

    #[test]
    fn other_units_frames_are_ignored_and_silence_times_out() {
        let mut master = RtuMaster::new(TIMING, 50_000);
        let mut out = [0u8; MAX_ADU_LEN];
        master.start(5, &read(), 0, &mut out).expect("idle");
        assert_eq!(
            master.receive(&reply(6, &[0x03, 4, 0, 7, 0, 8]), 10_000),
            None
        );
        assert_eq!(master.counters().unexpected_frames, 1);
        let mut master = RtuMaster::new(TIMING, 50_000);
        master.start(5, &read(), 0, &mut out).expect("idle");
        let deadline = master.next_deadline().expect("awaiting");
        assert_eq!(master.poll(deadline - 1), None);
        assert_eq!(master.poll(deadline), Some(MasterEvent::Timeout));
        assert!(master.is_idle());
        assert_eq!(master.counters().timeouts, 1);
    }

    #[test]
    fn a_garbled_answer_fails_fast_after_silence() {
        let mut master = RtuMaster::new(TIMING, 1_000_000);
        let mut out = [0u8; MAX_ADU_LEN];
        master.start(5, &read(), 0, &mut out).expect("idle");
        let mut answer = reply(5, &[0x03, 4, 0, 7, 0, 8]);
        answer[4] ^= 0x10;
        assert_eq!(master.receive(&answer, 10_000), None);
        let quiet = master.next_deadline().expect("silence deadline");
        assert!(quiet < 20_000);
        assert_eq!(master.poll(quiet), Some(MasterEvent::Corrupted));
        assert_eq!(master.counters().framer.crc_errors, 1);
    }

    #[test]
    fn an_answer_split_by_a_long_pause_is_still_the_answer() {
        // Regression for the garbled answers on a loaded pty: half the answer, then
        // neither side runs for 5 ms (more than 3.5 characters), then the rest. The
        // master's silence timer fires in between; the answer must still be exact.
        let mut master = RtuMaster::new(TIMING, 100_000);
        let mut out = [0u8; MAX_ADU_LEN];
        master.start(5, &read(), 0, &mut out).expect("idle");
        let answer = reply(5, &[0x03, 4, 0, 7, 0, 8]);
        assert_eq!(master.receive(&answer[..4], 10_000), None);
        let wake = master.next_deadline().expect("awaiting");
        assert_eq!(master.poll(10_000 + u64::from(TIMING.t3_5_us) + 1), None);
        assert_eq!(master.poll(wake.min(15_000)), None);
        let Some(MasterEvent::Response(frame)) = master.receive(&answer[4..], 15_000) else {
            panic!("expected the whole answer");
        };
        assert_eq!(frame.as_bytes(), &answer[..]);
        let counters = master.counters();
        assert_eq!(
            (counters.framer.crc_errors, counters.framer.noise_bytes),
            (0, 0)
        );
    }

    #[test]
    fn a_truncated_answer_fails_at_the_deadline_and_counts_a_crc_error() {
        let mut master = RtuMaster::new(TIMING, 50_000);
        let mut out = [0u8; MAX_ADU_LEN];
        master.start(5, &read(), 0, &mut out).expect("idle");
        let answer = reply(5, &[0x03, 4, 0, 7, 0, 8]);
        assert_eq!(master.receive(&answer[..8], 10_000), None);
        let deadline = master.next_deadline().expect("awaiting");
        assert_eq!(master.poll(deadline - 1), None);
        assert_eq!(master.poll(deadline), Some(MasterEvent::Corrupted));
        assert_eq!(master.counters().framer.crc_errors, 1);
        assert_eq!(master.counters().corrupted, 1);
    }

    #[test]
    fn exceptions_are_responses() {
        let mut master = RtuMaster::new(TIMING, 50_000);
        let mut out = [0u8; MAX_ADU_LEN];
        master.start(5, &read(), 0, &mut out).expect("idle");
        let Some(MasterEvent::Response(frame)) = master.receive(&reply(5, &[0x83, 0x02]), 9_000)
        else {
            panic!("expected the exception frame");
        };
        assert_eq!(
            Response::decode_for(&read(), frame.pdu()),
            Ok(Response::Exception {
                function: 3,
                code: crate::pdu::ExceptionCode::ILLEGAL_DATA_ADDRESS
            })
        );
    }
}
