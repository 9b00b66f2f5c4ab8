#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod framing;
pub mod fuzz_harness;
pub mod limits;
pub mod message;

pub use framing::{FrameDecoder, FrameError, FramingCounters, encode_frame};
pub use limits::{BUNDLE_CHUNK_LEN, MAX_BUNDLE_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN};
pub use message::{
    BundleRefusal, CoreCounters, FromCore, LineSettings, Outcome, Parity, RequestSource, ToCore,
};

/// Version of the message set; the core reports it in [`FromCore::Ready`] and the
/// application side refuses a core that speaks another.
pub const PROTOCOL_VERSION: u16 = 1;
