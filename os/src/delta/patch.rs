//! Applying a patch, streamed: memory is three fixed buffers whatever the image size.
//!
//! Every length and cursor is checked against the base and the announced result size
//! before it is used, so a corrupted patch ends in [`PatchError`], never a panic, an
//! unbounded allocation or an over-long result.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The size of one record's control part (`add_len`, `copy_len`, `seek`; the records
/// are described in `diff`, which writes them).
pub const CONTROL_LEN: usize = 24;

/// Bytes moved per step.
const CHUNK: usize = 64 << 10;

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The patch is inconsistent (the message names how).
    #[error("patch is corrupt: {0}")]
    Corrupt(String),
    /// Reading the patch or the base, or writing the result, failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn corrupt(what: impl Into<String>) -> PatchError {
    PatchError::Corrupt(what.into())
}

fn read_patch(patch: &mut dyn Read, buffer: &mut [u8]) -> Result<(), PatchError> {
    patch
        .read_exact(buffer)
        .map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("patch ends before the result is complete"),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                corrupt(format!("patch stream does not decompress: {error}"))
            }
            _ => PatchError::Io(error),
        })
}

/// Apply `patch` (the decompressed record stream) to `base` (`base_len` bytes), writing
/// exactly `result_len` bytes to `out`. Returns the bytes written.
pub fn apply_patch(
    patch: &mut dyn Read,
    base: &mut dyn ReadSeekBase,
    base_len: u64,
    result_len: u64,
    out: &mut dyn Write,
) -> Result<u64, PatchError> {
    let mut written = 0u64;
    let mut cursor = 0u64;
    let mut from_patch = vec![0u8; CHUNK];
    let mut from_base = vec![0u8; CHUNK];
    base.seek(SeekFrom::Start(0))?;
    while written < result_len {
        let mut control = [0u8; CONTROL_LEN];
        read_patch(patch, &mut control)?;
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&control[at..at + 8]);
            bytes
        };
        let add_len = u64::from_le_bytes(word(0));
        let copy_len = u64::from_le_bytes(word(8));
        let seek = i64::from_le_bytes(word(16));
        let remaining = result_len - written;
        if add_len > remaining || copy_len > remaining - add_len {
            return Err(corrupt(format!(
                "a record of {add_len} + {copy_len} bytes at result offset {written} \
                 overruns the {result_len}-byte result"
            )));
        }
        if add_len > base_len - cursor {
            return Err(corrupt(format!(
                "a record adds {add_len} bytes at base offset {cursor}, past the \
                 {base_len}-byte base"
            )));
        }
        let mut left = add_len;
        while left > 0 {
            let step = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            read_patch(patch, &mut from_patch[..step])?;
            base.read_exact(&mut from_base[..step])?;
            for (byte, old) in from_patch[..step].iter_mut().zip(&from_base[..step]) {
                *byte = byte.wrapping_add(*old);
            }
            out.write_all(&from_patch[..step])?;
            left -= step as u64;
        }
        let mut left = copy_len;
        while left > 0 {
            let step = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            read_patch(patch, &mut from_patch[..step])?;
            out.write_all(&from_patch[..step])?;
            left -= step as u64;
        }
        written += add_len + copy_len;
        let next = i128::from(cursor + add_len) + i128::from(seek);
        if next < 0 || next > i128::from(base_len) {
            return Err(corrupt(format!(
                "a record moves the base cursor to {next}, outside the {base_len}-byte base"
            )));
        }
        cursor = next as u64;
        base.seek(SeekFrom::Start(cursor))?;
    }
    let mut probe = [0u8; 1];
    if patch.read(&mut probe)? != 0 {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(written)
}

/// The base image: read and seek (a slot file, or bytes in memory).
pub trait ReadSeekBase: Read + Seek {}
impl<T: Read + Seek> ReadSeekBase for T {}
