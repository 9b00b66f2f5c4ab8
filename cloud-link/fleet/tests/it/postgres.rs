//! The same contracts against a real PostgreSQL, started by the test on a temporary
//! directory and a loopback port (Debian's `postgresql` package; run as root, the
//! server runs as the `postgres` user).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the server binaries (`WARDEN_PG_BIN` overrides).
fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("WARDEN_PG_BIN").unwrap_or_else(|_| {
        // The newest installed major version.
        let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
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

/// A PostgreSQL server in a temporary directory; stopped when dropped.
struct TemporaryPostgres {
    data: PathBuf,
    as_postgres: bool,
    url: String,
    _dir: tempfile::TempDir,
}

fn run(as_postgres: bool, program: &Path, args: &[&str]) {
    let mut command = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command.args(args).output().expect("run a postgresql tool");
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TemporaryPostgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // PostgreSQL refuses to run as root: then the server runs as `postgres`.
        let as_postgres = nix_is_root();
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
}

impl Drop for TemporaryPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin("pg_ctl"));
            c
        } else {
            Command::new(pg_bin("pg_ctl"))
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn every_contract_holds_on_postgresql() {
    let postgres = TemporaryPostgres::start();
    // One database, used in turn: each fixture's rows stay apart by their names, and
    // the migrations run once then are found applied.
    let fx = super::fleet_on(Some(postgres.url.clone())).await;
    super::registry::registration_contract(&fx).await;
    fx.stop().await;

    let database = |name: &str| {
        run(
            postgres.as_postgres,
            &pg_bin("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port_of(&postgres.url),
                "-U",
                "warden",
                name,
            ],
        );
        postgres.url.replace("/postgres", &format!("/{name}"))
    };
    let fx = super::fleet_on(Some(database("reports"))).await;
    super::reports::reports_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("rollout"))).await;
    super::rollout::rollout_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("challenges"))).await;
    super::attestation::challenge_restart_contract(fx)
        .await
        .stop()
        .await;
    let fx = super::fleet_with(
        Some(database("lapse")),
        super::attestation::lapse_after_two_seconds,
    )
    .await;
    super::attestation::trust_lapse_contract(&fx).await;
    fx.stop().await;
    let fx = super::fleet_on(Some(database("twins"))).await;
    super::twin::twin_order_contract(&fx).await;
    fx.stop().await;
    super::telemetry::telemetry_store_contract(&database("telemetry")).await;
    let fx = super::fleet_on(Some(database("dashboard"))).await;
    let _fed = super::dashboard::dashboard_contract(&fx).await;
    fx.stop().await;
}

/// A failed `COMMIT` on PostgreSQL: a deferred constraint trigger on
/// `telemetry_batches` raises `disk_full` at commit while `warden_test_fault` says so.
/// The batch is not acknowledged, and what is acknowledged after recovery is durable.
#[tokio::test]
#[ignore = "needs postgresql (Debian package `postgresql`; .ci/run installs it)"]
async fn a_failed_commit_on_postgresql_is_not_acknowledged() {
    use sqlx::Connection as _;
    let postgres = TemporaryPostgres::start();
    let store = warden_fleet::store::Store::open(&postgres.url)
        .await
        .expect("open");
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&postgres.url)
        .await
        .expect("connect");
    for statement in [
        "CREATE TABLE warden_test_fault (fail BOOLEAN NOT NULL)",
        "INSERT INTO warden_test_fault VALUES (false)",
        "CREATE FUNCTION warden_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT fail FROM warden_test_fault) THEN
                 RAISE EXCEPTION 'could not extend file: no space left on device (simulated)'
                     USING ERRCODE = 'disk_full';
             END IF;
             RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER warden_test_fault AFTER INSERT ON telemetry_batches
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION warden_test_fault()",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let _ = admin.close().await;
    super::store_failure::unstored_batches_are_not_acknowledged(
        store,
        &postgres.url,
        "UPDATE warden_test_fault SET fail = true",
        "UPDATE warden_test_fault SET fail = false",
    )
    .await;
}

fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned()
}
