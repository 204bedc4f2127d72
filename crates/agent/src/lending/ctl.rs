//! `jnlp-agent ctl`: drives a running agent through its control socket
//! (`status`, `borrow`, `return`, `events`). Lender and borrower jobs run it
//! on the agent itself, where `JNLP_AGENT_CONTROL_SOCKET` names the socket.
//! The wire protocol is the `control` crate's; this is only a command line
//! over [`control::client`].

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use control::client::{self, ClientError};
use control::secret_file::{readable_by_others, ReadableByOthers};
use control::{
    BorrowRequest, Event, PendingAction, Phase, Placement, Request, Response, Status, Target, When,
    MAX_SECRET_FILE,
};

/// Accepted, or the status / events were printed.
const EXIT_OK: u8 = 0;
/// The agent refused (its reason is on stderr), or the exchange failed.
const EXIT_REFUSED: u8 = 1;
/// The command line is wrong.
const EXIT_USAGE: u8 = 2;
/// No agent answers at the socket.
const EXIT_UNREACHABLE: u8 = 3;

const EXIT_HELP: &str = "\
Exit status:
  0  ok: the order was accepted (with --wait: carried out, the agent is
     online at the target), or the status / events were printed
  1  the agent refused, or with --wait the move failed (the borrower could
     not be reached or refused: the agent stayed where it was) or did not
     finish in time; the reason is on stderr. Or the exchange failed
  2  usage error
  3  no agent reachable at the socket (none running, wrong path, or no permission)

The socket is --socket PATH, else $JNLP_AGENT_CONTROL_SOCKET. The agent
listens on its --control-socket (default WORKDIR/remoting/control.sock).";

#[derive(Debug, Parser)]
#[command(
    name = "jnlp-agent ctl",
    bin_name = "jnlp-agent ctl",
    about = "Ask a running jnlp-agent for its status, or lend it to another controller and back",
    after_help = EXIT_HELP,
    disable_version_flag = true
)]
struct Cli {
    /// The agent's control socket [default: $JNLP_AGENT_CONTROL_SOCKET]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Where the agent is, what it is doing, and whether it is busy
    Status {
        /// Print the status as one JSON object (the protocol's `Status`)
        #[arg(long)]
        json: bool,
    },
    /// Lend the agent to another controller (it leaves when idle unless --now)
    Borrow(BorrowArgs),
    /// Bring the agent back to its home controller (when idle unless --now)
    Return {
        /// Leave at once, ending running builds, instead of when idle
        #[arg(long)]
        now: bool,
        /// Exit only once the agent is online at home (0), or after TIMEOUT
        /// (1, with where it is); bare --wait waits up to 10m
        #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = DEFAULT_WAIT, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Print one JSON line per event until interrupted; the first carries
    /// the current status
    Events,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["url", "jnlp_url", "direct"])))]
#[command(group(ArgGroup::new("credential").required(true).args(["secret", "secret_file"])))]
struct BorrowArgs {
    /// The borrowing controller's URL (the agent port is discovered, as -url)
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// A JNLP file's URL on the borrowing controller (as -jnlpUrl)
    #[arg(long = "jnlp-url", value_name = "URL")]
    jnlp_url: Option<String>,
    /// The borrowing controller's agent port, without discovery (as -direct);
    /// needs --instance-identity and --engine-jar
    #[arg(long, value_name = "HOST:PORT", requires_all = ["instance_identity", "engine_jar"])]
    direct: Option<String>,
    /// The controller's instance identity (base64 public key), with --direct
    #[arg(long = "instance-identity", value_name = "B64", requires = "direct")]
    instance_identity: Option<String>,
    /// A local remoting.jar to run as the engine, with --direct
    #[arg(long = "engine-jar", value_name = "PATH", requires = "direct")]
    engine_jar: Option<PathBuf>,
    /// The node's name on the borrowing controller
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The node's secret. Other users can see it in `ps`: prefer
    /// --secret-file, or `--secret -` to read it from standard input
    #[arg(long, value_name = "SECRET", allow_hyphen_values = true)]
    secret: Option<String>,
    /// A file holding the node's secret. The agent reads it, not this
    /// command, so the secret never passes through a command line; the file
    /// must be readable by the agent's user (and, unless you are that user
    /// or root, belong to you)
    #[arg(long = "secret-file", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Return home after this long at the latest, e.g. 2h, 90m
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Return home after being idle this long, e.g. 30m
    #[arg(long = "idle-return", value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_return: Option<Duration>,
    /// Leave the current controller at once, ending running builds, instead
    /// of when idle
    #[arg(long)]
    now: bool,
    /// Exit only once the agent is online at the borrower (0), or the borrow
    /// failed or TIMEOUT passed (1, with the reason); bare --wait waits up
    /// to 10m
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = DEFAULT_WAIT, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// Reach the borrower over a WebSocket on its web port (as -webSocket),
    /// for controllers with no TCP agent port
    #[arg(long = "web-socket", conflicts_with = "tcp")]
    web_socket: bool,
    /// Reach the borrower only through its TCP agent port. Without either
    /// option: TCP, or the WebSocket when its TCP agent port is disabled
    #[arg(long)]
    tcp: bool,
}

