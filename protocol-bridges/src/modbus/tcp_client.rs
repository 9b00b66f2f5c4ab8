//! An async Modbus TCP client: one connection, one request in flight.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pdu::{PduError, Request, Response};
use super::tcp_frame::{FrameError, MAX_FRAME_LEN, MbapHeader, decode_frame, encode_frame};

/// The answer to one request, owned (copied out of the frame buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Register values read.
    Registers(Vec<u16>),
    /// A single-register write was echoed.
    Written,
    /// The device answered with an exception.
    Exception(super::pdu::ExceptionCode),
}

/// A Modbus TCP connection to one device.
pub struct TcpClient {
    stream: TcpStream,
    next_transaction: u16,
    timeout: Duration,
    buf: Vec<u8>,
}

impl TcpClient {
    /// Connects to `address` (host:port) with a connect and per-request `timeout`.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Io(e.kind()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ClientError::Io(e.kind()))?;
        Ok(Self {
            stream,
            next_transaction: 1,
            timeout,
            buf: Vec::with_capacity(MAX_FRAME_LEN),
        })
    }

    /// Sends `request` to `unit` and waits for its answer.
    ///
    /// The response's transaction identifier and unit must match the request's;
    /// anything else is an error after which the connection should be dropped.
    pub async fn call(&mut self, unit: u8, request: &Request) -> Result<Answer, ClientError> {
        tokio::time::timeout(self.timeout, self.call_inner(unit, request))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn call_inner(&mut self, unit: u8, request: &Request) -> Result<Answer, ClientError> {
        let transaction_id = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        let mut pdu = [0u8; 8];
        let pdu_len = request.encode(&mut pdu)?;
        let mut frame = [0u8; MAX_FRAME_LEN];
        let header = MbapHeader {
            transaction_id,
            unit_id: unit,
        };
        let frame_len = encode_frame(header, &pdu[..pdu_len], &mut frame)?;
        self.stream
            .write_all(&frame[..frame_len])
            .await
            .map_err(|e| ClientError::Io(e.kind()))?;

        self.buf.clear();
        loop {
            if let Some((got, pdu, _used)) = decode_frame(&self.buf)? {
                if got.transaction_id != transaction_id || got.unit_id != unit {
                    return Err(ClientError::TransactionMismatch {
                        expected: transaction_id,
                        got: got.transaction_id,
                    });
                }
                return Ok(match Response::decode_for(request, pdu)? {
                    Response::Registers(registers) => Answer::Registers(registers.iter().collect()),
                    Response::WroteSingleRegister { .. } => Answer::Written,
                    Response::Exception { code, .. } => Answer::Exception(code),
                });
            }
            let mut chunk = [0u8; MAX_FRAME_LEN];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| ClientError::Io(e.kind()))?;
            if read == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Why a Modbus TCP call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The device did not answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(std::io::ErrorKind),
    /// The device closed the connection.
    #[error("device closed the connection")]
    Closed,
    /// The response's transaction identifier did not match.
    #[error("response transaction {got} does not answer request {expected}")]
    TransactionMismatch {
        /// Sent.
        expected: u16,
        /// Received.
        got: u16,
    },
    /// The response frame was malformed.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The response PDU was malformed.
    #[error("bad response: {0}")]
    Pdu(#[from] PduError),
}
