//! The WebSocket agent endpoint on the web port (PROTOCOL.md 3), as Jenkins'
//! `jenkins.agents.WebSocketAgents` on Jetty answers it.
//!
//! [`upgrade`] makes the checks in Jenkins' order, with its status codes:
//!
//! | check | answer |
//! |---|---|
//! | no WebSocket support ([`super::ControllerBuilder::web_socket_disabled`]) | 404 |
//! | not an upgrade, or `Node-Name`, `Secret-Key`, `X-Remoting-Capability` missing | 400 |
//! | unknown node | 400 `No such agent: NAME` |
//! | wrong secret | 403, empty body |
//! | a live channel, no matching `Connection-Cookie` | 400 `NAME is already connected to this controller. ...` (500 with [`super::ControllerBuilder::legacy_already_connected_500`]) |
//! | a `Connection-Cookie` that is not hex (Jenkins' `Util.fromHexString` throws) | 500 |
//! | [`super::ControllerBuilder::fatal_node`], or a capability that does not parse | 500 |
//! | otherwise (a matching cookie takes the old channel over) | 101 |
//!
//! The 101 carries the agent's own cookie back (normalised to lowercase
//! hex), or a new one when it sent none, as `WebSocketAgents` does since
//! it passes the cookie on to the take-over check.
//!
//! After the 101, [`pump`] moves data between the WebSocket and one end of a
//! pipe whose other end the channel's [`ChannelStream`] reads and writes:
//! binary message payloads from the agent become one byte stream (a chunk
//! may straddle messages), and every whole chunk the peer writes goes out
//! as one binary message. The pump also pings, enforces the idle timeout
//! and the 64 KiB message limit (close 1009), and notices the end of the
//! connection on its own, as Jetty does. So an agent must wait for the
//! answer to its `Channel$CloseCommand` before it closes the WebSocket (as
//! PROTOCOL.md 5 says): a close frame right behind the command may end the
//! channel as `ConnectionLost` before the command is seen.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use remoting_protocol::chunk::ChunkHeader;
use remoting_protocol::Capability;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::channel::{self, CLOSE_TIMEOUT};
use super::channel_end::{EndSignals, Transport};
use super::{random_hex, ChannelStream, ControllerEvent, Refusal, Shared, Verdict};

type Body = Full<Bytes>;

/// Largest message (and frame) the controller accepts from an agent.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes buffered in each direction of the pipe between pump and channel.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Most bytes read and discarded after our close frame before the
/// connection is dropped (so unread input does not turn our FIN into a RST).
const MAX_DRAIN: usize = 256 * 1024;

/// Body of a 400 for a request that is not an agent's upgrade (Jenkins' text).
const NOT_AN_AGENT: &str = "This endpoint is only for use from agent.jar in WebSocket mode\n";

/// The WebSocket parts of the builder.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub disabled: bool,
    pub legacy_already_connected_500: bool,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// Answers a request for `wsagents/` and records
/// [`ControllerEvent::WebSocketUpgrade`]; on a 101, a task takes the
/// connection over once hyper has switched protocols. `common` adds the
/// headers every controller page carries.
pub(super) fn upgrade(
    shared: &Arc<Shared>,
    request: &mut Request<Incoming>,
    common: impl FnOnce(&mut Response<Body>),
) -> Response<Body> {
    let text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
    };
    let node = text("node-name");
    let secret = text("secret-key");
    let capability = text("x-remoting-capability");
    let cookie = text("connection-cookie");
    let key = text("sec-websocket-key");
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();

    let decision = decide(
        shared,
        request,
        node.as_deref(),
        secret.as_deref(),
        capability.as_deref(),
        cookie.as_deref(),
    );
    // Jenkins keeps the agent's cookie (its take-over key) and answers with it.
    let new_cookie = cookie
        .as_deref()
        .and_then(normalised_cookie)
        .unwrap_or_else(|| random_hex(16));
    let (mut response, took_over) = match (decision, key.as_deref()) {
        (Ok(took_over), Some(key)) => (
            switching_protocols(shared, key, &new_cookie),
            Some(took_over),
        ),
        // `decide` only accepts an upgrade, which has a key.
        (Ok(_), None) => (answer(StatusCode::BAD_REQUEST, NOT_AN_AGENT), None),
        (Err((status, body)), _) => (answer(status, &body), None),
    };
    common(&mut response);
    let node = node.unwrap_or_default();
    shared.record(ControllerEvent::WebSocketUpgrade {
        node: node.clone(),
        status: response.status().as_u16(),
        headers,
    });
    if let Some(took_over) = took_over {
        let on_upgrade = hyper::upgrade::on(request);
        let span = tracing::debug_span!("controller-websocket", %node);
        shared.tracker.spawn(
            serve_channel(shared.clone(), on_upgrade, node, new_cookie, took_over).instrument(span),
        );
    }
    response
}

