//! Dialing a controller over TCP, directly or through an HTTP proxy's
//! `CONNECT` tunnel, as agent.jar does for its agent port.
//!
//! [`dial`] returns a connected [`TcpStream`] positioned where the protocol
//! starts (the JNLP4 handshake, or TLS and the WebSocket upgrade):
//! `TCP_NODELAY` set, keepalive as asked, at most `UNSENT_LIMIT` bytes
//! left unsent in the kernel (Linux), and for a proxy the `CONNECT`
//! exchange done without losing or inventing a byte.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::proxy::{authority, ProxyAddr, ProxyChoice};
use crate::settings::{Credentials, HostPort};

/// Largest proxy answer head (status line and headers) accepted. Real ones
/// are a few hundred bytes.
pub const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

/// Bytes the kernel may hold unsent for a connection (`TCP_NOTSENT_LOWAT`,
/// Linux). Without it the send buffer grows to megabytes, and whatever the
/// engine sends next (an answer, an ack) waits behind all of it: with the
/// 4 MiB window of a long link's engine at 1 Gbit/s, 32 ms. Bytes in flight are not
/// limited, so a long fat link still fills; only the queue in front of it
/// is. Measured with the windowed benchmark (README, "Queues in front of
/// the controller").
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const UNSENT_LIMIT: u32 = 128 * 1024;

/// Text from the network is echoed in errors only up to this many characters.
const MAX_ECHOED_CHARS: usize = 64;

/// Why the agent port could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The agent port's host name does not resolve.
    #[error(
        "cannot resolve {host}, the host of the controller's agent port: {source}; \
         check the controller's agent host setting, or use -tunnel HOST:PORT"
    )]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Every address of the agent port refused or failed the TCP connection.
    #[error(
        "the controller's agent port {target} is not reachable: {source}; \
         if a firewall or load balancer is in the way, use -tunnel HOST:PORT"
    )]
    Unreachable {
        /// `host:port`.
        target: String,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// The connection (or the proxy's answer) took longer than allowed.
    #[error(
        "connecting to the controller's agent port {target}{} timed out after {}s; \
         if a firewall or load balancer is in the way, use -tunnel HOST:PORT",
        via(.proxy),
        .timeout.as_secs_f32()
    )]
    Timeout {
        /// `host:port`.
        target: String,
        /// The proxy in the way, if any.
        proxy: Option<String>,
        /// The time allowed.
        timeout: Duration,
    },
    /// The proxy itself cannot be resolved or connected to.
    #[error(
        "the HTTP proxy {proxy} is not reachable: {source}; check the proxy variable, \
         or exclude the controller with no_proxy"
    )]
    ProxyUnreachable {
        /// The proxy and the variable it came from.
        proxy: String,
        /// The connection error.
        #[source]
        source: io::Error,
    },
    /// The proxy answered 407.
    #[error("{}", proxy_auth_message(proxy, *.credentials_sent))]
    ProxyAuthRequired {
        /// The proxy and the variable it came from.
        proxy: String,
        /// Whether credentials were sent (and rejected).
        credentials_sent: bool,
    },
    /// The proxy refused to open the tunnel.
    #[error(
        "the HTTP proxy {proxy} refused to tunnel to the agent port {target}: \
         HTTP {status} {reason}; many proxies allow CONNECT only to port 443: have the \
         agent port allowed, exclude the controller with no_proxy, or use -webSocket"
    )]
    ProxyRefused {
        /// The proxy and the variable it came from.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// The status code.
        status: u16,
        /// The reason phrase (shortened).
        reason: String,
    },
    /// The proxy's answer is not a usable HTTP answer.
    #[error("the HTTP proxy {proxy} gave an unusable answer to CONNECT: {reason}")]
    ProxyProtocol {
        /// The proxy and the variable it came from.
        proxy: String,
        /// What is wrong.
        reason: String,
    },
    /// The target host cannot be written into a CONNECT request.
    #[error(
        "cannot ask a proxy for {host:?}: the host name contains spaces or control characters"
    )]
    InvalidHost {
        /// The host, as given.
        host: String,
    },
    /// A socket could not be set up (local fault).
    #[error("cannot set up a socket for {target}: {source}")]
    Socket {
        /// `host:port`.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn via(proxy: &Option<String>) -> String {
    proxy
        .as_ref()
        .map(|p| format!(" through the HTTP proxy {p}"))
        .unwrap_or_default()
}

