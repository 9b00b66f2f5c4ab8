//! The running BLE bridge: its thread, its handle for writes, and its counters.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_bridges::bridge::WriteOutcome;
use warden_bridges::point::WriteValue;
use warden_bridges::request_policy::RequestSource;
use warden_bridges::sample::Sample;

use crate::ble_policy::BleRequestPolicy;
use crate::config::BleBridgeSpec;
use crate::shared::{BleHealth, Shared, WriteCommand};

/// How long a write may wait for the bridge before it is reported as failed (and
/// dropped unsent if it is still queued).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The handle of a started BLE bridge: writes (cloud commands) and counters.
#[derive(Clone)]
pub struct BleBridgeHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<WriteCommand>,
}

impl BleBridgeHandle {
    /// Bridge name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// A copy of the counters.
    pub fn health(&self) -> BleHealth {
        self.shared
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the policy gate (the appliance applied a newly verified policy
    /// bundle). Writes meet it at once; reads and subscriptions are decided when the
    /// session connects (discovery), so they follow it from the next connection on.
    pub fn set_policy(&self, policy: Box<dyn BleRequestPolicy>) {
        *self
            .shared
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Writes `value` to `point` (write with response). The policy decides first, with
    /// the connected sensor's address: a denied write never reaches the sensor.
    pub async fn write(
        &self,
        point: &str,
        value: WriteValue,
        source: RequestSource,
    ) -> WriteOutcome {
        if self.shared.spec.point(point).is_none() {
            return WriteOutcome::Failed {
                error: format!("bridge {} has no point {point:?}", self.shared.spec.name),
            };
        }
        let (reply, answer) = oneshot::channel();
        let command = WriteCommand {
            point: point.to_owned(),
            value,
            source,
            deadline: Instant::now() + WRITE_TIMEOUT,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return WriteOutcome::Failed {
                error: format!("bridge {} has stopped", self.shared.spec.name),
            };
        }
        match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => WriteOutcome::Failed {
                error: format!("bridge {} has stopped", self.shared.spec.name),
            },
            Err(_) => WriteOutcome::Failed {
                error: format!(
                    "bridge {} did not answer within {} s",
                    self.shared.spec.name,
                    WRITE_TIMEOUT.as_secs()
                ),
            },
        }
    }
}

/// Why a BLE bridge could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the thread of BLE bridge {bridge}: {source}")]
pub struct StartError {
    /// Bridge name.
    pub bridge: String,
    /// Why.
    pub source: std::io::Error,
}

/// Starts a BLE bridge on its own thread (the host stack is single-threaded): it opens
/// the HCI transport, finds and connects to the sensor, reads and subscribes, sends
/// [`Sample`]s, reconnects after the sensor goes away, and stops on `shutdown`.
pub fn start(
    spec: BleBridgeSpec,
    policy: Box<dyn BleRequestPolicy>,
    samples: mpsc::Sender<Sample>,
    shutdown: CancellationToken,
) -> Result<BleBridgeHandle, StartError> {
    let (commands, queue) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        spec,
        health: Mutex::new(BleHealth::default()),
        policy: Mutex::new(policy),
    });
    let session_shared = Arc::clone(&shared);
    let name = format!("ble-{}", shared.spec.name);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    session_shared.update(|h| h.last_error = Some(format!("no runtime: {error}")));
                    return;
                }
            };
            runtime.block_on(crate::central::run(
                session_shared,
                queue,
                samples,
                shutdown,
            ));
        })
        .map_err(|source| StartError {
            bridge: shared.spec.name.clone(),
            source,
        })?;
    Ok(BleBridgeHandle { shared, commands })
}
