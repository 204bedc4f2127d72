//! What the link needs ([`LinkConfig`]), where it goes, and why it fails
//! ([`LinkError`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use control::link::{LINK_PATH, MAX_MESSAGE, PING_INTERVAL};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::connect::dial::DialError;
use crate::settings::{Credentials, Secret, Settings};

use super::labels::{automatic_labels, hello_labels};

/// How long the lender has to answer `hello` with `welcome`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the status is looked at for changes no event announced.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Lender text echoed in errors, at most (characters).
pub(super) const MAX_ECHOED: usize = 200;

/// What the link needs: from [`LinkConfig::from_settings`], timings
/// adjustable for tests.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where the link may go, in the order it tries them (at least one).
    pub(super) endpoints: Vec<Endpoint>,
    /// The agent token.
    pub(super) token: Secret,
    /// The node the link speaks for.
    pub node: String,
    /// Every label announced (given and automatic).
    pub labels: Vec<String>,
    /// The agent's version, announced.
    pub version: String,
    /// How often to ping; three intervals of silence mean dead.
    pub ping_interval: Duration,
    /// How long to wait for `welcome`.
    pub welcome_timeout: Duration,
    /// How often to look for status changes no event announced.
    pub status_interval: Duration,
    /// The first wait before reconnecting.
    pub reconnect_delay: Duration,
    /// The longest wait between attempts.
    pub reconnect_max_delay: Duration,
    /// `-proxyCredentials`.
    pub(super) proxy_credentials: Option<Credentials>,
    /// TLS for `wss` and `https://` proxies.
    pub(super) tls: Arc<rustls::ClientConfig>,
}

impl LinkConfig {
    /// The lenders' URLs as given, for logs.
    pub(super) fn shown(&self) -> String {
        let shown: Vec<&str> = self.endpoints.iter().map(|e| e.shown.as_str()).collect();
        shown.join(",")
    }

    /// The link `settings` ask for (`--lender`), or `None`.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(lender) = &settings.lender else {
            return Ok(None);
        };
        let endpoints = lender
            .urls
            .iter()
            .map(|url| Endpoint::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            anyhow::bail!("--lender needs at least one URL");
        }
        let tls = crate::connect::tls::client_config(settings)
            .context("cannot set up TLS for the lender link")?;
        let os_release = if cfg!(target_os = "linux") {
            std::fs::read_to_string("/etc/os-release")
                .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
                .ok()
        } else {
            None
        };
        let automatic = automatic_labels(
            std::env::consts::OS,
            std::env::consts::ARCH,
            os_release.as_deref(),
        );
        Ok(Some(Self {
            endpoints,
            token: lender.token.clone(),
            node: lender.node.clone(),
            labels: hello_labels(&lender.labels, automatic),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ping_interval: PING_INTERVAL,
            welcome_timeout: WELCOME_TIMEOUT,
            status_interval: STATUS_INTERVAL,
            reconnect_delay: settings.reconnect_delay,
            reconnect_max_delay: settings.reconnect_max_delay,
            proxy_credentials: settings.proxy_credentials.clone(),
            tls,
        }))
    }
}

/// Where the link goes, from the lender's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `ws(s)://host[:port]/path/v1/link`.
    pub(super) url: String,
    /// The host to dial (IPv6 without brackets) and its port.
    pub(super) host: String,
    pub(super) port: u16,
    /// `wss`.
    pub(super) secure: bool,
    /// The lender's URL as given, for logs.
    pub(super) shown: String,
}

impl Endpoint {
    pub(super) fn parse(lender: &str) -> Result<Self, LinkError> {
        let bad = |reason| LinkError::Url {
            url: lender.to_owned(),
            reason,
        };
        let uri: http::Uri = lender.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("only http and https URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("the URL must not carry user:password@"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("the URL has no host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/');
        Ok(Self {
            url: format!(
                "{}://{authority}{path}{LINK_PATH}",
                if secure { "wss" } else { "ws" }
            ),
            host,
            port,
            secure,
            shown: lender.to_owned(),
        })
    }
}

/// Why a link could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The lender URL cannot carry the link (local fault).
    #[error("the lender URL {url} cannot carry the link: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// TCP to the lender, or through the proxy, failed.
    #[error("cannot reach the lender: {}", describe_dial(.0))]
    Dial(DialError),
    /// The TLS handshake failed.
    #[error(
        "TLS with the lender failed: {0}; if it uses a private CA, pass it with -cert @FILE \
         (a last resort: -noCertificateCheck)"
    )]
    Tls(#[source] io::Error),
    /// The lender answered the upgrade with an HTTP error (peer's verdict).
    #[error("{}", refusal(*.status, .detail, .node))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The lender's explanation, shortened (may be empty).
        detail: String,
        /// The node the link speaks for.
        node: String,
    },
    /// The upgrade failed otherwise.
    #[error("the WebSocket upgrade at the lender failed: {0}")]
    Handshake(String),
    /// A phase took too long.
    #[error("{phase}: nothing within {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was going on.
        phase: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The lender closed the link.
    #[error("the lender closed the link{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    /// No frame for three ping intervals.
    #[error("the link carried nothing for {}: taken for dead", humantime::format_duration(*.0))]
    Silent(Duration),
    /// The connection failed (I/O, a protocol violation).
    #[error("the link failed: {0}")]
    Broken(String),
}

impl LinkError {
    pub(super) fn from_ws(err: WsError) -> Self {
        match err {
            WsError::ConnectionClosed | WsError::AlreadyClosed => LinkError::Closed(None),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                LinkError::Closed(Some("the connection ended without a close message".into()))
            }
            WsError::Capacity(_) => LinkError::Broken(format!(
                "the lender sent a message larger than {MAX_MESSAGE} bytes"
            )),
            WsError::Io(err) => LinkError::Broken(err.to_string()),
            other => LinkError::Broken(other.to_string()),
        }
    }
}

pub(super) fn describe_dial(err: &DialError) -> String {
    match err {
        DialError::Resolve { host, source } => format!("cannot resolve {host}: {source}"),
        DialError::Unreachable { target, source } => format!("{target} is not reachable: {source}"),
        DialError::Timeout {
            target,
            proxy,
            timeout,
        } => format!(
            "connecting to {target}{} timed out after {}s",
            proxy
                .as_ref()
                .map(|p| format!(" through the HTTP proxy {p}"))
                .unwrap_or_default(),
            timeout.as_secs_f32()
        ),
        other => other.to_string(),
    }
}

pub(super) fn refusal(status: u16, detail: &str, node: &str) -> String {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    match status {
        401 => format!(
            "the lender refused the agent token: HTTP 401{detail}; check --lender-token-file \
             (a token from `jnlp-lender token create --agent {node}`)"
        ),
        403 => format!(
            "the lender refused the link: HTTP 403{detail}; the token may not speak for node \
             {node}"
        ),
        404 => format!(
            "the lender has no link at {LINK_PATH}: HTTP 404{detail}; is --lender a jnlp-lender?"
        ),
        _ => format!("the lender refused the link: HTTP {status}{detail}"),
    }
}

/// Text from the lender, printable and short.
pub(super) fn echo(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHOED)
        .collect::<String>()
        .trim()
        .to_owned()
}
