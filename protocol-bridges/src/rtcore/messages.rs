//! The messages of the mailbox task: what its handle asks of it, and what the core
//! said, copied out of the frame buffer.

use std::sync::Arc;

use tokio::sync::oneshot;
use warden_rtcore_mailbox::message::ConfigureRefusal;
use warden_rtcore_mailbox::{BundleRefusal, CoreCounters, FromCore, Outcome};

use crate::modbus::Answer;
use crate::modbus::pdu::Request;
use crate::request_policy::RequestSource;
use crate::rtcore::error::RtCoreError;

pub(crate) type CallReply = oneshot::Sender<Result<Answer, RtCoreError>>;
pub(crate) type BundleReply = oneshot::Sender<Result<u64, RtCoreError>>;

// A request is held inline (as the native bus's jobs hold it): one command per call,
// moved once, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Transact {
        unit: u8,
        request: Request,
        source: RequestSource,
        reply: CallReply,
    },
    LoadBundle {
        bundle: Arc<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, RtCoreError>>,
    },
    Counters {
        reply: oneshot::Sender<CoreCounters>,
    },
}

/// A message from the core, copied out of the frame buffer.
#[derive(Debug)]
pub(crate) enum Received {
    Ready {
        protocol: u16,
        policy_version: Option<u64>,
    },
    Configured,
    ConfigureRefused(ConfigureRefusal),
    BundleAccepted(u64),
    BundleRefused(BundleRefusal),
    Outcome {
        id: u32,
        outcome: OwnedOutcome,
    },
    Counters(CoreCounters),
    Garbled,
}

#[derive(Debug)]
pub(crate) enum OwnedOutcome {
    Response(Vec<u8>),
    BroadcastSent,
    Timeout,
    Corrupted,
    Denied { reason: u8, rule: Option<u16> },
    NoPolicy,
    NotTaken(&'static str),
}

impl Received {
    pub(crate) fn from_frame(message: FromCore<'_>) -> Option<Self> {
        Some(match message {
            FromCore::Ready {
                protocol,
                policy_version,
                ..
            } => Self::Ready {
                protocol,
                policy_version,
            },
            FromCore::Configured => Self::Configured,
            FromCore::ConfigureRefused { reason } => Self::ConfigureRefused(reason),
            FromCore::BundleAccepted { version } => Self::BundleAccepted(version),
            FromCore::BundleRefused { reason } => Self::BundleRefused(reason),
            FromCore::Outcome { id, outcome } => Self::Outcome {
                id,
                outcome: match outcome {
                    Outcome::Response { pdu } => OwnedOutcome::Response(pdu.to_vec()),
                    Outcome::BroadcastSent => OwnedOutcome::BroadcastSent,
                    Outcome::Timeout => OwnedOutcome::Timeout,
                    Outcome::Corrupted => OwnedOutcome::Corrupted,
                    Outcome::Denied { reason, rule } => OwnedOutcome::Denied { reason, rule },
                    Outcome::NoPolicy => OwnedOutcome::NoPolicy,
                    Outcome::NotConfigured => OwnedOutcome::NotTaken("the line is not configured"),
                    Outcome::BadRequest => OwnedOutcome::NotTaken("malformed request"),
                    Outcome::Busy => OwnedOutcome::NotTaken("the core's queue is full"),
                    _ => OwnedOutcome::NotTaken("unknown outcome"),
                },
            },
            FromCore::Counters(counters) => Self::Counters(counters),
            FromCore::Garbled => Self::Garbled,
            _ => return None,
        })
    }
}
