//! Backup and restore of the fleet's SQLite store, and the lock that keeps a restore
//! off the database of a running fleet.
//!
//! A backup is SQLite's `VACUUM INTO`: one read transaction copies a consistent
//! snapshot while the fleet keeps writing (WAL: the reader never blocks the writer).
//! sqlx exposes no `sqlite3_backup_*` (launchbadge/sqlx#190) and the workspace forbids
//! `unsafe`, so the C backup API is out of reach; `VACUUM INTO` gives the same
//! guarantee (every transaction committed before it began, none after) in one
//! statement. PostgreSQL is backed up with `pg_dump` (the fleet's README).

use std::path::{Path, PathBuf};

use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// Why a backup or restore did nothing (or, past the copy, left the target as it was).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The database is PostgreSQL.
    #[error(
        "database_url is PostgreSQL: back it up with `pg_dump --format=custom` and restore \
         with `pg_restore` (see the fleet's README, \"Backup and restore\")"
    )]
    Postgres,
    /// The database URL is not `sqlite://PATH`.
    #[error("database_url {0:?} is not sqlite://PATH")]
    NotSqlite(String),
    /// The target exists.
    #[error("{} exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// A fleet holds the database.
    #[error(
        "a running warden-fleet holds {} (lock {}); stop it before restoring",
        database.display(),
        lock.display()
    )]
    Running {
        /// The database.
        database: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The file is not a sound fleet database.
    #[error("{} is not a fleet database: {reason}", path.display())]
    NotAFleetDatabase {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// SQLite refused.
    #[error("{}: {source}", path.display())]
    Sqlite {
        /// The database it was working on.
        path: PathBuf,
        /// Why.
        source: sqlx::Error,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Making the copy durable failed.
    #[error(transparent)]
    Durable(#[from] warden_files::FileError),
}

/// The SQLite file `database_url` names (`sqlite://PATH[?…]`).
pub fn sqlite_path(database_url: &str) -> Result<PathBuf, BackupError> {
    if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        return Err(BackupError::Postgres);
    }
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|path| !path.is_empty() && *path != ":memory:")
        .ok_or_else(|| BackupError::NotSqlite(database_url.to_owned()))?;
    Ok(PathBuf::from(path))
}

/// The lock file beside `database`, held by a running fleet.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive lock on a SQLite database's lock file, held while a fleet runs on it
/// (and while a restore replaces it). Released on drop (and by the kernel when the
/// process dies, so a crashed fleet leaves nothing to clean up).
#[derive(Debug)]
pub struct DatabaseLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl DatabaseLock {
    /// Takes the lock of `database`; [`BackupError::Running`] if a fleet holds it.
    pub fn take(database: &Path) -> Result<Self, BackupError> {
        let lock = lock_path(database);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| BackupError::Io {
                path: lock.clone(),
                source,
            })?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(|lock| Self { _lock: lock })
            .map_err(|(_, errno)| {
                if errno == nix::errno::Errno::EWOULDBLOCK {
                    BackupError::Running {
                        database: database.to_owned(),
                        lock,
                    }
                } else {
                    BackupError::Io {
                        path: lock,
                        source: errno.into(),
                    }
                }
            })
    }
}

/// What a backup or restore copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Bytes of the copy.
    pub bytes: u64,
}

