//! The lender at scale (issue 9's performance goals): a real
//! `jnlp-lender serve` process with 1,000 fake agents linked to it.
//!
//! 1. Builds (if missing) and starts the release `jnlp-lender serve` on
//!    `127.0.0.1:0` with a scratch database; the 1,000 agent tokens and the
//!    client token go into the database through the library first.
//! 2. Connects 1,000 fake agents from this process (WebSocket clients at
//!    `/v1/link`: `hello` with random labels, at home, online, idle; a
//!    `borrow` is answered `ok`, then a `status` shows the agent online at
//!    the borrower). Like the real agent, each pings every
//!    [`PING_INTERVAL`] (at a random phase) and sends nothing else when
//!    idle.
//! 3. Measures the server's memory (`VmRSS`, `VmHWM` from
//!    `/proc/PID/status`), the idle link traffic (bytes counted at the fake
//!    agents' sockets, WebSocket frames without TCP/IP headers, over
//!    `SCALE_IDLE_SECS`, 130 s by default: the ping interval is not
//!    configurable on `serve`), and the lease decision time: `POST
//!    /v1/leases` to its 201/202, sequential, over one keep-alive HTTP
//!    connection on loopback (so it includes HTTP and the SQLite commit),
//!    plus the server's own request-to-active summary from `/metrics`.
//! 4. Prints a table and kills the server.
//!
//! 5. With `SCALE_STORE=postgres`: the same on a throwaway PostgreSQL
//!    cluster (fsync on, like SQLite's `synchronous=FULL`; skipped with a
//!    message if PostgreSQL is not installed), then the takeover time: a
//!    second `serve` on the database stands by, the first is killed with
//!    SIGKILL, and the time until the standby answers the API is measured.
//!
//! Run: `cargo bench -p jnlp-lender --bench scale` (about 3 minutes).
//! Knobs: `SCALE_AGENTS` (1000), `SCALE_LEASES` (200), `SCALE_IDLE_SECS`
//! (130), `SCALE_STORE` (`sqlite` or `postgres`). Needs about AGENTS + 300 open files for this process and the
//! server: if it says so, `ulimit -n 4096` first.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use control::link::{AgentMessage, LenderMessage, LINK_PATH, PING_INTERVAL};
use control::{Phase, Placement, Reply, Request, Response, Status, Target};
use futures_util::{SinkExt as _, StreamExt as _};
use lender::store::{PgStore, PgTarget, SqliteStore, Store};
use lender::tokens::{self, Principal, TokenKind, TokenRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use test_support::procfs::proc_status_kib;
use test_support::Scratch;

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

const HOME: &str = "https://home.example/";
const BORROWERS: [&str; 4] = [
    "https://b1.example/",
    "https://b2.example/",
    "https://b3.example/",
    "https://b4.example/",
];
const OSES: [&str; 2] = ["macos", "linux"];
const ARCHES: [&str; 2] = ["arm64", "x86_64"];
const TOOLS: [&str; 3] = ["xcode15", "xcode16", "gpu"];
/// Links opened at once while connecting.
const CONNECT_CONCURRENCY: usize = 64;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

fn env_usize(name: &str, default: usize) -> usize {
    test_support::bench::env_number(name, default as u64) as usize
}

// ---- the server process ----

/// The `jnlp-lender serve` child; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Its last stderr lines, for diagnostics.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    fn start(bin: &Path, db: &str) -> Res<Server> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--name", "scale-bench"])
            .arg("--db")
            .arg(db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == 20 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("the server did not say where it listens: {}", server.tail()))?;
        server.addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// `VmRSS` and `VmHWM` in KiB.
    fn memory(&self) -> Res<(u64, u64)> {
        let field = |name: &str| match proc_status_kib(self.pid(), name) {
            0 => Err(format!("no {name} in /proc/PID/status")),
            kib => Ok(kib),
        };
        Ok((field("VmRSS")?, field("VmHWM")?))
    }

    /// `rchar` and `wchar` from `/proc/PID/io`.
    fn io(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((field("rchar:")?, field("wchar:")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release binary cargo built for this bench, else the one next to
/// the bench's own target directory, built if missing.
fn lender_binary() -> Res<PathBuf> {
    if let Some(path) = option_env!("CARGO_BIN_EXE_jnlp-lender") {
        if Path::new(path).is_file() {
            return Ok(path.into());
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/release/deps/scale-… → target/release/jnlp-lender
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let candidate = profile_dir.join("jnlp-lender");
    if !candidate.is_file() {
        eprintln!("building the release jnlp-lender…");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "jnlp-lender",
                "--bin",
                "jnlp-lender",
            ])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build: {status}"));
        }
    }
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!("no {}", candidate.display()))
    }
}

fn token_record(token: &str, kind: TokenKind, name: &str) -> TokenRecord {
    TokenRecord {
        hash: tokens::hash(token),
        principal: Principal {
            kind,
            name: name.into(),
        },
        created_ms: 0,
    }
}

// ---- fake agents ----

/// Totals over all fake agents.
#[derive(Debug, Default)]
struct Counters {
    /// Bytes written to / read from the agents' sockets.
    sent: AtomicU64,
    received: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    /// Text messages from the lender.
    messages: AtomicU64,
    borrows: AtomicU64,
    links_down: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A TCP stream that counts its bytes.
struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            bump(
                &this.counters.received,
                (buf.filled().len() - before) as u64,
            );
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            bump(&this.counters.sent, n as u64);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type Ws = WebSocketStream<Counted>;

struct AgentSpec {
    name: String,
    token: String,
    labels: [&'static str; 3],
    /// When its first ping goes out, after the link is up.
    ping_phase: Duration,
}

fn status(name: &str, borrower: Option<&str>) -> Status {
    let (placement, url) = match borrower {
        None => (Placement::Home, HOME),
        Some(url) => (Placement::Borrowed, url),
    };
    Status {
        placement,
        phase: Phase::Online,
        controller_url: Some(url.into()),
        node_name: Some(name.into()),
        home_url: Some(HOME.into()),
        ..Status::default()
    }
}

async fn send(ws: &mut Ws, message: &AgentMessage) -> Res<()> {
    ws.send(Message::text(control::to_json(message)))
        .await
        .map_err(|e| e.to_string())
}

/// Opens an agent's link, says hello and waits for the welcome.
async fn connect(addr: SocketAddr, spec: &AgentSpec, counters: Arc<Counters>) -> Res<Ws> {
    let mut request = format!("ws://{addr}{LINK_PATH}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", spec.token)
        .parse()
        .map_err(|_| "bad token header")?;
    request.headers_mut().insert("authorization", bearer);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = Counted {
        inner: tcp,
        counters,
    };
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let hello = AgentMessage::Hello {
        node: spec.name.clone(),
        labels: spec.labels.iter().map(|s| s.to_string()).collect(),
        version: "0.1.0-scale-bench".into(),
        status: status(&spec.name, None),
    };
    send(&mut ws, &hello).await?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
            Ok(LenderMessage::Welcome { .. }) => Ok(ws),
            _ => Err(format!("expected welcome, got {text}")),
        },
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

/// An idle agent: pings, and does what the lender asks.
async fn run_agent(mut ws: Ws, name: String, ping_phase: Duration, counters: Arc<Counters>) {
    let mut next_ping = tokio::time::Instant::now() + ping_phase;
    let mut borrower: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_ping) => {
                next_ping += PING_INTERVAL;
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                bump(&counters.pings, 1);
            }
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Pong(_))) => {
                        bump(&counters.pongs, 1);
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                bump(&counters.messages, 1);
                let Ok(LenderMessage::Request { id, request }) = serde_json::from_str(text.as_str()) else {
                    continue;
                };
                if answer(&mut ws, &name, &mut borrower, id, request, &counters).await.is_err() {
                    break;
                }
            }
        }
    }
    bump(&counters.links_down, 1);
}

