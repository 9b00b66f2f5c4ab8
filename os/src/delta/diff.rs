//! The diff: Colin Percival's bsdiff search over a suffix array of the base.
//!
//! The patch is a sequence of records, each `add_len` (u64), `copy_len` (u64), `seek`
//! (i64), all little-endian, then `add_len` bytes to add (wrapping, byte by byte) to the
//! base at the base cursor, then `copy_len` bytes copied as they are; the base cursor
//! then moves by `add_len + seek`. Code that moved keeps most of its bytes and changes
//! a few (addresses), so the added bytes are mostly zeros and compress well: that is why
//! bsdiff beats plain copy/insert deltas on executables.

use std::io::{self, Write};

use crate::delta::patch::CONTROL_LEN;

/// Steps of the search loop that may slide one match byte by byte before it is taken
/// (see `write_patch`): bounds the cost of runs of one byte to linear.
const MAX_SLIDING: usize = 100;

/// Length of the common prefix of `a` and `b`.
fn match_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The longest match of `target` in `base` through the suffix array, as `(position, length)`.
fn search(suffixes: &[i32], base: &[u8], target: &[u8]) -> (usize, usize) {
    let (mut start, mut end) = (0usize, suffixes.len() - 1);
    while end - start >= 2 {
        let middle = start + (end - start) / 2;
        // Lexicographic, a shorter equal prefix sorting first (as the suffix array
        // does): comparing only the common length sent a suffix that is a prefix of
        // the target the wrong way and missed the longest match.
        if base[suffixes[middle] as usize..] < *target {
            start = middle;
        } else {
            end = middle;
        }
    }
    let first = suffixes[start] as usize;
    let last = suffixes[end] as usize;
    let first_len = match_len(&base[first..], target);
    let last_len = match_len(&base[last..], target);
    if first_len > last_len {
        (first, first_len)
    } else {
        (last, last_len)
    }
}

/// Write the patch turning `base` into `target` to `out` (records as in the module doc).
pub fn write_patch(base: &[u8], target: &[u8], out: &mut dyn Write) -> io::Result<()> {
    if base.is_empty() {
        return write_record(out, &[], target, 0);
    }
    if base.len() > i32::MAX as usize {
        return Err(io::Error::other("base image over 2 GiB"));
    }
    let mut suffixes = vec![0i32; base.len()];
    divsufsort::sort_in_place(base, &mut suffixes);

    let old = |at: isize| base[at as usize];
    let new = |at: isize| target[at as usize];
    let base_len = base.len() as isize;
    let target_len = target.len() as isize;
    let (mut scan, mut len, mut pos) = (0isize, 0isize, 0isize);
    let (mut last_scan, mut last_pos, mut last_offset) = (0isize, 0isize, 0isize);
    let mut added = Vec::new();
    while scan < target_len {
        let mut old_score = 0isize;
        scan += len;
        let mut score_scan = scan;
        // Steps in a row whose best match was only a little better than the alignment.
        let mut sliding = 0usize;
        while scan < target_len {
            let (found_pos, found_len) = search(&suffixes, base, &target[scan as usize..]);
            pos = found_pos as isize;
            len = found_len as isize;
            while score_scan < scan + len {
                if score_scan + last_offset < base_len
                    && old(score_scan + last_offset) == new(score_scan)
                {
                    old_score += 1;
                }
                score_scan += 1;
            }
            if (len == old_score && len != 0) || len > old_score + 8 {
                break;
            }
            if scan + last_offset < base_len && old(scan + last_offset) == new(scan) {
                old_score -= 1;
            }
            // The quadratic case (long runs of one byte, zero padding of executables):
            // a long match at most 8 bytes better than the current alignment is found
            // again at every step, one byte on, each search comparing it whole. After
            // `MAX_SLIDING` such steps in a row the match is taken as it is (any match
            // makes a correct patch; this one is nearly the best). The idea is
            // ChromiumOS's fix of the same bsdiff hang.
            if len > old_score && len <= old_score + 8 {
                sliding += 1;
                if sliding > MAX_SLIDING {
                    break;
                }
            } else {
                sliding = 0;
            }
            scan += 1;
        }
        if len == old_score && scan != target_len {
            continue;
        }
        // Extend the previous match forwards and this one backwards, as far as they
        // agree on more than half of the bytes.
        let (mut score, mut best, mut forward) = (0isize, 0isize, 0isize);
        let mut i = 0isize;
        while last_scan + i < scan && last_pos + i < base_len {
            if old(last_pos + i) == new(last_scan + i) {
                score += 1;
            }
            i += 1;
            if score * 2 - i > best * 2 - forward {
                best = score;
                forward = i;
            }
        }
        let mut backward = 0isize;
        if scan < target_len {
            let (mut score, mut best) = (0isize, 0isize);
            let mut i = 1isize;
            while scan >= last_scan + i && pos >= i {
                if old(pos - i) == new(scan - i) {
                    score += 1;
                }
                if score * 2 - i > best * 2 - backward {
                    best = score;
                    backward = i;
                }
                i += 1;
            }
        }
        if last_scan + forward > scan - backward {
            let overlap = (last_scan + forward) - (scan - backward);
            let (mut score, mut best, mut split) = (0isize, 0isize, 0isize);
            for i in 0..overlap {
                if new(last_scan + forward - overlap + i) == old(last_pos + forward - overlap + i) {
                    score += 1;
                }
                if new(scan - backward + i) == old(pos - backward + i) {
                    score -= 1;
                }
                if score > best {
                    best = score;
                    split = i + 1;
                }
            }
            forward += split - overlap;
            backward -= split;
        }
        added.clear();
        added.extend((0..forward).map(|i| new(last_scan + i).wrapping_sub(old(last_pos + i))));
        let copied = &target[(last_scan + forward) as usize..(scan - backward) as usize];
        let seek = (pos - backward) - (last_pos + forward);
        write_record(out, &added, copied, seek as i64)?;
        last_scan = scan - backward;
        last_pos = pos - backward;
        last_offset = pos - scan;
    }
    Ok(())
}

fn write_record(out: &mut dyn Write, added: &[u8], copied: &[u8], seek: i64) -> io::Result<()> {
    let mut control = [0u8; CONTROL_LEN];
    control[0..8].copy_from_slice(&(added.len() as u64).to_le_bytes());
    control[8..16].copy_from_slice(&(copied.len() as u64).to_le_bytes());
    control[16..24].copy_from_slice(&seek.to_le_bytes());
    out.write_all(&control)?;
    out.write_all(added)?;
    out.write_all(copied)
}

// The diff and the patch reader together: what the diff writes, the patch reproduces
// (the module exists only with `delta-build`).
#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::delta::patch::{PatchError, apply_patch};

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
