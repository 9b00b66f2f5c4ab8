//! A Modbus TCP device shared by many callers, with a cap on concurrent connections.
//!
//! Field gateways often accept only 3 to 16 connections; the pool never opens more
//! than the configured number, reuses idle ones, drops a connection after any error,
//! and backs off exponentially when connecting fails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::fair_queue::BackoffPolicy;
use super::pdu::Request;
use super::tcp_client::TcpClient;
use super::{Answer, ClientError};

/// One TCP device (or gateway) and its connections.
pub struct TcpDevice {
    address: String,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<TcpClient>>,
    reconnect: Mutex<Reconnect>,
    backoff: BackoffPolicy,
}

#[derive(Default)]
struct Reconnect {
    failures: u32,
    not_before: Option<Instant>,
}

impl TcpDevice {
    /// A device at `address` (host:port): at most `max_connections` open at once,
    /// `timeout` per connect and per request.
    pub fn new(address: String, max_connections: usize, timeout: Duration) -> Self {
        Self {
            address,
            timeout,
            permits: Semaphore::new(max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            reconnect: Mutex::new(Reconnect::default()),
            backoff: BackoffPolicy {
                base: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
        }
    }

    /// The device address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Idle connections held open now.
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Sends `request` to `unit` over an idle or new connection and waits for the answer.
    /// Waits for a free connection when all are busy.
    pub async fn call(&self, unit: u8, request: &Request) -> Result<Answer, ClientError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::Stopped)?;
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut client = match reused {
            Some(client) => client,
            None => self.connect().await?,
        };
        let answer = client.call(unit, request).await?;
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(client);
        Ok(answer)
    }

    /// As [`Self::call`], but the whole of it (waiting for a connection, connecting,
    /// the request) within the configured timeout: for a client that is waiting.
    pub async fn call_within_timeout(
        &self,
        unit: u8,
        request: &Request,
    ) -> Result<Answer, ClientError> {
        tokio::time::timeout(self.timeout, self.call(unit, request))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect(&self) -> Result<TcpClient, ClientError> {
        {
            let state = self
                .reconnect
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(not_before) = state.not_before {
                let now = Instant::now();
                if now < not_before {
                    return Err(ClientError::Unavailable {
                        retry_in_ms: (not_before - now).as_millis() as u64,
                    });
                }
            }
        }
        let result = TcpClient::connect(&self.address, self.timeout).await;
        let mut state = self
            .reconnect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Ok(_) => *state = Reconnect::default(),
            Err(_) => {
                state.failures = state.failures.saturating_add(1);
                state.not_before = Some(Instant::now() + self.backoff.delay(state.failures));
            }
        }
        result
    }
}
