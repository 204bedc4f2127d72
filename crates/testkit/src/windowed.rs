//! A windowed streaming peer: remoting's flow control, modelled for
//! benchmarks.
//!
//! The real engine's streams are flow-controlled (remoting's `PipeWindow`
//! and `ProxyOutputStream`): a sender has at most a window of bytes
//! (`hudson.remoting.Channel.pipeWindowSize`, 1 MiB) in flight per stream
//! until the receiver's `ProxyOutputStream$Ack` comes back, so every
//! latency on the data path or the ack path caps throughput at about
//! window ÷ round trip. A peer that answers at once (the fake engine) hides
//! this. This module speaks a minimal protocol of the same shape over the
//! chunk framing (PROTOCOL.md 2.6); its engine side is
//! `crates/agent/tests/java/WindowedEngine.java`, which runs either behind
//! the agent on stdio or connected straight to the agent port.
//!
//! # Wire format
//!
//! Every message is one command: chunks of at most 8192 bytes, the last
//! without the more-follows bit. The first byte is the kind; integers are
//! big-endian.
//!
//! | kind | body | meaning |
//! |---|---|---|
//! | `D` | stream u32, data | DATA: counts against the sender's window |
//! | `A` | stream u32, n u32 | ACK: the receiver consumed `n` bytes of the stream |
//! | `P` | token u64 | PING, answered at once by a PONG with the same token |
//! | `Q` | token u64 | PONG |
//! | `S` | stream u32, total u64 | SEND: the engine streams `total` bytes to the controller |
//! | `X` | | QUIT: the engine exits |
//!
//! A sender writes [`DEFAULT_WRITE`] data bytes per DATA command (remoting's
//! streams copy through 8 KiB buffers and each write becomes one
//! `ProxyOutputStream$Chunk` command), so a full DATA command is two chunks,
//! 8192 bytes and 5, as a serialized `Chunk` command is one full chunk and a
//! short one. The receiver acks every DATA command once it has consumed it,
//! as remoting acks every `Chunk` command after writing it out.
//!
//! # Layout
//!
//! - [`Message`]: encoding and decoding (pure).
//! - [`Session`]: the driver over an accepted channel: windowed transfers
//!   either way with pings riding along, and idle round trips.
//! - [`peer`]: a [`Peer`] that hands every accepted channel over as a
//!   [`Session`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use remoting_protocol::chunk::SEND_CHUNK_PAYLOAD;
use remoting_protocol::{Chunk, ChunkCodec};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::controller::{Channel, ChannelStream, Peer};

/// remoting's default `pipeWindowSize`.
pub const DEFAULT_WINDOW: u64 = 1 << 20;
/// Data bytes per DATA command.
pub const DEFAULT_WRITE: usize = 8192;
/// Largest command a session buffers.
const MAX_COMMAND: usize = 1 << 20;
/// How long [`Session::quit`] may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One message of the windowed protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Stream data.
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Bytes,
    },
    /// The receiver consumed `bytes` of the stream.
    Ack {
        /// The stream.
        stream: u32,
        /// Bytes consumed.
        bytes: u32,
    },
    /// A round trip probe.
    Ping {
        /// Echoed in the PONG.
        token: u64,
    },
    /// The answer to a PING.
    Pong {
        /// The PING's token.
        token: u64,
    },
    /// Asks the engine to stream `total` bytes on `stream`.
    Send {
        /// The stream.
        stream: u32,
        /// Bytes to send.
        total: u64,
    },
    /// Asks the engine to exit.
    Quit,
}

/// Why a command is not a [`Message`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// An empty command.
    #[error("empty command")]
    Empty,
    /// The first byte names no message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// The body has the wrong size for its kind.
    #[error("a {kind:?} message of {len} bytes")]
    BadLength {
        /// The kind byte.
        kind: char,
        /// The whole command's length.
        len: usize,
    },
}

