//! What happens to an accepted connection, whichever transport brought it
//! (JNLP4 on the agent port, WebSocket on the web port): the node goes
//! online, the peer gets the channel, and the end is decided and recorded
//! with the rules of `channel_end`.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use remoting_protocol::chunk::ChunkHeader;
use remoting_protocol::ChunkCodec;
use tokio::time::timeout;
use tokio_util::codec::Framed;

use tokio::sync::mpsc;

use super::{Channel, ChannelEnd, ChannelStream, ControllerEvent, LiveChannel, Peer, Shared, Work};

/// How long a kicked peer gets to wind down before its channel is dropped.
pub(super) const KICK_GRACE: Duration = Duration::from_millis(500);
/// How long closing a connection (TLS close_notify, a WebSocket close
/// handshake, draining) may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Registers `node`'s new channel (kicking any other), records
/// [`ControllerEvent::Accepted`], runs the peer on `stream` until the channel
/// ends, then unregisters it and records [`ControllerEvent::ChannelClosed`].
/// `read_buf`: bytes the agent already sent behind its handshake.
pub(super) async fn run(
    shared: &Shared,
    node: String,
    cookie: String,
    took_over: bool,
    stream: ChannelStream,
    read_buf: BytesMut,
) {
    let connection = shared.connection_id();
    let kicked = shared.shutdown.child_token();
    let (work, work_rx) = mpsc::unbounded_channel();
    shared.register(
        &node,
        LiveChannel {
            connection,
            cookie: cookie.clone(),
            kicked: kicked.clone(),
            work,
        },
    );
    shared.record(ControllerEvent::Accepted {
        node: node.clone(),
        cookie,
        took_over,
    });
    // The node is online: queued builds may start on it.
    shared.maintain();

    // Through parts, so that bytes already buffered are decoded before the
    // next read is awaited.
    let signals = stream.signals();
    let mut parts = Framed::new(stream, ChunkCodec).into_parts();
    parts.read_buf = read_buf;
    let framed = Framed::from_parts(parts);
    let channel = Channel {
        node: node.clone(),
        framed,
        kicked: kicked.clone(),
    };
    let mut peer = run_peer(&shared.peer, channel, work_rx);
    let ghost_timed_out = async {
        signals.ghost.cancelled().await;
        tracing::debug!(%node, "close_notify ignored: the channel stays until the ping timeout");
        shared.record(ControllerEvent::CloseNotifyIgnored { node: node.clone() });
        tokio::time::sleep(shared.ping_timeout).await;
    };
    enum Woke {
        PeerDone,
        Ended(ChannelEnd),
        Kicked,
    }
    let woke = tokio::select! {
        () = &mut peer => Woke::PeerDone,
        () = signals.closed_by_command.cancelled() => Woke::Ended(ChannelEnd::CloseCommand),
        () = ghost_timed_out => Woke::Ended(ChannelEnd::PingTimeout),
        // The transport itself noticed the end (WebSocket close, FIN, idle
        // timeout), whether or not the peer is reading.
        () = signals.dropped.cancelled() => Woke::Ended(
            if signals.closed_by_command.is_cancelled() {
                ChannelEnd::CloseCommand
            } else {
                ChannelEnd::ConnectionLost
            }
        ),
        () = kicked.cancelled() => Woke::Kicked,
    };
    match woke {
        Woke::PeerDone => {}
        Woke::Ended(how) => {
            // The controller drops the channel: the peer is told as if kicked.
            kicked.cancel();
            let _ = timeout(KICK_GRACE, peer).await;
            shared.close(node, connection, how);
            return;
        }
        Woke::Kicked => {
            // Built-in peers close cleanly on their own; a script that
            // ignores the token is dropped after the grace period.
            let _ = timeout(KICK_GRACE, peer).await;
        }
    }
    let how = if signals.closed_by_command.is_cancelled() {
        ChannelEnd::CloseCommand
    } else if signals.lost() {
        ChannelEnd::ConnectionLost
    } else if shared.shutdown.is_cancelled() {
        ChannelEnd::Disconnected
    } else if kicked.is_cancelled() {
        shared.kick_reason(&node, connection)
    } else {
        ChannelEnd::PeerFinished
    };
    shared.close(node, connection, how);
}

/// Builds reach the built-in peers only: a script owns its channel.
fn run_peer(
    peer: &Peer,
    channel: Channel,
    work: mpsc::UnboundedReceiver<Work>,
) -> BoxFuture<'static, ()> {
    match peer {
        Peer::Hold => hold(channel, work).boxed(),
        Peer::Echo => echo(channel).boxed(),
        Peer::Script(script) => script(channel),
    }
}

/// [`Peer::Hold`]: read and discard until EOF, an error, or kicked; send
/// the commands of builds the scheduler starts on this node.
async fn hold(mut channel: Channel, mut work: mpsc::UnboundedReceiver<Work>) {
    loop {
        tokio::select! {
            () = channel.kicked.cancelled() => break,
            Some(Work::Command(payload)) = work.recv() => {
                if let Err(err) = send_command(&mut channel, &payload).await {
                    tracing::debug!(%err, "sending a build failed");
                    return;
                }
            }
            item = channel.framed.next() => match item {
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!(%err, "held channel failed");
                    return;
                }
                None => break,
            },
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, channel.framed.close()).await;
}

/// [`Peer::Echo`]: send every chunk back, flushing only when no further
/// whole chunk is already buffered (one write per burst, not per chunk).
async fn echo(mut channel: Channel) {
    loop {
        let chunk = tokio::select! {
            () = channel.kicked.cancelled() => break,
            item = channel.framed.next() => match item {
                Some(Ok(chunk)) => chunk,
                Some(Err(err)) => {
                    tracing::debug!(%err, "echoed channel failed");
                    return;
                }
                None => break,
            },
        };
        if channel.framed.feed(chunk).await.is_err() {
            return;
        }
        if !has_whole_chunk(channel.framed.read_buffer()) && channel.framed.flush().await.is_err() {
            return;
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, channel.framed.close()).await;
}

/// Sends `payload` as one command (as many chunks as it takes).
async fn send_command(channel: &mut Channel, payload: &[u8]) -> Result<(), String> {
    use tokio_util::codec::Decoder as _;
    let mut wire = BytesMut::new();
    remoting_protocol::chunk::put_command(&mut wire, payload);
    while let Some(chunk) = ChunkCodec.decode(&mut wire).map_err(|e| e.to_string())? {
        channel
            .framed
            .feed(chunk)
            .await
            .map_err(|e| e.to_string())?;
    }
    channel.framed.flush().await.map_err(|e| e.to_string())
}

fn has_whole_chunk(buf: &[u8]) -> bool {
    ChunkHeader::peek(buf).is_some_and(|h| buf.len() >= 2 + h.len)
}
