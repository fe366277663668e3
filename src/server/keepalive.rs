//! HTTP/1.1 keep-alive without the close race, which the API server's webhook client cannot survive.
//!
//! The API server calls admission webhooks over HTTP/1.1 (kubernetes#82090) with a pool of keep-alive
//! connections that it drops after 90 s idle. A POST it writes onto a pooled connection that the server
//! is closing at that instant fails with `EOF`, and Go's transport does not retry a POST: with
//! `failurePolicy: Fail` that is a refused pod. The server therefore never closes a keep-alive
//! connection the client may be about to reuse:
//!
//! - Idle connections live [`IDLE_TIMEOUT`], longer than the client's own idle timeout, so the client
//!   is the one that closes them. hyper has a single timer for "waiting for a request head", which
//!   starts when the connection goes idle; [`HeadTimer`] gives that wait two bounds instead of one: the
//!   idle bound until the first byte of the next request arrives, [`HEAD_TIMEOUT`] from then on, so a
//!   client that trickles a head (slowloris) is still cut off within seconds.
//! - While the replica drains ([`Draining`]), every HTTP/1.1 response says `Connection: close`: the
//!   client reads that before it could reuse the connection, and so each pooled connection used during
//!   the drain ends cleanly; at the stop only connections idle for the whole drain are left to close.
//! - A connection older than [`MAX_CONNECTION_AGE`] also ends after its next response, the same clean
//!   way. The API server picks a replica when it dials (it resolves the Service's endpoints then) and
//!   then reuses its pooled connection for as long as it lives: without this, a replica that restarted
//!   or was added would get no review until the other's connections idled out, and one replica would
//!   take the whole load. With it, the API server re-dials every few seconds and spreads its reviews
//!   over the ready replicas, at the cost of one TLS handshake per connection per
//!   [`MAX_CONNECTION_AGE`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an idle HTTP/1.1 connection is kept open: longer than the 90 s after which the API server's
/// (Go's) client drops an idle pooled connection itself.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a client may take to send the rest of an HTTP/1.1 request head once its first byte came.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 connection older than this ends after its next response (`Connection: close`).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(5);

/// When the connection a request came on was accepted (a request extension set per connection).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionOpened(pub Instant);

/// Set when the replica starts draining; read by every HTTP/1.1 response from then on.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Middleware: once draining, or on a connection older than [`MAX_CONNECTION_AGE`], HTTP/1.1 responses
/// carry `Connection: close` (hyper then closes the connection after writing them). HTTP/2 has no such
/// header: its connections get a GOAWAY at the stop, after which the client opens new streams
/// elsewhere (the API server calls webhooks over HTTP/1.1).
pub async fn close_when_draining(
    State(draining): State<Draining>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = request.version() <= Version::HTTP_11;
    let old = request
        .extensions()
        .get::<ConnectionOpened>()
        .is_some_and(|opened| opened.0.elapsed() >= MAX_CONNECTION_AGE);
    let mut response = next.run(request).await;
    if http1 && (old || draining.is_draining()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A connection's byte stream that counts what it receives, so that [`HeadTimer`] can tell an idle
/// connection from one whose client has started a request.
pub struct CountingIo<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T> CountingIo<T> {
    /// Wraps `inner`; the count is this connection's alone.
    pub fn new(inner: T) -> (Self, Received) {
        let received = Received::default();
        (
            Self {
                inner,
                received: Arc::clone(&received.0),
            },
            received,
        )
    }
}

/// How many bytes a [`CountingIo`] has received.
#[derive(Clone, Default)]
pub struct Received(Arc<AtomicU64>);

impl Received {
    /// The connection's HTTP/1.1 head timer: idle for up to `idle`, then [`HEAD_TIMEOUT`] per head.
    pub fn head_timer(&self, idle: Duration) -> HeadTimer {
        HeadTimer {
            received: Arc::clone(&self.0),
            idle,
        }
    }

    /// Resolves once `within` has passed with fewer than `bytes` received (never, if they came).
    pub async fn short_of(&self, bytes: u64, within: Duration) {
        tokio::time::sleep(within).await;
        if self.0.load(Ordering::Relaxed) >= bytes {
            std::future::pending::<()>().await;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one HTTP/1.1 connection. hyper only uses it for the request-head timeout; the
/// deadline hyper asks for (now + [`HEAD_TIMEOUT`]) becomes a deadline counted from the first byte of
/// the head, and until that byte the connection may sit idle for `idle`.
pub struct HeadTimer {
    received: Arc<AtomicU64>,
    idle: Duration,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let head = deadline.saturating_duration_since(Instant::now());
        Box::pin(HeadSleep {
            received: Arc::clone(&self.received),
            received_at_start: self.received.load(Ordering::Relaxed),
            head,
            head_started: false,
            sleep: Box::pin(tokio::time::sleep(self.idle.max(head))),
        })
    }
}

struct HeadSleep {
    received: Arc<AtomicU64>,
    received_at_start: u64,
    head: Duration,
    head_started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls this whenever the connection is readable and the head is not complete yet, so
        // the first poll after bytes arrived is within a scheduling delay of their arrival.
        if !this.head_started && this.received.load(Ordering::Relaxed) != this.received_at_start {
            this.head_started = true;
            this.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + this.head);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}
