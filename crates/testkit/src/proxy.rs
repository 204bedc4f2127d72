//! An HTTP proxy for tests: `CONNECT` tunnels, plus absolute-form requests
//! (`GET http://host:port/path`) forwarded to plain-HTTP origins, optional
//! Basic credentials, optional TLS on the proxy itself, and a switch that
//! silently stalls every open tunnel.
//!
//! # Layout
//!
//! - the head parser ([`parse_head`],
//!   [`Request`]): pure, no I/O.
//! - `TestProxy` / `ProxyBuilder`: the listener, one task per connection on
//!   a `TaskTracker`, all ended by one `CancellationToken` on drop.
//! - `relay`: the byte pump, with the freeze switch.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument as _};

use crate::web_pki::TestCa;

/// Largest request head accepted (answered 431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// Deadline for the TLS handshake and for the request head, each.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused client may keep sending before the socket is dropped
/// (so that closing with unread input does not reset the answer away).
const LINGER: Duration = Duration::from_secs(1);

/// Configures a [`TestProxy`]; from [`TestProxy::builder`].
#[derive(Default)]
pub struct ProxyBuilder {
    credentials: Option<(String, String)>,
    tls: bool,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls)
            .finish()
    }
}

impl ProxyBuilder {
    /// Require `Proxy-Authorization: Basic base64(user:password)`; otherwise
    /// answer 407 with `Proxy-Authenticate: Basic realm="test"`.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_string(), password.to_string()));
        self
    }

    /// Serve the proxy itself over TLS (an `https://` proxy), with
    /// [`TestCa::shared`]'s server certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Binds `127.0.0.1:0` and starts accepting.
    pub async fn start(self) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (requests, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            credentials: self
                .credentials
                .map(|(user, password)| format!("{user}:{password}")),
            requests,
            open: AtomicUsize::new(0),
            freeze: Mutex::new(CancellationToken::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let acceptor = self
            .tls
            .then(|| TlsAcceptor::from(TestCa::shared().server_config()));
        shared.tracker.spawn(
            accept_loop(shared.clone(), listener, acceptor)
                .instrument(tracing::debug_span!("test_proxy", %addr)),
        );
        TestProxy {
            addr,
            tls: self.tls,
            shared,
        }
    }
}

/// A running proxy; dropping it ends the listener and every connection.
pub struct TestProxy {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
}

impl fmt::Debug for TestProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestProxy")
            .field("url", &self.url())
            .field("open_tunnels", &self.open_tunnels())
            .finish()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
    }
}

impl TestProxy {
    /// A builder: no credentials, plain TCP.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`ProxyBuilder::tls`]), for
    /// `HTTP_PROXY`/`HTTPS_PROXY`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request's target (`host:port`; the raw target when unsupported)
    /// with the status answered (200 for forwarded requests), in order.
    pub fn requests(&self) -> Vec<(String, u16)> {
        self.shared.requests.borrow().clone()
    }

    /// Waits until `pred(requests)` holds and returns the requests then;
    /// panics with what was seen after `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[(String, u16)]) -> bool,
        timeout: Duration,
    ) -> Vec<(String, u16)> {
        let mut rx = self.shared.requests.subscribe();
        let seen = match tokio::time::timeout(timeout, rx.wait_for(|seen| pred(seen))).await {
            Ok(Ok(seen)) => Some(seen.clone()),
            _ => None,
        };
        seen.unwrap_or_else(|| {
            panic!(
                "proxy: condition not met within {timeout:?}; requests: {:?}",
                self.requests()
            )
        })
    }

    /// Stalls every open tunnel without closing anything, as a proxy whose
    /// upstream hung: bytes are still read from both ends but dropped.
    /// Tunnels opened afterwards work normally.
    pub fn freeze_open_tunnels(&self) {
        let mut freeze = self.shared.freeze.lock().expect("freeze lock");
        freeze.cancel();
        *freeze = CancellationToken::new();
    }

    /// Tunnels (and forwarded requests) currently relaying or frozen.
    pub fn open_tunnels(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

struct Shared {
    /// `user:password` expected in `Proxy-Authorization`.
    credentials: Option<String>,
    requests: watch::Sender<Vec<(String, u16)>>,
    open: AtomicUsize,
    /// Cancelled to freeze the tunnels holding it; replaced at once.
    freeze: Mutex<CancellationToken>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Shared {
    fn record(&self, target: &str, status: u16) {
        debug!(request = target, status, "proxy request");
        self.requests
            .send_modify(|seen| seen.push((target.to_string(), status)));
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    debug!(%err, "accept failed");
                    continue;
                }
            },
        };
        let conn_shared = shared.clone();
        let tls = tls.clone();
        let span = tracing::debug_span!("proxy_connection", %peer);
        shared.tracker.spawn(
            async move {
                let shutdown = conn_shared.shutdown.clone();
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = accept_one(conn_shared, tcp, tls) => {}
                }
            }
            .instrument(span),
        );
    }
}

