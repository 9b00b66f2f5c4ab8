//! The messages the application core and the real-time core exchange.
//!
//! Modbus requests and answers travel as PDUs (the bytes `warden-modbus` encodes and
//! decodes), so there is one codec for Modbus and the mailbox only adds routing,
//! policy context and outcomes. Borrowed fields (`&[u8]`, `&str`) point into the
//! received frame: nothing allocates on either side.

use serde::{Deserialize, Serialize};

/// Who asked for a request; the policy's `sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RequestSource {
    /// The appliance's poll schedule.
    Poll,
    /// A command from the fleet.
    Cloud,
    /// A SCADA client through the gateway facade.
    Facade,
}

/// Parity of the RS-485 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus default).
    Even,
    /// Odd parity.
    Odd,
}

/// The bus line as the core drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LineSettings {
    /// Baud rate; the core derives t1.5 and t3.5 from it.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Per-attempt response timeout, from the end of the request on the line.
    pub response_timeout_ms: u32,
    /// Further attempts after a timeout or a garbled answer (at most 10).
    pub retries: u8,
}

/// Application core to real-time core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ToCore<'a> {
    /// Asks the core to say [`FromCore::Ready`] (it also says so once at boot).
    Hello,
    /// Line settings and the policy's name of the bridge this line is. Accepted once
    /// per boot; later ones must repeat the same settings.
    Configure {
        /// The line.
        line: LineSettings,
        /// The bridge name the policy uses for this line.
        bridge: &'a str,
    },
    /// Starts uploading a signed policy bundle of `len` bytes.
    BundleBegin {
        /// Total length, at most [`crate::MAX_BUNDLE_LEN`].
        len: u32,
    },
    /// The next bytes of the bundle; `offset` must follow the previous chunk.
    BundleChunk {
        /// Offset of `data` in the bundle.
        offset: u32,
        /// At most [`crate::BUNDLE_CHUNK_LEN`] bytes.
        data: &'a [u8],
    },
    /// All bytes sent: verify the bundle on the core and, if it verifies, apply it.
    BundleCommit,
    /// One Modbus request to `unit`, checked against the policy on the core.
    Transact {
        /// Chosen by the application; echoed in the outcome.
        id: u32,
        /// Modbus unit (1..=247).
        unit: u8,
        /// Who asked.
        source: RequestSource,
        /// The request PDU (function code first).
        pdu: &'a [u8],
    },
    /// Asks for [`FromCore::Counters`].
    ReadCounters,
}

/// Real-time core to application core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FromCore<'a> {
    /// The core is running (at boot and in answer to [`ToCore::Hello`]).
    Ready {
        /// [`crate::PROTOCOL_VERSION`] of the core.
        protocol: u16,
        /// True once a [`ToCore::Configure`] was accepted.
        configured: bool,
        /// Version of the applied policy bundle; `None`: every request is denied.
        policy_version: Option<u64>,
    },
    /// The line settings were applied.
    Configured,
    /// The line settings were refused.
    ConfigureRefused {
        /// Why, for people.
        reason: ConfigureRefusal,
    },
    /// The bundle verified on the core and is now the policy.
    BundleAccepted {
        /// Its version.
        version: u64,
    },
    /// The bundle was refused; the previous policy (or none) stays in force.
    BundleRefused {
        /// Why.
        reason: BundleRefusal,
    },
    /// How a [`ToCore::Transact`] ended.
    Outcome {
        /// The request's id.
        id: u32,
        /// What happened.
        #[serde(borrow)]
        outcome: Outcome<'a>,
    },
    /// The core's counters since boot.
    Counters(CoreCounters),
    /// A frame from the application could not be used (bad CRC, not a message).
    Garbled,
}

/// Why line settings were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigureRefusal {
    /// Baud outside 1200..=921600, stop bits not 1 or 2, or retries above 10.
    BadLine,
    /// The bridge name is empty or longer than 32 bytes.
    BadBridgeName,
    /// The core was configured differently earlier in this boot.
    AlreadyConfigured,
}

