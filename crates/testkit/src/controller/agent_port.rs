//! The controller's TCP agent port: `Protocol:Ping`, the plain-text hello a
//! raw `GET ` gets, and the JNLP4-connect server side (PROTOCOL.md 2), then
//! the built-in peers that run accepted channels.
//!
//! Nothing a client sends can panic a task here: every frame is bounded by
//! its 2-byte length, every phase has a deadline, and every failure before a
//! decision becomes [`ControllerEvent::HandshakeFailed`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use remoting_protocol::chunk::ChunkHeader;
use remoting_protocol::headers::{self, Headers};
use remoting_protocol::utf::{put_utf, take_utf};
use remoting_protocol::{Capability, ChunkCodec};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tracing::Instrument as _;

use super::channel_end::EndSignals;
use super::{
    random_hex, Channel, ChannelEnd, ChannelStream, ControllerEvent, LiveChannel, Peer, Shared,
    Verdict,
};

/// How long each handshake phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused agent gets to say `BYE`.
const BYE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kicked peer gets to wind down before its channel is dropped.
const KICK_GRACE: Duration = Duration::from_millis(500);
/// How long closing a connection (TLS close_notify, draining) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes read and discarded before closing a connection we answered.
const MAX_DRAIN: usize = 64 * 1024;
/// Longest piece of client input quoted in an event.
const MAX_QUOTED: usize = 64;

const MALFORMED: &str = "ERROR: Malformed connection header";

/// Accepts agent-port connections until shutdown, one task each.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("controller-agent-port", %peer);
                shared
                    .tracker
                    .spawn(connection(shared.clone(), stream).instrument(span));
            }
            Err(err) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "agent port accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let token = shared.shutdown.clone();
    tokio::select! {
        () = token.cancelled() => {}
        () = handle(&shared, stream) => {}
    }
}

/// What a client opened with.
enum Opening {
    /// `GET ` (someone pointed a browser or an HTTP client at the port);
    /// `root` when it was `GET / `, the only page the port answers.
    HttpGet { root: bool },
    /// The first `utf(s)`, normally `Protocol:NAME`.
    Line(String),
}

/// The protocols this port implements (the controller's `AgentProtocol.of`);
/// whether each is enabled is [`Shared::speaks`].
const KNOWN_PROTOCOLS: &[&str] = &["JNLP4-connect", "Ping"];

async fn handle(shared: &Arc<Shared>, mut tcp: TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    let failed = |reason: String| shared.record(ControllerEvent::HandshakeFailed { reason });
    let line = match read_opening(&mut tcp, &mut buf).await {
        Ok(Opening::Line(line)) => line,
        Ok(Opening::HttpGet { root }) => {
            let answer = if root {
                hello(shared, &tcp)
            } else {
                NOT_FOUND.to_owned()
            };
            answer_and_close(&mut tcp, answer.as_bytes()).await;
            return;
        }
        Err(reason) => return failed(reason),
    };
    // The controller's answers to a bad protocol line, verbatim (its
    // "Disabled" quotes the whole line, its "Unknown" nothing).
    let Some(protocol) = line.strip_prefix("Protocol:") else {
        answer_and_close(
            &mut tcp,
            format!("Unrecognized protocol: {line}\n").as_bytes(),
        )
        .await;
        return failed(format!(
            "protocol: not a protocol line: {:?}",
            excerpt(&line)
        ));
    };
    if !KNOWN_PROTOCOLS.contains(&protocol) {
        answer_and_close(&mut tcp, b"Unknown protocol:\n").await;
        return failed(format!("protocol: {:?} is unknown", excerpt(protocol)));
    }
    if !shared.speaks(protocol) {
        answer_and_close(&mut tcp, format!("Disabled protocol:{line}\n").as_bytes()).await;
        return failed(format!("protocol: {protocol:?} is disabled"));
    }
    if protocol == "Ping" {
        answer_and_close(&mut tcp, b"Ping\n").await;
    } else if let Err(reason) = jnlp4(shared, tcp, buf).await {
        failed(reason);
    }
}

/// Reads until the client has shown either `GET ` (and whether `GET / `)
/// or one whole `utf(s)`.
async fn read_opening(tcp: &mut TcpStream, buf: &mut BytesMut) -> Result<Opening, String> {
    let read = async {
        loop {
            let n = buf.len().min(4);
            if buf[..n] == b"GET "[..n] {
                if buf.len() >= 6 {
                    return Ok(Opening::HttpGet {
                        root: buf.starts_with(b"GET / "),
                    });
                }
            } else if let Some(line) = take_utf(buf).map_err(|e| format!("protocol: {e}"))? {
                return Ok(Opening::Line(line));
            }
            read_more(tcp, buf, "protocol").await?;
        }
    };
    timeout(PHASE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("protocol: timed out after {PHASE_TIMEOUT:?}")))
}

