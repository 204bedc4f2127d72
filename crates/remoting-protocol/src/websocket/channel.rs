//! [`WsChannel`]: the channel's chunk stream over binary messages, as a
//! plain byte stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, trace};

use super::{KeepAlive, MAX_MESSAGE_OUT};
use crate::chunk::{ChunkHeader, SEND_CHUNK_PAYLOAD};

/// Longest timer we arm; longer settings mean "never" in practice and would
/// overflow `Instant` arithmetic.
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The channel's byte stream over a WebSocket connection: `AsyncRead +
/// AsyncWrite`, so whatever runs over a TCP channel runs over it unchanged.
///
/// - Writing: the bytes must be the chunk stream (PROTOCOL.md 2.6). Each
///   complete chunk goes out as one binary message, a chunk of more than
///   8192 bytes as several (all but the last piece marked "more follows"),
///   so no message exceeds [`MAX_MESSAGE_OUT`]. An incomplete chunk waits
///   here (never more than one chunk is held).
/// - Reading: the payloads of binary messages, concatenated (a chunk may
///   straddle messages). Text messages are an error; a close from the
///   controller is the end of the stream.
/// - Keepalive ([`KeepAlive`]): pings are answered (and the answers flushed)
///   while reading; our own pings go out every `ping_interval` while the
///   channel is being read; a read fails with `TimedOut` after
///   `idle_timeout` without any message, a write after `write_timeout`
///   without progress.
/// - Shutting down the write side sends a normal close (1000).
///
/// The read and write sides may be polled from different tasks (as after
/// `tokio::io::split`): what the read side sends (pings, close replies)
/// wakes the writer task too, so neither loses its wake-up to the other.
pub struct WsChannel<S> {
    ws: WebSocketStream<S>,
    keepalive: KeepAlive,
    /// The rest of the binary message being read.
    incoming: Bytes,
    /// The controller closed, or the stream ended: reads return EOF.
    read_done: bool,
    /// A read failed: later reads fail the same way (tungstenite would
    /// report a plain end).
    read_failed: Option<(io::ErrorKind, String)>,
    /// When the last message (of any kind) arrived.
    last_heard: Instant,
    /// Fires at `last_heard + idle_timeout` at the earliest; re-armed lazily
    /// so that a message costs no timer update.
    idle: Pin<Box<Sleep>>,
    ping: Interval,
    /// A ping is owed (the sink was not ready when it fell due).
    ping_due: bool,
    /// The read side queued something (a ping, a close reply) to flush.
    flush_due: bool,
    /// The waker of the last write-side poll, woken too by the read side's
    /// sends (they take over the sink's write wake-up slot).
    writer: Option<Waker>,
    /// Chunk bytes written but not yet sent: at most one chunk.
    outgoing: BytesMut,
    /// A write has been waiting since the write deadline was armed.
    write_waiting: bool,
    write_deadline: Pin<Box<Sleep>>,
    close_sent: bool,
}

