//! Dialing the controller's TCP agent port, directly or through an HTTP proxy.
//!
//! agent.jar reaches the agent port through the HTTP proxy of its environment
//! when one is configured (an HTTP `CONNECT` tunnel), and directly otherwise.
//! This module does the same:
//!
//! - [`proxy_for`] reads the proxy variables and `no_proxy` and says whether a
//!   host must be reached through a proxy;
//! - [`ProxyChoice`] is that decision plus the credentials to present;
//! - [`dial`] returns a connected [`TcpStream`] positioned where the JNLP4
//!   handshake starts: `TCP_NODELAY` set, keepalive as asked, and for a proxy
//!   the `CONNECT` exchange done without losing or inventing a byte.
//!
//! The variables are read in the order reqwest reads them for the web port
//! (`HTTP_PROXY`, `http_proxy`, then the `HTTPS_` and `ALL_` forms; `NO_PROXY`
//! before `no_proxy`), with the same `no_proxy` rules, so the web port and the
//! agent port of one controller agree on whether they go through a proxy.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::settings::{Credentials, HostPort, Secret};

/// Largest proxy answer head (status line and headers) accepted. Real ones
/// are a few hundred bytes.
pub const MAX_PROXY_RESPONSE_HEAD: usize = 8 * 1024;

/// Proxy variables for the agent port, in the order they are consulted.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// `no_proxy` variables, in the order they are consulted.
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// Text from the network is echoed in errors only up to this many characters.
const MAX_ECHOED_CHARS: usize = 64;

/// An HTTP proxy taken from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when the variable gives none, as reqwest assumes).
    pub port: u16,
    /// `user:password@` from the variable, if it had one. `-proxyCredentials`
    /// takes precedence.
    pub credentials: Option<Credentials>,
    /// The variable it came from, for error messages.
    pub variable: &'static str,
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (from {})",
            authority(&self.host, self.port),
            self.variable
        )
    }
}

/// How to reach the agent port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChoice {
    /// A plain TCP connection.
    Direct,
    /// An HTTP `CONNECT` tunnel through a proxy.
    Connect {
        /// The proxy.
        proxy: ProxyAddr,
        /// Sent as `Proxy-Authorization: Basic`, when set.
        credentials: Option<Credentials>,
    },
}

impl ProxyChoice {
    /// The choice for `target_host` given the process environment, with
    /// `-proxyCredentials` (which wins over credentials in the proxy URL).
    pub fn from_env(target_host: &str, proxy_credentials: Option<&Credentials>) -> Self {
        Self::choose(target_host, proxy_credentials, &|name| {
            std::env::var(name).ok()
        })
    }

    /// [`ProxyChoice::from_env`] with an explicit environment.
    pub fn choose(
        target_host: &str,
        proxy_credentials: Option<&Credentials>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        match proxy_for(target_host, env) {
            None => ProxyChoice::Direct,
            Some(proxy) => {
                let credentials = proxy_credentials
                    .cloned()
                    .or_else(|| proxy.credentials.clone());
                ProxyChoice::Connect { proxy, credentials }
            }
        }
    }
}

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
    let request = connect_request(target, credentials)?;
    let mut stream = connect_tcp(&proxy.host, proxy.port, keep_alive)
        .await
        .map_err(|failure| failure.into_proxy_error(proxy))?;
    let protocol_error = |reason: String| DialError::ProxyProtocol {
        proxy: proxy.to_string(),
        reason,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| protocol_error(format!("sending CONNECT failed: {err}")))?;
    let head = read_response_head(&mut stream)
        .await
        .map_err(|err| protocol_error(err.to_string()))?;
    let (status, reason) =
        parse_status_line(&head).map_err(|err| protocol_error(err.to_string()))?;
    match status {
        200..=299 => {
            let target = authority(&target.host, target.port);
            tracing::debug!(%proxy, %target, "proxy tunnel open");
            Ok(stream)
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

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first variable among `names` that is set and not blank.
pub(crate) fn first_env(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        env(name)
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    })
}

