//! The lender link: with `--lender URL`, one outbound WebSocket to the
//! lending pool `jnlp-lender`, over which the agent says who and where it
//! is and takes `borrow` and `return` orders. The wire contract is
//! [`control::link`]; this is the agent's side of it.
//!
//! # What goes over it
//!
//! - On every connection, `hello` (node, labels, version, status), then the
//!   lender's `welcome` within [`WELCOME_TIMEOUT`]. A restarted or
//!   reconnected agent announces where it is this way.
//! - For every event of the hub (the control socket's `events` stream), a
//!   `status` and the `event`. Busy and place changes that raise no event
//!   (a build starting) are found by a look at the status every
//!   [`STATUS_INTERVAL`] and sent as `status` only when something other
//!   than the traffic counters changed: an idle link carries only pings.
//! - Each `request` runs through the control socket's own code
//!   ([`carry_out_borrow`], [`carry_out_return`]), concurrently: a `borrow`
//!   with `wait` does not hold up status updates or other requests, and its
//!   reply follows the `status` and `event` of the move it waited for. Unlike
//!   a local peer, the lender is never "a build on this agent". `events` is
//!   refused (the link streams them anyway), and so is `secret_file`: the
//!   agent reads no file a remote peer names; the lender sends `secret`.
//! - A malformed message is logged and ignored; one that still carries a
//!   request id is answered with an error, so the lender does not wait for
//!   a reply that will never come.
//!
//! # Connection
//!
//! `{lender}/v1/link` (`ws` for `http`, `wss` for `https`), through the
//! proxy `*_proxy`/`no_proxy` choose for the host (as the WebSocket
//! transport does), TLS with the system roots plus `-cert`
//! ([`crate::connect::tls::client_config`]), `Authorization: Bearer` with
//! the token from `--lender-token-file`. The token never reaches a log line
//! or an error message. Whenever the link drops, the agent reconnects after
//! `--reconnect-delay` doubling to `--reconnect-max-delay` (1 s to 30 s by
//! default) with jitter; the wait starts over after a link that stayed up
//! [`STABLE`]. The agent pings every [`control::link::PING_INTERVAL`]; a
//! link that carried no frame for three intervals is dead.
//!
//! The link's state shows in the logs only (`lender link up`, `lender link
//! down`, `cannot open the lender link`): `status` is the control crate's,
//! which this does not change.
//!
//! # Layout
//!
//! - labels: [`automatic_labels`] (the label rules are
//!   [`control::labels`]);
//! - [`Session`]: one connection's protocol, without sockets or timers
//!   (`now` passed in; it says what to send and when to wake);
//! - [`Link`]: the task that dials, drives a session and reconnects.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use control::labels::is_label;
use control::link::{AgentMessage, LenderMessage, LINK_PATH, MAX_MESSAGE, PING_INTERVAL};
use control::{Event, Reply, Request, Response, Status};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument as _};

use super::control_server::{carry_out_borrow, carry_out_return, Handler};
use crate::connect::dial::{DialError, Io};
use crate::settings::{Credentials, Secret, Settings};
use crate::supervisor::Backoff;

/// How long the lender has to answer `hello` with `welcome`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the status is looked at for changes no event announced.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// A link up this long counts as stable: the next reconnect waits the
/// shortest time again.
pub const STABLE: Duration = Duration::from_secs(60);
/// Requests from the lender carried out at once; more get an error reply.
const MAX_IN_FLIGHT: usize = 64;
/// Time for TCP to the lender (or its proxy's answer).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for each of the TLS handshake and the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one message to be written: a lender that does not read is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a goodbye `close` when the agent stops.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lender text echoed in errors, at most (characters).
const MAX_ECHOED: usize = 200;

// ---------------------------------------------------------------------------
// Labels.

/// The labels every agent announces about itself: its OS and architecture
/// with their aliases ([`control::link::platform_labels`], which the lender
/// also derives from the hello), then the Linux distribution's `ID` from
/// `os_release` (the text of `/etc/os-release`) when there is one.
pub fn automatic_labels(os: &str, arch: &str, os_release: Option<&str>) -> Vec<String> {
    let mut labels = control::link::platform_labels(os, arch);
    labels.extend(os_release.and_then(distribution));
    labels
}

/// The `ID` of an os-release file (`ID=debian`, `ID="rhel"`), lower case,
/// if it makes a label.
fn distribution(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|line| line.trim().strip_prefix("ID="))?
        .trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
        .to_ascii_lowercase();
    is_label(&value).then_some(value)
}

/// `given` then `automatic`, each label once.
pub fn hello_labels(given: &[String], automatic: Vec<String>) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(given.len() + automatic.len());
    for label in given.iter().cloned().chain(automatic) {
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    labels
}

// ---------------------------------------------------------------------------
// Configuration and errors.

/// What the link needs: from [`LinkConfig::from_settings`], timings
/// adjustable for tests.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where the link goes.
    endpoint: Endpoint,
    /// The agent token.
    token: Secret,
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
    proxy_credentials: Option<Credentials>,
    /// TLS for `wss` and `https://` proxies.
    tls: Arc<rustls::ClientConfig>,
}