impl<S> fmt::Debug for WsChannel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsChannel")
            .field("keepalive", &self.keepalive)
            .field("incoming", &self.incoming.len())
            .field("read_done", &self.read_done)
            .field("outgoing", &self.outgoing.len())
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<S> WsChannel<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an upgraded connection; must run inside a tokio runtime (timers).
    pub(crate) fn new(ws: WebSocketStream<S>, keepalive: KeepAlive) -> Self {
        let now = Instant::now();
        let period = keepalive
            .ping_interval
            .clamp(Duration::from_millis(1), MAX_TIMER);
        let mut ping = tokio::time::interval_at(now + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            ws,
            keepalive,
            incoming: Bytes::new(),
            read_done: false,
            read_failed: None,
            last_heard: now,
            idle: Box::pin(tokio::time::sleep_until(after(now, keepalive.idle_timeout))),
            ping,
            ping_due: false,
            flush_due: false,
            writer: None,
            outgoing: BytesMut::with_capacity(MAX_MESSAGE_OUT),
            write_waiting: false,
            write_deadline: Box::pin(tokio::time::sleep_until(now)),
            close_sent: false,
        }
    }

    /// Sends a close frame with status 1000 (normal) and flushes, within
    /// `timeout`. Failures are only logged: the connection is going anyway.
    pub async fn close_normally(&mut self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.shutdown()).await {
            Ok(Ok(())) => debug!("WebSocket close sent"),
            Ok(Err(err)) => debug!(%err, "could not send the WebSocket close"),
            Err(_) => debug!(?timeout, "the WebSocket close did not go out in time"),
        }
    }

    /// The transport underneath (to shut TCP down after the close).
    pub fn get_mut(&mut self) -> &mut S {
        self.ws.get_mut()
    }

    /// Sends our ping when due and flushes what the read side queued.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.ping.poll_tick(cx).is_ready() {
            self.ping_due = true;
        }
        // No pings after our close: tungstenite would refuse them.
        self.ping_due &= !self.close_sent;
        if !self.ping_due && !self.flush_due {
            return Ok(());
        }
        let waker = self.read_side_waker(cx);
        let mut cx = Context::from_waker(&waker);
        if self.ping_due {
            match Pin::new(&mut self.ws).poll_ready(&mut cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(ready) => {
                    ready.map_err(write_error)?;
                    Pin::new(&mut self.ws)
                        .start_send(Message::Ping(Bytes::new()))
                        .map_err(write_error)?;
                    trace!("WebSocket ping sent");
                    self.ping_due = false;
                    self.flush_due = true;
                }
            }
        }
        self.poll_flush_from_reader(&mut cx)
    }

    /// Flushes for the read side; `cx` carries [`Self::read_side_waker`].
    fn poll_flush_from_reader(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.flush_due {
            if let Poll::Ready(flushed) = Pin::new(&mut self.ws).poll_flush(cx) {
                self.flush_due = false;
                flushed.map_err(write_error)?;
            }
        }
        Ok(())
    }

    /// The waker for the read side's sends: the sink keeps one write
    /// wake-up slot, so it must wake the writer task as well.
    fn read_side_waker(&self, cx: &Context<'_>) -> Waker {
        match &self.writer {
            Some(writer) if !writer.will_wake(cx.waker()) => Waker::from(Arc::new(BothWaker {
                reader: cx.waker().clone(),
                writer: writer.clone(),
            })),
            _ => cx.waker().clone(),
        }
    }

    /// `Pending` while the idle deadline is ahead, the idle error after it.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = after(self.last_heard, self.keepalive.idle_timeout);
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no WebSocket frame from the controller for {:?}: the connection is dead (a proxy may have stopped forwarding)",
                        self.keepalive.idle_timeout
                    ),
                )));
            }
            self.idle.as_mut().reset(deadline);
        }
    }

    fn note_writer(&mut self, cx: &Context<'_>) {
        match &self.writer {
            Some(writer) if writer.will_wake(cx.waker()) => {}
            _ => self.writer = Some(cx.waker().clone()),
        }
    }

    /// Applies the write timeout to a write-side poll.
    fn timed<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.write_waiting = false;
            return poll;
        }
        if !self.write_waiting {
            self.write_waiting = true;
            let deadline = after(Instant::now(), self.keepalive.write_timeout);
            self.write_deadline.as_mut().reset(deadline);
        }
        ready!(self.write_deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "could not send to the controller for {:?}: the WebSocket connection is stuck",
                self.keepalive.write_timeout
            ),
        )))
    }

    /// Sends every complete chunk held.
    fn poll_send_chunks(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(header) = self.complete_chunk() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(write_error)?;
            let message = self.take_message(header);
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(message))
                .map_err(write_error)?;
        }
        Poll::Ready(Ok(()))
    }

    fn complete_chunk(&self) -> Option<ChunkHeader> {
        let header = ChunkHeader::peek(&self.outgoing)?;
        (self.outgoing.len() >= 2 + header.len).then_some(header)
    }

    /// The next message of the complete chunk at the front: the chunk
    /// itself (no copy), or its first 8192 bytes as a chunk of their own,
    /// leaving the rest behind a rewritten header.
    fn take_message(&mut self, header: ChunkHeader) -> Bytes {
        if header.len <= SEND_CHUNK_PAYLOAD {
            return self.outgoing.split_to(2 + header.len).freeze();
        }
        let mut piece = BytesMut::with_capacity(MAX_MESSAGE_OUT);
        let first = ChunkHeader {
            len: SEND_CHUNK_PAYLOAD,
            last: false,
        };
        piece.extend_from_slice(&first.to_bytes());
        piece.extend_from_slice(&self.outgoing[2..MAX_MESSAGE_OUT]);
        let rest = ChunkHeader {
            len: header.len - SEND_CHUNK_PAYLOAD,
            last: header.last,
        };
        // The two bytes before the rest of the payload (already copied)
        // become its header.
        self.outgoing.advance(SEND_CHUNK_PAYLOAD);
        self.outgoing[..2].copy_from_slice(&rest.to_bytes());
        piece.freeze()
    }

    /// Sends what is complete, then the close (once), and flushes.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_chunks(cx))?;
        if !self.close_sent {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(write_error)?;
            if !self.outgoing.is_empty() {
                debug!(
                    bytes = self.outgoing.len(),
                    "dropping an unfinished chunk at close"
                );
                self.outgoing.clear();
            }
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }));
            self.close_sent = true;
            self.ping_due = false;
            match Pin::new(&mut self.ws).start_send(close) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(err) => return Poll::Ready(Err(write_error(err))),
            }
        }
        match ready!(Pin::new(&mut self.ws).poll_flush(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(write_error(err))),
        }
    }

    /// Takes from `buf` at most what completes the chunk being written.
    /// Must not be called while a complete chunk is held.
    fn take_in(&mut self, buf: &[u8]) -> usize {
        let held = self.outgoing.len();
        let want = match ChunkHeader::peek(&self.outgoing) {
            None => 2 - held,
            Some(header) => (2 + header.len).saturating_sub(held),
        };
        let n = want.min(buf.len());
        self.outgoing.extend_from_slice(&buf[..n]);
        n
    }

    /// Ends reading with `err`. Bytes already put in the caller's buffer
    /// (`filled`) are delivered first; the error comes with the next read.
    fn fail(&mut self, err: io::Error, filled: bool) -> Poll<io::Result<()>> {
        if !filled {
            return Poll::Ready(Err(err));
        }
        self.read_failed = Some((err.kind(), err.to_string()));
        Poll::Ready(Ok(()))
    }

    /// One read: buffered message bytes, and then as many further binary
    /// messages as have already arrived and fit (one message is one chunk,
    /// at most 8 KiB: taking them one per read would cost the bridge a
    /// write to the engine, and the engine a wake-up, per chunk); with
    /// nothing buffered, waits for the next message, meanwhile keeping the
    /// connection alive.
    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut filled = false;
        loop {
            if !self.incoming.is_empty() {
                let n = self.incoming.len().min(buf.remaining());
                buf.put_slice(&self.incoming[..n]);
                self.incoming.advance(n);
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                filled = true;
            }
            if self.read_done {
                return Poll::Ready(Ok(()));
            }
            if let Err(err) = self.poll_keepalive(cx) {
                return self.fail(err, filled);
            }
            // A ping's pong is queued here and flushed by the next poll.
            let message = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending if filled => return Poll::Ready(Ok(())),
                Poll::Pending => return self.poll_idle(cx),
                Poll::Ready(None) => {
                    self.read_done = true;
                    continue;
                }
                Poll::Ready(Some(Err(err))) => return self.fail(read_error(err), filled),
                Poll::Ready(Some(Ok(message))) => message,
            };
            self.last_heard = Instant::now();
            match message {
                Message::Binary(data) => self.incoming = data,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Text(_) => {
                    let err = io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the controller sent a text WebSocket message; the channel carries only \
                         binary messages",
                    );
                    return self.fail(err, filled);
                }
                Message::Close(frame) => {
                    debug!(?frame, "the controller closed the WebSocket connection");
                    self.read_done = true;
                    // Best effort: push our close reply out now; a later
                    // write-side flush retries it.
                    self.flush_due = true;
                    let waker = self.read_side_waker(cx);
                    if let Err(err) = self.poll_flush_from_reader(&mut Context::from_waker(&waker))
                    {
                        debug!(%err, "could not answer the controller's WebSocket close");
                    }
                }
            }
        }
    }
}

