//! Operator login: password hash, sessions, CSRF tokens, rate limits and lockout.
//!
//! The password is set at provisioning and printed on the unit's label; the
//! appliance keeps only its salted Argon2id hash (a PHC string). Sessions are random
//! 256-bit IDs held in memory under their SHA-256 (so a lookup leaks nothing useful
//! through timing), each with its own CSRF token. Failed logins slow their client
//! address down (a doubling backoff) and every check counts against a global rate, so
//! guessing from many addresses stays slow, while the right password still gets in
//! ([`LoginLimiter`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

/// Failed logins from one address that cost no wait (typos).
pub const FREE_FAILURES_PER_CLIENT: u32 = 3;
/// The longest wait the per-address backoff imposes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An address's failures are forgotten after this long without one.
pub const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(3600);
/// Password checks per minute from all addresses together (the global rate).
pub const GLOBAL_CHECKS_PER_MINUTE: u32 = 30;
/// Checks the global rate allows at once.
pub const GLOBAL_BURST: u32 = 30;
/// Addresses that logged in remembered as known good (checked even when the global
/// rate is spent).
pub const MAX_KNOWN_GOOD: usize = 16;
/// How long an address stays known good after its last login.
pub const KNOWN_GOOD_FOR: Duration = Duration::from_secs(24 * 3600);
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
    /// The hash's Argon2 memory cost exceeds what a check may take.
    #[error(
        "{path}: the hash's Argon2 memory cost ({memory_kib} KiB) exceeds the status page's budget of {} KiB (hash the password again with Argon2id's default parameters, as provisioning does)",
        ARGON2_MEMORY_BUDGET_KIB
    )]
    OverBudget {
        /// The file.
        path: String,
        /// The hash's memory cost.
        memory_kib: u32,
    },
    /// The system random generator failed.
    #[error("no randomness for the password salt: {0}")]
    Random(String),
}

/// The most memory one password check may take, KiB: a quarter of the status-page
/// compartment's `memory_mib = 128` (RLIMIT_DATA, `appliance/manifest.toml`).
///
/// The numbers: the hashes provisioning writes ([`hash_password`]) use Argon2id's
/// defaults, m = 19 MiB (19,456 KiB), t = 2, p = 1, about 30 ms a check here. The page
/// makes one check at a time (a lock), in one buffer of m KiB made at the first login
/// and reused by every later one, so the page's memory grows by m once and never by
/// more, however many logins fail (issue #22 item 3: a fresh 19 MiB per check on
/// tokio's blocking threads kept ~19.5 MiB each and the 8th wrong password aborted the
/// page at 128 MiB). The page itself needs about 30 MiB besides.
pub const ARGON2_MEMORY_BUDGET_KIB: u32 = 32 * 1024;

/// The operator password, as a verifier: only the salted hash is held, plus the one
/// buffer Argon2 works in.
#[derive(Debug)]
pub struct PasswordVerifier {
    phc: String,
    params: argon2::Params,
    version: argon2::Version,
    /// Argon2's memory, made at the first check; the lock makes checks one at a time.
    memory: std::sync::Mutex<Vec<argon2::Block>>,
}

impl PasswordVerifier {
    /// Loads the PHC string from `path` (refusing a missing or malformed file: there is
    /// no default password, and a hash whose memory cost exceeds
    /// [`ARGON2_MEMORY_BUDGET_KIB`]).
    pub fn load(path: &Path) -> Result<Self, PasswordError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordError::File {
            path: path.display().to_string(),
            source,
        })?;
        let phc = text.trim().to_owned();
        let malformed = |message: String| PasswordError::Malformed {
            path: path.display().to_string(),
            message,
        };
        let parsed = PasswordHash::new(&phc).map_err(|error| malformed(error.to_string()))?;
        if parsed.algorithm.as_str() != "argon2id" || parsed.hash.is_none() {
            return Err(malformed(format!("algorithm is {}", parsed.algorithm)));
        }
        let params = argon2::Params::try_from(&parsed)
            .map_err(|error| malformed(format!("argon2 parameters: {error}")))?;
        let version = parsed
            .version
            .map_or(Ok(argon2::Version::default()), argon2::Version::try_from)
            .map_err(|error| malformed(format!("argon2 version: {error}")))?;
        if params.m_cost() > ARGON2_MEMORY_BUDGET_KIB {
            return Err(PasswordError::OverBudget {
                path: path.display().to_string(),
                memory_kib: params.m_cost(),
            });
        }
        Ok(Self {
            phc,
            params,
            version,
            memory: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether `password` is the unit's password (Argon2id; the final compare is
    /// constant time). Slow on purpose: call it off the async threads. Checks run one
    /// at a time in the verifier's one buffer.
    pub fn verify(&self, password: &str) -> bool {
        let Ok(hash) = PasswordHash::new(&self.phc) else {
            return false;
        };
        let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
            return false;
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let blocks = self.params.block_count();
        if memory.len() != blocks {
            memory.clear();
            // No abort on a tight limit: a refused login instead.
            if memory.try_reserve_exact(blocks).is_err() {
                tracing::error!(blocks, "no memory for a password check");
                return false;
            }
            memory.resize(blocks, argon2::Block::new());
        }
        let mut output = [0u8; 64];
        let Some(computed) = output.get_mut(..expected.len()) else {
            return false;
        };
        let matches = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            self.version,
            self.params.clone(),
        )
        .hash_password_into_with_memory(password.as_bytes(), salt, computed, memory.as_mut_slice())
        .is_ok()
            && bool::from(computed.ct_eq(expected.as_bytes()));
        // The buffer is kept for the next check; what a check leaves in it (and the
        // hash it computed) is derived from the password tried, so it is wiped now.
        memory.fill(argon2::Block::new());
        output.zeroize();
        matches
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
    /// No password from this address is checked before this.
    next_try: Instant,
    last: Instant,
}

/// The per-address backoff: the first [`FREE_FAILURES_PER_CLIENT`] failures cost
/// nothing, then each one doubles the wait before the next try from 1 s up to
/// [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES_PER_CLIENT) {
        None => Duration::ZERO,
        Some(over) => Duration::from_secs(1u64 << over.min(16)).min(MAX_BACKOFF),
    }
}

