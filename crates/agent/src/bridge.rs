//! The bridge: copies the chunk stream between the controller connection and
//! the engine, both ways, unchanged.
//!
//! Each direction reads whatever is available into one reused buffer and
//! writes it on as is: no re-framing and no per-chunk allocation. A
//! [`ChunkScanner`] watches the bytes go by for command boundaries. The
//! buffer is bounded and the next read waits for the write, so a slow side
//! slows the other down instead of filling memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use remoting_protocol::scan::ChunkScanner;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Bytes buffered per direction.
pub const BUFFER: usize = 256 * 1024;

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
    pub activity: crate::busy::Activity,
}

/// Why the bridge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeEnd {
    /// The controller closed the connection.
    ControllerClosed,
    /// The engine closed its stdout (it exited or is exiting).
    EngineClosed,
    /// We were asked to stop.
    Cancelled,
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

/// Runs both directions until one ends or `cancel` fires. `net_buf` and
/// `engine_buf` hold bytes already read past the handshake and the preamble.
#[allow(clippy::too_many_arguments)]
pub async fn run<N, EO, EI>(
    net: N,
    net_buf: BytesMut,
    engine_out: EO,
    engine_buf: BytesMut,
    engine_in: EI,
    traffic: Arc<Traffic>,
    cancel: CancellationToken,
) -> Result<BridgeEnd, BridgeError>
where
    N: AsyncRead + AsyncWrite + Unpin,
    EO: AsyncRead + Unpin,
    EI: AsyncWrite + Unpin,
{
    let (net_read, net_write) = tokio::io::split(net);
    let down = pump(net_read, net_buf, engine_in, Direction::ToEngine, &traffic);
    let up = pump(
        engine_out,
        engine_buf,
        net_write,
        Direction::ToController,
        &traffic,
    );
    tokio::select! {
        end = down => end.map(|()| BridgeEnd::ControllerClosed),
        end = up => end.map(|()| BridgeEnd::EngineClosed),
        () = cancel.cancelled() => Ok(BridgeEnd::Cancelled),
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToEngine,
    ToController,
}

impl Direction {
    fn read_err(self, e: std::io::Error) -> BridgeError {
        match self {
            Direction::ToEngine => BridgeError::Controller(e),
            Direction::ToController => BridgeError::Engine(e),
        }
    }

    fn write_err(self, e: std::io::Error) -> BridgeError {
        match self {
            Direction::ToEngine => BridgeError::Engine(e),
            Direction::ToController => BridgeError::Controller(e),
        }
    }
}

async fn pump<R, W>(
    mut reader: R,
    mut buf: BytesMut,
    mut writer: W,
    direction: Direction,
    traffic: &Traffic,
) -> Result<(), BridgeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = ChunkScanner::new();
    let (bytes, commands) = match direction {
        Direction::ToEngine => (&traffic.to_engine, &traffic.commands_from_controller),
        Direction::ToController => (&traffic.to_controller, &traffic.commands_from_engine),
    };
    buf.reserve(BUFFER);
    loop {
        if buf.is_empty() {
            let n = match reader.read_buf(&mut buf).await {
                Ok(n) => n,
                // A peer that closes TCP without TLS close_notify has still
                // ended the stream: the chunk framing, not TLS, says whether
                // anything was cut short, and the engine sees that itself.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(direction.read_err(e)),
            };
            if n == 0 {
                // Pass the end on; the peer may already be gone.
                let _ = writer.shutdown().await;
                return Ok(());
            }
        }
        let before = scanner.stats().commands;
        scanner.feed(&buf, |class, head| match direction {
            Direction::ToEngine => traffic.activity.seen_from_controller(class, head),
            Direction::ToController => traffic.activity.seen_from_engine(class, head),
        });
        writer
            .write_all(&buf)
            .await
            .map_err(|e| direction.write_err(e))?;
        writer.flush().await.map_err(|e| direction.write_err(e))?;
        bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        commands.fetch_add(scanner.stats().commands - before, Ordering::Relaxed);
        // Keeps the allocation: the next read lands in the same memory.
        buf.clear();
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
        let bridge = tokio::spawn(run(
            agent_side,
            early.clone(),
            engine_out,
            BytesMut::new(),
            engine_in,
            traffic.clone(),
            CancellationToken::new(),
        ));
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
}