/// The checks of `WebSocketAgents.doIndex`, in its order: `Ok(took_over)`
/// or the refusal's status and body.
fn decide(
    shared: &Shared,
    request: &Request<Incoming>,
    node: Option<&str>,
    secret: Option<&str>,
    capability: Option<&str>,
    cookie: Option<&str>,
) -> Result<bool, (StatusCode, String)> {
    let refuse = |status: StatusCode, body: &str| Err((status, body.to_owned()));
    if shared.web_socket.disabled {
        return refuse(StatusCode::NOT_FOUND, "Not Found\n");
    }
    let (Some(node), Some(secret), Some(capability)) = (node, secret, capability) else {
        return refuse(StatusCode::BAD_REQUEST, NOT_AN_AGENT);
    };
    if !is_websocket_upgrade(request) {
        return refuse(StatusCode::BAD_REQUEST, NOT_AN_AGENT);
    }
    // Jenkins parses it after its checks and fails with 500; parsing it
    // first keeps a bad request from kicking a live channel.
    if let Err(err) = Capability::from_base64(capability) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Bad X-Remoting-Capability: {err}\n"),
        );
    }
    if cookie.is_some_and(|c| normalised_cookie(c).is_none()) {
        // Jenkins decodes it after the name and secret checks and fails.
        return match shared.secret_of(node) {
            None => refuse(StatusCode::BAD_REQUEST, &format!("No such agent: {node}\n")),
            Some(known) if known != secret => refuse(StatusCode::FORBIDDEN, ""),
            Some(_) => refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Connection-Cookie is not hexadecimal\n",
            ),
        };
    }
    let cookie = cookie.and_then(normalised_cookie);
    match shared.judge(node, Some(secret), cookie.as_deref()) {
        Verdict::Accept { took_over } => Ok(took_over),
        Verdict::Refuse(Refusal::UnknownNode) => {
            refuse(StatusCode::BAD_REQUEST, &format!("No such agent: {node}\n"))
        }
        // `HttpResponses.forbidden()`: no body at all.
        Verdict::Refuse(Refusal::BadSecret) => refuse(StatusCode::FORBIDDEN, ""),
        Verdict::Refuse(Refusal::AlreadyConnected) => {
            let status = if shared.web_socket.legacy_already_connected_500 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            refuse(
                status,
                &format!(
                    "{node} is already connected to this controller. Rejecting this connection.\n"
                ),
            )
        }
        Verdict::Refuse(Refusal::Fatal(reason)) => {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("{reason}\n"))
        }
    }
}

/// The cookie as Jenkins keeps it (`toHexString(fromHexString(..))`):
/// lowercase hex; `None` unless it is whole bytes of hex.
fn normalised_cookie(cookie: &str) -> Option<String> {
    hex::decode(cookie).ok().map(hex::encode)
}

/// A WebSocket version 13 upgrade (RFC 6455 4.2.1; the method was checked
/// by the router).
fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    let has_token = |name: &str, token: &str| {
        request.headers().get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token("connection", "upgrade")
        && has_token("upgrade", "websocket")
        && request
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13")
        && request.headers().contains_key("sec-websocket-key")
}

fn switching_protocols(shared: &Shared, key: &str, cookie: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    remoting_protocol::websocket::accept_upgrade(headers, key);
    if let Ok(capability) = HeaderValue::from_str(&Capability::CURRENT.to_base64()) {
        headers.insert("x-remoting-capability", capability);
    }
    headers.insert(
        "x-remoting-minimum-version",
        shared.http_headers.remoting_minimum_version.clone(),
    );
    if let Ok(cookie) = HeaderValue::from_str(cookie) {
        headers.insert("connection-cookie", cookie);
    }
    response
}

