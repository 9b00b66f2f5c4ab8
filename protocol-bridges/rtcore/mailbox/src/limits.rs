//! The mailbox's size limits: what framing, messages and both cores agree on.

/// Largest encoded message (postcard bytes before the CRC and COBS).
pub const MAX_MESSAGE_LEN: usize = 320;

/// Largest frame on the wire: COBS of a message and its CRC, plus the 0x00 delimiter.
pub const MAX_FRAME_LEN: usize = MAX_MESSAGE_LEN + 2 + MAX_MESSAGE_LEN.div_ceil(254) + 2;

/// Bundle bytes carried by one [`crate::message::ToCore::BundleChunk`].
pub const BUNDLE_CHUNK_LEN: usize = 192;

/// Largest policy bundle the core accepts (its receive buffer).
pub const MAX_BUNDLE_LEN: usize = 8 * 1024;
