//! The controller's TCP agent port: `Protocol:Ping`, the plain-text hello a
//! raw `GET ` gets, and the JNLP4-connect server side (PROTOCOL.md 2); an
//! accepted channel goes to `channel::run`.
//!
//! Nothing a client sends can panic a task here: every frame is bounded by
//! its 2-byte length, every phase has a deadline, and every failure before a
//! decision becomes [`ControllerEvent::HandshakeFailed`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use remoting_protocol::headers::{self, Headers};
use remoting_protocol::utf::{put_utf, take_utf};
use remoting_protocol::Capability;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use super::channel::{self, CLOSE_TIMEOUT};
use super::channel_end::{EndSignals, Transport};
use super::{random_hex, ChannelStream, ControllerEvent, Shared, Verdict};

/// How long each handshake phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused agent gets to say `BYE`.
const BYE_TIMEOUT: Duration = Duration::from_secs(5);
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
                // As Jenkins' `TcpSlaveAgentListener` does ("we take care of
                // buffering on our own"): without it a controller's small
                // writes wait for the agent's delayed ACK, ~40 ms a call.
                let _ = stream.set_nodelay(true);
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
        shared.state().jenkins.version.clone(),
        shared.session,
        addr(tcp.peer_addr()),
        addr(tcp.local_addr()),
        shared.remoting_minimum_version,
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
                Ok(shared.judge(
                    node,
                    theirs.get(headers::SECRET_KEY),
                    theirs.get(headers::COOKIE),
                )),
            ),
            None => (String::new(), Err(MALFORMED.to_owned())),
        },
        Err(_) => (String::new(), Err(MALFORMED.to_owned())),
    };
    match verdict {
        Ok(Verdict::Refuse(refusal)) => {
            let response = refusal.jnlp4_response(&node);
            refuse(shared, tls, buf, node, response).await
        }
        Err(response) => refuse(shared, tls, buf, node, response).await,
        Ok(Verdict::Accept { took_over }) => {
            accept(shared, tls, buf, node, cookie, took_over).await
        }
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

    let stream = ChannelStream::new(
        Box::new(tls),
        Transport::Jnlp4,
        shared.close_answer.clone(),
        Arc::new(EndSignals::default()),
    );
    channel::run(shared, node, cookie, took_over, stream, buf).await;
    Ok(())
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
