//! The RTU framer: finds CRC-checked frames in a byte stream with arrival times.
//!
//! Frame ends are found two ways: by the length the function code implies (so a
//! frame is delivered as soon as its last byte arrives), and by 3.5 character times
//! of silence (for functions whose length cannot be known). After noise the framer
//! resynchronises by sliding one byte at a time until a CRC-valid frame appears.
//!
//! What a silence inside a frame means depends on the mode. Strict (the letter of
//! the spec): a partial frame the line went silent on is dropped. Tolerant (the
//! default on a general-purpose OS): the arrival times are those of the *reads*, and
//! a reader or a writer descheduled for a few milliseconds makes silences the line
//! never had, so a silence only marks where a new frame *may* start: the bytes
//! before it are kept, and the CRC decides which reading is right (the frame that
//! continues across the silence, or the one that starts after it). Nothing here can
//! panic on any input; the fuzz target and a property test check it.

use super::adu::{CharTiming, MAX_ADU_LEN, crc_ok};

/// Which side of the line the framer listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Direction {
    /// A slave reading requests from the master.
    Request,
    /// A master reading responses from slaves.
    Response,
}

/// What the framer has seen, for health counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FramerCounters {
    /// Frames delivered with a good CRC.
    pub frames: u32,
    /// Candidate frames, starting on a frame boundary, whose CRC did not match.
    pub crc_errors: u32,
    /// Bytes discarded while resynchronising or because the line went silent mid-frame.
    pub noise_bytes: u32,
    /// Silences longer than 1.5 and shorter than 3.5 characters inside a frame.
    pub gap_violations: u32,
}

/// One CRC-checked frame, copied out of the framer.
#[derive(Clone, PartialEq, Eq)]
pub struct RtuFrame {
    len: u16,
    bytes: [u8; MAX_ADU_LEN],
}

impl core::fmt::Debug for RtuFrame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RtuFrame(unit {}, pdu {:02x?})", self.unit(), self.pdu())
    }
}

impl RtuFrame {
    /// The unit (slave address) byte.
    pub fn unit(&self) -> u8 {
        self.bytes[0]
    }

    /// The PDU, without unit and CRC.
    pub fn pdu(&self) -> &[u8] {
        &self.bytes[1..usize::from(self.len).saturating_sub(2).max(1)]
    }

