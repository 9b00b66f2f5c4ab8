//! Fuzz harness for the mailbox framing, as a plain function (no_std, no allocation).
//!
//! `protocol-bridges/rtcore/mailbox/fuzz` (target `mailbox_frames`) calls it; a
//! property test runs it under `cargo test` too. It panics only if an invariant breaks.

use serde::Serialize;

use crate::framing::{FrameDecoder, FrameError, decode_message, encode_frame};
use crate::limits::{MAX_FRAME_LEN, MAX_MESSAGE_LEN};
use crate::message::{FromCore, ToCore};

/// Feeds `data` to a frame decoder byte by byte; every payload that gets through is
/// decoded as both directions' messages. A decoded message must encode again (unless
/// its payload was longer than a message may be) and come back unchanged; the
/// counters add up to the frames and errors seen.
pub fn mailbox_frames(data: &[u8]) {
    let mut decoder = FrameDecoder::new();
    let (mut good, mut errors) = (0_u32, 0_u32);
    for &byte in data {
        match decoder.push(byte) {
            Ok(Some(payload)) => {
                good += 1;
                assert!(!payload.is_empty() && payload.len() <= MAX_FRAME_LEN);
                if let Ok(message) = decode_message::<ToCore<'_>>(payload) {
                    round_trip(&message, payload.len(), |bytes| {
                        decode_message::<ToCore<'_>>(bytes) == Ok(message)
                    });
                }
                if let Ok(message) = decode_message::<FromCore<'_>>(payload) {
                    round_trip(&message, payload.len(), |bytes| {
                        decode_message::<FromCore<'_>>(bytes) == Ok(message)
                    });
                }
            }
            Ok(None) => {}
            Err(_) => errors += 1,
        }
    }
    let counters = decoder.counters();
    assert_eq!(counters.frames, good);
    assert_eq!(
        counters.crc_errors + counters.malformed + counters.oversized,
        errors
    );
}

/// Encodes `message` as a frame, decodes the frame and checks `same` on its payload.
fn round_trip<M: Serialize>(message: &M, payload_len: usize, same: impl Fn(&[u8]) -> bool) {
    let mut out = [0_u8; MAX_FRAME_LEN];
    let len = match encode_frame(message, &mut out) {
        Ok(len) => len,
        // The decoder takes payloads a few bytes over what the encoder writes; postcard
        // re-encodes minimally, so only such a payload may fail to encode again.
        Err(FrameError::MessageTooLong) => {
            assert!(
                payload_len > MAX_MESSAGE_LEN,
                "a decoded message encodes again"
            );
            return;
        }
        Err(error) => panic!("encoding a decoded message failed: {error}"),
    };
    let mut decoder = FrameDecoder::new();
    let mut payloads = 0;
    for &byte in &out[..len] {
        match decoder.push(byte) {
            Ok(Some(payload)) => {
                payloads += 1;
                assert!(same(payload), "round trip changed the message");
            }
            Ok(None) => {}
            Err(error) => panic!("an encoded frame does not decode: {error}"),
        }
    }
    assert_eq!(payloads, 1, "one frame per message");
}
