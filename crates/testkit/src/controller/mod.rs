//! A scripted Jenkins controller for tests: the discovery HTTP endpoints,
//! the JNLP4-connect server side of the agent port and the WebSocket agent
//! endpoint of the web port, with a node table, cookies, and a scripted peer
//! for every accepted channel.
//!
//! Everything it answers is modelled on the recorded controller (see
//! `protocol-fixtures/jnlp4/`): the refusal texts, the order of the
//! handshake frames, the cookie take-over rule. The WebSocket endpoint
//! follows PROTOCOL.md 3 (Jenkins' `WebSocketAgents` on Jetty): its status
//! codes, response headers, one chunk per binary message, pings, idle
//! timeout and close codes.
//!
//! # Layout
//!
//! - this file: the public types, the builder, and the shared state (node
//!   table, live channels, event log).
//! - `http`: the web port (`login`, `tcpSlaveAgentListener/`, JNLP files,
//!   jars) and the routing of `wsagents/` to `websocket`.
//! - `agent_port`: the TCP agent port (`Ping`, the HTTP hello, JNLP4-connect).
//! - `websocket`: the WebSocket agent endpoint (PROTOCOL.md 3): the upgrade
//!   checks with Jenkins' status codes, then a pump between the WebSocket
//!   messages and the channel's byte stream (pings, idle timeout, close codes).
//! - `channel`: what both transports do with an accepted connection:
//!   register it, run the built-in or scripted peer, wait for the end,
//!   unregister and record it.
//! - `jenkins`: the Jenkins HTTP API stand-in (users and permissions,
//!   nodes, queue, scheduler, `why` texts), as a model with no I/O.
//! - `jenkins_side`: that model in motion (scheduler rounds, builds sent to
//!   agents, node changes and their events) and [`JenkinsHandle`].
//! - `channel_end`: how an accepted channel ends, with the real stack's
//!   rules (PROTOCOL.md 5): `close_notify` ignored, a plain TCP close or a
//!   `Channel$CloseCommand` noticed at once, ghosts dropped by the ping timeout.
//!
//! Tasks hang off one [`CancellationToken`] and one [`TaskTracker`], so
//! [`TestController::shutdown`] ends listeners, handshakes and channels.

mod agent_port;
mod channel;
mod channel_end;
mod http;
pub mod jenkins;
mod jenkins_side;
mod websocket;

pub use channel_end::{ChannelEnd, ChannelStream};
pub use jenkins::auth::Permission;
pub use jenkins::messages::Lang;
pub use jenkins::{BuildRecord, BuildState, JobKind, JobSpec, Mode, NodeConfig};
pub use jenkins_side::JenkinsHandle;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use remoting_protocol::{ChunkCodec, InstanceIdentity};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::TestIdentity;

/// `X-Jenkins` on every HTTP response, unless
/// [`ControllerBuilder::jenkins_version`] or [`JenkinsHandle::set_version`]
/// say otherwise.
pub const JENKINS_VERSION: &str = "2.500-test";
/// `X-Remoting-Minimum-Version` on the discovery response and the WebSocket
/// upgrade, unless [`ControllerBuilder::remoting_minimum_version`] says otherwise.
pub const REMOTING_MINIMUM_VERSION: &str = "3107.v665000b_51092";
/// `X-Jenkins-Agent-Protocols` unless [`ControllerBuilder::protocols`] says otherwise.
pub const DEFAULT_PROTOCOLS: &str = "JNLP4-connect, Ping";

