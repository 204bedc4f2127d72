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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use control::MovePhase;
use remoting_protocol::capability::Capability;
use remoting_protocol::handshake::{self, HandshakeError};
use remoting_protocol::preamble::{self, PreambleError, PreambleReader};
use remoting_protocol::InstanceIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::connect::dial::DialError;
use crate::connect::jnlp4;
use crate::connect::web::{ControllerHttp, Fetched, HttpError};
use crate::connect::websocket::{self, WsConnectError};
use crate::departure::Departure;
use crate::engine::bridge::{self, BridgeEnd, BridgeError, Leaving, Traffic};
use crate::engine::class_sharing::{ClassSharing, Plan};
use crate::engine::{find_java, Engine, EngineError, EngineSpec, JarCache, MAX_ENGINE_JAR};
use crate::lending::StateFile;
use crate::settings::{HostPort, Secret, Settings, TransportChoice};
use crate::workdir::WorkDir;

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

/// How one session reaches its controller.
#[derive(Debug, Clone)]
enum Via {
    /// JNLP4-connect on the TCP agent port, TLS pinned to the identity.
    AgentPort {
        agent_port: HostPort,
        identity: InstanceIdentity,
    },
    /// A WebSocket on the web port at this base URL.
    WebSocket {
        url: String,
        /// Chosen because the TCP agent port is disabled (no transport asked).
        fallback: bool,
    },
}

/// Where one session connects.
#[derive(Debug, Clone)]
struct Target {
    controller_url: Option<String>,
    via: Via,
    /// Names the controller for its cookies: the identity's fingerprint
    /// (over WebSocket as its pages advertise it), else the URL.
    cookie_key: String,
    name: String,
    secret: Secret,
}

impl Target {
    fn transport(&self) -> control::Transport {
        match self.via {
            Via::AgentPort { .. } => control::Transport::Tcp,
            Via::WebSocket { .. } => control::Transport::WebSocket,
        }
    }

    /// Where the channel goes, for logs.
    fn endpoint(&self) -> String {
        match &self.via {
            Via::AgentPort { agent_port, .. } => format!("{}:{}", agent_port.host, agent_port.port),
            Via::WebSocket { url, .. } => remoting_protocol::websocket::agents_url(url)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| url.clone()),
        }
    }
}

/// An accepted connection, over either transport.
#[derive(Debug)]
// One per session, moved a handful of times: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Link {
    Jnlp4(jnlp4::Connected),
    WebSocket {
        channel: websocket::Channel,
        /// The controller's, from the upgrade's answer.
        capability: Capability,
    },
}

/// An engine that has announced itself and waits for its peer.
#[derive(Debug)]
struct ReadyEngine {
    engine: Engine,
    jar: PathBuf,
    remoting_version: Option<String>,
    /// The send window the agent sized for it, if it did.
    window: Option<control::EngineWindow>,
    capability: Capability,
    /// Bytes the engine wrote after its preamble (normally none).
    buffered: BytesMut,
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

/// What outlives a session at one controller: a spare engine (the
/// cookies outlive the process, in the state file).
#[derive(Debug, Default)]
pub struct Continuity {
    spare: Option<ReadyEngine>,
}

impl Continuity {
    /// The spare engine's pid, if one is running.
    pub fn spare_pid(&mut self) -> Option<u32> {
        let spare = self.spare.as_mut()?;
        (!spare.engine.has_exited()).then(|| spare.engine.pid())
    }

    /// Stops the spare engine, if any.
    pub async fn shutdown(&mut self) {
        if let Some(mut spare) = self.spare.take() {
            spare.engine.stop(ENGINE_STOP_GRACE).await;
        }
    }
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

/// Whether discovery failed only because the TCP agent port is disabled.
fn port_disabled(err: &HttpError) -> bool {
    use remoting_protocol::discovery::DiscoveryError;
    match err {
        HttpError::Discovery {
            source: DiscoveryError::PortDisabled,
            ..
        } => true,
        HttpError::AllFailed { failures } => failures.iter().all(|(_, e)| port_disabled(e)),
        _ => false,
    }
}

/// Sends the WebSocket's normal close (1000), then ends the connection
/// under it. Over a WebSocket the controller notices either at once.
async fn close_web_socket(channel: &mut websocket::Channel) {
    channel.close_normally(CLOSE_TIMEOUT).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.get_mut().shutdown()).await;
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
            ..
        } = ready;
        let end = self.bridge(&mut engine, link, buffered, departure).await;
        engine.stop(ENGINE_STOP_GRACE).await;
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
        let target = self.resolve(route).await?;
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

