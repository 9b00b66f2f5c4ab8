//! Named long-running tasks: restarted with backoff, or ending the process non-zero.
//!
//! Every task the appliance runs until shutdown is spawned here under a name. A task
//! that ends (returns or panics) before shutdown has failed:
//! - a task started with [`Supervisor::spawn_restartable`] keeps no state a restart
//!   would lose (it re-reads what it needs from disk), so it is started again after a
//!   backoff (1 s doubling to 30 s); its restarts and last cause are kept in the
//!   [`TaskHealthTable`] for `/metrics` and the status; if it fails
//!   [`GIVE_UP_AFTER`] times in a row, each within [`STABLE_AFTER`] of starting, it
//!   cannot run and fails the process;
//! - a task started with [`Supervisor::spawn`] (or a group with
//!   [`Supervisor::adopt`]) holds something a restart would lose (a channel's
//!   receiving end, a bound listener, the link agent's session): its end fails the
//!   process.
//!
//! A failed process logs the cause once and exits non-zero, so whatever started it
//! (systemd, the security monitor for a compartment) starts it again from scratch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// The first wait before a restartable task is started again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a restartable task is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy: the backoff and the count of quick
/// failures start over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// A restartable task that failed this many times in a row, each run shorter than
/// [`STABLE_AFTER`], cannot run: the process fails.
pub const GIVE_UP_AFTER: u32 = 8;

/// What a task's failures have been, for `/metrics` and the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskHealth {
    /// Times the task was started again after it failed.
    pub restarts: u64,
    /// Why it last failed (`null`: never).
    pub last_failure: Option<String>,
}

/// Every supervised task's health by name (restartable tasks appear once started).
pub type TaskHealthTable = Arc<Mutex<BTreeMap<String, TaskHealth>>>;

/// A task that ended before shutdown and cannot be restarted: the process must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task `{task}` {cause}")]
pub struct TaskFailure {
    /// The task's name.
    pub task: String,
    /// What happened (`returned before shutdown`, `failed: …`, `panicked: …`).
    pub cause: String,
}

/// The appliance's tasks, each under its name.
pub struct Supervisor {
    tasks: JoinSet<Option<TaskFailure>>,
    shutdown: CancellationToken,
    health: TaskHealthTable,
    first_failure: Option<TaskFailure>,
    /// Failures reported before their task has finished stopping (a group whose
    /// other members still run until shutdown).
    early_failures: (
        mpsc::UnboundedSender<TaskFailure>,
        mpsc::UnboundedReceiver<TaskFailure>,
    ),
}

impl Supervisor {
    /// Tasks that stop when `shutdown` is cancelled; ending before that is a failure.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown,
            health: Arc::default(),
            first_failure: None,
            early_failures: mpsc::unbounded_channel(),
        }
    }

    /// The health of every task (shared: the status page and `/metrics` read it).
    pub fn health(&self) -> TaskHealthTable {
        Arc::clone(&self.health)
    }

    /// Runs `task`, which cannot be restarted without losing state: its end before
    /// shutdown (Ok, Err or a panic) fails the process.
    pub fn spawn<F>(&mut self, name: &str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.to_owned();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let ended = tokio::spawn(task).await;
            judge(&name, ended, &shutdown)
        });
    }

    /// [`Self::spawn`] for a task that returns nothing.
    pub fn spawn_unit<F>(&mut self, name: &str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// Adopts the tasks a component spawned into its own set, as one group named
    /// `name`: the first of them to end before shutdown fails the process.
    pub fn adopt(&mut self, name: &str, mut group: JoinSet<()>) {
        let name = name.to_owned();
        let shutdown = self.shutdown.clone();
        let early = self.early_failures.0.clone();
        self.tasks.spawn(async move {
            // An empty group has nothing that could fail.
            let first = group.join_next().await?;
            // Reported now: the rest of the group stops only once the shutdown this
            // failure causes has begun.
            if let Some(failure) = judge(&name, first.map(Ok), &shutdown) {
                let _ = early.send(failure);
            }
            while let Some(ended) = group.join_next().await {
                if let Err(error) = ended {
                    tracing::warn!(task = %name, %error, "a task of the group ended badly while stopping");
                }
            }
            None
        });
    }

    /// Runs the task that `start` makes, and makes and runs it again with backoff
    /// each time it ends before shutdown ([`GIVE_UP_AFTER`] quick failures in a row
    /// fail the process). Only for tasks that lose nothing by starting over.
    pub fn spawn_restartable<M, F>(&mut self, name: &str, mut start: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.to_owned();
        let shutdown = self.shutdown.clone();
        let health = Arc::clone(&self.health);
        health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.clone())
            .or_default();
        self.tasks.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            let mut quick_failures = 0;
            loop {
                let started = tokio::time::Instant::now();
                let ended = tokio::spawn(start()).await;
                let failure = judge(&name, ended, &shutdown)?;
                if started.elapsed() >= STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                    quick_failures = 0;
                }
                quick_failures += 1;
                {
                    let mut table = health.lock().unwrap_or_else(PoisonError::into_inner);
                    let entry = table.entry(name.clone()).or_default();
                    entry.last_failure = Some(failure.cause.clone());
                }
                if quick_failures >= GIVE_UP_AFTER {
                    return Some(TaskFailure {
                        task: name,
                        cause: format!(
                            "keeps failing ({quick_failures} times in a row, last: {})",
                            failure.cause
                        ),
                    });
                }
                tracing::warn!(task = %name, cause = %failure.cause, retry_in = ?backoff, "task failed; starting it again");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name.clone())
                    .or_default()
                    .restarts += 1;
            }
        });
    }

    /// Waits for the first task that fails; `None` once every task has ended without
    /// failing (which, before shutdown, only an empty supervisor does). Safe to use in
    /// `select!`: a failure is kept until [`Self::stopped`].
    pub async fn failed(&mut self) -> Option<TaskFailure> {
        if let Some(failure) = &self.first_failure {
            return Some(failure.clone());
        }
        loop {
            let failure = tokio::select! {
                Some(failure) = self.early_failures.1.recv() => failure,
                ended = self.tasks.join_next() => match ended {
                    None => return self.early_failures.1.try_recv().ok(),
                    Some(Ok(None)) => continue,
                    Some(Ok(Some(failure))) => failure,
                    Some(Err(error)) => TaskFailure {
                        task: "supervisor".into(),
                        cause: format!("lost a task: {error}"),
                    },
                },
            };
            self.first_failure = Some(failure.clone());
            return Some(failure);
        }
    }

    /// Waits until every task has stopped (after the shutdown token fired); the first
    /// failure seen, if any.
    pub async fn stopped(mut self) -> Option<TaskFailure> {
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Some(failure)) = ended
                && self.first_failure.is_none()
            {
                self.first_failure = Some(failure);
            }
        }
        if self.first_failure.is_none() {
            self.first_failure = self.early_failures.1.try_recv().ok();
        }
        self.first_failure
    }
}

