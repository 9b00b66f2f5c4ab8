//! The durable store-and-forward queue: append-only segments with checksums.
//!
//! Every outbound message gets a sequence number and is written to the active
//! segment before it is sent. It leaves the queue only when the fleet acknowledges
//! that sequence number (or, under [`OverflowPolicy::DropOldest`], when it is dropped
//! to make room — counted, never silent). A crash at any instant loses nothing that
//! was appended under [`FsyncPolicy::Always`]; a torn record at the tail is cut off at
//! the next open.
//!
//! On disk, in the queue's directory:
//!
//! | file | content |
//! |---|---|
//! | `NNNNNNNNNNNNNNNNNNNN.seg` | records from sequence `N` on: `len u32 LE`, `crc32 u32 LE` (of the next two fields), `seq u64 LE`, `payload` |
//! | `outbox.state` | JSON `{epoch, next_unacked, dropped_oldest}`; replaced atomically (temp, fsync, rename, fsync dir) |
//!
//! `epoch` is chosen when the queue is created, so a wiped queue never reuses the
//! sequence numbers the fleet has already seen. The acknowledgement state is saved
//! lazily: after a crash a few acknowledged messages may be sent again, and the
//! fleet's deduplication on `(device, stream, epoch, seq)` absorbs them.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes in front of each record's payload.
const RECORD_HEADER: u64 = 16;
/// Largest payload one record may hold.
pub const MAX_RECORD_PAYLOAD: usize = 4 * 1024 * 1024;
/// How often acknowledgement progress is saved at most.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every append (survives power loss; slowest).
    Always,
    /// At most this often, in milliseconds (a power cut may lose that window; a
    /// process crash loses nothing).
    EveryMillis(u64),
    /// Never explicitly (the kernel writes back; a process crash loses nothing).
    Never,
}

/// What happens when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the new message (the caller keeps it and retries); nothing queued is lost.
    Refuse,
    /// Drop the oldest queued messages to make room; each is counted and reported.
    DropOldest,
}

/// The queue's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Directory of the segments and state.
    pub dir: PathBuf,
    /// Most bytes of unacknowledged records kept.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A new segment starts after this many bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// When appends are forced to disk.
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// What to do when full.
    #[serde(default = "default_overflow")]
    pub overflow: OverflowPolicy,
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_segment_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::EveryMillis(200)
}

fn default_overflow() -> OverflowPolicy {
    OverflowPolicy::Refuse
}

