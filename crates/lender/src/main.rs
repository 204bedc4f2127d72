//! `jnlp-lender`: the pool service and its command line.
//!
//! - `serve`: the HTTP API and the agents' links ([`lender::server`]);
//! - `token create`, `token list`, `token revoke`: bearer tokens for agents
//!   and API clients;
//! - `lease`, `return`, `agents`, `leases`: clients of the HTTP API, for
//!   people and jobs (`--lender URL --token-file F`, or
//!   `JNLP_LENDER_URL` and `JNLP_LENDER_TOKEN_FILE`);
//! - `controller add`, `controller remove`: register Jenkins controllers
//!   to lend to on demand; `controllers`: their state (an API client);
//! - `labels check`: try a label expression locally;
//! - `migrate`: copy a SQLite pool into PostgreSQL.
//!
//! `--db` is a SQLite file or a `postgres://` URL ([`cli::db`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use control::labels::Expr;
use control::Transport;
use lender::api::{AgentView, BorrowerBody, LeaseBody, LeaseView};
use lender::client::{read_small_file, Client, ClientError};
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::PoolConfig;
use lender::server::{self, Config, TlsFiles};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "jnlp-lender",
    version,
    about = "A pool of jnlp-agents, lent by label expression"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PostgreSQL's password for a `postgres://` --db, in this file (its
    /// first line); without it, `PGPASSWORD`.
    #[arg(long, global = true, env = "JNLP_LENDER_DB_PASSWORD_FILE")]
    db_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pool service: the HTTP API and the agents' links. On
    /// PostgreSQL any number may run on one database: one is active, the
    /// others stand by (503) and take over when it is gone.
    Serve(ServeArgs),
    /// Copy a SQLite pool (agents, leases, audit log, tokens, controllers)
    /// into an empty PostgreSQL database.
    Migrate {
        /// The SQLite database file.
        #[arg(long)]
        from: PathBuf,
        /// postgres://USER@HOST[:PORT]/DBNAME (password from
        /// --db-password-file or PGPASSWORD).
        #[arg(long)]
        to: String,
    },
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Lease a machine: waits until it is online at the borrower, prints
    /// the lease, exits 0 (active) or 1 (failed, timed out).
    Lease(LeaseArgs),
    /// Return a lease: the agent goes home when idle.
    Return {
        /// The lease id.
        id: u64,
        /// Leave at once, ending running builds, instead of when idle.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the agents.
    Agents {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List this client's newest leases, ended ones included (kept for
    /// good by the lender).
    Leases {
        /// Which: open (not ended), ended, or all.
        #[arg(long, default_value = "all", value_parser = ["open", "ended", "all"])]
        state: String,
        /// At most this many (1 to 1000), the newest.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Label expressions.
    #[command(subcommand)]
    Labels(LabelsCommand),
    /// Register or remove a Jenkins controller to lend to on demand (a
    /// running `serve` picks the change up within one --poll).
    #[command(subcommand)]
    Controller(ControllerCommand),
    /// List the registered controllers: url, state (pending, ok, failing),
    /// last error, Jenkins version, waiting items, agents lent there.
    Controllers {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ControllerCommand {
    /// Register a controller: the lender reads its queue and lends pooled
    /// agents to builds waiting for a label, creating and deleting their
    /// nodes through Jenkins' HTTP API.
    Add(ControllerAddArgs),
    /// Remove a registered controller.
    Remove {
        /// The controller's name.
        name: String,
        /// The database: a SQLite file or a postgres:// URL.
        #[arg(long, default_value = "jnlp-lender.db")]
        db: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ControllerAddArgs {
    /// The lender's name for it (letters, digits, '-', '_', '.').
    name: String,
    /// The database: a SQLite file (created if needed) or a postgres:// URL.
    #[arg(long, default_value = "jnlp-lender.db")]
    db: PathBuf,
    /// The controller's root URL, e.g. `https://ci.example/`.
    #[arg(long)]
    url: String,
    /// The Jenkins user the lender logs in as (needs Overall/Read, Job/Read,
    /// Agent/Create, Delete, Configure, Connect, Disconnect).
    #[arg(long)]
    user: String,
    /// A file holding that user's API token (stored in the database, never
    /// shown).
    #[arg(long)]
    api_token_file: PathBuf,
    /// At most this many agents lent there at once.
    #[arg(long)]
    max_agents: Option<u32>,
    /// Lent nodes are named PREFIX + the agent's name.
    #[arg(long, default_value = lender::controllers::DEFAULT_NODE_PREFIX)]
    node_prefix: String,
    /// A lent agent idle this long goes home.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    idle_return: Duration,
    /// The lease ends when the first build on the node has finished.
    #[arg(long)]
    one_build: bool,
    /// Items waiting at least this long are demand.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    demand_after: Duration,
    /// Do not read its queue (register the credentials only).
    #[arg(long)]
    no_demand: bool,
    /// Keep lent nodes when their lease ends (default: delete them).
    #[arg(long)]
    keep_nodes: bool,
    /// Replace a controller registered under NAME (a new API token, URL or
    /// options); a running lender restarts its watcher within one --poll.
    /// Leases in place are kept.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address for the HTTP API and the agent links. Plain HTTP is served
    /// on loopback only, unless --insecure-listen.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: String,
    /// The database: a SQLite file or postgres://USER@HOST[:PORT]/DBNAME
    /// (`?sslmode=disable|prefer|require|verify-full`). It must hold a pool already (made by
    /// `token create` or `serve --init`): a missing or empty file is
    /// refused, so that a typo cannot start an empty pool.
    #[arg(long, default_value = "jnlp-lender.db")]
    db: PathBuf,
    /// Create the database if it does not hold a pool yet.
    #[arg(long)]
    init: bool,
    /// How long a change may wait for a lock another process holds on the
    /// database before it is refused (503).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    db_busy_timeout: Duration,
    /// PEM certificate chain for HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address anyway.
    #[arg(long)]
    insecure_listen: bool,
    /// Send an agent idle at a borrower this long home for a waiting
    /// request of another borrower, e.g. 30m. Without it, never.
    #[arg(long, value_parser = humantime::parse_duration)]
    reclaim_after: Option<Duration>,
    /// At most this many agents per borrower URL.
    #[arg(long)]
    max_per_borrower: Option<usize>,
    /// At most this many requests of one client wait in the queue; the next
    /// one that would wait gets 429.
    #[arg(long, default_value_t = lender::pool::DEFAULT_MAX_QUEUED_PER_CLIENT)]
    max_queued_per_client: usize,
    /// How long an agent has to come online at the borrower.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    borrow_wait: Duration,
    /// A directory of per-client directories: a lease request of client C
    /// may name a file under DIR/C/ as secret_file (relative to DIR/C/).
    #[arg(long)]
    secret_dir: Option<PathBuf>,
    /// The lender's name, told to agents.
    #[arg(long, default_value = "jnlp-lender")]
    name: String,
    /// How often each registered controller's queue is read (and the
    /// controllers table re-read).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    poll: Duration,
    /// At most this many connections not yet authenticated (one more closes
    /// the oldest of them). Default: a quarter of the open-files limit,
    /// between 64 and 4096.
    #[arg(long)]
    max_unauthenticated: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for an agent or an API client; it is shown once.
    /// Creates the database if needed.
    Create {
        /// The database: a SQLite file or a postgres:// URL.
        #[arg(long, default_value = "jnlp-lender.db")]
        db: PathBuf,
        /// For this agent (it may speak only for itself).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        agent: Option<String>,
        /// For this API client.
        #[arg(long)]
        client: Option<String>,
        /// Write the token to this new file (mode 0600; an existing file is
        /// not overwritten) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the tokens (never a token itself): id, kind, name, created, last
    /// used, revoked.
    List {
        /// The database: a SQLite file or a postgres:// URL.
        #[arg(long, default_value = "jnlp-lender.db")]
        db: PathBuf,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every token of NAME; a running server refuses them within a
    /// second and closes their links and event streams.
    Revoke {
        /// The database: a SQLite file or a postgres:// URL.
        #[arg(long, default_value = "jnlp-lender.db")]
        db: PathBuf,
        /// The agent's or client's name.
        name: String,
    },
}

/// Where the lender is and how to authenticate.
#[derive(Debug, Args)]
struct ClientArgs {
    /// The lender's URL, e.g. `https://lender.example:8765`; several,
    /// separated by commas (an active lender and its standbys): each call
    /// passes over a 503 or a refused connection to the next.
    #[arg(long, env = "JNLP_LENDER_URL")]
    lender: String,
    /// A file holding a client token.
    #[arg(long, env = "JNLP_LENDER_TOKEN_FILE")]
    token_file: PathBuf,
    /// A PEM CA certificate to trust for the lender (besides the system's).
    #[arg(long, env = "JNLP_LENDER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LeaseArgs {
    /// The requirements, a Jenkins label expression, e.g. 'macos && arm64'.
    #[arg(long)]
    labels: String,
    /// The borrowing controller's URL.
    #[arg(long)]
    url: String,
    /// The node's name on the borrowing controller.
    #[arg(long)]
    name: String,
    /// A file holding the node's secret (read here, sent over the API).
    #[arg(long)]
    secret_file: PathBuf,
    /// How long to keep the machine, e.g. 2h.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Return it after it has been idle this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_return: Option<Duration>,
    /// How long to wait in the queue, e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait: Duration,
    /// The agent joins the borrower over a WebSocket on its web port.
    #[arg(long, conflicts_with = "tcp")]
    web_socket: bool,
    /// The agent joins the borrower on its TCP agent port.
    #[arg(long)]
    tcp: bool,
    /// After the wait, how long the agent may take to come online at the
    /// borrower before this command gives up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "6m")]
    move_timeout: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum LabelsCommand {
    /// Parse EXPR, print its canonical form, and tell whether an agent with
    /// LABELS satisfies it (exit 0: yes, 1: no, 2: EXPR is invalid).
    Check {
        /// The label expression.
        expr: String,
        /// The agent's labels; each argument may hold several, separated by
        /// whitespace, as in a Jenkins node's label field.
        labels: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = cli::db::set_password(cli.db_password_file.as_deref()) {
        return report(Err(err));
    }
    match cli.command {
        Command::Migrate { from, to } => report(cli::db::migrate(&from, &to)),
        Command::Labels(LabelsCommand::Check { expr, labels }) => labels_check(&expr, &labels),
        Command::Token(TokenCommand::Create {
            db,
            agent,
            client,
            out,
        }) => report(cli::tokens::create(&db, agent, client, out.as_deref())),
        Command::Token(TokenCommand::List { db, json }) => report(cli::tokens::list(&db, json)),
        Command::Token(TokenCommand::Revoke { db, name }) => {
            report(cli::tokens::revoke(&db, &name))
        }
        Command::Serve(args) => runtime(serve(args)),
        Command::Lease(args) => {
            // Checked here, so that a typo fails before any round trip.
            if let Err(code) = parse_or_report(&args.labels) {
                return code;
            }
            runtime(lease(args))
        }
        Command::Return { id, now, client } => runtime(return_lease(id, now, client)),
        Command::Agents { client } => runtime(agents(client)),
        Command::Controllers { client } => runtime(controllers(client)),
        Command::Controller(ControllerCommand::Add(args)) => report(controller_add(args)),
        Command::Controller(ControllerCommand::Remove { name, db }) => {
            report(controller_remove(&db, &name))
        }
        Command::Leases {
            state,
            limit,
            client,
        } => runtime(leases(state, limit, client)),
    }
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("jnlp-lender: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime(future: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("jnlp-lender: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    report(runtime.block_on(future))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let open_files = server::raise_open_files_limit();
    let mut config = Config::new(args.listen, args.db);
    config.init = args.init;
    config.db_password = cli::db::password().map(lender::pool::Secret::new);
    config.db_busy_timeout = args.db_busy_timeout;
    if args.poll < Duration::from_millis(100) {
        anyhow::bail!("--poll must be at least 100ms");
    }
    config.poll = args.poll;
    config.max_unauthenticated = args
        .max_unauthenticated
        .unwrap_or_else(|| server::default_max_unauthenticated(open_files));
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            if let Ok(meta) = std::fs::metadata(&key) {
                if let Some(warning) = control::secret_file::readable_by_others(&key, &meta) {
                    tracing::warn!("{warning}");
                }
            }
            Some(TlsFiles { cert, key })
        }
        _ => None,
    };
    config.insecure_listen = args.insecure_listen;
    config.reclaim_after = args.reclaim_after;
    config.pool = PoolConfig {
        max_per_borrower: args.max_per_borrower,
        max_queued_per_client: args.max_queued_per_client,
        ..PoolConfig::default()
    };
    config.borrow_wait = args.borrow_wait;
    config.secret_dir = args.secret_dir;
    config.name = args.name;
    let running = server::start(config).await?;
    eprintln!("jnlp-lender: listening on {}", running.local_addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Warns on stderr when a token or secret file can be read by other users
/// (the file is still used).
fn warn_if_exposed(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if let Some(warning) = control::secret_file::readable_by_others(path, &meta) {
            eprintln!("jnlp-lender: warning: {warning}");
        }
    }
}

fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    warn_if_exposed(&args.token_file);
    let ca = args
        .ca_cert
        .as_ref()
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    Ok(Client::with_token_file(
        &args.lender,
        &args.token_file,
        ca.as_deref(),
    )?)
}

async fn lease(args: LeaseArgs) -> anyhow::Result<ExitCode> {
    let api = client(&args.client)?;
    warn_if_exposed(&args.secret_file);
    let secret = read_small_file(&args.secret_file)?;
    let transport = match (args.web_socket, args.tcp) {
        (true, _) => Some(Transport::WebSocket),
        (_, true) => Some(Transport::Tcp),
        _ => None,
    };
    let body = LeaseBody {
        requirements: args.labels,
        borrower: BorrowerBody {
            url: args.url,
            name: args.name,
            secret: Some(secret),
            secret_file: None,
            transport,
        },
        lease: args.lease,
        idle_return: args.idle_return,
        wait: Some(args.wait),
    };
    let json = args.client.json;
    let lease = match api.lease(&body).await {
        Ok(lease) => lease,
        Err(ClientError::Api {
            message,
            lease: Some(lease),
            ..
        }) => {
            print_lease(&lease, json);
            eprintln!("jnlp-lender: lease {} failed: {message}", lease.id);
            return Ok(ExitCode::from(1));
        }
        Err(err) => return Err(err.into()),
    };
    eprintln!(
        "jnlp-lender: lease {} {}{}",
        lease.id,
        lease.state,
        lease
            .agent
            .as_deref()
            .map(|a| format!(", agent {a}"))
            .unwrap_or_default()
    );
    let limit = args.wait.saturating_add(args.move_timeout);
    let lease = api
        .wait_settled(lease.id, Duration::from_millis(500), limit)
        .await?;
    print_lease(&lease, json);
    if lease.state == "active" {
        Ok(ExitCode::SUCCESS)
    } else {
        let why = lease
            .ended
            .as_ref()
            .map(|end| end.message.clone())
            .unwrap_or_else(|| {
                format!(
                    "still {} after {}",
                    lease.state,
                    humantime::format_duration(limit)
                )
            });
        eprintln!("jnlp-lender: lease {} failed: {why}", lease.id);
        Ok(ExitCode::from(1))
    }
}

async fn return_lease(id: u64, now: bool, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let lease = client(&args)?.return_lease(id, now).await?;
    print_lease(&lease, args.json);
    Ok(ExitCode::SUCCESS)
}

async fn agents(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let agents = client(&args)?.agents().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
    } else {
        for agent in &agents {
            println!("{}", agent_line(agent));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn controller_add(args: ControllerAddArgs) -> anyhow::Result<ExitCode> {
    let token = read_small_file(&args.api_token_file)?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!(
            "{} is empty: put the Jenkins user's API token in it",
            args.api_token_file.display()
        );
    }
    let config = ControllerConfig {
        name: args.name,
        url: args.url,
        user: args.user,
        api_token: lender::pool::Secret::new(token),
        options: ControllerOptions {
            max_agents: args.max_agents,
            node_prefix: args.node_prefix,
            idle_return: args.idle_return,
            one_build: args.one_build,
            demand_after: args.demand_after,
            demand: !args.no_demand,
            keep_nodes: args.keep_nodes,
        },
        added_ms: control::now_ms(),
    };
    config.check().map_err(anyhow::Error::msg)?;
    let mut store = cli::db::create(&args.db)?;
    // Replacing is remove + add: a lender reading the table in between
    // only restarts the watcher one poll later (leases are not tied to
    // the row).
    let replaced = args.replace && store.remove_controller(&config.name)?;
    if !store.add_controller(&config)? {
        anyhow::bail!(
            "a controller named {:?} is registered already; add --replace to change its token, URL or options",
            config.name
        );
    }
    eprintln!(
        "jnlp-lender: controller {:?} {} ({} as {}); a running lender picks it up within one --poll",
        config.name,
        if replaced { "replaced" } else { "registered" },
        config.url,
        config.user
    );
    Ok(ExitCode::SUCCESS)
}

fn controller_remove(db: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut store = cli::db::open(db)?;
    if !store.remove_controller(name)? {
        eprintln!("jnlp-lender: no controller named {name:?} (see `jnlp-lender controllers`)");
        return Ok(ExitCode::from(1));
    }
    eprintln!("jnlp-lender: controller {name:?} removed");
    Ok(ExitCode::SUCCESS)
}

async fn controllers(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let controllers = client(&args)?.controllers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&controllers)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("NAME\tSTATE\tVERSION\tWAITING\tLENT\tURL\tLAST ERROR");
    for c in &controllers {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            c.name,
            c.state,
            c.jenkins_version.as_deref().unwrap_or("-"),
            c.waiting_items,
            c.agents_lent,
            c.url,
            c.last_error.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn leases(state: String, limit: u16, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let leases = client(&args)?.leases(&state, limit.into()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
    } else {
        for lease in &leases {
            println!("{}", lease_line(lease));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_lease(lease: &LeaseView, json: bool) {
    if json {
        println!("{}", serde_json::to_string(lease).unwrap_or_default());
    } else {
        println!("{}", lease_line(lease));
    }
}

fn lease_line(lease: &LeaseView) -> String {
    let mut line = format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        lease.id,
        lease.state,
        lease.agent.as_deref().unwrap_or("-"),
        lease.borrower.url,
        lease.borrower.name,
        lease.requirements
    );
    if let Some(end) = &lease.ended {
        line.push_str(&format!("\t{}: {}", end.reason, end.message));
    }
    line
}

fn agent_line(agent: &AgentView) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        agent.name,
        agent.state,
        agent.borrower_url.as_deref().unwrap_or(&agent.place),
        agent.lease.map_or("-".to_owned(), |id| id.to_string()),
        if agent.busy { "busy" } else { "idle" },
        agent.labels.join(" ")
    )
}

fn parse_or_report(expr: &str) -> Result<Expr, ExitCode> {
    Expr::parse(expr).map_err(|err| {
        eprintln!("jnlp-lender: invalid label expression: {err}");
        if let Some(column) = err.column() {
            eprintln!("  {expr}");
            eprintln!("  {}^", " ".repeat(column.saturating_sub(1)));
        }
        ExitCode::from(2)
    })
}

fn labels_check(expr: &str, labels: &[String]) -> ExitCode {
    let parsed = match parse_or_report(expr) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let labels: BTreeSet<String> = labels
        .iter()
        .flat_map(|arg| arg.split_whitespace())
        .map(str::to_owned)
        .collect();
    println!("{parsed}");
    if parsed.matches(&labels) {
        println!("matches");
        ExitCode::SUCCESS
    } else {
        println!("does not match");
        ExitCode::from(1)
    }
}