/// Whether a task that ended this way failed: any end before shutdown does, and a
/// panic at any time.
fn judge(
    name: &str,
    ended: Result<anyhow::Result<()>, JoinError>,
    shutdown: &CancellationToken,
) -> Option<TaskFailure> {
    let cause = match ended {
        Ok(Ok(())) if shutdown.is_cancelled() => return None,
        Ok(Ok(())) => "returned before shutdown".to_owned(),
        Ok(Err(error)) if shutdown.is_cancelled() => {
            tracing::warn!(task = %name, error = %format!("{error:#}"), "task ended with an error while stopping");
            return None;
        }
        Ok(Err(error)) => format!("failed: {error:#}"),
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            format!("panicked: {message}")
        }
        Err(_) if shutdown.is_cancelled() => return None,
        Err(error) => format!("was cancelled: {error}"),
    };
    Some(TaskFailure {
        task: name.to_owned(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_returns_before_shutdown_fails_the_process_by_name() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        supervisor.spawn_unit("waits", async move { stop.cancelled().await });
        supervisor.spawn("link agent", async { anyhow::bail!("no fleet CA") });
        let failure = supervisor.failed().await.expect("a failure");
        assert_eq!(failure.to_string(), "task `link agent` failed: no fleet CA");
        shutdown.cancel();
        assert_eq!(supervisor.stopped().await, Some(failure));
    }

    #[tokio::test]
    async fn a_panic_fails_the_process_and_a_clean_stop_does_not() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn_unit("sample pump", async { panic!("boom") });
        let failure = supervisor.failed().await.expect("a failure");
        assert_eq!(failure.cause, "panicked: boom");

        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        supervisor.spawn_unit("waits", async move { stop.cancelled().await });
        let mut group = JoinSet::new();
        let stop = shutdown.clone();
        group.spawn(async move { stop.cancelled().await });
        supervisor.adopt("status page", group);
        shutdown.cancel();
        assert_eq!(supervisor.stopped().await, None);
    }

    #[tokio::test]
    async fn a_group_member_that_ends_fails_the_group() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let mut group = JoinSet::new();
        let stop = shutdown.clone();
        group.spawn(async move { stop.cancelled().await });
        group.spawn(async {});
        supervisor.adopt("bridges", group);
        let failure = supervisor.failed().await.expect("a failure");
        assert_eq!(
            failure.to_string(),
            "task `bridges` returned before shutdown"
        );
        shutdown.cancel();
        assert!(supervisor.stopped().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restartable_task_restarts_with_backoff_then_gives_up() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let health = supervisor.health();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let started = tokio::time::Instant::now();
        supervisor.spawn_restartable("unit facts", move || {
            let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { anyhow::bail!("cannot read boot/state (run {run})") }
        });
        let failure = supervisor.failed().await.expect("gives up");
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            GIVE_UP_AFTER
        );
        assert_eq!(
            failure.cause,
            format!(
                "keeps failing ({GIVE_UP_AFTER} times in a row, last: failed: cannot read boot/state (run {GIVE_UP_AFTER}))"
            )
        );
        // 1 + 2 + 4 + 8 + 16 + 30 + 30 s between the eight runs.
        assert_eq!(started.elapsed(), Duration::from_secs(91));
        let table = health.lock().expect("health").clone();
        assert_eq!(table["unit facts"].restarts, u64::from(GIVE_UP_AFTER - 1));
        assert_eq!(
            table["unit facts"].last_failure.as_deref(),
            Some("failed: cannot read boot/state (run 8)")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restartable_task_that_recovers_keeps_running_and_its_count() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let health = supervisor.health();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let stop = shutdown.clone();
        supervisor.spawn_restartable("report uploader", move || {
            let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if run < 2 {
                    anyhow::bail!("ring unreadable");
                }
                stop.cancelled().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
        let entry = health.lock().expect("health")["report uploader"].clone();
        assert_eq!(entry.restarts, 2);
        assert_eq!(
            entry.last_failure.as_deref(),
            Some("failed: ring unreadable")
        );
        shutdown.cancel();
        assert_eq!(supervisor.stopped().await, None);
    }
}
