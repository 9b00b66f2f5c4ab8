//! `cargo xtask fuzz`: every cargo-fuzz target in the tree, built and run briefly.
//!
//! The fuzz crates are found, not listed: every `fuzz/Cargo.toml` with
//! `cargo-fuzz = true` under the repository (outside `target/`). Each is built once
//! (`cargo fuzz build`), then each of its targets runs until [`RUNS`] inputs or
//! [`SECONDS`] seconds, whichever comes first; a crash, a panic or a leak fails the job.
//! The long runs (10 M executions, figures in BENCHMARKS.md) are done by hand.
//!
//! cargo-fuzz needs nightly flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain take
//! them. The short runs use `--sanitizer none`: the workspace forbids `unsafe`, so what
//! these runs find is a panic (overflow checks and debug assertions are on), and
//! without AddressSanitizer the builds and the runs are about twice as fast. The build
//! artifacts go to one target directory shared by the fuzz crates, so their common
//! dependencies are built once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Inputs per target in the short run.
pub const RUNS: u32 = 200_000;
/// Seconds per target at most in the short run.
pub const SECONDS: u32 = 20;

/// The repository's root (xtask's parent folder).
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the fuzz builds go: `$CARGO_TARGET_DIR/fuzz`, else `target/fuzz`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("fuzz")
}

/// Every cargo-fuzz crate under `dir`, sorted.
fn fuzz_crates(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("{}: {error}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let skip = matches!(
            name.to_str(),
            Some("target" | ".git" | "node_modules" | "corpus" | "artifacts")
        );
        if skip || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let manifest = path.join("Cargo.toml");
        if name == "fuzz"
            && std::fs::read_to_string(&manifest)
                .is_ok_and(|text| text.contains("cargo-fuzz = true"))
        {
            found.push(path);
        } else {
            fuzz_crates(&path, found)?;
        }
    }
    found.sort();
    Ok(())
}

/// `cargo fuzz <args> -- <fuzzer_args>` for the fuzz crate `fuzz_dir`, with the flags
/// every call shares. They go before `--`: what follows it is libFuzzer's.
fn cargo_fuzz(fuzz_dir: &Path, args: &[&str], fuzzer_args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .arg("fuzz")
        .args(args)
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg("--sanitizer")
        .arg("none")
        .arg("--target-dir")
        .arg(target_dir())
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root());
    if !fuzzer_args.is_empty() {
        command.arg("--").args(fuzzer_args);
    }
    command
}

/// Runs `command`; an error names `what` and how it ended.
fn run(mut command: Command, what: &str) -> Result<(), String> {
    eprintln!("==> {what}");
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what} failed with {status}")),
        Err(error) => Err(format!(
            "cannot run {what}: {error} (is cargo-fuzz installed? `cargo install cargo-fuzz --locked`)"
        )),
    }
}

/// The fuzz job: build every fuzz crate, run every target briefly.
pub fn fuzz_every_target() -> Result<(), String> {
    let mut crates = Vec::new();
    fuzz_crates(&root(), &mut crates)?;
    if crates.is_empty() {
        return Err("no cargo-fuzz crate found".to_owned());
    }
    let mut timings = Vec::new();
    for fuzz_dir in &crates {
        let shown = fuzz_dir
            .strip_prefix(root())
            .unwrap_or(fuzz_dir)
            .display()
            .to_string();
        let started = Instant::now();
        run(
            cargo_fuzz(fuzz_dir, &["build"], &[]),
            &format!("cargo fuzz build ({shown})"),
        )?;
        timings.push((format!("build {shown}"), started.elapsed()));
        let listed = cargo_fuzz_list(fuzz_dir)?;
        for target in listed {
            let started = Instant::now();
            let runs = format!("-runs={RUNS}");
            let seconds = format!("-max_total_time={SECONDS}");
            run(
                cargo_fuzz(fuzz_dir, &["run", &target], &[&runs, &seconds]),
                &format!("cargo fuzz run {target} ({shown}) {runs} {seconds}"),
            )?;
            timings.push((format!("run {shown} {target}"), started.elapsed()));
        }
    }
    let total: std::time::Duration = timings.iter().map(|(_, took)| *took).sum();
    for (what, took) in &timings {
        eprintln!("{:>7.1} s  {what}", took.as_secs_f64());
    }
    eprintln!("{:>7.1} s  fuzz job in all", total.as_secs_f64());
    Ok(())
}

/// The targets of one fuzz crate (`cargo fuzz list`).
fn cargo_fuzz_list(fuzz_dir: &Path) -> Result<Vec<String>, String> {
    let output = Command::new(env!("CARGO"))
        .args(["fuzz", "list", "--fuzz-dir"])
        .arg(fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root())
        .output()
        .map_err(|error| format!("cannot run cargo fuzz list: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo fuzz list in {} failed: {}",
            fuzz_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}