/// Something the controller did or saw, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerEvent {
    /// A JNLP4 connection or a WebSocket upgrade was accepted and its
    /// channel handed to the peer.
    Accepted {
        /// The node.
        node: String,
        /// The cookie handed out with this connection.
        cookie: String,
        /// Whether it replaced a live channel (the agent sent its cookie).
        took_over: bool,
    },
    /// A JNLP4 connection was refused after the headers.
    Refused {
        /// The node named in the headers (empty if the headers were malformed).
        node: String,
        /// The full response sent, e.g. `ERROR: Authorization failure`.
        response: String,
    },
    /// The refused agent confirmed with `BYE`.
    ByeReceived {
        /// The node named in the headers.
        node: String,
    },
    /// The agent sent a TLS `close_notify`; like the real controller, this
    /// one ignored it and keeps the channel (a ghost) until its ping times
    /// out (PROTOCOL.md 5, row 1).
    CloseNotifyIgnored {
        /// The node.
        node: String,
    },
    /// An accepted channel ended and the node went offline.
    ChannelClosed {
        /// The node.
        node: String,
        /// Why.
        how: ChannelEnd,
    },
    /// A connection to the agent port failed before a decision (garbage,
    /// timeout, TLS failure, unknown protocol, ...).
    HandshakeFailed {
        /// What went wrong.
        reason: String,
    },
    /// An HTTP request was answered (all but `wsagents/`).
    Http {
        /// The request path, without the query.
        path: String,
        /// The status sent.
        status: u16,
    },
    /// A request to `wsagents/` was answered (recorded before the answer is
    /// sent); a 101 is followed by [`ControllerEvent::Accepted`] once the
    /// connection has switched protocols.
    WebSocketUpgrade {
        /// The `Node-Name` header (empty if missing).
        node: String,
        /// The status sent: 101, or the refusal's.
        status: u16,
        /// Every request header (repeated names repeated), names lowercased,
        /// in the order hyper lists them.
        headers: Vec<(String, String)>,
    },
    /// A node was added ([`JenkinsHandle::create_node`], or a create route
    /// over HTTP; not the builder's nodes, which are there from the start).
    NodeCreated {
        /// The node.
        node: String,
    },
    /// A node was removed (`doDelete`); its channel, if any, is being closed.
    NodeDeleted {
        /// The node.
        node: String,
    },
    /// The scheduler started a build (the record as it started).
    BuildStarted(BuildRecord),
    /// A build finished normally.
    BuildFinished(BuildRecord),
    /// A build's node lost its channel (or was deleted) mid-build.
    BuildCut(BuildRecord),
    /// A queue item was cancelled (test side or `queue/cancelItem`).
    ItemCancelled {
        /// The queue id.
        queue_id: u64,
    },
}

/// What the controller does with an accepted channel.
#[derive(Clone, Default)]
pub enum Peer {
    /// Keep the channel, reading and discarding chunks until EOF or kicked.
    #[default]
    Hold,
    /// Send every chunk back unchanged.
    Echo,
    /// Run this script with the channel; the channel closes when it returns
    /// (or, once kicked, after a short grace period).
    Script(Arc<dyn Fn(Channel) -> BoxFuture<'static, ()> + Send + Sync>),
}

impl Peer {
    /// [`Peer::Script`] from an async closure.
    pub fn script<F, Fut>(script: F) -> Self
    where
        F: Fn(Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Peer::Script(Arc::new(move |channel| script(channel).boxed()))
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Hold => "Hold",
            Peer::Echo => "Echo",
            Peer::Script(_) => "Script(..)",
        })
    }
}

/// An accepted channel, as handed to a [`Peer`].
pub struct Channel {
    /// The node this channel belongs to.
    pub node: String,
    /// The chunk stream inside TLS (JNLP4) or the WebSocket messages; bytes
    /// a JNLP4 agent sent right after its capability are already in the
    /// read buffer.
    pub framed: Framed<ChannelStream, ChunkCodec>,
    /// Cancelled when another connection takes the node over, on
    /// [`TestController::disconnect`], or on shutdown.
    pub kicked: CancellationToken,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("node", &self.node)
            .field("buffered", &self.framed.read_buffer().len())
            .field("kicked", &self.kicked.is_cancelled())
            .finish()
    }
}

