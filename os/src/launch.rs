//! Running a boot decision: unpack the verified payload, check it again, spawn it.

use std::io::{self, Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use sha2::{Digest, Sha256};
use warden_image::HEADER_LEN;

use crate::boot::BootDecision;
use crate::payload::{ENTRY_POINT, PayloadError, extract_archive};

/// Unpacking or starting the image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The payload does not unpack.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The image file changed after boot verified it.
    #[error("image {0} changed after it was verified; not running it")]
    ChangedAfterVerification(PathBuf),
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

/// Unpack the payload of the image `decision` chose (file `image_file`) into
/// `run_dir/<slot>`, hashing it as it streams: if it is not the payload boot verified,
/// the unpacked files are removed and nothing runs. Returns the executable's path.
pub fn unpack(
    decision: &BootDecision,
    image_file: &Path,
    run_dir: &Path,
) -> Result<PathBuf, LaunchError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source| LaunchError::Io { path, source }
    };
    let dest = run_dir.join(decision.slot.name());
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io_at(&dest))?;
    }
    std::fs::create_dir_all(&dest).map_err(io_at(&dest))?;
    let mut file = std::fs::File::open(image_file).map_err(io_at(image_file))?;
    io::Seek::seek(&mut file, SeekFrom::Start(HEADER_LEN as u64)).map_err(io_at(image_file))?;
    let mut reader = HashingReader {
        inner: file.take(decision.payload_len),
        hasher: Sha256::new(),
        count: 0,
    };
    let result = extract_archive(&mut reader, &dest);
    // Hash whatever the archive walk left unread, so the digest covers the whole payload.
    io::copy(&mut reader, &mut io::sink()).map_err(io_at(image_file))?;
    let digest: [u8; 32] = reader.hasher.finalize().into();
    if digest != decision.payload_sha256 || reader.count != decision.payload_len {
        let _ = std::fs::remove_dir_all(&dest);
        return Err(LaunchError::ChangedAfterVerification(image_file.to_owned()));
    }
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&dest);
        return Err(error.into());
    }
    Ok(dest.join(ENTRY_POINT))
}

/// Unpack and spawn the chosen image's executable with `args`, its working directory
/// the unpacked payload. The monitor watches the child: exit → `report_crash`.
pub fn spawn(
    decision: &BootDecision,
    state_dir: &Path,
    run_dir: &Path,
    args: &[&str],
) -> Result<Child, LaunchError> {
    let image_file = state_dir.join(&decision.image_path);
    let executable = unpack(decision, &image_file, run_dir)?;
    let workdir = run_dir.join(decision.slot.name());
    Command::new(&executable)
        .args(args)
        .current_dir(&workdir)
        .env("WARDEN_SLOT", decision.slot.name())
        .env("WARDEN_TRIAL", if decision.trial { "1" } else { "0" })
        .spawn()
        .map_err(|source| LaunchError::Io {
            path: executable,
            source,
        })
}
