//! Failure reports: a crash-safe, bounded ring of records on disk, grouped by signature.
//!
//! Each report is its own file `NNNNNNNNNNNNNNNN.wfr`: magic `WFR1`, a postcard body and
//! the SHA-256 of the body. It is written with `warden_files::write_file_atomically`
//! (temporary file, fsync, rename, fsync of the directory), so a power cut leaves either
//! the whole report or none. A file
//! whose digest does not match is skipped when reading. After each write the oldest
//! reports beyond the capacity are deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"WFR1";
const EXTENSION: &str = "wfr";
const UPLOADED_MARKER: &str = "uploaded";

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// The compartment exited with a non-zero code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The compartment was killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// The compartment panicked (sent by its panic hook before it died).
    Panic {
        /// The panic message with its location.
        message: String,
        /// The captured backtrace.
        backtrace: String,
    },
    /// The compartment stopped heartbeating and was killed.
    WatchdogExpired {
        /// How long it had been silent, ms.
        silent_ms: u64,
    },
    /// The kernel denied something the manifest does not grant.
    PolicyDenied {
        /// What was attempted.
        action: String,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The compartment asked for an IPC channel to a peer its manifest does not name.
    PeerDenied {
        /// The peer asked for.
        peer: String,
    },
    /// A frame on an IPC channel did not decode; the channel was closed.
    MalformedFrame {
        /// Why it did not decode.
        detail: String,
    },
    /// The compartment could not apply its own sandbox.
    SandboxFailed {
        /// The sandbox error.
        detail: String,
    },
    /// Why the device rebooted (or rolled back).
    RebootReason {
        /// The reason.
        reason: String,
    },
    /// An attestation quote failed verification.
    AttestationFailure {
        /// What failed.
        detail: String,
    },
}

impl FailureKind {
    /// A short name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exited { .. } => "exited",
            Self::Signaled { .. } => "signaled",
            Self::Panic { .. } => "panic",
            Self::WatchdogExpired { .. } => "watchdog",
            Self::PolicyDenied { .. } => "policy-denied",
            Self::PeerDenied { .. } => "peer-denied",
            Self::MalformedFrame { .. } => "malformed-frame",
            Self::SandboxFailed { .. } => "sandbox-failed",
            Self::RebootReason { .. } => "reboot",
            Self::AttestationFailure { .. } => "attestation",
        }
    }

    /// One line describing it.
    pub fn summary(&self) -> String {
        match self {
            Self::Exited { code } => format!("exited with code {code}"),
            Self::Signaled { signal } => format!("killed by signal {signal}"),
            Self::Panic { message, .. } => format!("panicked: {message}"),
            Self::WatchdogExpired { silent_ms } => {
                format!("no heartbeat for {silent_ms} ms: killed by the watchdog")
            }
            Self::PolicyDenied { action, errno } => {
                format!("denied {action}: {}", nix::errno::Errno::from_raw(*errno))
            }
            Self::PeerDenied { peer } => format!("IPC to `{peer}` is not granted"),
            Self::MalformedFrame { detail } => format!("malformed IPC frame: {detail}"),
            Self::SandboxFailed { detail } => format!("sandbox not applied: {detail}"),
            Self::RebootReason { reason } => format!("reboot: {reason}"),
            Self::AttestationFailure { detail } => format!("attestation failed: {detail}"),
        }
    }
}

/// One failure report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    /// Increasing ID, unique on this device.
    pub id: u64,
    /// When it was recorded, ms since the epoch.
    pub created_ms: u64,
    /// The running image's version.
    pub image_version: String,
    /// The compartment (or `monitor`).
    pub compartment: String,
    /// What happened.
    pub kind: FailureKind,
}

impl FailureReport {
    /// The grouping key: compartment, kind and the stable part of the detail (digits
    /// in panic messages are masked so `index 7` and `index 9` group together).
    pub fn signature(&self) -> String {
        let detail = match &self.kind {
            FailureKind::Exited { code } => code.to_string(),
            FailureKind::Signaled { signal } => signal.to_string(),
            FailureKind::Panic { message, .. } => message
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect(),
            FailureKind::WatchdogExpired { .. } => String::new(),
            FailureKind::PolicyDenied { action, errno } => format!("{action}:{errno}"),
            FailureKind::PeerDenied { peer } => peer.clone(),
            FailureKind::MalformedFrame { .. } | FailureKind::SandboxFailed { .. } => String::new(),
            FailureKind::RebootReason { reason } => reason.clone(),
            FailureKind::AttestationFailure { detail } => detail.clone(),
        };
        format!("{}/{}/{}", self.compartment, self.kind.name(), detail)
    }
}