    /// The whole frame as it was on the line.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

enum Length {
    /// More bytes are needed to know.
    Unknown,
    /// The frame is this long.
    Exactly(usize),
    /// Only silence can end this frame.
    AtSilence,
    /// No frame can start here.
    Impossible,
}

/// A receive-side RTU framer.
#[derive(Clone)]
pub struct RtuFramer {
    direction: Direction,
    timing: CharTiming,
    strict_gaps: bool,
    buf: [u8; MAX_ADU_LEN],
    len: usize,
    last_byte_us: Option<u64>,
    at_boundary: bool,
    /// Tolerant mode: index of the first byte after a silence inside a partial
    /// frame, where a new frame may start.
    resume_at: Option<usize>,
    counters: FramerCounters,
}

impl RtuFramer {
    /// A framer for `direction` on a line with `timing`.
    ///
    /// With `strict_gaps`, a silence over 1.5 characters inside a frame discards it
    /// (the letter of the spec). Without, such gaps are only counted, and a silence
    /// over 3.5 characters inside a frame of known length keeps the bytes before it
    /// (see the module docs): on a general-purpose OS the scheduler, not the line,
    /// makes most of them, and the CRC still guards the frame.
    pub fn new(direction: Direction, timing: CharTiming, strict_gaps: bool) -> Self {
        Self {
            direction,
            timing,
            strict_gaps,
            buf: [0; MAX_ADU_LEN],
            len: 0,
            last_byte_us: None,
            at_boundary: true,
            resume_at: None,
            counters: FramerCounters::default(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> FramerCounters {
        self.counters
    }

    /// Bytes held in a partial frame.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// When the line will have been silent for 3.5 characters (call [`Self::poll`]
    /// then), if a partial frame is pending.
    pub fn silence_deadline(&self) -> Option<u64> {
        match self.last_byte_us {
            Some(last) if self.len > 0 => Some(last + u64::from(self.timing.t3_5_us)),
            _ => None,
        }
    }

    /// When the last byte arrived.
    pub fn last_byte_us(&self) -> Option<u64> {
        self.last_byte_us
    }

    /// Forgets any partial frame (counted as noise), e.g. before sending a request.
    pub fn clear(&mut self) {
        self.discard_pending();
        self.at_boundary = true;
    }

    /// Gives up on a partial frame (the caller's response time is up): a frame that
    /// started on a boundary and never completed counts as a CRC error (a truncated
    /// frame), its bytes as noise.
    pub fn abandon(&mut self) {
        if self.at_boundary && self.len >= 4 {
            self.counters.crc_errors = self.counters.crc_errors.saturating_add(1);
        }
        self.clear();
    }

    /// Feeds one byte that arrived at `now_us`; returns a frame if it completed one.
    pub fn push(&mut self, byte: u8, now_us: u64) -> Option<RtuFrame> {
        let mut emitted = None;
        let mut silence_inside_frame = false;
        if let Some(last) = self.last_byte_us {
            let gap = now_us.saturating_sub(last);
            let only_silence_ends = matches!(self.expected_length(), Length::AtSilence);
            if self.len > 0
                && gap > u64::from(self.timing.t3_5_us)
                && (self.strict_gaps || only_silence_ends)
            {
                // The line went quiet mid-frame: whatever was pending was not a frame,
                // unless it is one of the frames only silence can end.
                emitted = self.poll(now_us);
            } else if self.len > 0 && gap > u64::from(self.timing.t3_5_us) {
                // Tolerant: maybe a late byte of the pending frame, maybe the first
                // byte of a new one. Keep both readings; the CRC picks one.
                self.counters.gap_violations = self.counters.gap_violations.saturating_add(1);
                silence_inside_frame = true;
            } else if self.len > 0 && gap > u64::from(self.timing.t1_5_us) {
                self.counters.gap_violations = self.counters.gap_violations.saturating_add(1);
                if self.strict_gaps {
                    self.discard_pending();
                }
            }
            if gap > u64::from(self.timing.t3_5_us) && self.len == 0 {
                self.at_boundary = true;
            }
        }
        self.last_byte_us = Some(now_us);
        if self.len == MAX_ADU_LEN {
            self.drop_front(1);
        }
        if silence_inside_frame {
            self.resume_at = Some(self.len);
        }
        self.buf[self.len] = byte;
        self.len += 1;
        let found = self.scan();
        emitted.or(found)
    }

    /// Feeds bytes that arrived together at `now_us` (one read from the port) and
    /// calls `on_frame` for each completed frame.
    pub fn push_bytes(&mut self, bytes: &[u8], now_us: u64, mut on_frame: impl FnMut(RtuFrame)) {
        for &byte in bytes {
            if let Some(frame) = self.push(byte, now_us) {
                on_frame(frame);
            }
        }
    }

    /// Tells the framer the time is `now_us`: after 3.5 characters of silence a
    /// pending frame of unknown length is delivered if its CRC is good. Anything
    /// else pending is discarded as noise in strict mode, and kept in tolerant mode
    /// (its last bytes may still be on their way: the caller's response timeout, or
    /// [`Self::abandon`], ends it).
    pub fn poll(&mut self, now_us: u64) -> Option<RtuFrame> {
        let deadline = self.silence_deadline()?;
        if now_us < deadline {
            return None;
        }
        let deliverable = matches!(self.expected_length(), Length::AtSilence);
        if !deliverable && !self.strict_gaps {
            return None;
        }
        let frame = if deliverable && self.len >= 4 && crc_ok(&self.buf[..self.len]) {
            Some(self.take(self.len))
        } else {
            if self.at_boundary && self.len >= 4 {
                self.counters.crc_errors = self.counters.crc_errors.saturating_add(1);
            }
            self.discard_pending();
            None
        };
        self.at_boundary = true;
        frame
    }

    fn scan(&mut self) -> Option<RtuFrame> {
        loop {
            match self.expected_length() {
                Length::AtSilence => return None,
                Length::Unknown | Length::Exactly(_) if self.frame_after_silence() => {
                    // The pending bytes were not the start of this frame after all.
                    self.skip_to_resume_point();
                }
                Length::Unknown => return None,
                Length::Impossible => self.resync(),
                Length::Exactly(n) if n > self.len => return None,
                Length::Exactly(n) => {
                    if crc_ok(&self.buf[..n]) {
                        let frame = self.take(n);
                        return Some(frame);
                    }
                    if self.at_boundary {
                        self.counters.crc_errors = self.counters.crc_errors.saturating_add(1);
                    }
                    self.resync();
                }
            }
            if self.len == 0 {
                return None;
            }
        }
    }

    /// Tolerant mode: whether a complete CRC-valid frame starts right after the
    /// silence inside the pending bytes.
    fn frame_after_silence(&self) -> bool {
        let Some(start) = self.resume_at else {
            return false;
        };
        let candidate = &self.buf[start..self.len];
        match self.expected_length_of(candidate) {
            Length::Exactly(n) => candidate.get(..n).is_some_and(crc_ok),
            _ => false,
        }
    }

    /// Drops the bytes before the silence (a truncated frame, counted) and goes on
    /// from the first byte after it.
    fn skip_to_resume_point(&mut self) {
        let Some(start) = self.resume_at.take() else {
            return;
        };
        if self.at_boundary && start >= 4 {
            self.counters.crc_errors = self.counters.crc_errors.saturating_add(1);
        }
        self.counters.noise_bytes = self.counters.noise_bytes.saturating_add(start as u32);
        self.drop_front(start);
        self.at_boundary = true;
    }

    fn expected_length(&self) -> Length {
        self.expected_length_of(&self.buf[..self.len])
    }

    fn expected_length_of(&self, buf: &[u8]) -> Length {
        let Some(&function) = buf.get(1) else {
            return Length::Unknown;
        };
        let at = |index: usize, base: usize| match buf.get(index) {
            Some(&count) => Length::Exactly(base + usize::from(count)),
            None => Length::Unknown,
        };
        let length = match self.direction {
            Direction::Response => match function {
                0x81..=0xFF => Length::Exactly(5),
                0x01..=0x04 | 0x17 => at(2, 5),
                0x05 | 0x06 | 0x0F | 0x10 => Length::Exactly(8),
                _ => Length::Impossible,
            },
            Direction::Request => match function {
                0x01..=0x06 => Length::Exactly(8),
                0x0F | 0x10 => at(6, 9),
                0x17 => at(10, 13),
                0x07 | 0x0B | 0x0C | 0x11 => Length::Exactly(4),
                0x00 | 0x80..=0xFF => Length::Impossible,
                _ => Length::AtSilence,
            },
        };
        match length {
            Length::Exactly(n) if n > MAX_ADU_LEN => Length::Impossible,
            other => other,
        }
    }

    fn take(&mut self, n: usize) -> RtuFrame {
        let mut frame = RtuFrame {
            len: n as u16,
            bytes: [0; MAX_ADU_LEN],
        };
        frame.bytes[..n].copy_from_slice(&self.buf[..n]);
        self.drop_front(n);
        self.counters.frames = self.counters.frames.saturating_add(1);
        self.at_boundary = true;
        frame
    }

    fn resync(&mut self) {
        self.counters.noise_bytes = self.counters.noise_bytes.saturating_add(1);
        // Sliding onto the first byte after a silence lands on a frame boundary.
        let onto_boundary = self.resume_at == Some(1);
        self.drop_front(1);
        self.at_boundary = onto_boundary;
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
        self.resume_at = self
            .resume_at
            .and_then(|start| start.checked_sub(n))
            .filter(|&start| start > 0 && start < self.len);
    }

    fn discard_pending(&mut self) {
        self.counters.noise_bytes = self.counters.noise_bytes.saturating_add(self.len as u32);
        self.len = 0;
        self.resume_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtu::adu::encode_adu;

    const TIMING: CharTiming = CharTiming::for_line(9600, 11);

    fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_ADU_LEN];
        let len = encode_adu(unit, pdu, &mut out).expect("fits");
        out[..len].to_vec()
    }

    fn feed(framer: &mut RtuFramer, bytes: &[u8], start_us: u64) -> Vec<RtuFrame> {
        let mut frames = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            let at = start_us + i as u64 * u64::from(TIMING.char_us);
            frames.extend(framer.push(b, at));
        }
        frames
    }

    #[test]
    fn write_multiple_registers_request_is_framed_by_its_byte_count() {
        // The request modbus-core 0.2's RTU server drops (it reads the byte count at
        // the wrong offset): ours uses byte 6.
        let pdu = [0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02];
        let mut framer = RtuFramer::new(Direction::Request, TIMING, false);
        let frames = feed(&mut framer, &adu(7, &pdu), 0);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].unit(), 7);
        assert_eq!(frames[0].pdu(), &pdu);
    }