    /// The spare engine if it runs this controller's jar, else a new one.
    async fn ready_engine(
        &self,
        route: &Route,
        target: &Target,
        continuity: &mut Continuity,
    ) -> Result<ReadyEngine, SessionError> {
        let jar = self.engine_jar(route, target).await?;
        if let Some(mut spare) = continuity.spare.take() {
            if spare.jar == jar && !spare.engine.has_exited() {
                return Ok(spare);
            }
            // Another controller version, or it died waiting.
            spare.engine.stop(ENGINE_STOP_GRACE).await;
        }
        self.start_engine(route, target, jar).await
    }

    /// Everything up to an accepted connection with an engine waiting for it.
    pub async fn connect(
        &self,
        route: &Route,
        continuity: &mut Continuity,
        cookies: &StateFile,
    ) -> Result<Prepared, SessionError> {
        let target = self.resolve(route).await?;
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

    /// The WebSocket upgrade on the web port. The controller's capability
    /// comes with its answer; one older than the engine's minimum stops
    /// the agent.
    async fn connect_web_socket(
        route: &Route,
        target: &Target,
        url: &str,
        ready: &ReadyEngine,
        cookie: Option<String>,
    ) -> Result<(Option<String>, Link), SessionError> {
        // For wss, and for an https:// proxy on the way.
        let tls = Some(route.web_tls()?);
        let upgrade = websocket::Upgrade {
            url,
            name: &target.name,
            secret: &target.secret,
            capability: &ready.capability,
            cookie: cookie.as_deref(),
        };
        let (channel, accepted) =
            websocket::connect(&upgrade, &route.settings, tls.as_ref()).await?;
        if let (Some(minimum), Some(ours)) = (&accepted.minimum_version, &ready.remoting_version) {
            if crate::engine::older_than(ours, minimum) {
                return Err(SessionError::Config(format!(
                    "the controller at {url} needs remoting {minimum} or newer, but the engine \
                     jar is {ours}: drop --engine-jar to run the controller's own jar, or update it"
                )));
            }
        }
        let capability = accepted.capability.unwrap_or(ready.capability);
        Ok((
            accepted.cookie,
            Link::WebSocket {
                channel,
                capability,
            },
        ))
    }

    async fn bridge(
        &self,
        engine: &mut Engine,
        link: Link,
        engine_buf: BytesMut,
        departure: &Departure,
    ) -> Result<SessionEnd, SessionError> {
        let (Some(mut engine_in), Some(engine_out)) = (engine.stdin.take(), engine.stdout.take())
        else {
            return Err(SessionError::Config("engine stdio missing".into()));
        };
        // The engine's peer preamble carries the controller's capability.
        let capability = match &link {
            Link::Jnlp4(connected) => connected.capability,
            Link::WebSocket { capability, .. } => *capability,
        };
        engine_in
            .write_all(&preamble::encode(capability))
            .await
            .map_err(PreambleError::Io)?;
        engine_in.flush().await.map_err(PreambleError::Io)?;
        let traffic = self.traffic.clone();
        let end = match link {
            Link::Jnlp4(handshake::Connected {
                mut stream,
                read_buf,
                ..
            }) => {
                let end = bridge::run(
                    &mut stream,
                    read_buf,
                    engine_out,
                    engine_buf,
                    engine_in,
                    traffic,
                    departure,
                )
                .await;
                // Whatever ended it: a plain TCP close, never a TLS
                // close_notify (which the controller would ignore,
                // keeping a ghost channel); a ChannelStream's shutdown is
                // only the former.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
                end
            }
            Link::WebSocket { mut channel, .. } => {
                let end = bridge::run(
                    &mut channel,
                    BytesMut::new(),
                    engine_out,
                    engine_buf,
                    engine_in,
                    traffic,
                    departure,
                )
                .await;
                close_web_socket(&mut channel).await;
                end
            }
        };
        match end? {
            BridgeEnd::ControllerClosed => Ok(SessionEnd::ControllerClosed),
            BridgeEnd::EngineClosed => Ok(SessionEnd::EngineExited),
            BridgeEnd::Left(how) => Ok(SessionEnd::Left(how)),
        }
    }

    /// Where to connect: `-direct`, a JNLP file, or discovery over `-url`s.
    async fn resolve(&self, route: &Route) -> Result<Target, SessionError> {
        let s = &route.settings;
        let mut name = s.name.clone();
        let mut secret = s.secret.clone();
        let mut urls = s.urls.clone();
        let mut tunnel = s.tunnel.clone();
        let mut web_socket = s.transport == TransportChoice::WebSocket;
        if let Some(jnlp_url) = &s.jnlp_url {
            let args = route
                .http
                .fetch_jnlp(
                    jnlp_url,
                    secret.as_ref().map(Secret::expose),
                    s.jnlp_credentials.as_ref(),
                )
                .await?;
            let options = args
                .agent_options()
                .map_err(|e| SessionError::Config(format!("{jnlp_url}: {e}")))?;
            // The controller's own launch command says how to reach it.
            web_socket |= options.web_socket;
            name.get_or_insert(args.name.clone());
            secret.get_or_insert_with(|| Secret::new(args.secret.clone()));
            if urls.is_empty() {
                urls = options.urls.clone();
            }
            if tunnel.is_none() {
                tunnel = options
                    .tunnel
                    .as_deref()
                    .map(crate::connect::address::tunnel)
                    .transpose()
                    .map_err(|e| {
                        SessionError::Config(format!("{jnlp_url}: bad -tunnel: -tunnel: {e}"))
                    })?;
            }
        }
        let (Some(name), Some(secret)) = (name, secret) else {
            return Err(SessionError::Config(
                "no node name and secret: give -name and -secret (or -jnlpUrl)".into(),
            ));
        };
        if !s.protocols.is_empty()
            && !s
                .protocols
                .iter()
                .any(|p| p == remoting_protocol::handshake::PROTOCOL_NAME)
        {
            return Err(SessionError::Config(format!(
                "-protocols allows only {}, but this agent speaks {}",
                s.protocols.join(", "),
                remoting_protocol::handshake::PROTOCOL_NAME
            )));
        }
        if web_socket {
            let Some(url) = urls.first() else {
                return Err(SessionError::Config(
                    "-webSocket needs the controller's URL: give -url".into(),
                ));
            };
            return self
                .web_socket_target(route, url, name, secret, false)
                .await;
        }
        if let Some(direct) = &s.direct {
            let identity = s
                .instance_identity
                .as_deref()
                .map(InstanceIdentity::from_base64)
                .transpose()
                .map_err(|e| SessionError::Config(format!("-instanceIdentity: {e}")))?
                .ok_or_else(|| SessionError::Config("-direct needs -instanceIdentity".into()))?;
            return Ok(Target {
                controller_url: urls.first().cloned(),
                cookie_key: identity.fingerprint(),
                via: Via::AgentPort {
                    agent_port: direct.clone(),
                    identity,
                },
                name,
                secret,
            });
        }
        let (url, endpoint) = match route.http.discover_any(&urls).await {
            Ok(found) => found,
            Err(err) if s.transport == TransportChoice::TcpElseWebSocket && port_disabled(&err) => {
                let Some(url) = urls.first() else {
                    return Err(err.into());
                };
                warn!(
                    controller = %url,
                    "the controller's TCP agent port is disabled (tcpSlaveAgentListener/ \
                     answered 404) and no transport was asked for: using a WebSocket on its web port"
                );
                return self.web_socket_target(route, url, name, secret, true).await;
            }
            Err(err) => return Err(err.into()),
        };
        let agent_port = match &tunnel {
            Some(tunnel) => tunnel.apply(&endpoint.host, endpoint.port),
            None => HostPort {
                host: endpoint.host.clone(),
                port: endpoint.port,
            },
        };
        Ok(Target {
            controller_url: Some(url),
            cookie_key: endpoint.identity.fingerprint(),
            via: Via::AgentPort {
                agent_port,
                identity: endpoint.identity,
            },
            name,
            secret,
        })
    }

    /// A WebSocket target at `url`, once its `login` page says the
    /// controller is ready (agent.jar's check before every attempt).
    async fn web_socket_target(
        &self,
        route: &Route,
        url: &str,
        name: String,
        secret: Secret,
        fallback: bool,
    ) -> Result<Target, SessionError> {
        let identity = route.http.login(url).await?;
        let cookie_key = identity
            .as_deref()
            .and_then(|text| InstanceIdentity::from_base64(text).ok())
            .map(|identity| identity.fingerprint())
            .unwrap_or_else(|| format!("url:{url}"));
        Ok(Target {
            controller_url: Some(url.to_owned()),
            via: Via::WebSocket {
                url: url.to_owned(),
                fallback,
            },
            cookie_key,
            name,
            secret,
        })
    }

    /// The engine jar for `target`: `--engine-jar`, or the controller's own,
    /// downloaded and kept by hash.
    async fn engine_jar(&self, route: &Route, target: &Target) -> Result<PathBuf, SessionError> {
        if let Some(jar) = &route.settings.engine_jar {
            return Ok(jar.clone());
        }
        if route.settings.engine_command.is_some() && target.controller_url.is_none() {
            return Ok(PathBuf::new());
        }
        let Some(url) = &target.controller_url else {
            return Err(SessionError::Config(
                "-direct has no web port to fetch the engine from: give --engine-jar".into(),
            ));
        };
        let jar_url = format!("{url}jnlpJars/remoting.jar");
        let known = self.jars.validator(&jar_url);
        let fetched = route
            .http
            .fetch_if_modified(
                &jar_url,
                MAX_ENGINE_JAR,
                known.as_ref().map(|(modified, _)| modified.as_str()),
            )
            .await
            .map_err(SessionError::EngineJar)?;
        match (fetched, known) {
            (Fetched::Unchanged, Some((_, path))) => Ok(path),
            (Fetched::Unchanged, None) => Err(SessionError::Config(format!(
                "{jar_url} answered 304 to an unconditional request"
            ))),
            (
                Fetched::Body {
                    bytes,
                    last_modified,
                },
                _,
            ) => {
                let path = self.jars.store(&bytes)?;
                if let Some(modified) = last_modified {
                    self.jars.remember(&jar_url, &modified, &path);
                }
                Ok(path)
            }
        }
    }

    async fn start_engine(
        &self,
        route: &Route,
        target: &Target,
        jar: PathBuf,
    ) -> Result<ReadyEngine, SessionError> {
        let settings = &route.settings;
        // Measured first: the window is a JVM option, fixed at start.
        let window = if settings.engine_command.is_none() && settings.java.sized_window {
            let rtt = match &target.controller_url {
                Some(url) => route.http.round_trip(url).await,
                None => None,
            };
            Some(control::EngineWindow {
                bytes: crate::engine::window::for_round_trip(rtt),
                round_trip_us: rtt.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            })
        } else {
            None
        };
        let mut sharing = Plan::Nothing;
        let mut spec = match &settings.engine_command {
            Some(argv) => EngineSpec {
                argv: argv.clone(),
                control_socket: None,
            },
            None => {
                let java = find_java(&settings.java, std::env::var_os("PATH").as_deref())?;
                sharing = self.sharing.plan(&java, &jar, &settings.java.java_opts);
                let mut opts = settings.java.java_opts.clone();
                opts.extend(sharing.options());
                if let Some(window) = window {
                    opts.extend(crate::engine::window::java_option(window.bytes));
                }
                EngineSpec::java(
                    &java,
                    &opts,
                    &jar,
                    self.work.for_engine(),
                    &self.work.jar_cache,
                )
            }
        };
        spec.control_socket = self.control_socket.clone();
        let spawned = std::time::Instant::now();
        let mut started = self.announced_engine(&spec, jar).await;
        if let Ok(ready) = &mut started {
            ready.window = window;
            info!(
                pid = ready.engine.pid(),
                ms = spawned.elapsed().as_millis() as u64,
                class_sharing = sharing.describe(),
                window = window.map(|w| w.bytes),
                round_trip_us = window.and_then(|w| w.round_trip_us),
                "engine ready"
            );
        }
        self.sharing.started(sharing, started.is_ok());
        started
    }

    /// Starts the engine of `spec` and reads its preamble.
    async fn announced_engine(
        &self,
        spec: &EngineSpec,
        jar: PathBuf,
    ) -> Result<ReadyEngine, SessionError> {
        let mut engine = Engine::spawn(spec)?;
        let Some(stdout) = engine.stdout.as_mut() else {
            return Err(SessionError::Config("engine stdout missing".into()));
        };
        let mut buf = BytesMut::with_capacity(4096);
        let mut reader = PreambleReader::new();
        let announced = tokio::time::timeout(ENGINE_START_TIMEOUT, async {
            loop {
                if let Some(preamble) = reader.feed(&mut buf)? {
                    return Ok::<_, PreambleError>(preamble);
                }
                buf.reserve(4096);
                if stdout.read_buf(&mut buf).await? == 0 {
                    return Err(PreambleError::Eof);
                }
            }
        })
        .await;
        let preamble = match announced {
            Ok(Ok(preamble)) => preamble,
            Ok(Err(err)) => {
                engine.stop(ENGINE_STOP_GRACE).await;
                return Err(err.into());
            }
            Err(_) => {
                engine.stop(ENGINE_STOP_GRACE).await;
                return Err(SessionError::EngineTimeout(ENGINE_START_TIMEOUT));
            }
        };
        if !preamble.noise.is_empty() {
            warn!(
                pid = engine.pid(),
                "engine wrote {} bytes on stdout before its preamble",
                preamble.noise.len()
            );
        }
        Ok(ReadyEngine {
            engine,
            remoting_version: crate::engine::remoting_version(&jar),
            window: None,
            jar,
            capability: preamble.capability,
            buffered: buf,
        })
    }
}
