//! The Modbus TCP server loop of one connection: MBAP frames in, answers out.
//!
//! One copy, used by the gateway facade and by the `hil/` TCP simulator. Each read
//! may carry several frames (a pipelining client): every complete frame is answered
//! in order, and the answers to one read leave in one write.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::MAX_PDU_LEN;
use super::tcp_frame::{FrameError, MAX_FRAME_LEN, decode_frame, encode_frame};

/// What answers the requests of a connection.
pub trait ModbusService {
    /// Answers `request_pdu` sent to `unit`: writes the response PDU (a normal or an
    /// exception response) into `out` and returns its length.
    fn answer(
        &self,
        unit: u8,
        request_pdu: &[u8],
        out: &mut [u8],
    ) -> impl Future<Output = usize> + Send;
}

/// Why a connection ended other than by the client closing it or shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The client sent bytes that are not Modbus TCP; the connection is dropped, as
    /// a device would.
    #[error("the client sent a non-modbus frame: {0}")]
    NotModbus(FrameError),
    /// Reading or writing the socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `stream` with `service` until the client closes it (`Ok`), `shutdown`
/// (`Ok`), a non-Modbus frame or an I/O error (`Err`). `buffer` is the receive
/// buffer's size (at least two frames).
pub async fn serve_connection<S: ModbusService>(
    stream: TcpStream,
    service: &S,
    buffer: usize,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let _ = stream.set_nodelay(true);
    serve_stream(stream, service, buffer, shutdown).await
}

/// [`serve_connection`] on any byte stream (the facade's is guarded by its deadlines;
/// set `TCP_NODELAY` on a TCP stream first).
pub async fn serve_stream<S: ModbusService>(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    service: &S,
    buffer: usize,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let mut buf = vec![0u8; buffer.max(2 * MAX_FRAME_LEN)];
    let mut filled = 0;
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = stream.read(&mut buf[filled..]) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        filled += read;
        let mut used_total = 0;
        out.clear();
        loop {
            let (header, request_pdu, used) = match decode_frame(&buf[used_total..filled]) {
                Ok(None) => break,
                Err(error) => return Err(ServeError::NotModbus(error)),
                Ok(Some(frame)) => frame,
            };
            let mut response = [0u8; MAX_PDU_LEN];
            let len = service
                .answer(header.unit_id, request_pdu, &mut response)
                .await;
            let mut frame = [0u8; MAX_FRAME_LEN];
            if let Ok(frame_len) = encode_frame(header, &response[..len], &mut frame) {
                out.extend_from_slice(&frame[..frame_len]);
            }
            used_total += used;
        }
        buf.copy_within(used_total..filled, 0);
        filled -= used_total;
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}
