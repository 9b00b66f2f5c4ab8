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
//! | `NNNNNNNNNNNNNNNNNNNN.seg` | a segment: records from sequence `N` on. Header (20 bytes): magic `WDOQ`, format `u32 LE` (1), `epoch u64 LE`, `crc32 u32 LE` of those 16 bytes. Then records: `len u32 LE`, `crc32 u32 LE` (of the next two fields), `seq u64 LE`, `payload` |
//! | `outbox.state` | JSON `{epoch, next_unacked, dropped_oldest}`; replaced atomically (`warden_files::write_file_atomically`) |
//! | `outbox.state.corrupt` | an unparsable state file, moved aside when the state was rebuilt |
//!
//! `epoch` is chosen when the queue is created, so a wiped queue never reuses the
//! sequence numbers the fleet has already seen. It is written into every segment's
//! header as well, so a lost or corrupt `outbox.state` is rebuilt from the segments:
//! the epoch of the newest segment, `next_unacked` = the lowest sequence number still
//! on disk (acknowledged records not yet deleted are sent once more; the fleet
//! deduplicates on `(epoch, seq)`), `dropped_oldest` restarting at 0 (with a warning).
//! Segments written before the header existed (format 0: records from offset 0) are
//! still read; their epoch comes from `outbox.state` (or another segment's header).
//! When no file knows their epoch, their records could never be acknowledged: they are
//! discarded with a warning (counted in [`OutboxStats::damaged_records`]) and a new
//! epoch starts. A header's magic cannot be mistaken for a format-0 record: read as a
//! length it is far above [`MAX_RECORD_PAYLOAD`].
//!
//! The acknowledgement state is saved lazily: after a crash a few acknowledged
//! messages may be sent again, and the fleet's deduplication on
//! `(device, stream, epoch, seq)` absorbs them.
//!
//! Damage: a record whose checksum fails is skipped, never a reason to drop what
//! follows it. When its length is plausible and a valid record follows, reading goes
//! on from there; otherwise it resynchronises on the next offset that holds a valid
//! record (header, checksum, sequence number above the previous one). Only a torn tail
//! of the last segment (a crash mid-write) is cut off. Records are found by sequence
//! number, so the gaps damage leaves never block the queue.
//!
//! Space: segments whose every record is acknowledged or dropped are deleted — the
//! active one too, once it holds no pending record and at least
//! [`RECLAIM_ACTIVE_BYTES`] of records (or half a segment, when smaller): a fresh segment starts at the
//! next sequence number and the old one goes. Disk use stays near `max_bytes` (plus
//! 16 bytes of record header each) and two segments, whatever the overflow policy. A
//! full file system (`ENOSPC`, `EDQUOT`) leaves no partial record. Under
//! [`OverflowPolicy::Refuse`] it refuses the message ([`OutboxError::NoSpace`]); under
//! [`OverflowPolicy::DropOldest`] it is one more reason to make room the same way: the
//! oldest segment's queued records are dropped (counted) and the segment deleted, then
//! the append is tried again; only when the active segment is the last one left is
//! the message refused. Either way the queue takes messages again once there is room.
//!
//! Every file operation goes through [`OutboxFiles`] ([`DiskFiles`] unless
//! [`Outbox::open_with`] is given another), so tests inject faults at that seam. The
//! bytes of one segment are read by [`scan_segment`], which does no I/O (and is fuzzed:
//! `cloud-link/fuzz`, target `outbox_segment`).

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes in front of each record's payload.
pub const RECORD_HEADER: u64 = 16;
/// The first bytes of a segment with a header (format 1 on).
pub const SEGMENT_MAGIC: [u8; 4] = *b"WDOQ";
/// The segment format this code writes.
pub const SEGMENT_FORMAT: u32 = 1;
/// Bytes of a segment's header: magic, format, epoch, checksum.
pub const SEGMENT_HEADER: u64 = 20;
/// Largest payload one record may hold.
pub const MAX_RECORD_PAYLOAD: usize = 4 * 1024 * 1024;
/// The active segment is replaced by a fresh one once it holds no pending record and
/// at least this many bytes of records (or half of `segment_bytes`, when smaller); fewer are left until
/// the next roll, so a queue that empties often does not create a file each time.
pub const RECLAIM_ACTIVE_BYTES: u64 = 64 * 1024;
/// How often acknowledgement progress is saved at most.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(500);
/// The acknowledgement state's file.
const STATE_FILE: &str = "outbox.state";
/// Where an unparsable state file is moved before the state is rebuilt.
const CORRUPT_STATE_FILE: &str = "outbox.state.corrupt";

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

/// Where an intact record is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Its sequence number.
    pub seq: u64,
    /// The first sequence number of its segment (the segment's name).
    pub segment: u64,
    /// The offset of its record header in the segment.
    pub offset: u64,
    /// Its payload's length.
    pub len: u32,
}

impl Location {
    /// The offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER + u64::from(self.len)
    }
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
    /// Records lost at open: damaged (checksum, torn tail), or in a segment whose
    /// epoch no file knows any more. Counted in records, not segments.
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
    /// Whether the last state save failed for want of space (logged once).
    state_save_refused: bool,
    /// Records on disk not yet acknowledged (nor dropped) as a prefix, by sequence
    /// number: ordered, possibly with gaps where records were damaged.
    queued: VecDeque<Location>,
    /// Sequence numbers in `queued` acknowledged out of order.
    acked_ahead: BTreeSet<u64>,
    queued_bytes: u64,
    next_seq: u64,
    /// First sequence number of each segment file, in order; the last is active.
    segments: Vec<u64>,
    /// The file system (the real one unless a test injects faults).
    files: Box<dyn OutboxFiles>,
    active: Box<dyn SegmentFile>,
    active_len: u64,
    /// Where the active segment's records start (after its header, if it has one).
    active_data_start: u64,
    /// The active segment's tail could not be cut back after a failed write.
    active_tail_dirty: bool,
    unsynced: bool,
    synced_at: Instant,
    refused: u64,
    damaged: u64,
}

impl Outbox {
    /// Opens (or creates) the queue in `config.dir`, cutting off any torn tail,
    /// skipping damaged records and rebuilding a lost or corrupt state file.
    pub fn open(config: OutboxConfig) -> Result<Self, OutboxError> {
        Self::open_with(config, Box::new(DiskFiles))
    }