/// Builds a [`TestController`].
#[derive(Debug)]
pub struct ControllerBuilder {
    nodes: Vec<jenkins::Node>,
    jenkins_version: String,
    jenkins_key: Option<Vec<u8>>,
    security: jenkins::auth::Security,
    identity: Option<TestIdentity>,
    http_port: u16,
    agent_port: u16,
    tcp_disabled: bool,
    web_tls: bool,
    jnlp_host: Option<String>,
    protocols: String,
    remoting_jar: Option<Bytes>,
    jnlp_options: Vec<String>,
    peer: Peer,
    ping_timeout: Duration,
    handshake_delay: Duration,
    login_status: u16,
    web_socket_disabled: bool,
    legacy_already_connected_500: bool,
    remoting_minimum_version: String,
    web_socket_ping_interval: Duration,
    web_socket_idle_timeout: Duration,
}

/// How long a ghost channel (one whose agent sent `close_notify`) stays
/// online: a real Jenkins pings every 5 minutes and gives up after 4.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the controller pings a WebSocket agent (the first ping goes
/// out after half of it: 15 s, then every 30 s, as PROTOCOL.md 3 says).
pub const DEFAULT_WEB_SOCKET_PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a WebSocket connection may stay silent (no frame at all from the
/// agent) before the controller closes it.
pub const DEFAULT_WEB_SOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ControllerBuilder {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            jenkins_version: JENKINS_VERSION.to_owned(),
            jenkins_key: None,
            security: jenkins::auth::Security::default(),
            identity: None,
            http_port: 0,
            agent_port: 0,
            tcp_disabled: false,
            web_tls: false,
            jnlp_host: None,
            protocols: DEFAULT_PROTOCOLS.to_owned(),
            remoting_jar: None,
            jnlp_options: Vec::new(),
            peer: Peer::Hold,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            handshake_delay: Duration::ZERO,
            login_status: 200,
            web_socket_disabled: false,
            legacy_already_connected_500: false,
            remoting_minimum_version: REMOTING_MINIMUM_VERSION.to_owned(),
            web_socket_ping_interval: DEFAULT_WEB_SOCKET_PING_INTERVAL,
            web_socket_idle_timeout: DEFAULT_WEB_SOCKET_IDLE_TIMEOUT,
        }
    }
}

impl ControllerBuilder {
    /// A node that connects with `secret`.
    pub fn node(mut self, name: &str, secret: &str) -> Self {
        self.nodes.retain(|n| n.config.name != name);
        self.nodes
            .push(jenkins::Node::new(NodeConfig::new(name), secret.to_owned()));
        self
    }

    /// A node as Jenkins would have it configured (labels, mode, executors),
    /// whose secret is `hex(HMAC-SHA256(key, name))` like a node created
    /// over HTTP ([`TestController::node_secret`]).
    pub fn agent(mut self, config: NodeConfig) -> Self {
        self.nodes.retain(|n| n.config.name != config.name);
        // The secret is filled in at start, once the key is known.
        self.nodes.push(jenkins::Node::new(config, String::new()));
        self
    }

    /// `X-Jenkins` (default [`JENKINS_VERSION`]): decides the routes
    /// served (`createItem` with XML from 2.539, `jenkins-agent.jnlp` from 2.264).
    pub fn jenkins_version(mut self, version: &str) -> Self {
        self.jenkins_version = version.to_owned();
        self
    }

    /// The key node secrets are derived from (default: random per start);
    /// two controllers with the same key give the same secrets, as a
    /// restarted Jenkins does.
    pub fn jenkins_key(mut self, key: &[u8]) -> Self {
        self.jenkins_key = Some(key.to_vec());
        self
    }

    /// A user with an API token and global permissions. With at least one
    /// user the controller is secured: anonymous callers get only
    /// [`ControllerBuilder::anonymous`]'s permissions (none by default).
    pub fn user(mut self, name: &str, api_token: &str, permissions: &[Permission]) -> Self {
        self.security.add_user(name, api_token, permissions);
        self
    }