async fn answer(
    ws: &mut Ws,
    name: &str,
    borrower: &mut Option<String>,
    id: u64,
    request: Request,
    counters: &Counters,
) -> Res<()> {
    let accepted = |message: &str| {
        Reply::Ok(Response::Accepted {
            message: message.into(),
        })
    };
    match request {
        Request::Borrow(borrow) => {
            bump(&counters.borrows, 1);
            let url = match &borrow.target {
                Target::Url { url } | Target::JnlpUrl { url } => url.clone(),
                _ => HOME.to_owned(),
            };
            *borrower = Some(url);
            let reply = accepted("online at the borrower");
            send(ws, &AgentMessage::Reply { id, reply }).await?;
            let status = status(name, borrower.as_deref());
            send(ws, &AgentMessage::Status { status }).await
        }
        Request::Return { .. } => {
            *borrower = None;
            send(
                ws,
                &AgentMessage::Reply {
                    id,
                    reply: accepted("home"),
                },
            )
            .await?;
            let status = status(name, None);
            send(ws, &AgentMessage::Status { status }).await
        }
        Request::Status => {
            let reply = Reply::Ok(Response::Status(status(name, borrower.as_deref())));
            send(ws, &AgentMessage::Reply { id, reply }).await
        }
        Request::Events => {
            let reply = Reply::error("events are streamed on the link anyway");
            send(ws, &AgentMessage::Reply { id, reply }).await
        }
    }
}

