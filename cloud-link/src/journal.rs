//! The readings journal: readings on disk as they arrive, until the outbox has them.
//!
//! The agent gathers readings for `batch_interval_ms` before it appends them to the
//! outbox as telemetry batches. So that a process crash (SIGKILL) in that window loses
//! nothing, every burst of readings the agent takes from its channel is also written
//! to `pending.journal` in the outbox directory, with one `write` (no fsync: a written
//! page survives the death of the process; the journal is forced to disk on the
//! outbox's [`FsyncPolicy`], for power loss).
//!
//! [`PendingReadings`] is the in-memory side: readings cut into outbox records of at
//! most [`RECORD_READINGS_BYTES`] (estimated as JSON), each already numbered with the
//! sequence number the outbox will give it, and bounded in total by
//! [`MAX_PENDING_BYTES`] (beyond it the newest readings are refused, and the caller
//! counts them).
//!
//! On disk:
//!
//! | part | content |
//! |---|---|
//! | header (28 bytes) | `b"WRDNJRN1"`, `epoch u64 LE` (the outbox's), `seq u64 LE` (of the first record), `crc32 u32 LE` of the previous 24 bytes |
//! | records | `len u32 LE` (of the body), `crc32 u32 LE` (of kind and body), `kind u8`, body |
//!
//! Record kinds: `1` a reading (body: the [`Reading`] in postcard) for the current
//! outbox record; `2` the next outbox record starts (body: its `seq u64 LE`).
//!
//! When every pending record is in the outbox the journal is reset to a bare header
//! naming the next sequence number. At start, [`PendingReadings::attach`] reads the
//! journal: a record whose sequence number the outbox already holds (a crash between
//! the append and the reset) is discarded, the others become pending again, so a
//! reading is neither lost nor stored twice. A torn tail is cut; a record with a bad
//! checksum is skipped and counted; nothing in the journal is ever fatal.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::outbox::FsyncPolicy;
use warden_wire::topics::Reading;

/// Under [`FsyncPolicy::Always`] the journal is forced to disk at most this often (group
/// fsync): readings arrive one by one at up to tens of thousands a second, and an fsync
/// for each would cost more than everything else on the path. The outbox itself still
/// syncs every append; a power cut can lose at most this window of readings not yet
/// batched.
pub const GROUP_FSYNC: Duration = Duration::from_millis(10);

/// The journal's file name, in the outbox directory.
pub const JOURNAL_FILE: &str = "pending.journal";
/// Most readings bytes (estimated as JSON) in one outbox record: far below
/// [`crate::outbox::MAX_RECORD_PAYLOAD`], even if every character had to be escaped.
pub const RECORD_READINGS_BYTES: usize = 256 * 1024;
/// Most readings bytes (estimated as JSON) pending in memory; beyond it the newest
/// readings are refused.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

const MAGIC: [u8; 8] = *b"WRDNJRN1";
const HEADER_LEN: usize = 28;
const RECORD_HEADER_LEN: usize = 9;
const KIND_READING: u8 = 1;
const KIND_NEXT_RECORD: u8 = 2;
/// A record body longer than this is not one the journal wrote: the length is damaged.
const MAX_BODY_LEN: usize = 4 * RECORD_READINGS_BYTES;

/// An upper estimate of the bytes `reading` takes in a JSON telemetry batch
/// (escapes aside): field names, the longest number and timestamp, the strings.
pub fn estimated_json_len(reading: &Reading) -> usize {
    100 + reading.point.len() + reading.unit.len() + reading.value.as_text().map_or(0, str::len)
}

/// The bounds of the pending store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Most estimated bytes pending in memory ([`MAX_PENDING_BYTES`]).
    pub max_bytes: usize,
    /// Most estimated bytes in one outbox record ([`RECORD_READINGS_BYTES`]).
    pub record_bytes: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_PENDING_BYTES,
            record_bytes: RECORD_READINGS_BYTES,
        }
    }
}

/// Readings that will become one outbox record, numbered already.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRecord {
    /// The sequence number the outbox will give the record.
    pub seq: u64,
    /// The readings, oldest first.
    pub readings: Vec<Reading>,
    estimated: usize,
    journal_bytes: u64,
}

