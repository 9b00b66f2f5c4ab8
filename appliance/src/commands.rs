//! Commands from the fleet: executed through the bridges (and so the policy), once.
//!
//! Every result is written to a bounded, crash-safe log before it is published, so a
//! command the fleet sends again (a lost result, a broker redelivery, a restart)
//! gets the first answer back and never reaches the equipment twice. The result then
//! goes to the link's durable control queue, and the log notes that it did; a result
//! logged but not yet queued when the process died is queued at the next start. So
//! every result reaches the fleet, across outages and kill -9, at least once — and
//! the fleet keeps one per command ID.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use warden_bridges::WriteOutcome;
use warden_bridges::request_policy::RequestSource;
use warden_link::topics::{Command, CommandAction, CommandResult, CommandStatus, PROTOCOL_VERSION};

/// How many results the log keeps (the oldest are forgotten first).
pub const COMMAND_LOG_CAPACITY: usize = 1024;

/// One logged result, and whether it is in the control queue yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LogEntry {
    #[serde(flatten)]
    result: CommandResult,
    /// In the durable control queue (a log from before this flag reads as `false`,
    /// so its results are queued once more; the fleet keeps one per ID).
    #[serde(default)]
    queued: bool,
}

/// The results of recent commands, persisted.
#[derive(Debug)]
pub struct CommandLog {
    path: PathBuf,
    results: VecDeque<LogEntry>,
}

