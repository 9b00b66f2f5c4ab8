//! The file-system operations boot and install use, and crash-injecting doubles.
//!
//! Boot selection, installation and confirmation touch the disk only through
//! [`SlotFileSystem`]. [`StdFileSystem`] is the real one; [`MemoryFileSystem`] models
//! what survives a crash (a killed process keeps everything it wrote; a power loss keeps
//! only fsynced file data and fsynced directory entries) and [`CrashingFileSystem`]
//! stops after a given number of mutating operations, so a test can enumerate every
//! crash point deterministically.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A readable, seekable file.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// The file operations of the slot store. Paths are relative to the store's root.
///
/// Mutating operations are the crash points: each is one step a crash can fall after.
pub trait SlotFileSystem {
    /// Open a file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek + '_>>;
    /// Read a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_read(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
    /// A file's length.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool {
        self.len(path).is_ok()
    }
    /// Create a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Create (or truncate) a file.
    fn create(&self, path: &Path) -> io::Result<()>;
    /// Append bytes to a file.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Make a file's data durable (fsync).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Rename a file, replacing the target.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make a directory's entries durable (fsync of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Remove a file (missing is not an error).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// The real file system, rooted at a directory.
#[derive(Debug, Clone)]
pub struct StdFileSystem {
    root: PathBuf,
}