/// What [`PendingReadings::push`] did with a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Pending (and journaled at the next [`PendingReadings::write_burst`]).
    Kept,
    /// Refused: the store is at its byte bound, or the reading alone is larger than a
    /// record may be.
    Refused,
}

/// What [`PendingReadings::attach`] found in the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Readings from the journal that are pending again.
    pub recovered: usize,
    /// Readings from the journal that the outbox already held (discarded).
    pub discarded: usize,
    /// Damaged records (bad checksum, undecodable, impossible length, bad header):
    /// their readings are lost.
    pub damaged: u64,
    /// Bytes of a torn last record, cut off.
    pub torn_bytes: u64,
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("readings journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The readings waiting for the outbox, mirrored in the journal (see the module docs).
pub struct PendingReadings {
    limits: PendingLimits,
    /// The outbox epoch the sequence numbers belong to (0 until attached).
    epoch: u64,
    /// The sequence number of the record after the last pending one.
    next_seq: u64,
    records: VecDeque<PendingRecord>,
    estimated: usize,
    readings: usize,
    /// Where the journal lives, once attached.
    path: Option<PathBuf>,
    fsync: FsyncPolicy,
    /// The open journal; `None` before attaching or after a failed write (then the
    /// file is rewritten whole by [`PendingReadings::repair`]).
    journal: Option<JournalFile>,
    /// Encoded records of the current burst, not yet written.
    burst: Vec<u8>,
    scratch: Vec<u8>,
}

impl PendingReadings {
    /// An empty store, not yet attached to an outbox (readings stay in memory only).
    pub fn new(limits: PendingLimits) -> Self {
        Self {
            limits,
            epoch: 0,
            next_seq: 0,
            records: VecDeque::new(),
            estimated: 0,
            readings: 0,
            path: None,
            fsync: FsyncPolicy::Never,
            journal: None,
            burst: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Adds `reading` as the newest pending one; its journal record is written by the
    /// next [`PendingReadings::write_burst`].
    pub fn push(&mut self, reading: Reading) -> Pushed {
        let size = estimated_json_len(&reading);
        if size > self.limits.record_bytes || self.estimated + size > self.limits.max_bytes {
            return Pushed::Refused;
        }
        let open_new = self
            .records
            .back()
            .is_none_or(|last| last.estimated + size > self.limits.record_bytes);
        if open_new {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.records.push_back(PendingRecord {
                seq,
                readings: Vec::new(),
                estimated: 0,
                journal_bytes: 0,
            });
        }
        let journaled = match &mut self.journal {
            Some(journal) => {
                let mut bytes = 0;
                let seq = self.next_seq - 1;
                if journal.current_seq != seq {
                    bytes += encode_record(&mut self.burst, KIND_NEXT_RECORD, &seq.to_le_bytes());
                    journal.current_seq = seq;
                }
                self.scratch.clear();
                match postcard::to_extend(&reading, std::mem::take(&mut self.scratch)) {
                    Ok(body) => {
                        bytes += encode_record(&mut self.burst, KIND_READING, &body);
                        self.scratch = body;
                    }
                    // Plain strings and numbers always serialise; should one not, the
                    // reading still goes out, it is only not journaled.
                    Err(error) => tracing::warn!(%error, "reading not journaled"),
                }
                bytes as u64
            }
            None => 0,
        };
        let Some(record) = self.records.back_mut() else {
            return Pushed::Refused; // a record was opened above
        };
        record.readings.push(reading);
        record.estimated += size;
        record.journal_bytes += journaled;
        self.estimated += size;
        self.readings += 1;
        Pushed::Kept
    }

    /// Writes the readings pushed since the last call to the journal, with one
    /// `write`. After a failure the journal is closed (readings stay in memory) until
    /// [`PendingReadings::repair`] rewrites it.
    pub fn write_burst(&mut self) -> Result<(), JournalError> {
        if self.burst.is_empty() {
            return Ok(());
        }
        let outcome = match &mut self.journal {
            Some(journal) => journal.append(&self.burst, self.fsync),
            None => Ok(()),
        };
        self.burst.clear();
        if outcome.is_err() {
            self.journal = None;
        }
        outcome
    }

    /// The oldest pending record, to append to the outbox.
    pub fn front_mut(&mut self) -> Option<&mut PendingRecord> {
        self.records.front_mut()
    }

    /// The oldest pending record is in the outbox now: forgets it. When nothing is
    /// pending any more the journal is reset for the next sequence number.
    pub fn appended(&mut self) -> Result<(), JournalError> {
        self.pop_front();
        if self.records.is_empty() {
            self.burst.clear();
            let (epoch, seq, fsync) = (self.epoch, self.next_seq, self.fsync);
            if let Some(journal) = &mut self.journal
                && let Err(error) = journal.reset(epoch, seq, fsync)
            {
                self.journal = None;
                return Err(error);
            }
            return Ok(());
        }
        // Records appended while others stay pending remain in the file (discarded
        // at recovery by their sequence numbers); rewrite it before it gets wasteful.
        let live: u64 = self.records.iter().map(|r| r.journal_bytes).sum();
        if let Some(journal) = &self.journal
            && journal.len > 2 * live + 1024 * 1024
        {
            return self.repair();
        }
        Ok(())
    }

    /// Drops the oldest pending record without appending it (the outbox refused it as
    /// too large, which the record bound should make impossible); returns how many
    /// readings were in it.
    pub fn discard_front(&mut self) -> usize {
        let count = self.pop_front().map_or(0, |r| r.readings.len());
        if self.path.is_some() && self.repair().is_err() {
            tracing::warn!("readings journal not rewritten after a discarded record");
        }
        count
    }

    /// Attaches the store to an outbox of `epoch` whose next sequence number is
    /// `next_seq`, with the journal in `dir`. The first time, the journal left by the
    /// last run is read: its records the outbox already holds are discarded, the others
    /// become pending (before the readings taken since this start). Records the outbox
    /// holds are dropped from memory too (an append that failed after writing); the
    /// rest are numbered from `next_seq` and the journal is rewritten with them.
    ///
    /// Never fails for the store: on an error the readings stay pending in memory and
    /// the journal is closed until [`PendingReadings::repair`].
    pub fn attach(
        &mut self,
        dir: &Path,
        epoch: u64,
        next_seq: u64,
        fsync: FsyncPolicy,
    ) -> (Recovery, Result<(), JournalError>) {
        let path = dir.join(JOURNAL_FILE);
        let mut recovery = Recovery::default();
        let mut previous = VecDeque::new();
        if self.path.as_deref() != Some(path.as_path()) {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let found = decode_journal(&bytes);
                    recovery.damaged = found.damaged;
                    recovery.torn_bytes = found.torn_bytes;
                    for (seq, readings) in found.records {
                        if found.epoch == Some(epoch) && seq < next_seq {
                            recovery.discarded += readings.len();
                        } else {
                            recovery.recovered += readings.len();
                            previous.push_back(PendingRecord {
                                seq,
                                estimated: readings.iter().map(estimated_json_len).sum(),
                                readings,
                                journal_bytes: 0,
                            });
                        }
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    // Unreadable: keep it aside for people, start a new one.
                    recovery.damaged += 1;
                    tracing::warn!(path = %path.display(), %error, "readings journal unreadable; set aside");
                    let _ = std::fs::rename(&path, path.with_extension("journal.unreadable"));
                }
            }
        }
        if self.epoch == epoch {
            while self.records.front().is_some_and(|r| r.seq < next_seq) {
                self.pop_front();
            }
        }
        for record in previous.into_iter().rev() {
            self.estimated += record.estimated;
            self.readings += record.readings.len();
            self.records.push_front(record);
        }
        for (index, record) in self.records.iter_mut().enumerate() {
            record.seq = next_seq + index as u64;
        }
        self.epoch = epoch;
        self.next_seq = next_seq + self.records.len() as u64;
        self.path = Some(path);
        self.fsync = fsync;
        (recovery, self.repair())
    }

    /// Rewrites the journal whole from what is pending (atomically: a temporary file
    /// renamed over it). Used at attach, after a failed write, and to compact.
    pub fn repair(&mut self) -> Result<(), JournalError> {
        self.journal = None;
        self.burst.clear();
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let first_seq = self.records.front().map_or(self.next_seq, |r| r.seq);
        let mut body = header(self.epoch, first_seq).to_vec();
        let mut current_seq = first_seq;
        for record in &mut self.records {
            let start = body.len();
            if record.seq != current_seq {
                encode_record(&mut body, KIND_NEXT_RECORD, &record.seq.to_le_bytes());
                current_seq = record.seq;
            }
            for reading in &record.readings {
                self.scratch.clear();
                if let Ok(encoded) = postcard::to_extend(reading, std::mem::take(&mut self.scratch))
                {
                    encode_record(&mut body, KIND_READING, &encoded);
                    self.scratch = encoded;
                }
            }
            record.journal_bytes = (body.len() - start) as u64;
        }
        let journal = JournalFile::create(&path, &body, current_seq, self.fsync)?;
        self.journal = Some(journal);
        Ok(())
    }

    /// Whether the journal is closed after a failed write and should be repaired.
    pub fn needs_repair(&self) -> bool {
        self.path.is_some() && self.journal.is_none()
    }

    /// Forces the journal to disk if the fsync policy says it is time (call at least
    /// every [`GROUP_FSYNC`]; [`FsyncPolicy::Always`] means every [`GROUP_FSYNC`]).
    pub fn sync_due(&mut self) -> Result<(), JournalError> {
        let fsync = self.fsync;
        match &mut self.journal {
            Some(journal) => journal.sync_if_due(fsync),
            None => Ok(()),
        }
    }

    /// Forces the journal to disk now unless the policy is [`FsyncPolicy::Never`]
    /// (at shutdown).
    pub fn sync_now(&mut self) -> Result<(), JournalError> {
        match (&mut self.journal, self.fsync) {
            (Some(_), FsyncPolicy::Never) | (None, _) => Ok(()),
            (Some(journal), _) => journal.sync_if_due(FsyncPolicy::EveryMillis(0)),
        }
    }

    /// The outbox epoch the records are numbered for (0 before attaching).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Readings pending.
    pub fn len(&self) -> usize {
        self.readings
    }

    /// Their estimated bytes as JSON.
    pub fn estimated_bytes(&self) -> usize {
        self.estimated
    }

    /// Records pending (the outbox records they will become).
    pub fn records(&self) -> usize {
        self.records.len()
    }

    fn pop_front(&mut self) -> Option<PendingRecord> {
        let record = self.records.pop_front()?;
        self.estimated -= record.estimated;
        self.readings -= record.readings.len();
        Some(record)
    }
}

/// The open journal file.
struct JournalFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// The outbox record the next reading record belongs to.
    current_seq: u64,
    unsynced: bool,
    synced_at: Instant,
}

impl JournalFile {
    /// Replaces the journal at `path` with `contents` (temporary file, rename).
    fn create(
        path: &Path,
        contents: &[u8],
        current_seq: u64,
        fsync: FsyncPolicy,
    ) -> Result<Self, JournalError> {
        let temporary = path.with_extension("journal.tmp");
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&temporary)
            .map_err(io)?;
        file.write_all(contents).map_err(io)?;
        if fsync != FsyncPolicy::Never {
            file.sync_data().map_err(io)?;
        }
        std::fs::rename(&temporary, path).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: contents.len() as u64,
            current_seq,
            unsynced: false,
            synced_at: Instant::now(),
        })
    }

    fn append(&mut self, bytes: &[u8], fsync: FsyncPolicy) -> Result<(), JournalError> {
        self.file
            .write_all_at(bytes, self.len)
            .map_err(|source| self.error(source))?;
        self.len += bytes.len() as u64;
        self.unsynced = true;
        self.sync_if_due(fsync)
    }

    /// Back to a bare header: nothing pending, the next record is `seq`. A crash in
    /// between leaves an empty file, which means the same.
    fn reset(&mut self, epoch: u64, seq: u64, fsync: FsyncPolicy) -> Result<(), JournalError> {
        self.file.set_len(0).map_err(|source| self.error(source))?;
        self.len = 0;
        self.file
            .write_all_at(&header(epoch, seq), 0)
            .map_err(|source| self.error(source))?;
        self.len = HEADER_LEN as u64;
        self.current_seq = seq;
        self.unsynced = true;
        self.sync_if_due(fsync)
    }

    fn sync_if_due(&mut self, fsync: FsyncPolicy) -> Result<(), JournalError> {
        let due = match fsync {
            FsyncPolicy::Always => self.synced_at.elapsed() >= GROUP_FSYNC,
            FsyncPolicy::EveryMillis(ms) => self.synced_at.elapsed() >= Duration::from_millis(ms),
            FsyncPolicy::Never => false,
        };
        if self.unsynced && due {
            self.file.sync_data().map_err(|source| self.error(source))?;
            self.unsynced = false;
            self.synced_at = Instant::now();
        }
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn header(epoch: u64, seq: u64) -> [u8; HEADER_LEN] {
    let mut bytes = [0; HEADER_LEN];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..16].copy_from_slice(&epoch.to_le_bytes());
    bytes[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Appends one record to `out`; returns its length.
fn encode_record(out: &mut Vec<u8>, kind: u8, body: &[u8]) -> usize {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(body);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    RECORD_HEADER_LEN + body.len()
}

/// A journal as read back.
#[derive(Debug, Default, PartialEq)]
struct JournalContents {
    /// The outbox epoch of the header, if the header is intact.
    epoch: Option<u64>,
    /// The outbox records, by sequence number, with their readings (none empty).
    records: Vec<(u64, Vec<Reading>)>,
    damaged: u64,
    torn_bytes: u64,
}

/// Reads a journal: every intact reading, by record. A bad header or record is
/// counted and skipped; a torn or implausible tail ends the scan.
fn decode_journal(bytes: &[u8]) -> JournalContents {
    let mut found = JournalContents::default();
    if bytes.is_empty() {
        return found;
    }
    let mut seq = 0;
    match bytes.get(..HEADER_LEN) {
        Some(head)
            if head[..8] == MAGIC
                && crc32fast::hash(&head[..24]) == u32::from_le_bytes(word(&head[24..28])) =>
        {
            found.epoch = Some(u64::from_le_bytes(double(&head[8..16])));
            seq = u64::from_le_bytes(double(&head[16..24]));
        }
        Some(_) => found.damaged += 1,
        None => {
            // Torn while being reset or created: nothing was pending in it.
            found.torn_bytes = bytes.len() as u64;
            return found;
        }
    }
    let mut current: Vec<Reading> = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let Some(head) = rest.get(..RECORD_HEADER_LEN) else {
            found.torn_bytes = rest.len() as u64;
            break;
        };
        let len = u32::from_le_bytes(word(&head[..4])) as usize;
        let crc = u32::from_le_bytes(word(&head[4..8]));
        let kind = head[8];
        if len > MAX_BODY_LEN {
            found.damaged += 1;
            break; // a damaged length: nothing after it can be found
        }
        let Some(body) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            found.torn_bytes = rest.len() as u64;
            break;
        };
        offset += RECORD_HEADER_LEN + len;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(body);
        if hasher.finalize() != crc {
            found.damaged += 1;
            continue;
        }
        match (kind, body.len()) {
            (KIND_READING, _) => match postcard::from_bytes::<Reading>(body) {
                Ok(reading) => current.push(reading),
                Err(_) => found.damaged += 1,
            },
            (KIND_NEXT_RECORD, 8) => {
                if !current.is_empty() {
                    found.records.push((seq, std::mem::take(&mut current)));
                }
                seq = u64::from_le_bytes(double(body));
            }
            _ => found.damaged += 1,
        }
    }
    if !current.is_empty() {
        found.records.push((seq, current));
    }
    found
}