/// Failed-login bookkeeping: a backoff per client address and a global rate of
/// password checks that slows guessing from many addresses without locking the right
/// password out.
///
/// The global rate is a bucket of [`GLOBAL_BURST`] checks refilled at
/// [`GLOBAL_CHECKS_PER_MINUTE`]: 20 failures a minute from any number of addresses
/// leave room for the operator. A flood beyond it makes fresh addresses wait seconds
/// (the time to the next check, never a lockout), and an address that logged in
/// before (the last [`MAX_KNOWN_GOOD`] within [`KNOWN_GOOD_FOR`]) is checked even then,
/// under its own backoff. Time is passed in, so the limiter is tested without clocks.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    clients: HashMap<IpAddr, ClientFailures>,
    known_good: HashMap<IpAddr, Instant>,
    /// Checks available (fractional: refilled continuously), and when last refilled.
    bucket: Option<(f64, Instant)>,
}

impl LoginLimiter {
    /// Whether `client` may try a password at `now`; an open gate uses up a check of
    /// the global rate.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> LoginGate {
        if let Some(failures) = self.clients.get(&client) {
            if now < failures.next_try {
                return LoginGate::Locked(failures.next_try - now);
            }
            if now.saturating_duration_since(failures.last) >= FORGET_FAILURES_AFTER {
                self.clients.remove(&client);
            }
        }
        let per_second = f64::from(GLOBAL_CHECKS_PER_MINUTE) / 60.0;
        let (tokens, since) = self.bucket.get_or_insert((f64::from(GLOBAL_BURST), now));
        *tokens = (*tokens + now.saturating_duration_since(*since).as_secs_f64() * per_second)
            .min(f64::from(GLOBAL_BURST));
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return LoginGate::Open;
        }
        let known_good = self
            .known_good
            .get(&client)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_GOOD_FOR);
        if known_good {
            return LoginGate::Open;
        }
        LoginGate::Locked(Duration::from_secs_f64((1.0 - *tokens) / per_second))
    }

    /// Counts a wrong password from `client`; returns how long it must wait before its
    /// next try (zero while its failures are free).
    pub fn failed(&mut self, client: IpAddr, now: Instant) -> Duration {
        if self.clients.len() >= MAX_TRACKED_CLIENTS && !self.clients.contains_key(&client) {
            // Forget the address that failed longest ago and may try already; the
            // global rate still holds.
            let oldest = self
                .clients
                .iter()
                .filter(|(_, c)| c.next_try <= now)
                .min_by_key(|(_, c)| c.last)
                .map(|(address, _)| *address);
            if let Some(address) = oldest {
                self.clients.remove(&address);
            }
        }
        let entry = self.clients.entry(client).or_insert(ClientFailures {
            count: 0,
            next_try: now,
            last: now,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let wait = backoff(entry.count);
        entry.next_try = now + wait;
        wait
    }

    /// A right password from `client`: its failures are forgotten and it is known good.
    pub fn succeeded(&mut self, client: IpAddr, now: Instant) {
        self.clients.remove(&client);
        if self.known_good.len() >= MAX_KNOWN_GOOD && !self.known_good.contains_key(&client) {
            let oldest = self
                .known_good
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(address, _)| *address);
            if let Some(address) = oldest {
                self.known_good.remove(&address);
            }
        }
        self.known_good.insert(client, now);
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
    fn wrong_passwords_reuse_one_buffer_and_a_costly_hash_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.phc");
        write_password_hash(&path, &hash_password("right").expect("hash")).expect("write");
        let verifier = PasswordVerifier::load(&path).expect("load");
        for _ in 0..20 {
            assert!(!verifier.verify("wrong"));
        }
        let memory = verifier.memory.lock().expect("lock");
        assert_eq!(memory.len(), verifier.params.block_count());
        assert_eq!(memory.capacity(), memory.len(), "one buffer, never grown");
        drop(memory);
        assert!(verifier.verify("right"));
        // Nothing derived from the right password stays in the kept buffer.
        let memory = verifier.memory.lock().expect("lock");
        let zero = argon2::Block::new();
        assert!(
            memory.iter().all(|block| block.as_ref() == zero.as_ref()),
            "the buffer is wiped after a check"
        );

        // 64 MiB of Argon2 memory: over the page's budget, refused naming the file.
        let costly = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(64 * 1024, 1, 1, None).expect("params"),
        )
        .hash_password(b"right", &SaltString::encode_b64(&[7u8; 16]).expect("salt"))
        .expect("hash")
        .to_string();
        let costly_path = dir.path().join("costly.phc");
        std::fs::write(&costly_path, costly).expect("write");
        let error = PasswordVerifier::load(&costly_path).expect_err("over budget");
        let message = error.to_string();
        assert!(
            message.contains("costly.phc") && message.contains("65536 KiB"),
            "{message}"
        );
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
    fn failures_from_one_address_back_off_doubling_and_a_success_resets() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        let client: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert_eq!(limiter.check(client, now), LoginGate::Open);
            let wait = limiter.failed(client, now);
            waits.push(wait.as_secs());
            assert_eq!(
                limiter.check(client, now) == LoginGate::Open,
                wait.is_zero(),
                "refused exactly while waiting"
            );
            now += wait;
        }
        assert_eq!(waits, [0, 0, 1, 2, 4, 8]);
        assert_eq!(limiter.check(other, now), LoginGate::Open);
        for _ in 0..20 {
            limiter.failed(client, now);
        }
        assert_eq!(limiter.check(client, now), LoginGate::Locked(MAX_BACKOFF));
        now += MAX_BACKOFF;
        assert_eq!(limiter.check(client, now), LoginGate::Open);
        limiter.succeeded(client, now);
        assert_eq!(limiter.failed(client, now), Duration::ZERO);
    }

    #[test]
    fn twenty_failures_a_minute_from_many_addresses_leave_the_right_password_in() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        // Two minutes of 20 failures a minute, each from its own address.
        for i in 0..40u32 {
            let now = start + Duration::from_secs(u64::from(i) * 3);
            let client: IpAddr = [10, 0, 1, u8::try_from(i).expect("small")].into();
            assert_eq!(limiter.check(client, now), LoginGate::Open, "attempt {i}");
            limiter.failed(client, now);
        }
        let operator: IpAddr = [10, 0, 2, 1].into();
        let now = start + Duration::from_secs(120);
        assert_eq!(limiter.check(operator, now), LoginGate::Open);
        limiter.succeeded(operator, now);
    }

    #[test]
    fn a_flood_beyond_the_global_rate_delays_newcomers_but_not_a_known_operator() {
        let mut limiter = LoginLimiter::default();
        let start = Instant::now();
        let operator: IpAddr = [10, 0, 2, 1].into();
        assert_eq!(limiter.check(operator, start), LoginGate::Open);
        limiter.succeeded(operator, start);
        let mut refused = 0;
        for i in 0..200u32 {
            let client: IpAddr = [
                10,
                1,
                u8::try_from(i / 200).expect("small"),
                u8::try_from(i % 200).expect("small"),
            ]
            .into();
            match limiter.check(client, start) {
                LoginGate::Open => {
                    limiter.failed(client, start);
                }
                LoginGate::Locked(wait) => {
                    assert!(
                        wait <= Duration::from_secs(2),
                        "a short wait, not a lockout: {wait:?}"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 200 - (GLOBAL_BURST - 1));
        let fresh: IpAddr = [10, 0, 3, 1].into();
        assert!(matches!(limiter.check(fresh, start), LoginGate::Locked(_)));
        assert_eq!(
            limiter.check(operator, start),
            LoginGate::Open,
            "known good"
        );
        assert_eq!(
            limiter.check(fresh, start + Duration::from_secs(2)),
            LoginGate::Open
        );
    }

    #[test]
    fn the_failures_remembered_are_bounded() {
        let mut limiter = LoginLimiter::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 100) {
            let client: IpAddr = std::net::Ipv4Addr::from(0x0a00_0000 + i).into();
            limiter.failed(client, now);
        }
        assert!(limiter.clients.len() <= MAX_TRACKED_CLIENTS);
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