impl LinkConfig {
    /// The link `settings` ask for (`--lender`), or `None`.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(lender) = &settings.lender else {
            return Ok(None);
        };
        let endpoint = Endpoint::parse(&lender.url)?;
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
            endpoint,
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
struct Endpoint {
    /// `ws(s)://host[:port]/path/v1/link`.
    url: String,
    /// The host to dial (IPv6 without brackets) and its port.
    host: String,
    port: u16,
    /// `wss`.
    secure: bool,
    /// The lender's URL as given, for logs.
    shown: String,
}

impl Endpoint {
    fn parse(lender: &str) -> Result<Self, LinkError> {
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
    fn from_ws(err: WsError) -> Self {
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

fn describe_dial(err: &DialError) -> String {
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

fn refusal(status: u16, detail: &str, node: &str) -> String {
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
fn echo(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHOED)
        .collect::<String>()
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------
// The session: one connection's protocol, without I/O.

/// What a message from the lender asks for.
#[derive(Debug, PartialEq)]
enum Inbound {
    /// The first `welcome`: the link is up.
    Welcome {
        /// The lender's name.
        lender: String,
    },
    /// A request to carry out (`status`, `borrow` or `return`).
    Request {
        /// Its id.
        id: u64,
        /// The request.
        request: Request,
    },
    /// A request refused at once with this error.
    Refuse {
        /// Its id.
        id: u64,
        /// Why.
        message: String,
    },
    /// Nothing to do; logged with this reason.
    Ignore {
        /// Why.
        reason: String,
    },
}

/// One connection's protocol state.
///
/// ```text
///   hello sent ──welcome──▶ welcomed
///       │                      │
///       │ no welcome within    │ no frame for
///       │ welcome_timeout      │ 3 × ping_interval
///       ▼                      ▼
///     dead ◀───────────────── dead
/// ```
///
/// Requests are served in both states: a lender may ask before its
/// `welcome` is read.
#[derive(Debug)]
struct Session {
    ping_interval: Duration,
    welcome_timeout: Duration,
    welcome_deadline: Option<Instant>,
    last_heard: Instant,
    last_ping: Instant,
    /// The last status sent, without its counters.
    last_status: Option<Status>,
}

impl Session {
    fn new(now: Instant, ping_interval: Duration, welcome_timeout: Duration) -> Self {
        Self {
            ping_interval,
            welcome_timeout,
            welcome_deadline: Some(now + welcome_timeout),
            last_heard: now,
            last_ping: now,
            last_status: None,
        }
    }

    /// The first message.
    fn hello(
        &mut self,
        node: &str,
        labels: &[String],
        version: &str,
        status: Status,
    ) -> AgentMessage {
        self.last_status = Some(essence(&status));
        AgentMessage::Hello {
            node: node.to_owned(),
            labels: labels.to_vec(),
            version: version.to_owned(),
            status,
        }
    }

    /// A frame arrived (any: text, ping, pong).
    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    fn welcomed(&self) -> bool {
        self.welcome_deadline.is_none()
    }

    /// A text message from the lender.
    fn on_text(&mut self, text: &str) -> Inbound {
        if text.len() > MAX_MESSAGE {
            return Inbound::Ignore {
                reason: format!("a message larger than {MAX_MESSAGE} bytes"),
            };
        }
        match serde_json::from_str::<LenderMessage>(text) {
            Ok(LenderMessage::Welcome { lender }) => {
                if self.welcome_deadline.take().is_some() {
                    Inbound::Welcome { lender }
                } else {
                    Inbound::Ignore {
                        reason: "a second welcome".into(),
                    }
                }
            }
            Ok(LenderMessage::Request { id, request }) => admit(id, request),
            Err(err) => {
                // A request with a readable id gets an answer, so that the
                // lender does not wait for one forever.
                let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let id = value
                    .as_ref()
                    .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("request"))
                    .and_then(|v| v.get("id"))
                    .and_then(serde_json::Value::as_u64);
                match id {
                    Some(id) => Inbound::Refuse {
                        id,
                        message: format!("bad request: {err}"),
                    },
                    None => Inbound::Ignore {
                        reason: format!("not a lender message: {err}"),
                    },
                }
            }
        }
    }

    /// A hub event: the status after it, then the event.
    fn on_event(&mut self, event: Event) -> [AgentMessage; 2] {
        self.last_status = Some(essence(&event.status));
        [
            AgentMessage::Status {
                status: event.status.clone(),
            },
            AgentMessage::Event { event },
        ]
    }

    /// A look at the status: a `status` message if it changed in more than
    /// its counters, or if `force`d.
    fn on_status(&mut self, status: Status, force: bool) -> Option<AgentMessage> {
        let now = essence(&status);
        if !force && self.last_status.as_ref() == Some(&now) {
            return None;
        }
        self.last_status = Some(now);
        Some(AgentMessage::Status { status })
    }

    /// When [`Session::tick`] should run next.
    fn deadline(&self) -> Instant {
        let mut next = (self.last_ping + self.ping_interval).min(self.last_heard + self.silence());
        if let Some(welcome) = self.welcome_deadline {
            next = next.min(welcome);
        }
        next
    }

    /// Whether to ping now; an error when the link is dead.
    fn tick(&mut self, now: Instant) -> Result<bool, LinkError> {
        if let Some(deadline) = self.welcome_deadline {
            if now >= deadline {
                return Err(LinkError::Timeout {
                    phase: "waiting for the lender's welcome",
                    after: self.welcome_timeout,
                });
            }
        }
        if now.saturating_duration_since(self.last_heard) >= self.silence() {
            return Err(LinkError::Silent(self.silence()));
        }
        if now >= self.last_ping + self.ping_interval {
            self.last_ping = now;
            return Ok(true);
        }
        Ok(false)
    }

    fn silence(&self) -> Duration {
        self.ping_interval * 3
    }
}

/// A request as the link accepts it: `events` and `secret_file` refused.
fn admit(id: u64, request: Request) -> Inbound {
    match request {
        Request::Events => Inbound::Refuse {
            id,
            message: "events is not served over the lender link: the link streams every event \
                      anyway"
                .into(),
        },
        Request::Borrow(borrow) if borrow.secret_file.is_some() => Inbound::Refuse {
            id,
            message: "secret_file is refused over the lender link: the agent reads no file a \
                      remote peer names; send secret"
                .into(),
        },
        request => Inbound::Request { id, request },
    }
}

/// The status without what changes all the time (traffic counters, rates,
/// activity times, memory): what a `status` message is worth sending for.
fn essence(status: &Status) -> Status {
    let mut s = status.clone();
    s.bytes_to_controller = 0;
    s.bytes_from_controller = 0;
    s.commands_to_controller = 0;
    s.commands_from_controller = 0;
    s.bytes_per_second_to_controller = 0;
    s.bytes_per_second_from_controller = 0;
    s.busy.requests_in_flight = 0;
    s.busy.build_processes = 0;
    s.busy.last_activity_ms = None;
    if let Some(warm) = &mut s.warm_engine {
        warm.rss_kib = None;
    }
    s
}

/// `message` as a text frame; an oversized reply becomes an error reply,
/// any other oversized message is dropped (logged).
fn frame(message: &AgentMessage) -> Option<Message> {
    let text = match serde_json::to_string(message) {
        Ok(text) => text,
        Err(err) => {
            warn!(%err, "cannot encode a message for the lender");
            return None;
        }
    };
    if text.len() <= MAX_MESSAGE {
        return Some(Message::text(text));
    }
    match message {
        AgentMessage::Reply { id, .. } => {
            warn!(
                id,
                "a reply to the lender is too large; sending an error instead"
            );
            frame(&AgentMessage::Reply {
                id: *id,
                reply: Reply::error(format!(
                    "the reply would be larger than {MAX_MESSAGE} bytes"
                )),
            })
        }
        _ => {
            warn!(
                len = text.len(),
                "a message for the lender is too large; not sent"
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The driver.

/// The running link; dropping it (or [`Link::stop`]) ends it.
#[derive(Debug)]
pub struct Link {
    cancel: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts keeping the link of `config` for `handler` (the hub), until
    /// `shutdown` is cancelled or the handle dropped.
    pub fn start(
        config: LinkConfig,
        handler: Arc<dyn Handler>,
        shutdown: &CancellationToken,
    ) -> Self {
        let cancel = shutdown.child_token();
        let span = tracing::info_span!("lender_link", lender = %config.endpoint.shown);
        let task = tokio::spawn(run(config, handler, cancel.clone()).instrument(span));
        Self {
            cancel: cancel.drop_guard(),
            task,
        }
    }

    /// Ends the link (a `close` to the lender, if it is up) and waits.
    pub async fn stop(self) {
        let Link { cancel, task } = self;
        drop(cancel);
        let _ = task.await;
    }
}

/// How a session ended.
#[derive(Debug)]
enum Stop {
    /// The agent is stopping.
    Shutdown,
    /// The link failed or was closed.
    Failed(LinkError),
}

/// Connects, serves, and reconnects with backoff until cancelled.
async fn run(config: LinkConfig, handler: Arc<dyn Handler>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(config.reconnect_delay, config.reconnect_max_delay);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let span = tracing::info_span!("connection", attempt);
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            connected = connect(&config).instrument(span.clone()) => connected,
        };
        let delay;
        match connected {
            Err(err) => {
                delay = backoff.next_delay();
                let retry_in = humantime::format_duration(round_ms(delay)).to_string();
                let _enter = span.enter();
                if matches!(err, LinkError::Refused { .. }) {
                    error!(%err, %retry_in, "cannot open the lender link");
                } else {
                    warn!(%err, %retry_in, "cannot open the lender link");
                }
            }
            Ok(ws) => {
                let started = Instant::now();
                let (stop, welcomed) = serve(ws, &config, &handler, &cancel)
                    .instrument(span.clone())
                    .await;
                let err = match stop {
                    Stop::Shutdown => {
                        let _enter = span.enter();
                        info!("lender link closed: the agent is stopping");
                        return;
                    }
                    Stop::Failed(err) => err,
                };
                let up = started.elapsed();
                if welcomed && up >= STABLE {
                    backoff.reset();
                }
                delay = backoff.next_delay();
                let retry_in = humantime::format_duration(round_ms(delay)).to_string();
                let up_for = humantime::format_duration(Duration::from_secs(up.as_secs()));
                let _enter = span.enter();
                if welcomed {
                    warn!(%err, up_for = %up_for, %retry_in, "lender link down; reconnecting");
                } else {
                    warn!(%err, %retry_in, "lender link failed before the lender's welcome");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

type Ws = WebSocketStream<Box<dyn Io>>;

/// TCP (through the proxy), TLS for `wss`, and the upgrade with the token.
async fn connect(config: &LinkConfig) -> Result<Ws, LinkError> {
    use crate::connect::websocket::{dial_stream, secure_stream, StreamError, WsTarget};
    let endpoint = &config.endpoint;
    // The controller's WebSocket client path: same proxy, same TLS roots.
    let target = WsTarget {
        host: endpoint.host.clone(),
        port: endpoint.port,
        secure: endpoint.secure,
    };
    let tls = Some(&config.tls);
    let tcp = dial_stream(
        &target,
        config.proxy_credentials.as_ref(),
        tls,
        DIAL_TIMEOUT,
    )
    .await
    .map_err(LinkError::Dial)?;
    let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, secure_stream(&target, tcp, tls)).await {
        Ok(Ok(io)) => io,
        Ok(Err(StreamError::Url(reason))) => {
            return Err(LinkError::Url {
                url: endpoint.shown.clone(),
                reason,
            })
        }
        Ok(Err(StreamError::Tls(err))) => return Err(LinkError::Tls(err)),
        Err(_) => {
            return Err(LinkError::Timeout {
                phase: "the TLS handshake with the lender",
                after: HANDSHAKE_TIMEOUT,
            })
        }
    };

    let mut request = endpoint
        .url
        .as_str()
        .into_client_request()
        .map_err(|err| LinkError::Handshake(err.to_string()))?;
    // Checked by the CLI (visible ASCII); the error must not quote it.
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
        .map_err(|_| LinkError::Handshake("the token cannot go in an HTTP header".into()))?;
    auth.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, auth);
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("jnlp-agent/", env!("CARGO_PKG_VERSION"))),
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let upgrade = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => Err(LinkError::Refused {
            status: response.status().as_u16(),
            detail: response
                .body()
                .as_deref()
                .map(|b| echo(&String::from_utf8_lossy(b)))
                .unwrap_or_default(),
            node: config.node.clone(),
        }),
        Ok(Err(WsError::Io(err))) => Err(LinkError::Broken(err.to_string())),
        Ok(Err(err)) => Err(LinkError::Handshake(err.to_string())),
        Err(_) => Err(LinkError::Timeout {
            phase: "the WebSocket upgrade at the lender",
            after: HANDSHAKE_TIMEOUT,
        }),
    }
}

/// Serves one connection: hello, then events, requests and pings until it
/// ends. Returns how, and whether the lender had welcomed the agent.
async fn serve(
    ws: Ws,
    config: &LinkConfig,
    handler: &Arc<dyn Handler>,
    cancel: &CancellationToken,
) -> (Stop, bool) {
    let (mut sink, mut stream) = ws.split();
    // Subscribed before the hello's status is read, so no change falls
    // between (an event may repeat what the hello already says).
    let mut events = handler.subscribe();
    let mut session = Session::new(Instant::now(), config.ping_interval, config.welcome_timeout);
    handler.settle().await;
    let hello = session.hello(
        &config.node,
        &config.labels,
        &config.version,
        handler.status(),
    );
    debug!(node = %config.node, labels = ?config.labels, "hello sent");

    let (replies, mut replied) = mpsc::channel::<(u64, Reply)>(MAX_IN_FLIGHT);
    let in_flight = InFlight {
        tasks: TaskTracker::new(),
        cancel: cancel.child_token(),
        slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        replies,
    };
    let mut status_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.status_interval,
        config.status_interval,
    );
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut outgoing: Vec<Message> = frame(&hello).into_iter().collect();
    let stop = 'session: loop {
        for message in outgoing.drain(..) {
            if let Err(stop) = send(&mut sink, message, cancel).await {
                break 'session stop;
            }
        }
        let wake = tokio::time::Instant::from_std(session.deadline());
        tokio::select! {
            // In this order: an event goes out before the reply it led to
            // (both wait when a move ends), so a lender that reads `ok` has
            // read the status that shows it.
            biased;
            () = cancel.cancelled() => break Stop::Shutdown,
            () = tokio::time::sleep_until(wake) => match session.tick(Instant::now()) {
                Ok(true) => outgoing.push(Message::Ping(Default::default())),
                Ok(false) => {}
                Err(err) => break Stop::Failed(err),
            },
            frame_in = stream.next() => {
                let message = match frame_in {
                    None => break Stop::Failed(LinkError::Closed(None)),
                    Some(Err(err)) => break Stop::Failed(LinkError::from_ws(err)),
                    Some(Ok(message)) => message,
                };
                session.heard(Instant::now());
                let text = match message {
                    Message::Text(text) => text,
                    Message::Close(close) => {
                        let reason = close
                            .map(|c| echo(&format!("{} {}", u16::from(c.code), c.reason.as_str())));
                        break Stop::Failed(LinkError::Closed(reason));
                    }
                    Message::Binary(_) => {
                        warn!("ignored a binary message from the lender");
                        continue;
                    }
                    // Pings are answered by tungstenite as it reads on.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                match session.on_text(text.as_str()) {
                    Inbound::Welcome { lender } => {
                        info!(
                            lender_name = %echo(&lender),
                            node = %config.node,
                            labels = ?config.labels,
                            "lender link up"
                        );
                    }
                    Inbound::Ignore { reason } => {
                        warn!(reason = %echo(&reason), "ignored a message from the lender");
                    }
                    Inbound::Refuse { id, message } => {
                        warn!(id, %message, "refused a request from the lender");
                        let reply = Reply::Error(message);
                        outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
                    }
                    Inbound::Request { id, request } => {
                        if let Some(reply) = in_flight.start(handler, id, request) {
                            outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
                        }
                    }
                }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    for message in session.on_event(event) {
                        outgoing.extend(frame(&message));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "the lender link fell behind the events; sending the status");
                    let status = session.on_status(handler.status(), true);
                    outgoing.extend(status.as_ref().and_then(frame));
                }
                // The hub is gone: the agent is stopping.
                Err(broadcast::error::RecvError::Closed) => break Stop::Shutdown,
            },
            Some((id, reply)) = replied.recv() => {
                outgoing.extend(frame(&AgentMessage::Reply { id, reply }));
            }
            _ = status_tick.tick() => {
                // A fresh count of build processes: the pool lends only
                // agents that report idle.
                handler.settle().await;
                let status = session.on_status(handler.status(), false);
                outgoing.extend(status.as_ref().and_then(frame));
            }
        }
    };
    in_flight.finish().await;
    if matches!(stop, Stop::Shutdown) {
        let goodbye = Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "the agent is stopping".into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(goodbye)).await;
    }
    (stop, session.welcomed())
}

/// The requests of one connection being carried out, each in its own
/// task so that none waits behind another (a `borrow` with `wait` takes as
/// long as the move).
struct InFlight {
    tasks: TaskTracker,
    /// Cancelled when the connection ends: a reply has nowhere to go then
    /// (the order itself stays queued; the next hello tells the outcome).
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
    replies: mpsc::Sender<(u64, Reply)>,
}

impl InFlight {
    /// Starts carrying out `request` (admitted: see [`admit`]); its reply
    /// comes through `replies`. `status`, and a request beyond
    /// [`MAX_IN_FLIGHT`], are answered at once.
    fn start(&self, handler: &Arc<dyn Handler>, id: u64, request: Request) -> Option<Reply> {
        if matches!(request, Request::Status) {
            return Some(Reply::Ok(Response::Status(handler.status())));
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Some(Reply::error(format!(
                "too many requests in flight (at most {MAX_IN_FLIGHT}); try again later"
            )));
        };
        let handler = Arc::clone(handler);
        let replies = self.replies.clone();
        let cancel = self.cancel.clone();
        let work = async move {
            match request {
                // The lender is never a build on this agent.
                Request::Borrow(borrow) => carry_out_borrow(&*handler, borrow, false).await,
                Request::Return { when, wait } => carry_out_return(&*handler, when, wait).await,
                Request::Status => Reply::Ok(Response::Status(handler.status())),
                Request::Events => Reply::error("events is not served over the lender link"),
            }
        };
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    reply = work => {
                        let _ = replies.send((id, reply)).await;
                    }
                }
                drop(slot);
            }
            .instrument(tracing::info_span!("lender_request", id)),
        );
        None
    }