    /// What anonymous callers may do on a secured controller.
    pub fn anonymous(mut self, permissions: &[Permission]) -> Self {
        self.security.set_anonymous(permissions);
        self
    }

    /// A node whose connections are refused with `FATAL: {reason}`. Its JNLP
    /// file carries a random (hex) secret.
    pub fn fatal_node(mut self, name: &str, reason: &str) -> Self {
        self.nodes.retain(|n| n.config.name != name);
        let mut node = jenkins::Node::new(NodeConfig::new(name), random_hex(32));
        node.fatal = Some(reason.to_owned());
        self.nodes.push(node);
        self
    }

    /// The instance identity (default: [`TestIdentity::shared`]).
    pub fn identity(mut self, id: TestIdentity) -> Self {
        self.identity = Some(id);
        self
    }

    /// The web port (default 0: any free port).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    /// The agent port (default 0: any free port).
    pub fn agent_port(mut self, port: u16) -> Self {
        self.agent_port = port;
        self
    }

    /// `tcpSlaveAgentListener/` answers 404, as when the TCP port is disabled.
    /// The agent port still listens, so a test can tell who used it.
    pub fn tcp_agent_port_disabled(mut self) -> Self {
        self.tcp_disabled = true;
        self
    }

    /// Serves the web port over HTTPS with a certificate from
    /// [`crate::web_pki::TestCa::shared`] (for `localhost` and
    /// `127.0.0.1`): [`TestController::url`] becomes `https://`.
    pub fn web_tls(mut self) -> Self {
        self.web_tls = true;
        self
    }

    /// Sends `X-Jenkins-JNLP-Host: {host}` with the discovery response.
    pub fn jnlp_host(mut self, host: &str) -> Self {
        self.jnlp_host = Some(host.to_owned());
        self
    }

    /// `X-Jenkins-Agent-Protocols` (default [`DEFAULT_PROTOCOLS`]); the agent
    /// port only speaks the protocols in this list.
    pub fn protocols(mut self, list: &str) -> Self {
        self.protocols = list.to_owned();
        self
    }

    /// Served at `jnlpJars/remoting.jar` and `jnlpJars/agent.jar` (404 without).
    pub fn remoting_jar(mut self, bytes: Vec<u8>) -> Self {
        self.remoting_jar = Some(Bytes::from(bytes));
        self
    }

