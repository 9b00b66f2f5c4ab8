//! The payload archive (`WPA1`): the appliance binary and its default files.
//!
//! ```text
//! magic b"WPA1" | entry count u32 LE | entries, sorted by path, paths unique:
//!   path length u16 LE | path (UTF-8, relative, `/`-separated, no `.`/`..`/empty parts)
//!   mode u32 LE (permission bits, 0o644 or 0o755) | size u64 LE | data
//! ```
//!
//! No timestamps, owners or directory entries: the same inputs give the same bytes.
//! The executable is the entry [`ENTRY_POINT`].

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// First four bytes of a payload archive.
pub const ARCHIVE_MAGIC: [u8; 4] = *b"WPA1";
/// The entry that is executed.
pub const ENTRY_POINT: &str = "bin/warden";
/// Where default files go inside the archive.
pub const DEFAULTS_DIR: &str = "defaults";
/// Most entries an archive may hold.
pub const MAX_ENTRIES: u32 = 4096;

/// A payload archive could not be built or unpacked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An entry path is not a safe relative path.
    #[error("payload entry path {0:?} is not a plain relative path")]
    BadPath(String),
    /// Two entries have the same path.
    #[error("payload has two entries named {0:?}")]
    Duplicate(String),
    /// The archive's bytes do not follow the format.
    #[error("payload archive is malformed: {0}")]
    Malformed(&'static str),
    /// The archive has no executable entry point.
    #[error("payload has no executable {ENTRY_POINT}")]
    NoEntryPoint,
}

/// One file of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadEntry {
    /// Relative path inside the archive.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

fn check_path(path: &str) -> Result<(), PayloadError> {
    let bad = || PayloadError::BadPath(path.to_owned());
    if path.is_empty() || path.len() > 1024 || path.contains('\0') || path.contains('\\') {
        return Err(bad());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad());
        }
    }
    Ok(())
}

/// Encode entries as an archive (sorted by path; modes normalised to 0o644 / 0o755).
pub fn encode_archive(mut entries: Vec<PayloadEntry>) -> Result<Vec<u8>, PayloadError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in entries.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(PayloadError::Duplicate(pair[0].path.clone()));
        }
    }
    if !entries.iter().any(|entry| entry.path == ENTRY_POINT) {
        return Err(PayloadError::NoEntryPoint);
    }
    let count = u32::try_from(entries.len())
        .ok()
        .filter(|count| *count <= MAX_ENTRIES)
        .ok_or(PayloadError::Malformed("too many entries"))?;
    let mut out = Vec::new();
    out.extend_from_slice(&ARCHIVE_MAGIC);
    out.extend_from_slice(&count.to_le_bytes());
    for entry in &entries {
        check_path(&entry.path)?;
        let mode = if entry.mode & 0o111 != 0 || entry.path == ENTRY_POINT {
            0o755u32
        } else {
            0o644
        };
        let path_len = u16::try_from(entry.path.len())
            .map_err(|_| PayloadError::BadPath(entry.path.clone()))?;
        out.extend_from_slice(&path_len.to_le_bytes());
        out.extend_from_slice(entry.path.as_bytes());
        out.extend_from_slice(&mode.to_le_bytes());
        out.extend_from_slice(&(entry.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&entry.data);
    }
    Ok(out)
}

/// The archive for an appliance binary and an optional directory of default files
/// (stored under `defaults/`, walked in sorted order, symlinks refused).
pub fn archive_from_files(binary: &Path, defaults: Option<&Path>) -> Result<Vec<u8>, PayloadError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PayloadError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let mut entries = vec![PayloadEntry {
        path: ENTRY_POINT.to_owned(),
        mode: 0o755,
        data: read(binary)?,
    }];
    if let Some(dir) = defaults {
        let mut stack = vec![dir.to_owned()];
        while let Some(current) = stack.pop() {
            let listing = std::fs::read_dir(&current).map_err(|source| PayloadError::Io {
                path: current.clone(),
                source,
            })?;
            for item in listing {
                let item = item.map_err(|source| PayloadError::Io {
                    path: current.clone(),
                    source,
                })?;
                let path = item.path();
                let meta = std::fs::symlink_metadata(&path).map_err(|source| PayloadError::Io {
                    path: path.clone(),
                    source,
                })?;
                let relative = path
                    .strip_prefix(dir)
                    .map_err(|_| PayloadError::BadPath(path.display().to_string()))?;
                let name: Vec<String> = relative
                    .components()
                    .map(|part| match part {
                        Component::Normal(part) => part
                            .to_str()
                            .map(str::to_owned)
                            .ok_or_else(|| PayloadError::BadPath(path.display().to_string())),
                        _ => Err(PayloadError::BadPath(path.display().to_string())),
                    })
                    .collect::<Result<_, _>>()?;
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    use std::os::unix::fs::PermissionsExt;
                    entries.push(PayloadEntry {
                        path: format!("{DEFAULTS_DIR}/{}", name.join("/")),
                        mode: meta.permissions().mode() & 0o777,
                        data: read(&path)?,
                    });
                } else {
                    return Err(PayloadError::BadPath(path.display().to_string()));
                }
            }
        }
    }
    encode_archive(entries)
}

/// One entry's metadata as listed by [`list_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// Path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
}

