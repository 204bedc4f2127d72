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
//! | `--class-sharing-after DURATION` | how long the first engine of a jar records its classes, at the latest, before the archive is made (default 60s; it is made a moment after that engine answered its controller's first calls). |
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
//! - this file: [`parse`];
//! - `args`: the clap definition, the one declaration of every option: its
//!   spelling, its variable, its type, its parser and its default;
//! - `spelling`: agent.jar's spellings derived from it (the pre-pass, the
//!   hint for an unknown option, help in agent.jar's spelling);
//! - `environment`: the image's variables through their options' parsers;
//! - `typed`: `values`' functions as clap value parsers whose refusal is a
//!   [`CliError`];
//! - `merge`: which options go together (agent.jar's forbids and depends),
//!   what is required, the lender's and the JVM's settings;
//! - `error`: [`CliError`];
//! - `values`: parsers for single values (URLs, `HOST:PORT`, durations,
//!   `@FILE`...);
//! - `tests`: unit tests.

mod args;
mod environment;
mod error;
mod merge;
mod spelling;
mod typed;
mod values;

#[cfg(test)]
mod tests;

use std::ffi::OsString;

use clap::error::ErrorKind;

pub use error::CliError;

use environment::Env;
use merge::settings;
use spelling::{agent_jar_spelling, prepass, redact};

use crate::settings::Settings;

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

    let argv = std::iter::once(argv0).chain(prepared.args).collect();
    let parsed = match environment::parse(argv, &env) {
        Ok(parsed) => parsed,
        Err(err) => {
            if let Some(refusal) = typed::take_refusal(&err) {
                return Err(refusal);
            }
            let text = err.render().to_string();
            return match err.kind() {
                ErrorKind::DisplayHelp => Ok(Command::Help(agent_jar_spelling(text.trim_end()))),
                ErrorKind::DisplayVersion => Ok(Command::Version(text.trim_end().to_owned())),
                _ => {
                    // The variables are options' values too.
                    let mut sensitive = prepared.sensitive;
                    sensitive.extend(env.get("JENKINS_SECRET"));
                    Err(CliError::Usage(redact(
                        text.trim_start_matches("error: ").trim_end(),
                        &sensitive,
                    )))
                }
            };
        }
    };
    settings(parsed, &env).map(Command::Run)
}