    /// Extra `<argument>`s in JNLP files, after secret, name and `-url URL`
    /// (default none).
    pub fn jnlp_options(mut self, opts: &[&str]) -> Self {
        self.jnlp_options = opts.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// What to do with accepted channels (default [`Peer::Hold`]).
    pub fn peer(mut self, peer: Peer) -> Self {
        self.peer = peer;
        self
    }

    /// How long a ghost channel stays online after the agent's ignored
    /// `close_notify` (default [`DEFAULT_PING_TIMEOUT`]).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Waits this long before answering a JNLP4 client's `ACK` (a slow or
    /// distant controller), so tests can act while a handshake is under way.
    pub fn handshake_delay(mut self, delay: Duration) -> Self {
        self.handshake_delay = delay;
        self
    }

    /// The status `GET login` answers (default 200): anything else tells a
    /// WebSocket agent that the controller is not ready yet.
    pub fn login_status(mut self, status: u16) -> Self {
        self.login_status = status;
        self
    }

    /// `wsagents/` answers 404, as a controller whose servlet container has
    /// no WebSocket support does.
    pub fn web_socket_disabled(mut self) -> Self {
        self.web_socket_disabled = true;
        self
    }

    /// A WebSocket upgrade for a node that is already connected is refused
    /// with 500 instead of 400, as controllers older than 2.511 do.
    pub fn legacy_already_connected_500(mut self) -> Self {
        self.legacy_already_connected_500 = true;
        self
    }

    /// `X-Remoting-Minimum-Version` on discovery, the WebSocket upgrade and
    /// the agent port's hello (default [`REMOTING_MINIMUM_VERSION`]).
    pub fn remoting_minimum_version(mut self, version: &str) -> Self {
        self.remoting_minimum_version = version.to_owned();
        self
    }

    /// How often the controller pings a WebSocket agent; the first ping
    /// goes out after half of it (default [`DEFAULT_WEB_SOCKET_PING_INTERVAL`]).
    pub fn web_socket_ping_interval(mut self, interval: Duration) -> Self {
        self.web_socket_ping_interval = interval;
        self
    }

    /// How long a WebSocket connection may receive nothing from the agent
    /// before the controller closes it (default [`DEFAULT_WEB_SOCKET_IDLE_TIMEOUT`]).
    pub fn web_socket_idle_timeout(mut self, timeout: Duration) -> Self {
        self.web_socket_idle_timeout = timeout;
        self
    }

    /// Binds both ports on 127.0.0.1 and starts serving. Panics if a port
    /// cannot be bound or a configured value is not a valid header value.
    pub async fn start(self) -> TestController {
        let http = TcpListener::bind(("127.0.0.1", self.http_port))
            .await
            .unwrap_or_else(|e| panic!("bind HTTP port {}: {e}", self.http_port));
        let agent = TcpListener::bind(("127.0.0.1", self.agent_port))
            .await
            .unwrap_or_else(|e| panic!("bind agent port {}: {e}", self.agent_port));
        let http_addr = http.local_addr().expect("HTTP listener address");
        let agent_addr = agent.local_addr().expect("agent listener address");
        let identity = self
            .identity
            .unwrap_or_else(|| TestIdentity::shared().clone());
        let protocols: Vec<String> = self
            .protocols
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let http_headers = http::StaticHeaders::new(
            &identity,
            &self.protocols,
            self.jnlp_host.as_deref(),
            &self.remoting_minimum_version,
        );
        let jenkins_key = self
            .jenkins_key
            .unwrap_or_else(|| random_hex(32).into_bytes());
        let mut model = jenkins::Model::new(self.jenkins_version);
        model.security = self.security;
        // Configured nodes are there from the start: no `NodeCreated`.
        for mut node in self.nodes {
            if node.secret.is_empty() {
                node.secret = jenkins::node_secret(&jenkins_key, &node.config.name);
            }
            model.nodes.insert(node.config.name.clone(), node);
        }
        let builds_dir = jenkins_side::builds_dir();
        let (finish_after, finish_rx) = mpsc::unbounded_channel();
        let login_status = ::http::StatusCode::from_u16(self.login_status)
            .unwrap_or_else(|e| panic!("login_status {}: {e}", self.login_status));
        let shared = Arc::new(Shared {
            url: format!(
                "{}://{http_addr}/",
                if self.web_tls { "https" } else { "http" }
            ),
            web_tls: self
                .web_tls
                .then(|| crate::web_pki::TestCa::shared().server_config()),
            session: random_hex(4),
            agent_port: agent_addr.port(),
            tls: identity.server_config(),
            identity,
            jenkins_key,
            builds_dir,
            tcp_disabled: self.tcp_disabled,
            protocols,
            http_headers,
            remoting_jar: self.remoting_jar,
            // Whole seconds, as HTTP dates carry.
            jar_modified: std::time::UNIX_EPOCH
                + Duration::from_secs(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default(),
                ),
            jnlp_options: self.jnlp_options,
            peer: self.peer,
            ping_timeout: self.ping_timeout,
            handshake_delay: self.handshake_delay,
            login_status,
            web_socket: websocket::Settings {
                disabled: self.web_socket_disabled,
                legacy_already_connected_500: self.legacy_already_connected_500,
                ping_interval: self.web_socket_ping_interval,
                idle_timeout: self.web_socket_idle_timeout,
            },
            remoting_minimum_version: self.remoting_minimum_version,
            close_answer: crate::fixtures::controller_close_command().into(),
            state: Mutex::new(State {
                log: Vec::new(),
                jenkins: model,
                channels: HashMap::new(),
                taken_over: HashSet::new(),
            }),
            changed: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_connection: AtomicU64::new(1),
            finish_after,
        });
        shared
            .tracker
            .spawn(jenkins_side::finish_builds(shared.clone(), finish_rx));
        shared.tracker.spawn(http::serve(shared.clone(), http));
        shared
            .tracker
            .spawn(agent_port::serve(shared.clone(), agent));
        tracing::debug!(url = %shared.url, %agent_addr, "test controller started");
        TestController {
            shared,
            http_addr,
            agent_addr,
        }
    }
}

/// A running scripted controller. Dropping it stops it without waiting;
/// [`TestController::shutdown`] waits until everything has ended.
pub struct TestController {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    agent_addr: SocketAddr,
}

impl fmt::Debug for TestController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let online: Vec<String> = self.shared.state().channels.keys().cloned().collect();
        f.debug_struct("TestController")
            .field("url", &self.shared.url)
            .field("agent_addr", &self.agent_addr)
            .field("online", &online)
            .finish()
    }
}