// ---- the HTTP API ----

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn metrics(&self) -> Res<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?;
        response
            .text()
            .await
            .map_err(|e| format!("GET /metrics: {e}"))
    }

    /// Waits until `metric` (a full sample name with labels) reaches `want`.
    async fn wait_metric(&self, metric: &str, want: f64, within: Duration) -> Res<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(text) = self.metrics().await {
                last = sample(&text, metric);
                if last.is_some_and(|v| v >= want) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {metric} = {want} (last {last:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One sample of the Prometheus text, e.g. `jnlp_lender_agent_links`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// A random requirement that the agent with these labels satisfies.
fn requirement(rng: &mut StdRng, labels: &[&str; 3]) -> String {
    let [os, arch, tool] = *labels;
    let others: Vec<&str> = TOOLS.iter().copied().filter(|t| *t != tool).collect();
    let other_tool = others[rng.gen_range(0..others.len())];
    let other_os = if os == "macos" { "linux" } else { "macos" };
    match rng.gen_range(0..6) {
        0 => os.to_owned(),
        1 => format!("{os} && {arch}"),
        2 => format!("{os} && {arch} && {tool}"),
        3 => format!("({tool} || {other_tool}) && {arch}"),
        4 => format!("{arch} && !{other_tool}"),
        _ => format!("{tool} && !{other_os}"),
    }
}

// ---- the run ----

#[derive(Debug, Default)]
struct Report {
    agents: usize,
    connect: Option<Duration>,
    rss_empty: Option<(u64, u64)>,
    rss_idle: Option<(u64, u64)>,
    rss_after: Option<(u64, u64)>,
    idle_window: Option<Duration>,
    idle_bytes: Option<(u64, u64)>,
    idle_frames: Option<(u64, u64, u64)>,
    idle_proc_io: Option<(u64, u64)>,
    lease_times: Vec<Duration>,
    lease_codes: Vec<u16>,
    /// `sqlite` or `postgres`.
    store: String,
    /// SIGKILL of the active lender → the standby answers the API.
    takeover: Option<Duration>,
    server_wait: Option<(f64, f64, f64)>,
    notes: Vec<String>,
}

fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn run(report: &mut Report) -> Res<()> {
    let agents = report.agents;
    let leases = env_usize("SCALE_LEASES", 200);
    let idle = Duration::from_secs(env_usize("SCALE_IDLE_SECS", 130) as u64);
    let mut rng = StdRng::seed_from_u64(9);

    let bin = lender_binary()?;
    let scratch = Scratch::new("lender-scale");
    let path = scratch.db();
    let pg = match report.store.as_str() {
        "sqlite" => None,
        "postgres" => Some(pg_support::TestPg::start_with(true)?),
        other => return Err(format!("SCALE_STORE={other}: sqlite or postgres")),
    };
    let db = match &pg {
        Some(pg) => pg.database("scale"),
        None => path.display().to_string(),
    };

    // Tokens, straight into the database.
    let client_token = tokens::generate(TokenKind::Client);
    let mut specs = Vec::with_capacity(agents);
    {
        let mut store: Box<dyn Store> = match &pg {
            Some(_) => Box::new(
                PgTarget::parse(&db, None)
                    .and_then(|target| PgStore::open(&target))
                    .map_err(|e| format!("db: {e}"))?,
            ),
            None => Box::new(SqliteStore::open(&path).map_err(|e| format!("db: {e}"))?),
        };
        store
            .add_token(&token_record(&client_token, TokenKind::Client, "bench"))
            .map_err(|e| format!("token: {e}"))?;
        for i in 0..agents {
            let name = format!("agent-{i:04}");
            let token = tokens::generate(TokenKind::Agent);
            store
                .add_token(&token_record(&token, TokenKind::Agent, &name))
                .map_err(|e| format!("token: {e}"))?;
            let labels = [
                OSES[rng.gen_range(0..OSES.len())],
                ARCHES[rng.gen_range(0..ARCHES.len())],
                TOOLS[rng.gen_range(0..TOOLS.len())],
            ];
            let ping_phase = PING_INTERVAL.mul_f64(rng.gen::<f64>());
            specs.push(AgentSpec {
                name,
                token,
                labels,
                ping_phase,
            });
        }
    }

    let server = Server::start(&bin, &db)?;
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(STEP_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?,
        base: format!("http://{}", server.addr),
        token: client_token,
    };
    api.wait_metric("jnlp_lender_agent_links", 0.0, STEP_TIMEOUT)
        .await
        .map_err(|e| format!("{e}; server: {}", server.tail()))?;
    report.rss_empty = server.memory().ok();

    // Connect the agents.
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = JoinSet::new();
    let mut failures = Vec::new();
    let addr = server.addr;
    let specs = Arc::new(specs);
    for i in 0..agents {
        let gate = gate.clone();
        let counters = counters.clone();
        let specs = specs.clone();
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let spec = &specs[i];
            let ws = timeout(STEP_TIMEOUT, connect(addr, spec, counters.clone()))
                .await
                .map_err(|_| format!("{}: link timed out", spec.name))??;
            tokio::spawn(run_agent(ws, spec.name.clone(), spec.ping_phase, counters));
            Ok::<(), String>(())
        });
    }
    while let Some(done) = connecting.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(err),
            Err(err) => failures.push(err.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} of {agents} links failed, e.g. {}; server: {}",
            failures.len(),
            failures[0],
            server.tail()
        ));
    }
    api.wait_metric(
        "jnlp_lender_agent_links",
        agents as f64,
        Duration::from_secs(60),
    )
    .await?;
    api.wait_metric(
        "jnlp_lender_agents{state=\"free\"}",
        agents as f64,
        Duration::from_secs(60),
    )
    .await?;
    report.connect = Some(started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.rss_idle = server.memory().ok();

    // Idle traffic.
    eprintln!(
        "{agents} agents linked; watching idle traffic for {} s…",
        idle.as_secs()
    );
    let frames = |c: &Counters| (get(&c.pings), get(&c.pongs), get(&c.messages));
    let bytes = |c: &Counters| (get(&c.sent), get(&c.received));
    let (b0, f0, io0) = (bytes(&counters), frames(&counters), server.io());
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let (b1, f1, io1) = (bytes(&counters), frames(&counters), server.io());
    report.idle_window = Some(t0.elapsed());
    report.idle_bytes = Some((b1.0 - b0.0, b1.1 - b0.1));
    report.idle_frames = Some((f1.0 - f0.0, f1.1 - f0.1, f1.2 - f0.2));
    if let (Some(a), Some(b)) = (io0, io1) {
        report.idle_proc_io = Some((b.0 - a.0, b.1 - a.1));
    }
    if get(&counters.links_down) > 0 {
        report.notes.push(format!(
            "{} links dropped while idle",
            get(&counters.links_down)
        ));
    }

    // Lease decisions.
    eprintln!("{leases} sequential leases…");
    for i in 0..leases {
        let spec = &specs[rng.gen_range(0..specs.len())];
        let body = serde_json::json!({
            "requirements": requirement(&mut rng, &spec.labels),
            "borrower": {
                "url": BORROWERS[i % BORROWERS.len()],
                "name": format!("lent-{i:04}"),
                "secret": "s3cr3t-borrower-node-secret",
                "transport": "web_socket",
            },
            "lease": "2h",
            "idle_return": "30m",
            "wait": "1m",
        });
        let sent = Instant::now();
        let response = api
            .http
            .post(format!("{}/v1/leases", api.base))
            .bearer_auth(&api.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let elapsed = sent.elapsed();
        match response {
            Ok(response) => {
                report.lease_codes.push(response.status().as_u16());
                report.lease_times.push(elapsed);
                let _ = response.bytes().await;
            }
            Err(err) => {
                report.notes.push(format!("lease {i}: {err}"));
                break;
            }
        }
    }
    let reserved = report.lease_codes.iter().filter(|c| **c == 201).count();
    if let Err(err) = api
        .wait_metric(
            "jnlp_lender_leases{state=\"active\"}",
            reserved as f64,
            Duration::from_secs(30),
        )
        .await
    {
        report.notes.push(err);
    }
    if let Ok(text) = api.metrics().await {
        let q = |q: &str| {
            sample(
                &text,
                &format!("jnlp_lender_lease_wait_seconds{{quantile=\"{q}\"}}"),
            )
        };
        if let (Some(a), Some(b), Some(c)) = (q("0.5"), q("0.9"), q("0.99")) {
            report.server_wait = Some((a, b, c));
        }
    }
    report.rss_after = server.memory().ok();
    if pg.is_some() {
        report.takeover = Some(takeover(&bin, &db, server, &api).await?);
    }
    Ok(())
}

/// Starts a standby on `db`, kills `active` with SIGKILL, and times until
/// the standby answers `GET /v1/agents` with 200 (the pool loaded from the
/// database).
async fn takeover(bin: &Path, db: &str, mut active: Server, api: &Api) -> Res<Duration> {
    let standby = Server::start(bin, db)?;
    let url = format!("http://{}/v1/agents", standby.addr);
    let get = || async {
        api.http
            .get(&url)
            .bearer_auth(&api.token)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let status = get().await;
    if status != 503 {
        return Err(format!("the standby answered {status}, not 503"));
    }
    let _ = active.child.kill();
    let killed = Instant::now();
    let _ = active.child.wait();
    loop {
        if get().await == 200 {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err(format!("no takeover in 30 s: {}", standby.tail()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print(report: &Report) {
    let n = report.agents;
    let na = || "n/a".to_owned();
    let row = |what: &str, value: String| println!("{what:<46} {value}");
    println!();
    println!(
        "jnlp-lender at scale: {n} agents linked to a `serve` process, on {}",
        report.store
    );
    row(
        "links up (connect + hello + welcome, 64 at once)",
        report
            .connect
            .map_or_else(na, |d| format!("{:.2} s", d.as_secs_f64())),
    );
    let memory = |m: Option<(u64, u64)>| {
        m.map_or_else(na, |(rss, hwm)| {
            format!("VmRSS {} VmHWM {}", mib(rss), mib(hwm))
        })
    };
    row("server memory, no agents", memory(report.rss_empty));
    row(
        &format!("server memory, {n} agents idle"),
        memory(report.rss_idle),
    );
    if let (Some((empty, _)), Some((idle, _))) = (report.rss_empty, report.rss_idle) {
        row(
            "  per linked agent (RSS delta)",
            format!("{:.1} KiB", idle.saturating_sub(empty) as f64 / n as f64),
        );
    }
    row("server memory, after the leases", memory(report.rss_after));
    if let (Some(window), Some((sent, received)), Some((pings, pongs, messages))) =
        (report.idle_window, report.idle_bytes, report.idle_frames)
    {
        let minutes = window.as_secs_f64() / 60.0;
        row(
            &format!(
                "idle traffic over {:.0} s (WebSocket bytes)",
                window.as_secs_f64()
            ),
            format!("agents→lender {sent} B, lender→agents {received} B"),
        );
        row(
            "  frames in the window",
            format!("{pings} pings, {pongs} pongs, {messages} lender messages"),
        );
        row(
            "  per agent per minute",
            format!(
                "{:.1} B ({:.2} pings; design: 1 ping + 1 pong = 6 + 2 B)",
                (sent + received) as f64 / minutes / n as f64,
                pings as f64 / minutes / n as f64
            ),
        );
    }
    if let (Some(window), Some((rchar, wchar))) = (report.idle_window, report.idle_proc_io) {
        let minutes = window.as_secs_f64() / 60.0;
        row(
            "  server /proc/PID/io, per agent-minute",
            format!(
                "rchar {:.1} B, wchar {:.1} B (recv() not counted)",
                rchar as f64 / minutes / n as f64,
                wchar as f64 / minutes / n as f64
            ),
        );
    }
    let mut times = report.lease_times.clone();
    times.sort();
    if !times.is_empty() {
        let count = |code| report.lease_codes.iter().filter(|c| **c == code).count();
        let other = times.len() - count(201) - count(202);
        row(
            &format!("POST /v1/leases → response, {} sequential", times.len()),
            format!(
                "p50 {} p99 {} max {} ({} × 201, {} × 202, {other} other)",
                ms(percentile(&times, 50)),
                ms(percentile(&times, 99)),
                ms(times[times.len() - 1]),
                count(201),
                count(202)
            ),
        );
        row(
            "  (HTTP/1.1 keep-alive on loopback included)",
            String::new(),
        );
    }
    row(
        "server: request → active (/metrics summary)",
        report.server_wait.map_or_else(na, |(a, b, c)| {
            format!(
                "p50 {:.0} ms p90 {:.0} ms p99 {:.0} ms",
                a * 1e3,
                b * 1e3,
                c * 1e3
            )
        }),
    );
    if let Some(takeover) = report.takeover {
        row("takeover: SIGKILL → standby answers (200)", ms(takeover));
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let agents = env_usize("SCALE_AGENTS", 1_000);
    let needed = agents as u64 + 300;
    if let Some(limit) = nofile_limit() {
        if limit < needed {
            eprintln!(
                "scale bench: the open-files limit is {limit}, {needed} are needed: \
                 run `ulimit -n 4096` first"
            );
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("scale bench: runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let store = std::env::var("SCALE_STORE").unwrap_or_else(|_| "sqlite".into());
    if store == "postgres" && pg_support::bin_dir().is_none() {
        eprintln!(
            "scale bench: SCALE_STORE=postgres skipped: PostgreSQL is not installed \
             (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
        );
        return ExitCode::SUCCESS;
    }
    let mut report = Report {
        agents,
        store,
        ..Report::default()
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&mut report) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    // The agents' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    print(&report);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scale bench: {err}");
            ExitCode::FAILURE
        }
    }
}