fn read_array<const N: usize>(reader: &mut dyn Read) -> Result<[u8; N], PayloadError> {
    let mut bytes = [0u8; N];
    reader
        .read_exact(&mut bytes)
        .map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => PayloadError::Malformed("truncated"),
            _ => PayloadError::Io {
                path: "<payload>".into(),
                source: error,
            },
        })?;
    Ok(bytes)
}

/// Walk an archive from a reader, calling `on_entry` with each entry's metadata and a
/// reader limited to its data (which `on_entry` may consume or not).
pub fn walk_archive(
    reader: &mut dyn Read,
    on_entry: &mut dyn FnMut(&ListedEntry, &mut dyn Read) -> Result<(), PayloadError>,
) -> Result<(), PayloadError> {
    if read_array::<4>(reader)? != ARCHIVE_MAGIC {
        return Err(PayloadError::Malformed("magic is not WPA1"));
    }
    let count = u32::from_le_bytes(read_array(reader)?);
    if count > MAX_ENTRIES {
        return Err(PayloadError::Malformed("too many entries"));
    }
    let mut previous: Option<String> = None;
    let mut has_entry_point = false;
    for _ in 0..count {
        let path_len = usize::from(u16::from_le_bytes(read_array(reader)?));
        let mut path = vec![0u8; path_len];
        reader
            .read_exact(&mut path)
            .map_err(|_| PayloadError::Malformed("truncated path"))?;
        let path =
            String::from_utf8(path).map_err(|_| PayloadError::Malformed("path not UTF-8"))?;
        check_path(&path)?;
        if previous.as_ref().is_some_and(|previous| *previous >= path) {
            return Err(PayloadError::Malformed("entries not sorted and unique"));
        }
        let mode = u32::from_le_bytes(read_array(reader)?);
        if mode != 0o644 && mode != 0o755 {
            return Err(PayloadError::Malformed("mode is not 0644 or 0755"));
        }
        let size = u64::from_le_bytes(read_array(reader)?);
        has_entry_point |= path == ENTRY_POINT && mode == 0o755;
        let entry = ListedEntry { path, mode, size };
        let mut data = reader.take(size);
        on_entry(&entry, &mut data)?;
        io::copy(&mut data, &mut io::sink()).map_err(|source| PayloadError::Io {
            path: "<payload>".into(),
            source,
        })?;
        if data.limit() != 0 {
            return Err(PayloadError::Malformed("truncated entry data"));
        }
        previous = Some(entry.path);
    }
    if !has_entry_point {
        return Err(PayloadError::NoEntryPoint);
    }
    Ok(())
}

/// The entries of an archive held in memory.
pub fn list_archive(bytes: &[u8]) -> Result<Vec<ListedEntry>, PayloadError> {
    let mut entries = Vec::new();
    walk_archive(&mut &bytes[..], &mut |entry, _| {
        entries.push(entry.clone());
        Ok(())
    })?;
    Ok(entries)
}

/// Unpack an archive from `reader` into `dest` (which must exist and be empty).
pub fn extract_archive(reader: &mut dyn Read, dest: &Path) -> Result<(), PayloadError> {
    use std::os::unix::fs::PermissionsExt;
    walk_archive(reader, &mut |entry, data| {
        let target = dest.join(&entry.path);
        let io_error = |source| PayloadError::Io {
            path: target.clone(),
            source,
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        let mut file = std::fs::File::create(&target).map_err(io_error)?;
        io::copy(data, &mut file).map_err(io_error)?;
        file.set_permissions(std::fs::Permissions::from_mode(entry.mode))
            .map_err(io_error)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, data: &[u8]) -> PayloadEntry {
        PayloadEntry {
            path: path.to_owned(),
            mode: 0o600,
            data: data.to_vec(),
        }
    }

    #[test]
    fn archive_is_deterministic_and_round_trips() {
        let a = encode_archive(vec![entry("defaults/b", b"2"), entry(ENTRY_POINT, b"#!")])
            .expect("encode");
        let b = encode_archive(vec![entry(ENTRY_POINT, b"#!"), entry("defaults/b", b"2")])
            .expect("encode");
        assert_eq!(a, b);
        let listed = list_archive(&a).expect("list");
        assert_eq!(listed[0].path, ENTRY_POINT);
        assert_eq!(listed[0].mode, 0o755);
        assert_eq!(listed[1].mode, 0o644);
        let dir = tempfile::tempdir().expect("tempdir");
        extract_archive(&mut &a[..], dir.path()).expect("extract");
        assert_eq!(
            std::fs::read(dir.path().join("defaults/b")).expect("read"),
            b"2"
        );
    }

    #[test]
    fn unsafe_paths_and_duplicates_are_refused() {
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(
                matches!(
                    encode_archive(vec![entry(ENTRY_POINT, b""), entry(bad, b"")]),
                    Err(PayloadError::BadPath(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            encode_archive(vec![entry(ENTRY_POINT, b""), entry(ENTRY_POINT, b"")]),
            Err(PayloadError::Duplicate(_))
        ));
        assert!(matches!(
            encode_archive(vec![]),
            Err(PayloadError::NoEntryPoint)
        ));
        let good = encode_archive(vec![entry(ENTRY_POINT, b"abc")]).expect("encode");
        for cut in 0..good.len() {
            assert!(list_archive(&good[..cut]).is_err());
        }
    }
}