/// How one transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The unit answered: the response PDU, normal or exception (decode it with
    /// `Response::decode_for`).
    Response {
        /// Response PDU.
        pdu: &'a [u8],
    },
    /// A broadcast was sent (no answer expected).
    BroadcastSent,
    /// No answer within the timeout, after every retry.
    Timeout,
    /// Only garbled answers (CRC errors, noise), after every retry.
    Corrupted,
    /// The policy on the core refused the request; nothing was sent.
    Denied {
        /// `warden_policy::Reason` code.
        reason: u8,
        /// The rule that decided, if any.
        rule: Option<u16>,
    },
    /// No verified policy bundle is loaded: deny by default; nothing was sent.
    NoPolicy,
    /// The line is not configured yet; nothing was sent.
    NotConfigured,
    /// The PDU is not a request the core speaks; nothing was sent.
    BadRequest,
    /// The core's request queue is full; nothing was sent.
    Busy,
}

/// Why a bundle was refused (the core's `BundleError`, plus upload errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BundleRefusal {
    /// Larger than the core's buffer ([`crate::MAX_BUNDLE_LEN`]).
    TooLarge,
    /// A chunk did not follow the previous one, or came without a begin.
    OutOfOrder,
    /// Committed before every byte arrived.
    Incomplete,
    /// Framing: truncated, trailing bytes, bad magic or format version.
    Malformed,
    /// For another product.
    WrongProduct,
    /// Older than the bundle applied since boot.
    Rollback,
    /// The body does not match the hash in the signed header.
    BodyHashMismatch,
    /// The release-key certificate does not chain to the core's vendor root.
    Certificate,
    /// The signature over the header does not verify.
    SignatureInvalid,
    /// Signed, but the tables do not decode or exceed the core's capacity.
    Tables,
}

impl core::fmt::Display for BundleRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "the bundle is larger than the real-time core accepts",
            Self::OutOfOrder => "bundle chunks arrived out of order",
            Self::Incomplete => "the bundle was committed before all its bytes arrived",
            Self::Malformed => "the bundle is malformed (framing, magic or format version)",
            Self::WrongProduct => "the bundle is for another product",
            Self::Rollback => "the bundle is older than the one applied (rollback refused)",
            Self::BodyHashMismatch => "the bundle body does not match its signed hash",
            Self::Certificate => "the release-key certificate does not chain to the vendor root",
            Self::SignatureInvalid => "the bundle signature does not verify",
            Self::Tables => "the signed tables do not decode or exceed the core's capacity",
        })
    }
}

impl core::fmt::Display for ConfigureRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadLine => {
                "line settings out of range (baud 1200..=921600, stop bits 1 or 2, retries <= 10)"
            }
            Self::BadBridgeName => "bridge name empty or longer than 32 bytes",
            Self::AlreadyConfigured => "the core was configured differently earlier in this boot",
        })
    }
}

/// What the core has counted since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CoreCounters {
    /// Requests put on the line (each attempt).
    pub requests: u32,
    /// Answers received (normal or exception).
    pub responses: u32,
    /// Attempts that timed out.
    pub timeouts: u32,
    /// Attempts that ended with garbled bytes only.
    pub corrupted: u32,
    /// Retries after a timeout or garbled answer.
    pub retries: u32,
    /// Frames with a bad CRC on the bus.
    pub crc_errors: u32,
    /// Bytes discarded as noise on the bus.
    pub noise_bytes: u32,
    /// CRC-valid frames from another unit or for another function.
    pub unexpected_frames: u32,
    /// Requests the policy refused (including "no policy").
    pub denied: u32,
    /// Bundles refused.
    pub bundles_refused: u32,
    /// Mailbox frames dropped (bad CRC, bad COBS, too long, not a message).
    pub mailbox_errors: u32,
    /// Deepest stack use since boot, in bytes (the stack is painted at boot).
    pub stack_used: u32,
}
