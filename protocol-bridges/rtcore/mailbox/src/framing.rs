//! Framing on the mailbox UART: `COBS(postcard(message) ‖ CRC-16) ‖ 0x00`.
//!
//! COBS removes every 0x00 from the frame body, so 0x00 only ever ends a frame and a
//! receiver that starts mid-stream (or after noise) resynchronises at the next one.
//! The CRC is the Modbus CRC-16 (`warden_modbus::rtu::crc16`), low byte first. A frame
//! longer than [`crate::MAX_FRAME_LEN`] is discarded up to its delimiter.

use serde::{Deserialize, Serialize};
use warden_modbus::rtu::crc16;

use crate::limits::{MAX_FRAME_LEN, MAX_MESSAGE_LEN};

/// Why a frame could not be built or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// The message encodes to more than [`MAX_MESSAGE_LEN`] bytes.
    MessageTooLong,
    /// The output buffer is smaller than the frame.
    BufferTooSmall,
    /// More than [`MAX_FRAME_LEN`] bytes arrived without a delimiter.
    Oversized,
    /// The bytes between two delimiters are not valid COBS.
    BadCobs,
    /// The CRC does not match.
    BadCrc,
    /// The frame is shorter than a CRC.
    TooShort,
    /// The payload is not a message of the expected type.
    BadMessage,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::MessageTooLong => "mailbox message is longer than 320 bytes",
            Self::BufferTooSmall => "mailbox output buffer is too small",
            Self::Oversized => "mailbox frame is longer than its limit",
            Self::BadCobs => "mailbox frame is not valid cobs",
            Self::BadCrc => "mailbox frame crc does not match",
            Self::TooShort => "mailbox frame is shorter than its crc",
            Self::BadMessage => "mailbox frame does not hold a valid message",
        })
    }
}

impl core::error::Error for FrameError {}

/// Encodes `message` as one frame (delimiter included) into `out`; returns its length.
pub fn encode_frame<M: Serialize>(message: &M, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut raw = [0u8; MAX_MESSAGE_LEN + 2];
    let len = postcard::to_slice(message, &mut raw[..MAX_MESSAGE_LEN])
        .map_err(|_| FrameError::MessageTooLong)?
        .len();
    let crc = crc16(&raw[..len]).to_le_bytes();
    raw[len..len + 2].copy_from_slice(&crc);
    let encoded = cobs::try_encode(&raw[..len + 2], out).map_err(|_| FrameError::BufferTooSmall)?;
    let delimiter = out.get_mut(encoded).ok_or(FrameError::BufferTooSmall)?;
    *delimiter = 0;
    Ok(encoded + 1)
}

/// Decodes a payload returned by [`FrameDecoder::push`] as a message.
pub fn decode_message<'a, M: Deserialize<'a>>(payload: &'a [u8]) -> Result<M, FrameError> {
    postcard::from_bytes(payload).map_err(|_| FrameError::BadMessage)
}

/// Frames dropped by a [`FrameDecoder`], by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FramingCounters {
    /// Good frames delivered.
    pub frames: u32,
    /// Frames with a bad CRC.
    pub crc_errors: u32,
    /// Frames that were not valid COBS or too short.
    pub malformed: u32,
    /// Frames longer than the limit.
    pub oversized: u32,
}

