//! The clap definition of the command line: every option the agent takes,
//! under its canonical name, with agent.jar's other spellings as aliases.
//! The pre-pass (`spelling`) derives agent.jar's single-dash spellings from
//! it; our own options are those under the [`OURS`] heading.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use super::typed::{checked, OURS};
use super::values::{self, Argv, SecretArg};
use crate::settings::{CertPem, Credentials, HostPort, LogFormat, Secret, Tunnel};

pub(super) const USAGE: &str = "jnlp-agent -url URL -secret SECRET -name NAME [OPTIONS]
       jnlp-agent -jnlpUrl URL [-secret SECRET | -jnlpCredentials USER:PASSWORD] [OPTIONS]
       jnlp-agent -direct HOST:PORT -instanceIdentity B64 --engine-jar PATH -secret SECRET -name NAME [OPTIONS]
       jnlp-agent -url URL [OPTIONS] SECRET NAME        (legacy)";

pub(super) const AFTER_HELP: &str = "\
Options take agent.jar's single-dash spelling (-url URL) or GNU double-dash (--url URL),
and -opt=VALUE. -secret @FILE and -cert @FILE read the value from FILE.

Environment (jenkins/inbound-agent image), used when the option is absent:
  JENKINS_URL                 -url          JENKINS_SECRET             -secret
  JENKINS_AGENT_NAME          -name         (JENKINS_NAME)             -name
  JENKINS_AGENT_WORKDIR       -workDir      JENKINS_TUNNEL             -tunnel
  JENKINS_DIRECT_CONNECTION   -direct       JENKINS_INSTANCE_IDENTITY  -instanceIdentity
  JENKINS_PROTOCOLS           -protocols    REMOTING_OPTS              extra options
  JENKINS_JAVA_BIN, JAVA_HOME, JENKINS_JAVA_OPTS (else JAVA_OPTS): how to start the engine JVM;
                              with neither set: -XX:+UseSerialGC and a send window sized from
                              the round trip to the controller (any option of yours replaces both)

  JENKINS_WEB_SOCKET=true     -webSocket

Ours: JNLP_AGENT_LENDER (--lender; a comma-separated list), JNLP_AGENT_LENDER_TOKEN_FILE (--lender-token-file),
JNLP_AGENT_LABELS (--labels).

-agentLog FILE: the log (with the engine's stderr) goes to FILE, appended, instead of stderr
and the work dir's logs.
-loggingConfig FILE: every engine JVM gets -Djava.util.logging.config.file=FILE, unless
JENKINS_JAVA_OPTS/JAVA_OPTS set that property already (yours wins).

Refused (other launch modes): -text, -tcp, -connectTo. Ignored: -headless, -ping, -auth.";

/// Jenkins inbound agent: a native drop-in for `java -jar agent.jar`.
#[derive(Debug, Parser)]
#[command(
    name = "jnlp-agent",
    version,
    override_usage = USAGE,
    after_help = AFTER_HELP,
    args_override_self = true,
    disable_help_flag = true,
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    max_term_width = 100
)]
pub(super) struct Args {
    /// Jenkins root URL to connect to; repeat to try several in order.
    #[arg(long = "url", value_name = "URL", action = ArgAction::Append, allow_hyphen_values = true, env = "JENKINS_URL", hide_env_values = true, value_parser = checked(values::controller_url))]
    pub(super) url: Vec<String>,

