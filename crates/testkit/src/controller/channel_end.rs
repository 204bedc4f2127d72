//! How an accepted channel ends, as the real controller stack decides it
//! (PROTOCOL.md sections 3 and 5). The peer's chunk stream runs over
//! [`ChannelStream`], which sits between the transport (TLS, or the
//! WebSocket pump) and the peer and applies the unforgiving rules a test
//! controller is easily kinder than:
//!
//! | transport | what the agent does | what happens here | PROTOCOL.md |
//! |---|---|---|---|
//! | JNLP4 | TLS `close_notify`, then FIN (or nothing) | ignored: reads stop, the channel and the node stay online ("already connected" for a new connection without the cookie) until the ping timeout | 5, row 1 |
//! | JNLP4 | TCP FIN without `close_notify`, or RST | the read fails, the peer sees an error, the node goes offline at once | 5, rows 2 and 3 |
//! | JNLP4 | the agent process dies | the kernel closes the socket without `close_notify`: as above | 5, row 4 |
//! | both | a `Channel$CloseCommand` at a command boundary | answered with the controller's own close, replayed from `agent-initiated-close.jsonl` seq 20; the channel ends and the node goes offline at once | 5, row 5 |
//! | both | a `Channel$CloseCommand` answering the peer's own close | passed to the peer, which ends the channel (`session-accepted.jsonl` seq 42-44) | 2.6 |
//! | WebSocket | a close frame | answered with the same code (1000 for a normal close); `ConnectionLost` at once | 3 |
//! | WebSocket | TCP FIN or RST without a close frame, the agent dies | `ConnectionLost` at once (no ghost: Jetty notices) | 3 |
//! | WebSocket | no frame at all for the idle timeout (e.g. pings unanswered) | close 1001, `ConnectionLost` | 3 |
//! | WebSocket | a message over 64 KiB | close 1009, `ConnectionLost` | 3 |
//!
//! When the controller ends a WebSocket channel (kicked, disconnected, the
//! peer finished) it sends close 1000.
//!
//! The ping timeout (remoting's `PingThread`, minutes on a real Jenkins;
//! [`super::ControllerBuilder::ping_timeout`]) is what finally drops a ghost.
//! A live agent answers pings through its engine, so only ghosts time out.
//!
//! Over JNLP4 detection happens as the peer reads: like the real controller,
//! a peer must keep reading its channel to learn that the agent left. The
//! WebSocket pump notices the end of its connection on its own
//! ([`EndSignals::dropped`]), as Jetty does.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use remoting_protocol::close::is_close;
use remoting_protocol::scan::ChunkScanner;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// A byte stream a channel can run over.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The transport under a [`ChannelStream`]: TLS for JNLP4, the WebSocket
/// pump's end of a pipe for WebSocket.
pub(super) type BoxedIo = Box<dyn Io>;

/// Which transport a channel runs over: it decides what a clean end of the
/// inner stream means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// A clean end of TLS is the agent's `close_notify`, which the real
    /// stack ignores (a ghost).
    Jnlp4,
    /// The pump ended the stream because the WebSocket connection ended.
    WebSocket,
}

/// Why an accepted channel ended, as recorded in
/// [`super::ControllerEvent::ChannelClosed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelEnd {
    /// The agent sent `Channel$CloseCommand`; the controller answered with its own.
    CloseCommand,
    /// The connection was closed or reset without `close_notify`, or failed.
    ConnectionLost,
    /// A ghost (the agent's `close_notify` was ignored) outlived the ping timeout.
    PingTimeout,
    /// Another connection took the node over with the channel's cookie.
    TakenOver,
    /// [`super::TestController::disconnect`] or shutdown.
    Disconnected,
    /// The peer (a script) finished on its own.
    PeerFinished,
}

/// What the stream tells the controller's accept task.
#[derive(Debug, Default)]
pub(super) struct EndSignals {
    /// Cancelled when the agent's `close_notify` arrived and was ignored.
    pub ghost: CancellationToken,
    /// Cancelled once the close exchange is done: the channel is over.
    pub closed_by_command: CancellationToken,
    /// Cancelled when the transport noticed on its own that the connection
    /// ended (WebSocket only: close frame, FIN, idle timeout, 1009).
    pub dropped: CancellationToken,
    /// Set when a read failed (FIN without `close_notify`, RST), or the
    /// WebSocket connection ended from the agent's side.
    lost: Mutex<bool>,
}

