//! The command line and environment of `java -jar agent.jar`, turned into
//! [`Settings`].
//!
//! [`parse`] is pure apart from reading `@FILE` arguments: it takes argv and
//! an environment lookup and returns what to do ([`Command`]) or why not
//! ([`CliError`]).
//!
//! # Spelling
//!
//! agent.jar's options are single-dash words (`-url`, `-workDir`,
//! `-jar-cache`); they are accepted as they are, as GNU double-dash
//! (`--url`), and with an inline value (`-url=URL`, `--url=URL`). A pre-pass
//! rewrites exactly the known single-dash words to `--word` before clap sees
//! them, tracking which tokens are option values so that a value starting
//! with `-` is never rewritten (agent.jar's parser takes the next token as
//! the value, whatever it looks like). `--` ends the options. The options
//! that are ours, not agent.jar's, are double-dash only. Given twice, a
//! single-valued option keeps the last value, as agent.jar does.
//!
//! # Options and environment
//!
//! The environment variables are those of the `jenkins/inbound-agent` image;
//! they apply when the option is absent (the option wins), are trimmed, and
//! count as unset when empty. A conflict involving one names the variable.
//!
//! | agent.jar option | image variable | decision |
//! |---|---|---|
//! | `-url URL` (repeatable) | `JENKINS_URL` | `urls`, tried in order; http(s) only, `/` appended. Any `-url` replaces `JENKINS_URL`. |
//! | `-name NAME` | `JENKINS_AGENT_NAME`, else `JENKINS_NAME` | `name` |
//! | `-secret S`, `-secret @FILE` | `JENKINS_SECRET` | `secret`. The file holds the secret alone (trailing newline trimmed, at most 64 KiB). `JENKINS_SECRET` is taken literally, never as `@FILE`. |
//! | `SECRET NAME` (two positionals) | | legacy form of `hudson.remoting.jnlp.Main`: `secret` then `name`; refused if `-secret`/`-name` is also given, or if the count is not two. |
//! | `-workDir DIR` | `JENKINS_AGENT_WORKDIR` | `work_dir` |
//! | `-internalDir NAME` | | `internal_dir`, default `remoting`; needs a work dir (as in agent.jar). |
//! | `-failIfWorkDirIsMissing` | | needs a work dir (as in agent.jar). |
//! | `-jnlpUrl URL` | | `jnlp_url`; the JNLP file supplies URL, name and secret, so those are not required. Excludes `-url`, `-name`, `-tunnel`, `-direct`. |
//! | `-credentials U:P`, alias `-jnlpCredentials` | | One option in agent.jar. `credentials` (web port); with `-jnlpUrl` also `jnlp_credentials`, and then a secret is refused (mutually exclusive, as in agent.jar). |
//! | `-direct HOST:PORT`, alias `-directConnection` | `JENKINS_DIRECT_CONNECTION` | `direct`; needs `-instanceIdentity` (the TLS pin) and `--engine-jar` (or `--engine-command`), there being no web port to fetch the engine from. Excludes `-url`, `-jnlpUrl`, `-tunnel`. |
//! | `-instanceIdentity B64` | `JENKINS_INSTANCE_IDENTITY` | `instance_identity`, must be base64; needs `-direct`. |
//! | `-protocols P1,P2` (repeatable) | `JENKINS_PROTOCOLS` | `protocols`, split on commas; needs `-direct`. |
//! | `-tunnel HOST:PORT`, `HOST:`, `:PORT` | `JENKINS_TUNNEL` | `tunnel` |
//! | `-proxyCredentials U:P` | | `proxy_credentials` |
//! | `-cert PEM`, `-cert @FILE` (repeatable) | | `certs`; must contain a PEM certificate. Excludes `-noCertificateCheck`. |
//! | `-noCertificateCheck`, alias `-disableHttpsCertValidation` | | `no_certificate_check` |
//! | `-noReconnect`, alias `-noreconnect` | | `no_reconnect` |
//! | `-noReconnectAfter DURATION` | | `no_reconnect_after`: `10m`, `1h30m`, `PT10M`, or a bare number of **milliseconds** (agent.jar's unit). Excludes `-noReconnect`. |
//! | `-noKeepAlive` | | `no_keep_alive` |
//! | `-jar-cache DIR` | | `jar_cache` |
//! | `-help`, `--help`, `-h` | | [`Command::Help`] |
//! | `-version`, `--version` | | [`Command::Version`] |
//! | `-headless`, `-ping` | | accepted and ignored: no-ops in agent.jar too. |
//! | `-auth U:P` | | accepted and ignored: agent.jar ignores it too ("unused"). |
//! | `-webSocket` | `JENKINS_WEB_SOCKET=true` | `web_socket`: the channel runs over a WebSocket on the web port instead of the TCP agent port. Excludes `-direct`, `-tunnel`, `-credentials`, `-noKeepAlive`, and more than one `-url` (as in agent.jar). |
//! | `-webSocketHeader NAME=VALUE` (repeatable) | | `web_socket_headers`, in order, on the upgrade request; needs `-webSocket`. The name must be a valid header name. |
//! | `-agentLog FILE` | | `agent_log`: the agent's log (in `--log-format`, including the engine's stderr, which is forwarded into it) goes to FILE instead of stderr, appended; FILE is created mode 0600 if missing. The work dir's rotated logs are then not written, as agent.jar writes no `remoting.log` with it. See "agent.jar's logging" below. |
//! | `-loggingConfig FILE` | | must be an existing file; every engine JVM gets `-Djava.util.logging.config.file=FILE` (made absolute), after `JENKINS_JAVA_OPTS`/`JAVA_OPTS` or our defaults, unless those options set that property already: the user's own wins. |
//! | `-text`, `-tcp FILE`, `-connectTo HOST:PORT` | | refused: launch modes other than an inbound agent. |
//! | | `JENKINS_JAVA_BIN` | `java.java_bin` |
//! | | `JAVA_HOME` | `java.java_home` |
//! | | `JENKINS_JAVA_OPTS`, else `JAVA_OPTS` | `java.java_opts`, split on whitespace; when neither is set, `engine::DEFAULT_JAVA_OPTS` and `java.sized_window` (the engine's window from the round trip, `engine::window`). |
//! | | `REMOTING_OPTS` | split on whitespace and put before the command-line options, as the image's script does. |
//!
//! Our own options (double-dash only):
//!
//! | option | decision |
//! |---|---|
//! | `--engine-jar PATH` | `engine_jar`: a local remoting.jar instead of the controller's. |
//! | `--engine-command CMD` | `engine_command`: one string split on whitespace (test seam). |
//! | `--log-format text\|json` | `log_format` |
//! | `--control-socket PATH`, `--control-group GROUP` | the control socket (issue: borrowing); default `<workDir>/<internalDir>/control.sock`, mode 0600, or 0660 with the group. |
//! | `--lease-grace DURATION` | after a lease expired, how long a busy agent may finish before it goes home anyway (default 10m). |
//! | `--no-class-sharing` | start engine JVMs without a class-data sharing archive (`engine::class_sharing`). |
//! | `--class-sharing-after DURATION` | how long the first engine of a jar records its classes before the archive is made (default 60s). |
//! | `--no-warm-engine` | keep no engine started ahead of a move (a pending borrow's target, home while borrowed): for memory-tight machines; a move then also waits for a JVM start. |
//! | `--quiet-period DURATION` | how long the channel must carry nothing but pings before the agent counts as idle and may move (default 5s). |
//! | `--borrow-give-up DURATION` | return home after a borrower was unreachable or refusing this long (default 5m). |
//! | `--state-file PATH` | where the current target survives restarts (default `<workDir>/<internalDir>/state.json`). |
//! | `--web-socket-idle-timeout DURATION` | a WebSocket that carried no frame this long is dead and is reconnected (default 40s, a little over the controller's 30 s ping interval; our own pings go every quarter of it). agent.jar has no such limit. |
//! | `--reconnect-delay DURATION` | first wait before reconnecting, doubling (with jitter) up to `--reconnect-max-delay` (defaults 1s and 30s); agent.jar waits a fixed 10 s. The lender link reconnects on the same schedule. |
//! | `--lender URL` (`JNLP_AGENT_LENDER`) | keep a link to the lending pool `jnlp-lender` (see `lending::link`): http(s), no `user:password@`, no query. Needs a node name: `-name`, or a `-jnlpUrl` of the form `.../computer/NAME/...`. Without it the agent behaves as if the link did not exist. |
//! | `--lender-token-file FILE` (`JNLP_AGENT_LENDER_TOKEN_FILE`) | required with `--lender`: the agent token, alone in the file (trimmed, at most 64 KiB). There is no option that takes the token itself: `--lender-token` is refused. Needs `--lender`. |
//! | `--labels LABELS` (`JNLP_AGENT_LABELS`), repeatable | labels announced to the lender, separated by spaces or commas; each a label-expression atom (no whitespace nor `& \| ! < > ( ) " '`). `os`, `arch` and the Linux distribution are added by the link. Needs `--lender`. |
//!
//! Anything else starting with `-` is refused with the closest known
//! spelling as a hint.
//!
//! # agent.jar's logging
//!
//! Read in jenkinsci/remoting (`Launcher`, `jnlp.Main`, `Engine` and
//! `WorkDirManager.setupLogging`): `-agentLog FILE`
//! replaces `System.err` with a tee to stderr and to FILE, opened truncated
//! by a `FileOutputStream`, and turns off the work dir's `remoting.log`;
//! java.util.logging's console handler writes to `System.err`, so the log
//! lands in FILE. `-loggingConfig FILE` sets `java.util.logging.config.file`
//! and `setupLogging` reads FILE (a missing file fails the start).
//!
//! Here the agent's log is what agent.jar's JUL log was, and the engine
//! JVM, where agent.jar's remoting runs, does its own java.util.logging.
//! So `-agentLog` moves the agent's log (which carries the engine's stderr
//! lines) to FILE, and `-loggingConfig` goes to the engine JVM as the
//! system property. Deliberate differences: FILE is appended to, not
//! truncated (a restart keeps the previous run's lines, as the rotated logs
//! do), and stderr no longer gets the log (the user asked for a file; a
//! service manager capturing stderr too would store every line twice).
//! The error that ends the agent is logged to FILE and also printed on
//! stderr (`error: ...`), so that whoever started it sees why it stopped.
//! Assumed: nothing in a container
//! image or node page depends on stderr still carrying the log when
//! `-agentLog` is given. The images' `jenkins-agent` script has no variable
//! for either option; `REMOTING_OPTS` carries them (as it does here).
//!
//! # Layout
//!
//! - this file: [`parse`], the option table, the pre-pass, the clap
//!   definition, and merging options with the environment;
//! - `error`: [`CliError`];
//! - `values`: parsers for single values (URLs, `HOST:PORT`, durations,
//!   `@FILE`...);
//! - `tests`: unit tests.