    /// [`Outbox::open`] on the file system `files` (tests pass one that injects faults).
    pub fn open_with(
        config: OutboxConfig,
        files: Box<dyn OutboxFiles>,
    ) -> Result<Self, OutboxError> {
        let dir = config.dir.clone();
        files
            .create_dir_all(&dir)
            .map_err(|e| OutboxError::io(&dir, e))?;
        let saved = read_saved_state(files.as_ref(), &dir)?;
        let firsts = list_segments(files.as_ref(), &dir)?;
        let mut scans = Vec::with_capacity(firsts.len());
        for &first in &firsts {
            let path = segment_path(&dir, first);
            let bytes = files.read(&path).map_err(|e| OutboxError::io(&path, e))?;
            let scan = scan_segment(&bytes, first)
                .map_err(|error| OutboxError::Corrupt(format!("{}: {error}", path.display())))?;
            if scan.header_damaged {
                tracing::warn!(segment = %path.display(), "damaged outbox segment header; its records are read without it");
            }
            scans.push(scan);
        }
        let header_epoch = scans.iter().rev().find_map(|scan| scan.epoch);
        let known_epoch = saved.map(|state| state.epoch).or(header_epoch);
        let epoch = known_epoch.unwrap_or_else(new_epoch);
        let usable = |scan: &SegmentScan| match scan.epoch {
            Some(segment_epoch) => segment_epoch == epoch,
            // Format 0, or a damaged header: the queue's epoch, if any file knows it.
            None => known_epoch.is_some(),
        };
        if known_epoch.is_none() && scans.iter().any(|scan| !scan.records.is_empty()) {
            tracing::warn!(
                dir = %dir.display(),
                "outbox: no state file and no segment header says which epoch the queued \
                 records belong to; they could never be acknowledged and are discarded"
            );
        }

        let next_unacked = match saved {
            Some(state) => state.next_unacked,
            None => scans
                .iter()
                .filter(|scan| usable(scan))
                .filter_map(|scan| scan.records.first().map(|record| record.seq))
                .min()
                .unwrap_or(0),
        };
        let last_record = scans
            .iter()
            .filter_map(|scan| scan.records.last().map(|record| record.seq + 1))
            .max()
            .unwrap_or(0);
        let next_seq = next_unacked
            .max(last_record)
            .max(firsts.last().copied().unwrap_or(0));

        // Damage is counted from what was still unacknowledged (all, when rebuilt).
        let count_from = saved.map_or(0, |state| state.next_unacked);
        let mut damaged = 0;
        let mut queued = VecDeque::new();
        let mut queued_bytes = 0;
        for (index, scan) in scans.iter().enumerate() {
            let path = segment_path(&dir, scan.first);
            let next_first = firsts.get(index + 1).copied();
            let mut lost = 0;
            for damage in &scan.damage {
                // A damaged stretch at the end of the last segment is one torn record.
                let end = damage
                    .before
                    .or(next_first)
                    .unwrap_or(damage.after.saturating_add(1))
                    .max(damage.after);
                lost += end.saturating_sub(damage.after.max(count_from));
            }
            if let Some(first_damage) = scan.damage.first() {
                tracing::warn!(
                    segment = %path.display(),
                    offset = first_damage.offset,
                    damaged_stretches = scan.damage.len(),
                    records_lost = lost,
                    "damaged records in the outbox skipped"
                );
            }
            damaged += lost;
            if !usable(scan) {
                let discarded = scan
                    .records
                    .iter()
                    .filter(|record| record.seq >= count_from)
                    .count() as u64;
                if discarded > 0 {
                    tracing::warn!(
                        segment = %path.display(),
                        segment_epoch = ?scan.epoch,
                        epoch,
                        records_lost = discarded,
                        "outbox segment of another epoch: its records are discarded"
                    );
                }
                damaged += discarded;
                continue;
            }
            for record in &scan.records {
                let after_last = queued
                    .back()
                    .is_none_or(|last: &Location| record.seq > last.seq);
                if record.seq < next_unacked || !after_last {
                    continue; // acknowledged before the crash, or a duplicate
                }
                queued_bytes += u64::from(record.len);
                queued.push_back(*record);
            }
        }

        // The active segment: the last one, its torn tail cut off, if it is ours.
        let mut segments = firsts;
        let last = scans.last();
        let keep_last = last.is_some_and(|scan| {
            scan.epoch == Some(epoch)
                || (scan.format_zero && known_epoch.is_some() && !scan.records.is_empty())
        });
        let (active, active_len, active_data_start) = match last {
            Some(scan) if keep_last => {
                let path = segment_path(&dir, scan.first);
                let file = files
                    .open_append(&path)
                    .map_err(|e| OutboxError::io(&path, e))?;
                let mut len = scan.len;
                if let Some(tail) = scan.torn_tail {
                    tracing::warn!(segment = %path.display(), offset = tail, "torn tail of the outbox cut off");
                    file.set_len(tail)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| OutboxError::io(&path, e))?;
                    len = tail;
                }
                (file, len, scan.data_start)
            }
            _ => {
                let path = segment_path(&dir, next_seq);
                let file = create_segment(files.as_ref(), &path, epoch)
                    .map_err(|e| OutboxError::io(&path, e))?;
                sync_dir(files.as_ref(), &dir)?;
                if segments.last() != Some(&next_seq) {
                    segments.push(next_seq);
                }
                (file, SEGMENT_HEADER, SEGMENT_HEADER)
            }
        };