impl Message {
    /// The command's bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        match self {
            Message::Data { stream, data } => {
                out.reserve(data.len());
                out.put_u8(b'D');
                out.put_u32(*stream);
                out.put_slice(data);
            }
            Message::Ack { stream, bytes } => {
                out.put_u8(b'A');
                out.put_u32(*stream);
                out.put_u32(*bytes);
            }
            Message::Ping { token } => {
                out.put_u8(b'P');
                out.put_u64(*token);
            }
            Message::Pong { token } => {
                out.put_u8(b'Q');
                out.put_u64(*token);
            }
            Message::Send { stream, total } => {
                out.put_u8(b'S');
                out.put_u32(*stream);
                out.put_u64(*total);
            }
            Message::Quit => out.put_u8(b'X'),
        }
        out.freeze()
    }

    /// Reads one whole command (no copy of DATA's bytes).
    pub fn decode(mut command: Bytes) -> Result<Self, MessageError> {
        let len = command.len();
        if len == 0 {
            return Err(MessageError::Empty);
        }
        let kind = command.get_u8();
        let need = |body: usize, exact: bool| {
            let ok = if exact { len == 1 + body } else { len > body };
            if ok {
                Ok(())
            } else {
                Err(MessageError::BadLength {
                    kind: char::from(kind),
                    len,
                })
            }
        };
        Ok(match kind {
            b'D' => {
                need(4, false)?;
                let stream = command.get_u32();
                Message::Data {
                    stream,
                    data: command,
                }
            }
            b'A' => {
                need(8, true)?;
                Message::Ack {
                    stream: command.get_u32(),
                    bytes: command.get_u32(),
                }
            }
            b'P' => {
                need(8, true)?;
                Message::Ping {
                    token: command.get_u64(),
                }
            }
            b'Q' => {
                need(8, true)?;
                Message::Pong {
                    token: command.get_u64(),
                }
            }
            b'S' => {
                need(12, true)?;
                Message::Send {
                    stream: command.get_u32(),
                    total: command.get_u64(),
                }
            }
            b'X' => {
                need(0, true)?;
                Message::Quit
            }
            other => return Err(MessageError::UnknownKind(other)),
        })
    }
}

/// A command's chunks: at most [`SEND_CHUNK_PAYLOAD`] bytes each, the last
/// one marked last (slices of `command`, no copy).
pub fn chunks(command: Bytes) -> impl Iterator<Item = Chunk> {
    let count = command.len().div_ceil(SEND_CHUNK_PAYLOAD).max(1);
    (0..count).map(move |i| {
        let start = i * SEND_CHUNK_PAYLOAD;
        let end = (start + SEND_CHUNK_PAYLOAD).min(command.len());
        Chunk {
            last: i + 1 == count,
            payload: command.slice(start..end),
        }
    })
}

/// Which way a transfer's data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The controller sends, the engine receives and acks.
    ToEngine,
    /// The engine sends (after a SEND), the controller receives and acks.
    ToController,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToEngine => "controller -> engine",
            Direction::ToController => "engine -> controller",
        })
    }
}

/// One transfer's parameters.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Which way.
    pub direction: Direction,
    /// Data bytes to move.
    pub bytes: u64,
    /// The controller side's window when it sends (the engine's is its own
    /// `hudson.remoting.Channel.pipeWindowSize`).
    pub window: u64,
    /// Data bytes per DATA command when the controller sends.
    pub write_size: usize,
    /// Send a PING this often while the stream runs.
    pub ping_every: Option<Duration>,
    /// Give up after this long.
    pub deadline: Duration,
}

impl TransferConfig {
    /// `bytes` in `direction`, remoting's window and write size, no pings,
    /// a deadline of 10 minutes.
    pub fn new(direction: Direction, bytes: u64) -> Self {
        Self {
            direction,
            bytes,
            window: DEFAULT_WINDOW,
            write_size: DEFAULT_WRITE,
            ping_every: None,
            deadline: Duration::from_secs(600),
        }
    }
}

/// What a transfer measured.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// Which way.
    pub direction: Direction,
    /// Data bytes moved.
    pub bytes: u64,
    /// From the first byte sent (or the SEND) until the last byte was acked
    /// (to the engine) or received (from it).
    pub elapsed: Duration,
    /// Round trips of the PINGs answered while the stream ran.
    pub round_trips: Vec<Duration>,
}

impl TransferReport {
    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Why a session operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The deadline passed.
    #[error("timed out after {after:?} ({done} of {total} bytes done)")]
    TimedOut {
        /// The deadline.
        after: Duration,
        /// Bytes acked or received by then.
        done: u64,
        /// Bytes asked for.
        total: u64,
    },
    /// The channel ended.
    #[error("the channel ended")]
    Closed,
    /// Reading or writing the channel failed.
    #[error("channel I/O failed: {0}")]
    Io(String),
    /// The engine sent something this protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// An earlier failure left the session in an unknown state.
    #[error("the session is unusable after an earlier failure: {0}")]
    Broken(String),
}

