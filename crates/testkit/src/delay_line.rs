//! A TCP forwarder that adds a fixed one-way delay each way: a link with a
//! round trip, for a kernel without `netem` (this rig's has none).
//!
//! What it models is the round trip, not a bottleneck: bytes arrive after
//! `one_way`, at whatever rate both sides move them. The sender's TCP sees
//! its data acknowledged at once (by the forwarder, on loopback), so TCP's
//! own window is as if perfectly tuned; windows above TCP, as remoting's
//! per-stream window, pay the whole round trip, as on a real link. Delivery
//! is in order and a close is passed on after the data before it.
//!
//! # Layout
//!
//! - [`DelayLine`]: the listener; one task per connection on a
//!   `TaskTracker`, all ended by one `CancellationToken` on drop.
//! - `carry`: one direction, a reader stamping what it reads with its due
//!   time and a writer holding each piece until then.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes read at a time.
const READ_SIZE: usize = 64 * 1024;
/// Pieces in flight per direction: with full reads, 64 MiB, more than any
/// window this rig models needs at the round trips it is given.
const IN_FLIGHT: usize = 1024;

/// A listener on loopback whose connections reach `upstream` through a
/// delay of `one_way` each way.
#[derive(Debug)]
pub struct DelayLine {
    addr: SocketAddr,
    one_way: Duration,
    cancel: CancellationToken,
}

impl DelayLine {
    /// Listens on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let token = cancel.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((down, _)) = accepted else { continue };
                let token = token.child_token();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = forward(down, upstream, one_way) => {}
                    }
                });
            }
            tracker.close();
            tracker.wait().await;
        });
        Self {
            addr,
            one_way,
            cancel,
        }
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delay each way.
    pub fn one_way(&self) -> Duration {
        self.one_way
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn forward(down: TcpStream, upstream: SocketAddr, one_way: Duration) {
    // The connect itself crosses the line: a SYN and its answer.
    tokio::time::sleep(one_way * 2).await;
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (down_read, down_write) = down.into_split();
    let (up_read, up_write) = up.into_split();
    tokio::join!(
        carry(down_read, up_write, one_way),
        carry(up_read, down_write, one_way)
    );
}

/// Moves `from` to `to`, each piece `one_way` after it was read; ends
/// `to`'s writing after the last.
async fn carry(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, one_way: Duration) {
    let (pieces, mut due) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let read = async move {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(READ_SIZE);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let piece = (Instant::now() + one_way, buf.split().freeze());
                    if pieces.send(piece).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((at, piece)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&piece).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: what it reads, it writes back, until EOF.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn bytes_come_back_whole_and_a_round_trip_late() {
        let one_way = Duration::from_millis(15);
        let line = DelayLine::start(echo().await, one_way).await;
        let mut s = TcpStream::connect(line.addr()).await.unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = std::time::Instant::now();
        s.write_all(b"x").await.unwrap();
        let mut first = [0u8; 1];
        s.read_exact(&mut first).await.unwrap();
        // A round trip: there and back, after the connect's own.
        assert!(sent.elapsed() >= one_way * 2, "{:?}", sent.elapsed());
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn({
            let data = data.clone();
            async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            }
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(first, *b"x");
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    }

    #[tokio::test]
    async fn a_refused_upstream_closes_the_connection() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = closed.local_addr().unwrap();
        drop(closed);
        let line = DelayLine::start(upstream, Duration::from_millis(1)).await;
        let mut s = TcpStream::connect(line.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed within the deadline");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
}