impl CommandLog {
    /// Opens the log at `path` (a missing file is an empty log).
    pub fn open(path: &Path) -> Result<Self, CommandLogError> {
        let results = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| CommandLogError::Decode {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(source) => {
                return Err(CommandLogError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            results,
        })
    }

    /// The result recorded for `id`, if the command ran before.
    pub fn get(&self, id: &str) -> Option<&CommandResult> {
        self.results
            .iter()
            .find(|entry| entry.result.id == id)
            .map(|entry| &entry.result)
    }

    /// Records a result durably (temp file, fsync, rename, fsync the directory), not
    /// yet queued for the fleet.
    pub fn record(&mut self, result: CommandResult) -> Result<(), CommandLogError> {
        self.results.push_back(LogEntry {
            result,
            queued: false,
        });
        while self.results.len() > COMMAND_LOG_CAPACITY {
            self.results.pop_front();
        }
        self.save()
    }

    /// Results recorded but not yet in the control queue, oldest first.
    pub fn unqueued(&self) -> Vec<CommandResult> {
        self.results
            .iter()
            .filter(|entry| !entry.queued)
            .map(|entry| entry.result.clone())
            .collect()
    }

    /// Notes durably that the result of `id` is in the control queue.
    pub fn mark_queued(&mut self, id: &str) -> Result<(), CommandLogError> {
        let mut changed = false;
        for entry in self.results.iter_mut().filter(|e| e.result.id == id) {
            changed |= !entry.queued;
            entry.queued = true;
        }
        if changed { self.save() } else { Ok(()) }
    }

    fn save(&self) -> Result<(), CommandLogError> {
        let bytes = serde_json::to_vec(&self.results).map_err(CommandLogError::Encode)?;
        Ok(warden_files::write_file_atomically(&self.path, &bytes)?)
    }
}

/// The command log could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandLogError {
    /// The log exists but cannot be read.
    #[error("command log {}: {source}", path.display())]
    Read {
        /// The log.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log is not the JSON this version writes.
    #[error("command log {}: {source}", path.display())]
    Decode {
        /// The log.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The results could not be encoded (never for plain results).
    #[error("command log: cannot encode the results: {0}")]
    Encode(#[source] serde_json::Error),
    /// The log could not be replaced on disk.
    #[error("command log {0}")]
    Write(#[from] warden_files::FileError),
}

/// Runs one command through the bridge it names.
pub async fn execute(bridges: &crate::bridge_set::BridgeSet, command: &Command) -> CommandResult {
    let (status, detail) = match &command.action {
        CommandAction::Write {
            bridge,
            point,
            value,
        } => match bridges
            .write_point(bridge, point, *value, RequestSource::Cloud)
            .await
        {
            None => (CommandStatus::Failed, format!("no bridge named {bridge:?}")),
            Some(outcome) => match outcome {
                WriteOutcome::Written => (CommandStatus::Written, String::new()),
                WriteOutcome::Denied { reason } => (CommandStatus::Denied, reason),
                WriteOutcome::Exception { code } => (
                    CommandStatus::Exception,
                    format!("modbus exception {code:#04x}"),
                ),
                WriteOutcome::Failed { error } => (CommandStatus::Failed, error),
            },
        },
        #[allow(unreachable_patterns)] // CommandAction is non_exhaustive; newer kinds are refused.
        _ => (
            CommandStatus::Failed,
            "this device does not know that command".to_owned(),
        ),
    };
    CommandResult {
        v: PROTOCOL_VERSION,
        id: command.id.clone(),
        status,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use warden_link::{ControlMessage, ControlSender};

    use super::*;

    fn result(id: &str, status: CommandStatus) -> CommandResult {
        CommandResult {
            v: PROTOCOL_VERSION,
            id: id.into(),
            status,
            detail: String::new(),
        }
    }

    #[test]
    fn results_survive_reopen_and_the_log_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("command-log.json");
        let mut log = CommandLog::open(&path).expect("open");
        assert!(log.get("c-1").is_none());
        log.record(result("c-1", CommandStatus::Written))
            .expect("record");
        log.record(result("c-2", CommandStatus::Denied))
            .expect("record");
        let log = CommandLog::open(&path).expect("reopen");
        assert_eq!(
            log.get("c-1").map(|r| r.status),
            Some(CommandStatus::Written)
        );
        assert_eq!(
            log.get("c-2").map(|r| r.status),
            Some(CommandStatus::Denied)
        );
        let mut log = log;
        for n in 0..COMMAND_LOG_CAPACITY {
            log.record(result(&format!("x-{n}"), CommandStatus::Written))
                .expect("record");
        }
        assert!(
            log.get("c-1").is_none(),
            "the oldest result is forgotten first"
        );
        assert!(
            log.get(&format!("x-{}", COMMAND_LOG_CAPACITY - 1))
                .is_some()
        );
    }

    #[test]
    fn a_result_logged_but_not_queued_is_queued_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("command-log.json");
        let mut log = CommandLog::open(&path).expect("open");
        log.record(result("c-1", CommandStatus::Written))
            .expect("record");
        log.record(result("c-2", CommandStatus::Denied))
            .expect("record");
        log.mark_queued("c-1").expect("mark");
        // The process dies here: c-2 was executed and logged, never queued.
        let mut log = CommandLog::open(&path).expect("reopen");
        let left_over: Vec<String> = log.unqueued().into_iter().map(|r| r.id).collect();
        assert_eq!(left_over, vec!["c-2".to_owned()]);
        let control = ControlSender::open(&dir.path().join("control")).expect("control");
        // The link queues it, then confirms (`ResultQueued`) and the bridges note it.
        let queued = crate::roles::link::queue_command_result(
            &control,
            result("c-2", CommandStatus::Denied),
        )
        .expect("queued");
        log.mark_queued(&queued).expect("mark");
        assert!(
            CommandLog::open(&path)
                .expect("reopen")
                .unqueued()
                .is_empty()
        );
        let queue = control.lock();
        assert_eq!(
            queue.message(0).expect("queued"),
            ControlMessage::CommandResult(result("c-2", CommandStatus::Denied))
        );
    }

    #[test]
    fn a_log_from_before_the_queued_flag_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("command-log.json");
        std::fs::write(
            &path,
            r#"[{"v":1,"id":"old-1","status":"written","detail":""}]"#,
        )
        .expect("write");
        let log = CommandLog::open(&path).expect("open");
        assert_eq!(
            log.get("old-1").map(|r| r.status),
            Some(CommandStatus::Written)
        );
        assert_eq!(log.unqueued().len(), 1);
    }

    #[tokio::test]
    async fn an_unknown_bridge_fails_without_touching_anything() {
        let command = Command {
            v: PROTOCOL_VERSION,
            id: "c-9".into(),
            action: CommandAction::Write {
                bridge: "nope".into(),
                point: "p".into(),
                value: 1.0,
            },
        };
        let result = execute(&crate::bridge_set::BridgeSet::default(), &command).await;
        assert_eq!(result.status, CommandStatus::Failed);
        assert_eq!(result.detail, "no bridge named \"nope\"");
    }
}
