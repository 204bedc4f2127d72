//! The windowed benchmark: remoting's flow control (at most a 1 MiB window
//! of unacked bytes per stream, 8 KiB writes, an ack per command) through
//! the agent's bridge, next to agent.jar's path, in one run.
//!
//! Both sides are real: the engine is `tests/java/WindowedEngine.java` on a
//! JVM, the controller side is `testkit::windowed` behind the test
//! controller's JNLP4 port.
//!
//! - **bridge**: the agent (`jnlp-agent -url ... -name ... -secret ...`)
//!   downloads the jar the test controller serves as `remoting.jar` and runs
//!   it as its stdio engine, with the agent's own JVM defaults;
//! - **direct** (the baseline, agent.jar's equivalent): the same jar with
//!   `-direct`, doing JNLP4-connect and TLS in Java, plain `java -jar`; or
//!   with `-websocket`, a WebSocket in Java.
//!
//! Both run side by side, each against its own test controller, and the
//! transfers alternate between them (bridge, direct; controller → engine,
//! engine → controller), so background load hits both alike. Reported:
//! median throughput each way, PING round trips under a running stream
//! (p50/p99: the ack path), idle round trips, CPU seconds per GiB (the
//! agent's, the JVM's, and the test controllers', i.e. this process's) from
//! `/proc/PID/stat`, idle RSS (agent and every
//! process under it, i.e. the engine JVM; the direct JVM), and bridge ÷
//! direct; and the CPU-bound ceiling of bridge ÷ direct (see `ceiling`).
//!
//! Last, each of issue 10's goals, met or not on this run (one run is
//! noisy: judge over several).
//!
//! `cargo bench -p jnlp-agent --bench windowed` (builds in release; needs a
//! JDK). Environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_BYTES` | 268435456 (256 MiB) | bytes per transfer |
//! | `BENCH_RUNS` | 3 | transfers per direction and path |
//! | `BENCH_WARMUP` | min(BENCH_BYTES, 32 MiB) | unmeasured transfer each way first (JIT) |
//! | `BENCH_PING_MS` | 5 | PING interval during transfers (0: none) |
//! | `BENCH_WINDOW` | 1048576 | the controller side's window when it sends |
//! | `BENCH_JAVA_OPTS` | none | JVM options for both JVMs (`JENKINS_JAVA_OPTS` for the agent), e.g. `-Dhudson.remoting.Channel.pipeWindowSize=4194304` for the engine's window |
//! | `BENCH_AGENT_JAVA_OPTS` | unset | the agent's engine only (`JENKINS_JAVA_OPTS`, replacing the agent's own JVM defaults); `none` passes an empty one |
//! | `BENCH_TRANSPORT` | tcp | `websocket`: both paths reach the controller over a WebSocket, the agent with `-webSocket`, the direct JVM with the JDK's WebSocket client (as agent.jar's `-webSocket` does with Tyrus) |
//! | `BENCH_TIMEOUT_S` | 300 | limit per transfer |
//! | `BENCH_RTT_MS` | 0 | a round trip added in front of both controllers' ports, for both paths (`testkit::delay_line`: half each way; this kernel has no `netem`) |
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::AgentProcess;
use testkit::delay_line::DelayLine;
use testkit::windowed::{self, Direction, Session, TransferConfig};
use testkit::TestController;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NODE: &str = "windowed";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Before idle memory is read: the JVM settles after start-up or a transfer.
const SETTLE: Duration = Duration::from_secs(3);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    test_support::bench::block_on(run());
}

use test_support::bench::env_number as env_u64;

