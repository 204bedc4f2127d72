//! The bridge: copies the chunk stream between the controller connection and
//! the engine, both ways, unchanged, and ends the channel on purpose when
//! the supervisor asks.
//!
//! Each direction reads whatever is available into one reused buffer and
//! writes it on as is: no re-framing and no per-chunk allocation. A
//! [`ChunkScanner`] watches the bytes go by for command boundaries. The
//! buffer is bounded and the next read waits for the write, so a slow side
//! slows the other down instead of filling memory.
//!
//! # Leaving
//!
//! A real controller ignores a TLS `close_notify` (PROTOCOL.md 5), so the
//! channel is ended at the remoting level:
//!
//! ```text
//!  asked to leave ──> engine output held at its next command boundary
//!        │                  (bounded: LEAVE_BOUNDARY_TIMEOUT)
//!        │            a controller request arrived meanwhile and the leave
//!        │            waits for quiet? ──> called off, pumping goes on
//!        v
//!  our Channel$CloseCommand ──> controller
//!        │            (engine output after this is read and dropped)
//!        v
//!  controller's CloseCommand ──> engine, which answers it and exits
//!        │            (bounded: CLOSE_ANSWER_TIMEOUT)
//!        v
//!  BridgeEnd::Left: the session drops TCP without close_notify
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use remoting_protocol::close::{is_close, put_close_command};
use remoting_protocol::scan::ChunkScanner;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::departure::{Departure, Intent};
use crate::engine::busy::is_work_request;

/// Bytes buffered per direction.
pub const BUFFER: usize = 256 * 1024;

/// How long the engine may take to finish the command it is writing when
/// the agent is asked to leave.
const LEAVE_BOUNDARY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the controller may take to answer our close.
const CLOSE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Live counters of one bridge, readable from elsewhere (status, tests).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes from the controller to the engine.
    pub to_engine: AtomicU64,
    /// Bytes from the engine to the controller.
    pub to_controller: AtomicU64,
    /// Commands the controller sent.
    pub commands_from_controller: AtomicU64,
    /// Commands the engine sent.
    pub commands_from_engine: AtomicU64,
    /// Requests in flight and last activity: the busy signals the channel gives.
    pub activity: crate::engine::busy::Activity,
}

/// Why the bridge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeEnd {
    /// The controller closed the connection.
    ControllerClosed,
    /// The engine closed its stdout (it exited or is exiting).
    EngineClosed,
    /// We left on purpose; how the controller took it.
    Left(Leaving),
}

/// How a leave ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// The controller answered our close (or closed the connection after it).
    Answered,
    /// Our close went out but no answer came in time.
    Unanswered,
    /// The engine never reached a command boundary (or died): no close was
    /// sent, and only dropping the connection tells the controller.
    WithoutClose,
}

/// A direction failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Reading from or writing to the controller failed.
    #[error("connection to the controller failed: {0}")]
    Controller(std::io::Error),
    /// Reading from or writing to the engine failed.
    #[error("engine stdio failed: {0}")]
    Engine(std::io::Error),
}

/// How the controller-to-engine direction ended.
enum DownEnd {
    Eof,
    /// The controller's close, answering ours, reached the engine.
    CloseAnswered,
}

/// How the engine-to-controller direction ended.
enum UpEnd {
    Eof,
    /// Asked to leave, the engine's output never reached a command boundary.
    NoBoundary,
}

