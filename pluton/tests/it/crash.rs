//! Crash safety: SIGKILL a process that is writing pluton state, at many instants, and
//! check that the state is always the last acknowledged one or the one being written.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use warden_pluton::RootOfTrust;
use warden_pluton::server::{ServeOptions, open_file_backed, read_capability_file};

const CHILD_DIRECTORY_VARIABLE: &str = "WARDEN_PLUTON_CRASH_CHILD_DIR";

fn options(directory: &Path) -> ServeOptions {
    ServeOptions {
        firmware_version: 1,
        capability_file: Some(directory.join("capability")),
        ..ServeOptions::default()
    }
}

/// The child: advance counter 0 forever, printing each acknowledged value. Does nothing
/// unless started by `kill_during_writes_leaves_old_or_new_state`.
#[test]
fn crash_child_writer() {
    let Some(directory) = std::env::var_os(CHILD_DIRECTORY_VARIABLE).map(PathBuf::from) else {
        return;
    };
    let mut pluton =
        open_file_backed(&directory.join("state"), &options(&directory)).expect("open");
    let capability = read_capability_file(&directory.join("capability")).expect("capability");
    // Straight to fd 1: the test harness may capture `println!`.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {}", pluton.counters()[0]).expect("stdout");
    stdout.flush().expect("stdout");
    loop {
        let next = pluton.counters()[0] + 1;
        pluton
            .advance_counter(&capability, 0, next)
            .expect("advance");
        // Acknowledged only after the save returned (fsync + rename + directory fsync).
        writeln!(stdout, "acked {next}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}

#[test]
fn kill_during_writes_leaves_old_or_new_state() {
    let directory = tempfile::tempdir().expect("tempdir");
    let rounds = 200u64;
    let mut total_acknowledged = 0u64;
    let mut landed_on_new = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "crash::crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIRECTORY_VARIABLE, directory.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut last_acknowledged = loop {
            let line = lines.next().expect("child output").expect("line");
            // libtest may print "test ... " on the same line first.
            if let Some((_, value)) = line.split_once("ready ") {
                break value.parse::<u64>().expect("number");
            }
        };
        // Kill at a different instant each round: 0 to 20 ms into the write loop.
        std::thread::sleep(Duration::from_micros((round * 7919) % 20_000));
        child.kill().expect("kill");
        child.wait().expect("reap");
        let start = last_acknowledged;
        for line in lines.map_while(Result::ok) {
            if let Some(value) = line.strip_prefix("acked ") {
                last_acknowledged = value.parse().expect("number");
            }
        }
        total_acknowledged += last_acknowledged - start;

        let recovered =
            open_file_backed(&directory.path().join("state"), &options(directory.path()))
                .expect("state is readable after a kill")
                .counters()[0];
        assert!(
            recovered == last_acknowledged || recovered == last_acknowledged + 1,
            "round {round}: recovered {recovered}, last acknowledged {last_acknowledged}"
        );
        landed_on_new += u64::from(recovered == last_acknowledged + 1);
    }
    println!(
        "crash safety: {rounds} SIGKILLs during {total_acknowledged} acknowledged state writes; \
         every recovery was the old or the new state ({landed_on_new} kills landed after the \
         rename but before the acknowledgement)"
    );
    assert!(total_acknowledged > 0, "the child never wrote");
}