impl StdFileSystem {
    /// Operations on paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

impl SlotFileSystem for StdFileSystem {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek + '_>> {
        Ok(Box::new(File::open(self.at(path))?))
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(self.at(path))?.len())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(self.at(path))
    }
    fn create(&self, path: &Path) -> io::Result<()> {
        File::create(self.at(path)).map(drop)
    }
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        OpenOptions::new()
            .append(true)
            .open(self.at(path))?
            .write_all(data)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.at(path))?
            .sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.at(from), self.at(to))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(self.at(path))?.sync_all()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(self.at(path)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// What a simulated crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// The process is killed: the kernel keeps everything written (page cache).
    ProcessKill,
    /// Power is lost: only fsynced file data and fsynced directory entries survive.
    PowerLoss,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct MemoryState {
    inodes: Vec<Inode>,
    live: BTreeMap<PathBuf, usize>,
    durable: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
}

/// An in-memory file system that tracks durability (for crash tests).
///
/// Clones share the same state; [`MemoryFileSystem::snapshot`] makes an independent copy.
/// Directories are durable as soon as they are created (a simplification: the store
/// creates them once, before any image is written).
#[derive(Debug, Clone, Default)]
pub struct MemoryFileSystem {
    state: Arc<Mutex<MemoryState>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemoryFileSystem {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A poisoned lock only means another test thread panicked; the data is plain.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An independent copy of the current state.
    pub fn snapshot(&self) -> Self {
        Self {
            state: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// The file system as it is found after a crash of kind `kind`.
    pub fn after_crash(&self, kind: CrashKind) -> Self {
        let mut state = self.lock().clone();
        if kind == CrashKind::PowerLoss {
            state.live = state.durable.clone();
            for inode in &mut state.inodes {
                inode.data = inode.synced.clone();
            }
        }
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The paths of the files that exist now.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().live.keys().cloned().collect()
    }

    fn with_inode<T>(&self, path: &Path, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut state = self.lock();
        let id = *state.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(f(&mut state.inodes[id]))
    }
}

impl SlotFileSystem for MemoryFileSystem {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek + '_>> {
        let data = self.with_inode(path, |inode| inode.data.clone())?;
        Ok(Box::new(Cursor::new(data)))
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        self.with_inode(path, |inode| inode.data.len() as u64)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }
    fn create(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !state.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        state.inodes.push(Inode::default());
        let id = state.inodes.len() - 1;
        state.live.insert(path.to_path_buf(), id);
        Ok(())
    }
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.with_inode(path, |inode| inode.data.extend_from_slice(data))
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.with_inode(path, |inode| inode.synced = inode.data.clone())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.live.remove(from).ok_or_else(|| not_found(from))?;
        state.live.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let in_dir = |entry: &Path| entry.parent() == Some(path);
        let live: Vec<(PathBuf, usize)> = state
            .live
            .iter()
            .filter(|(entry, _)| in_dir(entry))
            .map(|(entry, id)| (entry.clone(), *id))
            .collect();
        state.durable.retain(|entry, _| !in_dir(entry));
        state.durable.extend(live);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.lock().live.remove(path);
        Ok(())
    }
}

/// A file system that crashes after a budget of mutating operations.
///
/// The operation that exhausts the budget fails (an `append` first writes half its bytes,
/// a torn write) and every operation after it fails too, as if the process were dead.
#[derive(Debug)]
pub struct CrashingFileSystem<F> {
    inner: F,
    budget: Mutex<Option<u64>>,
    performed: Mutex<u64>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash")
}

impl<F: SlotFileSystem> CrashingFileSystem<F> {
    /// Crash when `budget` mutating operations have been performed (`None`: never).
    pub fn new(inner: F, budget: Option<u64>) -> Self {
        Self {
            inner,
            budget: Mutex::new(budget),
            performed: Mutex::new(0),
        }
    }

    /// Mutating operations performed so far.
    pub fn operations(&self) -> u64 {
        *self
            .performed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the crash happened.
    pub fn has_crashed(&self) -> bool {
        let budget = *self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        budget.is_some_and(|budget| self.operations() > budget)
    }

    /// Returns `Ok(true)` to perform the operation, `Ok(false)` for the crashing one.
    fn step(&self) -> io::Result<bool> {
        let budget = *self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut performed = self
            .performed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match budget {
            Some(budget) if *performed > budget => Err(crashed()),
            Some(budget) if *performed == budget => {
                *performed += 1;
                Ok(false)
            }
            _ => {
                *performed += 1;
                Ok(true)
            }
        }
    }

    fn alive(&self) -> io::Result<()> {
        if self.has_crashed() {
            Err(crashed())
        } else {
            Ok(())
        }
    }

    fn mutate(&self, op: impl FnOnce(&F) -> io::Result<()>) -> io::Result<()> {
        if self.step()? {
            op(&self.inner)
        } else {
            Err(crashed())
        }
    }
}

impl<F: SlotFileSystem> SlotFileSystem for CrashingFileSystem<F> {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek + '_>> {
        self.alive()?;
        self.inner.open_read(path)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        self.alive()?;
        self.inner.len(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.create_dir_all(path))
    }
    fn create(&self, path: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.create(path))
    }
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if self.step()? {
            self.inner.append(path, data)
        } else {
            // Torn write: half the bytes reach the file, then the process dies.
            self.inner.append(path, &data[..data.len() / 2])?;
            Err(crashed())
        }
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.sync_file(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.rename(from, to))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.sync_dir(path))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.mutate(|fs| fs.remove_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_data_and_entries() {
        let fs = MemoryFileSystem::new();
        fs.create_dir_all(Path::new("d")).expect("dir");
        let a = Path::new("d/a");
        fs.create(a).expect("create");
        fs.append(a, b"hello").expect("append");
        fs.sync_file(a).expect("sync");
        let lost = fs.after_crash(CrashKind::PowerLoss);
        assert!(
            !lost.exists(a),
            "entry not durable before the directory sync"
        );
        fs.sync_dir(Path::new("d")).expect("sync dir");
        fs.append(a, b" world").expect("append");
        let lost = fs.after_crash(CrashKind::PowerLoss);
        assert_eq!(lost.read(a).expect("read"), b"hello");
        let killed = fs.after_crash(CrashKind::ProcessKill);
        assert_eq!(killed.read(a).expect("read"), b"hello world");
        fs.rename(a, Path::new("d/b")).expect("rename");
        let lost = fs.after_crash(CrashKind::PowerLoss);
        assert!(lost.exists(a) && !lost.exists(Path::new("d/b")));
    }

    #[test]
    fn crashing_fs_tears_the_crashing_append_and_stops() {
        let fs = MemoryFileSystem::new();
        let crashing = CrashingFileSystem::new(fs.clone(), Some(2));
        crashing.create_dir_all(Path::new("d")).expect("dir");
        crashing.create(Path::new("d/a")).expect("create");
        assert!(crashing.append(Path::new("d/a"), b"abcd").is_err());
        assert!(crashing.has_crashed());
        assert!(crashing.len(Path::new("d/a")).is_err());
        assert_eq!(fs.read(Path::new("d/a")).expect("read"), b"ab");
    }
}