/// A refusal; an empty `body` gets no content type either.
fn answer(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    if !body.is_empty() {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
    }
    response
}

/// Waits for hyper to hand the connection over, then runs the channel and
/// the pump side by side until both have ended.
async fn serve_channel(
    shared: Arc<Shared>,
    on_upgrade: OnUpgrade,
    node: String,
    cookie: String,
    took_over: bool,
) {
    let upgraded = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        upgraded = on_upgrade => match upgraded {
            Ok(upgraded) => upgraded,
            Err(err) => {
                shared.record(ControllerEvent::HandshakeFailed {
                    reason: format!("WebSocket upgrade: {err}"),
                });
                return;
            }
        },
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (pump_end, channel_end) = tokio::io::duplex(PIPE_CAPACITY);
    let signals = Arc::new(EndSignals::default());
    let stream = ChannelStream::new(
        Box::new(channel_end),
        Transport::WebSocket,
        shared.close_answer.clone(),
        signals.clone(),
    );
    tokio::join!(
        channel::run(&shared, node, cookie, took_over, stream, BytesMut::new()),
        pump(ws, pump_end, &shared.web_socket, &signals, &shared.shutdown),
    );
}

/// How the pump's loop ended.
enum End {
    /// The agent sent a close frame (tungstenite queued the same code back).
    AgentClosed,
    /// FIN, RST or a broken frame from the agent.
    Lost,
    /// Nothing from the agent for the idle timeout.
    Idle,
    /// A message or frame over [`MAX_MESSAGE`].
    TooBig,
    /// The channel's side of the pipe closed: the controller ends the channel.
    ChannelEnded,
    /// The controller shuts down.
    Shutdown,
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

/// Moves data between `ws` and `pipe` until either side ends, then closes
/// the WebSocket with the code that fits. Sets `signals` when the end came
/// from the agent's side.
async fn pump<S>(
    ws: WebSocketStream<S>,
    pipe: DuplexStream,
    settings: &Settings,
    signals: &EndSignals,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut from_channel, mut to_channel) = tokio::io::split(pipe);
    let send_limit = settings.idle_timeout.max(CLOSE_TIMEOUT);
    // The two directions run side by side: a send that waits for the agent
    // to read must never stop us reading what the agent sends (the agent
    // may be waiting for its engine, which waits for us).
    let agent_to_channel = async {
        let mut last_heard = Instant::now();
        loop {
            let message = tokio::select! {
                () = sleep_until(last_heard + settings.idle_timeout) => break End::Idle,
                message = stream.next() => message,
            };
            last_heard = Instant::now();
            match message {
                // Back-pressure: the WebSocket is not read while the pipe is full.
                Some(Ok(Message::Binary(payload))) => {
                    if to_channel.write_all(&payload).await.is_err() {
                        break End::ChannelEnded;
                    }
                }
                // tungstenite answers pings itself; pongs only count as traffic.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => tracing::debug!("ignoring a text message"),
                Some(Ok(Message::Close(frame))) => {
                    tracing::debug!(?frame, "the agent closed the WebSocket");
                    break End::AgentClosed;
                }
                Some(Err(WsError::Capacity(err))) => {
                    tracing::debug!(%err, "message too big");
                    break End::TooBig;
                }
                Some(Err(err)) => {
                    tracing::debug!(%err, "WebSocket failed");
                    break End::Lost;
                }
                None => break End::Lost,
            }
        }
    };
    let channel_to_agent = async {
        // At most one partial chunk between reads.
        let mut outbound = BytesMut::new();
        let mut next_ping = Instant::now() + settings.ping_interval / 2;
        loop {
            outbound.reserve(8 * 1024);
            tokio::select! {
                () = sleep_until(next_ping) => {
                    next_ping = Instant::now() + settings.ping_interval;
                    if !send(&mut sink, Message::Ping(Bytes::new()), send_limit).await {
                        break End::Lost;
                    }
                }
                read = from_channel.read_buf(&mut outbound) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        if !outbound.is_empty() {
                            tracing::debug!(len = outbound.len(), "dropping a partial chunk at the end");
                        }
                        break End::ChannelEnded;
                    }
                    // One flush per read, not per chunk.
                    let mut fed = true;
                    while let Some(chunk) = take_chunk(&mut outbound) {
                        fed = matches!(
                            timeout(send_limit, sink.feed(Message::Binary(chunk))).await,
                            Ok(Ok(()))
                        );
                        if !fed {
                            break;
                        }
                    }
                    if !fed || !matches!(timeout(send_limit, sink.flush()).await, Ok(Ok(()))) {
                        tracing::debug!("sending to the agent failed or timed out");
                        break End::Lost;
                    }
                }
            }
        }
    };
    let end = tokio::select! {
        () = shutdown.cancelled() => End::Shutdown,
        end = agent_to_channel => end,
        end = channel_to_agent => end,
    };
    let close_with = match end {
        End::AgentClosed => {
            lost(signals);
            // Keep reading until tungstenite has flushed its answering close.
            let _ = timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
            return;
        }
        End::Lost => {
            lost(signals);
            return;
        }
        End::Idle => {
            lost(signals);
            // The agent is not listening: no point waiting for its answer.
            let frame = close_frame(CloseCode::Away, "Connection Idle Timeout");
            send(&mut sink, Message::Close(Some(frame)), CLOSE_TIMEOUT).await;
            return;
        }
        End::Shutdown => {
            let frame = close_frame(CloseCode::Away, "Jenkins is shutting down");
            send(&mut sink, Message::Close(Some(frame)), CLOSE_TIMEOUT).await;
            return;
        }
        End::TooBig => {
            lost(signals);
            close_frame(CloseCode::Size, "Message too big")
        }
        End::ChannelEnded => close_frame(CloseCode::Normal, ""),
    };
    let closing = close(sink, stream, close_with);
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = closing => {}
    }
}

