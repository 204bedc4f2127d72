//! One session: find the controller, start an engine, connect, bridge until
//! either side ends, then stop the engine and everything it started.
//!
//! Every planned end of a connected session closes the channel at the
//! remoting level (see [`crate::engine::bridge`]) and then drops TCP without a TLS
//! `close_notify`: a real controller ignores `close_notify` and would keep
//! a ghost node online, but notices a plain TCP close at once (PROTOCOL.md
//! 5). The same plain close ends a session whose engine died.
//!
//! The engine is started before the connection so that the capability the
//! controller receives is the engine's own; the two capability texts are
//! then swapped (the controller's goes to the engine as its peer's). An
//! engine whose connection attempt failed has seen nothing yet and is kept
//! for the next attempt, so a reconnect loop does not start a JVM per try.
//!
//! # Layout
//!
//! - this module: [`Agent`] (a session from start to end, a check ahead
//!   of a move, a prepared connection), [`Route`], the errors;
//! - `target`: where to connect (the pure decision `plan`, and `resolve`
//!   around it);
//! - `engine`: the engine jar, starting and announcing the JVM, the spare;
//! - `transport`: the WebSocket upgrade, bridging, closing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use control::MovePhase;
use remoting_protocol::handshake::{self, HandshakeError};
use remoting_protocol::preamble::PreambleError;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::connect::dial::DialError;
use crate::connect::jnlp4;
use crate::connect::web::{ControllerHttp, HttpError};
use crate::connect::websocket::WsConnectError;
use crate::departure::Departure;
use crate::engine::bridge::{self, BridgeError, Leaving, Traffic};
use crate::engine::class_sharing::ClassSharing;
use crate::engine::{EngineError, JarCache};
use crate::lending::StateFile;
use crate::settings::Settings;
use crate::workdir::WorkDir;

mod engine;
mod target;
mod transport;

pub use engine::Continuity;
use engine::ReadyEngine;
use target::{Target, Via};
use transport::{close_web_socket, Link};

/// How long the engine JVM may take to announce itself.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the engine may take to exit before its process group is killed.
const ENGINE_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long sending our FIN may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Talking to the controller's web port failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The agent port could not be reached.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The JNLP4-connect handshake failed or was refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The WebSocket could not be opened or was refused.
    #[error(transparent)]
    WebSocket(#[from] WsConnectError),
    /// The engine could not be started.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine did not speak the remoting preamble.
    #[error("the engine did not start properly: {0}")]
    Preamble(#[from] PreambleError),
    /// The controller's engine jar could not be fetched.
    #[error("cannot fetch the controller's engine jar: {0}")]
    EngineJar(#[source] HttpError),
    /// The engine did not announce itself in time.
    #[error("the engine did not announce itself within {0:?}; see its output above")]
    EngineTimeout(Duration),
    /// The channel failed while running.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The configuration cannot work (found while connecting, e.g. in a JNLP file).
    #[error("{0}")]
    Config(String),
}

impl SessionError {
    /// Where a move failed, for `borrow_failed`.
    pub fn phase(&self) -> MovePhase {
        match self {
            SessionError::Http(_) => MovePhase::Resolve,
            SessionError::EngineJar(_) => MovePhase::EngineJar,
            SessionError::Engine(_)
            | SessionError::Preamble(_)
            | SessionError::EngineTimeout(_) => MovePhase::EngineStart,
            SessionError::Dial(_) | SessionError::Bridge(_) => MovePhase::Connect,
            SessionError::Handshake(_) => MovePhase::Handshake,
            SessionError::WebSocket(err) if err.refusal().is_some() => MovePhase::Handshake,
            SessionError::WebSocket(_) => MovePhase::Connect,
            SessionError::Config(_) => MovePhase::Config,
        }
    }

    /// Whether trying again cannot help: the agent should stop.
    pub fn is_fatal(&self) -> bool {
        match self {
            SessionError::Handshake(HandshakeError::Refused(refusal)) => refusal.fatal,
            SessionError::Config(_) => true,
            SessionError::Engine(EngineError::NoJava) => true,
            _ => false,
        }
    }
}

/// How a session that connected ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The controller closed the channel.
    ControllerClosed,
    /// The engine exited.
    EngineExited,
    /// The agent left on purpose (a move or a signal); how the controller
    /// took our close.
    Left(Leaving),
    /// Asked to leave before the connection was up.
    Abandoned,
}

/// An accepted connection with its engine ready: what a session serves.
/// Made ahead of a move (make before break), it is either served or
/// [`Agent::abandon`]ed.
#[derive(Debug)]
pub struct Prepared {
    link: Link,
    ready: ReadyEngine,
    target: Target,
}

/// One controller to serve: its settings and an HTTP client made for it
/// (credentials and certificates belong to one controller, never sent to
/// another).
#[derive(Debug, Clone)]
pub struct Route {
    /// Settings for this controller.
    pub settings: Settings,
    http: ControllerHttp,
    /// TLS for `wss` and `https://` proxies, made at the first WebSocket
    /// attempt (it reads the system roots) and kept for reconnects.
    web_tls: Arc<std::sync::OnceLock<Arc<rustls::ClientConfig>>>,
}

impl Route {
    /// A route for `settings`.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let http =
            ControllerHttp::new(&settings).context("cannot set up HTTP to the controller")?;
        Ok(Self {
            settings,
            http,
            web_tls: Arc::default(),
        })
    }

    /// [`Route::web_tls`], made once.
    fn web_tls(&self) -> Result<Arc<rustls::ClientConfig>, SessionError> {
        if let Some(config) = self.web_tls.get() {
            return Ok(config.clone());
        }
        let config = crate::connect::tls::client_config(&self.settings)
            .map_err(|e| SessionError::Config(e.to_string()))?;
        Ok(self.web_tls.get_or_init(|| config).clone())
    }

    /// The controller as shown to people.
    pub fn label(&self) -> Option<String> {
        let s = &self.settings;
        s.urls
            .first()
            .cloned()
            .or_else(|| s.jnlp_url.clone())
            .or_else(|| s.direct.as_ref().map(|d| format!("{}:{}", d.host, d.port)))
    }
}