/// How long a bare `--wait` waits.
const DEFAULT_WAIT: &str = "10m";

/// What to do once connected.
#[derive(Debug)]
enum Action {
    Status { json: bool },
    Order(Request),
    Events,
}

/// `jnlp-agent ctl ARGS...`: `args` are the arguments after `ctl`. Runs on
/// a current-thread runtime of its own.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let (socket, action) = match parse(args, &mut io::stdin().lock()) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    runtime.block_on(run(&socket, action, &mut io::stdout()))
}

/// The socket and the action, or the exit code after printing help or a
/// usage error. `stdin` is read for `--secret -`.
fn parse(args: Vec<OsString>, stdin: &mut dyn io::Read) -> Result<(PathBuf, Action), ExitCode> {
    let argv = std::iter::once(OsString::from("jnlp-agent ctl")).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(err) => {
            // --help goes to stdout with status 0, mistakes to stderr.
            let code = if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
            let _ = err.print();
            return Err(ExitCode::from(code));
        }
    };
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    let Some(socket) = cli.socket.or_else(client::default_socket_path) else {
        return Err(usage(format!(
            "no control socket: pass --socket PATH or set {} (the agent listens on its \
             --control-socket, by default WORKDIR/remoting/control.sock)",
            control::SOCKET_ENV
        )));
    };
    let action = match cli.command {
        Command::Status { json } => Action::Status { json },
        Command::Events => Action::Events,
        Command::Return { now, wait } => Action::Order(Request::Return {
            when: when(now),
            wait,
        }),
        Command::Borrow(args) => {
            let request = borrow_request(args, stdin).map_err(usage)?;
            if let Some(exposed) = exposed_secret_file(&request) {
                // The agent logs it too, but whoever runs ctl can fix it.
                eprintln!("warning: {exposed}");
            }
            Action::Order(Request::Borrow(request))
        }
    };
    Ok((socket, action))
}

fn when(now: bool) -> When {
    if now {
        When::Now
    } else {
        When::Idle
    }
}

fn borrow_request(args: BorrowArgs, stdin: &mut dyn io::Read) -> Result<BorrowRequest, String> {
    let target = match (args.url, args.jnlp_url, args.direct) {
        (Some(url), _, _) => Target::Url { url },
        (_, Some(url), _) => Target::JnlpUrl { url },
        (_, _, Some(address)) => Target::Direct {
            address,
            // clap's `requires_all` guarantees both.
            instance_identity: args.instance_identity.unwrap_or_default(),
            engine_jar: absolute(&args.engine_jar.unwrap_or_default())?,
        },
        (None, None, None) => return Err("--url, --jnlp-url or --direct is required".into()),
    };
    let secret = match args.secret.as_deref() {
        Some("-") => Some(read_secret(stdin)?),
        _ => args.secret,
    };
    let request = BorrowRequest {
        target,
        name: args.name,
        secret,
        // The agent resolves the path, so it must not depend on our cwd.
        secret_file: args.secret_file.as_deref().map(absolute).transpose()?,
        lease: args.lease,
        idle_return: args.idle_return,
        when: when(args.now),
        wait: args.wait,
        transport: match (args.web_socket, args.tcp) {
            (true, _) => Some(control::Transport::WebSocket),
            (_, true) => Some(control::Transport::Tcp),
            _ => None,
        },
    };
    request.validate()?;
    Ok(request)
}

