//! Accepted TCP connections, set up for many small unary responses on few connections.
//!
//! Two settings matter, and both come from how HTTP/2 over TCP writes a unary response:
//! - Nagle's algorithm is off: a response is several small writes (headers, data, trailers),
//!   and Nagle plus delayed ACKs would hold them back ~40 ms.
//! - The stream reports that it has **no fast vectored write**. h2 then copies a DATA frame of
//!   under 1 KiB into its write buffer, so the responses finished in one turn of the runtime
//!   leave in one `write`. With vectored writes h2 chains every DATA frame of 256 bytes or more
//!   instead, and holds only one chained frame at a time: each Decide response (~500 bytes)
//!   then costs a `writev` of its own (hyperium/h2#902). Measured on one core: 1.14 `writev`
//!   per Decide against 0.27 per health Check, whose responses are under the threshold.
//!   Copying half a kilobyte is far cheaper than a system call into the loopback TCP stack.
//!
//! With TLS configured, tonic's TLS stream sits above this one and reports vectored writes
//! itself (tokio-rustls does), so h2 goes back to a flush per large frame there; not measured.
//!
//! The edge also defends the process against connections that cost without asking anything
//! (silent sockets, floods of control frames, slowloris):
//! - at most `max_connections` are held; one over the limit is closed as soon as it is accepted
//!   (it would otherwise wait in the kernel's backlog, or hold a descriptor for ever);
//! - a connection that has sent no request `handshake_timeout` after it was accepted is closed,
//!   as is one with no RPC in flight for `idle_timeout`. Requests are seen by [`ActivityLayer`]
//!   (through the connection's `ConnectInfo` in each request's extensions), so this works the
//!   same under TLS, and HTTP/2 PINGs or SETTINGS do not count as activity;
//! - when `accept` fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) the listener
//!   backs off (5 ms doubling to 1 s) instead of spinning, and serves again once they return.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry;

/// How the listener guards itself; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// First and longest pause after a failed `accept` for want of resources.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepted connections as [`Connection`]s, with `TCP_NODELAY` set and the edge limits applied.
/// Never yields an error: failed accepts are retried (after a backoff when resources ran out).
pub fn incoming(listener: TcpListener, limits: EdgeLimits) -> Incoming {
    Incoming { listener, limits, open: Arc::default(), backoff: None, delay: ACCEPT_BACKOFF_MIN }
}

/// The stream of accepted connections (see [`incoming`]).
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    limits: EdgeLimits,
    /// Connections open now; each holds an [`OpenGuard`].
    open: Arc<AtomicUsize>,
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            let stream = match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => stream,
                Err(error) if out_of_resources(&error) => {
                    telemetry::record_connection_cut("accept_failed");
                    tracing::warn!(%error, backoff_ms = this.delay.as_millis() as u64, "accept failed; backing off");
                    this.backoff = Some(Box::pin(tokio::time::sleep(this.delay)));
                    this.delay = (this.delay * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
                // The peer gave up before we took it (ECONNABORTED and the like): next.
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            this.delay = ACCEPT_BACKOFF_MIN;
            let open = this.open.fetch_add(1, Ordering::Relaxed) + 1;
            let guard = OpenGuard(this.open.clone());
            if open > this.limits.max_connections {
                telemetry::record_connection_cut("over_limit");
                tracing::debug!(
                    max_connections = this.limits.max_connections,
                    "connection over the limit closed"
                );
                drop((stream, guard));
                continue;
            }
            telemetry::record_connections_open(open);
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            return Poll::Ready(Some(Ok(Connection::new(stream, guard, this.limits))));
        }
    }
}

/// The HTTP listener's connections for `axum::serve` (the VAST edge and the console): the same
/// [`incoming`] with the same limits as the gRPC listener, counted on their own. Its requests
/// carry `axum::extract::ConnectInfo<ConnInfo>`, where [`ActivityLayer`] finds the connection.
#[derive(Debug)]
pub struct HttpListener {
    incoming: Incoming,
    local: std::net::SocketAddr,
}

impl HttpListener {
    pub fn new(listener: TcpListener, limits: EdgeLimits) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self { incoming: incoming(listener, limits), local })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        use tokio_stream::StreamExt as _;
        loop {
            // `Incoming` retries failed accepts itself and never ends.
            if let Some(Ok(connection)) = self.incoming.next().await {
                let remote = connection.stream.peer_addr().unwrap_or(self.local);
                return (connection, remote);
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>> for ConnInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        stream.io().connect_info()
    }
}

/// Accept errors that say the process or the system is out of something: retrying at once
/// would spin.
fn out_of_resources(error: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux).
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12)) || error.kind() == io::ErrorKind::OutOfMemory
}