impl<S> AsyncRead for WsChannel<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, text)) = &this.read_failed {
            return Poll::Ready(Err(io::Error::new(*kind, text.clone())));
        }
        let poll = this.poll_read_inner(cx, buf);
        if let Poll::Ready(Err(err)) = &poll {
            this.read_failed = Some((err.kind(), err.to_string()));
        }
        poll
    }
}

impl<S> AsyncWrite for WsChannel<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.note_writer(cx);
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut accepted = 0;
        loop {
            match this.poll_send_chunks(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending if accepted > 0 => break,
                Poll::Pending => return this.timed(cx, Poll::Pending),
            }
            if accepted == buf.len() {
                break;
            }
            accepted += this.take_in(&buf[accepted..]);
        }
        this.timed(cx, Poll::Ready(Ok(accepted)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.note_writer(cx);
        let poll = match this.poll_send_chunks(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.ws).poll_flush(cx).map_err(write_error),
            other => other,
        };
        this.timed(cx, poll)
    }

    /// Sends what is complete, then a normal close (1000), and flushes. An
    /// unfinished chunk is dropped: the controller would discard it anyway.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.note_writer(cx);
        let poll = this.poll_close(cx);
        this.timed(cx, poll)
    }
}

/// Wakes both tasks sharing the sink's write wake-up slot.
struct BothWaker {
    reader: Waker,
    writer: Waker,
}

impl Wake for BothWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake_by_ref();
        self.writer.wake_by_ref();
    }
}

/// `now + d`, bounded so that it cannot overflow.
fn after(now: Instant, d: Duration) -> Instant {
    now + d.min(MAX_TIMER)
}

fn read_error(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the controller closed the connection without a WebSocket close",
        ),
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::Error::new(
            io::ErrorKind::NotConnected,
            "the WebSocket connection is closed",
        ),
        WsError::Capacity(err) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the controller sent an oversized WebSocket message: {err}"),
        ),
        WsError::Protocol(err) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol error from the controller: {err}"),
        ),
        other => io::Error::other(format!("WebSocket read failed: {other}")),
    }
}

fn write_error(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::SendAfterClosing) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the WebSocket connection is closed",
        ),
        other => io::Error::other(format!("WebSocket write failed: {other}")),
    }
}

#[cfg(test)]
mod tests;