    /// Cancels what is still running and waits for it.
    async fn finish(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Writes one message, within [`WRITE_TIMEOUT`].
async fn send(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    message: Message,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    tokio::select! {
        () = cancel.cancelled() => Err(Stop::Shutdown),
        sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Stop::Failed(LinkError::from_ws(err))),
            Err(_) => Err(Stop::Failed(LinkError::Timeout {
                phase: "writing to the lender",
                after: WRITE_TIMEOUT,
            })),
        },
    }
}

#[cfg(test)]
// tungstenite's server callback fixes the (large) error type.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
mod tests {
    use std::sync::Mutex;

    use control::{BorrowRequest, EventKind, Phase, Placement, Target, When};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::handshake::server::{
        ErrorResponse, Request as UpgradeRequest, Response as UpgradeResponse,
    };

    use super::*;

    const TOKEN: &str = "jla_0123456789abcdef";

    #[test]
    fn automatic_labels_name_the_platform_as_the_lender_does() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nNAME=\"Debian\"\nID=debian\n";
        assert_eq!(
            automatic_labels("linux", "x86_64", Some(debian)),
            ["linux", "x86_64", "amd64", "debian"]
        );
        assert_eq!(
            automatic_labels("macos", "aarch64", None),
            ["macos", "aarch64", "arm64", "mac"]
        );
        let quoted = "ID_LIKE=\"fedora\"\nID=\"RHEL\"\n";
        assert_eq!(
            automatic_labels("linux", "aarch64", Some(quoted)),
            ["linux", "aarch64", "arm64", "rhel"]
        );
        // An ID that is no label is left out, not sent.
        let odd = "ID=\"my distro\"\n";
        assert_eq!(
            automatic_labels("linux", "riscv64", Some(odd)),
            ["linux", "riscv64"]
        );
        assert_eq!(
            hello_labels(
                &["xcode16".into(), "linux".into()],
                automatic_labels("linux", "x86_64", None)
            ),
            ["xcode16", "linux", "x86_64", "amd64"]
        );
        for bad in [
            "", "a b", "a&b", "a|b", "!a", "a<", "a>", "(a", "a)", "\"a", "'a", "a\u{7}",
        ] {
            assert!(!is_label(bad), "{bad:?}");
        }
        for good in ["x86-64", "xcode16", "os:linux", "a.b_c", "ünï"] {
            assert!(is_label(good), "{good:?}");
        }
        assert!(!is_label(&"a".repeat(control::labels::MAX_LABEL + 1)));
    }

    #[test]
    fn the_endpoint_is_the_link_path_under_the_lender_url() {
        let plain = Endpoint::parse("http://lender.test:8080").unwrap();
        assert_eq!(plain.url, "ws://lender.test:8080/v1/link");
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.secure),
            ("lender.test", 8080, false)
        );
        let tls = Endpoint::parse("https://pool.example/lender/").unwrap();
        assert_eq!(tls.url, "wss://pool.example/lender/v1/link");
        assert_eq!((tls.port, tls.secure), (443, true));
        let v6 = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.url.as_str()),
            ("::1", "ws://[::1]:9/v1/link")
        );
        for bad in ["ftp://x/", "lender:8080", "http://u:p@x/", "not a url"] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, LinkError::Url { .. }), "{bad}: {err}");
        }
    }

    fn session() -> (Session, Instant) {
        let now = Instant::now();
        (
            Session::new(now, Duration::from_secs(60), Duration::from_secs(30)),
            now,
        )
    }

    fn borrow(secret: Option<&str>, secret_file: Option<&str>) -> Request {
        Request::Borrow(BorrowRequest {
            target: Target::Url {
                url: "https://b.example/".into(),
            },
            name: "guest".into(),
            secret: secret.map(str::to_owned),
            secret_file: secret_file.map(Into::into),
            lease: None,
            idle_return: None,
            when: When::Idle,
            wait: Some(Duration::from_secs(60)),
            transport: None,
        })
    }

    fn text(message: &LenderMessage) -> String {
        serde_json::to_string(message).unwrap()
    }

    #[test]
    fn lender_messages_are_welcomes_requests_refusals_or_ignored() {
        let (mut s, _) = session();
        assert!(!s.welcomed());
        let welcome = text(&LenderMessage::Welcome {
            lender: "pool-1".into(),
        });
        assert_eq!(
            s.on_text(&welcome),
            Inbound::Welcome {
                lender: "pool-1".into()
            }
        );
        assert!(s.welcomed());
        assert!(matches!(s.on_text(&welcome), Inbound::Ignore { .. }));

        let ok = borrow(Some("s3cret"), None);
        assert_eq!(
            s.on_text(&text(&LenderMessage::Request {
                id: 1,
                request: ok.clone()
            })),
            Inbound::Request { id: 1, request: ok }
        );
        let refused = |inbound: Inbound, id: u64, says: &str| match inbound {
            Inbound::Refuse { id: got, message } => {
                assert_eq!(got, id);
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{other:?}"),
        };
        refused(
            s.on_text(&text(&LenderMessage::Request {
                id: 2,
                request: borrow(None, Some("/etc/shadow")),
            })),
            2,
            "secret_file is refused",
        );
        refused(
            s.on_text(&text(&LenderMessage::Request {
                id: 3,
                request: Request::Events,
            })),
            3,
            "events is not served",
        );
        refused(
            s.on_text(r#"{"type":"request","id":4,"request":{"command":"fly"}}"#),
            4,
            "bad request",
        );
        for junk in [
            "",
            "nope",
            "[1,2]",
            r#"{"type":"hug"}"#,
            r#"{"type":"request","id":-1,"request":{}}"#,
            r#"{"type":"welcome"}"#,
        ] {
            assert!(matches!(s.on_text(junk), Inbound::Ignore { .. }), "{junk}");
        }
        let huge = "x".repeat(MAX_MESSAGE + 1);
        assert!(matches!(s.on_text(&huge), Inbound::Ignore { .. }));
    }

    #[test]
    fn pings_go_out_on_time_and_silence_or_no_welcome_means_dead() {
        let ping = Duration::from_secs(60);
        let (mut s, t0) = session();
        assert_eq!(
            s.deadline(),
            t0 + Duration::from_secs(30),
            "the welcome first"
        );
        let err = s.tick(t0 + Duration::from_secs(30)).unwrap_err();
        assert!(err.to_string().contains("welcome"), "{err}");

        let (mut s, t0) = session();
        s.on_text(&text(&LenderMessage::Welcome { lender: "l".into() }));
        assert_eq!(s.deadline(), t0 + ping);
        assert!(!s.tick(t0 + ping / 2).unwrap());
        assert!(s.tick(t0 + ping).unwrap(), "ping due");
        assert!(!s.tick(t0 + ping).unwrap(), "once");
        s.heard(t0 + ping + Duration::from_secs(1));
        assert!(s.tick(t0 + ping * 2).unwrap());
        // Heard last at 61 s: dead at 241 s, not before.
        assert!(s.tick(t0 + ping * 3).unwrap());
        assert!(s.tick(t0 + Duration::from_secs(240)).is_ok());
        let err = s.tick(t0 + Duration::from_secs(241)).unwrap_err();
        assert!(
            matches!(err, LinkError::Silent(d) if d == ping * 3),
            "{err}"
        );
    }

    fn status(placement: Placement, phase: Phase) -> Status {
        Status {
            placement,
            phase,
            ..Status::default()
        }
    }

    #[test]
    fn a_status_goes_out_only_when_more_than_its_counters_changed() {
        let (mut s, _) = session();
        let home = status(Placement::Home, Phase::Online);
        let hello = s.hello("mac-01", &["a".into()], "0.1.0", home.clone());
        assert!(
            matches!(&hello, AgentMessage::Hello { node, labels, status, .. } if node == "mac-01" && labels == &["a"] && *status == home)
        );
        let mut busier = home.clone();
        busier.bytes_to_controller = 1 << 20;
        busier.busy.last_activity_ms = Some(5);
        busier.busy.requests_in_flight = 0;
        assert_eq!(s.on_status(busier.clone(), false), None);
        assert!(s.on_status(busier.clone(), true).is_some(), "forced");
        busier.busy.busy = true;
        assert_eq!(
            s.on_status(busier.clone(), false),
            Some(AgentMessage::Status {
                status: busier.clone()
            })
        );
        assert_eq!(s.on_status(busier.clone(), false), None);
        let away = status(Placement::Borrowed, Phase::Online);
        let event = Event {
            at_ms: 1,
            kind: EventKind::Moved { ms: 10 },
            status: away.clone(),
        };
        let [first, second] = s.on_event(event.clone());
        assert_eq!(
            first,
            AgentMessage::Status {
                status: away.clone()
            }
        );
        assert_eq!(second, AgentMessage::Event { event });
        assert_eq!(
            s.on_status(away, false),
            None,
            "already sent with the event"
        );
    }

    #[test]
    fn oversized_replies_become_errors() {
        let big = AgentMessage::Reply {
            id: 9,
            reply: Reply::error("x".repeat(MAX_MESSAGE)),
        };
        let Some(Message::Text(text)) = frame(&big) else {
            panic!()
        };
        let back: AgentMessage = serde_json::from_str(text.as_str()).unwrap();
        assert!(
            matches!(back, AgentMessage::Reply { id: 9, reply: Reply::Error(m) } if m.contains("larger than"))
        );
        let status = Status {
            last_error: Some("x".repeat(MAX_MESSAGE)),
            ..Status::default()
        };
        assert!(frame(&AgentMessage::Status { status }).is_none());
    }

    // -- The driver, against a lender written here. --

    /// Records orders; the status and the events are the test's.
    struct FakeHub {
        status: Mutex<Status>,
        borrows: Mutex<Vec<BorrowRequest>>,
        events: broadcast::Sender<Event>,
    }

    impl FakeHub {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                status: Mutex::new(status(Placement::Home, Phase::Online)),
                borrows: Mutex::new(Vec::new()),
                events: broadcast::channel(16).0,
            })
        }

        fn moved(&self, placement: Placement) {
            let status = status(placement, Phase::Online);
            *self.status.lock().unwrap() = status.clone();
            self.events
                .send(Event {
                    at_ms: 1,
                    kind: EventKind::Moved { ms: 5 },
                    status,
                })
                .unwrap();
        }
    }

    impl Handler for FakeHub {
        fn status(&self) -> Status {
            self.status.lock().unwrap().clone()
        }
        fn borrow(&self, request: BorrowRequest) -> Result<String, String> {
            self.borrows.lock().unwrap().push(request);
            Ok("accepted".into())
        }
        fn give_back(&self, _when: When) -> Result<String, String> {
            Ok("accepted".into())
        }
        fn subscribe(&self) -> broadcast::Receiver<Event> {
            self.events.subscribe()
        }
    }

    type ServerWs = WebSocketStream<TcpStream>;

    /// A lender on 127.0.0.1:0 that accepts links with [`TOKEN`] and hands
    /// each over; other tokens get 401.
    async fn fake_lender() -> (String, mpsc::UnboundedReceiver<ServerWs>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let check = |request: &UpgradeRequest, response: UpgradeResponse| {
                    let auth = request.headers().get("authorization");
                    if request.uri().path() == LINK_PATH
                        && auth.is_some_and(|a| a == format!("Bearer {TOKEN}").as_str())
                    {
                        Ok(response)
                    } else {
                        let mut refusal = ErrorResponse::new(Some("unknown token".into()));
                        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                        Err(refusal)
                    }
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                    let _ = tx.send(ws);
                }
            }
        });
        (url, rx)
    }

    fn config(url: &str, token: &str, ping_interval: Duration) -> LinkConfig {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        LinkConfig {
            endpoint: Endpoint::parse(url).unwrap(),
            token: Secret::new(token),
            node: "mac-01".into(),
            labels: vec!["linux".into(), "xcode16".into()],
            version: "0.1.0".into(),
            ping_interval,
            welcome_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            reconnect_delay: Duration::from_millis(10),
            reconnect_max_delay: Duration::from_millis(50),
            proxy_credentials: None,
            tls: Arc::new(tls),
        }
    }

    async fn receive(ws: &mut ServerWs) -> Option<AgentMessage> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a message within 10 s")?
                .ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    async fn order(ws: &mut ServerWs, message: &LenderMessage) {
        ws.send(Message::text(text(message))).await.unwrap();
    }

    #[tokio::test]
    async fn requests_run_concurrently_beside_events_and_odd_ones_get_errors() {
        let (url, mut links) = fake_lender().await;
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let link = Link::start(
            config(&url, TOKEN, Duration::from_secs(60)),
            hub.clone(),
            &shutdown,
        );
        let mut ws = links.recv().await.unwrap();
        let Some(AgentMessage::Hello {
            node,
            labels,
            status,
            ..
        }) = receive(&mut ws).await
        else {
            panic!("no hello")
        };
        assert_eq!(node, "mac-01");
        assert_eq!(labels, ["linux", "xcode16"]);
        assert_eq!(status.placement, Placement::Home);
        order(
            &mut ws,
            &LenderMessage::Welcome {
                lender: "pool".into(),
            },
        )
        .await;

        // A borrow that waits, then requests that must not wait behind it.
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 1,
                request: borrow(Some("s3cret"), None),
            },
        )
        .await;
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 2,
                request: Request::Status,
            },
        )
        .await;
        ws.send(Message::text("garbage")).await.unwrap();
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        order(
            &mut ws,
            &LenderMessage::Request {
                id: 3,
                request: Request::Events,
            },
        )
        .await;
        let mut replies = Vec::new();
        while replies.len() < 2 {
            match receive(&mut ws).await.unwrap() {
                AgentMessage::Reply { id, reply } => replies.push((id, reply)),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(&replies[0], (2, Reply::Ok(Response::Status(s))) if s.placement == Placement::Home),
            "{replies:?}"
        );
        assert!(matches!(&replies[1], (3, Reply::Error(_))), "{replies:?}");
        assert_eq!(hub.borrows.lock().unwrap().len(), 1);
        assert_eq!(
            hub.borrows.lock().unwrap()[0].secret.as_deref(),
            Some("s3cret")
        );

        // The move: a status and the event, and the borrow's reply.
        hub.moved(Placement::Borrowed);
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|m| matches!(m, AgentMessage::Reply { id: 1, .. }))
        {
            seen.push(receive(&mut ws).await.unwrap());
        }
        assert!(
            seen.iter().any(|m| matches!(m, AgentMessage::Status { status } if status.placement == Placement::Borrowed)),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(m, AgentMessage::Event { event } if event.kind == EventKind::Moved { ms: 5 })),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(
                m,
                AgentMessage::Reply {
                    id: 1,
                    reply: Reply::Ok(_)
                }
            )),
            "{seen:?}"
        );

        // Stopping says goodbye.
        link.stop().await;
        assert!(receive(&mut ws).await.is_none());
    }

    #[tokio::test]
    async fn a_silent_lender_is_dropped_and_the_link_comes_back_with_a_hello() {
        let (url, mut links) = fake_lender().await;
        let hub = FakeHub::new();
        let shutdown = CancellationToken::new();
        let ping = Duration::from_millis(100);
        let _link = Link::start(config(&url, TOKEN, ping), hub.clone(), &shutdown);
        let mut first = links.recv().await.unwrap();
        assert!(matches!(
            receive(&mut first).await,
            Some(AgentMessage::Hello { .. })
        ));
        order(
            &mut first,
            &LenderMessage::Welcome {
                lender: "pool".into(),
            },
        )
        .await;
        hub.moved(Placement::Borrowed);
        let went_quiet = Instant::now();
        // This lender now reads nothing, so it answers no ping.
        let mut second = tokio::time::timeout(Duration::from_secs(10), links.recv())
            .await
            .expect("reconnected")
            .unwrap();
        assert!(
            went_quiet.elapsed() >= ping * 3,
            "{:?}",
            went_quiet.elapsed()
        );
        let Some(AgentMessage::Hello { status, .. }) = receive(&mut second).await else {
            panic!("no hello")
        };
        assert_eq!(status.placement, Placement::Borrowed, "the current place");
        shutdown.cancel();
        drop(first);
    }

    #[tokio::test]
    async fn a_refused_token_is_named_by_its_file_never_shown() {
        let (url, _links) = fake_lender().await;
        let wrong = "jla_wrong_wrong_wrong";
        let Err(err) = connect(&config(&url, wrong, PING_INTERVAL)).await else {
            panic!("connected")
        };
        assert!(
            matches!(&err, LinkError::Refused { status: 401, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("--lender-token-file"), "{text}");
        assert!(text.contains("unknown token"), "{text}");
        assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));

        // Nothing listens: a dial error that names the lender's address.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let Err(err) = connect(&config(&gone, TOKEN, PING_INTERVAL)).await else {
            panic!("connected")
        };
        assert!(matches!(err, LinkError::Dial(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot reach the lender: 127.0.0.1:"),
            "{err}"
        );
    }
}
