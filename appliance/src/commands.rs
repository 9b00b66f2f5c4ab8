//! Commands from the fleet: executed through the bridges (and so the policy), once.
//!
//! Every result is written to a bounded, crash-safe log before it is published, so a
//! command the fleet sends again (a lost result, a broker redelivery, a restart)
//! gets the first answer back and never reaches the equipment twice.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use warden_bridges::request_policy::RequestSource;
use warden_bridges::{BridgeHandle, WriteOutcome, WriteTarget, WriteValue};
use warden_link::CommandChannel;
use warden_link::topics::{Command, CommandAction, CommandResult, CommandStatus, PROTOCOL_VERSION};

/// How many results the log keeps (the oldest are forgotten first).
pub const COMMAND_LOG_CAPACITY: usize = 1024;

/// The results of recent commands, persisted.
#[derive(Debug)]
pub struct CommandLog {
    path: PathBuf,
    results: VecDeque<CommandResult>,
}

impl CommandLog {
    /// Opens the log at `path` (a missing file is an empty log).
    pub fn open(path: &Path) -> Result<Self, CommandLogError> {
        let results = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CommandLogError(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => return Err(CommandLogError(format!("{}: {e}", path.display()))),
        };
        Ok(Self {
            path: path.to_path_buf(),
            results,
        })
    }

    /// The result recorded for `id`, if the command ran before.
    pub fn get(&self, id: &str) -> Option<&CommandResult> {
        self.results.iter().find(|r| r.id == id)
    }

    /// Records a result durably (temp file, fsync, rename, fsync the directory).
    pub fn record(&mut self, result: CommandResult) -> Result<(), CommandLogError> {
        self.results.push_back(result);
        while self.results.len() > COMMAND_LOG_CAPACITY {
            self.results.pop_front();
        }
        let bytes =
            serde_json::to_vec(&self.results).map_err(|e| CommandLogError(e.to_string()))?;
        write_atomically(&self.path, &bytes)
            .map_err(|e| CommandLogError(format!("{}: {e}", self.path.display())))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The command log could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("command log {0}")]
pub struct CommandLogError(String);

/// Executes commands until `shutdown` or until the link closes the channel.
pub async fn run(
    mut channel: CommandChannel,
    bridges: Vec<BridgeHandle>,
    mut log: CommandLog,
    shutdown: CancellationToken,
) {
    loop {
        let command = tokio::select! {
            () = shutdown.cancelled() => return,
            command = channel.commands.recv() => match command {
                Some(command) => command,
                None => return,
            },
        };
        let result = match log.get(&command.id) {
            Some(previous) => {
                tracing::info!(id = %command.id, "command seen before; answering with its first result");
                previous.clone()
            }
            None => {
                let result = execute(&bridges, &command).await;
                tracing::info!(id = %result.id, status = ?result.status, detail = %result.detail, "command executed");
                if let Err(error) = log.record(result.clone()) {
                    // The write happened; say so, and say the log is failing.
                    tracing::error!(%error, "cannot record a command result");
                }
                result
            }
        };
        if channel.results.send(result).await.is_err() {
            return;
        }
    }
}

/// Runs one command through the bridge it names.
pub async fn execute(bridges: &[BridgeHandle], command: &Command) -> CommandResult {
    let (status, detail) = match &command.action {
        CommandAction::Write {
            bridge,
            point,
            value,
        } => match bridges.iter().find(|b| b.name() == bridge) {
            None => (CommandStatus::Failed, format!("no bridge named {bridge:?}")),
            Some(handle) => {
                let target = WriteTarget::Point(point.clone());
                match handle
                    .write(&target, &WriteValue::Number(*value), RequestSource::Cloud)
                    .await
                {
                    WriteOutcome::Written => (CommandStatus::Written, String::new()),
                    WriteOutcome::Denied { reason } => (CommandStatus::Denied, reason),
                    WriteOutcome::Exception { code } => (
                        CommandStatus::Exception,
                        format!("modbus exception {code:#04x}"),
                    ),
                    WriteOutcome::Failed { error } => (CommandStatus::Failed, error),
                }
            }
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
        let result = execute(&[], &command).await;
        assert_eq!(result.status, CommandStatus::Failed);
        assert_eq!(result.detail, "no bridge named \"nope\"");
    }
}
