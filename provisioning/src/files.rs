//! File operations the station uses: atomic replace with a mode, errors naming the path.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A file operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} {path}: {source}")]
pub struct FileError {
    /// What was being done.
    pub operation: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn at(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        operation,
        path,
        source,
    }
}

/// Create a directory and its parents.
pub fn create_dir(path: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(path).map_err(at("create directory", path))
}

/// Read a UTF-8 file.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(at("read", path))
}

/// Read a file.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(at("read", path))
}

/// Write `bytes` to `path` with `mode`: temp file, fsync, rename, fsync the directory.
/// A crash leaves the old file or the new one, never a partial one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    create_dir(parent)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(at("create", &temp))?;
    file.write_all(bytes).map_err(at("write", &temp))?;
    file.sync_all().map_err(at("sync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(at("rename into place", path))?;
    if let Ok(dir) = std::fs::File::open(parent) {
        dir.sync_all().map_err(at("sync directory", parent))?;
    }
    Ok(())
}