fn proxy_auth_message(proxy: &str, credentials_sent: bool) -> String {
    if credentials_sent {
        format!(
            "the HTTP proxy {proxy} rejected the proxy credentials (407): \
             check -proxyCredentials user:password"
        )
    } else {
        format!(
            "the HTTP proxy {proxy} requires authentication (407): \
             pass -proxyCredentials user:password"
        )
    }
}

/// Connects to the agent port at `target`, through a proxy if `proxy` says
/// so, within `timeout` (which covers resolution, connection and the proxy's
/// answer). Sets `TCP_NODELAY`, and `SO_KEEPALIVE` when `keep_alive` (off for
/// `-noKeepAlive`).
///
/// On success nothing has been read beyond the proxy's answer: the next byte
/// on the stream is the controller's first.
pub async fn dial(
    target: &HostPort,
    proxy: &ProxyChoice,
    timeout: Duration,
    keep_alive: bool,
) -> Result<TcpStream, DialError> {
    let target_text = authority(&target.host, target.port);
    let proxy_text = match proxy {
        ProxyChoice::Direct => None,
        ProxyChoice::Connect { proxy, .. } => Some(proxy.to_string()),
    };
    let attempt = async {
        match proxy {
            ProxyChoice::Direct => connect_tcp(&target.host, target.port, keep_alive)
                .await
                .map_err(|failure| failure.into_direct_error(target)),
            ProxyChoice::Connect { proxy, credentials } => {
                connect_via_proxy(target, proxy, credentials.as_ref(), keep_alive).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout {
            target: target_text,
            proxy: proxy_text,
            timeout,
        }),
    }
}

/// [`dial`] with the proxy chosen from the process environment for
/// `target.host` ([`ProxyChoice::from_env`]), presenting `proxy_credentials`
/// (`-proxyCredentials`) to the proxy.
pub async fn dial_from_env(
    target: &HostPort,
    proxy_credentials: Option<&Credentials>,
    timeout: Duration,
    keep_alive: bool,
) -> Result<TcpStream, DialError> {
    let choice = ProxyChoice::from_env(&target.host, proxy_credentials);
    if let ProxyChoice::Connect { proxy, .. } = &choice {
        let target = authority(&target.host, target.port);
        tracing::debug!(%proxy, %target, "agent port through a proxy");
    }
    dial(target, &choice, timeout, keep_alive).await
}

/// Any byte stream a connection can run over (TCP, TLS over TCP).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// [`dial`] for the web port, where the proxy may itself be reached over
/// TLS (`https://` proxy URL, checked with `proxy_tls`). Keepalive is on.
pub async fn dial_web(
    target: &HostPort,
    proxy: &ProxyChoice,
    timeout: Duration,
    proxy_tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, DialError> {
    let (proxy, credentials) = match proxy {
        ProxyChoice::Connect { proxy, credentials } if proxy.tls => (proxy, credentials),
        plain => return Ok(Box::new(dial(target, plain, timeout, true).await?)),
    };
    let attempt = async {
        let tcp = connect_tcp(&proxy.host, proxy.port, true)
            .await
            .map_err(|failure| failure.into_proxy_error(proxy))?;
        let tls_error = |reason: String| DialError::ProxyProtocol {
            proxy: proxy.to_string(),
            reason,
        };
        let config = proxy_tls.ok_or_else(|| tls_error("no TLS configuration".into()))?;
        let name = rustls::pki_types::ServerName::try_from(proxy.host.clone())
            .map_err(|_| tls_error("the proxy's host is not a valid TLS server name".into()))?;
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|err| {
                tls_error(format!(
                    "TLS with the proxy failed: {err}; if it uses a private CA, pass it with -cert"
                ))
            })?;
        tunnel(&mut tls, target, proxy, credentials.as_ref()).await?;
        Ok::<Box<dyn Io>, DialError>(Box::new(tls))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout {
            target: authority(&target.host, target.port),
            proxy: Some(proxy.to_string()),
            timeout,
        }),
    }
}

