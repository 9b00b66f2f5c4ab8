//! Running a boot decision: unpack the verified payload, check it again, spawn it.
//!
//! The image talks back to whoever booted it through its exit status:
//! [`RESTART_EXIT_CODE`] asks for the next boot at once (an update was installed, a
//! trial was given up or rolled back); `0` is a requested stop; anything else is a
//! crash.

use std::io::{self, Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

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
    open_directories(&dest).map_err(io_at(&dest))?;
    Ok(dest.join(ENTRY_POINT))
}

/// Makes every directory of the unpacked payload searchable (0755) whatever the umask
/// (the packaged unit's is 0077): the monitor starts each compartment from the
/// unpacked executable under the compartment's own uid. The payload is the signed
/// image, public by nature.
fn open_directories(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_directories(&entry.path())?;
        }
    }
    Ok(())
}

/// Exit status with which a running image asks to be booted again at once: an update
/// was installed into the other slot, its trial was given up, or its monitor rolled it
/// back. The boot stage (`warden boot`) then selects a slot anew; no crash is counted.
/// (75 is `EX_TEMPFAIL`: "try again".)
pub const RESTART_EXIT_CODE: u8 = 75;

/// Unpack the chosen image and prepare its executable with `args`, its working
/// directory the unpacked payload, and the slot and trial in its environment
/// ([`SLOT_ENV`](crate::monitor::trial::SLOT_ENV),
/// [`TRIAL_ENV`](crate::monitor::trial::TRIAL_ENV)). The caller may add to it and
/// spawns it.
pub fn command(
    decision: &BootDecision,
    state_dir: &Path,
    run_dir: &Path,
    args: &[&str],
) -> Result<Command, LaunchError> {
    use crate::monitor::trial::{MEASUREMENT_ENV, SLOT_ENV, TRIAL_ENV, VERSION_ENV};
    let image_file = state_dir.join(&decision.image_path);
    let executable = unpack(decision, &image_file, run_dir)?;
    let workdir = run_dir.join(decision.slot.name());
    let mut command = Command::new(&executable);
    command
        .args(args)
        .current_dir(&workdir)
        .env(SLOT_ENV, decision.slot.name())
        .env(TRIAL_ENV, if decision.trial { "1" } else { "0" })
        .env(VERSION_ENV, decision.version.to_string())
        .env(MEASUREMENT_ENV, measurement_hex(&decision.measurement));
    Ok(command)
}

/// A measurement as lowercase hex, as the console and `WARDEN_MEASUREMENT` show it.
pub fn measurement_hex(measurement: &[u8]) -> String {
    measurement
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Unpack and spawn the chosen image's executable with `args` (see [`command`]). The
/// monitor watches the child: exit → `report_crash`.
pub fn spawn(
    decision: &BootDecision,
    state_dir: &Path,
    run_dir: &Path,
    args: &[&str],
) -> Result<Child, LaunchError> {
    let mut command = command(decision, state_dir, run_dir, args)?;
    command.spawn().map_err(|source| LaunchError::Io {
        path: state_dir.join(&decision.image_path),
        source,
    })
}

/// Ask `child` to stop (SIGTERM) and wait up to `grace` for it; then kill it (SIGKILL).
/// Returns its exit status.
pub fn stop(child: &mut Child, grace: Duration) -> io::Result<std::process::ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // The child is ours and not reaped yet, so the pid still names it.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait()
}
