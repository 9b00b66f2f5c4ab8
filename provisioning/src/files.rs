//! File operations the station uses: atomic replace with a mode, errors naming the path.

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

/// Write `bytes` to `path` with `mode`, creating its directory: a crash leaves the old
/// file or the new one, never a partial one (`warden_files::write_file_atomically_with_mode`).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    create_dir(parent)?;
    warden_files::write_file_atomically_with_mode(path, bytes, mode).map_err(|error| FileError {
        operation: error.operation,
        path: error.path,
        source: error.source,
    })
}