/// The request's `secret_file`, when other users can read it. Nothing when
/// it cannot be inspected: the agent's refusal will say why.
fn exposed_secret_file(request: &BorrowRequest) -> Option<ReadableByOthers> {
    let path = request.secret_file.as_deref()?;
    let meta = std::fs::metadata(path).ok()?;
    readable_by_others(path, &meta)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))
}

/// `--secret -`: the secret from standard input (bounded, trimmed).
fn read_secret(stdin: &mut dyn io::Read) -> Result<String, String> {
    use control::secret_file::{read_bounded, ReadError};
    let text = read_bounded(stdin, MAX_SECRET_FILE).map_err(|err| match err {
        ReadError::Io(err) => format!("cannot read the secret from standard input: {err}"),
        ReadError::TooLarge { .. } => {
            format!("the secret on standard input is longer than {MAX_SECRET_FILE} bytes")
        }
        ReadError::NotUtf8 => "the secret on standard input is not UTF-8".to_owned(),
    })?;
    match text.trim() {
        "" => Err("the secret on standard input is empty".into()),
        secret => Ok(secret.to_owned()),
    }
}

async fn run(socket: &Path, action: Action, out: &mut dyn io::Write) -> ExitCode {
    let result = match action {
        Action::Status { json } => status(socket, json, out).await,
        Action::Order(request) => order(socket, request, out).await,
        Action::Events => events(socket, out).await,
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(match err {
                ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
                _ => EXIT_REFUSED,
            })
        }
    }
}