mod error;
mod values;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};

pub use error::CliError;

use crate::settings::{JavaSettings, LenderSettings, LogFormat, Settings, TransportChoice};

/// What the command line asks for.
#[derive(Debug)]
// Built once per process and matched right away; boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the agent.
    Run(Settings),
    /// Print this help text to stdout and exit 0 (no trailing newline).
    Help(String),
    /// Print this version text to stdout and exit 0 (no trailing newline).
    Version(String),
}

/// Parses `args` (including argv\[0\]) with environment lookups through
/// `env`. Reads the files named by `-secret @FILE` and `-cert @FILE`, and
/// nothing else.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, CliError> {
    let env = Env(env);
    let mut args = args.into_iter();
    let argv0 = args.next().unwrap_or_else(|| OsString::from("jnlp-agent"));
    // The image's script puts $REMOTING_OPTS before "$@", so the command
    // line's own options come later and win.
    let remoting_opts: Vec<OsString> = env
        .get("REMOTING_OPTS")
        .map(|o| o.split_whitespace().map(OsString::from).collect())
        .unwrap_or_default();
    let prepared = prepass(remoting_opts.into_iter().chain(args))?;

    let parsed = match Args::try_parse_from(std::iter::once(argv0).chain(prepared.args)) {
        Ok(parsed) => parsed,
        Err(err) => {
            let text = err.render().to_string();
            return match err.kind() {
                ErrorKind::DisplayHelp => Ok(Command::Help(agent_jar_spelling(text.trim_end()))),
                ErrorKind::DisplayVersion => Ok(Command::Version(text.trim_end().to_owned())),
                _ => Err(CliError::Usage(redact(
                    text.trim_start_matches("error: ").trim_end(),
                    &prepared.sensitive,
                ))),
            };
        }
    };
    settings(parsed, &env).map(Command::Run)
}

