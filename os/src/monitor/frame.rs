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
    /// An update was installed (or a trial given up): end the run so the boot stage
    /// boots again. Honoured only from a compartment the manifest grants
    /// `restart_for_update`, and only when the boot state has something new to boot.
    RestartForUpdate,
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

/// Decodes a frame body that the length rules already admitted.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Decode)
}

/// Bytes of a frame's length prefix.
pub const PREFIX_LEN: usize = 4;

/// Reassembles frames from bytes as they arrive, without doing any I/O itself: push
/// bytes in ([`Self::push`]), take frames out ([`Self::next_frame`]).
///
/// The one frame reader of the monitor's channels: [`read_frame`], [`read_frame_async`]
/// and [`super::channel::recv_frame_with_fd`] only move bytes into it. They read at most
/// [`Self::wanted`] bytes at a time, so a read never takes bytes (or an attached
/// descriptor) of the next frame. A length above [`MAX_FRAME_LEN`] is refused as soon
/// as its prefix is complete, before any of its body is buffered. After an error the
/// stream is out of step; callers close the channel.
#[derive(Debug, Default, Clone)]
pub struct FrameDecoder {
    /// Bytes received and not yet returned as frames.
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder, between frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The announced body length of the frame at the front, once its prefix is complete.
    fn announced(&self) -> Option<usize> {
        let prefix = self.buffer.get(..PREFIX_LEN)?;
        let prefix = <[u8; PREFIX_LEN]>::try_from(prefix).ok()?;
        usize::try_from(u32::from_le_bytes(prefix)).ok()
    }

    /// How many more bytes complete the frame at the front (its prefix first, then its
    /// body); 0 when a frame (or an error) is ready for [`Self::next_frame`].
    pub fn wanted(&self) -> usize {
        match self.announced() {
            None => PREFIX_LEN - self.buffer.len(),
            Some(length) if length > MAX_FRAME_LEN => 0,
            Some(length) => (PREFIX_LEN + length).saturating_sub(self.buffer.len()),
        }
    }

    /// Whether no part of a frame is buffered (a channel closing here closes cleanly).
    pub fn is_between_frames(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The next complete frame's body, removed from the buffer; `Ok(None)` until one is
    /// complete. [`FrameError::TooLong`] as soon as a prefix announces too much.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(length) = self.announced() else {
            return Ok(None);
        };
        if length > MAX_FRAME_LEN {
            return Err(FrameError::TooLong { length });
        }
        let end = PREFIX_LEN + length;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let body = self.buffer[PREFIX_LEN..end].to_vec();
        self.buffer.drain(..end);
        Ok(Some(body))
    }

    /// The next complete frame, decoded; `Ok(None)` until one is complete. A body that
    /// does not decode is consumed and returned as [`FrameError::Decode`].
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.next_body()?.map(|body| decode_body(&body)).transpose()
    }

    /// The channel ended: fine between frames, an `UnexpectedEof` I/O error (as a
    /// closed channel reads) in the middle of one.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.is_between_frames() {
            return Ok(());
        }
        let expected = self
            .announced()
            .map_or("its length prefix".to_owned(), |length| {
                format!("{} bytes", PREFIX_LEN + length)
            });
        Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "channel closed after {} bytes of a frame, expected {expected}",
                self.buffer.len()
            ),
        )))
    }
}

/// Reads one frame; `Ok(None)` when the peer closed the channel between frames.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, FrameError> {
    read_frame_with(|buffer| reader.read(buffer))
}

/// The blocking readers' one loop: `read` fills part of the buffer it is given (never
/// more than the frame still needs) and returns how much, 0 at the end of the channel.
pub(crate) fn read_frame_with<T: DeserializeOwned>(
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> Result<Option<T>, FrameError> {
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0_u8; READ_CHUNK];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let want = decoder.wanted().min(chunk.len());
        match read(&mut chunk[..want])? {
            0 => return decoder.finish().map(|()| None),
            count => decoder.push(&chunk[..count]),
        }
    }
}

/// Bytes read from a channel at most at once.
const READ_CHUNK: usize = 4096;

