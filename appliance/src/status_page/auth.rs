//! Operator login: password hash, sessions, CSRF tokens, rate limits and lockout.
//!
//! The password is set at provisioning and printed on the unit's label; the
//! appliance keeps only its salted Argon2id hash (a PHC string). Sessions are random
//! 256-bit IDs held in memory under their SHA-256 (so a lookup leaks nothing useful
//! through timing), each with its own CSRF token. Failed logins are counted per
//! client address (lockout) and across all clients (a global throttle), so a
//! password cannot be guessed faster than a few tries per minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Failed logins from one address before it is locked out.
pub const MAX_FAILURES_PER_CLIENT: u32 = 5;
/// How long a locked-out address waits.
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// Failed logins from all addresses together per [`GLOBAL_WINDOW`] before every login
/// is refused until the window ends (guessing from many addresses).
pub const MAX_FAILURES_GLOBAL: u32 = 20;
/// The window of the global throttle.
pub const GLOBAL_WINDOW: Duration = Duration::from_secs(60);
/// Sessions kept at once; the least recently used one is dropped beyond this.
pub const MAX_SESSIONS: usize = 16;
/// Addresses whose failures are remembered at once (bounds memory under a flood).
const MAX_TRACKED_CLIENTS: usize = 1024;

/// Why the password hash could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The hash file could not be read or written.
    #[error("cannot access the status page password hash {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold an Argon2 PHC string.
    #[error("{path} does not hold an Argon2id PHC string ($argon2id$…): {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The system random generator failed.
    #[error("no randomness for the password salt: {0}")]
    Random(String),
}

/// The operator password, as a verifier: only the salted hash is held.
#[derive(Debug, Clone)]
pub struct PasswordVerifier {
    phc: String,
}

impl PasswordVerifier {
    /// Loads the PHC string from `path` (refusing a missing or malformed file: there is
    /// no default password).
    pub fn load(path: &Path) -> Result<Self, PasswordError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordError::File {
            path: path.display().to_string(),
            source,
        })?;
        let phc = text.trim().to_owned();
        let parsed = PasswordHash::new(&phc).map_err(|error| PasswordError::Malformed {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
        if parsed.algorithm.as_str() != "argon2id" || parsed.hash.is_none() {
            return Err(PasswordError::Malformed {
                path: path.display().to_string(),
                message: format!("algorithm is {}", parsed.algorithm),
            });
        }
        Ok(Self { phc })
    }

    /// Whether `password` is the unit's password (Argon2id; the final compare is
    /// constant time). Slow on purpose: call it off the async threads.
    pub fn verify(&self, password: &str) -> bool {
        PasswordHash::new(&self.phc).is_ok_and(|hash| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    }
}

/// Hashes `password` with a fresh random salt: the PHC string provisioning writes.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| PasswordError::Random(error.to_string()))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|error| PasswordError::Random(error.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Malformed {
            path: "(new hash)".into(),
            message: error.to_string(),
        })
}

/// Writes `phc` to `path` with mode 0600, creating its directory.
pub fn write_password_hash(path: &Path, phc: &str) -> Result<(), PasswordError> {
    let file_error = |source| PasswordError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(file_error)?;
    }
    // Readable by its owner only (0600), and never half written.
    warden_files::write_file_atomically(path, format!("{phc}\n").as_bytes())
        .map_err(|error| file_error(std::io::Error::other(error)))
}

/// A random password for a label: 16 characters from an alphabet without look-alikes
/// (about 80 bits).
pub fn generate_password() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut password = String::with_capacity(19);
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).map_err(|error| PasswordError::Random(error.to_string()))?;
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    for byte in bytes.iter().filter(|&&b| usize::from(b) < limit) {
        if password.len() == 19 {
            break;
        }
        if password.len() % 5 == 4 {
            password.push('-');
        }
        password.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
    }
    if password.len() < 19 {
        return Err(PasswordError::Random("not enough random bytes".into()));
    }
    Ok(password)
}

/// A random 256-bit value, hex-encoded.
pub fn random_token() -> Result<String, PasswordError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| PasswordError::Random(error.to_string()))?;
    Ok(warden_link::topics::to_hex(&bytes))
}

/// Constant-time equality of two tokens (length is not secret).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Debug)]
struct Session {
    csrf_token: String,
    last_seen: Instant,
}

/// The logged-in sessions.
#[derive(Debug)]
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
    idle: Duration,
}