/// The HTTP proxy to use for a connection to `host` (the agent port's host,
/// after `-tunnel`), or `None` for a direct connection.
///
/// Consults `HTTP_PROXY`, `http_proxy`, `HTTPS_PROXY`, `https_proxy`,
/// `ALL_PROXY`, `all_proxy` (first one set wins), unless `host` matches
/// `NO_PROXY`/`no_proxy` (see [`no_proxy_matches`]). Only `http://` proxies
/// (or values without a scheme) can tunnel; other schemes are ignored with a
/// warning.
pub fn proxy_for(host: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<ProxyAddr> {
    let (variable, value) = first_env(env, &PROXY_VARIABLES)?;
    if let Some((_, list)) = first_env(env, &NO_PROXY_VARIABLES) {
        if no_proxy_matches(&list, host) {
            return None;
        }
    }
    match parse_proxy_url(&value, variable) {
        Ok(proxy) => Some(proxy),
        Err(reason) => {
            // The value may hold a password: name the variable only.
            tracing::warn!(
                variable,
                reason,
                "ignoring the proxy setting for the agent port; connecting directly"
            );
            None
        }
    }
}

/// Parses `[http://][user[:password]@]host[:port][/...]`.
fn parse_proxy_url(value: &str, variable: &'static str) -> Result<ProxyAddr, &'static str> {
    let value = value.trim();
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err("only http:// proxies can tunnel to the agent port"),
        None => value,
    };
    let authority_part = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host_port) = match authority_part.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority_part),
    };
    let (host, port) = split_host_port(host_port).ok_or("the proxy address is not host[:port]")?;
    let credentials = userinfo.map(|userinfo| {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Credentials {
            user: percent_decode(user),
            password: Secret::new(percent_decode(password)),
        }
    });
    Ok(ProxyAddr {
        host,
        port,
        credentials,
        variable,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; port 80 by default.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return None,
            Ok(p) => p,
        },
    };
    Some((host.to_owned(), port))
}

/// `%XX` decoding for userinfo; invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `host` is excluded from proxying by the `no_proxy` list `list`.
///
/// Rules (curl's, as reqwest applies them): entries are comma-separated and
/// trimmed, case-insensitive; `*` matches everything; an IP address matches
/// itself and a CIDR block (`10.0.0.0/8`, `fd00::/8`) the addresses in it;
/// any other entry is a domain that matches itself and its subdomains, with
/// or without a leading `.` (or `*.`). A `:port` suffix on a domain entry is
/// ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(net) = parse_cidr(entry) {
                return host_ip.is_some_and(|ip| net.contains(ip));
            }
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            if host_ip.is_some() {
                return false;
            }
            let domain = strip_port(entry);
            let domain = domain
                .strip_prefix("*.")
                .or_else(|| domain.strip_prefix('.'))
                .unwrap_or(domain);
            let domain = domain
                .strip_suffix('.')
                .unwrap_or(domain)
                .to_ascii_lowercase();
            !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(&domain)
                        .is_some_and(|prefix| prefix.ends_with('.')))
        })
}