// ---------------------------------------------------------------------------
// The option table and the pre-pass.

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Flag,
    Value,
}

/// What the pre-pass does with an option.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// agent.jar's: `-name` or `--name`, rewritten to `--canonical`.
    AgentJar { canonical: &'static str },
    /// Ours: `--name` only.
    Ours,
    /// Dropped with its value: a no-op in agent.jar too.
    Ignored,
    /// Refused with [`CliError::Unsupported`].
    Unsupported {
        option: &'static str,
        advice: &'static str,
    },
    /// Refused with this error: a spelling that must not work (a secret on
    /// the command line).
    Refused(fn() -> CliError),
}

#[derive(Debug)]
struct Spec {
    name: &'static str,
    takes: Takes,
    kind: Kind,
    /// The value is a secret or password: scrub it from clap's messages.
    sensitive: bool,
}

const fn jar(name: &'static str, takes: Takes) -> Spec {
    alias(name, takes, name)
}

const fn alias(name: &'static str, takes: Takes, canonical: &'static str) -> Spec {
    Spec {
        name,
        takes,
        kind: Kind::AgentJar { canonical },
        sensitive: false,
    }
}

const fn sensitive(mut spec: Spec) -> Spec {
    spec.sensitive = true;
    spec
}

const fn ours(name: &'static str, takes: Takes) -> Spec {
    Spec {
        name,
        takes,
        kind: Kind::Ours,
        sensitive: false,
    }
}

const fn unsupported(
    name: &'static str,
    option: &'static str,
    takes: Takes,
    advice: &'static str,
) -> Spec {
    Spec {
        name,
        takes,
        kind: Kind::Unsupported { option, advice },
        sensitive: false,
    }
}

const INBOUND_ONLY: &str = "it selects another launch mode (stdin/stdout, listening, raw TCP); \
     only inbound agents (-url, -jnlpUrl, -direct) are implemented";

use Takes::{Flag, Value};

/// Every option spelling we recognise, without dashes.
const SPECS: &[Spec] = &[
    jar("url", Value),
    jar("name", Value),
    sensitive(jar("secret", Value)),
    jar("workDir", Value),
    jar("internalDir", Value),
    jar("failIfWorkDirIsMissing", Flag),
    jar("jnlpUrl", Value),
    sensitive(jar("credentials", Value)),
    sensitive(alias("jnlpCredentials", Value, "credentials")),
    sensitive(jar("proxyCredentials", Value)),
    jar("direct", Value),
    alias("directConnection", Value, "direct"),
    jar("instanceIdentity", Value),
    jar("protocols", Value),
    jar("tunnel", Value),
    jar("cert", Value),
    jar("noCertificateCheck", Flag),
    alias("disableHttpsCertValidation", Flag, "noCertificateCheck"),
    jar("noReconnect", Flag),
    alias("noreconnect", Flag, "noReconnect"),
    jar("noReconnectAfter", Value),
    jar("noKeepAlive", Flag),
    jar("jar-cache", Value),
    jar("help", Flag),
    jar("version", Flag),
    Spec {
        name: "headless",
        takes: Flag,
        kind: Kind::Ignored,
        sensitive: false,
    },
    Spec {
        name: "ping",
        takes: Flag,
        kind: Kind::Ignored,
        sensitive: false,
    },
    Spec {
        name: "auth",
        takes: Value,
        kind: Kind::Ignored,
        sensitive: true,
    },
    jar("webSocket", Flag),
    // Reverse proxies' auth tokens travel in these.
    sensitive(jar("webSocketHeader", Value)),
    jar("agentLog", Value),
    jar("loggingConfig", Value),
    unsupported("text", "-text", Flag, INBOUND_ONLY),
    unsupported("tcp", "-tcp", Value, INBOUND_ONLY),
    unsupported("connectTo", "-connectTo", Value, INBOUND_ONLY),
    ours("engine-jar", Value),
    ours("engine-command", Value),
    ours("log-format", Value),
    ours("reconnect-delay", Value),
    ours("control-socket", Value),
    ours("control-group", Value),
    ours("borrow-give-up", Value),
    ours("lease-grace", Value),
    ours("quiet-period", Value),
    ours("no-warm-engine", Flag),
    ours("no-class-sharing", Flag),
    ours("class-sharing-after", Value),
    ours("state-file", Value),
    ours("reconnect-max-delay", Value),
    ours("web-socket-idle-timeout", Value),
    ours("lender", Value),
    ours("lender-token-file", Value),
    ours("labels", Value),
    // The token would show in `ps` and shell histories.
    Spec {
        name: "lender-token",
        takes: Value,
        kind: Kind::Refused(|| CliError::LenderTokenOnCommandLine),
        sensitive: true,
    },
];

