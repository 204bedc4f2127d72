//! What the agent was asked to do, after merging the command line and the
//! environment: the one value the rest of the agent reads.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret (node secret, password): the type the lender shares, which
/// never prints.
pub use control::Secret;

/// `user:password` for HTTP basic authentication (`-credentials`,
/// `-proxyCredentials`, `-jnlpCredentials`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or API token.
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user)
    }
}

/// `HOST:PORT`, as given to `-direct`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `-tunnel`: `HOST:PORT`, `HOST:` (keep the advertised port) or `:PORT`
/// (keep the advertised host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// Replaces the advertised host when set.
    pub host: Option<String>,
    /// Replaces the advertised port when set.
    pub port: Option<u16>,
}

impl Tunnel {
    /// Where to connect instead of the advertised `host:port`.
    pub fn apply(&self, host: &str, port: u16) -> HostPort {
        HostPort {
            host: self.host.clone().unwrap_or_else(|| host.to_owned()),
            port: self.port.unwrap_or(port),
        }
    }
}

/// A trusted CA certificate for the controller's web port (`-cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPem(pub String);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How to find and start the engine JVM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JavaSettings {
    /// `JENKINS_JAVA_BIN`: the java executable.
    pub java_bin: Option<PathBuf>,
    /// `JAVA_HOME`: `$JAVA_HOME/bin/java` when `java_bin` is unset.
    pub java_home: Option<PathBuf>,
    /// `JENKINS_JAVA_OPTS` (else `JAVA_OPTS`), split on whitespace; the
    /// measured `engine::DEFAULT_JAVA_OPTS` when neither is set.
    pub java_opts: Vec<String>,
    /// Neither is set: each engine also gets a send window sized from the
    /// round trip to its controller (`engine::window`).
    pub sized_window: bool,
}

/// How the channel reaches the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// The TCP agent port (JNLP4-connect), found by discovery; agent.jar's default.
    Tcp,
    /// A WebSocket on the web port (`-webSocket`).
    WebSocket,
    /// TCP, or the WebSocket when discovery says the TCP agent port is
    /// disabled (404): for a borrower given no transport.
    TcpElseWebSocket,
}

/// `--lender URL`: keep a link to the lending pool `jnlp-lender`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenderSettings {
    /// The lenders' base URLs (`http://` or `https://`), as given, in the
    /// order the link tries them (the active lender and its standbys); at
    /// least one.
    pub urls: Vec<String>,
    /// The agent token, read from `--lender-token-file` (never from the
    /// command line; never logged).
    pub token: Secret,
    /// The node name at home that the link speaks for: `-name`, else the
    /// name in a `-jnlpUrl` (`.../computer/NAME/...`).
    pub node: String,
    /// `--labels`, in order, without duplicates; the automatic `os`, `arch`
    /// and distribution labels are added by the link.
    pub labels: Vec<String>,
}