impl OutboxConfig {
    /// Defaults for a queue in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: default_max_bytes(),
            segment_bytes: default_segment_bytes(),
            fsync: default_fsync(),
            overflow: default_overflow(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SavedState {
    epoch: u64,
    next_unacked: u64,
    dropped_oldest: u64,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
}

/// Counters of the queue, for the status page and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutboxStats {
    /// Messages waiting for acknowledgement.
    pub depth: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Messages dropped by [`OverflowPolicy::DropOldest`], ever.
    pub dropped_oldest: u64,
    /// Appends refused by [`OverflowPolicy::Refuse`] since open.
    pub refused: u64,
    /// Records found damaged and cut off at open.
    pub damaged_records: u64,
    /// The next sequence number.
    pub next_seq: u64,
}

/// The durable queue.
pub struct Outbox {
    config: OutboxConfig,
    state: SavedState,
    state_dirty: bool,
    state_saved_at: Instant,
    /// Unacknowledged (and not dropped) records, in order.
    queued: VecDeque<Location>,
    /// Acknowledged sequence numbers above `state.next_unacked`.
    acked_ahead: BTreeSet<u64>,
    queued_bytes: u64,
    next_seq: u64,
    /// First sequence number of each segment file, in order; the last is active.
    segments: Vec<u64>,
    active: File,
    active_len: u64,
    unsynced: bool,
    synced_at: Instant,
    refused: u64,
    damaged: u64,
}

impl Outbox {
    /// Opens (or creates) the queue in `config.dir`, cutting off any torn tail.
    pub fn open(config: OutboxConfig) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| OutboxError::io(&config.dir, e))?;
        let state_path = config.dir.join("outbox.state");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<SavedState>(&bytes)
                .map_err(|e| OutboxError::Corrupt(format!("{}: {e}", state_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = SavedState {
                    epoch: new_epoch(),
                    next_unacked: 0,
                    dropped_oldest: 0,
                };
                write_atomically(&config.dir, "outbox.state", &state)?;
                state
            }
            Err(e) => return Err(OutboxError::io(&state_path, e)),
        };
        let mut segments = list_segments(&config.dir)?;
        let mut queued = VecDeque::new();
        let mut queued_bytes = 0;
        let mut next_seq = state.next_unacked;
        let mut damaged = 0;
        let mut active_len = 0;
        for (index, &first) in segments.iter().enumerate() {
            let path = segment_path(&config.dir, first);
            let is_last = index + 1 == segments.len();
            let (records, good_len, bad) = scan_segment(&path)?;
            if bad {
                damaged += 1;
                tracing::warn!(segment = %path.display(), good_len, "damaged record in outbox; cutting it off");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| OutboxError::io(&path, e))?;
                file.set_len(good_len)
                    .map_err(|e| OutboxError::io(&path, e))?;
                file.sync_all().map_err(|e| OutboxError::io(&path, e))?;
            }
            for record in records {
                if record.seq < next_seq {
                    continue; // acknowledged before the crash, or a duplicate
                }
                if record.seq != next_seq && !queued.is_empty() {
                    // Only after a damaged segment: the records in between are gone
                    // and already counted as damaged.
                    tracing::warn!(segment = %path.display(), from = next_seq, to = record.seq, "outbox sequence gap");
                }
                next_seq = record.seq + 1;
                queued_bytes += u64::from(record.len);
                queued.push_back(Location {
                    segment: first,
                    ..record
                });
            }
            if is_last {
                active_len = good_len;
            }
        }
        if segments.is_empty() {
            segments.push(next_seq);
            active_len = 0;
        }
        let active_first = segments[segments.len() - 1];
        let active_path = segment_path(&config.dir, active_first);
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&active_path)
            .map_err(|e| OutboxError::io(&active_path, e))?;
        let mut outbox = Self {
            config,
            state,
            state_dirty: false,
            state_saved_at: Instant::now(),
            queued,
            acked_ahead: BTreeSet::new(),
            queued_bytes,
            next_seq,
            segments,
            active,
            active_len,
            unsynced: false,
            synced_at: Instant::now(),
            refused: 0,
            damaged,
        };
        outbox.remove_finished_segments()?;
        Ok(outbox)
    }

    /// The queue's epoch (fixed for its lifetime).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Appends the message `build(seq, epoch)` and returns its sequence number.
    pub fn append(&mut self, build: impl FnOnce(u64, u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        let seq = self.next_seq;
        let payload = build(seq, self.state.epoch);
        if payload.len() > MAX_RECORD_PAYLOAD {
            return Err(OutboxError::TooLarge(payload.len()));
        }
        let size = payload.len() as u64;
        while self.queued_bytes + size > self.config.max_bytes {
            match self.config.overflow {
                OverflowPolicy::Refuse => {
                    self.refused += 1;
                    return Err(OutboxError::Full {
                        max_bytes: self.config.max_bytes,
                    });
                }
                OverflowPolicy::DropOldest => {
                    let Some(oldest) = self.queued.pop_front() else {
                        return Err(OutboxError::TooLarge(payload.len()));
                    };
                    self.queued_bytes -= u64::from(oldest.len);
                    self.state.dropped_oldest += 1;
                    self.advance_prefix(oldest.seq + 1);
                    tracing::warn!(
                        seq = oldest.seq,
                        "outbox full: dropped the oldest queued message"
                    );
                }
            }
        }
        if self.active_len >= self.config.segment_bytes {
            self.roll_segment(seq)?;
        }
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(&payload);
        record.extend_from_slice(&crc.finalize().to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&payload);
        let segment = self.segments[self.segments.len() - 1];
        self.active
            .write_all(&record)
            .map_err(|e| OutboxError::io(&segment_path(&self.config.dir, segment), e))?;
        let location = Location {
            seq,
            segment,
            offset: self.active_len,
            len: payload.len() as u32,
        };
        self.active_len += record.len() as u64;
        self.queued.push_back(location);
        self.queued_bytes += size;
        self.next_seq += 1;
        self.unsynced = true;
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::EveryMillis(ms)
                if self.synced_at.elapsed() >= Duration::from_millis(ms) =>
            {
                self.sync()?
            }
            _ => {}
        }
        Ok(seq)
    }

    /// Forces appended records to disk (call on a timer under [`FsyncPolicy::EveryMillis`]).
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if self.unsynced {
            self.active
                .sync_data()
                .map_err(|e| OutboxError::io(&self.config.dir, e))?;
            self.unsynced = false;
        }
        self.synced_at = Instant::now();
        if self.state_dirty {
            self.save_state()?;
        }
        Ok(())
    }

    /// Marks `seq` acknowledged. Unknown or repeated acknowledgements are ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        if seq < self.state.next_unacked || seq >= self.next_seq {
            return Ok(());
        }
        self.acked_ahead.insert(seq);
        let mut prefix = self.state.next_unacked;
        while self.acked_ahead.remove(&prefix) {
            prefix += 1;
        }
        if prefix > self.state.next_unacked {
            while let Some(front) = self.queued.front() {
                if front.seq >= prefix {
                    break;
                }
                self.queued_bytes -= u64::from(front.len);
                self.queued.pop_front();
            }
            self.advance_prefix(prefix);
            self.remove_finished_segments()?;
            if self.state_saved_at.elapsed() >= STATE_SAVE_INTERVAL {
                self.save_state()?;
            }
        }
        Ok(())
    }

    /// Whether `seq` is still waiting for acknowledgement.
    pub fn is_pending(&self, seq: u64) -> bool {
        seq >= self.state.next_unacked && seq < self.next_seq && !self.acked_ahead.contains(&seq)
    }

    /// The first pending sequence number at or after `from`, if any.
    pub fn next_pending(&self, from: u64) -> Option<u64> {
        let start = from.max(self.state.next_unacked);
        (start..self.next_seq).find(|seq| !self.acked_ahead.contains(seq))
    }

    /// Reads the payload of a pending message.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, OutboxError> {
        let front = self.queued.front().ok_or(OutboxError::NotQueued(seq))?;
        let index = seq
            .checked_sub(front.seq)
            .ok_or(OutboxError::NotQueued(seq))?;
        let location = *self
            .queued
            .get(index as usize)
            .ok_or(OutboxError::NotQueued(seq))?;
        let path = segment_path(&self.config.dir, location.segment);
        let mut payload = vec![0; location.len as usize];
        let file = if location.segment == self.segments[self.segments.len() - 1] {
            self.active
                .try_clone()
                .map_err(|e| OutboxError::io(&path, e))?
        } else {
            File::open(&path).map_err(|e| OutboxError::io(&path, e))?
        };
        file.read_exact_at(&mut payload, location.offset + RECORD_HEADER)
            .map_err(|e| OutboxError::io(&path, e))?;
        Ok(payload)
    }

    /// The queue's counters.
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            depth: self.queued.len() as u64 - self.acked_ahead.len() as u64,
            bytes: self.queued_bytes,
            dropped_oldest: self.state.dropped_oldest,
            refused: self.refused,
            damaged_records: self.damaged,
            next_seq: self.next_seq,
        }
    }

    fn advance_prefix(&mut self, prefix: u64) {
        self.state.next_unacked = prefix;
        self.acked_ahead = self.acked_ahead.split_off(&prefix);
        self.state_dirty = true;
    }

    fn roll_segment(&mut self, first_seq: u64) -> Result<(), OutboxError> {
        self.sync()?;
        let path = segment_path(&self.config.dir, first_seq);
        self.active = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| OutboxError::io(&path, e))?;
        sync_dir(&self.config.dir)?;
        self.segments.push(first_seq);
        self.active_len = 0;
        Ok(())
    }

    /// Deletes segments whose every record is acknowledged or dropped.
    fn remove_finished_segments(&mut self) -> Result<(), OutboxError> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1] <= self.state.next_unacked {
            if self.state_dirty {
                // The state must say these records are done before they disappear.
                self.save_state()?;
            }
            let path = segment_path(&self.config.dir, self.segments[0]);
            std::fs::remove_file(&path).map_err(|e| OutboxError::io(&path, e))?;
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.config.dir)?;
        }
        Ok(())
    }

    fn save_state(&mut self) -> Result<(), OutboxError> {
        write_atomically(&self.config.dir, "outbox.state", &self.state)?;
        self.state_dirty = false;
        self.state_saved_at = Instant::now();
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Err(error) = self.sync() {
            tracing::warn!(%error, "outbox: final sync failed");
        }
    }
}

fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, OutboxError> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| OutboxError::io(dir, e))? {
        let entry = entry.map_err(|e| OutboxError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Reads every intact record of a segment: the records, the length of the intact
/// prefix, and whether anything after it was damaged or torn.
fn scan_segment(path: &Path) -> Result<(Vec<Location>, u64, bool), OutboxError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| OutboxError::io(path, e))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some(header) = bytes.get(offset..offset + RECORD_HEADER as usize) else {
            return Ok((records, offset as u64, true));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let start = offset + RECORD_HEADER as usize;
        let Some(payload) = (len as usize <= MAX_RECORD_PAYLOAD)
            .then(|| bytes.get(start..start + len as usize))
            .flatten()
        else {
            return Ok((records, offset as u64, true));
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&seq_bytes);
        hasher.update(payload);
        if hasher.finalize() != crc {
            return Ok((records, offset as u64, true));
        }
        records.push(Location {
            seq,
            segment: 0,
            offset: offset as u64,
            len,
        });
        offset = start + len as usize;
    }
    Ok((records, offset as u64, false))
}

fn write_atomically(dir: &Path, name: &str, state: &SavedState) -> Result<(), OutboxError> {
    let temporary = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let bytes = serde_json::to_vec(state).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
    let mut file = File::create(&temporary).map_err(|e| OutboxError::io(&temporary, e))?;
    file.write_all(&bytes)
        .map_err(|e| OutboxError::io(&temporary, e))?;
    file.sync_all()
        .map_err(|e| OutboxError::io(&temporary, e))?;
    std::fs::rename(&temporary, &target).map_err(|e| OutboxError::io(&target, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OutboxError::io(dir, e))
}

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The queue is full and its policy refuses new messages.
    #[error("outbox is full ({max_bytes} bytes); message refused")]
    Full {
        /// The configured bound.
        max_bytes: u64,
    },
    /// The file system is full (ENOSPC, EDQUOT): the message was refused and nothing
    /// of it was kept; the queue stays consistent and takes messages again once there
    /// is room. Treated like [`OutboxError::Full`], never as fatal.
    #[error("outbox {path}: no space left on the device; message refused")]
    NoSpace {
        /// The file that could not grow.
        path: PathBuf,
    },
    /// A message is larger than a record may be (or than the whole queue).
    #[error("message of {0} bytes is too large for the outbox")]
    TooLarge(usize),
    /// The sequence number is not in the queue.
    #[error("message {0} is not queued")]
    NotQueued(u64),
    /// The queue's files are inconsistent.
    #[error("outbox is corrupt: {0}")]
    Corrupt(String),
}

