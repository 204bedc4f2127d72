//! Merging the parsed options with the image's environment, checking which
//! go together (agent.jar's `forbids` and `depends`), and parsing each
//! value: the [`Settings`] the rest of the agent reads.

use std::path::PathBuf;

use std::collections::HashMap;

use super::args::Args;
use super::environment::{Env, Parsed};
use super::values::{self, SecretArg};
use super::CliError;
use crate::settings::{
    Credentials, HostPort, JavaSettings, LenderSettings, Settings, TransportChoice, Tunnel,
};

impl Env<'_> {
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

/// Where option `id` came from: the variable `environment` took it from,
/// else `option`.
fn origin(
    from_env: &HashMap<&'static str, &'static str>,
    id: &str,
    option: &'static str,
) -> &'static str {
    from_env.get(id).copied().unwrap_or(option)
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

/// The options (or their variables) that decide where the agent connects,
/// each with where it came from, for the combination rules and messages.
struct Sources {
    secret: Option<Sourced<SecretArg>>,
    name: Option<Sourced<String>>,
    urls: Option<Sourced<Vec<String>>>,
    work_dir: Option<Sourced<PathBuf>>,
    direct: Option<Sourced<HostPort>>,
    identity: Option<Sourced<String>>,
    protocols: Option<Sourced<Vec<String>>>,
    tunnel: Option<Sourced<Tunnel>>,
    jnlp_url: Option<Sourced<String>>,
    credentials: Option<Sourced<Credentials>>,
    /// `-webSocket` or `JENKINS_WEB_SOCKET=true`.
    web_socket: Option<&'static str>,
}

impl Sources {
    /// Takes them out of `parsed`: an option or its variable (see
    /// `environment`), else the legacy positional form, exactly SECRET NAME.
    fn gather(parsed: &mut Parsed) -> Result<Sources, CliError> {
        let args = &mut parsed.args;
        let origin = |id: &str, option| parsed.from_env.get(id).copied().unwrap_or(option);
        let (positional_secret, positional_name) =
            match <[String; 2]>::try_from(std::mem::take(&mut args.legacy)) {
                Ok([secret, name]) => (Some(secret), Some(name)),
                Err(v) if v.is_empty() => (None, None),
                Err(v) => return Err(CliError::PositionalCount { count: v.len() }),
            };
        // With the positional form no variable applies, so these are options.
        let option_secret = args.secret.take().filter(|s| !s.secret.expose().is_empty());
        let option_name = non_empty(args.name.take());
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
        let listed =
            |values: Vec<String>, option| opt((!values.is_empty()).then_some(values), option);
        Ok(Sources {
            secret: opt(option_secret, origin("secret", "-secret")).or(opt(
                positional_secret.map(SecretArg::literal),
                POSITIONAL_SECRET,
            )),
            name: opt(option_name, origin("name", "-name"))
                .or(opt(positional_name, POSITIONAL_NAME)),
            urls: listed(std::mem::take(&mut args.url), origin("url", "-url")),
            work_dir: opt(args.work_dir.take(), origin("work_dir", "-workDir")),
            direct: opt(args.direct.take(), origin("direct", "-direct")),
            identity: opt(
                args.instance_identity.take(),
                origin("instance_identity", "-instanceIdentity"),
            ),
            protocols: listed(
                std::mem::take(&mut args.protocols),
                origin("protocols", "-protocols"),
            ),
            tunnel: opt(args.tunnel.take(), origin("tunnel", "-tunnel")),
            jnlp_url: opt(args.jnlp_url.take(), "-jnlpUrl"),
            credentials: opt(args.credentials.take(), "-credentials"),
            // The image's script adds -webSocket for exactly "true".
            web_socket: args
                .web_socket
                .then_some(if parsed.from_env.contains_key("web_socket") {
                    "JENKINS_WEB_SOCKET=true"
                } else {
                    "-webSocket"
                }),
        })
    }

