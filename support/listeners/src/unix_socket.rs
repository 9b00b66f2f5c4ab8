//! Binding a Unix socket that is never reachable with looser permissions than asked.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

/// Binds a Unix socket at `path` with `mode`, replacing a stale one.
///
/// The socket is bound inside a fresh directory of mode 0700 beside `path`, given
/// `mode` there, then renamed into place: nobody can connect between the bind and the
/// chmod (a chmod after binding in place leaves that window, and the process-wide
/// umask cannot be changed safely once threads run). Needs a tokio runtime.
pub fn bind_unix_socket(path: &Path, mode: u32) -> io::Result<tokio::net::UnixListener> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a socket path names a file"))?;
    let private = parent.join(format!(".bind-{}", std::process::id()));
    match std::fs::remove_dir_all(&private) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join(name);
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_lands_in_place_with_its_mode_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        std::fs::write(&path, b"stale").expect("stale");
        let listener = bind_unix_socket(&path, 0o600).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _client = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let _ = listener.accept().await.expect("accept");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("control.sock")]);
    }
}
