//! IPC frames between the monitor and compartments: length-prefixed postcard.
//!
//! A frame is a little-endian `u32` length then that many postcard bytes; a length
//! above [`MAX_FRAME_LEN`] or a body that does not decode is an error, and the reader
//! closes that channel.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest frame body accepted, in bytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// A compartment's message to the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMonitor {
    /// Still alive.
    Heartbeat,
    /// The kernel refused something (reported by the compartment's own code).
    Denied {
        /// What was attempted.
        action: String,
        /// The errno returned.
        errno: i32,
    },
    /// The panic hook's last words.
    Panic {
        /// Message and location.
        message: String,
        /// The backtrace.
        backtrace: String,
    },
    /// The sandbox could not be applied; the compartment exits next.
    SandboxFailed {
        /// The error.
        detail: String,
    },
    /// A frame from a peer did not decode; that channel was closed.
    PeerFrameRejected {
        /// The peer.
        peer: String,
        /// Why.
        detail: String,
    },
    /// Asks for an IPC channel to a peer compartment.
    OpenChannel {
        /// The peer's compartment name.
        peer: String,
    },
}

/// The monitor's message to a compartment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCompartment {
    /// The manifest does not let this compartment call that peer.
    ChannelDenied {
        /// The peer asked for.
        peer: String,
    },
    /// The peer is granted; the channel's end comes attached (`SCM_RIGHTS`).
    ChannelGranted {
        /// The peer asked for.
        peer: String,
    },
    /// A peer opened a channel to this compartment; its end comes attached.
    ChannelOffered {
        /// The compartment that asked.
        peer: String,
    },
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The channel failed.
    #[error("channel: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is over the limit.
    #[error("frame of {length} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLong {
        /// The announced length.
        length: usize,
    },
    /// The body is not a valid message.
    #[error("frame body does not decode: {0}")]
    Decode(postcard::Error),
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), FrameError> {
    writer.write_all(&encode_frame(message)?)?;
    Ok(())
}

/// One frame's bytes: length prefix and body.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(message).map_err(FrameError::Decode)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { length: body.len() });
    }
    let length =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLong { length: body.len() })?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Decodes a frame body that [`read_frame`]'s length rules already admitted.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Decode)
}

/// Reads one frame; `Ok(None)` when the peer closed the channel between frames.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut prefix = [0_u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..])? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            count => filled += count,
        }
    }
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { length });
    }
    let mut body = vec![0_u8; length];
    reader.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(FrameError::Decode)
}

/// [`read_frame`] for an async reader (a peer channel under tokio): the same limit,
/// the same errors.
pub async fn read_frame_async<T: DeserializeOwned>(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<T>, FrameError> {
    use tokio::io::AsyncReadExt as _;
    let mut prefix = [0_u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            count => filled += count,
        }
    }
    let length = u32::from_le_bytes(prefix) as usize;
    if length > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { length });
    }
    let mut body = vec![0_u8; length];
    reader.read_exact(&mut body).await?;
    decode_body(&body).map(Some)
}

/// [`write_frame`] for an async writer.
pub async fn write_frame_async<T: Serialize>(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt as _;
    writer.write_all(&encode_frame(message)?).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &ToMonitor::Heartbeat).expect("write");
        let message: Option<ToMonitor> = read_frame(&mut bytes.as_slice()).expect("read");
        assert_eq!(message, Some(ToMonitor::Heartbeat));
        let empty: Option<ToMonitor> = read_frame(&mut [].as_slice()).expect("eof");
        assert_eq!(empty, None);
        let long = [0xff_u8, 0xff, 0xff, 0x7f];
        assert!(matches!(
            read_frame::<ToMonitor>(&mut long.as_slice()),
            Err(FrameError::TooLong { .. })
        ));
        let garbage = [2_u8, 0, 0, 0, 0xee, 0xee];
        assert!(matches!(
            read_frame::<ToMonitor>(&mut garbage.as_slice()),
            Err(FrameError::Decode(_))
        ));
    }

    proptest::proptest! {
        /// Any bytes at all: a message, a clean end, or an error; never a panic, and
        /// never an allocation above the frame limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut reader = bytes.as_slice();
            for _ in 0..8 {
                match read_frame::<ToMonitor>(&mut reader) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