async fn accept_one(shared: Arc<Shared>, tcp: TcpStream, tls: Option<TlsAcceptor>) {
    match tls {
        None => serve(&shared, tcp).await,
        Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve(&shared, stream).await,
            Ok(Err(err)) => debug!(%err, "TLS handshake failed"),
            Err(_) => debug!("TLS handshake timed out"),
        },
    }
}

/// Reads one request head and acts on it.
async fn serve<S>(shared: &Shared, mut client: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await
    {
        Ok(Ok(Some(len))) => len,
        Ok(Ok(None)) => return refuse(client, 431, "Request Header Fields Too Large", "").await,
        Ok(Err(err)) => {
            debug!(%err, "reading the request head failed");
            return;
        }
        Err(_) => {
            debug!("request head timed out");
            return;
        }
    };
    let head = buf.split_to(head_len);
    let early = buf;
    let request = match parse_head(&head) {
        Ok(request) => request,
        Err(err) => {
            debug!(%err, "malformed request head");
            return refuse(client, 400, "Bad Request", "").await;
        }
    };
    let (host, port, origin_form) = match request.classify() {
        Action::Connect { host, port } => (host, port, None),
        Action::Forward {
            host,
            port,
            origin_form,
        } => (host, port, Some(origin_form)),
        Action::BadTarget => {
            shared.record(&request.target, 400);
            return refuse(client, 400, "Bad Request", "").await;
        }
        Action::Unsupported => {
            shared.record(&request.target, 405);
            return refuse(client, 405, "Method Not Allowed", "Allow: CONNECT\r\n").await;
        }
    };
    let label = authority(&host, port);
    if let Some(expected) = &shared.credentials {
        if !request.authorized(expected) {
            shared.record(&label, 407);
            let challenge = "Proxy-Authenticate: Basic realm=\"test\"\r\n";
            return refuse(client, 407, "Proxy Authentication Required", challenge).await;
        }
    }
    let connect = TcpStream::connect((host.as_str(), port));
    let mut target = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(target)) => target,
        Ok(Err(err)) => {
            debug!(%err, dest = %label, "target unreachable");
            shared.record(&label, 502);
            return refuse(client, 502, "Bad Gateway", "").await;
        }
        Err(_) => {
            debug!(dest = %label, "target connect timed out");
            shared.record(&label, 504);
            return refuse(client, 504, "Gateway Timeout", "").await;
        }
    };
    // Recorded before answering, so a client that saw the answer sees it here.
    shared.record(&label, 200);
    let opened = async {
        match &origin_form {
            Some(origin_form) => {
                target
                    .write_all(&request.forwarded_head(origin_form))
                    .await?
            }
            None => {
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await?
            }
        }
        target.write_all(&early).await
    };
    if let Err(err) = opened.await {
        debug!(%err, dest = %label, "opening the tunnel failed");
        return;
    }
    let frozen = shared.freeze.lock().expect("freeze lock").clone();
    let _open = OpenTunnel::new(&shared.open);
    relay::run(client, target, frozen).await;
}

