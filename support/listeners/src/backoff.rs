//! Accept errors back off and are logged once per episode, not once per retry.

use std::io;
use std::time::Duration;

/// The first wait after an accept error.
const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between accept attempts while they fail.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// The accept loop's state between failures: call [`AcceptBackoff::failed`] on an
/// error (and wait what it returns), [`AcceptBackoff::succeeded`] on a connection.
///
/// Running out of descriptors (`EMFILE`) makes `accept` fail at once, every time: a
/// loop without a wait spins a core and a log line per try fills the disk (issue #22:
/// 16 M lines in 35 s). The wait doubles to a second; one warning starts the episode
/// and one line ends it with the count.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    failures: u64,
    wait: Duration,
}

impl AcceptBackoff {
    /// For the listener named `listener` (in the log lines).
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            failures: 0,
            wait: FIRST_WAIT,
        }
    }

    /// An accept failed: logs if it starts an episode; returns how long to wait.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(listener = self.listener, %error, "accept failed; backing off (logged once until it recovers)");
            self.wait = FIRST_WAIT;
        } else {
            self.wait = (self.wait * 2).min(LONGEST_WAIT);
        }
        self.failures += 1;
        self.wait
    }

    /// A connection was accepted: ends an episode of failures (logging its count).
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                listener = self.listener,
                failures = self.failures,
                "accepting again"
            );
            self.failures = 0;
            self.wait = FIRST_WAIT;
        }
    }

    /// Failures in the current episode.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_a_second_and_resets_after_a_success() {
        let mut backoff = AcceptBackoff::new("test");
        let error = io::Error::from_raw_os_error(24);
        let waits: Vec<_> = (0..10).map(|_| backoff.failed(&error)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(waits[9], LONGEST_WAIT);
        assert_eq!(backoff.failures(), 10);
        backoff.succeeded();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.failed(&error), FIRST_WAIT);
    }
}
