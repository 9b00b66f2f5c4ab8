//! The deadlines on one connection: a request answered in time, no idling forever.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::admission::Admission;

/// How long a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From a request's first byte (or the connection's start) to the first byte of
    /// its answer: the header timeout. A client sending a byte now and then cannot
    /// stretch it.
    pub request: Duration,
    /// Without a byte read or written for this long, the connection is closed.
    pub idle: Duration,
}

/// A connection holding an [`Admission`], closed (an I/O error) when a deadline
/// passes or the gate gives its slot to a newcomer.
///
/// A request is what the client sends before the server writes; an answer is what
/// the server writes. Both HTTP/1.1 and Modbus TCP follow that turn-taking.
#[derive(Debug)]
pub struct GuardedStream<S> {
    inner: S,
    admission: Admission,
    deadlines: Deadlines,
    /// When the unanswered request started, if one is unanswered.
    request_started: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> GuardedStream<S> {
    /// Guards `inner`; its request deadline starts now.
    pub fn new(inner: S, admission: Admission, deadlines: Deadlines) -> Self {
        let now = Instant::now();
        let evicted = Box::pin(admission.evicted());
        Self {
            inner,
            admission,
            deadlines,
            request_started: Some(now),
            timer: Box::pin(tokio::time::sleep_until(now + deadlines.request)),
            evicted,
        }
    }

    /// The guarded stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn deadline(&self) -> Instant {
        let idle = self.admission.activity().last_progress() + self.deadlines.idle;
        match self.request_started {
            Some(started) => idle.min(started + self.deadlines.request),
            None => idle,
        }
    }

    /// Ready with the error that ends the connection, or pending (with the timer and
    /// the eviction armed to wake the task).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection gave its slot to a newcomer",
            ));
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            // The timer is moved only when it fires (not on every byte): check the
            // real deadline now.
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                let what = if self
                    .request_started
                    .is_some_and(|started| deadline >= started + self.deadlines.request)
                {
                    "request not completed and answered in time"
                } else {
                    "connection idle too long"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    fn read_progress(&mut self) {
        let now = Instant::now();
        self.admission.activity().progressed(now, false);
        if self.request_started.is_none() {
            self.request_started = Some(now);
        }
    }

    /// A write's outcome: bytes written are an answer; a pending write still runs
    /// under the deadlines.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.admission.activity().progressed(Instant::now(), true);
                    self.request_started = None;
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_ended(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.admission.is_evicted() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection gave its slot to a newcomer",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_progress();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_ended(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.poll_ended(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.poll_ended(cx).map(Err),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{AdmissionGate, Limits};

    const DEADLINES: Deadlines = Deadlines {
        request: Duration::from_secs(10),
        idle: Duration::from_secs(30),
    };

    fn guarded(
        gate: &AdmissionGate,
    ) -> (
        GuardedStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let admission = gate.admit([127, 0, 0, 1].into()).expect("room");
        (GuardedStream::new(server, admission, DEADLINES), client)
    }

    fn gate() -> AdmissionGate {
        AdmissionGate::new(Limits {
            total: 8,
            per_address: 8,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_ends_at_the_request_deadline() {
        let gate = gate();
        let (mut server, mut client) = guarded(&gate);
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut buf = [0u8; 16];
        let error = loop {
            match server.read(&mut buf).await {
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), DEADLINES.request);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_connection_idles_until_the_idle_deadline() {
        let gate = gate();
        let (mut server, mut client) = guarded(&gate);
        client.write_all(b"request").await.expect("write");
        let mut buf = [0u8; 16];
        let _ = server.read(&mut buf).await.expect("read");
        tokio::time::advance(Duration::from_secs(9)).await;
        server.write_all(b"answer").await.expect("answer");
        let answered = Instant::now();
        let error = server.read(&mut buf).await.expect_err("idle");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(answered.elapsed(), DEADLINES.idle);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_ends_at_once() {
        let gate = AdmissionGate::new(Limits {
            total: 1,
            per_address: 1,
        });
        let (mut server, _client) = guarded(&gate);
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            server.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        tokio::time::advance(crate::admission::UNANSWERED_YIELDS_AFTER).await;
        let _newcomer = gate
            .admit([127, 0, 0, 2].into())
            .expect("the silent one yields");
        let error = reading.await.expect("join").expect_err("evicted");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }
}