    #[test]
    fn resynchronises_after_noise_and_counts_it() {
        let good = adu(1, &[0x03, 0x04, 0x00, 0x01, 0x00, 0x02]);
        let mut bytes = vec![0x55, 0xAA, 0x01];
        bytes.extend_from_slice(&good);
        let mut framer = RtuFramer::new(Direction::Response, TIMING, false);
        let frames = feed(&mut framer, &bytes, 0);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_bytes(), &good[..]);
        assert_eq!(framer.counters().noise_bytes, 3);
    }

    #[test]
    fn corrupt_crc_is_counted_and_next_frame_after_silence_is_good() {
        let mut bad = adu(1, &[0x03, 0x02, 0x12, 0x34]);
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        for strict in [true, false] {
            let mut framer = RtuFramer::new(Direction::Response, TIMING, strict);
            assert!(feed(&mut framer, &bad, 0).is_empty());
            assert_eq!(framer.counters().crc_errors, 1);
            let later = 100_000;
            assert_eq!(framer.poll(later), None);
            // Strict: silence drops what resynchronisation left; tolerant keeps it
            // until the CRC rules it out.
            assert_eq!(framer.pending() == 0, strict);
            let good = adu(1, &[0x03, 0x02, 0x12, 0x34]);
            let frames = feed(&mut framer, &good, later);
            assert_eq!(frames.len(), 1, "strict {strict}");
            assert_eq!(frames[0].as_bytes(), &good[..]);
            assert_eq!(framer.pending(), 0);
        }
    }

    #[test]
    fn silence_discards_a_partial_frame_and_ends_an_unknown_one() {
        let mut framer = RtuFramer::new(Direction::Response, TIMING, false);
        let good = adu(2, &[0x03, 0x02, 0x00, 0x05]);
        assert!(feed(&mut framer, &good[..4], 0).is_empty());
        // 3.5 characters of silence: the partial frame is noise, the next one is good.
        let frames = feed(&mut framer, &good, 50_000);
        assert_eq!(frames.len(), 1);
        assert_eq!(framer.counters().noise_bytes, 4);

        // A request of a function whose length only silence tells (0x2B).
        let mut framer = RtuFramer::new(Direction::Request, TIMING, false);
        let odd = adu(3, &[0x2B, 0x0E, 0x01, 0x00]);
        assert!(feed(&mut framer, &odd, 0).is_empty());
        let deadline = framer.silence_deadline().expect("pending");
        let frame = framer.poll(deadline).expect("delivered at silence");
        assert_eq!(frame.pdu(), &[0x2B, 0x0E, 0x01, 0x00]);
    }

    #[test]
    fn tolerant_mode_keeps_a_frame_across_a_scheduler_pause() {
        // Regression: a reader descheduled for 5 ms in the middle of an answer saw a
        // silence the line never had, and the answer was dropped as noise (the
        // "garbled answers on a loaded pty" defect).
        let good = adu(1, &[0x03, 0x04, 0x00, 0x07, 0x00, 0x08]);
        let pause = 5_000;
        for (strict, expected) in [(true, 0), (false, 1)] {
            let mut framer = RtuFramer::new(Direction::Response, TIMING, strict);
            let mut frames = feed(&mut framer, &good[..5], 0);
            assert_eq!(framer.poll(5 * u64::from(TIMING.char_us) + pause), None);
            frames.extend(feed(&mut framer, &good[5..], 5 * 1146 + pause));
            assert_eq!(frames.len(), expected, "strict {strict}");
            if let Some(frame) = frames.first() {
                assert_eq!(frame.as_bytes(), &good[..]);
                assert_eq!(framer.counters().noise_bytes, 0);
            }
        }
    }

    #[test]
    fn tolerant_mode_finds_a_frame_after_a_silence_behind_a_bogus_long_one() {
        // Noise that looks like the start of a long write (function 16, 200 bytes),
        // then silence, then a real request: the request is found without waiting
        // for the bogus frame's 200 bytes.
        let mut framer = RtuFramer::new(Direction::Request, TIMING, false);
        assert!(feed(&mut framer, &[0x01, 0x10, 0, 0, 0, 100, 200], 0).is_empty());
        let request = adu(1, &[0x03, 0x00, 0x00, 0x00, 0x02]);
        let frames = feed(&mut framer, &request, 100_000);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_bytes(), &request[..]);
        assert_eq!(framer.counters().noise_bytes, 7);
        assert_eq!(framer.counters().crc_errors, 1);
        assert_eq!(framer.pending(), 0);
    }

    #[test]
    fn strict_gaps_discard_a_frame_with_a_long_pause_inside() {
        let good = adu(1, &[0x06, 0x00, 0x01, 0x00, 0x03]);
        let gap = u64::from(TIMING.t1_5_us) + 200;
        for (strict, expected) in [(true, 0), (false, 1)] {
            let mut framer = RtuFramer::new(Direction::Request, TIMING, strict);
            let mut frames = feed(&mut framer, &good[..3], 0);
            frames.extend(feed(
                &mut framer,
                &good[3..],
                3 * u64::from(TIMING.char_us) + gap,
            ));
            assert_eq!(frames.len(), expected, "strict {strict}");
            assert_eq!(framer.counters().gap_violations, 1);
        }
    }
}