/// Everything the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Controller URLs to try in order (`-url`, repeatable; `JENKINS_URL`),
    /// each ending in `/`.
    pub urls: Vec<String>,
    /// `-jnlpUrl`: a JNLP file giving the secret, name and options.
    pub jnlp_url: Option<String>,
    /// `-jnlpCredentials user:password` for the JNLP file.
    pub jnlp_credentials: Option<Credentials>,
    /// Node name (`-name`, `JENKINS_AGENT_NAME`, `JENKINS_NAME`, positional).
    pub name: Option<String>,
    /// Node secret (`-secret`, `-secret @file`, `JENKINS_SECRET`, positional).
    pub secret: Option<Secret>,
    /// `-workDir`, `JENKINS_AGENT_WORKDIR`.
    pub work_dir: Option<PathBuf>,
    /// `-internalDir` (default `remoting`).
    pub internal_dir: String,
    /// `-failIfWorkDirIsMissing`.
    pub fail_if_work_dir_is_missing: bool,
    /// `-direct HOST:PORT`, `JENKINS_DIRECT_CONNECTION`: skip discovery.
    pub direct: Option<HostPort>,
    /// `-instanceIdentity`, `JENKINS_INSTANCE_IDENTITY` (base64 SPKI).
    pub instance_identity: Option<String>,
    /// `-protocols`, `JENKINS_PROTOCOLS`.
    pub protocols: Vec<String>,
    /// `-tunnel`, `JENKINS_TUNNEL`.
    pub tunnel: Option<Tunnel>,
    /// `-credentials user:password` for the controller's web port.
    pub credentials: Option<Credentials>,
    /// `-proxyCredentials user:password` for the HTTP proxy.
    pub proxy_credentials: Option<Credentials>,
    /// `-webSocket`, `JENKINS_WEB_SOCKET=true`: the channel runs over a
    /// WebSocket on the web port.
    pub transport: TransportChoice,
    /// `-webSocketHeader NAME=VALUE`, in order.
    pub web_socket_headers: Vec<(String, Secret)>,
    /// `--web-socket-idle-timeout`: no frame for this long means dead.
    pub web_socket_idle_timeout: std::time::Duration,
    /// `-cert` (PEM text or `@file`, repeatable).
    pub certs: Vec<CertPem>,
    /// `-noCertificateCheck`: accept any web-port certificate (logged loudly).
    pub no_certificate_check: bool,
    /// `-noReconnect`.
    pub no_reconnect: bool,
    /// `-noReconnectAfter DURATION`.
    pub no_reconnect_after: Option<Duration>,
    /// `-noKeepAlive`.
    pub no_keep_alive: bool,
    /// `-jar-cache DIR`.
    pub jar_cache: Option<PathBuf>,
    /// How to start the engine JVM.
    pub java: JavaSettings,
    /// `--engine-jar PATH`: use this remoting.jar instead of the controller's.
    pub engine_jar: Option<PathBuf>,
    /// `--engine-command CMD ARG...` (test seam): replaces the java command line.
    pub engine_command: Option<Vec<String>>,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `-agentLog FILE`: the log goes to FILE (appended) instead of stderr
    /// and the work dir's rotated files.
    pub agent_log: Option<PathBuf>,
    /// `--control-socket PATH` (default `<workDir>/<internalDir>/control.sock`).
    pub control_socket: Option<PathBuf>,
    /// `--control-group GROUP`: open the control socket to this group.
    pub control_group: Option<String>,
    /// `--borrow-give-up DURATION`: return home when a borrower has been
    /// unreachable or refusing for this long.
    pub borrow_give_up: Duration,
    /// `--lease-grace DURATION`: how long after its lease expired a busy
    /// agent may finish before it goes home anyway.
    pub lease_grace: Duration,
    /// `--quiet-period DURATION`: how long the channel must carry nothing
    /// but pings before the agent counts as idle.
    pub quiet_period: Duration,
    /// Keep an engine started ahead of a move (`--no-warm-engine` turns
    /// it off).
    pub warm_engine: bool,
    /// Engine JVMs map a class-data sharing archive (`--no-class-sharing`
    /// turns it off).
    pub class_sharing: bool,
    /// `--class-sharing-after`: how long a jar's first engine records its
    /// classes, at the latest, before the archive is made (sooner once it
    /// answered its first calls).
    pub class_sharing_after: Duration,
    /// `--state-file PATH` (default `<workDir>/<internalDir>/state.json`).
    pub state_file: Option<PathBuf>,
    /// `--reconnect-delay`: the first wait before reconnecting.
    pub reconnect_delay: Duration,
    /// `--reconnect-max-delay`: the longest wait between attempts.
    pub reconnect_max_delay: Duration,
    /// `--lender URL` with its token and labels; `None` keeps no link.
    pub lender: Option<LenderSettings>,
    /// The secret and token files read (`-secret @FILE`, the lender token
    /// file) that other users can read: warned about once logging is up.
    pub exposed_secret_files: Vec<control::secret_file::ReadableByOthers>,
}