async fn status(socket: &Path, json: bool, out: &mut dyn io::Write) -> Result<(), ClientError> {
    let mut agent = client::connect(socket).await?;
    let status = match agent.request(Request::Status).await? {
        Response::Status(status) => status,
        other => return Err(unexpected(&other)),
    };
    let text = if json {
        control::to_json(&status) + "\n"
    } else {
        describe(&status, control::now_ms())
    };
    // A closed stdout (`| head`) is not the agent's failure.
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

async fn order(
    socket: &Path,
    request: Request,
    out: &mut dyn io::Write,
) -> Result<(), ClientError> {
    let mut agent = client::connect(socket).await?;
    match agent.request(request).await? {
        Response::Accepted { message } => {
            let _ = writeln!(out, "{message}");
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

async fn events(socket: &Path, out: &mut dyn io::Write) -> Result<(), ClientError> {
    let mut events = client::connect(socket).await?.events().await?;
    while let Some(event) = events.next_event().await? {
        if print_event(&event, out).is_err() {
            break; // the reader went away
        }
    }
    Ok(())
}

fn print_event(event: &Event, out: &mut dyn io::Write) -> io::Result<()> {
    writeln!(out, "{}", control::to_json(event))?;
    out.flush()
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {}", control::to_json(response)))
}

/// The readable form of `status` at `now_ms`.
fn describe(status: &Status, now_ms: u64) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let placement = match status.placement {
        Placement::Home => "home",
        Placement::Borrowed => "borrowed",
    };
    let phase = match status.phase {
        Phase::Connecting => "connecting",
        Phase::Online => "online",
        Phase::Draining => "draining",
        Phase::Leaving => "leaving",
        Phase::BackingOff => "backing off",
    };
    lines.push((
        "placement",
        format!(
            "{placement}, {phase} since {}",
            ago(status.since_ms, now_ms)
        ),
    ));
    let controller = status.controller_url.as_deref().unwrap_or("(none)");
    lines.push((
        "controller",
        match &status.node_name {
            Some(node) => format!("{controller} as node {node}"),
            None => controller.to_owned(),
        },
    ));
    if let Some(transport) = status.transport {
        lines.push((
            "transport",
            match (transport, status.transport_fallback) {
                (control::Transport::Tcp, _) => "TCP agent port (JNLP4-connect)".to_owned(),
                (control::Transport::WebSocket, false) => "WebSocket".to_owned(),
                (control::Transport::WebSocket, true) => {
                    "WebSocket (the TCP agent port is disabled)".to_owned()
                }
            },
        ));
    }
    if let Some(home) = &status.home_url {
        lines.push(("home", home.clone()));
    }
    if let Some(deadline) = status.lease_deadline_ms {
        lines.push(("lease", format!("ends {}", until(deadline, now_ms))));
    }
    if let Some(deadline) = status.idle_deadline_ms {
        lines.push((
            "idle return",
            format!("{} if still idle", until(deadline, now_ms)),
        ));
    }
    if let Some(pending) = &status.pending {
        let what = match pending.action {
            PendingAction::Borrow => "borrow",
            PendingAction::Return => "return",
        };
        let whither = pending
            .controller_url
            .as_deref()
            .map(|url| format!(" to {url}"))
            .unwrap_or_default();
        lines.push((
            "pending",
            format!(
                "{what}{whither} when idle (accepted {})",
                ago(pending.since_ms, now_ms)
            ),
        ));
    }
    if let Some(queued) = &status.queued {
        lines.push((
            "queued",
            format!(
                "borrow to {} once home (accepted {})",
                queued.controller_url.as_deref().unwrap_or("?"),
                ago(queued.since_ms, now_ms)
            ),
        ));
    }
    let busy = &status.busy;
    let activity = busy
        .last_activity_ms
        .map_or_else(|| "none".to_owned(), |at| ago(at, now_ms));
    lines.push((
        "busy",
        format!(
            "{}: {} in flight, {} build {}, last activity {activity}",
            if busy.busy { "yes" } else { "no" },
            plural(busy.requests_in_flight, "request"),
            busy.build_processes,
            if busy.build_processes == 1 {
                "process"
            } else {
                "processes"
            },
        ),
    ));
    let mut engine = match (status.engine_pid, &status.remoting_version) {
        (Some(pid), Some(version)) => format!("pid {pid}, remoting {version}"),
        (Some(pid), None) => format!("pid {pid}"),
        (None, Some(version)) => format!("not running (remoting {version})"),
        (None, None) => "not running".to_owned(),
    };
    if let (Some(window), Some(_)) = (status.engine_window, status.engine_pid) {
        let sized_for = match window.round_trip_us {
            Some(us) => format!("for a {:.1} ms round trip", us as f64 / 1000.0),
            None => "the round trip could not be measured".to_owned(),
        };
        engine.push_str(&format!(
            ", window {} per stream ({sized_for})",
            bytes(u64::from(window.bytes))
        ));
    }
    lines.push(("engine", engine));
    if let Some(warm) = &status.warm_engine {
        let memory = warm
            .rss_kib
            .map(|kib| format!(", {} resident", bytes(kib * 1024)))
            .unwrap_or_default();
        let controller = warm.controller_url.as_deref().unwrap_or("the next place");
        lines.push((
            "warm engine",
            format!("pid {} for {controller}{memory}", warm.pid),
        ));
    }
    lines.push((
        "traffic",
        format!(
            "{} in {} to the controller ({}/s now), {} in {} from it ({}/s now)",
            bytes(status.bytes_to_controller),
            plural(status.commands_to_controller, "command"),
            bytes(status.bytes_per_second_to_controller),
            bytes(status.bytes_from_controller),
            plural(status.commands_from_controller, "command"),
            bytes(status.bytes_per_second_from_controller),
        ),
    ));
    if let Some(error) = &status.last_error {
        lines.push(("last error", error.clone()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(key, value)| format!("{key:width$}  {value}\n"))
        .collect()
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// "12 s ago", "3m 20s ago" (whole seconds; the clocks are the same machine's).
fn ago(at_ms: u64, now_ms: u64) -> String {
    match now_ms.checked_sub(at_ms) {
        Some(ms) => format!("{} ago", seconds(ms)),
        None => format!("in {}", seconds(at_ms - now_ms)),
    }
}

/// "in 1h 57m", or "2 s ago" for a deadline already passed.
fn until(at_ms: u64, now_ms: u64) -> String {
    match at_ms.checked_sub(now_ms) {
        Some(ms) => format!("in {}", seconds(ms)),
        None => format!("{} ago", seconds(now_ms - at_ms)),
    }
}

fn seconds(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 120 {
        format!("{secs} s")
    } else {
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use control::{Busy, Pending};

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn parsed(list: &[&str]) -> Result<(PathBuf, Action), ExitCode> {
        parse(args(list), &mut io::empty())
    }

    fn borrow_of(list: &[&str]) -> BorrowRequest {
        match parsed(list) {
            Ok((_, Action::Order(Request::Borrow(borrow)))) => borrow,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn borrow_command_lines() {
        let b = borrow_of(&[
            "--socket",
            "/s",
            "borrow",
            "--url",
            "https://b.example/",
            "--name",
            "mac-01",
            "--secret-file",
            "rel/secret",
            "--lease",
            "2h",
            "--idle-return",
            "30m",
            "--now",
        ]);
        assert_eq!(
            b.target,
            Target::Url {
                url: "https://b.example/".into()
            }
        );
        let file = b.secret_file.expect("secret file");
        assert!(
            file.is_absolute() && file.ends_with("rel/secret"),
            "{file:?}"
        );
        assert_eq!(b.lease, Some(Duration::from_secs(7200)));
        assert_eq!(b.idle_return, Some(Duration::from_secs(1800)));
        assert_eq!(b.when, When::Now);
        assert_eq!(b.transport, None);

        for (flag, transport) in [
            ("--web-socket", control::Transport::WebSocket),
            ("--tcp", control::Transport::Tcp),
        ] {
            let b = borrow_of(&[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--name",
                "n",
                "--secret",
                "s",
                flag,
            ]);
            assert_eq!(b.transport, Some(transport), "{flag}");
        }
        assert!(parsed(&[
            "--socket",
            "/s",
            "borrow",
            "--url",
            "https://b/",
            "--name",
            "n",
            "--secret",
            "s",
            "--tcp",
            "--web-socket",
        ])
        .is_err());

        let b = borrow_of(&[
            "--socket",
            "/s",
            "borrow",
            "--direct",
            "b:50000",
            "--instance-identity",
            "MIIB",
            "--engine-jar",
            "/opt/r.jar",
            "--name",
            "n",
            "--secret",
            "s",
        ]);
        assert!(matches!(b.target, Target::Direct { .. }));
        assert_eq!(b.when, When::Idle);
        assert_eq!(b.secret.as_deref(), Some("s"));

        let (_, action) = parse(
            args(&[
                "--socket",
                "/s",
                "borrow",
                "--jnlp-url",
                "https://b/x.jnlp",
                "--name",
                "n",
                "--secret",
                "-",
            ]),
            &mut &b"  from-stdin\n"[..],
        )
        .unwrap();
        let Action::Order(Request::Borrow(b)) = action else {
            panic!("{action:?}")
        };
        assert_eq!(b.secret.as_deref(), Some("from-stdin"));
    }

    #[test]
    fn usage_errors_exit_2() {
        let cases: &[&[&str]] = &[
            &["--socket", "/s"],
            &["--socket", "/s", "fly"],
            &["--socket", "/s", "borrow", "--name", "n", "--secret", "s"],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--name",
                "n",
            ],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--jnlp-url",
                "https://b/j",
                "--name",
                "n",
                "--secret",
                "s",
            ],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--name",
                "n",
                "--secret",
                "s",
                "--secret-file",
                "/f",
            ],
            &[
                "--socket", "/s", "borrow", "--direct", "b:1", "--name", "n", "--secret", "s",
            ],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--engine-jar",
                "/j",
                "--name",
                "n",
                "--secret",
                "s",
            ],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--name",
                "n",
                "--secret",
                "s",
                "--lease",
                "soon",
            ],
            &[
                "--socket", "/s", "borrow", "--url", "ftp://b/", "--name", "n", "--secret", "s",
            ],
            &[
                "--socket",
                "/s",
                "borrow",
                "--url",
                "https://b/",
                "--name",
                "n",
                "--secret",
                "-",
            ],
        ];
        for case in cases {
            assert_eq!(
                parsed(case).err(),
                Some(ExitCode::from(EXIT_USAGE)),
                "{case:?}"
            );
        }
        assert_eq!(parsed(&["--help"]).err(), Some(ExitCode::from(EXIT_OK)));
    }

    #[test]
    fn socket_comes_from_the_flag_after_the_subcommand_too() {
        let (socket, action) = parsed(&["status", "--json", "--socket", "/x.sock"]).unwrap();
        assert_eq!(socket, PathBuf::from("/x.sock"));
        assert!(matches!(action, Action::Status { json: true }));
        let (_, action) = parsed(&["--socket", "/s", "return", "--now"]).unwrap();
        assert!(matches!(
            action,
            Action::Order(Request::Return {
                when: When::Now,
                wait: None
            })
        ));
    }

    #[test]
    fn help_mentions_exit_codes_and_the_secret_warning() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("3  no agent reachable"), "{help}");
        let mut cmd = Cli::command();
        let borrow = cmd.find_subcommand_mut("borrow").expect("borrow");
        let help = borrow.render_long_help().to_string();
        assert!(help.contains("can see it in `ps`"), "{help}");
    }

    #[test]
    fn readable_status() {
        let now = 1_700_000_100_000;
        let status = Status {
            placement: Placement::Borrowed,
            phase: Phase::Draining,
            controller_url: Some("https://b.example/".into()),
            node_name: Some("mac-01".into()),
            since_ms: now - 42_000,
            lease_deadline_ms: Some(now + 7_020_000),
            idle_deadline_ms: None,
            pending: Some(Pending {
                action: PendingAction::Return,
                controller_url: Some("https://a.example/".into()),
                since_ms: now - 5_000,
            }),
            queued: Some(Pending {
                action: PendingAction::Borrow,
                controller_url: Some("https://c.example/".into()),
                since_ms: now - 2_000,
            }),
            busy: Busy {
                requests_in_flight: 1,
                build_processes: 2,
                last_activity_ms: Some(now - 3_000),
                busy: true,
            },
            engine_pid: Some(4242),
            remoting_version: Some("3283.v92c105e0f819".into()),
            engine_window: Some(control::EngineWindow {
                bytes: 1 << 20,
                round_trip_us: Some(420),
            }),
            bytes_to_controller: 1_572_864,
            bytes_from_controller: 512,
            commands_to_controller: 12,
            commands_from_controller: 1,
            bytes_per_second_to_controller: 3 << 20,
            bytes_per_second_from_controller: 0,
            last_error: None,
            home_url: Some("https://a.example/".into()),
            transport: Some(control::Transport::WebSocket),
            transport_fallback: true,
            warm_engine: None,
            awaiting_first_call: false,
        };
        assert_eq!(
            describe(&status, now),
            "\
placement   borrowed, draining since 42 s ago
controller  https://b.example/ as node mac-01
transport   WebSocket (the TCP agent port is disabled)
home        https://a.example/
lease       ends in 1h 57m
pending     return to https://a.example/ when idle (accepted 5 s ago)
queued      borrow to https://c.example/ once home (accepted 2 s ago)
busy        yes: 1 request in flight, 2 build processes, last activity 3 s ago
engine      pid 4242, remoting 3283.v92c105e0f819, window 1.0 MiB per stream (for a 0.4 ms round trip)
traffic     1.5 MiB in 12 commands to the controller (3.0 MiB/s now), 512 B in 1 command from it (0 B/s now)
"
        );
        let text = describe(&Status::default(), 0);
        assert!(
            text.starts_with("placement   home, connecting since 0 s ago\n"),
            "{text}"
        );
        assert!(text.contains("engine      not running\n"), "{text}");
        let unmeasured = Status {
            engine_pid: Some(7),
            engine_window: Some(control::EngineWindow {
                bytes: 4 << 20,
                round_trip_us: None,
            }),
            ..Status::default()
        };
        assert!(
            describe(&unmeasured, 0).contains(
                "engine      pid 7, window 4.0 MiB per stream (the round trip could not be measured)\n"
            ),
            "{}",
            describe(&unmeasured, 0)
        );
    }

    #[test]
    fn no_agent_is_exit_3() {
        let code = main(args(&[
            "--socket",
            "/nonexistent/jnlp-agent.sock",
            "status",
        ]));
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
    }

    /// The whole path against the real server, on a runtime of its own
    /// (ctl makes its own current-thread runtime, as in the binary).
    #[test]
    fn against_the_control_server() {
        use crate::lending::control_server::ControlServer;
        use crate::lending::orders::{Answer, Handler};
        use tokio::sync::broadcast;

        struct Agent(broadcast::Sender<Event>);
        impl Handler for Agent {
            fn status(&self) -> Status {
                Status {
                    node_name: Some("mac-01".into()),
                    ..Status::default()
                }
            }
            fn borrow(&self, request: BorrowRequest) -> Answer<'_> {
                Box::pin(std::future::ready(match request.secret.as_deref() {
                    Some("right") => Ok("accepted; will leave when idle".into()),
                    _ => Err("the borrower refused the secret".into()),
                }))
            }
            fn give_back(&self, _: When) -> Answer<'_> {
                Box::pin(std::future::ready(Err("already home".into())))
            }
            fn subscribe(&self) -> broadcast::Receiver<Event> {
                self.0.subscribe()
            }
        }

        let dir = PathBuf::from(format!("/tmp/ctl-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("control.sock");
        let server_runtime = tokio::runtime::Runtime::new().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = {
            let _guard = server_runtime.enter();
            ControlServer::bind(&socket, None).unwrap()
        };
        let handler: Arc<dyn Handler> = Arc::new(Agent(broadcast::channel(8).0));
        let serving = server_runtime.spawn(server.serve(handler, shutdown.clone()));
        let s = socket.to_str().unwrap();

        let run_ctl = |list: &[&str]| {
            let (socket, action) = parse(args(list), &mut io::empty()).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut out = Vec::new();
            let code = runtime.block_on(run(&socket, action, &mut out));
            (code, String::from_utf8(out).unwrap())
        };
        let (code, out) = run_ctl(&["--socket", s, "status"]);
        assert_eq!(code, ExitCode::from(EXIT_OK));
        assert!(out.contains("as node mac-01"), "{out}");
        let (code, out) = run_ctl(&["--socket", s, "status", "--json"]);
        assert_eq!(code, ExitCode::from(EXIT_OK));
        assert!(out.starts_with("{\"placement\":\"home\""), "{out}");

        std::fs::write(dir.join("secret"), "right\n").unwrap();
        let file = dir.join("secret");
        let borrow = |secret: &[&str]| {
            let mut list = vec![
                "--socket",
                s,
                "borrow",
                "--url",
                "https://b.example/",
                "--name",
                "n",
            ];
            list.extend_from_slice(secret);
            run_ctl(&list)
        };
        let (code, out) = borrow(&["--secret-file", file.to_str().unwrap()]);
        assert_eq!(code, ExitCode::from(EXIT_OK), "{out}");
        assert_eq!(out, "accepted; will leave when idle\n");
        let (code, _) = borrow(&["--secret", "wrong"]);
        assert_eq!(code, ExitCode::from(EXIT_REFUSED));
        let (code, _) = run_ctl(&["--socket", s, "return"]);
        assert_eq!(code, ExitCode::from(EXIT_REFUSED));

        shutdown.cancel();
        server_runtime.block_on(serving).unwrap();
        let (code, _) = run_ctl(&["--socket", s, "status"]);
        assert_eq!(code, ExitCode::from(EXIT_UNREACHABLE));
        let _ = std::fs::remove_dir_all(&dir);
    }

    use std::sync::Arc;
}