    /// Which options go together, as agent.jar's `forbids` and `depends`
    /// say, and what is required unless a JNLP file provides it.
    fn check(&self, args: &Args) -> Result<(), CliError> {
        let web_socket = self.web_socket;
        forbid(
            from(&self.direct),
            &[from(&self.urls), from(&self.jnlp_url), from(&self.tunnel)],
        )?;
        forbid(
            from(&self.jnlp_url),
            &[from(&self.urls), from(&self.name), from(&self.tunnel)],
        )?;
        forbid(
            web_socket,
            &[
                from(&self.direct),
                from(&self.tunnel),
                from(&self.credentials),
                args.no_keep_alive.then_some("-noKeepAlive"),
            ],
        )?;
        if let (Some(option), Some(urls)) = (web_socket, &self.urls) {
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
        if let Some(direct) = &self.direct {
            if self.identity.is_none() {
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
        require(from(&self.identity), self.direct.is_some(), DIRECT)?;
        require(from(&self.protocols), self.direct.is_some(), DIRECT)?;
        require(
            args.internal_dir.is_some().then_some("-internalDir"),
            self.work_dir.is_some(),
            WORK_DIR,
        )?;
        require(
            args.fail_if_work_dir_is_missing
                .then_some("-failIfWorkDirIsMissing"),
            self.work_dir.is_some(),
            WORK_DIR,
        )?;
        if let (Some(_), Some(secret), Some(_)) = (&self.jnlp_url, &self.secret, &self.credentials)
        {
            return Err(CliError::JnlpCredentialsWithSecret {
                secret: secret.from,
            });
        }
        // Required, unless the JNLP file provides them.
        if self.jnlp_url.is_none() {
            if self.urls.is_none() && self.direct.is_none() {
                return Err(CliError::MissingController);
            }
            if self.secret.is_none() {
                return Err(CliError::MissingSecret);
            }
            if self.name.is_none() {
                return Err(CliError::MissingName);
            }
        }
        Ok(())
    }
}

pub(super) fn settings(mut parsed: Parsed, env: &Env<'_>) -> Result<Settings, CliError> {
    let sources = Sources::gather(&mut parsed)?;
    let Parsed { args, from_env, .. } = parsed;
    sources.check(&args)?;
    let Sources {
        secret,
        name,
        urls,
        work_dir,
        direct,
        identity,
        protocols,
        tunnel,
        jnlp_url,
        credentials,
        web_socket,
    } = sources;

    // The values themselves.
    let mut exposed_secret_files = Vec::new();
    let secret = secret.map(|s| {
        exposed_secret_files.extend(s.value.exposed);
        s.value.secret
    });
    let credentials = credentials.map(|c| c.value);
    let lender = lender(
        opt((!args.lender.is_empty()).then_some(args.lender), "--lender").or(env
            .sourced("JNLP_AGENT_LENDER")
            .map(|s| Sourced {
                value: vec![s.value],
                from: s.from,
            })),
        opt(
            args.lender_token_file,
            origin(&from_env, "lender_token_file", "--lender-token-file"),
        ),
        opt(
            (!args.labels.is_empty()).then_some(args.labels),
            origin(&from_env, "labels", "--labels"),
        ),
        name.as_ref().map(|n| n.value.as_str()),
        jnlp_url.as_ref().map(|j| j.value.as_str()),
        &mut exposed_secret_files,
    )?;
    let java = java(env, args.logging_config);

    Ok(Settings {
        urls: urls.map(|u| u.value).unwrap_or_default(),
        // agent.jar has one credentials option: with -jnlpUrl it authorises
        // the JNLP fetch and then the web port.
        jnlp_credentials: jnlp_url.as_ref().and(credentials.clone()),
        jnlp_url: jnlp_url.map(|j| j.value),
        name: name.map(|n| n.value),
        secret,
        work_dir: work_dir.map(|w| w.value),
        internal_dir: args.internal_dir.unwrap_or_else(|| "remoting".to_owned()),
        fail_if_work_dir_is_missing: args.fail_if_work_dir_is_missing,
        direct: direct.map(|d| d.value),
        instance_identity: identity.map(|i| i.value),
        protocols: protocols
            .map(|p| values::protocols(p.value.iter().map(String::as_str)))
            .unwrap_or_default(),
        tunnel: tunnel.map(|t| t.value),
        credentials,
        proxy_credentials: args.proxy_credentials,
        certs: args.cert,
        no_certificate_check: args.no_certificate_check,
        no_reconnect: args.no_reconnect,
        no_reconnect_after: args.no_reconnect_after,
        no_keep_alive: args.no_keep_alive,
        transport: if web_socket.is_some() {
            TransportChoice::WebSocket
        } else {
            TransportChoice::Tcp
        },
        web_socket_headers: args.web_socket_header,
        web_socket_idle_timeout: args.web_socket_idle_timeout,
        jar_cache: args.jar_cache,
        java,
        engine_jar: args.engine_jar,
        engine_command: args.engine_command.map(|argv| argv.0),
        reconnect_delay: args.reconnect_delay,
        reconnect_max_delay: args.reconnect_max_delay.max(args.reconnect_delay),
        control_socket: args.control_socket,
        control_group: args.control_group,
        borrow_give_up: args.borrow_give_up,
        lease_grace: args.lease_grace,
        quiet_period: args.quiet_period,
        warm_engine: !args.no_warm_engine,
        class_sharing: !args.no_class_sharing,
        class_sharing_after: args.class_sharing_after,
        state_file: args.state_file,
        log_format: args.log_format.unwrap_or_default(),
        agent_log: args.agent_log,
        lender,
        exposed_secret_files,
    })
}

/// How to start the engine JVM: the image's variables, and `-loggingConfig`.
/// `logging_config` was checked (and made absolute) by its value parser.
fn java(env: &Env<'_>, logging_config: Option<PathBuf>) -> JavaSettings {
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
    if let Some(config) = logging_config {
        // The user's own property wins: they set it on purpose, and the JVM
        // would take whichever comes last.
        if !java_opts.iter().any(|o| o.starts_with(JUL_CONFIG_FILE)) {
            java_opts.push(format!("{JUL_CONFIG_FILE}{}", config.display()));
        }
    }
    JavaSettings {
        java_bin: env.get("JENKINS_JAVA_BIN").map(PathBuf::from),
        java_home: env.get("JAVA_HOME").map(PathBuf::from),
        java_opts,
        sized_window,
    }
}

/// `--lender` with its token file and labels (each option or its
/// variable), for the node `name` (or the one a `-jnlpUrl` names).
fn lender(
    url: Option<Sourced<Vec<String>>>,
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
        urls: values::lender_urls(url.from, &url.value)?,
        token: values::token_file(token_file.from, &token_file.value, exposed)?,
        node,
        labels: match labels {
            Some(labels) => values::labels(labels.from, &labels.value)?,
            None => Vec::new(),
        },
    }))
}
