//! A real headless Chromium for page tests (Debian's `chromium`, started per call).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium's flags for a closed network and a throwaway profile.
fn chromium(profile: &Path) -> Command {
    let mut command =
        Command::new(std::env::var_os("WARDEN_CHROMIUM").unwrap_or_else(|| "chromium".into()));
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The DOM of `url` after its scripts ran for a few (virtual) seconds.
pub fn dump_dom(url: &str) -> anyhow::Result<String> {
    let profile = tempfile_dir()?;
    let output = chromium(&profile).arg("--dump-dom").arg(url).output()?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Saves a PNG screenshot of `url` to `path` (used when a page test fails).
pub fn screenshot(url: &str, path: &Path) -> anyhow::Result<()> {
    let profile = tempfile_dir()?;
    let status = chromium(&profile)
        .arg(format!("--screenshot={}", path.display()))
        .arg("--window-size=1200,900")
        .arg(url)
        .status()?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(status.success(), "chromium screenshot failed");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "warden-chromium-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