/// What the agent port answers an HTTP request for anything but `/`.
const NOT_FOUND: &str =
    "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain;charset=UTF-8\r\n\r\nNot Found\r\n";

/// What the controller writes to `GET / ` on its agent port (its
/// `respondHello`, field for field).
fn hello(shared: &Shared, tcp: &TcpStream) -> String {
    let addr = |a: std::io::Result<std::net::SocketAddr>| {
        a.map(|a| a.ip().to_string()).unwrap_or_default()
    };
    format!(
        "HTTP/1.0 200 OK\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n\
         X-Content-Type-Options: nosniff\r\n\
         \r\n\
         Jenkins-Agent-Protocols: {}\r\n\
         Jenkins-Version: {}\r\n\
         Jenkins-Session: {}\r\n\
         Client: {}\r\n\
         Server: {}\r\n\
         Remoting-Minimum-Version: {}\r\n",
        shared.protocols.join(", "),
        super::JENKINS_VERSION,
        shared.session,
        addr(tcp.peer_addr()),
        addr(tcp.local_addr()),
        super::REMOTING_MINIMUM_VERSION,
    )
}

/// Writes `answer`, then closes our side and drains what the client still
/// sends (bounded): closing with unread input would reset the connection
/// and could discard the answer before the client reads it.
async fn answer_and_close(tcp: &mut TcpStream, answer: &[u8]) {
    let close = async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if let Ok(Err(err)) = timeout(CLOSE_TIMEOUT, close).await {
        tracing::debug!(%err, "closing an answered connection failed");
    }
}

/// The JNLP4-connect server side, from the client's `ACK` on. `Err` is the
/// reason for a [`ControllerEvent::HandshakeFailed`].
async fn jnlp4(shared: &Arc<Shared>, mut tcp: TcpStream, mut buf: BytesMut) -> Result<(), String> {
    let ack = read_utf(&mut tcp, &mut buf, "acknowledgement").await?;
    if ack != "ACK" {
        return Err(format!(
            "acknowledgement: expected ACK, got {:?}",
            excerpt(&ack)
        ));
    }
    tokio::time::sleep(shared.handshake_delay).await;
    send_utf(&mut tcp, &["ACK"], "acknowledgement").await?;
    // TLS starts only after both ACKs; anything earlier is not a JNLP4 client.
    if !buf.is_empty() {
        return Err(format!(
            "TLS: the agent sent {} bytes before TLS",
            buf.len()
        ));
    }
    let mut tls = match timeout(
        PHASE_TIMEOUT,
        TlsAcceptor::from(shared.tls.clone()).accept(tcp),
    )
    .await
    {
        Err(_) => return Err(format!("TLS: timed out after {PHASE_TIMEOUT:?}")),
        Ok(Err(err)) => return Err(format!("TLS: {err}")),
        Ok(Ok(tls)) => tls,
    };

    let cookie = random_hex(16);
    let ours = Headers::new()
        .with(headers::COOKIE, cookie.clone())
        .encode();
    send_utf(&mut tls, &[&ours], "headers").await?;
    let theirs = read_utf(&mut tls, &mut buf, "headers").await?;
    let answer = read_utf(&mut tls, &mut buf, "response").await?;
    if answer != "OK" {
        return Err(format!(
            "response: the agent answered our headers with {:?}",
            excerpt(&answer)
        ));
    }

    let (node, verdict) = match Headers::decode(&theirs) {
        Ok(theirs) => match theirs.get(headers::NODE_NAME) {
            Some(node) => (
                node.to_owned(),
                shared.judge(
                    node,
                    theirs.get(headers::SECRET_KEY),
                    theirs.get(headers::COOKIE),
                ),
            ),
            None => (String::new(), Verdict::Refuse(MALFORMED.to_owned())),
        },
        Err(_) => (String::new(), Verdict::Refuse(MALFORMED.to_owned())),
    };
    match verdict {
        Verdict::Refuse(response) => refuse(shared, tls, buf, node, response).await,
        Verdict::Accept { took_over } => accept(shared, tls, buf, node, cookie, took_over).await,
    }
}

async fn refuse(
    shared: &Shared,
    mut tls: TlsStream<TcpStream>,
    mut buf: BytesMut,
    node: String,
    response: String,
) -> Result<(), String> {
    tracing::debug!(%node, %response, "refusing");
    shared.record(ControllerEvent::Refused {
        node: node.clone(),
        response: response.clone(),
    });
    send_utf(&mut tls, &[&response], "response").await?;
    match timeout(BYE_TIMEOUT, read_utf(&mut tls, &mut buf, "bye")).await {
        Ok(Ok(bye)) if bye == "BYE" => shared.record(ControllerEvent::ByeReceived { node }),
        Ok(Ok(other)) => {
            tracing::debug!(answer = %excerpt(&other), "refused agent did not say BYE")
        }
        Ok(Err(reason)) => tracing::debug!(%reason, "refused agent did not say BYE"),
        Err(_) => tracing::debug!("refused agent did not say BYE in time"),
    }
    let _ = timeout(CLOSE_TIMEOUT, tls.shutdown()).await;
    Ok(())
}

