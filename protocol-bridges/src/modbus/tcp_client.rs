//! An async Modbus TCP client: one connection, one request in flight.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pdu::{Request, Response};
use super::tcp_frame::{MAX_FRAME_LEN, MbapHeader, decode_frame, encode_frame};
pub use super::{Answer, ClientError};

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
        let mut pdu = [0u8; super::MAX_PDU_LEN];
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
                if got.transaction_id != transaction_id {
                    return Err(ClientError::TransactionMismatch {
                        expected: transaction_id,
                        got: got.transaction_id,
                    });
                }
                if got.unit_id != unit {
                    return Err(ClientError::WrongUnit {
                        expected: unit,
                        got: got.unit_id,
                    });
                }
                return Ok(Response::decode_for(request, pdu)?.into());
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
