//! A bridge: one downstream (a TCP device or an RTU line), its points, its policy
//! gate and its health, behind a cloneable [`BridgeHandle`].
//!
//! Every request a bridge sends, whether from its poll schedule, a cloud command or
//! the gateway facade, goes through [`BridgeHandle::request`], which asks the policy
//! first. There is no other path to the equipment.

use std::sync::{Arc, Mutex, PoisonError};

use crate::health::{BridgeHealth, HealthEvent};
use crate::modbus::pdu::{CoilValues, ExceptionCode, RegisterValues, Request};
use crate::modbus::rtu_bus::RtuBus;
use crate::modbus::tcp_pool::TcpDevice;
use crate::modbus::{Answer, ClientError};
use crate::point::{PointConfig, PointError, RegisterKind, WriteValue};
use crate::request_policy::{Denial, GatedRequest, RequestPolicy, RequestSource};

/// Where a bridge's requests go.
#[derive(Clone)]
pub enum Downstream {
    /// A Modbus TCP device or gateway.
    Tcp(Arc<TcpDevice>),
    /// The owner task of an RS-485 line.
    Rtu(RtuBus),
    /// An RS-485 line driven by the real-time core, which checks the policy again.
    RtCore(crate::rtcore::RtCoreBus),
}

impl Downstream {
    /// Sends `request` from `source` to `unit` and waits for the answer.
    ///
    /// A facade request has a client waiting on it (mbpoll gives up after 3 s): it is
    /// answered within the downstream's configured timeout, never queued behind the
    /// poller's retries or a unit's backoff.
    pub async fn call(
        &self,
        unit: u8,
        request: Request,
        source: RequestSource,
    ) -> Result<Answer, ClientError> {
        match self {
            Self::Tcp(device) if source == RequestSource::Facade => {
                device.call_within_timeout(unit, &request).await
            }
            Self::Tcp(device) => device.call(unit, &request).await,
            Self::Rtu(bus) if source == RequestSource::Facade => bus.call_now(unit, request).await,
            Self::Rtu(bus) => bus.call(unit, request).await,
            Self::RtCore(core) => core
                .call(unit, request, source)
                .await
                .map_err(crate::rtcore::RtCoreError::into_client_error),
        }
    }
}

/// Why a request through a bridge did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The policy refused it; it was not sent.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// It was sent but no usable answer came back.
    #[error("bridge {bridge}, unit {unit}: {error}")]
    Failed {
        /// Bridge name.
        bridge: String,
        /// Unit addressed.
        unit: u8,
        /// What went wrong.
        error: ClientError,
    },
}

/// Why a write could not be turned into a Modbus request (nothing was sent).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteRequestError {
    /// A raw write whose value does not fit the register kind.
    #[error(
        "cannot write {value:?} to {kind} {address} (coils take true/false, holding registers 0..=65535)"
    )]
    ValueDoesNotFitRegister {
        /// The register kind's name (`coil`, `holding`, …).
        kind: &'static str,
        /// 0-based address.
        address: u16,
        /// The value asked for.
        value: WriteValue,
    },
    /// The named point is not configured on this bridge.
    #[error("bridge {bridge} has no point {point:?}")]
    NoSuchPoint {
        /// Bridge name.
        bridge: String,
        /// Point asked for.
        point: String,
    },
    /// A coil point was given something other than true/false (or 0/1).
    #[error("coil point {point} takes true/false, not {value:?}")]
    CoilTakesBool {
        /// Point name.
        point: String,
        /// The value asked for.
        value: WriteValue,
    },
    /// The value does not encode into the point's registers.
    #[error(transparent)]
    Encode(#[from] PointError),
    /// The point's registers do not fit one write request.
    #[error("point {point} spans more than 123 registers")]
    TooManyRegisters {
        /// Point name.
        point: String,
    },
    /// The point is of a read-only kind.
    #[error("point {point} is a {kind} and cannot be written")]
    NotWritable {
        /// Point name.
        point: String,
        /// The register kind's name.
        kind: &'static str,
    },
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    /// A configured point, by name (values in engineering units).
    Point(String),
    /// A raw coil or holding register (values raw).
    Address {
        /// Unit; the bridge's default when `None`.
        unit: Option<u8>,
        /// Coil or holding register.
        kind: RegisterKind,
        /// 0-based address.
        address: u16,
    },
}

/// How a write ended, reported back to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// The equipment confirmed the write.
    Written,
    /// The policy refused it; nothing was sent.
    Denied {
        /// Why.
        reason: String,
    },
    /// The equipment answered with an exception.
    Exception {
        /// The exception code.
        code: u8,
    },
    /// The write could not be built or sent, or no answer came.
    Failed {
        /// What went wrong.
        error: String,
    },
}

