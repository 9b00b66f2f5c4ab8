//! Batches: serial numbers, a journal that makes a batch resumable and idempotent per
//! serial, the manifest (CSV and JSON), and the progress bar.
//!
//! `<units_dir>/batches/<batch>/journal.jsonl` gets one fsynced line per finished unit.
//! A rerun of the same batch skips serials whose last line says `provisioned` (and whose
//! unit still carries its PROVISIONED marker), and provisions the rest again; a unit
//! interrupted mid-way is safe to redo (see [`crate::unit::provision_unit`]). The
//! manifest is rewritten from the journal after every unit, so it is complete at any
//! moment for the units finished so far.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::files::write_atomically;
use crate::layout::UnitLayout;
use crate::record::read_record;
use crate::station_context::Station;
use crate::unit::{UnitError, provision_unit};

/// One manifest row / journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Serial number.
    pub serial: String,
    /// Device ID (empty if the identity was never created).
    pub device_id: String,
    /// Certificate fingerprint (empty if none was issued).
    pub fingerprint: String,
    /// Factory image version.
    pub image_version: String,
    /// `provisioned` or `failed`.
    pub result: String,
    /// The failed step and error, if any.
    pub error: String,
}

/// Which serial numbers a batch covers.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    /// Batch name (a directory name).
    pub name: String,
    /// Serial prefix.
    pub prefix: String,
    /// First number.
    pub first: u64,
    /// How many units.
    pub count: u64,
    /// Zero-padded digits.
    pub digits: usize,
}

impl BatchPlan {
    /// The serial numbers, in order.
    pub fn serials(&self) -> Vec<String> {
        (self.first..self.first + self.count)
            .map(|number| format!("{}{number:0width$}", self.prefix, width = self.digits))
            .collect()
    }
}

/// Totals of a batch run.
#[derive(Debug, Clone, Default)]
pub struct BatchSummary {
    /// Provisioned in this run.
    pub provisioned: u64,
    /// Already provisioned before this run (skipped).
    pub skipped: u64,
    /// Failed in this run.
    pub failed: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// The manifest files.
    pub manifest_csv: PathBuf,
    /// The manifest as JSON.
    pub manifest_json: PathBuf,
}

/// The batch could not run (as opposed to a unit failing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// Another station process is running this batch.
    #[error("batch {0} is being run by another process (lock {1} is held)")]
    Busy(String, PathBuf),
    /// The batch name is not a plain name.
    #[error("batch name {0:?} must be letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// A journal line is unreadable.
    #[error("{path}:{line}: unreadable journal entry: {reason}")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// The batch's directory.
pub fn batch_dir(units_dir: &Path, name: &str) -> PathBuf {
    units_dir.join("batches").join(name)
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BatchError {
    let path = path.to_owned();
    move |source| {
        BatchError::File(crate::files::FileError {
            operation,
            path,
            source,
        })
    }
}

/// Read the journal: the last entry per serial.
pub fn read_journal(path: &Path) -> Result<BTreeMap<String, ManifestEntry>, BatchError> {
    let mut entries = BTreeMap::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(error) => return Err(io_error("open", path)(error)),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io_error("read", path))?;
    let last = lines.len();
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ManifestEntry>(line) {
            Ok(entry) => {
                entries.insert(entry.serial.clone(), entry);
            }
            // A torn last line (killed mid-write) is dropped: that unit is redone.
            Err(_) if index + 1 == last => {}
            Err(error) => {
                return Err(BatchError::Journal {
                    path: path.to_owned(),
                    line: index + 1,
                    reason: error.to_string(),
                });
            }
        }
    }
    Ok(entries)
}