/// Reports that share a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportGroup {
    /// The shared signature.
    pub signature: String,
    /// How many reports in the ring have it.
    pub count: usize,
    /// The first and last report IDs.
    pub first_id: u64,
    /// The newest report's ID.
    pub last_id: u64,
    /// The newest report's time, ms since the epoch.
    pub last_ms: u64,
}

/// A report store that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A file operation failed.
    #[error("report store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A report or the upload marker could not be written (names the step and file).
    #[error("report store: {0}")]
    File(#[from] warden_files::FileError),
    /// A report could not be encoded.
    #[error("cannot encode report: {0}")]
    Encode(postcard::Error),
    /// No report has that ID.
    #[error("no report {id} in {dir}")]
    NotFound {
        /// The ID asked for.
        id: u64,
        /// The store.
        dir: PathBuf,
    },
}

/// The on-disk ring of failure reports.
#[derive(Debug, Clone)]
pub struct ReportStore {
    dir: PathBuf,
    capacity: usize,
    image_version: String,
    /// Where the ID of the last uploaded report is kept (in `dir` unless the reader
    /// keeps it in its own directory, see [`ReportStore::with_upload_marker`]).
    upload_marker: PathBuf,
}

impl ReportStore {
    /// Opens (creating) the store in `dir`, keeping at most `capacity` reports.
    pub fn open(dir: &Path, capacity: usize, image_version: &str) -> Result<Self, ReportError> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if created {
            // Searchable by the link's compartment (see `record`).
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|source| ReportError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            capacity: capacity.max(1),
            image_version: image_version.to_owned(),
            upload_marker: dir.join(UPLOADED_MARKER),
        })
    }

    /// Keeps the upload bookkeeping at `path` instead of inside the ring: the cloud
    /// link's compartment reads the monitor's reports without any right to change them
    /// and remembers what it uploaded in its own directory.
    pub fn with_upload_marker(mut self, path: impl Into<PathBuf>) -> Self {
        self.upload_marker = path.into();
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records a failure of `compartment`; returns the stored report.
    pub fn record(
        &self,
        compartment: &str,
        kind: FailureKind,
    ) -> Result<FailureReport, ReportError> {
        let id = self.ids()?.last().map_or(1, |last| last + 1);
        let report = FailureReport {
            id,
            created_ms: now_ms(),
            image_version: self.image_version.clone(),
            compartment: compartment.to_owned(),
            kind,
        };
        let body = postcard::to_stdvec(&report).map_err(ReportError::Encode)?;
        let mut bytes = Vec::with_capacity(4 + body.len() + 32);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&Sha256::digest(&body));
        // Readable by the cloud link's compartment, which uploads it, whatever the
        // monitor's umask; landlock keeps every other compartment off the directory.
        // (The temporary `<id>.wfr.tmp` is not a report's name, so readers skip it.)
        warden_files::write_file_atomically_with_mode(&self.path_of(id), &bytes, 0o644)?;
        self.prune()?;
        Ok(report)
    }

    /// Every readable report, oldest first (corrupt files are skipped).
    pub fn list(&self) -> Result<Vec<FailureReport>, ReportError> {
        Ok(self
            .ids()?
            .into_iter()
            .filter_map(|id| self.read(id).ok())
            .collect())
    }

    /// The report with `id`.
    pub fn show(&self, id: u64) -> Result<FailureReport, ReportError> {
        self.read(id)
    }

    /// Reports grouped by signature, most frequent first.
    pub fn groups(&self) -> Result<Vec<ReportGroup>, ReportError> {
        let mut groups: BTreeMap<String, ReportGroup> = BTreeMap::new();
        for report in self.list()? {
            let signature = report.signature();
            let group = groups.entry(signature.clone()).or_insert(ReportGroup {
                signature,
                count: 0,
                first_id: report.id,
                last_id: report.id,
                last_ms: report.created_ms,
            });
            group.count += 1;
            group.last_id = report.id;
            group.last_ms = report.created_ms;
        }
        let mut groups: Vec<ReportGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.signature.cmp(&b.signature)));
        Ok(groups)
    }

    /// Reports the cloud link has not uploaded yet, oldest first.
    pub fn pending_upload(&self) -> Result<Vec<FailureReport>, ReportError> {
        let uploaded = self.uploaded_through();
        Ok(self
            .list()?
            .into_iter()
            .filter(|report| report.id > uploaded)
            .collect())
    }

    /// Marks every report up to `id` as uploaded (replaced atomically).
    pub fn mark_uploaded(&self, id: u64) -> Result<(), ReportError> {
        warden_files::write_file_atomically_with_mode(
            &self.upload_marker,
            id.to_string().as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    fn uploaded_through(&self) -> u64 {
        std::fs::read_to_string(&self.upload_marker)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.{EXTENSION}"))
    }

    fn ids(&self) -> Result<Vec<u64>, ReportError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| ReportError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut ids: Vec<u64> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let name = name.to_str()?;
                let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
                stem.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn read(&self, id: u64) -> Result<FailureReport, ReportError> {
        let path = self.path_of(id);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ReportError::NotFound {
                id,
                dir: self.dir.clone(),
            },
            _ => ReportError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let corrupt = || ReportError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt report"),
        };
        if bytes.len() < 4 + 32 || &bytes[..4] != MAGIC {
            return Err(corrupt());
        }
        let (body, digest) = bytes[4..].split_at(bytes.len() - 4 - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(corrupt());
        }
        postcard::from_bytes(body).map_err(|_| corrupt())
    }

    fn prune(&self) -> Result<(), ReportError> {
        let ids = self.ids()?;
        let excess = ids.len().saturating_sub(self.capacity);
        for id in &ids[..excess] {
            let path = self.path_of(*id);
            std::fs::remove_file(&path).map_err(|source| ReportError::Io { path, source })?;
        }
        Ok(())
    }
}

