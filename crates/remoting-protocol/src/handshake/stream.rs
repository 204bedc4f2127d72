//! The channel's stream after the handshake: TLS both ways, closed at the
//! TCP level only.
//!
//! A real controller ignores a TLS `close_notify` and keeps the node
//! online, a ghost, until its ping gives up (PROTOCOL.md 5); only the
//! connection's end (FIN or reset) takes it offline. So shutting this
//! stream down flushes what TLS holds and then shuts the connection
//! under it, with no `close_notify`: no code path that shuts the channel's
//! writer (a bridge passing an end on, a task cleaning up) can leave a
//! ghost. TLS's own shutdown stays reachable through
//! [`ChannelStream::tls_mut`], for tests of exactly that.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

/// TLS over `S` whose shutdown ends `S` without a `close_notify`.
pub struct ChannelStream<S> {
    tls: TlsStream<S>,
}

impl<S> std::fmt::Debug for ChannelStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStream").finish_non_exhaustive()
    }
}

impl<S> ChannelStream<S> {
    pub(super) fn new(tls: TlsStream<S>) -> Self {
        Self { tls }
    }

    /// TLS itself, whose shutdown sends a `close_notify` that a real
    /// controller ignores (a ghost node): for tests of that.
    pub fn tls_mut(&mut self) -> &mut TlsStream<S> {
        &mut self.tls
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ChannelStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ChannelStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    /// What TLS holds goes out, then the connection ends: FIN, no
    /// `close_notify`.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
        Pin::new(self.tls.get_mut().0).poll_shutdown(cx)
    }
}