fn strip_port(entry: &str) -> &str {
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// An address block from a `no_proxy` entry.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn parse_cidr(entry: &str) -> Option<Cidr> {
    let (addr, prefix) = entry.split_once('/')?;
    let network = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()?;
    let prefix = prefix.parse::<u8>().ok()?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Cidr { network, prefix })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

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
        }
    }

    /// A port nobody listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
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
        let closed = closed_port().await;
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
        let closed = closed_port().await;
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

    #[test]
    fn no_proxy_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything.example", true),
            ("", "ci.example.com", false),
            ("example.com", "example.com", true),
            ("example.com", "ci.example.com", true),
            ("example.com", "a.b.example.com", true),
            ("example.com", "notexample.com", false),
            ("example.com", "example.com.evil", false),
            (".example.com", "example.com", true),
            (".example.com", "ci.example.com", true),
            ("*.example.com", "ci.example.com", true),
            ("EXAMPLE.com", "Ci.Example.COM", true),
            ("example.com.", "ci.example.com", true),
            ("example.com", "ci.example.com.", true),
            ("example.com:8080", "ci.example.com", true),
            ("other.org, example.com", "ci.example.com", true),
            (" other.org ,  ,example.com ", "ci.example.com", true),
            ("other.org", "ci.example.com", false),
            ("localhost,127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.20.30.40", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.0/24", "192.168.1.255", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("10.0.0.1/32", "10.0.0.1", true),
            ("10.0.0.0/33", "10.0.0.1", false),
            ("::1", "::1", true),
            ("[::1]", "[::1]", true),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("fd00::/8", "10.0.0.1", false),
            // A domain entry never matches an address by text.
            ("0.0.1", "10.0.0.1", false),
            ("example.com", "10.0.0.1", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                no_proxy_matches(list, host),
                *expected,
                "no_proxy={list:?} host={host:?}"
            );
        }
    }

    #[test]
    fn proxy_variables_and_precedence() {
        let env = env_of(&[]);
        assert_eq!(proxy_for("ci.example", &env), None);

        let env = env_of(&[("http_proxy", "http://proxy.corp:3128/")]);
        let proxy = proxy_for("ci.example", &env).unwrap();
        assert_eq!(
            proxy,
            ProxyAddr {
                host: "proxy.corp".to_owned(),
                port: 3128,
                credentials: None,
                variable: "http_proxy",
            }
        );
        assert_eq!(proxy.to_string(), "proxy.corp:3128 (from http_proxy)");

        let env = env_of(&[
            ("https_proxy", "https-proxy:1"),
            ("http_proxy", "lower:2"),
            ("HTTP_PROXY", "upper:3"),
        ]);
        assert_eq!(proxy_for("h", &env).unwrap().port, 3);
        let env = env_of(&[("https_proxy", "https-proxy:1"), ("ALL_PROXY", "all:4")]);
        assert_eq!(proxy_for("h", &env).unwrap().host, "https-proxy");
        let env = env_of(&[("all_proxy", "all:4")]);
        assert_eq!(proxy_for("h", &env).unwrap().variable, "all_proxy");
        // Blank values count as unset.
        let env = env_of(&[("HTTP_PROXY", " "), ("http_proxy", "p:5")]);
        assert_eq!(proxy_for("h", &env).unwrap().port, 5);

        // no_proxy
        let env = env_of(&[
            ("http_proxy", "p:1"),
            ("no_proxy", ".example.com,10.0.0.0/8"),
        ]);
        assert_eq!(proxy_for("ci.example.com", &env), None);
        assert_eq!(proxy_for("10.1.2.3", &env), None);
        assert!(proxy_for("ci.other.org", &env).is_some());
        let env = env_of(&[
            ("http_proxy", "p:1"),
            ("NO_PROXY", "a.org"),
            ("no_proxy", "b.org"),
        ]);
        assert_eq!(proxy_for("a.org", &env), None);
        assert!(proxy_for("b.org", &env).is_some());
    }

    #[test]
    fn proxy_url_forms() {
        let parse = |v: &str| parse_proxy_url(v, "http_proxy");
        assert_eq!(parse("proxy").unwrap().port, 80);
        assert_eq!(parse("HTTP://Proxy:8080").unwrap().host, "Proxy");
        let v6 = parse("http://[fd00::2]:3128").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::2", 3128));
        assert_eq!(parse("[::1]").unwrap().port, 80);
        let with_auth = parse("http://us%40er:p%3Ass@proxy:3128").unwrap();
        assert_eq!(with_auth.credentials, Some(creds("us@er", "p:ss")));
        assert!(!format!("{with_auth:?} {with_auth}").contains("p:ss"));
        assert_eq!(
            parse("http://u@proxy:1").unwrap().credentials,
            Some(creds("u", ""))
        );
        for bad in [
            "socks5://proxy:1080",
            "https://proxy:443",
            "http://:3128",
            "proxy:0",
            "proxy:99999",
            "proxy:port",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Unusable values fall back to a direct connection.
        let env = env_of(&[("http_proxy", "socks5://proxy:1080")]);
        assert_eq!(proxy_for("h", &env), None);
    }

    #[test]
    fn choice_prefers_proxy_credentials_over_the_url() {
        let env = env_of(&[("http_proxy", "http://url-user:url-pass@p:1")]);
        match ProxyChoice::choose("h", Some(&creds("cli", "pw")), &env) {
            ProxyChoice::Connect { credentials, .. } => {
                assert_eq!(credentials, Some(creds("cli", "pw")));
            }
            other => panic!("{other:?}"),
        }
        match ProxyChoice::choose("h", None, &env) {
            ProxyChoice::Connect { credentials, .. } => {
                assert_eq!(credentials, Some(creds("url-user", "url-pass")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ProxyChoice::choose("h", Some(&creds("cli", "pw")), &env_of(&[])),
            ProxyChoice::Direct
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%"), "%");
    }
}
