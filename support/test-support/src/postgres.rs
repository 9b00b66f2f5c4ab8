//! A throwaway PostgreSQL server (Debian `postgresql`), started on a temporary
//! directory and a loopback port; as root, the server runs as the `postgres` user
//! (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ports::free_port;

/// Where Debian puts the server binaries: the newest installed major version
/// (`WARDEN_PG_BIN` overrides).
fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("WARDEN_PG_BIN").unwrap_or_else(|_| {
        let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_unstable();
        format!(
            "/usr/lib/postgresql/{}/bin",
            versions.last().copied().unwrap_or(15)
        )
    });
    Path::new(&dir).join(tool)
}

/// A PostgreSQL server in a temporary directory; stopped (immediate) when dropped.
pub struct TemporaryPostgres {
    data: PathBuf,
    as_postgres: bool,
    url: String,
    _dir: tempfile::TempDir,
}

fn command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(as_postgres: bool, program: &Path, args: &[&str]) {
    let output = command(as_postgres, program)
        .args(args)
        .output()
        .expect("run a postgresql tool (Debian package postgresql)");
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl TemporaryPostgres {
    /// initdb (trust authentication, user `warden`, fsync off: a test database) and
    /// start; returns once the server accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let port = free_port();
        let data_text = data.display().to_string();
        run(
            as_postgres,
            &pg_bin("initdb"),
            &["-D", &data_text, "-A", "trust", "-U", "warden", "--no-sync"],
        );
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("postgres.log").display().to_string();
        run(
            as_postgres,
            &pg_bin("pg_ctl"),
            &["-D", &data_text, "-o", &options, "-l", &log, "-w", "start"],
        );
        Self {
            data,
            as_postgres,
            url: format!("postgres://warden@127.0.0.1:{port}/postgres"),
            _dir: dir,
        }
    }

    /// The connection URL (`postgres://warden@127.0.0.1:PORT/postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates database `name` on this server and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|tail| tail.split('/').next());
        run(
            self.as_postgres,
            &pg_bin("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                port.unwrap_or("5432"),
                "-U",
                "warden",
                name,
            ],
        );
        self.url.replace("/postgres", &format!("/{name}"))
    }
}

impl Drop for TemporaryPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = command(self.as_postgres, &pg_bin("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}