/// Copies the fleet's SQLite database to `to` while the fleet runs; refuses an
/// existing `to` unless `force`. The copy is checked (`PRAGMA integrity_check`) and
/// made durable before it takes its name.
pub async fn backup(database_url: &str, to: &Path, force: bool) -> Result<Copied, BackupError> {
    let database = sqlite_path(database_url)?;
    if to.exists() && !force {
        return Err(BackupError::Exists(to.to_owned()));
    }
    if !database.is_file() {
        return Err(BackupError::Io {
            path: database,
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let temporary = warden_files::temporary_path(to);
    let _ = std::fs::remove_file(&temporary);
    let sqlite = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Sqlite { path, source }
    };
    let mut source = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&database)
            .busy_timeout(std::time::Duration::from_secs(30)),
    )
    .await
    .map_err(sqlite(&database))?;
    let copied = sqlx::query("VACUUM INTO ?")
        .bind(temporary.to_string_lossy().into_owned())
        .execute(&mut source)
        .await
        .map_err(sqlite(&database));
    let _ = source.close().await;
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    let checked = check_fleet_database(&temporary).await;
    if let Err(error) = checked {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    install(&temporary, to)
}

/// Replaces the fleet's SQLite database with the backup `from`. Refuses while a fleet
/// runs on it (its lock is held), and over an existing database unless `force`.
/// The backup is checked first; the old database's WAL and shared-memory files are
/// removed so they cannot be replayed onto the restored one.
pub async fn restore(database_url: &str, from: &Path, force: bool) -> Result<Copied, BackupError> {
    let database = sqlite_path(database_url)?;
    let _lock = DatabaseLock::take(&database)?;
    check_fleet_database(from).await?;
    if database.exists() && !force {
        return Err(BackupError::Exists(database));
    }
    let temporary = warden_files::temporary_path(&database);
    std::fs::copy(from, &temporary).map_err(|source| BackupError::Io {
        path: temporary.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = database.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(PathBuf::from(&side)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BackupError::Io {
                    path: side.into(),
                    source,
                });
            }
        }
    }
    install(&temporary, &database)
}

/// Fsyncs `temporary`, renames it to `path` and fsyncs the directory.
fn install(temporary: &Path, path: &Path) -> Result<Copied, BackupError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    let file = std::fs::File::open(temporary).map_err(io(temporary))?;
    // The store holds device records and token-free audit entries: owner only.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(temporary))?;
    file.sync_all().map_err(io(temporary))?;
    let bytes = file.metadata().map_err(io(temporary))?.len();
    drop(file);
    std::fs::rename(temporary, path).map_err(io(path))?;
    warden_files::sync_directory_of(path)?;
    Ok(Copied { bytes })
}

/// Checks that `path` is an intact SQLite database with the fleet's schema.
async fn check_fleet_database(path: &Path) -> Result<(), BackupError> {
    let not_fleet = |reason: String| BackupError::NotAFleetDatabase {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(not_fleet("no such file".into()));
    }
    let mut connection =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path).read_only(true))
            .await
            .map_err(|error| not_fleet(error.to_string()))?;
    let result: Result<(), BackupError> = async {
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut connection)
            .await
            .map_err(|error| not_fleet(error.to_string()))?;
        if integrity != "ok" {
            return Err(not_fleet(format!("integrity check: {integrity}")));
        }
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN \
             ('warden_schema', 'telemetry_batches', 'devices')",
        )
        .fetch_one(&mut connection)
        .await
        .map_err(|error| not_fleet(error.to_string()))?;
        if tables < 3 {
            return Err(not_fleet("the fleet's tables are missing".into()));
        }
        Ok(())
    }
    .await;
    let _ = connection.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_their_file_or_are_refused() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/warden-fleet/fleet.db?mode=rwc").expect("path"),
            PathBuf::from("/var/lib/warden-fleet/fleet.db")
        );
        assert!(matches!(
            sqlite_path("postgres://fleet@db/fleet"),
            Err(BackupError::Postgres)
        ));
        assert!(matches!(
            sqlite_path("sqlite::memory:"),
            Err(BackupError::NotSqlite(_))
        ));
    }

    #[test]
    fn the_lock_is_exclusive_while_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("fleet.db");
        let held = DatabaseLock::take(&database).expect("first");
        let refused = DatabaseLock::take(&database).expect_err("held");
        assert!(matches!(refused, BackupError::Running { .. }), "{refused}");
        drop(held);
        DatabaseLock::take(&database).expect("free again");
    }
}
