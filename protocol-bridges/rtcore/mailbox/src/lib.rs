#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod framing;
pub mod fuzz_harness;
pub mod message;

pub use framing::{FrameDecoder, FrameError, FramingCounters, encode_frame};
pub use message::{
    BundleRefusal, CoreCounters, FromCore, LineSettings, Outcome, Parity, RequestSource, ToCore,
};

/// Version of the message set; the core reports it in [`FromCore::Ready`] and the
/// application side refuses a core that speaks another.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message (postcard bytes before the CRC and COBS).
pub const MAX_MESSAGE_LEN: usize = 320;

/// Largest frame on the wire: COBS of a message and its CRC, plus the 0x00 delimiter.
pub const MAX_FRAME_LEN: usize = MAX_MESSAGE_LEN + 2 + MAX_MESSAGE_LEN.div_ceil(254) + 2;

/// Bundle bytes carried by one [`ToCore::BundleChunk`].
pub const BUNDLE_CHUNK_LEN: usize = 192;

/// Largest policy bundle the core accepts (its receive buffer).
pub const MAX_BUNDLE_LEN: usize = 8 * 1024;
