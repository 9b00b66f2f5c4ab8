//! The attack table: one row per attack, printed and written after every case.

use std::sync::Mutex;

/// One row of the attack table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The attack, with its number in issue #22 (e.g. "1 fd exhaustion: fleet HTTP").
    pub attack: String,
    /// What was observed, in numbers where there are any.
    pub outcome: String,
    /// The bound it was held to, in words.
    pub bound: String,
    /// `pass`, or `FAIL: why`.
    pub result: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// Where the table is written (`cargo xtask test-real` prints it).
pub const TABLE_FILE: &str = "hostile-table.md";

/// Records an attack's row and prints the table of every attack run so far in this
/// process. Call it before asserting, so a failing case still has its row.
pub fn record(row: Row) {
    let mut rows = ROWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    rows.retain(|r| r.attack != row.attack);
    rows.push(row);
    rows.sort_by(|a, b| a.attack.cmp(&b.attack));
    let mut table = String::from("\n| attack | outcome | bound | result |\n|---|---|---|---|\n");
    for r in rows.iter() {
        table += &format!(
            "| {} | {} | {} | {} |\n",
            cell(&r.attack),
            cell(&r.outcome),
            cell(&r.bound),
            cell(&r.result),
        );
    }
    println!("{table}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(TABLE_FILE);
    if let Err(error) = std::fs::write(&path, table) {
        eprintln!("cannot write {}: {error}", path.display());
    }
}

fn cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "/")
}