        let state = SavedState {
            epoch,
            next_unacked: queued.front().map_or(next_seq, |record| record.seq),
            dropped_oldest: saved.map_or(0, |state| state.dropped_oldest),
        };
        if saved.is_none() && !scans.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                epoch,
                next_unacked = state.next_unacked,
                "outbox state rebuilt from the segments; the count of dropped messages \
                 is unknown and restarts at 0"
            );
        }
        let mut outbox = Self {
            config,
            state,
            state_dirty: saved != Some(state),
            state_saved_at: Instant::now(),
            state_save_refused: false,
            queued,
            acked_ahead: BTreeSet::new(),
            queued_bytes,
            next_seq,
            segments,
            files,
            active,
            active_len,
            active_data_start,
            active_tail_dirty: false,
            unsynced: false,
            synced_at: Instant::now(),
            refused: 0,
            damaged,
        };
        if outbox.state_dirty {
            outbox.save_state()?;
        }
        outbox.reclaim()?;
        Ok(outbox)
    }

    /// The queue's epoch (fixed for its lifetime).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Appends the message `build(seq, epoch)` and returns its sequence number.
    ///
    /// A refusal ([`OutboxError::Full`], [`OutboxError::NoSpace`]) keeps nothing of
    /// the message and uses no sequence number: the caller tries again later.
    pub fn append(&mut self, build: impl FnOnce(u64, u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        let seq = self.next_seq;
        let payload = build(seq, self.state.epoch);
        let size = payload.len() as u64;
        let larger_than_queue =
            self.config.overflow == OverflowPolicy::DropOldest && size > self.config.max_bytes;
        if payload.len() > MAX_RECORD_PAYLOAD || larger_than_queue {
            // (Checked before anything is dropped for it.)
            return Err(OutboxError::TooLarge(payload.len()));
        }
        let mut dropped = false;
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
                    if !self.acked_ahead.remove(&oldest.seq) {
                        self.state.dropped_oldest += 1;
                        tracing::warn!(
                            seq = oldest.seq,
                            "outbox full: dropped the oldest queued message"
                        );
                    }
                    self.pop_done_front();
                    dropped = true;
                }
            }
        }
        if dropped {
            self.update_prefix();
            self.reclaim()?;
        }
        let path = self.active_path();
        if self.active_tail_dirty {
            self.active
                .set_len(self.active_len)
                .map_err(|e| OutboxError::io(&path, e))?;
            self.active_tail_dirty = false;
        }
        if self.active_len >= self.config.segment_bytes {
            match self.roll_segment(seq) {
                Ok(()) => {}
                // No room for a new segment: stay on this one (the append decides).
                Err(OutboxError::NoSpace { path }) => {
                    tracing::debug!(segment = %path.display(), "no room for a new outbox segment");
                }
                Err(error) => return Err(error),
            }
        }
        let record = encode_record(seq, &payload);
        loop {
            match self.write_record(&record) {
                Ok(()) => break,
                // Under drop_oldest a full file system is one more reason to make room
                // the same way: the oldest segment's records go (counted), then retry.
                Err(OutboxError::NoSpace { path })
                    if self.config.overflow == OverflowPolicy::DropOldest =>
                {
                    if !self.drop_oldest_segment()? {
                        return Err(OutboxError::NoSpace { path });
                    }
                }
                Err(error) => return Err(error),
            }
        }
        let location = Location {
            seq,
            segment: self.active_first(),
            offset: self.active_len,
            len: payload.len() as u32,
        };
        self.active_len += record.len() as u64;
        self.queued.push_back(location);
        self.queued_bytes += size;
        self.next_seq += 1;
        // The record is queued from here on: later trouble is logged, not returned
        // (an error would make the caller append the same message again).
        self.unsynced = self.config.fsync != FsyncPolicy::Always;
        let sync_due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryMillis(ms) => self.synced_at.elapsed() >= Duration::from_millis(ms),
            FsyncPolicy::Never => false,
        };
        if sync_due && let Err(error) = self.sync() {
            tracing::warn!(%error, "outbox sync after an append failed; retried later");
        }
        Ok(seq)
    }

    /// Forces appended records to disk (call on a timer under [`FsyncPolicy::EveryMillis`])
    /// and saves the acknowledgement state if it changed. A state file that cannot be
    /// written for want of space is retried at the next call, not an error.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if self.unsynced {
            self.active
                .sync_data()
                .map_err(|e| OutboxError::io(&self.active_path(), e))?;
            self.unsynced = false;
        }
        self.synced_at = Instant::now();
        if self.state_dirty {
            self.save_state()?;
        }
        Ok(())
    }

    /// Marks `seq` acknowledged. Unknown, missing or repeated acknowledgements are
    /// ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        let Some(index) = self.position(seq) else {
            return Ok(());
        };
        if index > 0 {
            self.acked_ahead.insert(seq);
            return Ok(());
        }
        if let Some(front) = self.queued.pop_front() {
            self.queued_bytes -= u64::from(front.len);
        }
        self.pop_done_front();
        self.update_prefix();
        self.reclaim()?;
        if self.state_dirty && self.state_saved_at.elapsed() >= STATE_SAVE_INTERVAL {
            self.save_state()?;
        }
        Ok(())
    }

    /// Whether `seq` is still waiting for acknowledgement.
    pub fn is_pending(&self, seq: u64) -> bool {
        self.position(seq).is_some() && !self.acked_ahead.contains(&seq)
    }

    /// The first pending sequence number at or after `from`, if any (sequence numbers
    /// of damaged or lost records are skipped).
    pub fn next_pending(&self, from: u64) -> Option<u64> {
        let start = self.queued.partition_point(|location| location.seq < from);
        self.queued
            .range(start..)
            .map(|location| location.seq)
            .find(|seq| !self.acked_ahead.contains(seq))
    }

    /// Reads the payload of a queued message.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, OutboxError> {
        let index = self.position(seq).ok_or(OutboxError::NotQueued(seq))?;
        let location = self.queued[index];
        let path = segment_path(&self.config.dir, location.segment);
        let mut payload = vec![0; location.len as usize];
        let offset = location.offset + RECORD_HEADER;
        if location.segment == self.active_first() {
            self.active.read_exact_at(&mut payload, offset)
        } else {
            self.files.read_exact_at(&path, &mut payload, offset)
        }
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

    /// Where `seq` is in `queued`, if it is there.
    fn position(&self, seq: u64) -> Option<usize> {
        self.queued
            .binary_search_by_key(&seq, |location| location.seq)
            .ok()
    }

    fn active_first(&self) -> u64 {
        self.segments[self.segments.len() - 1]
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.config.dir, self.active_first())
    }

    /// Removes acknowledged records from the front of `queued`.
    fn pop_done_front(&mut self) {
        while let Some(front) = self.queued.front().copied() {
            if !self.acked_ahead.remove(&front.seq) {
                break;
            }
            self.queued_bytes -= u64::from(front.len);
            self.queued.pop_front();
        }
    }

    /// Writes one whole record at the end of the active segment (and forces it to disk
    /// under [`FsyncPolicy::Always`]); on failure nothing of it remains.
    fn write_record(&mut self, record: &[u8]) -> Result<(), OutboxError> {
        let path = self.active_path();
        if self.active_tail_dirty {
            self.active
                .set_len(self.active_len)
                .map_err(|e| OutboxError::io(&path, e))?;
            self.active_tail_dirty = false;
        }
        let mut written = self.active.append(record);
        if written.is_ok() && self.config.fsync == FsyncPolicy::Always {
            written = self.active.sync_data();
        }
        if let Err(error) = written {
            // Nothing of a refused record may remain: cut back to the last good length.
            if let Err(cut) = self.active.set_len(self.active_len) {
                tracing::error!(segment = %path.display(), error = %cut, "cannot cut a failed outbox append back");
                self.active_tail_dirty = true;
            }
            return Err(OutboxError::io(&path, error));
        }
        Ok(())
    }

    /// The file system is full under [`OverflowPolicy::DropOldest`]: drops every
    /// queued record of the oldest segment that is not the active one (each counted in
    /// `dropped_oldest`) and deletes the segment. `false` if there is no such segment
    /// (only the active one is left: nothing can be freed without losing it whole).
    fn drop_oldest_segment(&mut self) -> Result<bool, OutboxError> {
        if self.segments.len() < 2 {
            return Ok(false);
        }
        let end = self.segments[1];
        let mut dropped = 0u64;
        while let Some(front) = self.queued.front().copied() {
            if front.seq >= end {
                break;
            }
            self.queued.pop_front();
            self.queued_bytes -= u64::from(front.len);
            if !self.acked_ahead.remove(&front.seq) {
                dropped += 1;
            }
        }
        self.state.dropped_oldest += dropped;
        tracing::warn!(
            segment = %segment_path(&self.config.dir, self.segments[0]).display(),
            dropped,
            "outbox file system full: dropped the oldest segment's queued messages"
        );
        self.pop_done_front();
        self.update_prefix();
        let before = self.segments.len();
        self.reclaim()?;
        Ok(self.segments.len() < before)
    }

    /// Brings `state.next_unacked` up to the first queued record.
    fn update_prefix(&mut self) {
        let prefix = self.queued.front().map_or(self.next_seq, |front| front.seq);
        if prefix != self.state.next_unacked {
            self.state.next_unacked = prefix;
            self.state_dirty = true;
        }
    }

    /// Starts a fresh active segment at `first_seq`. [`OutboxError::NoSpace`] leaves
    /// the current one active and nothing of the new one on disk.
    fn roll_segment(&mut self, first_seq: u64) -> Result<(), OutboxError> {
        self.sync()?;
        let path = segment_path(&self.config.dir, first_seq);
        let file = match create_segment(self.files.as_ref(), &path, self.state.epoch) {
            Ok(file) => file,
            Err(error) => {
                if let Err(remove) = self.files.remove(&path) {
                    tracing::warn!(segment = %path.display(), error = %remove, "cannot remove an unfinished outbox segment");
                }
                return Err(OutboxError::io(&path, error));
            }
        };
        sync_dir(self.files.as_ref(), &self.config.dir)?;
        self.segments.push(first_seq);
        self.active = file;
        self.active_len = SEGMENT_HEADER;
        self.active_data_start = SEGMENT_HEADER;
        self.active_tail_dirty = false;
        self.unsynced = false;
        Ok(())
    }

    /// Deletes segments whose every record is acknowledged or dropped, the active one
    /// included (replaced by a fresh one) once it holds enough bytes.
    fn reclaim(&mut self) -> Result<(), OutboxError> {
        let active_first = self.active_first();
        let active_has_queued = self
            .queued
            .back()
            .is_some_and(|last| last.segment == active_first);
        let threshold = RECLAIM_ACTIVE_BYTES
            .min(self.config.segment_bytes / 2)
            .max(1);
        if !active_has_queued
            && self.next_seq > active_first
            && self.active_len - self.active_data_start.min(self.active_len) >= threshold
        {
            match self.roll_segment(self.next_seq) {
                Ok(()) => {}
                Err(OutboxError::NoSpace { path }) => {
                    tracing::debug!(segment = %path.display(), "no room to replace the finished outbox segment yet");
                }
                Err(error) => return Err(error),
            }
        }
        let horizon = self.queued.front().map_or(self.next_seq, |front| front.seq);
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1] <= horizon {
            if self.state_dirty {
                // Say these records are done before they disappear (not required for
                // correctness: missing records are skipped; a full disk is no reason
                // to keep the files that would free it).
                self.save_state()?;
            }
            let path = segment_path(&self.config.dir, self.segments[0]);
            match self.files.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(OutboxError::io(&path, e)),
            }
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(self.files.as_ref(), &self.config.dir)?;
        }
        Ok(())
    }

    /// Saves the acknowledgement state. For want of space it stays dirty (retried
    /// later); the previous state file stays whole.
    fn save_state(&mut self) -> Result<(), OutboxError> {
        match write_state(self.files.as_ref(), &self.config.dir, &self.state) {
            Ok(()) => {
                self.state_dirty = false;
                self.state_save_refused = false;
                self.state_saved_at = Instant::now();
                Ok(())
            }
            Err(OutboxError::NoSpace { path }) => {
                if !self.state_save_refused {
                    tracing::warn!(file = %path.display(), "no space to save the outbox state; retried later");
                }
                self.state_save_refused = true;
                self.state_saved_at = Instant::now();
                Ok(())
            }
            Err(error) => Err(error),
        }
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

fn list_segments(files: &dyn OutboxFiles, dir: &Path) -> Result<Vec<u64>, OutboxError> {
    let mut firsts = Vec::new();
    for name in files.list(dir).map_err(|e| OutboxError::io(dir, e))? {
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

/// Reads `outbox.state`: `None` when it is missing, or unparsable (then moved aside
/// to `outbox.state.corrupt`, never overwritten).
fn read_saved_state(
    files: &dyn OutboxFiles,
    dir: &Path,
) -> Result<Option<SavedState>, OutboxError> {
    let path = dir.join(STATE_FILE);
    match files.read(&path) {
        Ok(bytes) => match serde_json::from_slice::<SavedState>(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(error) => {
                let aside = dir.join(CORRUPT_STATE_FILE);
                files
                    .rename(&path, &aside)
                    .map_err(|e| OutboxError::io(&path, e))?;
                sync_dir(files, dir)?;
                tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    %error,
                    "outbox state file is corrupt: moved aside, rebuilding it from the segments"
                );
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutboxError::io(&path, e)),
    }
}

/// A stretch of damaged bytes in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts.
    pub offset: u64,
    /// The lowest sequence number it may have held (one above the last good record).
    pub after: u64,
    /// The sequence number of the good record after it; `None` when it runs to the end.
    pub before: Option<u64>,
}

/// What one segment holds, as [`scan_segment`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The segment's first sequence number (its name).
    pub first: u64,
    /// The epoch in the header; `None` for format 0 or a damaged header.
    pub epoch: Option<u64>,
    /// The segment has no header (written before format 1).
    pub format_zero: bool,
    /// The segment starts with the magic but its header's checksum fails: its records
    /// are read without it.
    pub header_damaged: bool,
    /// Where the records start.
    pub data_start: u64,
    /// The file's length.
    pub len: u64,
    /// Every intact record, in order of sequence numbers.
    pub records: Vec<Location>,
    /// The damaged stretches, in order.
    pub damage: Vec<Damage>,
    /// Where damaged bytes start that run to the end of the file.
    pub torn_tail: Option<u64>,
}

/// A segment this software cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The header names a format newer than this code reads.
    #[error("segment format {format} is newer than this software reads ({SEGMENT_FORMAT})")]
    NewerFormat {
        /// The format in the header.
        format: u32,
    },
}