/// Reads into `buf` until it holds a whole head; its length, or `None` when
/// it would exceed [`MAX_HEAD`].
async fn read_head<S>(client: &mut S, buf: &mut BytesMut) -> std::io::Result<Option<usize>>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(Some(end));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        buf.reserve(MAX_HEAD + 1 - buf.len());
        let mut limited = (&mut *client).take((MAX_HEAD + 1 - buf.len()) as u64);
        if limited.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Answers `status` and closes, reading what the client still sends for a
/// moment so the answer is not lost to a reset.
async fn refuse<S>(mut client: S, status: u16, reason: &str, headers: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if client.write_all(answer.as_bytes()).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = client.read(&mut sink).await {}
    })
    .await;
}

/// Counts an open tunnel for as long as it lives.
struct OpenTunnel<'a>(&'a AtomicUsize);

impl<'a> OpenTunnel<'a> {
    fn new(open: &'a AtomicUsize) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `host:port`, with IPv6 hosts bracketed.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The length of the head (through the blank line) at the start of `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Why a request head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// The head is not UTF-8 text.
    #[error("request head is not UTF-8")]
    NotText,
    /// The head does not end with an empty line.
    #[error("request head is not terminated")]
    Unterminated,
    /// The request line is not `METHOD target HTTP/1.x`.
    #[error("malformed request line {0:?}")]
    RequestLine(String),
    /// A header line has no colon or an empty name.
    #[error("malformed header line {0:?}")]
    Header(String),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
}

/// What the proxy does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Tunnel to `host:port`.
    Connect { host: String, port: u16 },
    /// Forward an absolute-form `http://` request with `origin_form` as target.
    Forward {
        host: String,
        port: u16,
        origin_form: String,
    },
    /// A supported method with a malformed target.
    BadTarget,
    /// Anything else (origin-form requests, `https://` targets, ...).
    Unsupported,
}

