//! `jnlp-agent`: a drop-in for `java -jar agent.jar`.
//!
//! # Layout
//!
//! - [`cli`]: agent.jar's options and the container images' environment → [`settings::Settings`].
//! - [`connect`]: how a controller is reached: its web port, proxies, TCP
//!   dialing, and the two transports (JNLP4 over TCP, WebSocket).
//! - [`engine`]: the controller's remoting.jar run as a child on stdio, the
//!   bridge that copies chunks between it and the connection, and whether
//!   it is busy.
//! - [`lending`]: where the agent serves (home or a borrower), the control
//!   socket, its client (`jnlp-agent ctl`), the link to a lending pool
//!   (`--lender`) and the state they share.
//! - [`session`]: one connection from discovery to close.
//! - [`departure`]: how and when a session is asked to leave.
//! - [`supervisor`]: reconnects with backoff, moves between controllers, handles signals.
//! - [`workdir`]: the work directory and logs.

mod cli;
mod connect;
mod departure;
mod engine;
mod lending;
mod session;
mod settings;
mod supervisor;
mod workdir;

use std::process::ExitCode;

use anyhow::Context as _;

use crate::session::Agent;

use crate::lending::backoff::Backoff;
use crate::supervisor::Stopped;
use crate::workdir::WorkDir;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "ctl") {
        return lending::ctl::main(args.split_off(2));
    }
    let command = match cli::parse(args, &|name| std::env::var(name).ok()) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let settings = match command {
        cli::Command::Help(text) | cli::Command::Version(text) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        cli::Command::Run(settings) => settings,
    };
    // One thread: the bridge's two directions, the supervisor and the
    // control socket all wait on I/O. A second worker only added wake-ups
    // between threads on every chunk (the windowed benchmark: agent CPU
    // 1.2-2.6 -> 0.9-1.2 s per GiB, README "Performance").
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once logging is up, `run` has logged it already; on stderr
            // unless the log goes to an -agentLog file.
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            if !workdir::LOGGING.load(relaxed) || !workdir::LOG_ON_STDERR.load(relaxed) {
                eprintln!("error: {}", describe(&err));
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: settings::Settings) -> anyhow::Result<()> {
    let work = WorkDir::prepare(&settings)?;
    let _log_guard = workdir::init_logging(
        settings.log_format,
        work.logs.as_deref(),
        settings.agent_log.as_deref(),
    )?;
    let result = serve(settings, work).await;
    if let Err(err) = &result {
        tracing::error!("{}", describe(err));
    }
    result
}

async fn serve(settings: settings::Settings, work: WorkDir) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = settings.name.as_deref().unwrap_or("(from JNLP file)"),
        work_dir = ?work.root,
        "jnlp-agent starting"
    );
    for exposed in &settings.exposed_secret_files {
        tracing::warn!(path = %exposed.path.display(), "{exposed}");
    }
    // Detached build processes stay our descendants: busy detection sees
    // them and a move ends them.
    // Tests disable the subreaper to check that the session marker alone
    // finds processes that left the tree (as on macOS, or in a container).
    let subreaper = if std::env::var_os("JNLP_AGENT_TEST_NO_SUBREAPER").is_some() {
        tracing::warn!("JNLP_AGENT_TEST_NO_SUBREAPER is set: not a child subreaper");
        Ok(())
    } else {
        engine::builds::become_subreaper()
    };
    match subreaper {
        Ok(()) => {}
        // No such thing there: the session marker alone finds detached builds.
        Err(nix::Error::ENOTSUP) if cfg!(not(target_os = "linux")) => {}
        Err(err) => tracing::warn!(
            %err,
            "cannot become a child subreaper; detached build processes are found by their session marker only"
        ),
    }
    let shutdown = supervisor::shutdown_on_signals().context("cannot install signal handlers")?;
    let mut backoff = Backoff::new(settings.reconnect_delay, settings.reconnect_max_delay);
    let mut agent = Agent::new(work, &settings);
    let home_url = settings
        .urls
        .first()
        .cloned()
        .or_else(|| settings.jnlp_url.clone());
    let hub = lending::hub::Hub::new(agent.traffic.clone(), home_url, settings.quiet_period);

    let link_config = lending::link::LinkConfig::from_settings(&settings)?;
    let socket = settings
        .control_socket
        .clone()
        .unwrap_or_else(|| agent.work.control_socket.clone());
    let server =
        lending::control_server::ControlServer::bind(&socket, settings.control_group.as_deref())
            .with_context(|| format!("cannot open the control socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "control socket ready");
    agent.control_socket = Some(socket);
    let server_task = tokio::spawn(server.serve(hub.clone(), shutdown.clone()));
    // The lender link, with `--lender`: beside the control socket, never
    // instead of it.
    let link = link_config.map(|config| lending::link::Link::start(config, hub.clone(), &shutdown));

    let state = lending::StateFile::new(
        settings
            .state_file
            .clone()
            .unwrap_or_else(|| agent.work.state_file.clone()),
    );
    let stopped =
        supervisor::run(&agent, settings, hub, state, &mut backoff, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(link) = link {
        link.stop().await;
    }
    let _ = server_task.await;
    match stopped {
        Stopped::Cleanly => {
            tracing::info!("stopped");
            Ok(())
        }
        Stopped::Failed(err) => Err(err),
    }
}

/// The error and its causes, each said once: most error types here already
/// include their cause's text in their own message.
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