/// Counts a connection as open while it lives.
#[derive(Debug)]
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        telemetry::record_connections_open(open);
    }
}

/// What the requests of one connection are doing, shared by the connection and the
/// [`ActivityLayer`] (which finds it in each request's extensions).
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    requested: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last RPC ended, in ms since `accepted`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.requested.load(Ordering::Relaxed) {
            self.requested.store(true, Ordering::Relaxed);
        }
    }

    fn ended(&self) {
        self.idle_since_ms.store(self.accepted.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `ConnectInfo` of a [`Connection`]: its addresses, and its [`Activity`].
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// A TCP stream whose writes are never vectored, closed when it overstays its timeouts (see
/// the module docs).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    _open: OpenGuard,
    activity: Arc<Activity>,
    limits: EdgeLimits,
    /// The next moment to look at `activity`.
    check: Pin<Box<Sleep>>,
    cut: bool,
}

impl Connection {
    fn new(stream: TcpStream, open: OpenGuard, limits: EdgeLimits) -> Self {
        let accepted = Instant::now();
        let activity = Arc::new(Activity {
            accepted,
            requested: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        });
        let check = Box::pin(tokio::time::sleep_until(accepted + limits.handshake_timeout));
        Self { stream, _open: open, activity, limits, check, cut: false }
    }

    /// Whether the connection has overstayed: looked at only when the check timer fires, so
    /// reads and writes cost nothing extra. Registers the timer with `cx` otherwise.
    fn overstayed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.cut {
            return true;
        }
        while self.check.as_mut().poll(cx).is_ready() {
            let a = &self.activity;
            let now = Instant::now();
            let (deadline, reason) = if !a.requested.load(Ordering::Relaxed) {
                (a.accepted + self.limits.handshake_timeout, "handshake_timeout")
            } else if a.in_flight.load(Ordering::Relaxed) > 0 {
                (now + self.limits.idle_timeout, "idle_timeout")
            } else {
                let idle_since = a.accepted + Duration::from_millis(a.idle_since_ms.load(Ordering::Relaxed));
                (idle_since + self.limits.idle_timeout, "idle_timeout")
            };
            if deadline <= now {
                telemetry::record_connection_cut(reason);
                tracing::debug!(reason, "connection closed");
                self.cut = true;
                return true;
            }
            self.check.as_mut().reset(deadline);
        }
        false
    }
}

fn cut_off() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection closed by the server's handshake or idle timeout")
}

impl Connected for Connection {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo { tcp: self.stream.connect_info(), activity: self.activity.clone() }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.overstayed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A peer that stops reading blocks our writes: the timeout must fire here too.
        if this.overstayed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.overstayed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Marks each request's connection active while the request is served (see [`Activity`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// The service of [`ActivityLayer`].
#[derive(Clone, Debug)]
pub struct ActivityService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ActivityService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let activity = extensions
            .get::<ConnInfo>()
            .or_else(|| {
                extensions
                    .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                    .map(|tls| tls.get_ref())
            })
            .or_else(|| extensions.get::<axum::extract::ConnectInfo<ConnInfo>>().map(|info| &info.0))
            .map(|info| info.activity.clone());
        if let Some(activity) = &activity {
            activity.started();
        }
        InFlight { inner: self.inner.call(request), activity: activity.map(Ended) }
    }
}

/// Ends the request's activity when dropped (answered, failed or cancelled).
#[derive(Debug)]
struct Ended(Arc<Activity>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended();
    }
}

pin_project_lite::pin_project! {
    /// A response on its way; the connection counts it in flight until it is ready.
    #[derive(Debug)]
    pub struct InFlight<F> {
        #[pin]
        inner: F,
        activity: Option<Ended>,
    }
}

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        this.activity.take();
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a panic is the failure report

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn connections_write_through_unvectored_without_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = EdgeLimits {
            max_connections: 8,
            handshake_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        };
        let mut accepted = Box::pin(incoming(listener, limits));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = accepted.next().await.unwrap().unwrap();

        // h2 picks its copy threshold from this: it must say "not vectored".
        assert!(!server.is_write_vectored());
        assert!(server.stream.nodelay().unwrap());
        assert_eq!(server.connect_info().tcp.remote_addr(), Some(client.local_addr().unwrap()));

        // A vectored write goes out one slice at a time (tokio's default for such streams).
        let slices = [io::IoSlice::new(b"ping "), io::IoSlice::new(b"pong")];
        assert_eq!(server.write_vectored(&slices).await.unwrap(), 5);
        server.write_all(b"pong").await.unwrap();
        server.write_all(b"!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "ping pong!");

        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