impl EndSignals {
    pub fn lost(&self) -> bool {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_lost(&self) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

enum State {
    Open,
    /// The agent's close arrived; our answer is being written.
    Answering(BytesMut),
    /// The close exchange is over: reads see EOF.
    Closed,
    /// `close_notify` received: reads never complete again.
    Ghost,
}

/// The channel's byte stream, with the controller's end-of-channel rules.
pub struct ChannelStream {
    inner: BoxedIo,
    transport: Transport,
    state: State,
    from_agent: ChunkScanner,
    to_agent: ChunkScanner,
    /// The command being read started as a `Channel$CloseCommand`.
    close_started: bool,
    /// Our side (the peer) sent a close first: the agent's is its answer.
    we_closed: bool,
    answer: Arc<[u8]>,
    signals: Arc<EndSignals>,
}

impl std::fmt::Debug for ChannelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Open => "open",
            State::Answering(_) => "answering",
            State::Closed => "closed",
            State::Ghost => "ghost",
        };
        f.debug_struct("ChannelStream")
            .field("transport", &self.transport)
            .field("state", &state)
            .finish()
    }
}

impl ChannelStream {
    /// `answer`: the controller's close command, one whole chunk.
    pub(super) fn new(
        inner: BoxedIo,
        transport: Transport,
        answer: Arc<[u8]>,
        signals: Arc<EndSignals>,
    ) -> Self {
        Self {
            inner,
            transport,
            state: State::Open,
            from_agent: ChunkScanner::new(),
            to_agent: ChunkScanner::new(),
            close_started: false,
            we_closed: false,
            answer,
            signals,
        }
    }

    /// What this stream tells the task that runs the channel.
    pub(super) fn signals(&self) -> Arc<EndSignals> {
        self.signals.clone()
    }

    /// Scans what the agent sent; on the end of a close command, hands the
    /// peer only what came before it (the command is the controller's own
    /// business, and nothing after it is read) and starts the answer.
    fn scan_from_agent(&mut self, buf: &mut ReadBuf<'_>, start: usize) {
        let mut at = start;
        let mut command_start = start;
        while at < buf.filled().len() {
            let started = &mut self.close_started;
            let taken = self
                .from_agent
                .feed_to_command_end(&buf.filled()[at..], |class, _| {
                    *started = is_close(class);
                });
            at += taken;
            if !self.from_agent.at_command_boundary() {
                continue;
            }
            if self.close_started && !self.we_closed {
                buf.set_filled(command_start);
                if !self.to_agent.at_command_boundary() {
                    tracing::warn!("the agent closed while our side was inside a command");
                }
                self.state = State::Answering(BytesMut::from(&self.answer[..]));
                return;
            }
            command_start = at;
        }
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Answering(left) if !left.is_empty() => {
                    let n = ready!(Pin::new(&mut self.inner).poll_write(cx, left))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    left.advance(n);
                }
                State::Answering(_) => {
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    self.state = State::Closed;
                    self.signals.closed_by_command.cancel();
                    return Poll::Ready(Ok(()));
                }
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.state {
            State::Closed => return Poll::Ready(Ok(())),
            // Woken only by what the accept task does about it (the ping
            // timeout, a take-over): the real stack reads nothing more.
            State::Ghost => return Poll::Pending,
            State::Answering(_) => {
                if let Err(err) = ready!(this.poll_answer(cx)) {
                    this.signals.set_lost();
                    return Poll::Ready(Err(err));
                }
                return Poll::Ready(Ok(()));
            }
            State::Open => {}
        }
        let start = buf.filled().len();
        match ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            Ok(()) if buf.filled().len() == start && buf.remaining() > 0 => {
                match this.transport {
                    Transport::Jnlp4 => {
                        // A clean end of TLS: the agent sent close_notify.
                        this.state = State::Ghost;
                        this.signals.ghost.cancel();
                        Poll::Pending
                    }
                    Transport::WebSocket => {
                        // The pump saw a close frame or FIN: the channel is gone.
                        this.signals.set_lost();
                        Poll::Ready(Ok(()))
                    }
                }
            }
            Ok(()) => {
                this.scan_from_agent(buf, start);
                if matches!(this.state, State::Answering(_)) && buf.filled().len() == start {
                    // Nothing for the peer before the close: answer it now,
                    // then the peer sees the end of the channel.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(()))
            }
            Err(err) => {
                this.signals.set_lost();
                Poll::Ready(Err(err))
            }
        }
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::Closed) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        let mut closing = false;
        this.to_agent
            .feed(&data[..n], |class, _| closing |= is_close(class));
        this.we_closed |= closing;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