#[derive(Debug, Clone)]
struct Settings {
    bytes: u64,
    runs: usize,
    warmup: u64,
    ping_every: Option<Duration>,
    window: u64,
    java_opts: Vec<String>,
    agent_java_opts: Option<String>,
    web_socket: bool,
    timeout: Duration,
    /// Added each way in front of the controllers' ports.
    one_way: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let bytes = env_u64("BENCH_BYTES", 256 << 20);
        let ping_ms = env_u64("BENCH_PING_MS", 5);
        Self {
            bytes,
            runs: env_u64("BENCH_RUNS", 3).max(1) as usize,
            warmup: env_u64("BENCH_WARMUP", bytes.min(32 << 20)),
            ping_every: (ping_ms > 0).then(|| Duration::from_millis(ping_ms)),
            window: env_u64("BENCH_WINDOW", windowed::DEFAULT_WINDOW),
            java_opts: std::env::var("BENCH_JAVA_OPTS")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
            agent_java_opts: std::env::var("BENCH_AGENT_JAVA_OPTS").ok().map(|o| {
                if o.trim() == "none" {
                    String::new()
                } else {
                    o
                }
            }),
            web_socket: std::env::var("BENCH_TRANSPORT").is_ok_and(|t| t == "websocket"),
            timeout: Duration::from_secs(env_u64("BENCH_TIMEOUT_S", 300)),
            one_way: Duration::from_micros(env_u64("BENCH_RTT_MS", 0) * 500),
        }
    }

    fn transfer(&self, direction: Direction, bytes: u64) -> TransferConfig {
        let mut config = TransferConfig::new(direction, bytes);
        config.window = self.window;
        config.ping_every = self.ping_every;
        config.deadline = self.timeout;
        config
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Bridge,
    Direct,
}

/// The process under test.
enum Process {
    Agent(AgentProcess),
    Java {
        child: tokio::process::Child,
        pid: u32,
        stderr: PathBuf,
    },
    /// It did not start.
    Missing(String),
}

impl Process {
    /// Its pid, taken at spawn (never 0 or 1: those are no process of ours).
    fn root(&self) -> Option<u32> {
        let pid = match self {
            Process::Agent(agent) => agent.pid(),
            Process::Java { pid, .. } => *pid,
            Process::Missing(_) => 0,
        };
        (pid > 1).then_some(pid)
    }