/// [`read_frame`] for an async reader (a peer channel under tokio): the same decoder,
/// the same limit, the same errors.
pub async fn read_frame_async<T: DeserializeOwned>(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<T>, FrameError> {
    use tokio::io::AsyncReadExt as _;
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0_u8; READ_CHUNK];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let want = decoder.wanted().min(chunk.len());
        match reader.read(&mut chunk[..want]).await? {
            0 => return decoder.finish().map(|()| None),
            count => decoder.push(&chunk[..count]),
        }
    }
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

    #[test]
    fn the_decoder_takes_bytes_in_any_chunks_and_asks_only_for_what_it_needs() {
        let mut stream = encode_frame(&ToMonitor::Heartbeat).expect("encode");
        let denied = ToMonitor::Denied {
            action: "open /etc/shadow".to_owned(),
            errno: 13,
        };
        stream.extend(encode_frame(&denied).expect("encode"));
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.wanted(), PREFIX_LEN);
        let mut frames = Vec::new();
        for byte in &stream {
            assert!(
                decoder.wanted() > 0,
                "asks for bytes until a frame is complete"
            );
            decoder.push(std::slice::from_ref(byte));
            if let Some(frame) = decoder.next_frame::<ToMonitor>().expect("valid") {
                frames.push(frame);
                assert!(decoder.is_between_frames());
            }
        }
        assert_eq!(frames, [ToMonitor::Heartbeat, denied.clone()]);
        decoder.finish().expect("clean end between frames");

        let mut whole = FrameDecoder::new();
        whole.push(&stream);
        assert_eq!(
            whole.next_frame::<ToMonitor>().expect("first"),
            Some(ToMonitor::Heartbeat)
        );
        assert_eq!(
            whole.next_frame::<ToMonitor>().expect("second"),
            Some(denied)
        );
        assert_eq!(whole.next_frame::<ToMonitor>().expect("none"), None);
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body_and_a_cut_frame_is_named() {
        let mut decoder = FrameDecoder::new();
        decoder.push(
            &u32::try_from(MAX_FRAME_LEN + 1)
                .expect("fits")
                .to_le_bytes(),
        );
        assert_eq!(
            decoder.wanted(),
            0,
            "nothing more is read for a refused frame"
        );
        let error = decoder.next_frame::<ToMonitor>().expect_err("too long");
        assert!(matches!(error, FrameError::TooLong { length } if length == MAX_FRAME_LEN + 1));
        assert!(error.to_string().contains("16384-byte limit"), "{error}");

        let mut cut = FrameDecoder::new();
        cut.push(&[5, 0, 0, 0, 1, 2]);
        assert_eq!(cut.wanted(), 3);
        assert_eq!(cut.next_frame::<ToMonitor>().expect("incomplete"), None);
        let error = cut.finish().expect_err("cut mid-frame");
        assert!(
            matches!(&error, FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
            "a cut frame reads as a closed channel: {error}"
        );
        assert!(
            error
                .to_string()
                .contains("after 6 bytes of a frame, expected 9 bytes"),
            "{error}"
        );

        let mut prefix_only = FrameDecoder::new();
        prefix_only.push(&[1, 0]);
        assert_eq!(prefix_only.wanted(), 2);
        let error = prefix_only.finish().expect_err("cut in the prefix");
        assert!(
            error.to_string().contains("expected its length prefix"),
            "{error}"
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_consumed_with_its_error() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[2, 0, 0, 0, 0xee, 0xee]);
        decoder.push(&encode_frame(&ToMonitor::Heartbeat).expect("encode"));
        assert!(matches!(
            decoder.next_frame::<ToMonitor>(),
            Err(FrameError::Decode(_))
        ));
        assert_eq!(
            decoder.next_frame::<ToMonitor>().expect("next"),
            Some(ToMonitor::Heartbeat)
        );
    }

    #[test]
    fn the_fuzz_harness_runs_on_its_seeds() {
        let mut stream = vec![3_u8];
        stream.extend(encode_frame(&ToMonitor::Heartbeat).expect("encode"));
        stream.extend(
            encode_frame(&ToCompartment::ChannelOffered {
                peer: "link".to_owned(),
            })
            .expect("encode"),
        );
        crate::fuzz_harness::monitor_frames(&stream);
        crate::fuzz_harness::monitor_frames(&[]);
        crate::fuzz_harness::monitor_frames(&[0, 0xff, 0xff, 0xff, 0xff]);
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

        /// The fuzz target's harness (`os/fuzz`, target `monitor_frames`) on random input.
        #[test]
        fn the_fuzz_harness_holds_on_random_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            crate::fuzz_harness::monitor_frames(&bytes);
        }
    }
}
