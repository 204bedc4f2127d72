//! What the controller's tasks share: the node table and its live channels,
//! the event log, and the rules that accept, refuse and end a channel.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{http, jenkins, websocket, ChannelEnd, ControllerEvent, Peer};
use crate::identity::TestIdentity;

/// A live channel in the node table.
#[derive(Debug)]
pub(super) struct LiveChannel {
    /// Which connection owns it, so a replaced channel does not unregister its successor.
    pub(super) connection: u64,
    pub(super) cookie: String,
    pub(super) kicked: CancellationToken,
    /// Builds for the built-in peers to start on the agent.
    pub(super) work: mpsc::UnboundedSender<Work>,
}

/// Something the controller asks a built-in peer to do on its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Work {
    /// Send one command (a `fake-engine:spawn` build) to the agent.
    Command(Vec<u8>),
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) log: Vec<ControllerEvent>,
    /// The Jenkins side: node table (secrets included), queue, builds, users.
    pub(super) jenkins: jenkins::Model,
    pub(super) channels: HashMap<String, LiveChannel>,
    /// Connections whose channel another connection took over with its cookie.
    pub(super) taken_over: HashSet<u64>,
}

/// What the listeners' tasks share with the handle.
pub(super) struct Shared {
    pub(super) url: String,
    /// The web port's TLS, with [`ControllerBuilder::web_tls`].
    pub(super) web_tls: Option<Arc<rustls::ServerConfig>>,
    /// `Jenkins-Session` in the agent port's hello: new on every start.
    pub(super) session: String,
    pub(super) agent_port: u16,
    pub(super) identity: TestIdentity,
    pub(super) tls: Arc<rustls::ServerConfig>,
    /// Node secrets are `hex(HMAC-SHA256(jenkins_key, name))`.
    pub(super) jenkins_key: Vec<u8>,
    /// Where running builds' markers live (see [`Shared::start_builds`]).
    pub(super) builds_dir: PathBuf,
    pub(super) tcp_disabled: bool,
    pub(super) protocols: Vec<String>,
    pub(super) http_headers: http::StaticHeaders,
    pub(super) remoting_jar: Option<Bytes>,
    /// `Last-Modified` of the jar: when this controller started.
    pub(super) jar_modified: std::time::SystemTime,
    pub(super) jnlp_options: Vec<String>,
    pub(super) peer: Peer,
    pub(super) ping_timeout: Duration,
    pub(super) handshake_delay: Duration,
    /// What `GET login` answers.
    pub(super) login_status: ::http::StatusCode,
    pub(super) web_socket: websocket::Settings,
    pub(super) remoting_minimum_version: String,
    /// The controller's `Channel$CloseCommand`, one chunk, as recorded.
    pub(super) close_answer: Arc<[u8]>,
    pub(super) state: Mutex<State>,
    /// Bumped on every recorded event, for [`TestController::wait_for`].
    pub(super) changed: watch::Sender<u64>,
    pub(super) shutdown: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) next_connection: AtomicU64,
    /// Queue ids of builds whose duration is up.
    pub(super) finish_after: mpsc::UnboundedSender<u64>,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the log from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn record(&self, event: ControllerEvent) {
        self.change_and_record(|_| {}, event);
    }

    /// Applies `change` to the state and logs `event` under one lock, so
    /// that no other event comes between them.
    pub(super) fn change_and_record(
        &self,
        change: impl FnOnce(&mut State),
        event: ControllerEvent,
    ) {
        tracing::debug!(?event, "controller event");
        {
            let mut state = self.state();
            change(&mut state);
            state.log.push(event);
        }
        self.changed.send_modify(|version| *version += 1);
    }

    pub(super) fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn speaks(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }

    /// Decides on a connection's node, secret and cookie (JNLP4 headers or
    /// WebSocket upgrade headers), as the controller does. On a cookie match
    /// the old channel is kicked and unregistered here, under the lock, so
    /// two reconnections cannot both take it over; builds running on the
    /// old channel are cut, as its closing fails them in Jenkins.
    pub(super) fn judge(&self, node: &str, secret: Option<&str>, cookie: Option<&str>) -> Verdict {
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
    pub(super) fn register(&self, node: &str, live: LiveChannel) {
        if let Some(old) = self.state().channels.insert(node.to_owned(), live) {
            old.kicked.cancel();
        }
    }

    /// Why `connection`'s channel for `node` was kicked.
    pub(super) fn kick_reason(&self, _node: &str, connection: u64) -> ChannelEnd {
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
    pub(super) fn close(&self, node: String, connection: u64, how: ChannelEnd) {
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
    pub(super) fn secret_of(&self, node: &str) -> Option<String> {
        self.state()
            .jenkins
            .nodes
            .get(node)
            .map(|n| n.secret.clone())
    }
}

/// The controller's answer to a connection's headers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Accept { took_over: bool },
    Refuse(Refusal),
}

/// Why [`Shared::judge`] refused; each transport words it its own way.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    UnknownNode,
    /// A [`ControllerBuilder::fatal_node`], with its reason.
    Fatal(String),
    BadSecret,
    /// The node has a live channel and the cookie did not match it.
    AlreadyConnected,
}

impl Refusal {
    /// The JNLP4 response, as the recorded controller words it.
    pub(super) fn jnlp4_response(&self, node: &str) -> String {
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
pub(super) fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}
