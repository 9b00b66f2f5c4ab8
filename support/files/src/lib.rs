//! Files that survive a power cut: the one place in the tree that replaces a file.
//!
//! [`write_file_atomically`] writes a temporary file beside the target, fsyncs it,
//! renames it over the target and fsyncs the directory. A kill or power cut at any
//! instant leaves either the old or the new complete file (rename is atomic within a
//! file system) and never a partial one; once it returns, the new file survives a power
//! cut (the directory entry is on disk too). Every error names the operation and the
//! file. Formats that must also detect a bit flip carry their own checksum.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Suffix of the temporary file a replacement writes beside its target.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// A file operation failed; names the operation and the file.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct FileError {
    /// What was being done ("create", "fsync", "rename over", …).
    pub operation: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// The file system is full (ENOSPC) or the quota is exhausted (EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }
}

/// Maps an `io::Error` to a [`FileError`] naming `operation` and `path`.
pub fn context(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        operation,
        path,
        source,
    }
}

/// Create `directory` and its parents (mode 0700) if missing.
pub fn create_private_directory(directory: &Path) -> Result<(), FileError> {
    if !directory.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(directory)
            .map_err(context("create directory", directory))?;
    }
    Ok(())
}

/// The temporary file [`write_file_atomically`] uses for `path` (`<path>.tmp`).
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(TEMPORARY_SUFFIX);
    PathBuf::from(temporary)
}

/// Replace `path` with `bytes` atomically and durably, readable by its owner only
/// (mode 0600). See the crate docs.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_file_atomically_with_mode(path, bytes, 0o600)
}

/// [`write_file_atomically`] with the given permission bits (for files others read,
/// such as a certificate: 0o644).
pub fn write_file_atomically_with_mode(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), FileError> {
    let temporary = temporary_path(path);
    let written = write_and_sync(&temporary, bytes, mode)
        .and_then(|()| fs::rename(&temporary, path).map_err(context("rename over", path)));
    if let Err(error) = written {
        // Leave nothing behind: a full disk must not also keep a half-written copy.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_directory_of(path)
}

fn write_and_sync(temporary: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(temporary)
        .map_err(context("create", temporary))?;
    // `mode` applies only when the file is created; a leftover must get it too.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(context("set permissions of", temporary))?;
    file.write_all(bytes).map_err(context("write", temporary))?;
    file.sync_all().map_err(context("fsync", temporary))
}

/// Fsync the directory holding `path`, so a rename or a new file in it is durable.
pub fn sync_directory_of(path: &Path) -> Result<(), FileError> {
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(context("fsync directory", directory))
}

/// Remove a leftover temporary file of an interrupted replacement of `path`, if any.
pub fn remove_leftover_temporary(path: &Path) -> Result<(), FileError> {
    let temporary = temporary_path(path);
    match fs::remove_file(&temporary) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(context("remove", &temporary)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_with_private_mode_and_no_leftover() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("state");
        write_file_atomically(&path, b"first").expect("first write");
        write_file_atomically(&path, b"second, longer").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"second, longer");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            !temporary_path(&path).exists(),
            "temporary file left behind"
        );
    }

    #[test]
    fn mode_is_applied_to_a_leftover_temporary_too() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("cert.pem");
        fs::write(temporary_path(&path), b"stale").expect("leftover");
        fs::set_permissions(temporary_path(&path), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        write_file_atomically_with_mode(&path, b"pem", 0o644).expect("write");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn failure_names_the_file_and_keeps_the_old_content() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("missing-dir").join("state");
        let error = write_file_atomically(&path, b"x").expect_err("no such directory");
        assert_eq!(error.operation, "create");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }

    #[test]
    fn leftover_temporary_is_removed() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("state");
        fs::write(temporary_path(&path), b"half").expect("leftover");
        remove_leftover_temporary(&path).expect("remove");
        assert!(!temporary_path(&path).exists());
        remove_leftover_temporary(&path).expect("absent is fine");
    }
}