impl TestController {
    /// A builder with no nodes and every default.
    pub fn builder() -> ControllerBuilder {
        ControllerBuilder::default()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The web port's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The agent port's address.
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// The identity the agent port's TLS certificate carries.
    pub fn identity(&self) -> &InstanceIdentity {
        self.shared.identity.identity()
    }

    /// Whether `node` has a live channel.
    pub fn is_online(&self, node: &str) -> bool {
        self.shared.state().channels.contains_key(node)
    }

    /// The cookie of `node`'s live channel.
    pub fn current_cookie(&self, node: &str) -> Option<String> {
        self.shared
            .state()
            .channels
            .get(node)
            .map(|c| c.cookie.clone())
    }

    /// Drops `node`'s live channel (as an administrator's "disconnect"
    /// would); false if it had none.
    pub fn disconnect(&self, node: &str) -> bool {
        match self.shared.state().channels.get(node) {
            Some(live) => {
                live.kicked.cancel();
                true
            }
            None => false,
        }
    }

    /// Everything that happened so far, in order.
    pub fn log(&self) -> Vec<ControllerEvent> {
        self.shared.state().log.clone()
    }

    /// Waits until `pred` holds for the log and returns the log; panics with
    /// the log if that takes longer than `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ControllerEvent]) -> bool,
        timeout: Duration,
    ) -> Vec<ControllerEvent> {
        Self::wait_on(&self.shared, pred, timeout).await
    }

    async fn wait_on(
        shared: &Shared,
        pred: impl Fn(&[ControllerEvent]) -> bool,
        timeout: Duration,
    ) -> Vec<ControllerEvent> {
        let mut changes = shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Mark the version seen before reading the log, so an event
            // recorded in between still wakes us.
            changes.borrow_and_update();
            let log = shared.state().log.clone();
            if pred(&log) {
                return log;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `shared`, which we hold; treat it as a timeout anyway.
                Ok(Err(_)) | Err(_) => {
                    panic!("timed out after {timeout:?} waiting for controller events; log so far:\n{log:#?}")
                }
            }
        }
    }

    /// Closes both listeners and every connection and channel, and waits
    /// until all of the controller's tasks have ended.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    /// The secret `node` connects with (None: no such node).
    pub fn node_secret(&self, node: &str) -> Option<String> {
        self.shared.secret_of(node)
    }

    /// The Jenkins side, driven from the test: versions, users, nodes,
    /// the queue and builds.
    pub fn jenkins(&self) -> JenkinsHandle {
        JenkinsHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        // Ends every build process still waiting for its marker.
        let _ = std::fs::remove_dir_all(&self.shared.builds_dir);
    }
}