/// Runs both directions until one ends or the agent leaves. `net_buf` and
/// `engine_buf` hold bytes already read past the handshake and the preamble.
#[allow(clippy::too_many_arguments)]
pub async fn run<N, EO, EI>(
    net: N,
    net_buf: BytesMut,
    engine_out: EO,
    engine_buf: BytesMut,
    engine_in: EI,
    traffic: Arc<Traffic>,
    departure: &Departure,
) -> Result<BridgeEnd, BridgeError>
where
    N: AsyncRead + AsyncWrite + Unpin,
    EO: AsyncRead + Unpin,
    EI: AsyncWrite + Unpin,
{
    let (net_read, net_write) = tokio::io::split(net);
    let close_sent = CancellationToken::new();
    let down = to_engine(
        net_read,
        net_buf,
        engine_in,
        &traffic,
        departure,
        &close_sent,
    );
    let up = to_controller(
        engine_out,
        engine_buf,
        net_write,
        &traffic,
        departure,
        &close_sent,
    );
    let answer_deadline = async {
        close_sent.cancelled().await;
        tokio::time::sleep(CLOSE_ANSWER_TIMEOUT).await;
    };
    tokio::select! {
        end = down => match end {
            Ok(DownEnd::CloseAnswered) => Ok(BridgeEnd::Left(Leaving::Answered)),
            Ok(DownEnd::Eof) if close_sent.is_cancelled() => Ok(BridgeEnd::Left(Leaving::Answered)),
            Ok(DownEnd::Eof) => Ok(BridgeEnd::ControllerClosed),
            Err(err) if close_sent.is_cancelled() => {
                warn!(%err, "the connection failed while the channel was closing");
                Ok(BridgeEnd::Left(Leaving::Unanswered))
            }
            Err(err) => Err(err),
        },
        end = up => match end {
            Ok(UpEnd::Eof) => Ok(BridgeEnd::EngineClosed),
            Ok(UpEnd::NoBoundary) => Ok(BridgeEnd::Left(Leaving::WithoutClose)),
            Err(err) => Err(err),
        },
        () = answer_deadline => {
            warn!(after = ?CLOSE_ANSWER_TIMEOUT, "the controller did not answer our close");
            Ok(BridgeEnd::Left(Leaving::Unanswered))
        }
    }
}

/// Controller to engine. Requests that arrive while a quiet leave is being
/// decided call it off; after our close, the controller's answering close
/// is passed to the engine and ends this direction.
async fn to_engine<R, W>(
    mut reader: R,
    mut buf: BytesMut,
    mut writer: W,
    traffic: &Traffic,
    departure: &Departure,
    close_sent: &CancellationToken,
) -> Result<DownEnd, BridgeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = ChunkScanner::new();
    // Commands started so far, and the ordinal of the last close among them.
    let mut started: u64 = 0;
    let mut close_ordinal: Option<u64> = None;
    buf.reserve(BUFFER);
    loop {
        if buf.is_empty() {
            let n = match reader.read_buf(&mut buf).await {
                Ok(n) => n,
                // A peer that closes TCP without TLS close_notify has still
                // ended the stream: the chunk framing, not TLS, says whether
                // anything was cut short, and the engine sees that itself.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(BridgeError::Controller(e)),
            };
            if n == 0 {
                // Pass the end on; the engine may already be gone.
                let _ = writer.shutdown().await;
                return Ok(DownEnd::Eof);
            }
        }
        let before = scanner.stats().commands;
        scanner.feed(&buf, |class, head| {
            traffic.activity.seen_from_controller(class, head);
            if is_close(class) {
                close_ordinal = Some(started);
            } else if is_work_request(class, head)
                && !close_sent.is_cancelled()
                && departure.give_up()
            {
                info!(
                    class = class.unwrap_or(""),
                    "the controller sent work while the agent was about to leave: staying until idle"
                );
            }
            started += 1;
        });
        writer.write_all(&buf).await.map_err(BridgeError::Engine)?;
        writer.flush().await.map_err(BridgeError::Engine)?;
        departure.controller_sent();
        traffic
            .to_engine
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let commands = scanner.stats().commands;
        traffic
            .commands_from_controller
            .fetch_add(commands - before, Ordering::Relaxed);
        // Keeps the allocation: the next read lands in the same memory.
        buf.clear();
        if close_sent.is_cancelled() && close_ordinal.is_some_and(|at| commands > at) {
            return Ok(DownEnd::CloseAnswered);
        }
    }
}