/// Reads every intact record of the segment whose bytes are `bytes` and whose first
/// sequence number is `first`, skipping damage (see the module docs). No I/O.
pub fn scan_segment(bytes: &[u8], first: u64) -> Result<SegmentScan, SegmentError> {
    let mut scan = SegmentScan {
        first,
        epoch: None,
        format_zero: false,
        header_damaged: false,
        data_start: 0,
        len: bytes.len() as u64,
        records: Vec::new(),
        damage: Vec::new(),
        torn_tail: None,
    };
    let magic_len = bytes.len().min(SEGMENT_MAGIC.len());
    if magic_len == 0 || bytes[..magic_len] != SEGMENT_MAGIC[..magic_len] {
        scan.format_zero = true;
    } else if bytes.len() < SEGMENT_HEADER as usize {
        // A header torn while the segment was created: nothing after it.
        scan.torn_tail = Some(0);
        return Ok(scan);
    } else {
        scan.data_start = SEGMENT_HEADER;
        match parse_segment_header(&bytes[..SEGMENT_HEADER as usize]) {
            Some((SEGMENT_FORMAT, epoch)) => scan.epoch = Some(epoch),
            Some((format, _)) => return Err(SegmentError::NewerFormat { format }),
            None => scan.header_damaged = true,
        }
    }
    let mut offset = scan.data_start as usize;
    // The lowest sequence number the next record may have.
    let mut floor = first;
    while offset < bytes.len() {
        if let Some(record) = parse_record(bytes, offset, floor) {
            floor = record.seq + 1;
            offset = (record.offset + RECORD_HEADER) as usize + record.len as usize;
            scan.records.push(Location {
                segment: first,
                ..record
            });
            continue;
        }
        let resume = plausible_end(bytes, offset)
            .filter(|&end| parse_record(bytes, end, floor).is_some())
            .or_else(|| {
                (offset + 1..bytes.len()).find(|&at| parse_record(bytes, at, floor).is_some())
            });
        match resume {
            Some(at) => {
                let before = parse_record(bytes, at, floor).map(|record| record.seq);
                scan.damage.push(Damage {
                    offset: offset as u64,
                    after: floor,
                    before,
                });
                offset = at;
            }
            None => {
                scan.damage.push(Damage {
                    offset: offset as u64,
                    after: floor,
                    before: None,
                });
                scan.torn_tail = Some(offset as u64);
                break;
            }
        }
    }
    Ok(scan)
}

/// The payload of an intact record `scan_segment` found in `bytes`.
pub fn record_payload<'a>(bytes: &'a [u8], record: &Location) -> Option<&'a [u8]> {
    let start = usize::try_from(record.offset + RECORD_HEADER).ok()?;
    bytes.get(start..start.checked_add(record.len as usize)?)
}

/// The format and epoch of an intact segment header.
fn parse_segment_header(header: &[u8]) -> Option<(u32, u64)> {
    let crc = u32::from_le_bytes(header.get(16..20)?.try_into().ok()?);
    if crc32fast::hash(header.get(..16)?) != crc {
        return None;
    }
    let format = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    let epoch = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
    Some((format, epoch))
}

/// A segment header for `epoch`.
pub fn segment_header(epoch: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut header = [0; SEGMENT_HEADER as usize];
    header[..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4..8].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    header[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&header[..16]);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The intact record at `offset` with a sequence number of at least `floor`.
fn parse_record(bytes: &[u8], offset: usize, floor: u64) -> Option<Location> {
    let header = bytes.get(offset..offset.checked_add(RECORD_HEADER as usize)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq_bytes: [u8; 8] = header[8..16].try_into().ok()?;
    let seq = u64::from_le_bytes(seq_bytes);
    // The outbox never writes `u64::MAX` (the next sequence number would overflow): a
    // record claiming it is damage, and the scan's `seq + 1` cannot overflow. (Found by
    // the `outbox_segment` fuzz target.)
    if len as usize > MAX_RECORD_PAYLOAD || seq < floor || seq == u64::MAX {
        return None;
    }
    let start = offset + RECORD_HEADER as usize;
    let payload = bytes.get(start..start + len as usize)?;
    (record_checksum(seq, payload) == crc).then_some(Location {
        seq,
        segment: 0,
        offset: offset as u64,
        len,
    })
}

/// One record as it is on disk: `len u32 LE`, `crc32 u32 LE`, `seq u64 LE`, `payload`.
pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&record_checksum(seq, payload).to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// A record's checksum: CRC-32 of its sequence number (LE) and payload.
fn record_checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Where the (damaged) record at `offset` would end, if its length field is plausible.
fn plausible_end(bytes: &[u8], offset: usize) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?) as usize;
    let end = offset + RECORD_HEADER as usize + len;
    (len <= MAX_RECORD_PAYLOAD && end < bytes.len()).then_some(end)
}

/// Creates (or empties) a segment holding only its header, on disk when this returns.
fn create_segment(
    files: &dyn OutboxFiles,
    path: &Path,
    epoch: u64,
) -> io::Result<Box<dyn SegmentFile>> {
    let mut file = files.open_append(path)?;
    file.set_len(0)?;
    file.append(&segment_header(epoch))?;
    file.sync_data()?;
    Ok(file)
}

