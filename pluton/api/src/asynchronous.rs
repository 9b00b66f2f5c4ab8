//! The async client on tokio, for compartments that already run a tokio runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warden_pluton::protocol::{FRAME_HEADER_LEN, Request, Response};
use zeroize::Zeroizing;

use crate::blocking::{expect_identity, expect_role};
use crate::frame_io::{decode, encode_request, response_body_len};
use crate::{ClientError, DEFAULT_TIMEOUT, IdentityInfo, Role, RoleToken, bounded, operation_name};

/// An async connection to pluton; the same protocol as [`crate::PlutonClient`].
#[derive(Debug)]
pub struct AsyncPlutonClient {
    stream: UnixStream,
    socket_path: PathBuf,
    timeout: Duration,
}

impl AsyncPlutonClient {
    /// Connect; each call then fails after [`DEFAULT_TIMEOUT`].
    pub async fn connect(socket_path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let socket_path = socket_path.as_ref().to_owned();
        let stream =
            UnixStream::connect(&socket_path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: socket_path.clone(),
                    source,
                })?;
        Ok(Self {
            stream,
            socket_path,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Present a role token (see [`crate::PlutonClient::authenticate`]).
    pub async fn authenticate(&mut self, token: &RoleToken) -> Result<Role, ClientError> {
        let request = Request::Authenticate {
            token: token.clone(),
        };
        expect_role(self.call(&request).await?)
    }

    /// Send one request and wait (at most the timeout) for its response.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let operation = operation_name(request);
        let timeout = self.timeout;
        let path = self.socket_path.clone();
        let io_error = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        let exchange = async {
            let frame = Zeroizing::new(encode_request(request)?);
            self.stream.write_all(&frame).await.map_err(io_error)?;
            let mut header = [0u8; FRAME_HEADER_LEN];
            self.stream
                .read_exact(&mut header)
                .await
                .map_err(io_error)?;
            let length = response_body_len(header, operation)?;
            let mut body = Zeroizing::new(vec![0u8; length]);
            self.stream.read_exact(&mut body).await.map_err(io_error)?;
            decode(&body, operation)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Io {
                path: self.socket_path.clone(),
                source: std::io::ErrorKind::TimedOut.into(),
            })?
    }

    /// The identity public key and device ID.
    pub async fn export_identity(&mut self) -> Result<IdentityInfo, ClientError> {
        expect_identity(
            self.call(&Request::ExportIdentity).await?,
            "export identity",
        )
    }

    /// An attestation quote over `nonce` (32 to 64 bytes).
    pub async fn quote(&mut self, nonce: &[u8]) -> Result<Vec<u8>, ClientError> {
        let request = Request::Quote {
            nonce: bounded(nonce, "nonce")?,
        };
        match self.call(&request).await? {
            Response::Quote(quote) => Ok(quote.to_vec()),
            _ => Err(ClientError::UnexpectedResponse { operation: "quote" }),
        }
    }
}
