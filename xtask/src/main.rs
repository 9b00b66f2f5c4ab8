//! `cargo xtask <job>`: the project's checks, the same on a laptop and in CI.
//!
//! Jobs: `ci` (everything below, in order), `fmt`, `lint`, `test`, `test-real`
//! (the ignored tests that need real components: Mosquitto clients, Chromium, swtpm
//! for pluton's TPM backend, …),
//! `embedded` (the no_std crates for the Cortex-M4F target), `package` (the Debian
//! package, built and checked), `os-image` (Warden OS's disk), `os-run` (that disk
//! booted in QEMU), `module-cycles` (files of a crate that import each
//! other in a circle), `fuzz` (every cargo-fuzz target, built and run briefly).

use std::process::{Command, ExitCode};

mod fuzz;
mod module_cycles;
mod os_factory;
mod os_fleet;
mod os_image;
mod os_run;
mod package;
mod step;

use step::{Step, args};

/// The no_std crates and the features they build with on the microcontroller.
const EMBEDDED_CRATES: &[&str] = &[
    "warden-keychain",
    "warden-pluton",
    "warden-policy",
    "warden-image",
    "warden-modbus",
    "warden-rtcore-mailbox",
];
/// The real-time core's firmware: its own cargo project (its `.cargo/config.toml` sets
/// the target and link scripts, so cargo runs inside that folder).
const FIRMWARE_DIR: &str = "protocol-bridges/rtcore/firmware";
/// The real-time core's target.
const EMBEDDED_TARGET: &str = "thumbv7em-none-eabihf";

