//! A sub-millisecond async timer for RTU line gaps.
//!
//! tokio's timer wheel counts whole milliseconds and its reactor sleeps in whole
//! milliseconds, so a `sleep_until` can end up to ~2 ms after its deadline. A
//! 3.5-character gap above 19,200 baud is 1.75 ms: waiting for it with tokio's timer
//! cost 5 % of a 115,200-baud line (`bridges-bench`: 94.7 % of the line model, 98 %
//! with this timer). A `timerfd` has nanosecond resolution and wakes the reactor
//! through epoll when it fires; the last [`FINAL_SPIN`] is spent yielding to the
//! runtime, which covers the wake-up's own latency.

use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// How long before the deadline the timer fires; the rest is spent yielding.
pub const FINAL_SPIN: Duration = Duration::from_micros(100);

/// Slack given to tokio's own timer when no `timerfd` could be made.
const TOKIO_TIMER_SLACK: Duration = Duration::from_micros(2_200);

/// A `timerfd` as tokio's reactor wants it (`AsRawFd`); it owns the descriptor.
struct OwnedTimerFd(TimerFd);

impl std::os::fd::AsRawFd for OwnedTimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// One timer, reused for every wait of one line.
pub struct PreciseTimer {
    fd: Option<AsyncFd<OwnedTimerFd>>,
}

impl std::fmt::Debug for PreciseTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreciseTimer")
            .field("timerfd", &self.fd.is_some())
            .finish()
    }
}

impl PreciseTimer {
    /// A timer on `CLOCK_MONOTONIC` (the clock of [`Instant`]). Must be called inside
    /// a tokio runtime. Without a `timerfd` (a sandbox that forbids it) it falls back
    /// to tokio's timer plus a longer spin, and says so in the log.
    pub fn new() -> Self {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)
        // `AsyncFd::new` is deprecated for types whose `as_raw_fd` might name a
        // descriptor they do not own; `OwnedTimerFd` owns its one descriptor for its
        // whole life (the crate forbids `unsafe`, which `AsyncFd::register` is).
        .and_then(|fd| {
            #[allow(deprecated)]
            AsyncFd::new(OwnedTimerFd(fd))
        });
        match fd {
            Ok(fd) => Self { fd: Some(fd) },
            Err(error) => {
                tracing::warn!(%error, "no timerfd: line gaps use tokio's millisecond timer and a longer spin");
                Self { fd: None }
            }
        }
    }

    /// Waits until `deadline`, returning within a few tens of microseconds after it.
    pub async fn sleep_until(&self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        match &self.fd {
            Some(fd) if deadline - now > FINAL_SPIN => {
                if let Err(error) = wait_on_timerfd(fd, deadline - now - FINAL_SPIN).await {
                    tracing::debug!(%error, "timerfd wait failed; spinning instead");
                }
            }
            None if deadline - now > TOKIO_TIMER_SLACK => {
                tokio::time::sleep_until((deadline - TOKIO_TIMER_SLACK).into()).await;
            }
            _ => {}
        }
        while Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }
}

impl Default for PreciseTimer {
    fn default() -> Self {
        Self::new()
    }
}

/// Arms `fd` to fire once after `after` and waits until it has.
async fn wait_on_timerfd(fd: &AsyncFd<OwnedTimerFd>, after: Duration) -> std::io::Result<()> {
    fd.get_ref()
        .0
        .set(
            Expiration::OneShot(TimeSpec::from_duration(after)),
            TimerSetTimeFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
    loop {
        let mut ready = fd.readable().await?;
        // Reading the expiration count disarms readiness; EAGAIN: not fired yet.
        match ready.try_io(|inner| inner.get_ref().0.wait().map_err(std::io::Error::from)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waits_at_least_until_the_deadline_and_reuses_its_fd() {
        let timer = PreciseTimer::new();
        assert!(timer.fd.is_some(), "timerfd is available on Linux");
        for micros in [0, 50, 700, 1_750, 3_000] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            timer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline, "returned before {micros} µs");
        }
        // A deadline in the past returns at once (and leaves the timer usable).
        timer.sleep_until(Instant::now()).await;
        let deadline = Instant::now() + Duration::from_millis(2);
        timer.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }
}
