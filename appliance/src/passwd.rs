//! `warden passwd`: writes the status page's Argon2id password hash file.
//!
//! The page refuses to start without `[status_page] password_file`; provisioning
//! writes it, and this command writes it for a unit set up by hand (or to change the
//! password). The hash is made exactly as provisioning makes it
//! ([`crate::status_page::auth::hash_password`]) and checked with the page's own
//! loader before it is written, so a file this command writes is one the page accepts
//! (within its Argon2 memory budget). The file is written atomically, mode 0600.

use std::io::{BufRead, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use crate::status_page::auth::{PasswordError, PasswordVerifier, hash_password};

/// Why the password file was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswdError {
    /// The file exists and `--force` was not given.
    #[error("{0} exists; pass --force to replace the status page password")]
    Exists(PathBuf),
    /// No password was given (empty line or end of input).
    #[error("no password given (an empty password is refused)")]
    Empty,
    /// The two passwords typed at the prompt differ.
    #[error("the passwords do not match; nothing was written")]
    Mismatch,
    /// Reading the password failed.
    #[error("cannot read the password: {0}")]
    Read(#[from] std::io::Error),
    /// Hashing, checking or writing failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
}

/// Hashes `password` and writes it to `path` (refusing to replace a file unless
/// `force`), after checking the page would accept the hash.
pub fn set_password(path: &Path, password: &str, force: bool) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::Empty);
    }
    if !force && path.exists() {
        return Err(PasswdError::Exists(path.to_path_buf()));
    }
    let phc = hash_password(password)?;
    // The page's own loader judges the new hash (format, algorithm, memory budget)
    // before anything is replaced: staged beside the target and checked there.
    let staged = path.with_extension("phc.check");
    crate::status_page::auth::write_password_hash(&staged, &phc)?;
    let checked = PasswordVerifier::load(&staged).map(|verifier| verifier.verify(password));
    let _ = std::fs::remove_file(&staged);
    match checked {
        Ok(true) => {}
        Ok(false) => {
            return Err(PasswdError::Password(PasswordError::Malformed {
                path: path.display().to_string(),
                message: "the new hash does not verify its password".into(),
            }));
        }
        Err(error) => return Err(error.into()),
    }
    // Atomically (temporary file, fsync, rename, fsync of the directory), mode 0600.
    crate::status_page::auth::write_password_hash(path, &phc)?;
    Ok(())
}

/// Reads the new password: on a terminal, prompted twice without echo; otherwise the
/// first line of standard input (a trailing newline is not part of it).
pub fn read_password() -> Result<String, PasswdError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_without_echo("New status page password: ")?;
        let second = prompt_without_echo("Again: ")?;
        if first != second {
            return Err(PasswdError::Mismatch);
        }
        return Ok(first);
    }
    first_line(stdin.lock())
}

/// The first line of `input`, without its line ending.
pub fn first_line(mut input: impl BufRead) -> Result<String, PasswdError> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(PasswdError::Empty);
    }
    Ok(password)
}

/// Prompts on stderr and reads a line from the terminal with echo off (restored
/// afterwards, also when reading fails).
fn prompt_without_echo(prompt: &str) -> Result<String, PasswdError> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let saved = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(std::io::Error::from)?;
    let read = first_line(stdin.lock());
    let restored = tcsetattr(&stdin, OptionalActions::Now, &saved).map_err(std::io::Error::from);
    let password = read?;
    restored?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_written_hash_is_one_the_page_accepts_mode_0600_and_not_replaced_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password.phc");
        set_password(&path, "correct horse", false).expect("written");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let verifier = PasswordVerifier::load(&path).expect("the page loads it");
        assert!(verifier.verify("correct horse"));
        assert!(!verifier.verify("wrong"));
        let refused = set_password(&path, "another", false).expect_err("exists");
        assert!(matches!(refused, PasswdError::Exists(_)), "{refused}");
        assert!(
            PasswordVerifier::load(&path)
                .expect("kept")
                .verify("correct horse")
        );
        set_password(&path, "another", true).expect("forced");
        assert!(
            PasswordVerifier::load(&path)
                .expect("new")
                .verify("another")
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "nothing staged is left behind");
        assert!(matches!(
            set_password(&path, "", true),
            Err(PasswdError::Empty)
        ));
    }

    #[test]
    fn a_password_from_a_pipe_is_its_first_line() {
        assert_eq!(
            first_line(&b"s3cret pass\r\nignored\n"[..]).expect("line"),
            "s3cret pass"
        );
        assert!(matches!(first_line(&b"\n"[..]), Err(PasswdError::Empty)));
        assert!(matches!(first_line(&b""[..]), Err(PasswdError::Empty)));
    }
}
