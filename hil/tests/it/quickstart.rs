//! The fleet README's quick start, run as written: its `sh quickstart` blocks, in
//! order, in an empty directory, with this build's binaries on `PATH`. The document
//! cannot drift from what works.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The README whose blocks are run.
const README: &str = include_str!("../../../cloud-link/fleet/README.md");

/// The shell text of every block fenced as ```` ```sh quickstart ````, in order.
fn quickstart_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == "```sh quickstart" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The directory of this build's binaries (`target/<profile>/`, beside `deps/`).
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_owned()
}

fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.to_string())
        .expect("a free port")
}

#[test]
fn the_readme_has_the_quick_start_blocks() {
    let blocks = quickstart_blocks(README);
    assert!(blocks.len() >= 3, "{blocks:?}");
    assert!(blocks[0].contains("warden-fleet init"), "{}", blocks[0]);
}

#[test]
#[ignore = "needs the warden-fleet and warden-provision binaries built, curl and jq"]
fn the_fleet_readme_quick_start_runs_as_written() {
    let bin = binary_dir();
    for name in ["warden-fleet", "warden-provision"] {
        assert!(
            bin.join(name).is_file(),
            "{} missing: `cargo build -p warden-fleet -p warden-provision --bins`",
            bin.join(name).display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!("set -euo pipefail\n{}", quickstart_blocks(README).concat());
    std::fs::write(dir.path().join("quickstart.sh"), &script).expect("script");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .arg("quickstart.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env("FLEET_HTTP", free_address())
        .env("FLEET_MQTT", free_address())
        .env("FLEET_METRICS", free_address())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bash");
    // The fleet the script started in the background.
    if let Ok(pid) = std::fs::read_to_string(dir.path().join("fleet.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let log = std::fs::read_to_string(dir.path().join("fleet.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the quick start failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- fleet.log\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
