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

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Accepted connections as [`Connection`]s, with `TCP_NODELAY` set.
pub fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = io::Result<Connection>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        Ok(Connection(stream))
    })
}

/// A TCP stream whose writes are never vectored (see the module docs for why).
#[derive(Debug)]
pub struct Connection(TcpStream);

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
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
        let mut accepted = Box::pin(incoming(listener));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = accepted.next().await.unwrap().unwrap();

        // h2 picks its copy threshold from this: it must say "not vectored".
        assert!(!server.is_write_vectored());
        assert!(server.0.nodelay().unwrap());
        assert_eq!(server.connect_info().remote_addr(), Some(client.local_addr().unwrap()));

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