/// How long a borrower may be unreachable before the agent goes home.
const DEFAULT_BORROW_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(300);
/// How long the channel must be quiet (pings aside) before the agent is idle.
const DEFAULT_QUIET_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a jar's first engine records its classes for the sharing archive.
const DEFAULT_CLASS_SHARING_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a busy agent may stay after its lease expired.
const DEFAULT_LEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a WebSocket may carry no frame before it counts as dead: a
/// little over the controller's 30 s ping interval.
const DEFAULT_WEB_SOCKET_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);
/// First wait before reconnecting.
const DEFAULT_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait between attempts.
const DEFAULT_RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// One of our duration options, or its default.
fn duration_or(
    value: Option<String>,
    option: &'static str,
    default: std::time::Duration,
) -> Result<std::time::Duration, CliError> {
    value.map_or(Ok(default), |text| values::duration(option, &text))
}

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// The command line as clap should see it.
#[derive(Debug)]
struct Prepared {
    args: Vec<OsString>,
    /// Secret-bearing values, to scrub from clap's messages.
    sensitive: Vec<String>,
}

/// Rewrites agent.jar spellings to clap's, refuses unknown and unsupported
/// options, drops ignored ones.
fn prepass(tokens: impl IntoIterator<Item = OsString>) -> Result<Prepared, CliError> {
    let mut out = Prepared {
        args: Vec::new(),
        sensitive: Vec::new(),
    };
    let mut tokens = tokens.into_iter();
    // The option whose value the next token is, if any.
    let mut value_of: Option<&'static Spec> = None;
    while let Some(token) = tokens.next() {
        if let Some(spec) = value_of.take() {
            // A value is passed on untouched, even if it starts with '-'.
            if spec.sensitive {
                out.sensitive.extend(token.to_str().map(str::to_owned));
            }
            if !matches!(spec.kind, Kind::Ignored) {
                out.args.push(token);
            }
            continue;
        }
        let Some(text) = token.to_str() else {
            // Not UTF-8, so not one of our options: a positional; clap
            // reports it.
            out.args.push(token);
            continue;
        };
        if text == "--" {
            // Everything after is positional (the legacy SECRET NAME).
            out.args.push(token);
            for rest in tokens.by_ref() {
                out.sensitive.extend(rest.to_str().map(str::to_owned));
                out.args.push(rest);
            }
            break;
        }
        if !text.starts_with('-') || text == "-" || text == "-h" {
            if !text.starts_with('-') {
                // A legacy positional: the secret or the name.
                out.sensitive.push(text.to_owned());
            }
            out.args.push(token);
            continue;
        }
        let double = text.starts_with("--");
        let body = if double { &text[2..] } else { &text[1..] };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let known = spec(name).filter(|s| double || !matches!(s.kind, Kind::Ours));
        let Some(spec) = known else {
            return Err(CliError::UnknownOption {
                option: text.split('=').next().unwrap_or(text).to_owned(),
                suggestion: suggest(name),
            });
        };
        // clap quotes a flag's unexpected inline value back; scrub it too.
        if spec.sensitive || spec.takes == Takes::Flag {
            out.sensitive.extend(inline.map(str::to_owned));
        }
        let value_follows = spec.takes == Takes::Value && inline.is_none();
        match spec.kind {
            Kind::Unsupported { option, advice } => {
                return Err(CliError::Unsupported { option, advice });
            }
            Kind::Refused(error) => return Err(error()),
            Kind::Ignored => {}
            Kind::AgentJar { canonical } => {
                let mut rewritten = OsString::from("--");
                rewritten.push(canonical);
                if let Some(v) = inline {
                    rewritten.push("=");
                    rewritten.push(v);
                }
                out.args.push(rewritten);
            }
            Kind::Ours => out.args.push(token),
        }
        if value_follows {
            value_of = Some(spec);
        }
    }
    Ok(out)
}

/// The closest spelling to an unknown option, as the user should type it.
fn suggest(name: &str) -> Option<String> {
    let wanted = name.to_ascii_lowercase();
    SPECS
        .iter()
        .filter(|s| !matches!(s.kind, Kind::Unsupported { .. } | Kind::Refused(_)))
        .map(|s| {
            (
                strsim::levenshtein(&wanted, &s.name.to_ascii_lowercase()),
                s,
            )
        })
        .filter(|(distance, s)| *distance <= 2.max(s.name.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, s)| match s.kind {
            Kind::Ours => format!("--{}", s.name),
            _ => format!("-{}", s.name),
        })
}

/// Replaces every secret-bearing value in clap's message with `***`.
fn redact(message: &str, sensitive: &[String]) -> String {
    let mut message = message.to_owned();
    // Longest first, so a password inside a `user:password` goes with it.
    let mut values: Vec<&str> = sensitive
        .iter()
        .flat_map(|v| [v.as_str(), v.split_once(':').map_or("", |(_, p)| p)])
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        message = message.replace(value, "***");
    }
    message
}