impl OutboxError {
    /// Whether the message was refused for want of room ([`OutboxError::Full`] or
    /// [`OutboxError::NoSpace`]): the caller keeps it and tries again later; the queue
    /// itself is fine.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Full { .. } | Self::NoSpace { .. })
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> OutboxConfig {
        OutboxConfig {
            segment_bytes: 64,
            fsync: FsyncPolicy::Never,
            ..OutboxConfig::in_dir(dir)
        }
    }

    fn message(seq: u64) -> Vec<u8> {
        format!("message {seq}").into_bytes()
    }

    #[test]
    fn messages_survive_reopen_until_acknowledged_and_segments_are_reclaimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = Outbox::open(config(dir.path())).expect("open");
        let epoch = outbox.epoch();
        for expected in 0..20 {
            assert_eq!(
                outbox.append(|seq, _| message(seq)).expect("append"),
                expected
            );
        }
        assert!(list_segments(dir.path()).expect("list").len() > 3);
        for seq in [0, 1, 2, 5, 3] {
            outbox.ack(seq).expect("ack");
        }
        assert_eq!(outbox.next_pending(0), Some(4));
        assert_eq!(outbox.next_pending(5), Some(6));
        outbox.sync().expect("sync");
        drop(outbox);

        let mut outbox = Outbox::open(config(dir.path())).expect("reopen");
        assert_eq!(outbox.epoch(), epoch);
        // 5 was acknowledged out of order and not saved: it may be sent again, never lost.
        assert_eq!(outbox.next_pending(0), Some(4));
        assert_eq!(outbox.read(19).expect("read"), message(19));
        for seq in 4..20 {
            outbox.ack(seq).expect("ack");
        }
        assert_eq!(outbox.stats().depth, 0);
        assert_eq!(outbox.append(|seq, _| message(seq)).expect("append"), 20);
        assert_eq!(
            list_segments(dir.path()).expect("list").len(),
            1,
            "acknowledged segments are deleted"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = Outbox::open(OutboxConfig {
            segment_bytes: 1 << 20,
            ..config(dir.path())
        })
        .expect("open");
        for _ in 0..3 {
            outbox.append(|seq, _| message(seq)).expect("append");
        }
        drop(outbox);
        let segment = segment_path(dir.path(), 0);
        let full = std::fs::read(&segment).expect("read");
        // Every cut inside the last record must leave exactly the first two.
        let last_start = full.len() - (RECORD_HEADER as usize + message(2).len());
        for cut in last_start..full.len() {
            std::fs::write(&segment, &full[..cut]).expect("truncate");
            let mut outbox = Outbox::open(config(dir.path())).expect("reopen");
            assert_eq!(outbox.stats().depth, 2, "cut at {cut}");
            assert_eq!(outbox.stats().damaged_records, u64::from(cut != last_start));
            assert_eq!(outbox.append(|seq, _| message(seq)).expect("append"), 2);
            assert_eq!(outbox.read(2).expect("read"), message(2));
            drop(outbox);
            std::fs::write(&segment, &full).expect("restore");
        }
        // A flipped bit in the payload is caught by the checksum.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&segment, &flipped).expect("write");
        let outbox = Outbox::open(config(dir.path())).expect("reopen");
        assert_eq!(outbox.stats().depth, 2);
        assert_eq!(outbox.stats().damaged_records, 1);
    }

