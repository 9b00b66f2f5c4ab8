//! The handle to the task that owns the mailbox, and that task's reconnect loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_rtcore_mailbox::{CoreCounters, LineSettings};

use crate::health::BridgeHealth;
use crate::modbus::pdu::Request;
use crate::modbus::{Answer, ClientError};
use crate::request_policy::RequestSource;
use crate::rtcore::error::RtCoreError;
use crate::rtcore::link::{HANDSHAKE_TIMEOUT, Link};
use crate::rtcore::messages::Command;
use crate::rtcore::setup::CoreSetup;

/// A handle to the task that owns the mailbox; cheap to clone.
#[derive(Clone)]
pub struct RtCoreBus {
    commands: mpsc::Sender<Command>,
    call_timeout: Duration,
}

impl std::fmt::Debug for RtCoreBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtCoreBus").finish_non_exhaustive()
    }
}

impl RtCoreBus {
    /// Returns the handle and the task that opens the mailbox device `path` (and
    /// reopens it with backoff), brings the core up with `setup` and serves calls
    /// until `shutdown`.
    pub fn for_mailbox_device(
        path: String,
        setup: CoreSetup,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (bus, mut rx) = Self::channel(&setup.line);
        let task = async move {
            let mut failures = 0u32;
            let mut link = Link::new(setup, health);
            loop {
                match tokio_serial::SerialStream::open(&tokio_serial::new(&path, 921_600)) {
                    Ok(mut port) => {
                        failures = 0;
                        match link.serve(&mut port, &mut rx, &shutdown).await {
                            Ok(()) => return,
                            Err(error) => link.record_error(&format!("mailbox {path}: {error}")),
                        }
                    }
                    Err(error) => {
                        link.record_error(&format!("cannot open mailbox {path}: {error}"))
                    }
                }
                link.set_connected(false);
                link.fail_pending(&mut rx);
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(100 << failures.min(5));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        };
        (bus, task)
    }

    /// The same over any byte stream (a socket or pty in tests); ends on the first
    /// mailbox error.
    pub fn over_stream<S>(
        stream: S,
        setup: CoreSetup,
        health: Arc<Mutex<BridgeHealth>>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (bus, mut rx) = Self::channel(&setup.line);
        let task = async move {
            let mut stream = stream;
            let mut link = Link::new(setup, health);
            if let Err(error) = link.serve(&mut stream, &mut rx, &shutdown).await {
                link.record_error(&format!("mailbox: {error}"));
            }
            link.set_connected(false);
            link.fail_pending(&mut rx);
        };
        (bus, task)
    }

    fn channel(line: &LineSettings) -> (Self, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(64);
        // Every attempt may wait for its timeout, plus the line time and the mailbox.
        let attempts = u64::from(line.retries) + 1;
        let call_timeout =
            Duration::from_millis(attempts * (u64::from(line.response_timeout_ms) + 50) + 2_000);
        (
            Self {
                commands,
                call_timeout,
            },
            rx,
        )
    }

    /// Sends `request` to `unit` on behalf of `source` through the core's policy.
    pub async fn call(
        &self,
        unit: u8,
        request: Request,
        source: RequestSource,
    ) -> Result<Answer, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Transact {
                unit,
                request,
                source,
                reply,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(self.call_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }

    /// Uploads a new signed bundle; the core verifies it before it applies it.
    pub async fn load_bundle(&self, bundle: Arc<Vec<u8>>) -> Result<u64, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::LoadBundle { bundle, reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }

    /// The core's counters since its boot.
    pub async fn counters(&self) -> Result<CoreCounters, RtCoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Counters { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await {
            Ok(Ok(counters)) => Ok(counters),
            Ok(Err(_)) => Err(ClientError::Stopped.into()),
            Err(_) => Err(ClientError::Timeout.into()),
        }
    }
}