struct Shared {
    name: String,
    address: String,
    default_unit: u8,
    points: Vec<PointConfig>,
    downstream: Downstream,
    policy: Mutex<Box<dyn RequestPolicy>>,
    health: Arc<Mutex<BridgeHealth>>,
}

/// One bridge; clones share the downstream, the policy gate (and its rate state)
/// and the health counters.
#[derive(Clone)]
pub struct BridgeHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BridgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHandle")
            .field("name", &self.shared.name)
            .field("address", &self.shared.address)
            .finish_non_exhaustive()
    }
}

impl BridgeHandle {
    /// A bridge named `name` (as the policy names it) whose requests go to
    /// `downstream` after `policy` allowed them. `address` describes the downstream
    /// for people; points without a unit use `default_unit`.
    pub fn new(
        name: String,
        address: String,
        default_unit: u8,
        points: Vec<PointConfig>,
        downstream: Downstream,
        policy: Box<dyn RequestPolicy>,
        health: Arc<Mutex<BridgeHealth>>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                name,
                address,
                default_unit,
                points,
                downstream,
                policy: Mutex::new(policy),
                health,
            }),
        }
    }

    /// Bridge name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The downstream, for people (`127.0.0.1:5020`, `/dev/ttyUSB0 9600 8E1`).
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// Unit of points that name none.
    pub fn default_unit(&self) -> u8 {
        self.shared.default_unit
    }

    /// The configured points.
    pub fn points(&self) -> &[PointConfig] {
        &self.shared.points
    }

    /// Replaces the policy gate (a newly verified policy bundle); requests already
    /// checked keep their decision, every later one meets the new policy.
    pub fn set_policy(&self, policy: Box<dyn RequestPolicy>) {
        *self
            .shared
            .policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// The bridge's health counters.
    pub fn health(&self) -> Arc<Mutex<BridgeHealth>> {
        Arc::clone(&self.shared.health)
    }

    pub(crate) fn update_health(&self, change: impl FnOnce(&mut BridgeHealth)) {
        // A poisoned lock only means another holder panicked mid-update; counters stay usable.
        let mut health = self
            .shared
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut health);
    }

    /// Asks the policy about `request` without counting or logging a denial (read
    /// planning: a refused merged read is split, not reported).
    pub fn allowed_quietly(&self, unit: u8, request: &Request, source: RequestSource) -> bool {
        self.judge(unit, request, source).is_ok()
    }

    /// The policy's verdict on `request`. Function 23 (write, then read, multiple
    /// registers) is judged as the read (function 3) and the write (function 16) it
    /// is made of, read first: it passes only if both do.
    fn judge(&self, unit: u8, request: &Request, source: RequestSource) -> Result<(), Denial> {
        let mut policy = self
            .shared
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut check = |request: &Request| {
            policy.check(&GatedRequest {
                bridge: &self.shared.name,
                unit,
                request,
                source,
            })
        };
        match request.read_write_parts() {
            Some((read, write)) => check(&read).and_then(|()| check(&write)),
            None => check(request),
        }
    }

    /// Asks the policy about `request` to `unit` from `source`; a denial is counted
    /// and logged.
    pub fn check(&self, unit: u8, request: &Request, source: RequestSource) -> Result<(), Denial> {
        let verdict = self.judge(unit, request, source);
        if let Err(denial) = &verdict {
            tracing::warn!(bridge = %self.shared.name, unit, function = request.function().code(), address = request.address(), count = request.count(), ?source, %denial, "request denied");
            let text = format!(
                "unit {unit} function {} address {} count {}: {denial}",
                request.function().code(),
                request.address(),
                request.count()
            );
            self.update_health(|h| h.record(Some(unit), HealthEvent::Denied(text)));
        }
        verdict
    }

    /// Checks `request` with the policy and, if allowed, sends it to `unit`.
    pub async fn request(
        &self,
        unit: u8,
        request: Request,
        source: RequestSource,
    ) -> Result<Answer, RequestError> {
        self.check(unit, &request, source)?;
        self.shared
            .downstream
            .call(unit, request, source)
            .await
            .map_err(|error| {
                self.count_transport_failure(unit, &error);
                RequestError::Failed {
                    bridge: self.shared.name.clone(),
                    unit,
                    error,
                }
            })
    }

    /// Counts what the transport does not count itself: a Modbus TCP timeout (the RTU
    /// bus counts each attempt's on the line) and an answer from the wrong unit.
    fn count_transport_failure(&self, unit: u8, error: &ClientError) {
        let event = match (&self.shared.downstream, error) {
            (Downstream::Tcp(_), ClientError::Timeout) => HealthEvent::Timeout,
            (_, ClientError::WrongUnit { .. }) => HealthEvent::WrongUnit,
            _ => return,
        };
        self.update_health(|h| h.record(Some(unit), event));
    }

    /// Writes `value` to `target` on behalf of `source` (a cloud command or the
    /// facade), through the policy, and reports how it ended.
    pub async fn write(
        &self,
        target: &WriteTarget,
        value: &WriteValue,
        source: RequestSource,
    ) -> WriteOutcome {
        let (unit, request) = match self.write_request(target, value) {
            Ok(built) => built,
            Err(error) => {
                return WriteOutcome::Failed {
                    error: error.to_string(),
                };
            }
        };
        let outcome = match self.request(unit, request, source).await {
            Ok(Answer::Written) => WriteOutcome::Written,
            Ok(Answer::Exception(code)) => WriteOutcome::Exception { code: code.0 },
            Ok(other) => WriteOutcome::Failed {
                error: format!("unexpected answer to a write: {other:?}"),
            },
            Err(RequestError::Denied(denial)) => WriteOutcome::Denied {
                reason: denial.reason,
            },
            Err(error) => WriteOutcome::Failed {
                error: error.to_string(),
            },
        };
        let counted = match &outcome {
            WriteOutcome::Written => Some(HealthEvent::WriteOk),
            WriteOutcome::Exception { code } => Some(HealthEvent::Exception(format!(
                "write to {target:?}: {}",
                ExceptionCode(*code)
            ))),
            WriteOutcome::Failed { error } => Some(HealthEvent::Error(error.clone())),
            WriteOutcome::Denied { .. } => None,
        };
        if let Some(event) = counted {
            self.update_health(|h| h.record(Some(unit), event));
        }
        outcome
    }

    fn write_request(
        &self,
        target: &WriteTarget,
        value: &WriteValue,
    ) -> Result<(u8, Request), WriteRequestError> {
        match target {
            WriteTarget::Address {
                unit,
                kind,
                address,
            } => {
                let unit = unit.unwrap_or(self.shared.default_unit);
                let request = match (kind, value) {
                    (RegisterKind::Coil, WriteValue::Bool(on)) => Request::WriteSingleCoil {
                        address: *address,
                        value: *on,
                    },
                    (RegisterKind::Holding, WriteValue::Number(raw))
                        if raw.fract() == 0.0 && (0.0..=65_535.0).contains(raw) =>
                    {
                        Request::WriteSingleRegister {
                            address: *address,
                            value: *raw as u16,
                        }
                    }
                    (kind, value) => {
                        return Err(WriteRequestError::ValueDoesNotFitRegister {
                            kind: kind.name(),
                            address: *address,
                            value: value.clone(),
                        });
                    }
                };
                Ok((unit, request))
            }
            WriteTarget::Point(name) => {
                let point = self
                    .shared
                    .points
                    .iter()
                    .find(|p| &p.name == name)
                    .ok_or_else(|| WriteRequestError::NoSuchPoint {
                        bridge: self.shared.name.clone(),
                        point: name.clone(),
                    })?;
                let unit = point.unit_id.unwrap_or(self.shared.default_unit);
                let request = match point.kind {
                    RegisterKind::Coil => {
                        let on = match value {
                            WriteValue::Bool(on) => *on,
                            WriteValue::Number(v) if *v == 0.0 || *v == 1.0 => *v == 1.0,
                            other => {
                                return Err(WriteRequestError::CoilTakesBool {
                                    point: name.clone(),
                                    value: other.clone(),
                                });
                            }
                        };
                        Request::WriteSingleCoil {
                            address: point.address,
                            value: on,
                        }
                    }
                    RegisterKind::Holding => {
                        let words = point.encode_registers(value)?;
                        if let [word] = words.as_slice() {
                            Request::WriteSingleRegister {
                                address: point.address,
                                value: *word,
                            }
                        } else {
                            let values = RegisterValues::from_slice(&words).map_err(|_| {
                                WriteRequestError::TooManyRegisters {
                                    point: name.clone(),
                                }
                            })?;
                            Request::WriteMultipleRegisters {
                                address: point.address,
                                values,
                            }
                        }
                    }
                    kind => {
                        return Err(WriteRequestError::NotWritable {
                            point: name.clone(),
                            kind: kind.name(),
                        });
                    }
                };
                Ok((unit, request))
            }
        }
    }
}

/// Builds a multi-coil write (for callers that need one; points write one coil).
pub fn write_coils(address: u16, values: impl IntoIterator<Item = bool>) -> Option<Request> {
    Some(Request::WriteMultipleCoils {
        address,
        values: CoilValues::from_bools(values)?,
    })
}
