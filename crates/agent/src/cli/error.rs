//! Why a command line (plus environment) was refused.
//!
//! Every message names the option or environment variable at fault and says
//! what to do. None of them quotes a value: a misplaced argument
//! (`-tunnel $EMPTY SECRET NAME`) would turn the secret into the tunnel's
//! value. The user knows what they typed; the message says what is wrong
//! with it. clap's messages (which do not quote values either) are scrubbed
//! of every secret-bearing argument as well, to be sure.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A refused command line. `main` prints `error: {err}` and exits with 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap refused the command line (missing value, bad `--log-format`...);
    /// the text is clap's, with secret-bearing values replaced by `***`.
    #[error("{0}")]
    Usage(String),

    /// An option neither agent.jar nor this agent knows.
    #[error("unknown option '{option}'{} (-help lists the options)", Suggestion(.suggestion))]
    UnknownOption {
        /// The option as typed, without any `=VALUE` part.
        option: String,
        /// The closest known spelling.
        suggestion: Option<String>,
    },

    /// An agent.jar option (or the image variable standing for one) that
    /// this agent cannot honour yet; refused rather than silently ignored.
    #[error("{option} is not supported yet by jnlp-agent: {advice}")]
    Unsupported {
        /// The option or `VARIABLE=value`.
        option: &'static str,
        /// What it would do and what to use instead.
        advice: &'static str,
    },

    /// The legacy positional form takes exactly two arguments.
    #[error(
        "expected the two legacy positional arguments SECRET NAME, got {count} positional \
         argument(s); prefer -secret SECRET -name NAME"
    )]
    PositionalCount {
        /// How many positional arguments were given.
        count: usize,
    },

    /// The secret or the name was given both positionally and as an option.
    #[error(
        "the node {what} was given both as a positional argument and with {option}; give it once"
    )]
    PositionalAndOption {
        /// `secret` or `name`.
        what: &'static str,
        /// `-secret` or `-name`.
        option: &'static str,
    },

    /// Two options agent.jar refuses to combine.
    #[error(
        "{option} cannot be combined with {other} (agent.jar refuses this too); drop one of them"
    )]
    Conflict {
        /// The option (or variable) that excludes the other.
        option: &'static str,
        /// The excluded one.
        other: &'static str,
    },

    /// A `-webSocketHeader` that cannot go on a request (its value is not
    /// quoted: it may be a token).
    #[error("{option}: {reason}; give NAME=VALUE, e.g. -webSocketHeader X-Auth=TOKEN")]
    BadHeader {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// agent.jar's WebSocket mode talks to exactly one controller URL.
    #[error("{option} takes exactly one -url (agent.jar refuses several too); keep one")]
    WebSocketOneUrl {
        /// `-webSocket` or `JENKINS_WEB_SOCKET=true`.
        option: &'static str,
    },

    /// An option that only makes sense together with another one.
    #[error("{option} only applies together with {requires}; add it or drop {option}")]
    Requires {
        /// The dependent option (or variable).
        option: &'static str,
        /// What it needs.
        requires: &'static str,
    },

    /// Neither `-url`/`JENKINS_URL`, `-jnlpUrl` nor `-direct` was given.
    #[error(
        "no controller to connect to: give -url URL (or set JENKINS_URL), -jnlpUrl URL, \
         or -direct HOST:PORT"
    )]
    MissingController,

    /// No node secret and no `-jnlpUrl` to provide one.
    #[error(
        "no node secret: give -secret SECRET or -secret @FILE (or set JENKINS_SECRET), or use \
         -jnlpUrl; the secret is shown on the node's page on the controller"
    )]
    MissingSecret,

    /// No node name and no `-jnlpUrl` to provide one.
    #[error("no node name: give -name NAME (or set JENKINS_AGENT_NAME), or use -jnlpUrl")]
    MissingName,

    /// `-direct` without the controller's identity to pin.
    #[error(
        "{direct} needs -instanceIdentity B64 (or JENKINS_INSTANCE_IDENTITY): a direct \
         connection never asks the web port who the controller is, so the controller's \
         base64 public key is the only TLS pin that authenticates it"
    )]
    MissingInstanceIdentity {
        /// `-direct` or `JENKINS_DIRECT_CONNECTION`.
        direct: &'static str,
    },

    /// `-direct` without a local engine jar.
    #[error(
        "{direct} needs --engine-jar PATH (a local remoting.jar): with a direct connection \
         there is no web port to download the engine from"
    )]
    DirectNeedsEngineJar {
        /// `-direct` or `JENKINS_DIRECT_CONNECTION`.
        direct: &'static str,
    },

    /// `-jnlpUrl` with both a secret and basic-auth credentials.
    #[error(
        "-credentials/-jnlpCredentials and {secret} are mutually exclusive with -jnlpUrl \
         (as in agent.jar): the secret already authorises fetching the JNLP file; drop one"
    )]
    JnlpCredentialsWithSecret {
        /// Where the secret came from.
        secret: &'static str,
    },

    /// A `HOST:PORT` value (`-direct`, `-tunnel`) that does not parse.
    #[error("{option}: the value is not {expected}: {reason}")]
    BadHostPort {
        /// The option or variable.
        option: &'static str,
        /// The accepted forms.
        expected: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A controller or JNLP URL that is not an absolute http(s) URL. The value
    /// is not quoted: it may carry `user:password@`.
    #[error(
        "{option}: {reason}; expected an http:// or https:// URL such as http://jenkins:8080/"
    )]
    BadUrl {
        /// The option or variable.
        option: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `USER:PASSWORD` without the colon.
    #[error("{option} expects USER:PASSWORD, but the value has no ':' (the value is not shown: it holds a password)")]
    BadCredentials {
        /// The option.
        option: &'static str,
    },

    /// A `-noReconnectAfter` value that is not a duration.
    #[error(
        "{option}: the value is not a duration ({reason}); use e.g. 10m, 1h30m, 90s, PT10M, \
         or a bare number of milliseconds as agent.jar does"
    )]
    BadDuration {
        /// The option.
        option: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `--log-format` other than `text` or `json`.
    #[error("--log-format must be text or json")]
    BadLogFormat,

    /// An `@FILE` argument whose file cannot be used. Names the file, never
    /// its contents.
    #[error("{option} @{}: cannot use the file: {source}", .path.display())]
    ReadFile {
        /// `-secret` or `-cert`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (I/O error, too large, empty, not UTF-8, ...).
        source: io::Error,
    },

    /// A `-cert` value that holds no PEM certificate.
    #[error(
        "{option}: {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give PEM text \
         or @FILE (did you forget the '@' before a file name?)"
    )]
    BadCert {
        /// The option.
        option: &'static str,
        /// `the value` or `file /path`.
        what: String,
    },

    /// An instance identity that is not base64.
    #[error(
        "{option} is not valid base64; expected the controller's instance identity (the base64 \
         public key shown on the controller's /instance-identity/ page)"
    )]
    BadInstanceIdentity {
        /// The option or variable.
        option: &'static str,
    },

    /// A token given on the command line instead of in a file.
    #[error(
        "--lender-token is not an option: a token on the command line shows in `ps` and shell \
         histories; put it alone in a file and give --lender-token-file FILE \
         (or JNLP_AGENT_LENDER_TOKEN_FILE)"
    )]
    LenderTokenOnCommandLine,

    /// `--lender` without the agent token.
    #[error(
        "{lender} needs --lender-token-file FILE (or JNLP_AGENT_LENDER_TOKEN_FILE): the agent \
         token, as `jnlp-lender token create --agent NAME` printed it"
    )]
    MissingLenderToken {
        /// `--lender` or `JNLP_AGENT_LENDER`.
        lender: &'static str,
    },

    /// `--lender` without a node name to speak for.
    #[error(
        "{lender} needs the node's name: give -name NAME (or set JENKINS_AGENT_NAME), or a \
         -jnlpUrl of the form .../computer/NAME/jenkins-agent.jnlp"
    )]
    LenderNeedsName {
        /// `--lender` or `JNLP_AGENT_LENDER`.
        lender: &'static str,
    },

    /// A label with a character that label expressions reserve. Names its
    /// position and the character, not the label.
    #[error(
        "{option}: label {index} contains {character:?}; labels are separated by spaces or \
         commas and may not contain & | ! < > ( ) \" ' or control characters"
    )]
    BadLabel {
        /// `--labels` or `JNLP_AGENT_LABELS`.
        option: &'static str,
        /// Which label, from 1.
        index: usize,
        /// The character refused.
        character: char,
    },

    /// A label longer than the lender accepts.
    #[error("{option}: label {index} is longer than {max} bytes")]
    LabelTooLong {
        /// `--labels` or `JNLP_AGENT_LABELS`.
        option: &'static str,
        /// Which label, from 1.
        index: usize,
        /// The limit.
        max: usize,
    },

    /// `-loggingConfig FILE` whose file is missing or not a regular file:
    /// refused at start rather than left to the engine JVM, which would
    /// fail only once connected.
    #[error(
        "-loggingConfig {}: {reason}; give the path of a java.util.logging properties file",
        .path.display()
    )]
    LoggingConfig {
        /// The file as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A value that is not UTF-8 text (not quoted: it may be a secret).
    #[error("{option}: the value is not UTF-8 text")]
    NotUtf8 {
        /// The option.
        option: &'static str,
    },

    /// `--engine-command` with nothing but whitespace.
    #[error("--engine-command needs a command: a program and its arguments separated by spaces")]
    EmptyEngineCommand,
}

/// Renders `: did you mean 'X'?` when there is a suggestion.
struct Suggestion<'a>(&'a Option<String>);

impl fmt::Display for Suggestion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, ": did you mean '{s}'?"),
            None => Ok(()),
        }
    }
}