fn append_journal(path: &Path, entry: &ManifestEntry) -> Result<(), BatchError> {
    let mut line = serde_json::to_string(entry).unwrap_or_default();
    line.push('\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.write_all(line.as_bytes())
        .map_err(io_error("append to", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Write `manifest.csv` and `manifest.json` for `serials` from the journal entries.
pub fn write_manifest(
    dir: &Path,
    serials: &[String],
    entries: &BTreeMap<String, ManifestEntry>,
) -> Result<(PathBuf, PathBuf), BatchError> {
    let rows: Vec<&ManifestEntry> = serials
        .iter()
        .filter_map(|serial| entries.get(serial))
        .collect();
    let mut csv = String::from("serial,device_id,fingerprint,image_version,result,error\n");
    for row in &rows {
        let fields = [
            &row.serial,
            &row.device_id,
            &row.fingerprint,
            &row.image_version,
            &row.result,
            &row.error,
        ];
        let line: Vec<String> = fields.iter().map(|field| csv_field(field)).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    let csv_path = dir.join("manifest.csv");
    let json_path = dir.join("manifest.json");
    write_atomically(&csv_path, csv.as_bytes(), 0o644)?;
    let json = serde_json::to_vec_pretty(&rows).unwrap_or_default();
    write_atomically(&json_path, &json, 0o644)?;
    Ok((csv_path, json_path))
}

fn entry_for(station: &Station, serial: &str, outcome: &Result<(), UnitError>) -> ManifestEntry {
    let record = read_record(&UnitLayout::for_serial(station.units_dir(), serial));
    let device_id = record
        .as_ref()
        .and_then(|r| r.device_id.clone())
        .unwrap_or_default();
    let fingerprint = record
        .as_ref()
        .and_then(|r| r.fingerprint.clone())
        .unwrap_or_default();
    let (result, error) = match outcome {
        Ok(()) => ("provisioned", String::new()),
        Err(error) => ("failed", error.to_string()),
    };
    ManifestEntry {
        serial: serial.to_owned(),
        device_id,
        fingerprint,
        image_version: station.factory_image.version.clone(),
        result: result.to_owned(),
        error,
    }
}

/// Run (or resume) a batch. Unit failures are recorded and the batch goes on; the
/// summary counts them.
pub fn run_batch(
    station: &Station,
    plan: &BatchPlan,
    show_progress: bool,
) -> Result<BatchSummary, BatchError> {
    if !crate::unit::valid_serial(&plan.name) {
        return Err(BatchError::BadName(plan.name.clone()));
    }
    let started = Instant::now();
    let dir = batch_dir(station.units_dir(), &plan.name);
    crate::files::create_dir(&dir)?;
    let lock_path = dir.join("batch.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open", &lock_path))?;
    if lock.try_lock().is_err() {
        return Err(BatchError::Busy(plan.name.clone(), lock_path));
    }
    let journal = dir.join("journal.jsonl");
    let mut entries = read_journal(&journal)?;
    let serials = plan.serials();
    let mut summary = BatchSummary::default();

    let progress = if show_progress {
        indicatif::ProgressBar::new(plan.count)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let already_done = |serial: &str, entries: &BTreeMap<String, ManifestEntry>| {
        entries
            .get(serial)
            .is_some_and(|entry| entry.result == "provisioned")
            && UnitLayout::for_serial(station.units_dir(), serial)
                .provisioned_marker()
                .is_file()
    };
    for serial in &serials {
        if already_done(serial, &entries) {
            summary.skipped += 1;
            progress.inc(1);
        }
    }
    for serial in &serials {
        if already_done(serial, &entries) {
            continue;
        }
        progress.set_message(serial.clone());
        let outcome = match provision_unit(station, serial) {
            Ok(_) => Ok(()),
            // Provisioned earlier (by `unit` or a run whose journal line was lost).
            Err(UnitError::Locked { .. }) => Ok(()),
            Err(error) => Err(error),
        };
        match &outcome {
            Ok(()) => summary.provisioned += 1,
            Err(error) => {
                summary.failed += 1;
                progress.println(format!("FAILED {error}"));
            }
        }
        let entry = entry_for(station, serial, &outcome);
        append_journal(&journal, &entry)?;
        entries.insert(serial.clone(), entry);
        write_manifest(&dir, &serials, &entries)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let (csv, json) = write_manifest(&dir, &serials, &entries)?;
    summary.manifest_csv = csv;
    summary.manifest_json = json;
    summary.elapsed = started.elapsed();
    drop(lock);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, result: &str) -> ManifestEntry {
        ManifestEntry {
            serial: serial.into(),
            device_id: "d".into(),
            fingerprint: "f".into(),
            image_version: "1.0.0".into(),
            result: result.into(),
            error: String::new(),
        }
    }

    #[test]
    fn serials_are_zero_padded_and_consecutive() {
        let plan = BatchPlan {
            name: "b".into(),
            prefix: "WG".into(),
            first: 98,
            count: 3,
            digits: 4,
        };
        assert_eq!(plan.serials(), ["WG0098", "WG0099", "WG0100"]);
    }

    #[test]
    fn journal_keeps_the_last_entry_and_drops_only_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        append_journal(&path, &entry("A", "failed")).expect("append");
        append_journal(&path, &entry("B", "provisioned")).expect("append");
        append_journal(&path, &entry("A", "provisioned")).expect("append");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"serial\":\"C\",\"dev");
        std::fs::write(&path, &text).expect("write");
        let entries = read_journal(&path).expect("journal");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries["A"].result, "provisioned");

        // A damaged line that is not the last is an error naming the line.
        let broken = format!("garbage\n{text}\n");
        std::fs::write(&path, broken).expect("write");
        let error = read_journal(&path).expect_err("damaged journal");
        assert!(error.to_string().contains(":1:"), "{error}");
    }

    #[test]
    fn manifest_csv_quotes_fields_and_keeps_serial_order() {
        let dir = tempfile::tempdir().expect("dir");
        let mut entries = BTreeMap::new();
        let mut failed = entry("S2", "failed");
        failed.error = "unit S2: step `x` failed: a, \"b\"".into();
        entries.insert("S2".to_owned(), failed);
        entries.insert("S1".to_owned(), entry("S1", "provisioned"));
        let serials = vec!["S2".to_owned(), "S1".to_owned(), "S3".to_owned()];
        let (csv, json) = write_manifest(dir.path(), &serials, &entries).expect("manifest");
        let csv = std::fs::read_to_string(csv).expect("csv");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("S2,"));
        assert!(lines[1].ends_with(",failed,\"unit S2: step `x` failed: a, \"\"b\"\"\""));
        let rows: Vec<ManifestEntry> =
            serde_json::from_slice(&std::fs::read(json).expect("json")).expect("rows");
        assert_eq!(rows.len(), 2);
    }
}