/// clap writes `--url`; agent.jar users know `-url`. Keeps the column width.
fn agent_jar_spelling(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let rest = &line[indent..];
        let agent_jar = rest.strip_prefix("--").is_some_and(|after| {
            SPECS.iter().any(|s| {
                matches!(s.kind, Kind::AgentJar { canonical } if canonical == s.name)
                    && after
                        .strip_prefix(s.name)
                        .is_some_and(|t| t.is_empty() || t.starts_with([' ', '=', '<']))
            })
        });
        if agent_jar {
            out.push_str(&line[..indent]);
            out.push(' ');
            out.push_str(&rest[1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

// ---------------------------------------------------------------------------
// The clap definition: canonical names only (the pre-pass rewrote aliases).

const USAGE: &str = "jnlp-agent -url URL -secret SECRET -name NAME [OPTIONS]
       jnlp-agent -jnlpUrl URL [-secret SECRET | -jnlpCredentials USER:PASSWORD] [OPTIONS]
       jnlp-agent -direct HOST:PORT -instanceIdentity B64 --engine-jar PATH -secret SECRET -name NAME [OPTIONS]
       jnlp-agent -url URL [OPTIONS] SECRET NAME        (legacy)";

const AFTER_HELP: &str = "\
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

Ours: JNLP_AGENT_LENDER (--lender), JNLP_AGENT_LENDER_TOKEN_FILE (--lender-token-file),
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
struct Args {
    /// Jenkins root URL to connect to; repeat to try several in order.
    #[arg(long = "url", value_name = "URL", action = ArgAction::Append, allow_hyphen_values = true)]
    url: Vec<String>,

    /// Name of the agent (node).
    #[arg(long = "name", value_name = "NAME", allow_hyphen_values = true)]
    name: Option<String>,

    /// Agent connection secret, or @FILE to read it from a file.
    #[arg(
        long = "secret",
        value_name = "SECRET|@FILE",
        allow_hyphen_values = true
    )]
    secret: Option<String>,

    /// Working directory of the agent (stores the jar cache and logs).
    #[arg(long = "workDir", value_name = "DIR", allow_hyphen_values = true)]
    work_dir: Option<PathBuf>,

    /// Name of the internal directory within the work directory [default: remoting].
    #[arg(long = "internalDir", value_name = "NAME", allow_hyphen_values = true)]
    internal_dir: Option<String>,

    /// Fail if the work directory or internal directory is missing.
    #[arg(long = "failIfWorkDirIsMissing")]
    fail_if_work_dir_is_missing: bool,

    /// Fetch connection parameters from this JNLP file URL (deprecated in agent.jar).
    #[arg(long = "jnlpUrl", value_name = "URL", allow_hyphen_values = true)]
    jnlp_url: Option<String>,

    /// HTTP basic auth for the controller's web port (alias -jnlpCredentials).
    #[arg(
        long = "credentials",
        value_name = "USER:PASSWORD",
        allow_hyphen_values = true
    )]
    credentials: Option<String>,

    /// HTTP basic auth for the HTTP proxy.
    #[arg(
        long = "proxyCredentials",
        value_name = "USER:PASSWORD",
        allow_hyphen_values = true
    )]
    proxy_credentials: Option<String>,

    /// Connect straight to this TCP agent port, skipping the web port (alias -directConnection).
    #[arg(long = "direct", value_name = "HOST:PORT", allow_hyphen_values = true)]
    direct: Option<String>,

    /// The controller's base64 instance identity (public key), required with -direct.
    #[arg(
        long = "instanceIdentity",
        value_name = "B64",
        allow_hyphen_values = true
    )]
    instance_identity: Option<String>,

    /// Remoting protocols to try with -direct, comma-separated.
    #[arg(long = "protocols", value_name = "P1,P2", action = ArgAction::Append, allow_hyphen_values = true)]
    protocols: Vec<String>,

    /// Connect here instead of the advertised agent port; HOST: or :PORT keep the other half.
    #[arg(long = "tunnel", value_name = "HOST:PORT", allow_hyphen_values = true)]
    tunnel: Option<String>,

    /// Extra trusted PEM certificate for the web port, or @FILE; repeatable.
    #[arg(long = "cert", value_name = "PEM|@FILE", action = ArgAction::Append, allow_hyphen_values = true)]
    cert: Vec<String>,

    /// Accept any web-port certificate: a last resort (alias -disableHttpsCertValidation).
    #[arg(long = "noCertificateCheck")]
    no_certificate_check: bool,

    /// Exit instead of reconnecting when the connection fails (alias -noreconnect).
    #[arg(long = "noReconnect")]
    no_reconnect: bool,

    /// Give up reconnecting after this long (10m, 1h30m, PT10M; bare number = ms).
    #[arg(
        long = "noReconnectAfter",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    no_reconnect_after: Option<String>,

    /// Disable TCP keep-alive on the connection to the controller.
    #[arg(long = "noKeepAlive")]
    no_keep_alive: bool,

    /// Run the channel over a WebSocket on the controller's web port instead of the TCP agent port.
    #[arg(long = "webSocket")]
    web_socket: bool,

    /// Extra header on the WebSocket upgrade request, NAME=VALUE; repeatable.
    #[arg(long = "webSocketHeader", value_name = "NAME=VALUE", action = ArgAction::Append, allow_hyphen_values = true)]
    web_socket_header: Vec<String>,

    /// Write the log (and the engine's stderr) to FILE, appended, instead of stderr.
    #[arg(long = "agentLog", value_name = "FILE", allow_hyphen_values = true)]
    agent_log: Option<PathBuf>,

    /// java.util.logging properties for the engine JVM (-Djava.util.logging.config.file).
    #[arg(
        long = "loggingConfig",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    logging_config: Option<PathBuf>,

    /// Cache directory for jar files sent by the controller.
    #[arg(long = "jar-cache", value_name = "DIR", allow_hyphen_values = true)]
    jar_cache: Option<PathBuf>,

    /// Use this local remoting.jar as the engine instead of the controller's.
    #[arg(long = "engine-jar", value_name = "PATH", allow_hyphen_values = true)]
    engine_jar: Option<PathBuf>,

    /// Run this command (split on whitespace) instead of the java command line.
    #[arg(
        long = "engine-command",
        value_name = "CMD",
        allow_hyphen_values = true
    )]
    engine_command: Option<String>,

    /// Control socket path [default: WORKDIR/INTERNALDIR/control.sock].
    #[arg(
        long = "control-socket",
        value_name = "PATH",
        allow_hyphen_values = true
    )]
    control_socket: Option<PathBuf>,

    /// Open the control socket to this group (mode 0660) instead of only its owner.
    #[arg(
        long = "control-group",
        value_name = "GROUP",
        allow_hyphen_values = true
    )]
    control_group: Option<String>,

    /// Return home when a borrower was unreachable or refusing this long [default: 5m].
    #[arg(
        long = "borrow-give-up",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    borrow_give_up: Option<String>,

    /// After a lease expired, how long a busy agent may finish before it goes home anyway [default: 10m].
    #[arg(
        long = "lease-grace",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    lease_grace: Option<String>,

    /// How long the channel must carry nothing but pings before the agent counts as idle and may move [default: 5s].
    #[arg(
        long = "quiet-period",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    quiet_period: Option<String>,

    /// Keep no engine started ahead of a move (the pending borrower's, or home's while borrowed); saves a JVM's memory, costs a JVM start per move.
    #[arg(long = "no-warm-engine")]
    no_warm_engine: bool,

    /// Start engine JVMs without a class-data sharing archive (by default one is made per engine jar and JVM, in the work dir, and used when the JVM can).
    #[arg(long = "no-class-sharing")]
    no_class_sharing: bool,

    /// How long the first engine of a jar records the classes it loads before the sharing archive is made from them [default: 60s].
    #[arg(
        long = "class-sharing-after",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    class_sharing_after: Option<String>,

    /// Where the current target (home or borrowed) survives restarts [default: WORKDIR/INTERNALDIR/state.json].
    #[arg(long = "state-file", value_name = "PATH", allow_hyphen_values = true)]
    state_file: Option<PathBuf>,

    /// First wait before reconnecting (doubles up to --reconnect-max-delay) [default: 1s].
    #[arg(
        long = "reconnect-delay",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    reconnect_delay: Option<String>,

    /// Longest wait between reconnection attempts [default: 30s].
    #[arg(
        long = "reconnect-max-delay",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    reconnect_max_delay: Option<String>,

    /// Reconnect a WebSocket that carried no frame for this long [default: 40s].
    #[arg(
        long = "web-socket-idle-timeout",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    web_socket_idle_timeout: Option<String>,

    /// Keep a link to this lending pool (jnlp-lender), http(s)://HOST[:PORT][/PATH].
    #[arg(long = "lender", value_name = "URL", allow_hyphen_values = true)]
    lender: Option<String>,

    /// The agent's token for --lender, read from FILE (never given on the command line).
    #[arg(
        long = "lender-token-file",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    lender_token_file: Option<PathBuf>,

    /// Labels announced to --lender, separated by spaces or commas; repeatable. os, arch and the Linux distribution are added.
    #[arg(long = "labels", value_name = "LABELS", action = ArgAction::Append, allow_hyphen_values = true)]
    labels: Vec<String>,

    /// Log output format: text or json [default: text].
    // Checked by us, not clap's value_enum: clap would quote the value.
    #[arg(long = "log-format", value_name = "FORMAT", allow_hyphen_values = true)]
    log_format: Option<String>,

    /// Show this help (also -help).
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,

    /// Show the version.
    #[arg(long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    /// Legacy form: SECRET NAME.
    #[arg(value_name = "SECRET NAME", hide = true)]
    legacy: Vec<String>,
}