/// What the supervisor learns when a session comes online.
#[derive(Debug, Clone)]
pub struct Online {
    /// The engine's pid.
    pub engine_pid: u32,
    /// The controller's URL, if connected through one.
    pub controller_url: Option<String>,
    /// The node name.
    pub node: String,
    /// The engine's remoting version, from its jar.
    pub remoting_version: Option<String>,
    /// The engine's send window, if the agent sized it.
    pub engine_window: Option<control::EngineWindow>,
    /// How the channel reaches the controller.
    pub transport: control::Transport,
    /// The WebSocket was chosen because the TCP agent port is disabled.
    pub transport_fallback: bool,
}

/// The agent's long-lived parts.
#[derive(Debug)]
pub struct Agent {
    /// Its directories.
    pub work: WorkDir,
    /// Engine jars, and the `Last-Modified` of each controller's, so that
    /// a reconnect (or a restart) asks "changed since?" instead of
    /// downloading the jar again.
    jars: JarCache,
    /// Class-data sharing archives for engine JVMs.
    sharing: ClassSharing,
    /// Counters of the current bridge.
    pub traffic: Arc<Traffic>,
    /// Exported to the engine as `JNLP_AGENT_CONTROL_SOCKET`.
    pub control_socket: Option<PathBuf>,
}

impl Agent {
    /// Prepares the agent's shared parts.
    pub fn new(work: WorkDir, settings: &Settings) -> Self {
        let jars = JarCache::new(work.engines.clone());
        let sharing = ClassSharing::new(
            work.engines.join("cds"),
            settings.class_sharing,
            settings.class_sharing_after,
        );
        Self {
            work,
            jars,
            sharing,
            traffic: Arc::new(Traffic::default()),
            control_socket: None,
        }
    }

