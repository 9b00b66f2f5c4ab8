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

#[cfg(all(test, feature = "delta-build"))]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::delta::diff::write_patch;

    fn round_trip(base: &[u8], target: &[u8]) -> Vec<u8> {
        let mut patch = Vec::new();
        write_patch(base, target, &mut patch).expect("diff");
        let mut out = Vec::new();
        let written = apply_patch(
            &mut patch.as_slice(),
            &mut Cursor::new(base),
            base.len() as u64,
            target.len() as u64,
            &mut out,
        )
        .expect("apply");
        assert_eq!(written, target.len() as u64);
        out
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn patches_reproduce_the_target_exactly() {
        let base = pseudo_random(200_000, 1);
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.splice(50_000..50_000, pseudo_random(3000, 2));
        target.drain(120_000..121_000);
        for at in (0..target.len()).step_by(4096) {
            target[at] = target[at].wrapping_add(3);
        }
        assert_eq!(round_trip(&base, &target), target);
        assert_eq!(round_trip(&[], &target[..500]), &target[..500]);
        assert_eq!(
            round_trip(&base, &pseudo_random(10_000, 9)),
            pseudo_random(10_000, 9)
        );
        assert_eq!(round_trip(b"a", b"a"), b"a");
    }

    #[test]
    fn a_small_change_gives_a_small_patch() {
        let base = pseudo_random(500_000, 3);
        let mut target = base.clone();
        target.splice(250_000..250_000, b"inserted".iter().copied());
        let mut patch = Vec::new();
        write_patch(&base, &target, &mut patch).expect("diff");
        // Records plus added bytes (mostly zeros, uncompressed here): far below the target.
        let nonzero = patch.iter().filter(|byte| **byte != 0).count();
        assert!(
            nonzero < 200,
            "{nonzero} non-zero patch bytes for an 8-byte insert"
        );
    }

    /// Executables carry long zero runs (section padding, `.bss` images); bsdiff's
    /// search slid through such a run byte by byte, comparing the whole run at each
    /// step: quadratic, hours on a 1 MiB run. The diff now takes such a match after a
    /// bounded slide; this pair finishes and round-trips.
    #[test]
    fn long_runs_of_one_byte_that_moved_are_diffed_and_reproduced() {
        let code = pseudo_random(20_000, 5);
        let zeros = vec![0u8; 1 << 20];
        let base = [&code[..], &zeros, &code[..], &zeros[..4096]].concat();
        // The run shifted by 3 bytes and cut differently, a few bytes inside changed.
        let mut target = [
            &code[..10_000],
            b"abc",
            &zeros[..(1 << 20) - 9000],
            &code[..],
        ]
        .concat();
        for at in [15_000, 300_000, 700_000] {
            target[at] = 0x90;
        }
        assert_eq!(round_trip(&base, &target), target);
        let mut patch = Vec::new();
        write_patch(&base, &target, &mut patch).expect("diff");
        let nonzero = patch.iter().filter(|byte| **byte != 0).count();
        assert!(nonzero < 20_000, "{nonzero} non-zero patch bytes");
    }

    #[test]
    fn corrupt_records_are_refused_not_obeyed() {
        let base = pseudo_random(10_000, 4);
        let target = base.clone();
        let mut patch = Vec::new();
        write_patch(&base, &target, &mut patch).expect("diff");
        let apply = |patch: &[u8], result_len: u64| {
            apply_patch(
                &mut &patch[..],
                &mut Cursor::new(&base),
                base.len() as u64,
                result_len,
                &mut Vec::new(),
            )
        };
        // An add length past the result.
        let mut bad = patch.clone();
        bad[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(apply(&bad, 10_000), Err(PatchError::Corrupt(_))));
        // A seek before the start of the base.
        let mut bad = patch.clone();
        bad[16..24].copy_from_slice(&(-20_000i64).to_le_bytes());
        assert!(matches!(apply(&bad, 10_000), Err(PatchError::Corrupt(_))));
        // Truncated, and trailing bytes.
        assert!(matches!(
            apply(&patch[..patch.len() - 1], 10_000),
            Err(PatchError::Corrupt(_))
        ));
        let mut long = patch.clone();
        long.push(0);
        assert!(matches!(apply(&long, 10_000), Err(PatchError::Corrupt(_))));
    }
}