/// Engine to controller. Asked to leave, it holds the engine's output at
/// the next command boundary and sends our close there; after that it reads
/// and drops what the engine still writes (its answer to the controller's
/// close), so the engine never blocks on a full pipe.
async fn to_controller<R, W>(
    mut reader: R,
    mut buf: BytesMut,
    mut writer: W,
    traffic: &Traffic,
    departure: &Departure,
    close_sent: &CancellationToken,
) -> Result<UpEnd, BridgeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = ChunkScanner::new();
    let mut leave_deadline: Option<tokio::time::Instant> = None;
    // One receiver for the whole bridge: nothing is set up per read.
    let mut intent = departure.watch();
    buf.reserve(BUFFER);
    loop {
        let leaving = departure.intent() != Intent::Stay;
        if !leaving {
            leave_deadline = None;
        } else if scanner.at_command_boundary() {
            // Let the other direction take in what the controller already
            // sent: a request there calls a quiet leave off.
            tokio::task::yield_now().await;
            if departure.intent() != Intent::Stay {
                let mut close = BytesMut::new();
                put_close_command(&mut close);
                writer
                    .write_all(&close)
                    .await
                    .map_err(BridgeError::Controller)?;
                writer.flush().await.map_err(BridgeError::Controller)?;
                close_sent.cancel();
                info!("channel close sent to the controller");
                return drain(reader, buf).await;
            }
            continue;
        } else if leave_deadline.is_none() {
            leave_deadline = Some(tokio::time::Instant::now() + LEAVE_BOUNDARY_TIMEOUT);
        }
        if buf.is_empty() {
            let read = tokio::select! {
                read = reader.read_buf(&mut buf) => read,
                _ = intent.changed(), if !leaving => continue,
                () = sleep_until(leave_deadline) => {
                    if departure.give_up() {
                        warn!("the engine stayed in the middle of a command: not leaving yet");
                        continue;
                    }
                    warn!("the engine stayed in the middle of a command: leaving without a channel close");
                    return Ok(UpEnd::NoBoundary);
                }
            };
            let n = read.map_err(BridgeError::Engine)?;
            if n == 0 {
                // The connection is left as it is: the session ends it as its
                // transport needs (JNLP4: TCP's end, never a TLS close_notify,
                // which a real controller ignores, keeping a ghost channel,
                // PROTOCOL.md 5; a WebSocket: its close frame).
                return Ok(if leaving {
                    UpEnd::NoBoundary
                } else {
                    UpEnd::Eof
                });
            }
        }
        let before = scanner.stats().commands;
        let on_command = |class: Option<&str>, head: &[u8]| {
            traffic.activity.seen_from_engine(class, head);
        };
        // Leaving, only the rest of the current command goes out; what
        // follows it stays in the buffer, held.
        let n = if leaving {
            scanner.feed_to_command_end(&buf, on_command)
        } else {
            scanner.feed(&buf, on_command);
            buf.len()
        };
        writer
            .write_all(&buf[..n])
            .await
            .map_err(BridgeError::Controller)?;
        writer.flush().await.map_err(BridgeError::Controller)?;
        if n > 0 {
            departure.engine_sent();
        }
        traffic.to_controller.fetch_add(n as u64, Ordering::Relaxed);
        traffic
            .commands_from_engine
            .fetch_add(scanner.stats().commands - before, Ordering::Relaxed);
        if n == buf.len() {
            // Keeps the allocation: the next read lands in the same memory.
            buf.clear();
        } else {
            buf.advance(n);
        }
    }
}

/// After our close: reads and drops the engine's output until it ends, then
/// waits (the controller's answer, not the engine, ends the bridge).
async fn drain<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
) -> Result<UpEnd, BridgeError> {
    loop {
        buf.clear();
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return std::future::pending().await,
            Ok(_) => {}
        }
    }
}