/// Reassembles frames from bytes as they arrive; bounded, no allocation.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME_LEN],
    len: usize,
    overflowed: bool,
    counters: FramingCounters,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_FRAME_LEN],
            len: 0,
            overflowed: false,
            counters: FramingCounters {
                frames: 0,
                crc_errors: 0,
                malformed: 0,
                oversized: 0,
            },
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> FramingCounters {
        self.counters
    }

    /// Feeds one byte. At a delimiter returns the payload (postcard bytes, CRC
    /// checked and removed) or why the frame was dropped; `Ok(None)` otherwise (and
    /// for empty frames, which senders may use to resynchronise the receiver).
    pub fn push(&mut self, byte: u8) -> Result<Option<&[u8]>, FrameError> {
        if byte != 0 {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return Ok(None);
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflowed) {
            self.counters.oversized = self.counters.oversized.saturating_add(1);
            return Err(FrameError::Oversized);
        }
        if len == 0 {
            return Ok(None);
        }
        let Ok(decoded) = cobs::decode_in_place(&mut self.buf[..len]) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return Err(FrameError::BadCobs);
        };
        let Some(body_len) = decoded.checked_sub(2).filter(|n| *n > 0) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return Err(FrameError::TooShort);
        };
        let crc = [self.buf[body_len], self.buf[body_len + 1]];
        if crc16(&self.buf[..body_len]).to_le_bytes() != crc {
            self.counters.crc_errors = self.counters.crc_errors.saturating_add(1);
            return Err(FrameError::BadCrc);
        }
        self.counters.frames = self.counters.frames.saturating_add(1);
        Ok(Some(&self.buf[..body_len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        BundleRefusal, CoreCounters, FromCore, LineSettings, Outcome, Parity, RequestSource, ToCore,
    };
    use crate::{BUNDLE_CHUNK_LEN, MAX_BUNDLE_LEN};
    use proptest::prelude::*;

    fn frame<M: Serialize>(message: &M) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(message, &mut out).expect("fits");
        out[..len].to_vec()
    }

    /// Feeds `bytes`; returns the decoded messages and the errors, in order.
    fn feed(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        for &byte in bytes {
            match decoder.push(byte) {
                Ok(Some(payload)) => out.push(Ok(payload.to_vec())),
                Ok(None) => {}
                Err(error) => out.push(Err(error)),
            }
        }
        out
    }

    fn every_message() -> Vec<ToCore<'static>> {
        vec![
            ToCore::Hello,
            ToCore::Configure {
                line: LineSettings {
                    baud: 19_200,
                    parity: Parity::Even,
                    stop_bits: 1,
                    response_timeout_ms: 200,
                    retries: 2,
                },
                bridge: "line2",
            },
            ToCore::BundleBegin { len: 515 },
            ToCore::BundleChunk {
                offset: 192,
                data: &[0u8; BUNDLE_CHUNK_LEN],
            },
            ToCore::BundleCommit,
            ToCore::Transact {
                id: u32::MAX,
                unit: 247,
                source: RequestSource::Cloud,
                pdu: &[0x10, 0, 5, 0, 123, 246],
            },
            ToCore::ReadCounters,
        ]
    }

    #[test]
    fn every_request_round_trips_and_has_no_zero_inside() {
        let mut decoder = FrameDecoder::new();
        for message in every_message() {
            let bytes = frame(&message);
            assert_eq!(bytes.iter().position(|b| *b == 0), Some(bytes.len() - 1));
            let got = feed(&mut decoder, &bytes);
            let [Ok(payload)] = got.as_slice() else {
                panic!("one frame expected, got {got:?}");
            };
            assert_eq!(decode_message::<ToCore<'_>>(payload), Ok(message));
        }
        assert_eq!(decoder.counters().frames, 7);
    }

    #[test]
    fn answers_round_trip() {
        let pdu = [0x03, 250]
            .iter()
            .chain(&[0xAB; 250])
            .copied()
            .collect::<Vec<u8>>();
        let answers = [
            FromCore::Ready {
                protocol: crate::PROTOCOL_VERSION,
                configured: false,
                policy_version: None,
            },
            FromCore::BundleRefused {
                reason: BundleRefusal::SignatureInvalid,
            },
            FromCore::BundleAccepted { version: 7 },
            FromCore::Outcome {
                id: 9,
                outcome: Outcome::Response { pdu: &pdu },
            },
            FromCore::Outcome {
                id: 10,
                outcome: Outcome::Denied {
                    reason: 7,
                    rule: Some(3),
                },
            },
            FromCore::Counters(CoreCounters {
                requests: u32::MAX,
                crc_errors: 5,
                ..CoreCounters::default()
            }),
        ];
        let mut decoder = FrameDecoder::new();
        for answer in answers {
            let got = feed(&mut decoder, &frame(&answer));
            let [Ok(payload)] = got.as_slice() else {
                panic!("one frame expected, got {got:?}");
            };
            assert_eq!(decode_message::<FromCore<'_>>(payload), Ok(answer));
        }
    }

    #[test]
    fn the_largest_response_fits_a_frame() {
        // A 125-register read answer: 2 + 250 bytes of PDU.
        let pdu = [0x55u8; warden_modbus::MAX_PDU_LEN];
        let message = FromCore::Outcome {
            id: u32::MAX,
            outcome: Outcome::Response { pdu: &pdu },
        };
        assert!(frame(&message).len() <= MAX_FRAME_LEN);
        // Bundle chunks fit too, and a whole bundle needs a bounded number of them.
        let chunk = ToCore::BundleChunk {
            offset: MAX_BUNDLE_LEN as u32,
            data: &[0xFF; BUNDLE_CHUNK_LEN],
        };
        assert!(frame(&chunk).len() <= MAX_FRAME_LEN);
    }

    #[test]
    fn a_message_too_long_is_refused_when_encoding() {
        let pdu = [1u8; MAX_MESSAGE_LEN];
        let message = FromCore::Outcome {
            id: 1,
            outcome: Outcome::Response { pdu: &pdu },
        };
        let mut out = [0u8; 2 * MAX_FRAME_LEN];
        assert_eq!(
            encode_frame(&message, &mut out),
            Err(FrameError::MessageTooLong)
        );
        let mut small = [0u8; 4];
        assert_eq!(
            encode_frame(&ToCore::ReadCounters, &mut small[..2]),
            Err(FrameError::BufferTooSmall)
        );
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error_and_the_next_frame_still_decodes() {
        let mut bytes = frame(&ToCore::Hello);
        bytes[1] ^= 0x04;
        if bytes[1] == 0 {
            bytes[1] = 0x40;
        }
        bytes.extend(frame(&ToCore::ReadCounters));
        let mut decoder = FrameDecoder::new();
        let got = feed(&mut decoder, &bytes);
        assert!(matches!(
            got[0],
            Err(FrameError::BadCrc | FrameError::BadCobs)
        ));
        assert_eq!(
            decode_message::<ToCore<'_>>(got[1].as_ref().expect("second frame")),
            Ok(ToCore::ReadCounters)
        );
    }

    #[test]
    fn an_endless_frame_is_dropped_at_its_delimiter() {
        let mut bytes = vec![0x42u8; 3 * MAX_FRAME_LEN];
        bytes.push(0);
        bytes.extend(frame(&ToCore::Hello));
        let mut decoder = FrameDecoder::new();
        let got = feed(&mut decoder, &bytes);
        assert_eq!(got[0], Err(FrameError::Oversized));
        assert_eq!(
            decode_message::<ToCore<'_>>(got[1].as_ref().expect("next frame")),
            Ok(ToCore::Hello)
        );
        assert_eq!(decoder.counters().oversized, 1);
    }

    #[test]
    fn a_valid_frame_of_the_wrong_type_is_a_bad_message() {
        let bytes = frame(&FromCore::Counters(CoreCounters::default()));
        let mut decoder = FrameDecoder::new();
        let got = feed(&mut decoder, &bytes);
        let payload = got[0].as_ref().expect("crc is fine");
        // Tag 6 of FromCore is not a ToCore variant with these bytes.
        let as_request = decode_message::<ToCore<'_>>(payload);
        assert!(as_request.is_err() || as_request != Ok(ToCore::Hello));
        assert_eq!(
            decode_message::<FromCore<'_>>(&[0xFF]),
            Err(FrameError::BadMessage)
        );
    }

    #[test]
    fn the_fuzz_harness_runs_on_every_message() {
        let mut stream = vec![0x42, 0x00];
        for message in every_message() {
            stream.extend(frame(&message));
        }
        crate::fuzz_harness::mailbox_frames(&stream);
    }

    proptest! {
        /// The fuzz target's harness (`mailbox/fuzz`, target `mailbox_frames`).
        #[test]
        fn the_fuzz_harness_holds_on_noise_and_mutated_frames(
            noise in proptest::collection::vec(any::<u8>(), 0..600),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            crate::fuzz_harness::mailbox_frames(&noise);
            let mut stream = Vec::new();
            for message in every_message() {
                stream.extend(frame(&message));
            }
            let at = at.index(stream.len());
            stream[at] = value;
            crate::fuzz_harness::mailbox_frames(&stream);
        }

        #[test]
        fn random_bytes_never_panic_and_never_pass_a_wrong_crc(
            noise in proptest::collection::vec(any::<u8>(), 0..2000)
        ) {
            let mut decoder = FrameDecoder::new();
            for byte in noise {
                if let Ok(Some(payload)) = decoder.push(byte) {
                    // Whatever got through has a good CRC: decoding it must not panic.
                    let _ = decode_message::<ToCore<'_>>(payload);
                }
            }
        }

        #[test]
        fn transactions_round_trip(
            id in any::<u32>(),
            unit in any::<u8>(),
            pdu in proptest::collection::vec(any::<u8>(), 1..=253),
        ) {
            let message = ToCore::Transact { id, unit, source: RequestSource::Facade, pdu: &pdu };
            let bytes = frame(&message);
            let mut decoder = FrameDecoder::new();
            let got = feed(&mut decoder, &bytes);
            prop_assert_eq!(got.len(), 1);
            let payload = got[0].as_ref().expect("good frame");
            prop_assert_eq!(decode_message::<ToCore<'_>>(payload), Ok(message));
        }
    }
}
