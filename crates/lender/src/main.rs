//! `jnlp-lender`: the pool service and its command line.
//!
//! This build has the pool's logic and `labels check`; the network parts
//! (`serve` and the client commands) parse their options and say they are
//! not implemented yet.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lender::labels::Expr;

#[derive(Debug, Parser)]
#[command(
    name = "jnlp-lender",
    version,
    about = "A pool of jnlp-agents, lent by label expression"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pool service.
    Serve {
        /// Address for the HTTP API and the agent links.
        #[arg(long, default_value = "127.0.0.1:8765")]
        listen: String,
        /// The SQLite database file.
        #[arg(long, default_value = "jnlp-lender.db")]
        db: PathBuf,
    },
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Lease a machine: prints the lease, exits non-zero on failure.
    Lease(LeaseArgs),
    /// Return a lease.
    Return {
        /// The lease id.
        id: u64,
        /// Leave at once, ending running builds, instead of when idle.
        #[arg(long)]
        now: bool,
    },
    /// List the agents.
    Agents,
    /// List the leases.
    Leases,
    /// Label expressions.
    #[command(subcommand)]
    Labels(LabelsCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for an agent or an API client.
    Create {
        /// For this agent (it may speak only for itself).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        agent: Option<String>,
        /// For this API client.
        #[arg(long)]
        client: Option<String>,
    },
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
    /// A file holding the node's secret.
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
    /// How the agent reaches the borrower.
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Tcp,
    WebSocket,
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
    match cli.command {
        Command::Labels(LabelsCommand::Check { expr, labels }) => labels_check(&expr, &labels),
        Command::Lease(args) => {
            // The expression is checked here, so that a typo fails before
            // any network round trip once leasing works.
            if let Err(code) = parse_or_report(&args.labels) {
                return code;
            }
            not_implemented("lease")
        }
        Command::Serve { .. } => not_implemented("serve"),
        Command::Token(TokenCommand::Create { .. }) => not_implemented("token create"),
        Command::Return { .. } => not_implemented("return"),
        Command::Agents => not_implemented("agents"),
        Command::Leases => not_implemented("leases"),
    }
}

fn not_implemented(command: &str) -> ExitCode {
    eprintln!("jnlp-lender {command}: not implemented in this build");
    ExitCode::from(2)
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