fn main() -> ExitCode {
    let job = std::env::args().nth(1).unwrap_or_else(|| "ci".to_owned());
    let cargo = |list: Vec<Vec<String>>| list.into_iter().map(Step::Cargo).collect::<Vec<_>>();
    let steps: Vec<Step> = match job.as_str() {
        "fmt" => cargo(vec![fmt()]),
        "lint" => cargo(vec![lint()]),
        "test" => cargo(vec![test()]),
        "test-real" => real_component_tests(),
        "embedded" => {
            let mut all = cargo(embedded());
            all.extend(firmware());
            all
        }
        "package" => package::steps(),
        "os-image" => vec![
            Step::Cargo(args(os_image::WARDEN_BUILD)),
            Step::Cargo(args(os_fleet::FLEET_BUILD)),
            Step::Check("Warden OS disk image", os_image::build),
        ],
        // QEMU runs this per forwarded guest connection (os_fleet::relay), never a person;
        // it must print nothing, so it is no step.
        "os-relay" => {
            return match os_fleet::relay() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        "os-run" => vec![
            Step::Cargo(args(os_fleet::FLEET_BUILD)),
            Step::Check("Warden OS in QEMU", os_run::run),
        ],
        "module-cycles" => vec![Step::Check("module circles", no_module_cycles)],
        "fuzz" => vec![fuzz_step()],
        "ci" => {
            let mut all = vec![Step::Check("module circles", no_module_cycles)];
            all.extend(cargo(vec![fmt(), lint(), test()]));
            all.extend(real_component_tests());
            all.extend(cargo(embedded()));
            all.extend(firmware());
            all.extend(package::steps());
            all.push(fuzz_step());
            all
        }
        other => {
            eprintln!(
                "unknown job {other:?}; jobs: ci, fmt, lint, test, test-real, embedded, package, os-image, os-run, module-cycles, fuzz"
            );
            return ExitCode::FAILURE;
        }
    };
    for step in steps {
        match step {
            Step::Cargo(step) => {
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
            Step::CargoIn(dir, step) => {
                eprintln!("==> (cd {dir} && cargo {})", step.join(" "));
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .map(|root| root.join(dir))
                    .unwrap_or_else(|| dir.into());
                let status = Command::new(env!("CARGO"))
                    .args(&step)
                    .current_dir(root)
                    .status();
                if !matches!(status, Ok(status) if status.success()) {
                    eprintln!(
                        "xtask: `cargo {}` in {dir} failed: {status:?}",
                        step.join(" ")
                    );
                    return ExitCode::FAILURE;
                }
            }
            Step::Check(name, check) => {
                eprintln!("==> {name}");
                if let Err(problem) = check() {
                    eprintln!("xtask: {name}: {problem}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// The circles not yet broken, one line each as `module-cycles` prints them: a ratchet.
/// A circle missing from this file fails CI, and so does a line of it that no longer
/// matches a circle (delete the line when the circle is gone).
const KNOWN_CIRCLES_FILE: &str = "xtask/known-module-circles.txt";

/// No crate has files that import each other in a circle (see `module_cycles`), beyond
/// the known ones listed in [`KNOWN_CIRCLES_FILE`].
fn no_module_cycles() -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent folder")?;
    let circles = module_cycles::find(root)?;
    let known_text = std::fs::read_to_string(root.join(KNOWN_CIRCLES_FILE)).unwrap_or_default();
    let known: Vec<&str> = known_text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let new: Vec<&String> = circles
        .iter()
        .filter(|circle| !known.contains(&circle.as_str()))
        .collect();
    let gone: Vec<&&str> = known
        .iter()
        .filter(|line| !circles.iter().any(|circle| circle == **line))
        .collect();
    for circle in &circles {
        if known.contains(&circle.as_str()) {
            eprintln!("known circle (to break): {circle}");
        }
    }
    let mut problems = Vec::new();
    if !new.is_empty() {
        problems.push(format!(
            "{} new circle(s); move the shared type down into a module of its own:\n{}",
            new.len(),
            new.iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    if !gone.is_empty() {
        problems.push(format!(
            "{} line(s) of {KNOWN_CIRCLES_FILE} match no circle any more; delete them:\n{}",
            gone.len(),
            gone.iter().map(|c| **c).collect::<Vec<_>>().join("\n")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Every fuzz target in the tree, built and run briefly ([`fuzz`]).
fn fuzz_step() -> Step {
    Step::Check("fuzz every target briefly", fuzz::fuzz_every_target)
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

// `--no-fail-fast`: one CI run reports every failing test binary, not only the first.
fn test() -> Vec<String> {
    args(&["test", "--workspace", "--no-fail-fast"])
}

fn test_real() -> Vec<String> {
    args(&["test", "--workspace", "--no-fail-fast", "--", "--ignored"])
}

/// Pluton's TPM 2.0 backend (cargo feature `tpm`, not in the workspace build): its
/// ignored tests start swtpm (Debian: swtpm, swtpm-tools; libtss2-dev to build).
fn test_tpm() -> Vec<String> {
    args(&[
        "test",
        "-p",
        "warden-pluton",
        "--features",
        "tpm",
        "--",
        "--ignored",
    ])
}

/// The station provisioning a unit on its TPM (swtpm): `warden-provision` with `tpm`.
fn test_station_tpm() -> Vec<String> {
    args(&[
        "test",
        "-p",
        "warden-provision",
        "--features",
        "tpm",
        "--test",
        "it",
        "--",
        "--ignored",
        "tpm::",
    ])
}

/// Clippy on the TPM backend and the station built with it, which the workspace lint
/// does not build.
fn lint_tpm() -> Vec<String> {
    args(&[
        "clippy",
        "-p",
        "warden-pluton",
        "-p",
        "warden-provision",
        "--features",
        "warden-pluton/tpm,warden-provision/tpm",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// The ignored tests, framed by the fault suite's table (`hil/tests/faults.rs` writes it
/// to the target's `tmp/`; its test output is captured, so the table is printed here),
/// then pluton's TPM backend and the station on it, on swtpm.
fn real_component_tests() -> Vec<Step> {
    vec![
        Step::Check("clear the fault suite's table", clear_fault_table),
        Step::Check("clear the attack suite's table", clear_hostile_table),
        Step::Cargo(test_real()),
        Step::Check("the fault suite's table", print_fault_table),
        Step::Check("the attack suite's table", print_hostile_table),
        Step::Cargo(test_tpm()),
        Step::Cargo(test_station_tpm()),
        Step::Cargo(lint_tpm()),
    ]
}

/// Where the fault suite writes its table (`$CARGO_TARGET_TMPDIR/faults-table.md`).
fn fault_table_path() -> std::path::PathBuf {
    target_tmp().join("faults-table.md")
}

/// Where the attack suite writes its table (`hil/tests/hostile/tally.rs`).
fn hostile_table_path() -> std::path::PathBuf {
    target_tmp().join("hostile-table.md")
}

/// `$CARGO_TARGET_TMPDIR` as the tests see it.
fn target_tmp() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| "target".into(), |root| root.join("target"))
        },
        std::path::PathBuf::from,
    );
    target.join("tmp")
}

fn clear_fault_table() -> Result<(), String> {
    clear_table(&fault_table_path())
}

fn clear_hostile_table() -> Result<(), String> {
    clear_table(&hostile_table_path())
}

fn clear_table(path: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("{}: {error}", path.display())),
    }
}

fn print_fault_table() -> Result<(), String> {
    print_table("the fault suite", &fault_table_path())
}

fn print_hostile_table() -> Result<(), String> {
    print_table("the attack suite", &hostile_table_path())
}

/// A suite that ran writes its table; none means it ran no case, which CI refuses.
fn print_table(suite: &str, path: &std::path::Path) -> Result<(), String> {
    let table = std::fs::read_to_string(path)
        .map_err(|error| format!("{suite} wrote no table ({}: {error})", path.display()))?;
    eprintln!("{table}");
    Ok(())
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

/// The firmware for the real-time core: linted and built for the Cortex-M4F.
fn firmware() -> Vec<Step> {
    vec![
        Step::CargoIn(
            FIRMWARE_DIR,
            args(&["clippy", "--release", "--locked", "--", "-D", "warnings"]),
        ),
        Step::CargoIn(FIRMWARE_DIR, args(&["build", "--release", "--locked"])),
    ]
}