impl Sessions {
    /// No sessions; each ends after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            by_hash: HashMap::new(),
            idle,
        }
    }

    /// The idle timeout in seconds (the cookie's lifetime).
    pub fn idle_secs(&self) -> u64 {
        self.idle.as_secs()
    }

    /// Starts a session: returns `(session_id, csrf_token)`.
    pub fn create(&mut self, now: Instant) -> Result<(String, String), PasswordError> {
        self.expire(now);
        while self.by_hash.len() >= MAX_SESSIONS {
            let oldest = self
                .by_hash
                .iter()
                .min_by_key(|(_, session)| session.last_seen)
                .map(|(key, _)| *key);
            match oldest {
                Some(key) => self.by_hash.remove(&key),
                None => break,
            };
        }
        let id = random_token()?;
        let csrf_token = random_token()?;
        self.by_hash.insert(
            session_key(&id),
            Session {
                csrf_token: csrf_token.clone(),
                last_seen: now,
            },
        );
        Ok((id, csrf_token))
    }

    /// The CSRF token of a live session, refreshing its idle timer.
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<String> {
        self.expire(now);
        let session = self.by_hash.get_mut(&session_key(id))?;
        session.last_seen = now;
        Some(session.csrf_token.clone())
    }

    /// Ends a session.
    pub fn remove(&mut self, id: &str) {
        self.by_hash.remove(&session_key(id));
    }

    fn expire(&mut self, now: Instant) {
        let idle = self.idle;
        self.by_hash
            .retain(|_, session| now.saturating_duration_since(session.last_seen) < idle);
    }
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Whether a login may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Go ahead and check the password.
    Open,
    /// Refused without checking; retry after this long.
    Locked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct ClientFailures {
    count: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Failed-login bookkeeping: lockout per client address and a global throttle.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    clients: HashMap<IpAddr, ClientFailures>,
    global_window_start: Option<Instant>,
    global_failures: u32,
}

impl LoginLimiter {
    /// Whether `client` may try a password at `now`.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> LoginGate {
        if let Some(start) = self.global_window_start {
            let end = start + GLOBAL_WINDOW;
            if now >= end {
                self.global_window_start = None;
                self.global_failures = 0;
            } else if self.global_failures >= MAX_FAILURES_GLOBAL {
                return LoginGate::Locked(end - now);
            }
        }
        match self.clients.get(&client).and_then(|c| c.locked_until) {
            Some(until) if now < until => LoginGate::Locked(until - now),
            Some(_) => {
                self.clients.remove(&client);
                LoginGate::Open
            }
            None => LoginGate::Open,
        }
    }

    /// Counts a wrong password from `client`.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        let start = *self.global_window_start.get_or_insert(now);
        if now >= start + GLOBAL_WINDOW {
            self.global_window_start = Some(now);
            self.global_failures = 0;
        }
        self.global_failures = self.global_failures.saturating_add(1);
        if self.clients.len() >= MAX_TRACKED_CLIENTS && !self.clients.contains_key(&client) {
            // Forget the address that failed longest ago; the global throttle still holds.
            let oldest = self
                .clients
                .iter()
                .filter(|(_, c)| c.locked_until.is_none_or(|until| until <= now))
                .min_by_key(|(_, c)| c.last)
                .map(|(address, _)| *address);
            if let Some(address) = oldest {
                self.clients.remove(&address);
            }
        }
        let entry = self.clients.entry(client).or_insert(ClientFailures {
            count: 0,
            locked_until: None,
            last: now,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if entry.count >= MAX_FAILURES_PER_CLIENT {
            entry.locked_until = Some(now + LOCKOUT);
        }
    }

    /// A right password from `client`: its failures are forgotten.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.clients.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_others_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.phc");
        let password = generate_password().expect("random");
        assert_eq!(password.len(), 19);
        write_password_hash(&path, &hash_password(&password).expect("hash")).expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let verifier = PasswordVerifier::load(&path).expect("load");
        assert!(verifier.verify(&password));
        assert!(!verifier.verify("password"));
        assert!(!verifier.verify(""));
    }

    #[test]
    fn no_hash_file_means_no_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.phc");
        assert!(PasswordVerifier::load(&missing).is_err());
        let plain = dir.path().join("plain.phc");
        std::fs::write(&plain, "hunter2\n").expect("write");
        let error = PasswordVerifier::load(&plain).expect_err("plaintext is not a hash");
        assert!(error.to_string().contains("PHC"), "{error}");
    }

    #[test]
    fn five_failures_lock_one_client_out_for_five_minutes() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        let client: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        for _ in 0..MAX_FAILURES_PER_CLIENT {
            assert_eq!(limiter.check(client, start), LoginGate::Open);
            limiter.failed(client, start);
        }
        assert!(matches!(limiter.check(client, start), LoginGate::Locked(_)));
        assert_eq!(limiter.check(other, start), LoginGate::Open);
        let later = start + LOCKOUT;
        assert_eq!(limiter.check(client, later), LoginGate::Open);
    }

    #[test]
    fn many_clients_failing_trip_the_global_throttle() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        for i in 0..MAX_FAILURES_GLOBAL {
            let client: IpAddr = [10, 0, 1, u8::try_from(i).expect("small")].into();
            limiter.failed(client, start);
        }
        let fresh: IpAddr = [10, 0, 2, 1].into();
        assert!(matches!(limiter.check(fresh, start), LoginGate::Locked(_)));
        assert_eq!(limiter.check(fresh, start + GLOBAL_WINDOW), LoginGate::Open);
    }

    #[test]
    fn sessions_expire_when_idle_and_carry_their_csrf_token() {
        let mut sessions = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let (id, csrf) = sessions.create(now).expect("random");
        assert_eq!(id.len(), 64);
        assert_eq!(
            sessions.touch(&id, now + Duration::from_secs(59)),
            Some(csrf)
        );
        assert_eq!(sessions.touch(&id, now + Duration::from_secs(200)), None);
        assert!(
            tokens_equal("abc", "abc") && !tokens_equal("abc", "abd") && !tokens_equal("a", "ab")
        );
    }
}