/// Marks the channel as ended by the agent's side, so that the channel's
/// task notices even while its peer is not reading.
fn lost(signals: &EndSignals) {
    signals.set_lost();
    signals.dropped.cancel();
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

/// Sends our close frame, ends our side of the TCP connection and reads
/// (bounded) until the agent closes its side: closing with unread input
/// would reset the connection and could discard the close frame.
async fn close<S>(mut sink: Sink<S>, stream: Stream<S>, frame: CloseFrame)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = frame.code;
    if !send(&mut sink, Message::Close(Some(frame)), CLOSE_TIMEOUT).await {
        return;
    }
    let Ok(mut ws) = stream.reunite(sink) else {
        return;
    };
    let io = ws.get_mut();
    let drain = async {
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match io.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if let Ok(Err(err)) = timeout(CLOSE_TIMEOUT, drain).await {
        tracing::debug!(%err, ?code, "closing the WebSocket failed");
    }
}

/// Sends one message within `limit`; false if that failed.
async fn send<S>(sink: &mut Sink<S>, message: Message, limit: Duration) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(limit, sink.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(%err, "sending to the agent failed");
            false
        }
        Err(_) => {
            tracing::debug!(?limit, "sending to the agent timed out");
            false
        }
    }
}

/// The first whole chunk in `buf`, taken off.
fn take_chunk(buf: &mut BytesMut) -> Option<Bytes> {
    let header = ChunkHeader::peek(buf)?;
    let len = 2 + header.len;
    (buf.len() >= len).then(|| buf.split_to(len).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_chunk_takes_whole_chunks_only() {
        let mut buf = BytesMut::from(&[0x80, 0x02, b'a', b'b', 0x00, 0x03, b'c'][..]);
        assert_eq!(
            take_chunk(&mut buf).as_deref(),
            Some(&[0x80, 0x02, b'a', b'b'][..])
        );
        assert_eq!(take_chunk(&mut buf), None);
        buf.extend_from_slice(b"de");
        assert_eq!(
            take_chunk(&mut buf).as_deref(),
            Some(&[0x00, 0x03, b'c', b'd', b'e'][..])
        );
        assert!(buf.is_empty());
        assert_eq!(take_chunk(&mut buf), None);
    }
}
