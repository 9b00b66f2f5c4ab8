//! `cargo xtask <job>`: the project's checks, the same on a laptop and in CI.
//!
//! Jobs: `ci` (everything below, in order), `fmt`, `lint`, `test`, `test-real`
//! (the ignored tests that need real components: Mosquitto clients, Chromium, …),
//! `embedded` (the no_std crates for the Cortex-M4F target).

use std::process::{Command, ExitCode};

/// The no_std crates and the features they build with on the microcontroller.
const EMBEDDED_CRATES: &[&str] = &[
    "warden-keychain",
    "warden-pluton",
    "warden-policy",
    "warden-image",
    "warden-modbus",
];
/// The real-time core's target.
const EMBEDDED_TARGET: &str = "thumbv7em-none-eabihf";

fn main() -> ExitCode {
    let job = std::env::args().nth(1).unwrap_or_else(|| "ci".to_owned());
    let steps: Vec<Vec<String>> = match job.as_str() {
        "fmt" => vec![fmt()],
        "lint" => vec![lint()],
        "test" => vec![test()],
        "test-real" => vec![test_real()],
        "embedded" => embedded(),
        "ci" => {
            let mut all = vec![fmt(), lint(), test(), test_real()];
            all.extend(embedded());
            all
        }
        other => {
            eprintln!("unknown job {other:?}; jobs: ci, fmt, lint, test, test-real, embedded");
            return ExitCode::FAILURE;
        }
    };
    for step in steps {
        eprintln!("==> cargo {}", step.join(" "));
        let status = Command::new(env!("CARGO")).args(&step).status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("xtask: `cargo {}` failed with {status}", step.join(" "));
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("xtask: cannot run cargo: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn fmt() -> Vec<String> {
    args(&["fmt", "--all", "--check"])
}

fn lint() -> Vec<String> {
    args(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn test() -> Vec<String> {
    args(&["test", "--workspace"])
}

fn test_real() -> Vec<String> {
    args(&["test", "--workspace", "--", "--ignored"])
}

fn embedded() -> Vec<Vec<String>> {
    EMBEDDED_CRATES
        .iter()
        .map(|krate| {
            args(&[
                "build",
                "--package",
                krate,
                "--no-default-features",
                "--target",
                EMBEDDED_TARGET,
            ])
        })
        .collect()
}