    #[test]
    fn overflow_refuses_or_drops_oldest_and_counts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut refuse = Outbox::open(OutboxConfig {
            max_bytes: 30,
            ..config(dir.path())
        })
        .expect("open");
        refuse.append(|_, _| vec![0; 20]).expect("fits");
        assert!(matches!(
            refuse.append(|_, _| vec![0; 20]),
            Err(OutboxError::Full { max_bytes: 30 })
        ));
        assert_eq!(refuse.stats().refused, 1);
        assert_eq!(refuse.stats().depth, 1);
        drop(refuse);

        let dir = tempfile::tempdir().expect("tempdir");
        let mut drop_oldest = Outbox::open(OutboxConfig {
            max_bytes: 30,
            overflow: OverflowPolicy::DropOldest,
            ..config(dir.path())
        })
        .expect("open");
        for _ in 0..4 {
            drop_oldest.append(|_, _| vec![0; 12]).expect("append");
        }
        let stats = drop_oldest.stats();
        assert_eq!((stats.depth, stats.dropped_oldest), (2, 2));
        assert_eq!(drop_oldest.next_pending(0), Some(2));
        drop_oldest.sync().expect("sync");
        drop(drop_oldest);
        let reopened = Outbox::open(config(dir.path())).expect("reopen");
        assert_eq!(
            reopened.stats().dropped_oldest,
            2,
            "the drop count is persisted"
        );
    }
}