/// Replaces `outbox.state` atomically; a refused write leaves the previous one whole.
fn write_state(files: &dyn OutboxFiles, dir: &Path, state: &SavedState) -> Result<(), OutboxError> {
    let target = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(state).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
    files
        .replace(&target, &bytes)
        .map_err(|e| OutboxError::io(&target, e))
}

fn sync_dir(files: &dyn OutboxFiles, dir: &Path) -> Result<(), OutboxError> {
    files.sync_dir(dir).map_err(|e| OutboxError::io(dir, e))
}

/// Whether an I/O error means the file system (or the user's quota) is full.
fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The file operations the outbox uses, and nothing else: the seam where tests
/// inject faults (a full disk, a failing fsync). [`DiskFiles`] is the real one.
pub trait OutboxFiles: Send {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// A whole file's bytes.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Fills `buf` from `path` at `offset` (a record of a segment that is not active).
    fn read_exact_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Opens (creating it if missing) a segment for appending and reading.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Replaces `path` with `bytes` atomically and durably (temporary file, fsync,
    /// rename, fsync of the directory); on failure the old file is whole and no
    /// temporary file remains.
    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Renames `from` to `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes `dir`'s entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open segment file.
pub trait SegmentFile: Send {
    /// Appends `bytes` at the end (all of them, or an error).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the appended data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the data and the length durable (fsync).
    fn sync_all(&self) -> io::Result<()>;
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFiles;

impl OutboxFiles for DiskFiles {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_exact_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&File::open(path)?, buf, offset)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        // Keeps the error's kind (a full disk stays a refusal) and its wording (which
        // step failed, on which file).
        warden_files::write_file_atomically(path, bytes)
            .map_err(|error| io::Error::new(error.source.kind(), error))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SegmentFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
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
        source: io::Error,
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

    /// The error of a file operation on `path`: [`OutboxError::NoSpace`] when the file
    /// system or quota is full.
    fn io(path: &Path, source: io::Error) -> Self {
        if is_no_space(&source) {
            Self::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Fuzz harnesses for what the link reads back from disk, as plain functions.
///
/// `cloud-link/fuzz` calls them from cargo-fuzz targets; property tests call them too,
/// so `cargo test` runs the same checks. Each panics only if an invariant breaks.
pub mod fuzz_harness {
    use crate::outbox::{
        Location, RECORD_HEADER, SEGMENT_HEADER, encode_record, record_payload, scan_segment,
        segment_header,
    };
    use crate::topics::TelemetryBatch;

    /// One segment's bytes, the first byte choosing the segment's first sequence
    /// number. The scan never panics; its records are intact, in order, inside the
    /// bytes and apart from each other and the damage; cutting the torn tail off (as
    /// opening does) finds the same records; writing the records again gives a segment
    /// that scans to exactly them, undamaged. Each payload is also decoded as what the
    /// telemetry stream queues ([`telemetry_batch`]).
    pub fn outbox_segment(data: &[u8]) {
        let Some((&first, bytes)) = data.split_first() else {
            return;
        };
        let first = u64::from(first);
        let Ok(scan) = scan_segment(bytes, first) else {
            return;
        };
        assert_eq!(scan.len, bytes.len() as u64);
        let mut previous: Option<&Location> = None;
        for record in &scan.records {
            assert!(record.seq >= first && record.segment == first);
            assert!(record.offset >= scan.data_start && record.end() <= scan.len);
            if let Some(previous) = previous {
                assert!(record.seq > previous.seq && record.offset >= previous.end());
            }
            assert!(
                scan.damage
                    .iter()
                    .all(|damage| damage.offset != record.offset)
            );
            previous = Some(record);
        }
        if let Some(tail) = scan.torn_tail {
            assert!(tail <= scan.len);
            assert!(scan.records.iter().all(|record| record.end() <= tail));
            let cut = &bytes[..usize::try_from(tail).unwrap_or(bytes.len())];
            let again = scan_segment(cut, first).expect("a cut segment still scans");
            assert_eq!(
                again.records, scan.records,
                "cutting the torn tail kept every record"
            );
            assert_eq!(again.torn_tail, None, "nothing torn is left after the cut");
        }

        // Written again by the encoder: exactly these records, no damage.
        let mut rewritten = scan
            .epoch
            .map(|epoch| segment_header(epoch).to_vec())
            .unwrap_or_default();
        let mut payloads = Vec::with_capacity(scan.records.len());
        for record in &scan.records {
            let payload =
                record_payload(bytes, record).expect("a record's payload is inside the bytes");
            rewritten.extend_from_slice(&encode_record(record.seq, payload));
            payloads.push(payload);
            telemetry_batch(payload);
        }
        let again = scan_segment(&rewritten, first).expect("an encoded segment scans");
        assert!(
            again.damage.is_empty() && again.torn_tail.is_none(),
            "encoded records are intact"
        );
        assert_eq!(again.epoch, scan.epoch);
        let data_start = if scan.epoch.is_some() {
            SEGMENT_HEADER
        } else {
            0
        };
        let mut offset = data_start;
        for (record, payload) in again.records.iter().zip(&payloads) {
            assert_eq!(record.offset, offset);
            assert_eq!(record_payload(&rewritten, record), Some(*payload));
            offset += RECORD_HEADER + u64::from(record.len);
        }
        let seqs =
            |records: &[Location]| records.iter().map(|record| record.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&again.records), seqs(&scan.records));
    }

    /// A telemetry batch as the fleet receives it ([`TelemetryBatch::decode`]). A
    /// decoded batch encodes again, and that encoding decodes to a batch that encodes
    /// to the same bytes.
    ///
    /// (Here because this slice owns the outbox, whose telemetry records hold these
    /// batches; it belongs beside `TelemetryBatch` once the wire crate holds it.)
    pub fn telemetry_batch(data: &[u8]) {
        let Ok(batch) = TelemetryBatch::decode(data) else {
            return;
        };
        let encoded = batch.encode();
        assert!(!encoded.is_empty(), "a decoded batch encodes");
        let again = TelemetryBatch::decode(&encoded).expect("an encoded batch decodes");
        assert_eq!(again.encode(), encoded, "round trip");
        assert_eq!(again.readings.len(), batch.readings.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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
        assert!(list_segments(&DiskFiles, dir.path()).expect("list").len() > 3);
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
            list_segments(&DiskFiles, dir.path()).expect("list").len(),
            1,
            "acknowledged segments are deleted"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One segment throughout (the 20-byte segment header would make `config`'s
        // 64-byte segments roll after these cuts).
        let config = |dir: &Path| OutboxConfig {
            segment_bytes: 1 << 20,
            ..config(dir)
        };
        let mut outbox = Outbox::open(config(dir.path())).expect("open");
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

    /// Fixed-size payloads, so segments hold a known number of records.
    fn fixed(seq: u64) -> Vec<u8> {
        format!("message {seq:04}").into_bytes()
    }

    /// Bytes of one record of [`fixed`].
    const FIXED_RECORD: usize = RECORD_HEADER as usize + 12;

    /// Five records per segment.
    fn five_per_segment(dir: &Path) -> OutboxConfig {
        OutboxConfig {
            segment_bytes: SEGMENT_HEADER + 5 * FIXED_RECORD as u64,
            ..config(dir)
        }
    }

    fn pending(outbox: &Outbox) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut next = outbox.next_pending(0);
        while let Some(seq) = next {
            seqs.push(seq);
            next = outbox.next_pending(seq + 1);
        }
        seqs
    }

    /// Total size of the files in `dir`.
    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
            .sum()
    }

    /// A queue of 15 records in segments 0, 5 and 10, closed; returns its epoch.
    fn fifteen_records(dir: &Path) -> u64 {
        let mut outbox = Outbox::open(five_per_segment(dir)).expect("open");
        for expected in 0..15 {
            assert_eq!(
                outbox.append(|seq, _| fixed(seq)).expect("append"),
                expected
            );
        }
        assert_eq!(
            list_segments(&DiskFiles, dir).expect("list"),
            vec![0, 5, 10]
        );
        outbox.epoch()
    }

    #[test]
    fn every_flipped_byte_of_a_middle_record_loses_only_that_record() {
        // Record 7 is the middle record of the middle segment (5..=9).
        let start = SEGMENT_HEADER as usize + 2 * FIXED_RECORD;
        for offset in start..start + FIXED_RECORD {
            let dir = tempfile::tempdir().expect("tempdir");
            let epoch = fifteen_records(dir.path());
            let middle = segment_path(dir.path(), 5);
            let mut bytes = std::fs::read(&middle).expect("read");
            bytes[offset] ^= 0xff;
            std::fs::write(&middle, &bytes).expect("write");

            let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
            assert_eq!(outbox.epoch(), epoch);
            assert_eq!(outbox.stats().damaged_records, 1, "flip at {offset}");
            assert_eq!(outbox.stats().depth, 14, "flip at {offset}");
            for seq in (0..15).filter(|&seq| seq != 7) {
                assert!(outbox.is_pending(seq), "{seq} after a flip at {offset}");
                assert_eq!(
                    outbox.read(seq).expect("read"),
                    fixed(seq),
                    "flip at {offset}"
                );
            }
            assert!(!outbox.is_pending(7));
            assert!(matches!(outbox.read(7), Err(OutboxError::NotQueued(7))));
            assert_eq!(outbox.next_pending(7), Some(8), "the gap is walked past");
            let expected: Vec<u64> = (0..15).filter(|&seq| seq != 7).collect();
            assert_eq!(pending(&outbox), expected);
            for seq in 0..15 {
                outbox.ack(seq).expect("ack"); // 7 included: ignored
            }
            assert_eq!(outbox.stats().depth, 0);
            assert_eq!(outbox.next_pending(0), None);
            let left = list_segments(&DiskFiles, dir.path()).expect("list");
            assert!(
                left.iter().all(|first| *first >= 15),
                "flip at {offset}: segments {left:?} remain"
            );
            assert_eq!(outbox.append(|seq, _| fixed(seq)).expect("append"), 15);
        }
    }

    #[test]
    fn a_corrupted_length_or_inserted_garbage_is_resynchronised_past() {
        // A length that points into the next record: record 7 is lost, 8 on are found.
        let dir = tempfile::tempdir().expect("tempdir");
        fifteen_records(dir.path());
        let middle = segment_path(dir.path(), 5);
        let mut bytes = std::fs::read(&middle).expect("read");
        let start = SEGMENT_HEADER as usize + 2 * FIXED_RECORD;
        bytes[start..start + 4].copy_from_slice(&20u32.to_le_bytes());
        std::fs::write(&middle, &bytes).expect("write");
        let outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
        assert_eq!(outbox.stats().damaged_records, 1);
        let expected: Vec<u64> = (0..15).filter(|&seq| seq != 7).collect();
        assert_eq!(pending(&outbox), expected);
        assert_eq!(outbox.read(8).expect("read"), fixed(8));
        drop(outbox);

        // Garbage (starting with a plausible length) between records 6 and 7: nothing lost.
        let dir = tempfile::tempdir().expect("tempdir");
        fifteen_records(dir.path());
        let middle = segment_path(dir.path(), 5);
        let mut bytes = std::fs::read(&middle).expect("read");
        let mut garbage = 9u32.to_le_bytes().to_vec();
        garbage.extend((0u8..33).map(|n| n.wrapping_mul(37)));
        bytes.splice(start..start, garbage);
        std::fs::write(&middle, &bytes).expect("write");
        let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
        assert_eq!(outbox.stats().damaged_records, 0);
        assert_eq!(pending(&outbox), (0..15).collect::<Vec<_>>());
        for seq in 0..15 {
            assert_eq!(outbox.read(seq).expect("read"), fixed(seq));
        }
        for seq in 0..15 {
            outbox.ack(seq).expect("ack");
        }
        assert!(
            list_segments(&DiskFiles, dir.path())
                .expect("list")
                .iter()
                .all(|f| *f >= 15)
        );
    }

    #[test]
    fn drop_oldest_keeps_disk_use_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = OutboxConfig {
            max_bytes: 10_000,
            segment_bytes: 4096,
            overflow: OverflowPolicy::DropOldest,
            ..config(dir.path())
        };
        let bound = config.max_bytes + 2 * config.segment_bytes;
        let mut outbox = Outbox::open(config).expect("open");
        // 20 times max_bytes.
        for _ in 0..200 {
            outbox.append(|_, _| vec![7; 1000]).expect("append");
            let used = dir_bytes(dir.path());
            assert!(used <= bound, "{used} bytes on disk, bound {bound}");
        }
        let stats = outbox.stats();
        assert_eq!(stats.depth + stats.dropped_oldest, 200);
        assert_eq!(stats.depth, 10);
    }

    #[test]
    fn a_single_active_segment_is_freed_once_everything_in_it_is_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |dir: &Path| OutboxConfig {
            segment_bytes: 4 * 1024 * 1024,
            ..config(dir)
        };
        let mut outbox = Outbox::open(config(dir.path())).expect("open");
        for _ in 0..100 {
            outbox.append(|_, _| vec![1; 1000]).expect("append");
        }
        assert_eq!(
            list_segments(&DiskFiles, dir.path()).expect("list"),
            vec![0]
        );
        let full = dir_bytes(dir.path());
        assert!(full > 100_000);
        for seq in 0..100 {
            outbox.ack(seq).expect("ack");
        }
        let used = dir_bytes(dir.path());
        assert!(used < 1000, "{used} bytes left of {full}");
        assert_eq!(
            list_segments(&DiskFiles, dir.path()).expect("list"),
            vec![100]
        );
        drop(outbox);
        // The fresh segment's name keeps the sequence numbers going, state file or not.
        std::fs::remove_file(dir.path().join(STATE_FILE)).expect("remove state");
        let mut outbox = Outbox::open(config(dir.path())).expect("reopen");
        assert_eq!(outbox.append(|_, _| vec![1]).expect("append"), 100);
    }

    fn state_lost_or_corrupt(corrupt: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let epoch = fifteen_records(dir.path());
        let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
        for seq in 0..7 {
            outbox.ack(seq).expect("ack");
        }
        outbox.sync().expect("sync");
        drop(outbox);
        let state = dir.path().join(STATE_FILE);
        if corrupt {
            std::fs::write(&state, b"{\"epoch\": 12, \"next_un").expect("corrupt");
        } else {
            std::fs::remove_file(&state).expect("remove");
        }

        let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("reopen");
        assert_eq!(outbox.epoch(), epoch, "the epoch comes from the segments");
        assert_eq!(outbox.stats().dropped_oldest, 0);
        let pending = pending(&outbox);
        // 5 and 6 were acknowledged but their segment is still there: sent once more.
        assert_eq!(pending, (5..15).collect::<Vec<_>>());
        if corrupt {
            let aside = std::fs::read(dir.path().join(CORRUPT_STATE_FILE)).expect("moved aside");
            assert_eq!(aside, b"{\"epoch\": 12, \"next_un");
        }
        let rebuilt: SavedState =
            serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("parses");
        assert_eq!(rebuilt.epoch, epoch);
        // The fleet acknowledges with the epoch in the payloads: the agent's check holds.
        for seq in pending {
            assert!(outbox.is_pending(seq));
            outbox.ack(seq).expect("ack");
        }
        assert_eq!(outbox.stats().depth, 0);
        assert!(
            list_segments(&DiskFiles, dir.path())
                .expect("list")
                .iter()
                .all(|f| *f >= 15)
        );
        drop(outbox);
        let outbox = Outbox::open(five_per_segment(dir.path())).expect("reopen");
        assert_eq!((outbox.epoch(), outbox.stats().depth), (epoch, 0));
    }

    #[test]
    fn a_deleted_state_file_is_rebuilt_from_the_segments() {
        state_lost_or_corrupt(false);
    }

    #[test]
    fn a_corrupt_state_file_is_moved_aside_and_rebuilt_from_the_segments() {
        state_lost_or_corrupt(true);
    }

    /// A format-0 segment (no header) of records `seqs`.
    fn format_zero_segment(dir: &Path, seqs: std::ops::Range<u64>) {
        let mut bytes = Vec::new();
        for seq in seqs.clone() {
            bytes.extend_from_slice(&encode_record(seq, &fixed(seq)));
        }
        std::fs::write(segment_path(dir, seqs.start), bytes).expect("write");
    }

    #[test]
    fn header_less_segments_take_their_epoch_from_the_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        format_zero_segment(dir.path(), 0..3);
        let state = SavedState {
            epoch: 42,
            next_unacked: 1,
            dropped_oldest: 2,
        };
        write_state(&DiskFiles, dir.path(), &state).expect("state");
        let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
        assert_eq!(outbox.epoch(), 42);
        assert_eq!(pending(&outbox), vec![1, 2]);
        assert_eq!(outbox.read(2).expect("read"), fixed(2));
        assert_eq!(outbox.append(|seq, _| fixed(seq)).expect("append"), 3);
        drop(outbox);
        let mut outbox = Outbox::open(five_per_segment(dir.path())).expect("reopen");
        assert_eq!(pending(&outbox), vec![1, 2, 3]);
        assert_eq!(outbox.stats().dropped_oldest, 2);
        for seq in 1..4 {
            outbox.ack(seq).expect("ack");
        }
        assert_eq!(outbox.stats().depth, 0);

        // Without the state file nothing knows their epoch: they could never be
        // acknowledged, so they are discarded (counted) and a new epoch starts.
        let dir = tempfile::tempdir().expect("tempdir");
        format_zero_segment(dir.path(), 0..3);
        let outbox = Outbox::open(five_per_segment(dir.path())).expect("open");
        assert_eq!(outbox.stats().depth, 0);
        assert_eq!(outbox.stats().damaged_records, 3);
        assert_eq!(outbox.stats().next_seq, 3);
    }

    /// Faults a test injects into one outbox's file operations.
    #[derive(Debug, Default)]
    struct Faults {
        /// Writes land halfway, then fail with `ENOSPC`.
        no_space: AtomicBool,
        /// The next this many writes land halfway, then fail with `ENOSPC`.
        no_space_writes: AtomicU32,
        /// Segment fsyncs fail with `ENOSPC` (delayed allocation running out).
        fsync_no_space: AtomicBool,
    }

    impl Faults {
        /// Whether the write about to happen fails (one of `no_space_writes` used up).
        fn write_fails(&self) -> bool {
            let counted = self
                .no_space_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            self.no_space.load(Ordering::SeqCst) || counted
        }
    }

    /// The real file system with [`Faults`] injected into writes and fsyncs.
    struct FaultyFiles(Arc<Faults>);

    struct FaultySegment {
        file: Box<dyn SegmentFile>,
        faults: Arc<Faults>,
    }

    impl SegmentFile for FaultySegment {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            if self.faults.write_fails() {
                // What a full file system does: part of the write lands, then ENOSPC.
                self.file.append(&bytes[..bytes.len() / 2])?;
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.file.append(bytes)
        }
        fn sync_data(&self) -> io::Result<()> {
            if self.faults.fsync_no_space.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.file.sync_data()
        }
        fn sync_all(&self) -> io::Result<()> {
            self.file.sync_all()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.file.set_len(len)
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.file.read_exact_at(buf, offset)
        }
    }

    impl OutboxFiles for FaultyFiles {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            DiskFiles.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
            DiskFiles.list(dir)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            DiskFiles.read(path)
        }
        fn read_exact_at(&self, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
            DiskFiles.read_exact_at(path, buf, offset)
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
            Ok(Box::new(FaultySegment {
                file: DiskFiles.open_append(path)?,
                faults: Arc::clone(&self.0),
            }))
        }
        fn replace(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            if self.0.write_fails() {
                // A full disk refuses the temporary file, which is removed; the old
                // file is untouched.
                return Err(io::ErrorKind::StorageFull.into());
            }
            DiskFiles.replace(path, bytes)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            DiskFiles.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            DiskFiles.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            DiskFiles.sync_dir(dir)
        }
    }

    /// An outbox on the real file system with faults the test can switch on.
    fn open_faulty(config: OutboxConfig) -> (Outbox, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let outbox =
            Outbox::open_with(config, Box::new(FaultyFiles(Arc::clone(&faults)))).expect("open");
        (outbox, faults)
    }

    #[test]
    fn no_space_refuses_the_append_leaves_nothing_partial_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, faults) = open_faulty(five_per_segment(dir.path()));
        for _ in 0..5 {
            outbox.append(|seq, _| fixed(seq)).expect("append");
        }
        let segment = segment_path(dir.path(), 0);
        let length = std::fs::metadata(&segment).expect("metadata").len();
        let state_before = std::fs::read(dir.path().join(STATE_FILE)).expect("state");

        faults.no_space.store(true, Ordering::SeqCst);
        // The segment is full: rolling fails too, and the append stays on it.
        let refused = outbox.append(|seq, _| fixed(seq)).expect_err("no space");
        assert!(matches!(refused, OutboxError::NoSpace { .. }), "{refused}");
        assert!(refused.is_refusal());
        assert_eq!(
            list_segments(&DiskFiles, dir.path()).expect("list"),
            vec![0]
        );
        assert_eq!(std::fs::metadata(&segment).expect("metadata").len(), length);
        // Acknowledgements work; the state file cannot be saved but stays whole.
        outbox.ack(0).expect("ack");
        outbox.ack(1).expect("ack");
        outbox.sync().expect("sync");
        assert_eq!(
            std::fs::read(dir.path().join(STATE_FILE)).expect("state"),
            state_before
        );
        assert!(!dir.path().join(format!("{STATE_FILE}.tmp")).exists());
        assert_eq!(outbox.stats().depth, 3);

        faults.no_space.store(false, Ordering::SeqCst);
        assert_eq!(outbox.append(|seq, _| fixed(seq)).expect("append"), 5);
        outbox.sync().expect("sync");
        drop(outbox);
        let outbox = Outbox::open(five_per_segment(dir.path())).expect("reopen");
        assert_eq!(outbox.stats().damaged_records, 0);
        assert_eq!(pending(&outbox), vec![2, 3, 4, 5]);
        assert_eq!(outbox.read(5).expect("read"), fixed(5));
    }

    #[test]
    fn a_failed_fsync_under_always_removes_the_record_and_refuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |dir: &Path| OutboxConfig {
            fsync: FsyncPolicy::Always,
            ..config(dir)
        };
        let (mut outbox, faults) = open_faulty(config(dir.path()));
        outbox.append(|seq, _| message(seq)).expect("append");
        let segment = segment_path(dir.path(), 0);
        let length = std::fs::metadata(&segment).expect("metadata").len();
        faults.fsync_no_space.store(true, Ordering::SeqCst);
        let refused = outbox.append(|seq, _| message(seq)).expect_err("refused");
        assert!(refused.is_refusal(), "{refused}");
        assert_eq!(std::fs::metadata(&segment).expect("metadata").len(), length);
        assert_eq!(outbox.stats().depth, 1);
        faults.fsync_no_space.store(false, Ordering::SeqCst);
        assert_eq!(outbox.append(|seq, _| message(seq)).expect("append"), 1);
        drop(outbox);
        let outbox = Outbox::open(config(dir.path())).expect("reopen");
        assert_eq!(pending(&outbox), vec![0, 1]);
        assert_eq!(outbox.stats().damaged_records, 0);
    }

    /// A tmpfs mounted on a directory, unmounted when dropped (the test failing or not).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(path: &Path, size: &str) -> Self {
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path)
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -t tmpfs failed: {status}");
            Self(path.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let unmounted = std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|status| status.success());
            if !unmounted {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
    }

    #[test]
    #[ignore = "needs root: mounts a tmpfs"]
    fn a_full_file_system_refuses_appends_and_takes_them_again_after_acks() {
        let mount_point = tempfile::tempdir().expect("tempdir");
        let _tmpfs = Tmpfs::mount(mount_point.path(), "256k");
        let config = OutboxConfig {
            dir: mount_point.path().join("outbox"),
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 16 * 1024,
            fsync: FsyncPolicy::Always,
            overflow: OverflowPolicy::Refuse,
        };
        let payload = |seq: u64| {
            let mut bytes = vec![(seq % 251) as u8; 1000];
            bytes[..8].copy_from_slice(&seq.to_le_bytes());
            bytes
        };
        let mut outbox = Outbox::open(config.clone()).expect("open");
        let mut accepted = 0;
        let refusal = loop {
            match outbox.append(|seq, _| payload(seq)) {
                Ok(seq) => {
                    assert_eq!(seq, accepted);
                    accepted += 1;
                }
                Err(error) => break error,
            }
            assert!(accepted < 1000, "a 256 KiB tmpfs took 1000 KiB");
        };
        assert!(matches!(refusal, OutboxError::NoSpace { .. }), "{refusal}");
        assert!(accepted > 100, "only {accepted} appends fitted");
        let again = outbox
            .append(|seq, _| payload(seq))
            .expect_err("still full");
        assert!(again.is_refusal(), "{again}");
        drop(outbox);

        let mut outbox = Outbox::open(config.clone()).expect("reopen on a full file system");
        assert_eq!(outbox.stats().damaged_records, 0, "nothing partial remains");
        assert_eq!(outbox.stats().depth, accepted);
        assert_eq!(pending(&outbox), (0..accepted).collect::<Vec<_>>());
        for seq in 0..accepted {
            assert_eq!(outbox.read(seq).expect("read"), payload(seq));
        }
        for seq in 0..accepted / 2 {
            outbox.ack(seq).expect("ack on a full file system");
        }
        for expected in accepted..accepted + 20 {
            assert_eq!(
                outbox.append(|seq, _| payload(seq)).expect("room again"),
                expected
            );
        }
        drop(outbox);
        let outbox = Outbox::open(config).expect("reopen");
        assert_eq!(outbox.stats().damaged_records, 0);
        assert_eq!(outbox.stats().next_seq, accepted + 20);
    }

    #[test]
    fn a_full_file_system_under_drop_oldest_drops_the_oldest_segment_and_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, faults) = open_faulty(OutboxConfig {
            overflow: OverflowPolicy::DropOldest,
            ..config(dir.path())
        });
        for _ in 0..11 {
            outbox.append(|seq, _| message(seq)).expect("append");
        }
        let segments = list_segments(&DiskFiles, dir.path()).expect("list");
        assert!(segments.len() > 2, "several segments: {segments:?}");
        let in_first = segments[1] - segments[0];
        // (11 records of 26 bytes, two to a 64-byte segment: the active one has room
        // for the next record, so the one injected failure hits that record's write.)
        faults.no_space_writes.store(1, Ordering::SeqCst);
        let seq = outbox
            .append(|seq, _| message(seq))
            .expect("room made by dropping the oldest segment");
        faults.no_space_writes.store(0, Ordering::SeqCst);
        assert_eq!(seq, 11);
        assert_eq!(outbox.stats().dropped_oldest, in_first);
        assert_eq!(outbox.stats().depth, 12 - in_first);
        assert_eq!(outbox.next_pending(0), Some(segments[1]));
        assert_eq!(outbox.read(11).expect("read"), message(11));
        assert!(
            !list_segments(&DiskFiles, dir.path())
                .expect("list")
                .contains(&segments[0]),
            "the oldest segment's file is gone"
        );

        // Under refuse, the same full disk refuses and drops nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut refuse, faults) = open_faulty(config(dir.path()));
        for _ in 0..11 {
            refuse.append(|seq, _| message(seq)).expect("append");
        }
        faults.no_space_writes.store(1, Ordering::SeqCst);
        assert!(matches!(
            refuse.append(|seq, _| message(seq)),
            Err(OutboxError::NoSpace { .. })
        ));
        faults.no_space_writes.store(0, Ordering::SeqCst);
        assert_eq!(refuse.stats().dropped_oldest, 0);
        assert_eq!(refuse.stats().depth, 11);
    }

    /// Regression (fuzz target `outbox_segment`): a record whose checksum holds but
    /// whose sequence number is `u64::MAX` made the scan's `seq + 1` overflow (a panic
    /// in debug builds, a floor wrapped to 0 in release). It is damage now.
    #[test]
    fn a_record_claiming_the_last_sequence_number_is_damage_not_an_overflow() {
        let mut bytes = segment_header(1).to_vec();
        bytes.extend_from_slice(&encode_record(u64::MAX, b"last"));
        bytes.extend_from_slice(&encode_record(5, b"after"));
        let scan = scan_segment(&bytes, 0).expect("scan");
        assert_eq!(
            scan.records
                .iter()
                .map(|record| record.seq)
                .collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(scan.damage.len(), 1);
        let mut data = vec![0];
        data.extend_from_slice(&bytes);
        fuzz_harness::outbox_segment(&data);
        // The same record at the end of a segment on disk: opening skips it.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut on_disk = segment_header(1).to_vec();
        on_disk.extend_from_slice(&encode_record(0, b"first"));
        on_disk.extend_from_slice(&encode_record(u64::MAX, b"last"));
        std::fs::write(segment_path(dir.path(), 0), &on_disk).expect("segment");
        let outbox = Outbox::open(config(dir.path())).expect("open");
        assert_eq!(pending(&outbox), vec![0]);
        assert_eq!(outbox.stats().next_seq, 1);
    }

    #[test]
    fn the_scan_of_a_written_segment_finds_its_records_and_the_harness_holds() {
        let mut bytes = segment_header(7).to_vec();
        for seq in 3..6 {
            bytes.extend_from_slice(&encode_record(seq, &fixed(seq)));
        }
        let scan = scan_segment(&bytes, 3).expect("scan");
        assert_eq!(scan.epoch, Some(7));
        assert_eq!(
            scan.records
                .iter()
                .map(|record| record.seq)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(
            record_payload(&bytes, &scan.records[1]),
            Some(&fixed(4)[..])
        );
        let mut data = vec![3];
        data.extend_from_slice(&bytes);
        fuzz_harness::outbox_segment(&data);
        // A torn tail, a flipped byte in the middle, a newer format.
        data.truncate(data.len() - 3);
        data[30] ^= 0x55;
        fuzz_harness::outbox_segment(&data);
        let mut newer = segment_header(7);
        newer[4] = 2;
        let crc = crc32fast::hash(&newer[..16]);
        newer[16..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            scan_segment(&newer, 0),
            Err(SegmentError::NewerFormat { format: 2 })
        );
        let batch = br#"{"v":1,"stream":"telemetry","epoch":1,"seq":0,"readings":[{"point":"a/b","value":1.5,"text":null,"unit":"C","ts_ms":9}]}"#;
        fuzz_harness::telemetry_batch(batch);
        fuzz_harness::telemetry_batch(b"{");
    }

    proptest::proptest! {
        /// The fuzz targets' harnesses (`cloud-link/fuzz`) on random bytes and on a
        /// valid segment with bytes changed.
        #[test]
        fn the_fuzz_harnesses_hold(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            flips in proptest::collection::vec((0..200_usize, proptest::num::u8::ANY), 0..4),
            cut in 0..200_usize,
        ) {
            fuzz_harness::outbox_segment(&noise);
            fuzz_harness::telemetry_batch(&noise);
            let mut data = vec![0];
            data.extend_from_slice(&segment_header(1));
            for seq in 0..6 {
                data.extend_from_slice(&encode_record(seq, &message(seq)));
            }
            for (at, value) in flips {
                let at = at % data.len();
                data[at] = value;
            }
            data.truncate(data.len().min(cut.max(1) + 21));
            fuzz_harness::outbox_segment(&data);
        }
    }
}