type ChunkFramed = Framed<ChannelStream, ChunkCodec>;

/// The controller's side of the windowed protocol over one accepted
/// channel. Dropping it closes the channel.
pub struct Session {
    node: String,
    sink: SplitSink<ChunkFramed, Chunk>,
    stream: SplitStream<ChunkFramed>,
    /// Payloads of a command whose last chunk has not arrived.
    partial: BytesMut,
    /// PING tokens are nanoseconds since this instant.
    epoch: Instant,
    next_stream: u32,
    broken: Option<String>,
    /// Dropped with the session: ends the peer script.
    _alive: oneshot::Sender<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("node", &self.node)
            .field("next_stream", &self.next_stream)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// A [`Peer`] that hands every accepted channel to the receiver as a
/// [`Session`]; the channel stays open until the session is dropped (or
/// the controller kicks it).
pub fn peer() -> (Peer, mpsc::UnboundedReceiver<Session>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let peer = Peer::script(move |channel: Channel| {
        let tx = tx.clone();
        async move {
            let (alive, dropped) = oneshot::channel();
            let (sink, stream) = channel.framed.split();
            let session = Session {
                node: channel.node,
                sink,
                stream,
                partial: BytesMut::new(),
                epoch: Instant::now(),
                next_stream: 0,
                broken: None,
                _alive: alive,
            };
            if tx.send(session).is_err() {
                return;
            }
            tokio::select! {
                _ = dropped => {}
                () = channel.kicked.cancelled() => {}
            }
        }
    });
    (peer, rx)
}

impl Session {
    /// The node this channel belongs to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs one windowed transfer on a fresh stream. After a failure the
    /// session refuses further work ([`SessionError::Broken`]).
    pub async fn transfer(
        &mut self,
        config: &TransferConfig,
    ) -> Result<TransferReport, SessionError> {
        if let Some(reason) = &self.broken {
            return Err(SessionError::Broken(reason.clone()));
        }
        self.next_stream = self.next_stream.wrapping_add(1);
        let id = self.next_stream;
        let progress = AtomicU64::new(0);
        let started = Instant::now();
        let outcome = tokio::time::timeout(config.deadline, self.run(id, config, &progress)).await;
        let elapsed = started.elapsed();
        let error = match outcome {
            Ok(Ok(round_trips)) => {
                return Ok(TransferReport {
                    direction: config.direction,
                    bytes: config.bytes,
                    elapsed,
                    round_trips,
                })
            }
            Ok(Err(err)) => err,
            Err(_) => SessionError::TimedOut {
                after: config.deadline,
                done: progress.load(Ordering::Relaxed),
                total: config.bytes,
            },
        };
        self.broken = Some(error.to_string());
        Err(error)
    }

