//! [`ControllerBuilder`]: what a test controller knows and does, set before
//! it starts; [`ControllerBuilder::start`] binds its ports and spawns it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::{random_hex, Shared, State};
use super::{
    agent_port, http, jenkins, jenkins_side, websocket, NodeConfig, Peer, Permission,
    TestController, DEFAULT_PROTOCOLS, JENKINS_VERSION, REMOTING_MINIMUM_VERSION,
};
use crate::identity::TestIdentity;

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
