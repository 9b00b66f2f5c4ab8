//! Fuzz harnesses for the decoders of untrusted bytes in this crate, as plain functions.
//!
//! `os/fuzz` calls them from cargo-fuzz targets; property tests call them too, so
//! `cargo test` runs the same checks. Each panics only if an invariant breaks.

use crate::monitor::frame::{
    FrameDecoder, FrameError, MAX_FRAME_LEN, ToCompartment, ToMonitor, encode_frame, read_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The monitor's control frames, both directions. The first byte chooses the size of
/// the chunks the rest arrives in; the stream is decoded whole, in those chunks and
/// through [`read_frame`], and all three must agree. Every message decoded must
/// encode again and decode to itself.
pub fn monitor_frames(data: &[u8]) {
    let Some((&chunking, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunking % 64) + 1;
    check_direction::<ToMonitor>(stream, chunk);
    check_direction::<ToCompartment>(stream, chunk);
}

/// What decoding a stream gave: the frames, then how it ended (errors by kind only).
#[derive(Debug, PartialEq)]
struct Decoded<T> {
    frames: Vec<T>,
    end: &'static str,
}

fn check_direction<T>(stream: &[u8], chunk: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let whole = decode_stream::<T>(stream, stream.len().max(1));
    let chunked = decode_stream::<T>(stream, chunk);
    assert_eq!(whole, chunked, "the chunking changed what was decoded");

    let mut reader = stream;
    let mut read = Decoded {
        frames: Vec::new(),
        end: "",
    };
    read.end = loop {
        match read_frame::<T>(&mut reader) {
            Ok(Some(frame)) => read.frames.push(frame),
            Ok(None) => break "end",
            Err(error) => break kind(&error),
        }
    };
    assert_eq!(read, whole, "read_frame and the decoder disagree");

    for frame in &whole.frames {
        let bytes = encode_frame(frame).expect("a decoded message encodes again");
        assert!(bytes.len() <= 4 + MAX_FRAME_LEN);
        let mut again = FrameDecoder::new();
        again.push(&bytes);
        let back: Option<T> = again.next_frame().expect("an encoded frame decodes");
        assert_eq!(back.as_ref(), Some(frame), "round trip");
        assert!(again.is_between_frames());
    }
}

/// Decodes `stream` fed in `chunk`-byte pieces, stopping at the first error as the
/// monitor does (it closes the channel).
fn decode_stream<T: DeserializeOwned>(stream: &[u8], chunk: usize) -> Decoded<T> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame::<T>() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    return Decoded {
                        frames,
                        end: kind(&error),
                    };
                }
            }
        }
    }
    let end = match decoder.finish() {
        Ok(()) => "end",
        Err(error) => kind(&error),
    };
    Decoded { frames, end }
}

fn kind(error: &FrameError) -> &'static str {
    match error {
        FrameError::Io(_) => "io",
        FrameError::TooLong { .. } => "too long",
        FrameError::Decode(_) => "decode",
    }
}