    /// `count` PINGs, one at a time, `gap` apart, with nothing else
    /// running; their round trips.
    pub async fn round_trips(
        &mut self,
        count: usize,
        gap: Duration,
        deadline: Duration,
    ) -> Result<Vec<Duration>, SessionError> {
        if let Some(reason) = &self.broken {
            return Err(SessionError::Broken(reason.clone()));
        }
        let run = async {
            let mut times = Vec::with_capacity(count);
            for _ in 0..count {
                let sent = Instant::now();
                let token = nanos_since(self.epoch);
                send(&mut self.sink, &Message::Ping { token }).await?;
                self.sink.flush().await.map_err(io_error)?;
                loop {
                    match next_message(&mut self.stream, &mut self.partial).await? {
                        Message::Pong { token: t } if t == token => break,
                        // Stragglers of an earlier transfer.
                        Message::Pong { .. } | Message::Ack { .. } | Message::Data { .. } => {}
                        other => return Err(unexpected(&other)),
                    }
                }
                times.push(sent.elapsed());
                tokio::time::sleep(gap).await;
            }
            Ok(times)
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(times)) => Ok(times),
            Ok(Err(err)) => {
                self.broken = Some(err.to_string());
                Err(err)
            }
            Err(_) => {
                let err = SessionError::TimedOut {
                    after: deadline,
                    done: 0,
                    total: 0,
                };
                self.broken = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Tells the engine to exit (bounded; errors ignored) and closes the
    /// channel.
    pub async fn quit(mut self) {
        let quit = async {
            send(&mut self.sink, &Message::Quit).await?;
            self.sink.flush().await.map_err(io_error)
        };
        let _ = tokio::time::timeout(QUIT_TIMEOUT, quit).await;
    }

    /// Both halves of one transfer, side by side: the writer sends data
    /// within the window (or the SEND), acks and pings; the reader counts
    /// acks (or data) and pongs. Returns the pongs' round trips.
    async fn run(
        &mut self,
        id: u32,
        config: &TransferConfig,
        progress: &AtomicU64,
    ) -> Result<Vec<Duration>, SessionError> {
        if config.bytes == 0 {
            return Ok(Vec::new());
        }
        let done = CancellationToken::new();
        let (acked_tx, acked_rx) = watch::channel(0u64);
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let writer = write_side(
            &mut self.sink,
            id,
            config,
            self.epoch,
            acked_rx,
            urgent_rx,
            &done,
        );
        let reader = async {
            let result = read_side(
                &mut self.stream,
                &mut self.partial,
                id,
                config,
                self.epoch,
                &acked_tx,
                &urgent_tx,
                progress,
            )
            .await;
            done.cancel();
            result
        };
        let ((), round_trips) = tokio::try_join!(writer, reader)?;
        Ok(round_trips)
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_side(
    sink: &mut SplitSink<ChunkFramed, Chunk>,
    id: u32,
    config: &TransferConfig,
    epoch: Instant,
    mut acked: watch::Receiver<u64>,
    mut urgent: mpsc::UnboundedReceiver<Message>,
    done: &CancellationToken,
) -> Result<(), SessionError> {
    let to_engine = config.direction == Direction::ToEngine;
    if !to_engine {
        send(
            sink,
            &Message::Send {
                stream: id,
                total: config.bytes,
            },
        )
        .await?;
    }
    let write = config.write_size.clamp(1, MAX_COMMAND - 5) as u64;
    let data = |n: u64| {
        Message::Data {
            stream: id,
            data: Bytes::from(vec![0x42; n as usize]),
        }
        .encode()
    };
    let full = data(write);
    let mut sent = 0u64;
    let mut next_ping = config.ping_every.map(|every| Instant::now() + every);
    loop {
        while let Ok(message) = urgent.try_recv() {
            send(sink, &message).await?;
        }
        if done.is_cancelled() {
            break;
        }
        if let (Some(at), Some(every)) = (next_ping, config.ping_every) {
            let now = Instant::now();
            if now >= at {
                let token = nanos_since(epoch);
                send(sink, &Message::Ping { token }).await?;
                next_ping = Some(now + every);
            }
        }
        if to_engine && sent < config.bytes {
            let n = write.min(config.bytes - sent);
            let in_flight = sent - (*acked.borrow_and_update()).min(sent);
            if in_flight + n <= config.window.max(n) {
                let command = if n == write { full.clone() } else { data(n) };
                for chunk in chunks(command) {
                    sink.feed(chunk).await.map_err(io_error)?;
                }
                sent += n;
                continue;
            }
        }
        // Nothing more to send now: out with what is buffered, then wait.
        sink.flush().await.map_err(io_error)?;
        let ping_at = next_ping.map(tokio::time::Instant::from_std);
        tokio::select! {
            message = urgent.recv() => match message {
                Some(message) => send(sink, &message).await?,
                None => break,
            },
            changed = acked.changed() => if changed.is_err() {
                break;
            },
            () = sleep_until(ping_at) => {}
            () = done.cancelled() => {}
        }
    }
    sink.flush().await.map_err(io_error)
}

#[allow(clippy::too_many_arguments)]
async fn read_side(
    stream: &mut SplitStream<ChunkFramed>,
    partial: &mut BytesMut,
    id: u32,
    config: &TransferConfig,
    epoch: Instant,
    acked_tx: &watch::Sender<u64>,
    urgent: &mpsc::UnboundedSender<Message>,
    progress: &AtomicU64,
) -> Result<Vec<Duration>, SessionError> {
    let mut round_trips = Vec::new();
    let mut acked = 0u64;
    let mut received = 0u64;
    // Pings are stamped with their sending time; one stamped before this
    // transfer was answered too late for the last one, and its round trip
    // would count the pause between transfers.
    let began = nanos_since(epoch);
    loop {
        match next_message(stream, partial).await? {
            Message::Ack { stream, bytes } if stream == id => {
                acked += u64::from(bytes);
                progress.store(acked, Ordering::Relaxed);
                acked_tx.send_replace(acked);
                if config.direction == Direction::ToEngine && acked >= config.bytes {
                    return Ok(round_trips);
                }
            }
            Message::Data { stream, data } if stream == id => {
                let n = data.len() as u64;
                received += n;
                progress.store(received, Ordering::Relaxed);
                // Acked once consumed, as remoting acks each `Chunk` command.
                let _ = urgent.send(Message::Ack {
                    stream: id,
                    bytes: n as u32,
                });
                if received >= config.bytes {
                    return Ok(round_trips);
                }
            }
            Message::Pong { token } => {
                round_trips.extend(pong_round_trip(token, began, nanos_since(epoch)));
            }
            // Stragglers of an earlier stream.
            Message::Ack { .. } | Message::Data { .. } => {}
            other => return Err(unexpected(&other)),
        }
    }
}

async fn send(
    sink: &mut SplitSink<ChunkFramed, Chunk>,
    message: &Message,
) -> Result<(), SessionError> {
    for chunk in chunks(message.encode()) {
        sink.feed(chunk).await.map_err(io_error)?;
    }
    Ok(())
}

/// The next whole command, decoded.
async fn next_message(
    stream: &mut SplitStream<ChunkFramed>,
    partial: &mut BytesMut,
) -> Result<Message, SessionError> {
    loop {
        let chunk = match stream.next().await {
            None => return Err(SessionError::Closed),
            Some(Err(err)) => return Err(io_error(err)),
            Some(Ok(chunk)) => chunk,
        };
        let command = if partial.is_empty() && chunk.last {
            chunk.payload
        } else {
            if partial.len() + chunk.payload.len() > MAX_COMMAND {
                return Err(SessionError::Protocol(format!(
                    "a command of more than {MAX_COMMAND} bytes"
                )));
            }
            partial.extend_from_slice(&chunk.payload);
            if !chunk.last {
                continue;
            }
            partial.split().freeze()
        };
        return Message::decode(command).map_err(|err| SessionError::Protocol(err.to_string()));
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The round trip of the PING stamped `token`, answered at `now` during a
/// transfer that began at `began` (all nanoseconds since the session's
/// epoch); `None` for a PING of an earlier transfer.
fn pong_round_trip(token: u64, began: u64, now: u64) -> Option<Duration> {
    (token >= began).then(|| Duration::from_nanos(now.saturating_sub(token)))
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn io_error(err: impl fmt::Display) -> SessionError {
    SessionError::Io(err.to_string())
}

fn unexpected(message: &Message) -> SessionError {
    SessionError::Protocol(format!("unexpected message from the engine: {message:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_pong_of_an_earlier_transfer_is_not_a_round_trip() {
        // Sent 1 ms into the transfer that began at 5 s, answered at 5.003 s.
        assert_eq!(
            pong_round_trip(5_001_000_000, 5_000_000_000, 5_003_000_000),
            Some(Duration::from_millis(2))
        );
        // Sent before it (the last transfer's), answered during it: its
        // round trip would count the pause between the two.
        assert_eq!(
            pong_round_trip(4_999_000_000, 5_000_000_000, 5_003_000_000),
            None
        );
    }

    #[test]
    fn messages_round_trip() {
        for message in [
            Message::Data {
                stream: 7,
                data: Bytes::from_static(b"abc"),
            },
            Message::Ack {
                stream: 7,
                bytes: 8192,
            },
            Message::Ping { token: u64::MAX },
            Message::Pong { token: 1 },
            Message::Send {
                stream: 2,
                total: 1 << 40,
            },
            Message::Quit,
        ] {
            assert_eq!(Message::decode(message.encode()), Ok(message));
        }
        assert_eq!(Message::decode(Bytes::new()), Err(MessageError::Empty));
        assert_eq!(
            Message::decode(Bytes::from_static(b"A\0\0\0\x01")),
            Err(MessageError::BadLength { kind: 'A', len: 5 })
        );
        assert_eq!(
            Message::decode(Bytes::from_static(b"Z")),
            Err(MessageError::UnknownKind(b'Z'))
        );
    }

    #[test]
    fn a_full_data_command_is_two_chunks() {
        let command = Message::Data {
            stream: 1,
            data: Bytes::from(vec![0; DEFAULT_WRITE]),
        }
        .encode();
        let sizes: Vec<(usize, bool)> =
            chunks(command).map(|c| (c.payload.len(), c.last)).collect();
        assert_eq!(sizes, [(8192, false), (5, true)]);
        let empty: Vec<Chunk> = chunks(Bytes::new()).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].last && empty[0].payload.is_empty());
    }
}