    /// Runs one session. `on_online` is called once the controller accepted.
    /// A leave asked of `departure` ends it at any point: before the
    /// connection is up by dropping what was set up (an engine dropped takes
    /// its process group with it), afterwards by closing the channel at the
    /// remoting level. Cookies are read from and kept in `cookies`.
    /// `prepared` is a connection made ahead (a move); without it the
    /// session connects first.
    pub async fn run_session(
        &self,
        route: &Route,
        continuity: &mut Continuity,
        cookies: &StateFile,
        departure: &Departure,
        prepared: Option<Prepared>,
        on_online: impl FnOnce(Online),
    ) -> Result<SessionEnd, SessionError> {
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => tokio::select! {
                biased;
                _ = departure.requested() => return Ok(SessionEnd::Abandoned),
                setup = self.connect(route, continuity, cookies) => setup?,
            },
        };
        let Prepared {
            link,
            ready,
            target,
        } = prepared;
        info!(
            node = %target.name,
            controller = target.controller_url.as_deref().unwrap_or("(direct)"),
            transport = %target.transport(),
            endpoint = %target.endpoint(),
            engine_pid = ready.engine.pid(),
            "connected"
        );
        self.traffic.activity.reset();
        on_online(Online {
            engine_pid: ready.engine.pid(),
            controller_url: target.controller_url.clone(),
            node: target.name.clone(),
            remoting_version: ready.remoting_version.clone(),
            engine_window: ready.window,
            transport: target.transport(),
            transport_fallback: matches!(target.via, Via::WebSocket { fallback: true, .. }),
        });
        let ReadyEngine {
            mut engine,
            buffered,
            mut first_calls,
            ..
        } = ready;
        let end = {
            let bridge = self.bridge(&mut engine, link, buffered, departure);
            tokio::pin!(bridge);
            // A recording engine's first answer brings its archive forward.
            let answered = async {
                departure.first_call_answered().await;
                if let Some(first_calls) = &mut first_calls {
                    first_calls.answered();
                }
                std::future::pending::<std::convert::Infallible>().await
            };
            tokio::select! {
                end = &mut bridge => end,
                never = answered => match never {},
            }
        };
        engine.stop(ENGINE_STOP_GRACE).await;
        // Its list is complete now (if it was not dumped yet).
        drop(first_calls);
        end
    }

    /// Checks a place before moving there, while the agent still serves
    /// where it is: finds its agent port and identity, fetches its engine
    /// jar and starts its engine (kept as the spare for the connection).
    /// With `warm` false the engine is not started (only its jar fetched):
    /// it starts when the connection is made.
    pub async fn check(
        &self,
        route: &Route,
        continuity: &mut Continuity,
        warm: bool,
    ) -> Result<(), SessionError> {
        let target = target::resolve(route).await?;
        if warm {
            let ready = self.ready_engine(route, &target, continuity).await?;
            continuity.spare = Some(ready);
        } else {
            self.engine_jar(route, &target).await?;
        }
        Ok(())
    }

    /// Ends a prepared connection that will not be served (a move called
    /// off): the engine, which has seen nothing of it, becomes the spare
    /// again at once; the channel is closed at the remoting level as when
    /// leaving, then TCP, in a task of its own (an unanswered close takes
    /// seconds, and the live session's bridge must not wait for it).
    pub fn abandon(&self, prepared: Prepared, continuity: &mut Continuity) -> JoinHandle<()> {
        let Prepared { link, ready, .. } = prepared;
        continuity.spare = Some(ready);
        tokio::spawn(async move {
            let how = match link {
                Link::Jnlp4(handshake::Connected {
                    mut stream,
                    read_buf,
                    ..
                }) => {
                    let how = bridge::close_unserved(&mut stream, read_buf).await;
                    // TCP's end only (a ChannelStream sends no close_notify).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
                    how
                }
                Link::WebSocket { mut channel, .. } => {
                    let how = bridge::close_unserved(&mut channel, BytesMut::new()).await;
                    close_web_socket(&mut channel).await;
                    how
                }
            };
            info!(?how, "closed a prepared connection that will not be served");
        })
    }

    /// Everything up to an accepted connection with an engine waiting for it.
    pub async fn connect(
        &self,
        route: &Route,
        continuity: &mut Continuity,
        cookies: &StateFile,
    ) -> Result<Prepared, SessionError> {
        let target = target::resolve(route).await?;
        let ready = self.ready_engine(route, &target, continuity).await?;
        let cookie = cookies.cookie(&target.cookie_key, &target.name);
        let linked = match &target.via {
            Via::AgentPort {
                agent_port,
                identity,
            } => {
                let hello = jnlp4::Hello {
                    name: &target.name,
                    secret: &target.secret,
                    capability: ready.capability,
                    cookie,
                };
                match jnlp4::connect(agent_port, identity, hello, &route.settings).await {
                    Ok(connected) => Ok((connected.cookie.clone(), Link::Jnlp4(connected))),
                    Err(jnlp4::Jnlp4Error::Dial(err)) => Err(err.into()),
                    Err(jnlp4::Jnlp4Error::Handshake(err)) => Err(err.into()),
                }
            }
            Via::WebSocket { url, .. } => {
                Self::connect_web_socket(route, &target, url, &ready, cookie).await
            }
        };
        match linked {
            Ok((cookie, link)) => {
                if let Some(cookie) = &cookie {
                    if let Err(err) = cookies.keep_cookie(&target.cookie_key, &target.name, cookie)
                    {
                        warn!(%err, path = %cookies.path().display(), "cannot keep the channel's cookie in the state file; a restart may be refused as already connected");
                    }
                }
                Ok(Prepared {
                    link,
                    ready,
                    target,
                })
            }
            Err(err) => {
                // The engine saw nothing: it serves the next attempt.
                continuity.spare = Some(ready);
                Err(err)
            }
        }
    }
}