/// A live channel in the node table.
#[derive(Debug)]
struct LiveChannel {
    /// Which connection owns it, so a replaced channel does not unregister its successor.
    connection: u64,
    cookie: String,
    kicked: CancellationToken,
    /// Builds for the built-in peers to start on the agent.
    work: mpsc::UnboundedSender<Work>,
}

/// Something the controller asks a built-in peer to do on its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    /// Send one command (a `fake-engine:spawn` build) to the agent.
    Command(Vec<u8>),
}

#[derive(Debug)]
struct State {
    log: Vec<ControllerEvent>,
    /// The Jenkins side: node table (secrets included), queue, builds, users.
    jenkins: jenkins::Model,
    channels: HashMap<String, LiveChannel>,
    /// Connections whose channel another connection took over with its cookie.
    taken_over: HashSet<u64>,
}

/// What the listeners' tasks share with the handle.
struct Shared {
    url: String,
    /// The web port's TLS, with [`ControllerBuilder::web_tls`].
    web_tls: Option<Arc<rustls::ServerConfig>>,
    /// `Jenkins-Session` in the agent port's hello: new on every start.
    session: String,
    agent_port: u16,
    identity: TestIdentity,
    tls: Arc<rustls::ServerConfig>,
    /// Node secrets are `hex(HMAC-SHA256(jenkins_key, name))`.
    jenkins_key: Vec<u8>,
    /// Where running builds' markers live (see [`Shared::start_builds`]).
    builds_dir: PathBuf,
    tcp_disabled: bool,
    protocols: Vec<String>,
    http_headers: http::StaticHeaders,
    remoting_jar: Option<Bytes>,
    /// `Last-Modified` of the jar: when this controller started.
    jar_modified: std::time::SystemTime,
    jnlp_options: Vec<String>,
    peer: Peer,
    ping_timeout: Duration,
    handshake_delay: Duration,
    /// What `GET login` answers.
    login_status: ::http::StatusCode,
    web_socket: websocket::Settings,
    remoting_minimum_version: String,
    /// The controller's `Channel$CloseCommand`, one chunk, as recorded.
    close_answer: Arc<[u8]>,
    state: Mutex<State>,
    /// Bumped on every recorded event, for [`TestController::wait_for`].
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    next_connection: AtomicU64,
    /// Queue ids of builds whose duration is up.
    finish_after: mpsc::UnboundedSender<u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the log from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, event: ControllerEvent) {
        self.change_and_record(|_| {}, event);
    }

    /// Applies `change` to the state and logs `event` under one lock, so
    /// that no other event comes between them.
    fn change_and_record(&self, change: impl FnOnce(&mut State), event: ControllerEvent) {
        tracing::debug!(?event, "controller event");
        {
            let mut state = self.state();
            change(&mut state);
            state.log.push(event);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    fn speaks(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }

    /// Decides on a connection's node, secret and cookie (JNLP4 headers or
    /// WebSocket upgrade headers), as the controller does. On a cookie match
    /// the old channel is kicked and unregistered here, under the lock, so
    /// two reconnections cannot both take it over; builds running on the
    /// old channel are cut, as its closing fails them in Jenkins.
    fn judge(&self, node: &str, secret: Option<&str>, cookie: Option<&str>) -> Verdict {
        let mut cut = Vec::new();
        let verdict = {
            let mut state = self.state();
            let Some(spec) = state.jenkins.nodes.get(node) else {
                return Verdict::Refuse(Refusal::UnknownNode);
            };
            if let Some(reason) = &spec.fatal {
                return Verdict::Refuse(Refusal::Fatal(reason.clone()));
            }
            if secret != Some(spec.secret.as_str()) || state.jenkins.refuses_secret(node) {
                return Verdict::Refuse(Refusal::BadSecret);
            }
            match state.channels.get(node) {
                None => Verdict::Accept { took_over: false },
                Some(live) if cookie == Some(live.cookie.as_str()) => {
                    if let Some(old) = state.channels.remove(node) {
                        state.taken_over.insert(old.connection);
                        old.kicked.cancel();
                    }
                    cut = state.jenkins.cut_builds_on(node, jenkins::now_ms());
                    state.log.extend(cut.iter().cloned());
                    Verdict::Accept { took_over: true }
                }
                Some(_) => Verdict::Refuse(Refusal::AlreadyConnected),
            }
        };
        if !cut.is_empty() {
            self.changed.send_modify(|version| *version += 1);
            for event in &cut {
                if let ControllerEvent::BuildCut(build) = event {
                    self.release_build_process(build.queue_id);
                }
            }
        }
        verdict
    }

    /// Marks `node` online with this connection's channel. Replaces (and
    /// kicks) anything registered since [`Shared::judge`].
    fn register(&self, node: &str, live: LiveChannel) {
        if let Some(old) = self.state().channels.insert(node.to_owned(), live) {
            old.kicked.cancel();
        }
    }

    /// Why `connection`'s channel for `node` was kicked.
    fn kick_reason(&self, _node: &str, connection: u64) -> ChannelEnd {
        if self.state().taken_over.remove(&connection) {
            ChannelEnd::TakenOver
        } else {
            ChannelEnd::Disconnected
        }
    }

    /// Marks `node` offline if `connection` still owns its channel, and
    /// records [`ControllerEvent::ChannelClosed`] in the same step: the log
    /// never shows a new channel accepted between the old one going
    /// offline and the record of its end. Builds running on the node are
    /// cut (recorded right after), and the scheduler runs again.
    fn close(&self, node: String, connection: u64, how: ChannelEnd) {
        let now = jenkins::now_ms();
        let mut cut = Vec::new();
        {
            let mut state = self.state();
            if state
                .channels
                .get(&node)
                .is_some_and(|c| c.connection == connection)
            {
                state.channels.remove(&node);
                cut = state.jenkins.cut_builds_on(&node, now);
                if let Some(spec) = state.jenkins.nodes.get_mut(&node) {
                    spec.disconnected = Some(jenkins::OfflineCause {
                        class: "hudson.slaves.OfflineCause$ChannelTermination",
                        description: "Connection was broken".to_owned(),
                        timestamp_ms: now,
                    });
                }
            }
            tracing::debug!(%node, ?how, "controller event: channel closed");
            state.log.push(ControllerEvent::ChannelClosed {
                node: node.clone(),
                how,
            });
            state.log.extend(cut.iter().cloned());
        }
        self.changed.send_modify(|version| *version += 1);
        for event in &cut {
            if let ControllerEvent::BuildCut(build) = event {
                self.release_build_process(build.queue_id);
            }
        }
        self.maintain();
    }

    /// The secret `node` connects with.
    fn secret_of(&self, node: &str) -> Option<String> {
        self.state()
            .jenkins
            .nodes
            .get(node)
            .map(|n| n.secret.clone())
    }
}

/// The controller's answer to a connection's headers.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accept { took_over: bool },
    Refuse(Refusal),
}

/// Why [`Shared::judge`] refused; each transport words it its own way.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    UnknownNode,
    /// A [`ControllerBuilder::fatal_node`], with its reason.
    Fatal(String),
    BadSecret,
    /// The node has a live channel and the cookie did not match it.
    AlreadyConnected,
}

impl Refusal {
    /// The JNLP4 response, as the recorded controller words it.
    fn jnlp4_response(&self, node: &str) -> String {
        match self {
            Refusal::UnknownNode => format!("ERROR: Unknown client name: {node}"),
            Refusal::Fatal(reason) => format!("FATAL: {reason}"),
            Refusal::BadSecret => "ERROR: Authorization failure".to_owned(),
            Refusal::AlreadyConnected => format!(
                "ERROR: {node} is already connected to this master. Rejecting this connection."
            ),
        }
    }
}

/// `bytes` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}