/// Closes a channel no engine was ever bridged to (a connection made ahead
/// of a move that was called off): our close, then the controller's
/// answer awaited (bounded), whatever else it sent dropped.
pub async fn close_unserved<S>(stream: &mut S, mut buf: BytesMut) -> Leaving
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut close = BytesMut::new();
        put_close_command(&mut close);
        stream.write_all(&close).await?;
        stream.flush().await?;
        let mut scanner = ChunkScanner::new();
        let (mut started, mut close_ordinal) = (0u64, None);
        loop {
            scanner.feed(&buf, |class, _| {
                if is_close(class) {
                    close_ordinal = Some(started);
                }
                started += 1;
            });
            buf.clear();
            if close_ordinal.is_some_and(|at| scanner.stats().commands > at) {
                return Ok(Leaving::Answered);
            }
            buf.reserve(16 * 1024);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(Leaving::Answered);
            }
        }
    };
    match tokio::time::timeout(CLOSE_ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(how)) => how,
        Ok(Err::<_, std::io::Error>(err)) => {
            warn!(%err, "closing an unserved channel failed");
            Leaving::Unanswered
        }
        Err(_) => Leaving::Unanswered,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use remoting_protocol::chunk::put_command;
    use tokio::io::duplex;

    #[tokio::test]
    async fn copies_both_ways_and_reports_who_closed() {
        let (agent_side, mut controller) = duplex(64 * 1024);
        let (engine_out_w, engine_out) = duplex(64 * 1024);
        let (engine_in, mut engine_in_r) = duplex(64 * 1024);
        let traffic = Arc::new(Traffic::default());
        let mut early = BytesMut::new();
        put_command(&mut early, b"early");
        let bridge = tokio::spawn({
            let (early, traffic) = (early.clone(), traffic.clone());
            async move {
                let departure = Departure::new();
                run(
                    agent_side,
                    early,
                    engine_out,
                    BytesMut::new(),
                    engine_in,
                    traffic,
                    &departure,
                )
                .await
            }
        });
        let mut from_controller = BytesMut::new();
        put_command(&mut from_controller, &[3; 20_000]);
        controller.write_all(&from_controller).await.unwrap();
        let mut got = vec![0; early.len() + from_controller.len()];
        engine_in_r.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got[..early.len()],
            &early[..],
            "bytes read with the handshake go first"
        );
        assert_eq!(&got[early.len()..], &from_controller[..]);

        let mut engine_out_w = engine_out_w;
        let mut from_engine = BytesMut::new();
        put_command(&mut from_engine, b"reply");
        engine_out_w.write_all(&from_engine).await.unwrap();
        let mut got = vec![0; from_engine.len()];
        controller.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &from_engine[..]);

        drop(engine_out_w);
        assert_eq!(bridge.await.unwrap().unwrap(), BridgeEnd::EngineClosed);
        assert_eq!(traffic.commands_from_controller.load(Ordering::Relaxed), 2);
        assert_eq!(traffic.commands_from_engine.load(Ordering::Relaxed), 1);
        assert_eq!(
            traffic.to_engine.load(Ordering::Relaxed),
            (early.len() + from_controller.len()) as u64
        );
    }

    /// The engine's output ending is passed on by the session, which closes
    /// TCP without a TLS close_notify: shutting the connection's writer here
    /// would send one, and a real controller would keep a ghost channel
    /// (PROTOCOL.md 5).
    #[tokio::test]
    async fn the_engine_ending_leaves_the_connection_to_the_session() {
        let (mut agent_side, mut controller) = duplex(64 * 1024);
        let (engine_out_w, engine_out) = duplex(64 * 1024);
        let (engine_in, _engine_in_r) = duplex(64 * 1024);
        drop(engine_out_w);
        let departure = Departure::new();
        let end = run(
            &mut agent_side,
            BytesMut::new(),
            engine_out,
            BytesMut::new(),
            engine_in,
            Arc::new(Traffic::default()),
            &departure,
        )
        .await
        .unwrap();
        assert_eq!(end, BridgeEnd::EngineClosed);
        silent(&mut controller).await;
    }

    /// A bridge between in-memory pipes: (controller side, engine stdout
    /// writer, engine stdin reader, the departure, the running bridge).
    struct Rig {
        controller: tokio::io::DuplexStream,
        engine_out: tokio::io::DuplexStream,
        engine_in: tokio::io::DuplexStream,
        departure: Arc<Departure>,
        bridge: tokio::task::JoinHandle<Result<BridgeEnd, BridgeError>>,
    }

    fn rig() -> Rig {
        let (agent_side, controller) = duplex(64 * 1024);
        let (engine_out, engine_out_r) = duplex(64 * 1024);
        let (engine_in_w, engine_in) = duplex(64 * 1024);
        let departure = Arc::new(Departure::new());
        let bridge = tokio::spawn({
            let departure = departure.clone();
            async move {
                run(
                    agent_side,
                    BytesMut::new(),
                    engine_out_r,
                    BytesMut::new(),
                    engine_in_w,
                    Arc::new(Traffic::default()),
                    &departure,
                )
                .await
            }
        });
        Rig {
            controller,
            engine_out,
            engine_in,
            departure,
            bridge,
        }
    }

    fn close_chunk() -> BytesMut {
        let mut close = BytesMut::new();
        put_close_command(&mut close);
        close
    }

    fn command(class: &str, len: usize) -> Vec<u8> {
        let mut p = b"\xac\xed\x00\x05\x73\x72".to_vec();
        p.extend_from_slice(&(class.len() as u16).to_be_bytes());
        p.extend_from_slice(class.as_bytes());
        p.resize(len.max(p.len()), 7);
        p
    }

    async fn read_n(from: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), from.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    /// Nothing is readable within a short wait, not even the end.
    async fn silent(from: &mut tokio::io::DuplexStream) {
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), from.read(&mut byte))
                .await
                .is_err(),
            "unexpected bytes or end of stream"
        );
    }

    #[tokio::test]
    async fn leaving_sends_a_close_and_passes_the_answer_to_the_engine() {
        let mut rig = rig();
        rig.departure.request(Intent::Now);
        let close = close_chunk();
        assert_eq!(read_n(&mut rig.controller, close.len()).await, &close[..]);
        // The engine's output after our close is not the controller's business.
        let mut late = BytesMut::new();
        put_command(&mut late, b"late");
        rig.engine_out.write_all(&late).await.unwrap();
        let mut answer = BytesMut::new();
        put_command(
            &mut answer,
            &command(remoting_protocol::close::CLOSE_COMMAND_CLASS, 300),
        );
        rig.controller.write_all(&answer).await.unwrap();
        assert_eq!(read_n(&mut rig.engine_in, answer.len()).await, &answer[..]);
        assert_eq!(
            rig.bridge.await.unwrap().unwrap(),
            BridgeEnd::Left(Leaving::Answered)
        );
        let mut rest = Vec::new();
        rig.controller.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after our close: {rest:?}");
    }

    #[tokio::test]
    async fn the_close_waits_for_the_engine_to_finish_its_command() {
        let mut rig = rig();
        let mut wire = BytesMut::new();
        put_command(
            &mut wire,
            &command("hudson.remoting.ProxyOutputStream$Chunk", 10_000),
        );
        let mut next = BytesMut::new();
        put_command(&mut next, b"next command, held");
        rig.engine_out.write_all(&wire[..5000]).await.unwrap();
        assert_eq!(read_n(&mut rig.controller, 5000).await, &wire[..5000]);
        rig.departure.request(Intent::Now);
        silent(&mut rig.controller).await;
        // The rest of the command, and the start of another in the same write.
        let mut rest = wire[5000..].to_vec();
        rest.extend_from_slice(&next);
        rig.engine_out.write_all(&rest).await.unwrap();
        let close = close_chunk();
        let got = read_n(&mut rig.controller, wire.len() - 5000 + close.len()).await;
        assert_eq!(&got[..wire.len() - 5000], &wire[5000..]);
        assert_eq!(
            &got[wire.len() - 5000..],
            &close[..],
            "close right after the command"
        );
        rig.controller.write_all(&close).await.unwrap();
        assert_eq!(
            rig.bridge.await.unwrap().unwrap(),
            BridgeEnd::Left(Leaving::Answered)
        );
    }

    #[tokio::test]
    async fn work_arriving_before_the_close_calls_a_quiet_leave_off() {
        let mut rig = rig();
        let mut wire = BytesMut::new();
        put_command(
            &mut wire,
            &command("hudson.remoting.ProxyOutputStream$Chunk", 10_000),
        );
        rig.engine_out.write_all(&wire[..100]).await.unwrap();
        read_n(&mut rig.controller, 100).await;
        rig.departure.request(Intent::WhenQuiet);
        let mut request = BytesMut::new();
        put_command(&mut request, &command("hudson.remoting.UserRequest", 500));
        rig.controller.write_all(&request).await.unwrap();
        assert_eq!(
            read_n(&mut rig.engine_in, request.len()).await,
            &request[..]
        );
        assert_eq!(rig.departure.intent(), Intent::Stay, "called off");
        rig.engine_out.write_all(&wire[100..]).await.unwrap();
        read_n(&mut rig.controller, wire.len() - 100).await;
        let mut response = BytesMut::new();
        put_command(&mut response, &command("hudson.remoting.Response", 50));
        rig.engine_out.write_all(&response).await.unwrap();
        assert_eq!(
            read_n(&mut rig.controller, response.len()).await,
            &response[..],
            "no close: the response goes out"
        );
        assert!(!rig.bridge.is_finished());
        // A ping does not call a leave off.
        let mut ping = command("hudson.remoting.UserRequest", 600);
        ping[400..431].copy_from_slice(crate::engine::busy::PING_MARKER);
        let mut ping_chunk = BytesMut::new();
        put_command(&mut ping_chunk, &ping);
        rig.departure.request(Intent::WhenQuiet);
        let close = close_chunk();
        assert_eq!(read_n(&mut rig.controller, close.len()).await, &close[..]);
        rig.controller.write_all(&ping_chunk).await.unwrap();
        rig.controller.write_all(&close).await.unwrap();
        assert_eq!(
            rig.bridge.await.unwrap().unwrap(),
            BridgeEnd::Left(Leaving::Answered)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_close_ends_the_bridge_after_its_deadline() {
        let mut rig = rig();
        rig.departure.request(Intent::Now);
        let close = close_chunk();
        assert_eq!(read_n(&mut rig.controller, close.len()).await, &close[..]);
        let started = tokio::time::Instant::now();
        assert_eq!(
            rig.bridge.await.unwrap().unwrap(),
            BridgeEnd::Left(Leaving::Unanswered)
        );
        assert!(started.elapsed() >= CLOSE_ANSWER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_stuck_mid_command_defers_a_quiet_leave_and_ends_a_forced_one() {
        let mut rig = rig();
        let mut wire = BytesMut::new();
        put_command(
            &mut wire,
            &command("hudson.remoting.ProxyOutputStream$Chunk", 10_000),
        );
        rig.engine_out.write_all(&wire[..100]).await.unwrap();
        read_n(&mut rig.controller, 100).await;
        rig.departure.request(Intent::WhenQuiet);
        let mut watch = rig.departure.watch();
        watch
            .wait_for(|intent| *intent == Intent::Stay)
            .await
            .unwrap();
        assert!(!rig.bridge.is_finished(), "a quiet leave is only deferred");
        rig.departure.request(Intent::Now);
        assert_eq!(
            rig.bridge.await.unwrap().unwrap(),
            BridgeEnd::Left(Leaving::WithoutClose)
        );
        let mut rest = Vec::new();
        rig.controller.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "no close in the middle of a command: {rest:?}"
        );
    }
}