    /// The tail of what it logged, for a failure report.
    fn log_tail(&self) -> String {
        let text = match self {
            Process::Agent(agent) => agent.log(),
            Process::Java { stderr, .. } => std::fs::read_to_string(stderr).unwrap_or_default(),
            Process::Missing(reason) => reason.clone(),
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

#[derive(Debug, Default, Clone)]
struct Run {
    mb_per_s: f64,
    agent_cpu_per_gib: f64,
    engine_cpu_per_gib: f64,
    controller_cpu_per_gib: f64,
    round_trips: Vec<Duration>,
}

#[derive(Debug, Default)]
struct Results {
    connect: Option<Duration>,
    /// (agent, engine) KiB.
    idle_rss: Option<(u64, u64)>,
    idle_rss_after: Option<(u64, u64)>,
    idle_round_trips: Vec<Duration>,
    to_engine: Vec<Run>,
    to_controller: Vec<Run>,
    failure: Option<String>,
}

/// One path under test: its controller, its process, its session.
struct Contender {
    path: Path,
    controller: TestController,
    process: Process,
    session: Option<Session>,
    results: Results,
    /// In front of the web and agent ports, with `BENCH_RTT_MS`.
    _delay_lines: Vec<DelayLine>,
}

impl Contender {
    async fn start(
        path: Path,
        jar: &[u8],
        jar_file: &std::path::Path,
        settings: &Settings,
    ) -> Self {
        let (peer, mut sessions) = windowed::peer();
        let controller = TestController::builder()
            .node(NODE, SECRET)
            .remoting_jar(jar.to_vec())
            .peer(peer)
            .start()
            .await;
        // Both ports behind a delay line when a round trip is asked for
        // (zero: the controller's own ports).
        let (web, agent_port, delay_lines) = if settings.one_way.is_zero() {
            (controller.http_addr(), controller.agent_addr(), Vec::new())
        } else {
            let web = DelayLine::start(controller.http_addr(), settings.one_way).await;
            let agent = DelayLine::start(controller.agent_addr(), settings.one_way).await;
            (web.addr(), agent.addr(), vec![web, agent])
        };
        let url = format!("http://{web}/");
        let tunnel = agent_port.to_string();
        let started = Instant::now();
        let process = match path {
            Path::Bridge => {
                let opts = match &settings.agent_java_opts {
                    Some(opts) => Some(opts.clone()),
                    None => (!settings.java_opts.is_empty()).then(|| settings.java_opts.join(" ")),
                };
                let mut envs = Vec::new();
                if let Some(opts) = &opts {
                    envs.push(("JENKINS_JAVA_OPTS", opts.as_str()));
                }
                // No class-sharing archive: its background dump would land
                // in the middle of a transfer (benches/engine_start.rs
                // measures it).
                let mut args = vec![
                    "-url",
                    &url,
                    "-name",
                    NODE,
                    "-secret",
                    SECRET,
                    "--no-class-sharing",
                ];
                if settings.web_socket {
                    args.push("-webSocket");
                } else if !delay_lines.is_empty() {
                    args.extend(["-tunnel", &tunnel]);
                }
                Process::Agent(AgentProcess::start(&args, &envs))
            }
            Path::Direct => {
                let stderr = common::temp_dir("windowed-direct").join("stderr.txt");
                let target = if settings.web_socket {
                    let ws = format!("ws://{web}/wsagents/");
                    vec!["-websocket".to_owned(), ws]
                } else {
                    let port = agent_port.port().to_string();
                    vec!["-direct".to_owned(), "127.0.0.1".to_owned(), port]
                };
                let child = std::fs::File::create(&stderr).and_then(|log| {
                    tokio::process::Command::new("java")
                        .args(&settings.java_opts)
                        .arg("-jar")
                        .arg(jar_file)
                        .args(&target)
                        .args([NODE, SECRET])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(log)
                        .kill_on_drop(true)
                        .spawn()
                });
                match child {
                    Ok(child) => Process::Java {
                        pid: child.id().unwrap_or_default(),
                        child,
                        stderr,
                    },
                    Err(err) => Process::Missing(format!("java does not start: {err}")),
                }
            }
        };
        let mut contender = Self {
            path,
            controller,
            process,
            session: None,
            results: Results::default(),
            _delay_lines: delay_lines,
        };
        if let Process::Missing(reason) = &contender.process {
            let reason = reason.clone();
            contender.fail(reason);
            return contender;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, sessions.recv()).await {
            Ok(Some(session)) => {
                contender.results.connect = Some(started.elapsed());
                contender.session = Some(session);
            }
            Ok(None) | Err(_) => contender.fail(format!(
                "timed out connecting (no channel within {CONNECT_TIMEOUT:?})"
            )),
        }
        contender
    }

    fn fail(&mut self, reason: String) {
        eprintln!(
            "{:?}: {reason}\n  last log lines:\n{}",
            self.path,
            self.process.log_tail()
        );
        self.results.failure.get_or_insert(reason);
        self.session = None;
    }

    /// The agent's pid (bridge only) and every process under the root: the
    /// engine JVM (the direct JVM is the root itself).
    fn pids(&self) -> (Option<u32>, Vec<u32>) {
        let Some(root) = self.process.root() else {
            return (None, Vec::new());
        };
        let mut engines = common::proc_descendants(root);
        match self.path {
            Path::Bridge => (Some(root), engines),
            Path::Direct => {
                engines.push(root);
                (None, engines)
            }
        }
    }

    /// (agent, engine) resident KiB.
    fn rss(&self) -> (u64, u64) {
        let (agent, engines) = self.pids();
        (
            agent.map_or(0, |pid| common::proc_status_kib(pid, "VmRSS")),
            engines
                .iter()
                .map(|&pid| common::proc_status_kib(pid, "VmRSS"))
                .sum(),
        )
    }

    /// (agent, engine) CPU seconds so far.
    fn cpu(&self) -> (f64, f64) {
        let (agent, engines) = self.pids();
        (
            agent.map_or(0.0, common::proc_cpu_seconds),
            engines
                .iter()
                .map(|&pid| common::proc_cpu_seconds(pid))
                .sum(),
        )
    }

    /// One transfer; a failure is recorded and ends this contender's runs.
    async fn transfer(&mut self, config: &TransferConfig, record: bool) {
        let (agent_before, engine_before) = self.cpu();
        let controller_before = common::proc_cpu_seconds(std::process::id());
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.transfer(config).await {
            Ok(report) => {
                let (agent_after, engine_after) = self.cpu();
                let controller_after = common::proc_cpu_seconds(std::process::id());
                let gib = report.bytes as f64 / GIB;
                let run = Run {
                    mb_per_s: report.mb_per_s(),
                    agent_cpu_per_gib: (agent_after - agent_before) / gib,
                    engine_cpu_per_gib: (engine_after - engine_before) / gib,
                    controller_cpu_per_gib: (controller_after - controller_before) / gib,
                    round_trips: report.round_trips,
                };
                println!(
                    "  {:?} {}: {} MiB in {:.2} s = {:.0} MB/s, agent CPU {:.2} s/GiB, JVM CPU {:.2} s/GiB, controller CPU {:.2} s/GiB, {} pings p99 {}{}",
                    self.path,
                    config.direction,
                    report.bytes >> 20,
                    report.elapsed.as_secs_f64(),
                    run.mb_per_s,
                    run.agent_cpu_per_gib,
                    run.engine_cpu_per_gib,
                    run.controller_cpu_per_gib,
                    run.round_trips.len(),
                    ms(percentile(&run.round_trips, 0.99)),
                    if record { "" } else { " (warm-up)" },
                );
                if record {
                    match config.direction {
                        Direction::ToEngine => self.results.to_engine.push(run),
                        Direction::ToController => self.results.to_controller.push(run),
                    }
                }
            }
            Err(err) => self.fail(format!("{} {}", config.direction, err)),
        }
    }

    async fn idle_round_trips(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session
            .round_trips(100, Duration::from_millis(5), Duration::from_secs(30))
            .await
        {
            Ok(times) => self.results.idle_round_trips = times,
            Err(err) => self.fail(format!("idle pings: {err}")),
        }
    }

    /// Ends everything, bounded: the agent by SIGTERM (it stops its engine),
    /// the direct JVM by QUIT; then SIGKILL for whatever is left.
    async fn stop(self) -> Results {
        let Contender {
            path: _,
            controller,
            mut process,
            session,
            results,
            _delay_lines,
        } = self;
        let mut leftovers = Vec::new();
        if let Some(root) = process.root() {
            leftovers = common::proc_descendants(root);
            leftovers.push(root);
        }
        match &mut process {
            Process::Agent(_) => {
                if let Some(root) = process.root() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(root as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                drop(session);
            }
            Process::Java { .. } | Process::Missing(_) => {
                if let Some(session) = session {
                    session.quit().await;
                }
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while leftovers.iter().any(|&pid| common::alive(pid)) && Instant::now() < deadline {
            if let Process::Java { child, .. } = &mut process {
                let _ = child.try_wait();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pid in leftovers {
            if common::alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        drop(process);
        let _ = tokio::time::timeout(STOP_TIMEOUT, controller.shutdown()).await;
        results
    }
}

async fn run() {
    let settings = Settings::from_env();
    println!(
        "windowed benchmark: {} MiB per transfer, {} runs each way, warm-up {} MiB, window {} KiB, {} KiB writes, pings every {}",
        settings.bytes >> 20,
        settings.runs,
        settings.warmup >> 20,
        settings.window >> 10,
        windowed::DEFAULT_WRITE >> 10,
        settings
            .ping_every
            .map_or("(none)".to_owned(), |d| format!("{} ms", d.as_millis())),
    );
    if !settings.java_opts.is_empty() {
        println!("JVM options: {}", settings.java_opts.join(" "));
    }
    if settings.web_socket {
        println!("both connect over a WebSocket (the agent with -webSocket, the direct JVM with the JDK's client)");
    }
    if let Some(opts) = &settings.agent_java_opts {
        println!("the agent's engine JVM options: {opts:?}");
    }
    if !settings.one_way.is_zero() {
        println!(
            "round trip added in front of both controllers: {} ms",
            (settings.one_way * 2).as_millis()
        );
    }
    let Some(jar) = common::java_windowed_engine_jar() else {
        println!("windowed benchmark: no JDK (javac/jar) to build the engine; skipped");
        return;
    };
    let jar_file = common::temp_dir("windowed-jar").join("windowed.jar");
    std::fs::write(&jar_file, &jar).expect("jar written");

    let mut bridge = Contender::start(Path::Bridge, &jar, &jar_file, &settings).await;
    let mut direct = Contender::start(Path::Direct, &jar, &jar_file, &settings).await;
    if let Process::Agent(agent) = &bridge.process {
        // What the agent measured and chose (its JVM options are its own
        // unless BENCH_*JAVA_OPTS replace them).
        let ready = agent
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|v| v["fields"]["message"] == "engine ready");
        if let Some(ready) = ready {
            let fields = &ready["fields"];
            println!(
                "the agent's engine: window {} (round trip measured: {} us)",
                fields["window"], fields["round_trip_us"]
            );
        }
    }
    tokio::time::sleep(SETTLE).await;
    for contender in [&mut bridge, &mut direct] {
        if contender.session.is_some() {
            contender.results.idle_rss = Some(contender.rss());
        }
    }
    bridge.idle_round_trips().await;
    direct.idle_round_trips().await;

    let directions = [Direction::ToEngine, Direction::ToController];
    if settings.warmup > 0 {
        for direction in directions {
            let config = settings.transfer(direction, settings.warmup);
            bridge.transfer(&config, false).await;
            direct.transfer(&config, false).await;
        }
    }
    for run in 0..settings.runs {
        // Alternate which path goes first.
        for direction in directions {
            let config = settings.transfer(direction, settings.bytes);
            if run % 2 == 0 {
                bridge.transfer(&config, true).await;
                direct.transfer(&config, true).await;
            } else {
                direct.transfer(&config, true).await;
                bridge.transfer(&config, true).await;
            }
        }
    }
    tokio::time::sleep(SETTLE).await;
    for contender in [&mut bridge, &mut direct] {
        if contender.session.is_some() {
            contender.results.idle_rss_after = Some(contender.rss());
        }
    }
    let bridge = bridge.stop().await;
    let direct = direct.stop().await;
    report(&settings, &bridge, &direct);
}

fn report(settings: &Settings, bridge: &Results, direct: &Results) {
    println!();
    println!(
        "windowed: {} MiB x {} runs each way; medians; ratio = bridge / direct, ping rows: bridge p99 - direct p99",
        settings.bytes >> 20,
        settings.runs
    );
    row(
        "",
        "bridge (agent)".into(),
        "direct (agent.jar-like)".into(),
        "ratio (p99 diff)".into(),
    );
    for (direction, b, d) in [
        (Direction::ToEngine, &bridge.to_engine, &direct.to_engine),
        (
            Direction::ToController,
            &bridge.to_controller,
            &direct.to_controller,
        ),
    ] {
        let (bt, dt) = (
            median(b.iter().map(|r| r.mb_per_s)),
            median(d.iter().map(|r| r.mb_per_s)),
        );
        row(
            &format!("{direction} MB/s"),
            or_failed(bt.map(|v| format!("{v:.0}")), b, bridge),
            or_failed(dt.map(|v| format!("{v:.0}")), d, direct),
            ratio(bt, dt),
        );
    }
    for (direction, b, d) in [
        (Direction::ToEngine, &bridge.to_engine, &direct.to_engine),
        (
            Direction::ToController,
            &bridge.to_controller,
            &direct.to_controller,
        ),
    ] {
        let (bp, dp) = (pooled(b), pooled(d));
        row(
            &format!("ping under {direction} p50/p99 ms"),
            p50_p99(&bp),
            p50_p99(&dp),
            p99_diff(&bp, &dp),
        );
    }
    row(
        "ping idle p50/p99 ms",
        p50_p99(&bridge.idle_round_trips),
        p50_p99(&direct.idle_round_trips),
        p99_diff(&bridge.idle_round_trips, &direct.idle_round_trips),
    );
    for (direction, b, d) in [
        (Direction::ToEngine, &bridge.to_engine, &direct.to_engine),
        (
            Direction::ToController,
            &bridge.to_controller,
            &direct.to_controller,
        ),
    ] {
        let cpu = |runs: &[Run], of: fn(&Run) -> f64| median(runs.iter().map(of));
        let engine = cpu(d, |r| r.engine_cpu_per_gib);
        cpu_row(
            &format!("agent CPU s/GiB, {direction}"),
            cpu(b, |r| r.agent_cpu_per_gib),
            None,
        );
        cpu_row(
            &format!("JVM CPU s/GiB, {direction}"),
            cpu(b, |r| r.engine_cpu_per_gib),
            engine,
        );
        cpu_row(
            &format!("agent+JVM CPU s/GiB, {direction}"),
            cpu(b, |r| r.agent_cpu_per_gib + r.engine_cpu_per_gib),
            engine,
        );
        cpu_row(
            &format!("test controller CPU s/GiB, {direction}"),
            cpu(b, |r| r.controller_cpu_per_gib),
            cpu(d, |r| r.controller_cpu_per_gib),
        );
    }
    for (direction, b, d) in [
        (Direction::ToEngine, &bridge.to_engine, &direct.to_engine),
        (
            Direction::ToController,
            &bridge.to_controller,
            &direct.to_controller,
        ),
    ] {
        let ceiling = ceiling(b, d);
        let busy = |share: fn(&Ceiling) -> f64| {
            ceiling
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0}%", share(c) * 100.0))
        };
        row(
            &format!("cores kept busy, {direction}"),
            busy(|c| c.bridge_busy),
            busy(|c| c.direct_busy),
            String::new(),
        );
        row(
            &format!("CPU-bound ceiling of the ratio, {direction}"),
            String::new(),
            String::new(),
            ceiling.map_or(String::new(), |c| format!("<= {:.2}x", c.ratio)),
        );
    }
    for (label, b, d) in [
        (
            "idle RSS MiB, agent+JVM, at start",
            bridge.idle_rss,
            direct.idle_rss,
        ),
        (
            "idle RSS MiB, agent+JVM, after runs",
            bridge.idle_rss_after,
            direct.idle_rss_after,
        ),
    ] {
        let mib = |kib: u64| kib as f64 / 1024.0;
        row(
            label,
            b.map_or("-".into(), |(a, e)| {
                format!("{:.1}+{:.1}={:.1}", mib(a), mib(e), mib(a + e))
            }),
            d.map_or("-".into(), |(_, e)| format!("{:.1}", mib(e))),
            ratio(b.map(|(a, e)| mib(a + e)), d.map(|(a, e)| mib(a + e))),
        );
    }
    row(
        "start to channel up, s",
        bridge
            .connect
            .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
        direct
            .connect
            .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
        ratio(
            bridge.connect.map(|d| d.as_secs_f64()),
            direct.connect.map(|d| d.as_secs_f64()),
        ),
    );
    for (name, results) in [("bridge", bridge), ("direct", direct)] {
        if let Some(failure) = &results.failure {
            println!("{name}: {failure}");
        }
    }
    goals(bridge, direct);
}

/// Issue 10's goals, judged on this run: met, not met, or not measured.
fn goals(bridge: &Results, direct: &Results) {
    println!();
    println!("goals (this run):");
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    for (direction, b, d) in [
        (Direction::ToEngine, &bridge.to_engine, &direct.to_engine),
        (
            Direction::ToController,
            &bridge.to_controller,
            &direct.to_controller,
        ),
    ] {
        let r = median(b.iter().map(|r| r.mb_per_s))
            .zip(median(d.iter().map(|r| r.mb_per_s)))
            .map(|(b, d)| b / d);
        println!(
            "  throughput {direction} >= 1.1x direct: {} ({}; {})",
            verdict(r.map(|r| r >= 1.1)),
            r.map_or("-".into(), |r| format!("{r:.2}x")),
            ceiling(b, d).map_or("-".into(), |c| format!(
                "1.1x needs {:.0}% of the cores busy, the bridge kept {:.0}%, direct {:.0}%",
                110.0 / c.ratio,
                c.bridge_busy * 100.0,
                c.direct_busy * 100.0
            )),
        );
        let diff = percentile(&pooled(b), 0.99)
            .zip(percentile(&pooled(d), 0.99))
            .map(|(b, d)| (b.as_secs_f64() - d.as_secs_f64()) * 1e3);
        println!(
            "  p99 round trip under a stream {direction} <= direct + 1 ms: {} ({})",
            verdict(diff.map(|ms| ms <= 1.0)),
            diff.map_or("-".into(), |ms| format!("{ms:+.2} ms"))
        );
        let cpu = median(b.iter().map(|r| r.agent_cpu_per_gib));
        println!(
            "  agent CPU {direction} <= 0.5 s/GiB: {} ({})",
            verdict(cpu.map(|c| c <= 0.5)),
            cpu.map_or("-".into(), |c| format!("{c:.2} s/GiB"))
        );
    }
    let rss = bridge
        .idle_rss
        .map(|(agent, engine)| (agent + engine) as f64 / 1024.0);
    println!(
        "  idle RSS, agent + engine < 60 MiB: {} ({})",
        verdict(rss.map(|mib| mib < 60.0)),
        rss.map_or("-".into(), |mib| format!("{mib:.1} MiB"))
    );
}

/// What the machine allows: the most the bridge's throughput could be, as a
/// multiple of the direct path's, if its processes kept every core busy at
/// the CPU per GiB they spent (cores ÷ (bridge CPU per GiB, all three
/// processes, × direct GiB per second)); and the share of the cores each
/// path kept busy (GiB per second × CPU per GiB ÷ cores). Both paths are
/// bound by CPU here, so a ratio of 1.1 needs the bridge to keep 1.1 ÷
/// ceiling of the cores busy: near or above what either path manages, the
/// goal needs less CPU per byte, not better scheduling.
struct Ceiling {
    ratio: f64,
    bridge_busy: f64,
    direct_busy: f64,
}

fn ceiling(bridge: &[Run], direct: &[Run]) -> Option<Ceiling> {
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    let total = |r: &Run| r.agent_cpu_per_gib + r.engine_cpu_per_gib + r.controller_cpu_per_gib;
    let gib_per_s = |runs: &[Run]| median(runs.iter().map(|r| r.mb_per_s)).map(|mb| mb * 1e6 / GIB);
    let (bridge_cpu, direct_cpu) = (
        median(bridge.iter().map(total))?,
        median(direct.iter().map(total))?,
    );
    let (bridge_rate, direct_rate) = (gib_per_s(bridge)?, gib_per_s(direct)?);
    (bridge_cpu > 0.0 && direct_rate > 0.0).then(|| Ceiling {
        ratio: cores / (bridge_cpu * direct_rate),
        bridge_busy: bridge_rate * bridge_cpu / cores,
        direct_busy: direct_rate * direct_cpu / cores,
    })
}

/// A cell's text, or why it is empty ("timed out" or "failed").
fn or_failed(value: Option<String>, runs: &[Run], results: &Results) -> String {
    match (value, &results.failure) {
        (Some(v), Some(_)) => format!("{v} ({} runs)", runs.len()),
        (Some(v), None) => v,
        (None, Some(failure)) if failure.contains("timed out") => "timed out".into(),
        (None, Some(_)) => "failed".into(),
        (None, None) => "-".into(),
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The round trips of all runs together.
fn pooled(runs: &[Run]) -> Vec<Duration> {
    runs.iter()
        .flat_map(|r| r.round_trips.iter().copied())
        .collect()
}

/// Nearest-rank percentile.
fn percentile(times: &[Duration], p: f64) -> Option<Duration> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

fn p50_p99(times: &[Duration]) -> String {
    match (percentile(times, 0.5), percentile(times, 0.99)) {
        (Some(p50), Some(p99)) => format!(
            "{:.2} / {:.2}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        _ => "-".into(),
    }
}

/// p99 of the bridge minus p99 of the direct path.
fn p99_diff(bridge: &[Duration], direct: &[Duration]) -> String {
    match (percentile(bridge, 0.99), percentile(direct, 0.99)) {
        (Some(b), Some(d)) => format!("{:+.2} ms p99", (b.as_secs_f64() - d.as_secs_f64()) * 1e3),
        _ => String::new(),
    }
}

/// One row of the report: label, bridge, direct, ratio.
fn row(label: &str, b: String, d: String, ratio: String) {
    println!("{label:<42} {b:>24} {d:>24} {ratio:>16}");
}

/// A row of CPU seconds per GiB: bridge, direct (`-` when it has none of
/// this kind) and their ratio.
fn cpu_row(label: &str, bridge: Option<f64>, direct: Option<f64>) {
    let seconds = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    row(
        label,
        seconds(bridge),
        seconds(direct),
        ratio(bridge, direct),
    );
}

fn ratio(bridge: Option<f64>, direct: Option<f64>) -> String {
    match (bridge, direct) {
        (Some(b), Some(d)) if d > 0.0 => format!("{:.2}x", b / d),
        _ => String::new(),
    }
}