/// Why [`connect_tcp`] failed, before knowing whether the peer was the agent
/// port or a proxy.
enum ConnectFailure {
    Resolve(io::Error),
    Connect(io::Error),
    Socket(io::Error),
}

impl ConnectFailure {
    fn into_direct_error(self, target: &HostPort) -> DialError {
        match self {
            ConnectFailure::Resolve(source) => DialError::Resolve {
                host: target.host.clone(),
                source,
            },
            ConnectFailure::Connect(source) => DialError::Unreachable {
                target: authority(&target.host, target.port),
                source,
            },
            ConnectFailure::Socket(source) => DialError::Socket {
                target: authority(&target.host, target.port),
                source,
            },
        }
    }

    fn into_proxy_error(self, proxy: &ProxyAddr) -> DialError {
        match self {
            ConnectFailure::Resolve(source) | ConnectFailure::Connect(source) => {
                DialError::ProxyUnreachable {
                    proxy: proxy.to_string(),
                    source,
                }
            }
            ConnectFailure::Socket(source) => DialError::Socket {
                target: proxy.to_string(),
                source,
            },
        }
    }
}

/// Sets `UNSENT_LIMIT` (Linux). A kernel without the option (before 3.12) only
/// queues more, so its refusal is noted and the connection goes on.
fn limit_unsent(socket: &TcpSocket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(socket).set_tcp_notsent_lowat(UNSENT_LIMIT) {
        tracing::debug!(%err, "TCP_NOTSENT_LOWAT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// Resolves `host` and tries its addresses in order.
async fn connect_tcp(host: &str, port: u16, keep_alive: bool) -> Result<TcpStream, ConnectFailure> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(ConnectFailure::Resolve)?
        .collect();
    let mut last_error = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ConnectFailure::Socket)?;
        // Set before connecting so that the options hold from the first byte;
        // tokio has no keepalive setter on a connected TcpStream.
        socket
            .set_keepalive(keep_alive)
            .map_err(ConnectFailure::Socket)?;
        socket.set_nodelay(true).map_err(ConnectFailure::Socket)?;
        limit_unsent(&socket);
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                tracing::debug!(%addr, %err, "connection attempt failed");
                last_error = Some(err);
            }
        }
    }
    Err(match last_error {
        Some(err) => ConnectFailure::Connect(err),
        None => ConnectFailure::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no address",
        )),
    })
}

async fn connect_via_proxy(
    target: &HostPort,
    proxy: &ProxyAddr,
    credentials: Option<&Credentials>,
    keep_alive: bool,
) -> Result<TcpStream, DialError> {
    let mut stream = connect_tcp(&proxy.host, proxy.port, keep_alive)
        .await
        .map_err(|failure| failure.into_proxy_error(proxy))?;
    tunnel(&mut stream, target, proxy, credentials).await?;
    Ok(stream)
}

/// The `CONNECT` exchange on a connection to `proxy`: on success the next
/// byte on `stream` is the target's first.
async fn tunnel<S>(
    stream: &mut S,
    target: &HostPort,
    proxy: &ProxyAddr,
    credentials: Option<&Credentials>,
) -> Result<(), DialError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = connect_request(target, credentials)?;
    let protocol_error = |reason: String| DialError::ProxyProtocol {
        proxy: proxy.to_string(),
        reason,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| protocol_error(format!("sending CONNECT failed: {err}")))?;
    stream
        .flush()
        .await
        .map_err(|err| protocol_error(format!("sending CONNECT failed: {err}")))?;
    let head = read_response_head(stream)
        .await
        .map_err(|err| protocol_error(err.to_string()))?;
    let (status, reason) =
        parse_status_line(&head).map_err(|err| protocol_error(err.to_string()))?;
    match status {
        200..=299 => {
            let target = authority(&target.host, target.port);
            tracing::debug!(%proxy, %target, "proxy tunnel open");
            Ok(())
        }
        407 => Err(DialError::ProxyAuthRequired {
            proxy: proxy.to_string(),
            credentials_sent: credentials.is_some(),
        }),
        _ => Err(DialError::ProxyRefused {
            proxy: proxy.to_string(),
            target: authority(&target.host, target.port),
            status,
            reason,
        }),
    }
}