/// The crate's clock, re-exported where the appliance has always found it.
pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_grouped_and_survives_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ReportStore::open(dir.path(), 3, "1.2.3").expect("open");
        for index in 0..5 {
            let kind = FailureKind::Panic {
                message: format!("index {index} out of range"),
                backtrace: String::new(),
            };
            store.record("bridge-a", kind).expect("record");
        }
        let list = store.list().expect("list");
        assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(list[0].image_version, "1.2.3");
        let groups = store.groups().expect("groups");
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].count, 3);
        assert_eq!(groups[0].signature, "bridge-a/panic/index # out of range");
        // A torn or flipped file is skipped, the others still read.
        let path = store.path_of(4);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(store.list().expect("list").len(), 2);
        assert!(store.show(4).is_err());
        assert_eq!(store.pending_upload().expect("pending").len(), 2);
        store.mark_uploaded(4).expect("mark");
        assert_eq!(store.pending_upload().expect("pending")[0].id, 5);
    }

    #[test]
    fn a_reader_keeps_its_upload_marker_in_its_own_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = dir.path().join("ring");
        let writer = ReportStore::open(&ring, 8, "1.0.0").expect("open");
        writer
            .record("link", FailureKind::Signaled { signal: 9 })
            .expect("record");
        writer
            .record("bridges", FailureKind::Signaled { signal: 6 })
            .expect("record");
        let before: Vec<_> = std::fs::read_dir(&ring)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        let marker = dir.path().join("link-state").join("reports-uploaded");
        std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir");
        let reader = ReportStore::open(&ring, 8, "")
            .expect("open")
            .with_upload_marker(&marker);
        let pending = reader.pending_upload().expect("pending");
        assert_eq!(pending.len(), 2);
        reader.mark_uploaded(pending[0].id).expect("mark");
        assert_eq!(reader.pending_upload().expect("pending").len(), 1);
        let after: Vec<_> = std::fs::read_dir(&ring)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(before, after, "the reader wrote nothing into the ring");
        // The ring's own view is unchanged: its writer still sees both as pending.
        assert_eq!(writer.pending_upload().expect("pending").len(), 2);
    }
}