    /// Name of the agent (node).
    #[arg(
        long = "name",
        value_name = "NAME",
        allow_hyphen_values = true,
        env = "JENKINS_AGENT_NAME",
        hide_env_values = true
    )]
    pub(super) name: Option<String>,

    /// Agent connection secret, or @FILE to read it from a file.
    #[arg(
        long = "secret",
        value_name = "SECRET|@FILE",
        allow_hyphen_values = true,
        env = "JENKINS_SECRET",
        hide_env_values = true,
        value_parser = checked(values::secret_arg),
    )]
    pub(super) secret: Option<SecretArg>,

    /// Working directory of the agent (stores the jar cache and logs).
    #[arg(
        long = "workDir",
        value_name = "DIR",
        allow_hyphen_values = true,
        env = "JENKINS_AGENT_WORKDIR",
        hide_env_values = true
    )]
    pub(super) work_dir: Option<PathBuf>,

    /// Name of the internal directory within the work directory [default: remoting].
    #[arg(long = "internalDir", value_name = "NAME", allow_hyphen_values = true)]
    pub(super) internal_dir: Option<String>,

    /// Fail if the work directory or internal directory is missing.
    #[arg(long = "failIfWorkDirIsMissing")]
    pub(super) fail_if_work_dir_is_missing: bool,

    /// Fetch connection parameters from this JNLP file URL (deprecated in agent.jar).
    #[arg(long = "jnlpUrl", value_name = "URL", allow_hyphen_values = true, value_parser = checked(values::http_url))]
    pub(super) jnlp_url: Option<String>,

    /// HTTP basic auth for the controller's web port (alias -jnlpCredentials).
    #[arg(
        long = "credentials",
        alias = "jnlpCredentials",
        value_name = "USER:PASSWORD",
        allow_hyphen_values = true,
        value_parser = checked(values::credentials),
    )]
    pub(super) credentials: Option<Credentials>,

    /// HTTP basic auth for the HTTP proxy.
    #[arg(
        long = "proxyCredentials",
        value_name = "USER:PASSWORD",
        allow_hyphen_values = true,
        value_parser = checked(values::credentials),
    )]
    pub(super) proxy_credentials: Option<Credentials>,

    /// Connect straight to this TCP agent port, skipping the web port (alias -directConnection).
    #[arg(
        long = "direct",
        alias = "directConnection",
        value_name = "HOST:PORT",
        allow_hyphen_values = true,
        env = "JENKINS_DIRECT_CONNECTION",
        hide_env_values = true,
        value_parser = checked(values::host_port),
    )]
    pub(super) direct: Option<HostPort>,

    /// The controller's base64 instance identity (public key), required with -direct.
    #[arg(
        long = "instanceIdentity",
        value_name = "B64",
        allow_hyphen_values = true,
        env = "JENKINS_INSTANCE_IDENTITY",
        hide_env_values = true,
        value_parser = checked(values::instance_identity),
    )]
    pub(super) instance_identity: Option<String>,

    /// Remoting protocols to try with -direct, comma-separated.
    #[arg(long = "protocols", value_name = "P1,P2", action = ArgAction::Append, allow_hyphen_values = true, env = "JENKINS_PROTOCOLS", hide_env_values = true)]
    pub(super) protocols: Vec<String>,

    /// Connect here instead of the advertised agent port; HOST: or :PORT keep the other half.
    #[arg(long = "tunnel", value_name = "HOST:PORT", allow_hyphen_values = true, env = "JENKINS_TUNNEL", hide_env_values = true, value_parser = checked(values::tunnel))]
    pub(super) tunnel: Option<Tunnel>,

    /// Extra trusted PEM certificate for the web port, or @FILE; repeatable.
    #[arg(long = "cert", value_name = "PEM|@FILE", action = ArgAction::Append, allow_hyphen_values = true, value_parser = checked(values::cert))]
    pub(super) cert: Vec<CertPem>,

    /// Accept any web-port certificate: a last resort (alias -disableHttpsCertValidation).
    #[arg(long = "noCertificateCheck", alias = "disableHttpsCertValidation")]
    pub(super) no_certificate_check: bool,

    /// Exit instead of reconnecting when the connection fails (alias -noreconnect).
    #[arg(long = "noReconnect", alias = "noreconnect")]
    pub(super) no_reconnect: bool,

    /// Give up reconnecting after this long (10m, 1h30m, PT10M; bare number = ms).
    #[arg(
        long = "noReconnectAfter",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
    )]
    pub(super) no_reconnect_after: Option<Duration>,

    /// Disable TCP keep-alive on the connection to the controller.
    #[arg(long = "noKeepAlive")]
    pub(super) no_keep_alive: bool,

    /// Run the channel over a WebSocket on the controller's web port instead of the TCP agent port.
    #[arg(long = "webSocket", env = "JENKINS_WEB_SOCKET", hide_env_values = true)]
    pub(super) web_socket: bool,

    /// Extra header on the WebSocket upgrade request, NAME=VALUE; repeatable.
    #[arg(long = "webSocketHeader", value_name = "NAME=VALUE", action = ArgAction::Append, allow_hyphen_values = true, value_parser = checked(values::header))]
    pub(super) web_socket_header: Vec<(String, Secret)>,

    /// Write the log (and the engine's stderr) to FILE, appended, instead of stderr.
    #[arg(long = "agentLog", value_name = "FILE", allow_hyphen_values = true)]
    pub(super) agent_log: Option<PathBuf>,

    /// java.util.logging properties for the engine JVM (-Djava.util.logging.config.file).
    #[arg(
        long = "loggingConfig",
        value_name = "FILE",
        allow_hyphen_values = true,
        value_parser = checked(values::logging_config_arg),
    )]
    pub(super) logging_config: Option<PathBuf>,

    /// Cache directory for jar files sent by the controller.
    #[arg(long = "jar-cache", value_name = "DIR", allow_hyphen_values = true)]
    pub(super) jar_cache: Option<PathBuf>,

    /// Use this local remoting.jar as the engine instead of the controller's.
    #[arg(long = "engine-jar", help_heading = OURS, value_name = "PATH", allow_hyphen_values = true)]
    pub(super) engine_jar: Option<PathBuf>,

    /// Run this command (split on whitespace) instead of the java command line.
    #[arg(
        long = "engine-command", help_heading = OURS,
        value_name = "CMD",
        allow_hyphen_values = true,
        value_parser = checked(values::engine_command),
    )]
    pub(super) engine_command: Option<Argv>,

    /// Control socket path [default: WORKDIR/INTERNALDIR/control.sock].
    #[arg(
        long = "control-socket", help_heading = OURS,
        value_name = "PATH",
        allow_hyphen_values = true
    )]
    pub(super) control_socket: Option<PathBuf>,

    /// Open the control socket to this group (mode 0660) instead of only its owner.
    #[arg(
        long = "control-group", help_heading = OURS,
        value_name = "GROUP",
        allow_hyphen_values = true
    )]
    pub(super) control_group: Option<String>,

    /// Return home when a borrower was unreachable or refusing this long.
    #[arg(
        long = "borrow-give-up", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "5m",
    )]
    pub(super) borrow_give_up: Duration,

    /// After a lease expired, how long a busy agent may finish before it goes home anyway.
    #[arg(
        long = "lease-grace", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "10m",
    )]
    pub(super) lease_grace: Duration,

    /// How long the channel must carry nothing but pings before the agent counts as idle and may move.
    #[arg(
        long = "quiet-period", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "5s",
    )]
    pub(super) quiet_period: Duration,

    /// Keep no engine started ahead of a move (the pending borrower's, or home's while borrowed); saves a JVM's memory, costs a JVM start per move.
    #[arg(long = "no-warm-engine", help_heading = OURS)]
    pub(super) no_warm_engine: bool,

    /// Start engine JVMs without a class-data sharing archive (by default one is made per engine jar and JVM, in the work dir, and used when the JVM can).
    #[arg(long = "no-class-sharing", help_heading = OURS)]
    pub(super) no_class_sharing: bool,

    /// How long the first engine of a jar records the classes it loads, at the latest, before the sharing archive is made from them (it is made sooner, a moment after the engine answered its controller's first calls).
    #[arg(
        long = "class-sharing-after", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "60s",
    )]
    pub(super) class_sharing_after: Duration,

    /// Where the current target (home or borrowed) survives restarts [default: WORKDIR/INTERNALDIR/state.json].
    #[arg(long = "state-file", help_heading = OURS, value_name = "PATH", allow_hyphen_values = true)]
    pub(super) state_file: Option<PathBuf>,

    /// First wait before reconnecting (doubles up to --reconnect-max-delay).
    #[arg(
        long = "reconnect-delay", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "1s",
    )]
    pub(super) reconnect_delay: Duration,

    /// Longest wait between reconnection attempts.
    #[arg(
        long = "reconnect-max-delay", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "30s",
    )]
    pub(super) reconnect_max_delay: Duration,

    /// Reconnect a WebSocket that carried no frame for this long.
    #[arg(
        long = "web-socket-idle-timeout", help_heading = OURS,
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = checked(values::duration),
        default_value = "40s",
    )]
    pub(super) web_socket_idle_timeout: Duration,

    /// Keep a link to this lending pool (jnlp-lender), http(s)://HOST[:PORT][/PATH]; repeatable
    /// (or comma-separated) for an active lender and its standbys, tried in order.
    #[arg(long = "lender", help_heading = OURS, value_name = "URL", allow_hyphen_values = true)]
    pub(super) lender: Vec<String>,

    /// The agent's token for --lender, read from FILE (never given on the command line).
    #[arg(
        long = "lender-token-file", help_heading = OURS,
        value_name = "FILE",
        allow_hyphen_values = true,
        env = "JNLP_AGENT_LENDER_TOKEN_FILE",
        hide_env_values = true,
    )]
    pub(super) lender_token_file: Option<PathBuf>,

    /// Labels announced to --lender, separated by spaces or commas; repeatable. os, arch and the Linux distribution are added.
    #[arg(long = "labels", help_heading = OURS, value_name = "LABELS", action = ArgAction::Append, allow_hyphen_values = true, env = "JNLP_AGENT_LABELS", hide_env_values = true)]
    pub(super) labels: Vec<String>,

    /// Log output format: text or json [default: text].
    #[arg(long = "log-format", help_heading = OURS, value_name = "FORMAT", allow_hyphen_values = true, value_parser = checked(values::log_format))]
    pub(super) log_format: Option<LogFormat>,

    /// Show this help (also -help).
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub(super) help: Option<bool>,

    /// Show the version.
    #[arg(long = "version", action = ArgAction::Version)]
    pub(super) version: Option<bool>,

    /// Legacy form: SECRET NAME.
    #[arg(value_name = "SECRET NAME", hide = true)]
    pub(super) legacy: Vec<String>,
}