/// The CONNECT request head for `target`.
fn connect_request(
    target: &HostPort,
    credentials: Option<&Credentials>,
) -> Result<String, DialError> {
    // The host comes from the controller's X-Jenkins-JNLP-Host or -tunnel:
    // refuse anything that could split the request.
    if target.host.is_empty()
        || target
            .host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DialError::InvalidHost {
            host: target.host.clone(),
        });
    }
    let target = authority(&target.host, target.port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credentials.user,
            credentials.password.expose()
        ));
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    Ok(request)
}

/// Why the proxy's answer head could not be read.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("the connection failed while reading the answer: {0}")]
    Io(#[from] io::Error),
    #[error("the proxy closed the connection before answering")]
    Closed,
    #[error("the answer's head is larger than {MAX_PROXY_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error(
        "the proxy sent {0} bytes after its answer, before the agent spoke \
         (the controller never speaks first)"
    )]
    TrailingBytes(usize),
    #[error("the answer is not HTTP: {0:?}")]
    NotHttp(String),
}

/// Reads the answer head up to and including its empty line, and refuses any
/// byte beyond it: in the tunnel the agent speaks first, so such bytes can
/// only come from a confused proxy, and passing them on would corrupt the
/// handshake.
async fn read_response_head<S>(stream: &mut S) -> Result<Vec<u8>, HeadError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = vec![0u8; MAX_PROXY_RESPONSE_HEAD];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Search from a little before the new bytes: the terminator may span reads.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = find_head_end(&buf[from..filled]).map(|e| from + e) {
            if end < filled {
                return Err(HeadError::TrailingBytes(filled - end));
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if filled == buf.len() {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The index just past the blank line ending a head (`\r\n\r\n`, or a bare
/// `\n\n` from sloppy proxies).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Status code and (shortened) reason phrase of an answer head.
fn parse_status_line(head: &[u8]) -> Result<(u16, String), HeadError> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let line = line.trim_end_matches('\r');
    let not_http = || HeadError::NotHttp(echo(line));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(not_http());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_http());
    }
    let status = code.parse::<u16>().map_err(|_| not_http())?;
    let reason = echo(parts.next().unwrap_or_default().trim());
    Ok((status, reason))
}

/// Network text fit for an error message: shortened.
fn echo(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_ECHOED_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::settings::Secret;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn target(addr: SocketAddr) -> HostPort {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: Secret::new(password),
        }
    }

    fn proxy_at(addr: SocketAddr) -> ProxyAddr {
        ProxyAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
            credentials: None,
            variable: "http_proxy",
            tls: false,
        }
    }

    /// A port that refuses connections: bound but not listening, and held
    /// (with the socket returned) so that no parallel test can take it.
    fn closed_port() -> (SocketAddr, tokio::net::TcpSocket) {
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (held.local_addr().unwrap(), held)
    }

    /// An echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A fake proxy: reads one request head, hands it to `answer`, writes the
    /// answer back in pieces of `piece` bytes, and if the answer is 200 relays
    /// to `upstream`. Returns its address and the heads it received.
    async fn fake_proxy(
        upstream: Option<SocketAddr>,
        answer: &'static [u8],
        piece: usize,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    // Byte by byte so that nothing after the head is consumed.
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    tx.send(String::from_utf8(head).unwrap()).unwrap();
                    for chunk in answer.chunks(piece) {
                        stream.write_all(chunk).await.unwrap();
                        stream.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    if let Some(upstream) = upstream {
                        let mut up = TcpStream::connect(upstream).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                    } else {
                        // Hold the connection open until the client goes.
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn direct_connection_sets_nodelay_and_keepalive() {
        let echo = echo_server().await;
        for keep_alive in [true, false] {
            let mut stream = dial(&target(echo), &ProxyChoice::Direct, TIMEOUT, keep_alive)
                .await
                .unwrap();
            assert!(stream.nodelay().unwrap());
            stream.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"ping");
            let socket = TcpSocket::from_std_stream(stream.into_std().unwrap());
            assert_eq!(socket.keepalive().unwrap(), keep_alive);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn connections_limit_what_the_kernel_holds_unsent() {
        let echo = echo_server().await;
        let direct = dial(&target(echo), &ProxyChoice::Direct, TIMEOUT, true)
            .await
            .unwrap();
        let unsent = socket2::SockRef::from(&direct).tcp_notsent_lowat().unwrap();
        assert_eq!(unsent, UNSENT_LIMIT);
    }

    #[tokio::test]
    async fn direct_connection_to_a_host_name() {
        let echo = echo_server().await;
        let target = HostPort {
            host: "localhost".to_owned(),
            port: echo.port(),
        };
        // localhost may resolve to ::1 first, where nothing listens: the next
        // address must be tried.
        dial(&target, &ProxyChoice::Direct, TIMEOUT, true)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn refused_port_names_the_port_and_the_tunnel_option() {
        let (closed, _held) = closed_port();
        let err = dial(&target(closed), &ProxyChoice::Direct, TIMEOUT, true)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Unreachable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the controller's agent port 127.0.0.1:{} is not reachable: ",
                closed.port()
            )),
            "{text}"
        );
        assert!(text.contains("use -tunnel HOST:PORT"), "{text}");
    }

    #[tokio::test]
    async fn unresolvable_host() {
        let target = HostPort {
            host: "no-such-host.invalid".to_owned(),
            port: 50000,
        };
        let err = dial(&target, &ProxyChoice::Direct, Duration::from_secs(3), true)
            .await
            .unwrap_err();
        // Without a resolver, the lookup may hang until the deadline instead.
        match &err {
            DialError::Resolve { host, .. } => assert_eq!(host, "no-such-host.invalid"),
            DialError::Timeout { .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_through_a_proxy_relays_to_the_target() {
        let echo = echo_server().await;
        let (proxy, mut heads) = fake_proxy(
            Some(echo),
            b"HTTP/1.1 200 Connection established\r\nProxy-Agent: fake\r\n\r\n",
            7,
        )
        .await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: Some(creds("alice", "s3cret")),
        };
        let mut stream = dial(&target(echo), &choice, TIMEOUT, true).await.unwrap();
        let head = heads.recv().await.unwrap();
        let authority = format!("127.0.0.1:{}", echo.port());
        assert_eq!(
            head,
            format!(
                "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\
                 Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
            )
        );
        // The handshake's first bytes go through the tunnel unchanged.
        stream
            .write_all(b"\x00\x16Protocol:JNLP4-connect")
            .await
            .unwrap();
        let mut back = [0u8; 24];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"\x00\x16Protocol:JNLP4-connect");
    }

    #[tokio::test]
    async fn connect_without_credentials_sends_no_auth_header() {
        let echo = echo_server().await;
        let (proxy, mut heads) = fake_proxy(Some(echo), b"HTTP/1.0 200 OK\r\n\r\n", 1).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        dial(&target(echo), &choice, TIMEOUT, false).await.unwrap();
        let head = heads.recv().await.unwrap();
        assert!(!head.contains("Proxy-Authorization"), "{head}");
    }

    #[tokio::test]
    async fn proxy_407_asks_for_proxy_credentials() {
        let (proxy, _heads) = fake_proxy(
            None,
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n\r\n",
            1024,
        )
        .await;
        for (credentials, expected) in [
            (None, "pass -proxyCredentials"),
            (
                Some(creds("u", "hunter2")),
                "rejected the proxy credentials",
            ),
        ] {
            let choice = ProxyChoice::Connect {
                proxy: proxy_at(proxy),
                credentials,
            };
            let err = dial(&target(proxy), &choice, TIMEOUT, true)
                .await
                .unwrap_err();
            assert!(
                matches!(err, DialError::ProxyAuthRequired { .. }),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(expected), "{text}");
            assert!(text.contains("(from http_proxy)"), "{text}");
            assert!(!format!("{text} {err:?}").contains("hunter2"));
        }
    }

    #[tokio::test]
    async fn proxy_refusal_reports_status_and_reason() {
        let (proxy, _heads) = fake_proxy(None, b"HTTP/1.1 403 Forbidden port\r\n\r\n", 1024).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        let err = dial(&target(proxy), &choice, TIMEOUT, true)
            .await
            .unwrap_err();
        match &err {
            DialError::ProxyRefused { status, reason, .. } => {
                assert_eq!((*status, reason.as_str()), (403, "Forbidden port"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("HTTP 403 Forbidden port"), "{err}");
    }

    #[tokio::test]
    async fn bytes_after_the_proxy_answer_are_refused() {
        let (proxy, _heads) = fake_proxy(None, b"HTTP/1.1 200 OK\r\n\r\n\x00\x03ACK", 1024).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        let err = dial(&target(proxy), &choice, TIMEOUT, true)
            .await
            .unwrap_err();
        match &err {
            DialError::ProxyProtocol { reason, .. } => {
                assert!(reason.contains("sent 5 bytes after its answer"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn non_http_and_oversized_answers_are_refused() {
        let (proxy, _heads) = fake_proxy(None, b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 1024).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        let err = dial(&target(proxy), &choice, TIMEOUT, true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not HTTP"), "{err}");

        static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let huge = HUGE.get_or_init(|| {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            while v.len() <= MAX_PROXY_RESPONSE_HEAD {
                v.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            v.extend_from_slice(b"\r\n");
            v
        });
        let (proxy, _heads) = fake_proxy(None, huge, 4096).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        let err = dial(&target(proxy), &choice, TIMEOUT, true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than 8192 bytes"), "{err}");
    }

    #[tokio::test]
    async fn silent_proxy_times_out_naming_the_proxy() {
        let (proxy, _heads) = fake_proxy(None, b"", 1).await;
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(proxy),
            credentials: None,
        };
        let target = HostPort {
            host: "ci.example".to_owned(),
            port: 50000,
        };
        let err = dial(&target, &choice, Duration::from_millis(300), true)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Timeout { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "connecting to the controller's agent port ci.example:50000 through the \
                 HTTP proxy 127.0.0.1:{} (from http_proxy) timed out after 0.3s",
                proxy.port()
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unreachable_proxy_is_named() {
        let (closed, _held) = closed_port();
        let choice = ProxyChoice::Connect {
            proxy: proxy_at(closed),
            credentials: None,
        };
        let err = dial(&target(closed), &choice, TIMEOUT, true)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::ProxyUnreachable { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!(
            "the HTTP proxy 127.0.0.1:{} (from http_proxy) is not reachable",
            closed.port()
        )));
    }

    #[test]
    fn connect_request_brackets_ipv6_and_refuses_injection() {
        let v6 = HostPort {
            host: "fd00::1".to_owned(),
            port: 50000,
        };
        assert_eq!(
            connect_request(&v6, None).unwrap(),
            "CONNECT [fd00::1]:50000 HTTP/1.1\r\nHost: [fd00::1]:50000\r\n\r\n"
        );
        for bad in ["", "a b", "a\r\nX-Evil: 1", "a\tb"] {
            let target = HostPort {
                host: bad.to_owned(),
                port: 1,
            };
            assert!(matches!(
                connect_request(&target, None),
                Err(DialError::InvalidHost { .. })
            ));
        }
    }

    #[tokio::test]
    async fn head_reading_across_splits_and_terminators() {
        // The terminator split over reads at every position.
        let answer = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        for split in 1..answer.len() {
            let mut reader = tokio_test_reader(&[&answer[..split], &answer[split..]]);
            let head = read_response_head(&mut reader).await.unwrap();
            assert_eq!(head, answer, "split at {split}");
        }
        let mut reader = tokio_test_reader(&[b"HTTP/1.0 200 OK\n\n"]);
        assert_eq!(
            parse_status_line(&read_response_head(&mut reader).await.unwrap())
                .unwrap()
                .0,
            200
        );
        let mut reader = tokio_test_reader(&[b"HTTP/1.1 200 OK\r\n"]);
        assert!(matches!(
            read_response_head(&mut reader).await,
            Err(HeadError::Closed)
        ));
    }

    /// A reader yielding `parts` as separate reads, then EOF.
    fn tokio_test_reader(parts: &[&[u8]]) -> impl tokio::io::AsyncRead + Unpin {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        tokio::spawn(async move {
            for part in parts {
                tx.write_all(&part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        rx
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(),
            (200, "Connection established".to_owned())
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204\r\n\r\n").unwrap(),
            (204, String::new())
        );
        for bad in [
            &b"HTTP/2 200 OK\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 OK\r\n",
            b"\r\n",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }
}
