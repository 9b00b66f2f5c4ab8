//! Modbus: the shared wire formats and the async drivers around them.
//!
//! The PDU, MBAP and RTU codecs live in the `no_std` crate `warden-modbus` and are
//! re-exported here ([`pdu`], [`tcp_frame`], [`rtu`]). Only the drivers in this
//! module touch sockets, serial ports and clocks.

pub use warden_modbus::{
    MAX_PDU_LEN, MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS, pdu, rtu,
    tcp_frame,
};

pub mod fair_queue;
pub mod precise_timer;
pub mod rtu_bus;
pub mod tcp_client;
pub mod tcp_pool;
pub mod tcp_server;

use pdu::{ExceptionCode, Response};

/// The answer to one request, owned (copied out of the frame buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Register values read.
    Registers(Vec<u16>),
    /// Coils or discrete inputs read.
    Bits(Vec<bool>),
    /// A write was confirmed.
    Written,
    /// The device answered with an exception.
    Exception(ExceptionCode),
}

impl From<Response<'_>> for Answer {
    fn from(response: Response<'_>) -> Self {
        match response {
            Response::Registers(registers) => Self::Registers(registers.iter().collect()),
            Response::Bits(bits) => Self::Bits(bits.iter().collect()),
            Response::WroteSingleRegister { .. }
            | Response::WroteSingleCoil { .. }
            | Response::WroteMultiple { .. } => Self::Written,
            Response::Exception { code, .. } => Self::Exception(code),
        }
    }
}

/// Why a Modbus call failed (no answer, or an answer that was not Modbus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The device did not answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// An answer arrived but was garbled (CRC errors, noise).
    #[error("the answer was garbled (crc error or noise on the line)")]
    Corrupted,
    /// The connection or port failed.
    #[error("connection error: {0}")]
    Io(std::io::ErrorKind),
    /// The device closed the connection.
    #[error("device closed the connection")]
    Closed,
    /// The device is backing off after failures; the request was not sent.
    #[error("device unavailable after repeated failures; retrying in {retry_in_ms} ms")]
    Unavailable {
        /// When the bridge will try again.
        retry_in_ms: u64,
    },
    /// The bus task has stopped (shutdown).
    #[error("the bus has stopped")]
    Stopped,
    /// The response's transaction identifier did not match.
    #[error("response transaction {got} does not answer request {expected}")]
    TransactionMismatch {
        /// Sent.
        expected: u16,
        /// Received.
        got: u16,
    },
    /// A Modbus TCP answer came from another unit than the one asked (a gateway that
    /// mixed up its lines); it is refused and the connection dropped.
    #[error("the answer came from unit {got}, not from unit {expected} that was asked")]
    WrongUnit {
        /// Asked.
        expected: u8,
        /// Answered.
        got: u8,
    },
    /// The response frame was malformed.
    #[error("bad frame: {0}")]
    Frame(#[from] tcp_frame::FrameError),
    /// The response PDU was malformed.
    #[error("bad response: {0}")]
    Pdu(#[from] pdu::PduError),
}
