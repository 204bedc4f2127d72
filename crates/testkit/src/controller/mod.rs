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
mod builder;
mod channel;
mod channel_end;
mod http;
pub mod jenkins;
mod jenkins_side;
mod state;
mod websocket;

pub use builder::{
    ControllerBuilder, DEFAULT_PING_TIMEOUT, DEFAULT_WEB_SOCKET_IDLE_TIMEOUT,
    DEFAULT_WEB_SOCKET_PING_INTERVAL,
};
pub use channel_end::{ChannelEnd, ChannelStream};
pub use jenkins::auth::Permission;
pub use jenkins::messages::Lang;
pub use jenkins::{BuildRecord, BuildState, JobKind, JobSpec, Mode, NodeConfig};
pub use jenkins_side::JenkinsHandle;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use remoting_protocol::{ChunkCodec, InstanceIdentity};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::identity::TestIdentity;
// The listeners and the Jenkins side reach these as `super::…`.
use state::{random_hex, LiveChannel, Refusal, Shared, State, Verdict, Work};

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