// ---------------------------------------------------------------------------
// Merging options with the environment, and validation.

/// The image's environment variables, trimmed (the script word-splits them),
/// empty meaning unset.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn sourced(&self, name: &'static str) -> Option<Sourced<String>> {
        self.get(name).map(|value| Sourced { value, from: name })
    }
}

/// A value and the option or variable it came from, for error messages.
#[derive(Debug)]
struct Sourced<T> {
    value: T,
    from: &'static str,
}

fn opt<T>(value: Option<T>, from: &'static str) -> Option<Sourced<T>> {
    value.map(|value| Sourced { value, from })
}

fn from<T>(s: &Option<Sourced<T>>) -> Option<&'static str> {
    s.as_ref().map(|s| s.from)
}

/// agent.jar's `forbids`: `option` excludes each of `others`.
fn forbid(option: Option<&'static str>, others: &[Option<&'static str>]) -> Result<(), CliError> {
    match (option, others.iter().flatten().next()) {
        (Some(option), Some(&other)) => Err(CliError::Conflict { option, other }),
        _ => Ok(()),
    }
}

/// agent.jar's `depends`: `option` needs `present`.
fn require(
    option: Option<&'static str>,
    present: bool,
    requires: &'static str,
) -> Result<(), CliError> {
    match option {
        Some(option) if !present => Err(CliError::Requires { option, requires }),
        _ => Ok(()),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// The JVM option `-loggingConfig` becomes (agent.jar sets this property).
const JUL_CONFIG_FILE: &str = "-Djava.util.logging.config.file=";

const POSITIONAL_SECRET: &str = "SECRET (positional)";
const POSITIONAL_NAME: &str = "NAME (positional)";
const WORK_DIR: &str = "-workDir (or JENKINS_AGENT_WORKDIR)";
const DIRECT: &str = "-direct (or JENKINS_DIRECT_CONNECTION)";

fn settings(args: Args, env: &Env<'_>) -> Result<Settings, CliError> {
    // The legacy positional form: exactly SECRET NAME.
    let (positional_secret, positional_name) = match <[String; 2]>::try_from(args.legacy) {
        Ok([secret, name]) => (Some(secret), Some(name)),
        Err(v) if v.is_empty() => (None, None),
        Err(v) => return Err(CliError::PositionalCount { count: v.len() }),
    };
    let option_secret = non_empty(args.secret);
    let option_name = non_empty(args.name);
    if option_secret.is_some() && positional_secret.is_some() {
        return Err(CliError::PositionalAndOption {
            what: "secret",
            option: "-secret",
        });
    }
    if option_name.is_some() && positional_name.is_some() {
        return Err(CliError::PositionalAndOption {
            what: "name",
            option: "-name",
        });
    }

    // Options first, then the image's variables.
    let secret = opt(option_secret, "-secret")
        .or(opt(positional_secret, POSITIONAL_SECRET))
        .or(env.sourced("JENKINS_SECRET"));
    let name = opt(option_name, "-name")
        .or(opt(positional_name, POSITIONAL_NAME))
        .or(env.sourced("JENKINS_AGENT_NAME"))
        .or(env.sourced("JENKINS_NAME"));
    let urls = opt((!args.url.is_empty()).then_some(args.url), "-url").or(env
        .sourced("JENKINS_URL")
        .map(|s| Sourced {
            value: vec![s.value],
            from: s.from,
        }));
    let work_dir =
        opt(args.work_dir, "-workDir").or(env.sourced("JENKINS_AGENT_WORKDIR").map(|s| Sourced {
            value: PathBuf::from(s.value),
            from: s.from,
        }));
    let direct = opt(args.direct, "-direct").or(env.sourced("JENKINS_DIRECT_CONNECTION"));
    let identity = opt(args.instance_identity, "-instanceIdentity")
        .or(env.sourced("JENKINS_INSTANCE_IDENTITY"));
    let protocols = opt(
        (!args.protocols.is_empty()).then_some(args.protocols),
        "-protocols",
    )
    .or(env.sourced("JENKINS_PROTOCOLS").map(|s| Sourced {
        value: vec![s.value],
        from: s.from,
    }));
    let tunnel = opt(args.tunnel, "-tunnel").or(env.sourced("JENKINS_TUNNEL"));
    let jnlp_url = opt(args.jnlp_url, "-jnlpUrl");
    let credentials = opt(args.credentials, "-credentials");
    // The image's script adds -webSocket for exactly "true".
    let web_socket = if args.web_socket {
        Some("-webSocket")
    } else {
        (env.get("JENKINS_WEB_SOCKET").as_deref() == Some("true"))
            .then_some("JENKINS_WEB_SOCKET=true")
    };

    // Which options go together, as agent.jar's `forbids` and `depends` say.
    forbid(
        from(&direct),
        &[from(&urls), from(&jnlp_url), from(&tunnel)],
    )?;
    forbid(from(&jnlp_url), &[from(&urls), from(&name), from(&tunnel)])?;
    forbid(
        web_socket,
        &[
            from(&direct),
            from(&tunnel),
            from(&credentials),
            args.no_keep_alive.then_some("-noKeepAlive"),
        ],
    )?;
    if let (Some(option), Some(urls)) = (web_socket, &urls) {
        if urls.value.len() > 1 {
            return Err(CliError::WebSocketOneUrl { option });
        }
    }
    require(
        (!args.web_socket_header.is_empty()).then_some("-webSocketHeader"),
        web_socket.is_some(),
        "-webSocket (or JENKINS_WEB_SOCKET=true)",
    )?;
    if !args.cert.is_empty() && args.no_certificate_check {
        forbid(Some("-cert"), &[Some("-noCertificateCheck")])?;
    }
    if args.no_reconnect_after.is_some() && args.no_reconnect {
        forbid(Some("-noReconnectAfter"), &[Some("-noReconnect")])?;
    }
    if let Some(direct) = &direct {
        if identity.is_none() {
            return Err(CliError::MissingInstanceIdentity {
                direct: direct.from,
            });
        }
        if args.engine_jar.is_none() && args.engine_command.is_none() {
            return Err(CliError::DirectNeedsEngineJar {
                direct: direct.from,
            });
        }
    }
    require(from(&identity), direct.is_some(), DIRECT)?;
    require(from(&protocols), direct.is_some(), DIRECT)?;
    let has_work_dir = work_dir.is_some();
    require(
        args.internal_dir.is_some().then_some("-internalDir"),
        has_work_dir,
        WORK_DIR,
    )?;
    require(
        args.fail_if_work_dir_is_missing
            .then_some("-failIfWorkDirIsMissing"),
        has_work_dir,
        WORK_DIR,
    )?;
    if let (Some(_), Some(secret), Some(_)) = (&jnlp_url, &secret, &credentials) {
        return Err(CliError::JnlpCredentialsWithSecret {
            secret: secret.from,
        });
    }

    // Required, unless the JNLP file provides them.
    if jnlp_url.is_none() {
        if urls.is_none() && direct.is_none() {
            return Err(CliError::MissingController);
        }
        if secret.is_none() {
            return Err(CliError::MissingSecret);
        }
        if name.is_none() {
            return Err(CliError::MissingName);
        }
    }

    // The values themselves.
    let urls = match urls {
        Some(s) => s
            .value
            .iter()
            .map(|u| values::controller_url(s.from, u))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    if let Some(j) = &jnlp_url {
        values::check_http_url(j.from, &j.value)?;
    }
    let mut exposed_secret_files = Vec::new();
    let secret = secret
        .map(|s| {
            values::secret(
                s.from,
                &s.value,
                s.from == "-secret",
                &mut exposed_secret_files,
            )
        })
        .transpose()?;
    let credentials = credentials
        .map(|c| values::credentials(c.from, &c.value))
        .transpose()?;
    let proxy_credentials = args
        .proxy_credentials
        .map(|c| values::credentials("-proxyCredentials", &c))
        .transpose()?;
    let direct = direct
        .map(|d| values::host_port(d.from, &d.value))
        .transpose()?;
    let instance_identity = identity
        .map(|i| values::instance_identity(i.from, &i.value))
        .transpose()?;
    let tunnel = tunnel
        .map(|t| values::tunnel(t.from, &t.value))
        .transpose()?;
    let certs = args
        .cert
        .iter()
        .map(|c| values::cert("-cert", c))
        .collect::<Result<Vec<_>, _>>()?;
    let no_reconnect_after = args
        .no_reconnect_after
        .map(|d| values::duration("-noReconnectAfter", &d))
        .transpose()?;
    let web_socket_headers = args
        .web_socket_header
        .iter()
        .map(|h| values::header("-webSocketHeader", h))
        .collect::<Result<Vec<_>, _>>()?;
    let web_socket_idle_timeout = duration_or(
        args.web_socket_idle_timeout,
        "--web-socket-idle-timeout",
        DEFAULT_WEB_SOCKET_IDLE_TIMEOUT,
    )?;
    let borrow_give_up = duration_or(
        args.borrow_give_up,
        "--borrow-give-up",
        DEFAULT_BORROW_GIVE_UP,
    )?;
    let lease_grace = duration_or(args.lease_grace, "--lease-grace", DEFAULT_LEASE_GRACE)?;
    let quiet_period = duration_or(args.quiet_period, "--quiet-period", DEFAULT_QUIET_PERIOD)?;
    let class_sharing_after = duration_or(
        args.class_sharing_after,
        "--class-sharing-after",
        DEFAULT_CLASS_SHARING_AFTER,
    )?;
    let reconnect_delay = duration_or(
        args.reconnect_delay,
        "--reconnect-delay",
        DEFAULT_RECONNECT_DELAY,
    )?;
    let reconnect_max_delay = duration_or(
        args.reconnect_max_delay,
        "--reconnect-max-delay",
        DEFAULT_RECONNECT_MAX_DELAY,
    )?
    .max(reconnect_delay);
    let engine_command = match args.engine_command {
        Some(cmd) => {
            let argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(CliError::EmptyEngineCommand);
            }
            Some(argv)
        }
        None => None,
    };
    let lender = lender(
        opt(args.lender, "--lender").or(env.sourced("JNLP_AGENT_LENDER")),
        opt(args.lender_token_file, "--lender-token-file").or(env
            .sourced("JNLP_AGENT_LENDER_TOKEN_FILE")
            .map(|s| Sourced {
                value: PathBuf::from(s.value),
                from: s.from,
            })),
        opt((!args.labels.is_empty()).then_some(args.labels), "--labels").or(env
            .sourced("JNLP_AGENT_LABELS")
            .map(|s| Sourced {
                value: vec![s.value],
                from: s.from,
            })),
        name.as_ref().map(|n| n.value.as_str()),
        jnlp_url.as_ref().map(|j| j.value.as_str()),
        &mut exposed_secret_files,
    )?;
    let log_format = match args.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(_) => return Err(CliError::BadLogFormat),
    };
    // The user's options replace our defaults whole.
    let user_java_opts = env
        .get("JENKINS_JAVA_OPTS")
        .or_else(|| env.get("JAVA_OPTS"));
    let sized_window = user_java_opts.is_none();
    let mut java_opts: Vec<String> = match user_java_opts {
        Some(opts) => opts.split_whitespace().map(str::to_owned).collect(),
        None => crate::engine::DEFAULT_JAVA_OPTS
            .iter()
            .map(|&opt| opt.to_owned())
            .collect(),
    };
    if let Some(config) = args.logging_config {
        let config = values::logging_config(&config)?;
        // The user's own property wins: they set it on purpose, and the JVM
        // would take whichever comes last.
        if !java_opts.iter().any(|o| o.starts_with(JUL_CONFIG_FILE)) {
            java_opts.push(format!("{JUL_CONFIG_FILE}{}", config.display()));
        }
    }

    Ok(Settings {
        urls,
        // agent.jar has one credentials option: with -jnlpUrl it authorises
        // the JNLP fetch and then the web port.
        jnlp_credentials: jnlp_url.as_ref().and(credentials.clone()),
        jnlp_url: jnlp_url.map(|j| j.value),
        name: name.map(|n| n.value),
        secret,
        work_dir: work_dir.map(|w| w.value),
        internal_dir: args.internal_dir.unwrap_or_else(|| "remoting".to_owned()),
        fail_if_work_dir_is_missing: args.fail_if_work_dir_is_missing,
        direct,
        instance_identity,
        protocols: protocols
            .map(|p| values::protocols(p.value.iter().map(String::as_str)))
            .unwrap_or_default(),
        tunnel,
        credentials,
        proxy_credentials,
        certs,
        no_certificate_check: args.no_certificate_check,
        no_reconnect: args.no_reconnect,
        no_reconnect_after,
        no_keep_alive: args.no_keep_alive,
        transport: if web_socket.is_some() {
            TransportChoice::WebSocket
        } else {
            TransportChoice::Tcp
        },
        web_socket_headers,
        web_socket_idle_timeout,
        jar_cache: args.jar_cache,
        java: JavaSettings {
            java_bin: env.get("JENKINS_JAVA_BIN").map(PathBuf::from),
            java_home: env.get("JAVA_HOME").map(PathBuf::from),
            java_opts,
            sized_window,
        },
        engine_jar: args.engine_jar,
        engine_command,
        reconnect_delay,
        reconnect_max_delay,
        control_socket: args.control_socket,
        control_group: args.control_group,
        borrow_give_up,
        lease_grace,
        quiet_period,
        warm_engine: !args.no_warm_engine,
        class_sharing: !args.no_class_sharing,
        class_sharing_after,
        state_file: args.state_file,
        log_format,
        agent_log: args.agent_log,
        lender,
        exposed_secret_files,
    })
}

/// `--lender` with its token file and labels (each option or its
/// variable), for the node `name` (or the one a `-jnlpUrl` names).
fn lender(
    url: Option<Sourced<String>>,
    token_file: Option<Sourced<PathBuf>>,
    labels: Option<Sourced<Vec<String>>>,
    name: Option<&str>,
    jnlp_url: Option<&str>,
    exposed: &mut Vec<control::secret_file::ReadableByOthers>,
) -> Result<Option<LenderSettings>, CliError> {
    const LENDER: &str = "--lender (or JNLP_AGENT_LENDER)";
    let Some(url) = url else {
        require(from(&token_file), false, LENDER)?;
        require(from(&labels), false, LENDER)?;
        return Ok(None);
    };
    let Some(token_file) = token_file else {
        return Err(CliError::MissingLenderToken { lender: url.from });
    };
    let node = name
        .map(str::to_owned)
        .or_else(|| jnlp_url.and_then(values::node_from_jnlp_url))
        .ok_or(CliError::LenderNeedsName { lender: url.from })?;
    Ok(Some(LenderSettings {
        url: values::lender_url(url.from, &url.value)?,
        token: values::token_file(token_file.from, &token_file.value, exposed)?,
        node,
        labels: match labels {
            Some(labels) => values::labels(labels.from, &labels.value)?,
            None => Vec::new(),
        },
    }))
}