fn word(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(bytes);
    out
}

fn double(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1_700_000_000_000_000;

    fn reading(n: u64) -> Reading {
        Reading::number(format!("plc/p{n}"), n as f64, "bar".into(), 1_000 + n)
    }

    fn attached(dir: &Path, next_seq: u64) -> (PendingReadings, Recovery) {
        let mut pending = PendingReadings::new(PendingLimits::default());
        let (recovery, written) = pending.attach(dir, EPOCH, next_seq, FsyncPolicy::Never);
        written.expect("journal written");
        (pending, recovery)
    }

    fn all_readings(pending: &mut PendingReadings) -> Vec<Reading> {
        let mut out = Vec::new();
        while let Some(record) = pending.front_mut() {
            out.append(&mut record.readings.clone());
            pending.appended().expect("appended");
        }
        out
    }

    #[test]
    fn readings_written_survive_a_kill_without_any_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut pending, _) = attached(dir.path(), 7);
        for burst in 0..3 {
            for n in 0..4 {
                assert_eq!(pending.push(reading(burst * 4 + n)), Pushed::Kept);
            }
            pending.write_burst().expect("burst");
        }
        // SIGKILL: no destructor, no flush, no close.
        std::mem::forget(pending);

        let (mut again, recovery) = attached(dir.path(), 7);
        assert_eq!(recovery.recovered, 12);
        assert_eq!((recovery.damaged, recovery.torn_bytes), (0, 0));
        assert_eq!(again.front_mut().map(|r| r.seq), Some(7));
        assert_eq!(
            all_readings(&mut again),
            (0..12).map(reading).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_journal_the_outbox_already_holds_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut pending, _) = attached(dir.path(), 3);
        for n in 0..5 {
            pending.push(reading(n));
        }
        pending.write_burst().expect("burst");
        drop(pending);
        // The batch became record 3, then the process died before the reset.
        let (mut again, recovery) = attached(dir.path(), 4);
        assert_eq!((recovery.recovered, recovery.discarded), (0, 5));
        assert!(again.is_empty());
        // And the journal says so: a third start finds nothing either.
        again.push(reading(9));
        again.write_burst().expect("burst");
        assert_eq!(again.front_mut().map(|r| r.seq), Some(4));
        drop(again);
        let (_, recovery) = attached(dir.path(), 4);
        assert_eq!((recovery.recovered, recovery.discarded), (1, 0));
    }

    #[test]
    fn records_already_in_the_outbox_are_discarded_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pending = PendingReadings::new(PendingLimits {
            record_bytes: 2 * estimated_json_len(&reading(0)),
            ..PendingLimits::default()
        });
        pending
            .attach(dir.path(), EPOCH, 10, FsyncPolicy::Never)
            .1
            .expect("attach");
        for n in 0..6 {
            pending.push(reading(n));
        }
        pending.write_burst().expect("burst");
        assert_eq!(pending.records(), 3, "two readings per record");
        // Records 10 and 11 reached the outbox before the crash, 12 did not.
        drop(pending);
        let (mut again, recovery) = attached(dir.path(), 12);
        assert_eq!((recovery.recovered, recovery.discarded), (2, 4));
        assert_eq!(all_readings(&mut again), vec![reading(4), reading(5)]);
    }

    #[test]
    fn a_journal_of_another_epoch_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut pending, _) = attached(dir.path(), 40);
        pending.push(reading(1));
        pending.write_burst().expect("burst");
        drop(pending);
        // The outbox was wiped: a new epoch from 0. Better sent twice than lost.
        let mut again = PendingReadings::new(PendingLimits::default());
        let (recovery, _) = again.attach(dir.path(), EPOCH + 1, 0, FsyncPolicy::Never);
        assert_eq!(recovery.recovered, 1);
        assert_eq!(again.front_mut().map(|r| r.seq), Some(0));
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_byte_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut pending, _) = attached(dir.path(), 0);
        for n in 0..3 {
            pending.push(reading(n));
            pending.write_burst().expect("burst");
        }
        drop(pending);
        let path = dir.path().join(JOURNAL_FILE);
        let full = std::fs::read(&path).expect("read");
        let record_len = (full.len() - HEADER_LEN) / 3;

        // Every cut inside the last record leaves the first two, nothing damaged.
        for cut in full.len() - record_len + 1..full.len() {
            std::fs::write(&path, &full[..cut]).expect("cut");
            let (mut again, recovery) = attached(dir.path(), 0);
            assert_eq!(recovery.recovered, 2, "cut at {cut}");
            assert_eq!(recovery.damaged, 0);
            assert!(recovery.torn_bytes > 0);
            assert_eq!(all_readings(&mut again), vec![reading(0), reading(1)]);
        }

        // A flipped byte in the middle record: that reading is lost and counted, the
        // others come back.
        let mut flipped = full.clone();
        flipped[HEADER_LEN + record_len + RECORD_HEADER_LEN + 2] ^= 0x40;
        std::fs::write(&path, &flipped).expect("flip");
        let (mut again, recovery) = attached(dir.path(), 0);
        assert_eq!((recovery.recovered, recovery.damaged), (2, 1));
        assert_eq!(all_readings(&mut again), vec![reading(0), reading(2)]);

        // A damaged header: the readings are kept (their sequence is unknown).
        let mut bad_header = full.clone();
        bad_header[9] ^= 1;
        std::fs::write(&path, &bad_header).expect("header");
        let (_, recovery) = attached(dir.path(), 0);
        assert_eq!((recovery.recovered, recovery.damaged), (3, 1));

        // Garbage instead of a journal: counted, never fatal.
        std::fs::write(&path, b"not a journal at all, just bytes").expect("garbage");
        let (again, recovery) = attached(dir.path(), 0);
        assert!(recovery.damaged >= 1);
        assert!(again.is_empty());
    }

    #[test]
    fn a_batch_larger_than_a_record_is_split_and_the_bound_refuses_the_newest() {
        let one = estimated_json_len(&reading(0));
        let mut pending = PendingReadings::new(PendingLimits {
            max_bytes: 10 * one,
            record_bytes: 3 * one,
        });
        for n in 0..12 {
            let expected = if n < 10 {
                Pushed::Kept
            } else {
                Pushed::Refused
            };
            assert_eq!(pending.push(reading(n)), expected, "reading {n}");
        }
        assert_eq!(pending.records(), 4, "3 + 3 + 3 + 1");
        assert_eq!(pending.len(), 10);
        let mut sizes = Vec::new();
        while let Some(record) = pending.front_mut() {
            sizes.push(record.readings.len());
            pending.appended().expect("appended");
        }
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        // Room again once appended.
        assert_eq!(pending.push(reading(99)), Pushed::Kept);
        // A single reading larger than a record is refused outright.
        let huge = Reading::text("plc/log".into(), "x".repeat(3 * one), String::new(), 1);
        assert_eq!(pending.push(huge), Pushed::Refused);
    }

    #[test]
    fn the_journal_is_reset_once_everything_is_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut pending, _) = attached(dir.path(), 0);
        for n in 0..100 {
            pending.push(reading(n));
        }
        pending.write_burst().expect("burst");
        let path = dir.path().join(JOURNAL_FILE);
        assert!(std::fs::metadata(&path).expect("meta").len() > 1000);
        assert_eq!(all_readings(&mut pending).len(), 100);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            HEADER_LEN as u64
        );
        let found = decode_journal(&std::fs::read(&path).expect("read"));
        assert_eq!(found.epoch, Some(EPOCH));
        assert!(found.records.is_empty());
        pending.push(reading(1));
        assert_eq!(pending.front_mut().map(|r| r.seq), Some(1));
    }

    #[test]
    fn readings_taken_before_the_outbox_opened_are_journaled_at_attach() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pending = PendingReadings::new(PendingLimits::default());
        pending.push(reading(1));
        pending.write_burst().expect("nothing to write yet");
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        pending
            .attach(dir.path(), EPOCH, 5, FsyncPolicy::Never)
            .1
            .expect("attach");
        std::mem::forget(pending);
        let (mut again, recovery) = attached(dir.path(), 5);
        assert_eq!(recovery.recovered, 1);
        assert_eq!(all_readings(&mut again), vec![reading(1)]);
    }
}