async fn accept(
    shared: &Shared,
    mut tls: TlsStream<TcpStream>,
    mut buf: BytesMut,
    node: String,
    cookie: String,
    took_over: bool,
) -> Result<(), String> {
    send_utf(
        &mut tls,
        &["OK", &Capability::CURRENT.to_base64()],
        "response",
    )
    .await?;
    let capability = read_utf(&mut tls, &mut buf, "capability").await?;
    Capability::from_base64(&capability).map_err(|e| format!("capability: {e}"))?;

    let connection = shared.connection_id();
    let kicked = shared.shutdown.child_token();
    shared.register(
        &node,
        LiveChannel {
            connection,
            cookie: cookie.clone(),
            kicked: kicked.clone(),
        },
    );
    shared.record(ControllerEvent::Accepted {
        node: node.clone(),
        cookie,
        took_over,
    });

    // The agent may already have sent chunks behind its capability. Through
    // parts, so that those are decoded before the next read is awaited.
    let signals = Arc::new(EndSignals::default());
    let stream = ChannelStream::new(tls, shared.close_answer.clone(), signals.clone());
    let mut parts = Framed::new(stream, ChunkCodec).into_parts();
    parts.read_buf = buf;
    let framed = Framed::from_parts(parts);
    let channel = Channel {
        node: node.clone(),
        framed,
        kicked: kicked.clone(),
    };
    let mut peer = run_peer(&shared.peer, channel);
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
        () = kicked.cancelled() => Woke::Kicked,
    };
    match woke {
        Woke::PeerDone => {}
        Woke::Ended(how) => {
            // The controller drops the channel: the peer is told as if kicked.
            kicked.cancel();
            let _ = timeout(KICK_GRACE, peer).await;
            shared.unregister(&node, connection);
            shared.record(ControllerEvent::ChannelClosed { node, how });
            return Ok(());
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
    shared.unregister(&node, connection);
    shared.record(ControllerEvent::ChannelClosed { node, how });
    Ok(())
}

fn run_peer(peer: &Peer, channel: Channel) -> BoxFuture<'static, ()> {
    match peer {
        Peer::Hold => hold(channel).boxed(),
        Peer::Echo => echo(channel).boxed(),
        Peer::Script(script) => script(channel),
    }
}

/// [`Peer::Hold`]: read and discard until EOF, an error, or kicked.
async fn hold(mut channel: Channel) {
    loop {
        tokio::select! {
            () = channel.kicked.cancelled() => break,
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

fn has_whole_chunk(buf: &[u8]) -> bool {
    ChunkHeader::peek(buf).is_some_and(|h| buf.len() >= 2 + h.len)
}

/// Reads one `utf(s)` within the phase deadline. The buffer stays bounded:
/// a frame is at most 2 + 65535 bytes and is taken off as soon as it is whole.
async fn read_utf<S>(io: &mut S, buf: &mut BytesMut, phase: &str) -> Result<String, String>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        loop {
            if let Some(text) = take_utf(buf).map_err(|e| format!("{phase}: {e}"))? {
                return Ok(text);
            }
            read_more(io, buf, phase).await?;
        }
    };
    timeout(PHASE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("{phase}: timed out after {PHASE_TIMEOUT:?}")))
}

async fn read_more<S>(io: &mut S, buf: &mut BytesMut, phase: &str) -> Result<(), String>
where
    S: AsyncRead + Unpin,
{
    buf.reserve(4096);
    match io.read_buf(buf).await {
        Ok(0) => Err(format!("{phase}: the agent closed the connection")),
        Ok(_) => Ok(()),
        Err(err) => Err(format!("{phase}: {err}")),
    }
}

/// Writes `utf(t)` for each text in one write, within the phase deadline.
async fn send_utf<S>(io: &mut S, texts: &[&str], phase: &str) -> Result<(), String>
where
    S: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    for text in texts {
        put_utf(&mut out, text).map_err(|e| format!("{phase}: {e}"))?;
    }
    let write = async {
        io.write_all(&out).await?;
        io.flush().await
    };
    match timeout(PHASE_TIMEOUT, write).await {
        Err(_) => Err(format!("{phase}: timed out after {PHASE_TIMEOUT:?}")),
        Ok(Err(err)) => Err(format!("{phase}: {err}")),
        Ok(Ok(())) => Ok(()),
    }
}

/// At most [`MAX_QUOTED`] characters of client input, for events and logs.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
