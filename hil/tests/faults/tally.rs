//! Counting readings: produced by the device, stored by the fleet, lost, duplicated.
//!
//! Each counter register answers 1, 2, 3, … (its read count), so every reading is
//! unique: a value stored twice is a duplicate, a value between 1 and the last one
//! served that the fleet lacks is a lost reading.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::world::{BRIDGE, World};

/// The count of one case (all its counter points together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Readings the device served.
    pub produced: u64,
    /// Rows the fleet stored.
    pub stored: u64,
    /// Rows beyond the first of the same value.
    pub duplicates: u64,
    /// Values served but not stored.
    pub lost: u64,
    /// Values stored that the device never served (must be none).
    pub unknown: u64,
    /// The lost values, per point (for the per-kill or per-record analysis).
    pub lost_values: BTreeMap<String, Vec<u64>>,
}

impl Tally {
    /// Readings stored once each.
    pub fn distinct(&self) -> u64 {
        self.stored - self.duplicates
    }
}

/// Counts what the fleet holds against what the device served.
pub async fn count(world: &World) -> Result<Tally, String> {
    let produced = world.produced();
    let mut tally = Tally::default();
    for (address, &served) in produced.iter().enumerate() {
        let point = format!("{BRIDGE}/counter{address}");
        let mut values = world.stored_values(&point).await?;
        values.sort_unstable();
        tally.produced += served;
        tally.stored += values.len() as u64;
        let mut seen = vec![false; served as usize + 1];
        for value in values {
            match seen.get_mut(value as usize) {
                Some(slot) if value > 0 && *slot => tally.duplicates += 1,
                Some(slot) if value > 0 => *slot = true,
                _ => tally.unknown += 1,
            }
        }
        let lost: Vec<u64> = (1..=served).filter(|v| !seen[*v as usize]).collect();
        tally.lost += lost.len() as u64;
        tally.lost_values.insert(point, lost);
    }
    Ok(tally)
}

/// Lost values grouped into runs of consecutive values, per point: `(first, length)`.
pub fn lost_runs(tally: &Tally) -> BTreeMap<String, Vec<(u64, u64)>> {
    tally
        .lost_values
        .iter()
        .map(|(point, values)| {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &value in values {
                match runs.last_mut() {
                    Some((first, length)) if *first + *length == value => *length += 1,
                    _ => runs.push((value, 1)),
                }
            }
            (point.clone(), runs)
        })
        .collect()
}

/// Stops the device's reads, then waits (at most `limit`) until the fleet holds every
/// reading it served or — when `expect_loss` — until the appliance's queue is empty
/// and the fleet's count has stood still for 3 s. Returns the count and how long the
/// wait took.
pub async fn settle(world: &World, limit: Duration, expect_loss: bool) -> (Tally, Duration) {
    world.pause_device();
    let started = Instant::now();
    let mut last: Option<(Tally, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tally = match count(world).await {
            Ok(tally) => tally,
            Err(error) => {
                if started.elapsed() > limit {
                    panic!(
                        "cannot count the fleet's readings: {error}\n{}",
                        world.logs()
                    );
                }
                continue;
            }
        };
        let drained = world.status_number(&["link", "outbox", "depth"]) == Some(0);
        if tally.lost == 0 && tally.unknown == 0 && drained {
            return (tally, started.elapsed());
        }
        let steady_since = match &last {
            Some((previous, since)) if previous.stored == tally.stored => *since,
            _ => Instant::now(),
        };
        if expect_loss && drained && steady_since.elapsed() >= Duration::from_secs(3) {
            return (tally, started.elapsed());
        }
        if started.elapsed() > limit {
            return (tally, started.elapsed());
        }
        last = Some((tally, steady_since));
    }
}

/// One row of the summary table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Case name.
    pub case: String,
    /// Its count.
    pub tally: Tally,
    /// The bound it was held to, in words.
    pub bound: String,
    /// `pass`, or `FAIL: why`.
    pub result: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// Records a case's row and prints the table of every case run so far in this process.
pub fn record(row: Row) {
    let mut rows = ROWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    rows.retain(|r| r.case != row.case);
    rows.push(row);
    rows.sort_by(|a, b| a.case.cmp(&b.case));
    let mut table = String::from(
        "\n| case | produced | stored | duplicates | lost | bound | result |\n|---|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows.iter() {
        table += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.case,
            r.tally.produced,
            r.tally.stored,
            r.tally.duplicates,
            r.tally.lost,
            r.bound,
            r.result.replace('\n', " ").replace('|', "/"),
        );
    }
    println!("{table}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-table.md");
    let _ = std::fs::write(path, table);
}