/// Parses a whole head, through its empty line; nothing may follow.
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::NotText)?;
    let text = text
        .strip_suffix("\r\n\r\n")
        .ok_or(HeadError::Unterminated)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let bad_line = || HeadError::RequestLine(line.to_string());
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_line());
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(target) || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(bad_line());
    }
    let headers = lines
        .map(|line| match line.split_once(':') {
            Some((name, value)) if token(name) => Ok((name.to_string(), value.trim().to_string())),
            _ => Err(HeadError::Header(line.to_string())),
        })
        .collect::<Result<_, _>>()?;
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
    })
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `Proxy-Authorization` carries Basic `expected` (`user:password`).
    fn authorized(&self, expected: &str) -> bool {
        let Some(value) = self.header("proxy-authorization") else {
            return false;
        };
        let Some((scheme, encoded)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("basic")
            && base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .is_ok_and(|decoded| decoded == expected.as_bytes())
    }

    fn classify(&self) -> Action {
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return match parse_authority(&self.target, None) {
                Some((host, port)) => Action::Connect { host, port },
                None => Action::BadTarget,
            };
        }
        let Some(rest) = strip_prefix_ignore_case(&self.target, "http://") else {
            return Action::Unsupported;
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let origin_form = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        // Userinfo is not for the origin.
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        match parse_authority(authority, Some(80)) {
            Some((host, port)) => Action::Forward {
                host,
                port,
                origin_form,
            },
            None => Action::BadTarget,
        }
    }

    /// The head to send the origin: origin-form target, the proxy's own
    /// headers removed, and `Connection: close` so the relay ends with the
    /// response.
    fn forwarded_head(&self, origin_form: &str) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, origin_form, self.version);
        for (name, value) in &self.headers {
            let hop = ["proxy-authorization", "proxy-connection", "connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h));
            if !hop {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `host:port` (`[v6]:port`); `default_port` when the port is absent.
fn parse_authority(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
        None => default_port?,
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:%".contains(&b));
    (host_ok && port != 0).then(|| (host.to_string(), port))
}

mod relay {
    //! Copies bytes both ways until both ends have closed, or drops them once
    //! frozen: a frozen tunnel keeps both connections open and reads from
    //! them, but delivers nothing, until either end closes.

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    const BUF: usize = 16 * 1024;

    pub(super) async fn run<S>(client: S, mut target: TcpStream, frozen: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (client_read, client_write) = tokio::io::split(client);
        let (target_read, target_write) = target.split();
        let end = CancellationToken::new();
        tokio::join!(
            pump(client_read, target_write, &frozen, &end),
            pump(target_read, client_write, &frozen, &end),
        );
    }

    /// One direction. EOF is passed on as a write shutdown; an error ends
    /// the whole tunnel.
    async fn pump<R, W>(mut from: R, mut to: W, frozen: &CancellationToken, end: &CancellationToken)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = tokio::select! {
                () = end.cancelled() => return,
                () = frozen.cancelled() => break,
                read = from.read(&mut buf) => match read {
                    Ok(0) => {
                        tokio::select! {
                            () = end.cancelled() => {}
                            () = frozen.cancelled() => {}
                            _ = to.shutdown() => {}
                        }
                        return;
                    }
                    Ok(n) => n,
                    Err(_) => return end.cancel(),
                },
            };
            tokio::select! {
                () = end.cancelled() => return,
                () = frozen.cancelled() => break,
                written = to.write_all(&buf[..n]) => if written.is_err() {
                    return end.cancel();
                },
            }
        }
        // Frozen: swallow input; either end closing ends the tunnel.
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                read = from.read(&mut buf) => if !matches!(read, Ok(1..)) {
                    return end.cancel();
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_connect_head() {
        let request = parse_head(
            b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
        )
        .unwrap();
        assert_eq!(request.method, "CONNECT");
        assert_eq!(request.header("host"), Some("example.org:443"));
        assert!(request.authorized("u:p"));
        assert!(!request.authorized("u:q"));
        assert_eq!(
            request.classify(),
            Action::Connect {
                host: "example.org".into(),
                port: 443
            }
        );
    }

    #[test]
    fn refuses_malformed_heads() {
        for head in [
            &b"CONNECT a:1 HTTP/1.1\r\n"[..],
            b"CONNECT a:1\r\n\r\n",
            b"CONNECT  a:1 HTTP/1.1\r\n\r\n",
            b"CONNECT a:1 HTTP/2\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn classifies_targets() {
        let classify = |line: &str| {
            parse_head(format!("{line}\r\n\r\n").as_bytes())
                .unwrap()
                .classify()
        };
        assert_eq!(
            classify("CONNECT [::1]:8443 HTTP/1.1"),
            Action::Connect {
                host: "::1".into(),
                port: 8443
            }
        );
        assert_eq!(classify("CONNECT host HTTP/1.1"), Action::BadTarget);
        assert_eq!(classify("CONNECT host:99999 HTTP/1.1"), Action::BadTarget);
        assert_eq!(classify("CONNECT host:0 HTTP/1.1"), Action::BadTarget);
        assert_eq!(classify("CONNECT a/b:1 HTTP/1.1"), Action::BadTarget);
        assert_eq!(
            classify("GET http://u:p@127.0.0.1:8080/a/b?c=d HTTP/1.1"),
            Action::Forward {
                host: "127.0.0.1".into(),
                port: 8080,
                origin_form: "/a/b?c=d".into()
            }
        );
        assert_eq!(
            classify("POST HTTP://localhost?x HTTP/1.0"),
            Action::Forward {
                host: "localhost".into(),
                port: 80,
                origin_form: "/?x".into()
            }
        );
        assert_eq!(classify("GET /a HTTP/1.1"), Action::Unsupported);
        assert_eq!(classify("GET https://a/ HTTP/1.1"), Action::Unsupported);
    }

    #[test]
    fn forwarded_heads_drop_proxy_headers() {
        let request = parse_head(
            b"GET http://h:1/x HTTP/1.1\r\nHost: h:1\r\nProxy-Authorization: Basic dTpw\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(request.forwarded_head("/x")).unwrap(),
            "GET /x HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(find_head_end(b"A\r\n\r\nrest"), Some(5));
        assert_eq!(find_head_end(b"A\r\n\r"), None);
    }
}
