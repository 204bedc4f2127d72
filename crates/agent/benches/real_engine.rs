//! The agent running a real `remoting.jar` as its engine, side by side with
//! `java -jar agent.jar` (the same jar) on the same controller, whose side
//! of each channel is remoting's own stack.
//!
//! `BENCH_ENGINE_JAR=/path/to/remoting.jar cargo bench -p jnlp-agent --bench
//! real_engine` (needs a JDK). Without `BENCH_ENGINE_JAR` it says so and
//! measures nothing: the tests' engines are too small to show these figures.
//!
//! The test controller does discovery and JNLP4-connect; each accepted
//! channel is handed, in stdio framing, to a `benches/java/RealController`
//! JVM (compiled against the given jar) which drives it with remoting's
//! `ChannelBuilder`, as a controller does: ten remote calls of a callable
//! whose class the agent side loads from the controller, then 128 MiB
//! streams through remoting `Pipe`s each way.
//!
//! Measured per contender, contenders alternating within each round:
//! - throughput of each stream (MB/s, 10^6 bytes per second);
//! - build-machine CPU for those bytes (user + system seconds from
//!   `/proc/PID/stat`: the agent and its engine JVM, or agent.jar's JVM);
//! - idle RSS (`VmRSS`) a few seconds after the controller's first calls,
//!   and again after the last round (a later engine, after the streams);
//! - reconnect: the controller drops the channel, then the time until the
//!   next channel has answered its first call (the agent's warm engine, or
//!   agent.jar reconnecting in its running JVM). Each channel gets a
//!   `RealController` JVM of its own, so this includes that JVM's start and
//!   its side of the class loading (a real controller's JVM is warm): an
//!   upper bound, comparable between contenders only. agent.jar waits
//!   remoting's own 10 s before it reconnects.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ENGINE_JAR` | unset (skip) | a real remoting.jar |
//! | `BENCH_RUNS` | 5 | rounds; medians and ranges are over them |
//! | `BENCH_BYTES` | 134217728 | bytes per stream |
//! | `BENCH_RECONNECT` | 1 | `0`: no reconnect between rounds (one channel, one engine, through all of them) |
//! | `BENCH_SETTLE` | 3 | seconds a contender idles before its idle RSS is read |
//! | `BENCH_VARIANTS` | unset | more agent contenders, `label=JVM options` separated by `;`, each run with those options as `JENKINS_JAVA_OPTS` (the user's options, which replace the agent's defaults) |
//! | `BENCH_AGENT_BINS` | unset | more agent contenders, `label=path` separated by `;`: another build of the agent (e.g. the previous commit's), with its own defaults |
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod java_controller;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::AgentProcess;
use testkit::{Channel, Peer, TestController};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const LONG: Duration = Duration::from_secs(120);
/// How long a contender idles after the first calls before its RSS is
/// read, unless `BENCH_SETTLE` (seconds) says otherwise.
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    test_support::bench::block_on(run());
}

/// What drives one contender's channel: the line protocol of
/// `RealController` over loopback.
struct Driver {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Driver {
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(LONG, listener.accept())
            .await
            .expect("the controller's JVM connects back within the deadline")
            .expect("accept");
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        Self {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// Sends `command`, returns the numbers of its `ok` answer.
    async fn ask(&mut self, command: &str) -> Vec<u64> {
        self.write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(LONG, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{command}: no answer within {LONG:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("{command}: the controller's JVM went away"));
        let rest = line
            .strip_prefix("ok")
            .unwrap_or_else(|| panic!("{command}: {line}"));
        rest.split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Agent,
    AgentJar,
}

/// One contender and what it measured.
struct Contender {
    label: String,
    kind: Kind,
    node: String,
    java_opts: Option<String>,
    /// Another agent binary than the one built for this bench.
    bin: Option<PathBuf>,
    root: u32,
    _agent: Option<AgentProcess>,
    _jar: Option<tokio::process::Child>,
    driver: Option<Driver>,
    down: Vec<f64>,
    up: Vec<f64>,
    cpu_down: Vec<f64>,
    cpu_up: Vec<f64>,
    reconnect: Vec<f64>,
    first_calls: Vec<u64>,
    idle_rss: (u64, u64),
    /// The same after the last round's reconnect: a later engine, the
    /// agent's buffers after the streams.
    idle_rss_after: (u64, u64),
}

impl Contender {
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.root];
        pids.extend(test_support::procfs::proc_descendants(self.root));
        pids
    }

    /// CPU seconds of the contender's processes, the exited ones that were
    /// waited for included: an engine or helper that ends mid-stream moves
    /// its time into its parent's instead of out of the sum.
    fn cpu(&self) -> f64 {
        self.pids().into_iter().map(cpu_with_children).sum()
    }

    /// (the process started, its descendants) resident KiB.
    fn rss(&self) -> (u64, u64) {
        let rss = |pid| test_support::procfs::proc_status_kib(pid, "VmRSS");
        let rest = test_support::procfs::proc_descendants(self.root)
            .into_iter()
            .map(rss)
            .sum();
        (rss(self.root), rest)
    }

    fn driver(&mut self) -> &mut Driver {
        self.driver.as_mut().expect("connected")
    }

    /// One stream, `up` (agent → controller) or down; returns MB/s and CPU
    /// seconds per GiB.
    async fn stream(&mut self, up: bool, bytes: u64) {
        let before = self.cpu();
        let ms = self
            .driver()
            .ask(&format!("{} {bytes}", if up { "up" } else { "down" }))
            .await[0];
        let cpu = (self.cpu() - before) / (bytes as f64 / GIB);
        let mb_per_s = bytes as f64 / 1e6 / (ms.max(1) as f64 / 1e3);
        println!(
            "  {:<12} {}: {:.0} MB/s, {:.2} CPU s/GiB",
            self.label,
            if up {
                "agent -> controller"
            } else {
                "controller -> agent"
            },
            mb_per_s,
            cpu
        );
        if up {
            self.up.push(mb_per_s);
            self.cpu_up.push(cpu);
        } else {
            self.down.push(mb_per_s);
            self.cpu_down.push(cpu);
        }
    }

    /// The controller drops the channel; returns when the next one has
    /// answered its first call.
    async fn reconnect(&mut self, controller: &TestController, listener: &TcpListener) {
        let start = Instant::now();
        assert!(
            controller.disconnect(&self.node),
            "{} was online",
            self.node
        );
        self.driver = None;
        let mut driver = Driver::accept(listener).await;
        driver.ask("calls").await;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  {:<12} reconnect to first call answered: {:.0} ms",
            self.label,
            secs * 1e3
        );
        self.reconnect.push(secs);
        self.driver = Some(driver);
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// utime + stime + cutime + cstime of `pid`, in seconds.
fn cpu_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

/// Hands an accepted channel to a `RealController` JVM of its own, on its
/// stdin and stdout.
async fn relay(channel: Channel, java_cp: String, port: u16) {
    let mut child = tokio::process::Command::new("java")
        .args(["-XX:+UseSerialGC", "-cp", &java_cp, "RealController"])
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("java runs RealController");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    java_controller::relay(channel, None, stdout, stdin).await;
    let _ = child.kill().await;
}

fn stats(values: &[f64], scale: f64, digits: usize) -> String {
    let mut v: Vec<f64> = values.iter().map(|x| x * scale).collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => {
            format!("{:.d$} ({:.d$}-{:.d$})", v[v.len() / 2], lo, hi, d = digits)
        }
        _ => "-".into(),
    }
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

async fn run() {
    let Some(jar_path) = std::env::var_os("BENCH_ENGINE_JAR").map(PathBuf::from) else {
        println!(
            "real_engine: skipped: set BENCH_ENGINE_JAR to a real remoting.jar \
             (built from jenkinsci/remoting, or a controller's jnlpJars/remoting.jar)"
        );
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let bytes: u64 = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128 * 1024 * 1024);
    let settle = std::env::var("BENCH_SETTLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SETTLE, Duration::from_secs);
    // `BENCH_RECONNECT=0`: one channel through all rounds, as a channel
    // that lives for days carries a controller's builds (the engine, like
    // agent.jar's JVM, warms up across rounds).
    let reconnect_each_round = std::env::var("BENCH_RECONNECT").as_deref() != Ok("0");
    let jar = std::fs::read(&jar_path).expect("BENCH_ENGINE_JAR is readable");
    let classes = java_controller::compile(&jar_path, "benches/java/RealController.java");
    let java_cp = format!("{}:{}", jar_path.display(), classes.display());

    let mut contenders: Vec<Contender> = Vec::new();
    let mut add = |label: &str, kind, java_opts: Option<String>, bin: Option<PathBuf>| {
        contenders.push(Contender {
            label: label.into(),
            kind,
            node: format!("node-{}", contenders.len()),
            java_opts,
            bin,
            root: 0,
            _agent: None,
            _jar: None,
            driver: None,
            down: vec![],
            up: vec![],
            cpu_down: vec![],
            cpu_up: vec![],
            reconnect: vec![],
            first_calls: vec![],
            idle_rss: (0, 0),
            idle_rss_after: (0, 0),
        })
    };
    add("agent", Kind::Agent, None, None);
    add("agent.jar", Kind::AgentJar, None, None);
    for spec in std::env::var("BENCH_VARIANTS")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((label, opts)) = spec.split_once('=') {
            add(
                label.trim(),
                Kind::Agent,
                Some(opts.trim().to_owned()),
                None,
            );
        }
    }
    for spec in std::env::var("BENCH_AGENT_BINS")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((label, path)) = spec.split_once('=') {
            add(label.trim(), Kind::Agent, None, Some(path.trim().into()));
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut builder = TestController::builder()
        .remoting_jar(jar)
        .peer(Peer::script(move |ch| relay(ch, java_cp.clone(), port)));
    for c in &contenders {
        builder = builder.node(&c.node, SECRET);
    }
    let controller = builder.start().await;
    let url = controller.url();
    println!(
        "real engine: {}, {} MiB streams, {} rounds, load {}",
        jar_path.display(),
        bytes >> 20,
        runs,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // One at a time, so that each control connection is known to be its own.
    for c in &mut contenders {
        match c.kind {
            Kind::Agent => {
                let mut envs = vec![];
                if let Some(opts) = &c.java_opts {
                    envs.push(("JENKINS_JAVA_OPTS", opts.as_str()));
                }
                // `AgentProcess` runs `JNLP_AGENT_BIN` when set; this
                // bench starts one agent at a time.
                let default_bin = std::env::var_os("JNLP_AGENT_BIN");
                if let Some(bin) = &c.bin {
                    std::env::set_var("JNLP_AGENT_BIN", bin);
                }
                let agent = AgentProcess::start(
                    &["-url", &url, "-name", &c.node, "-secret", SECRET],
                    &envs,
                );
                match &default_bin {
                    Some(bin) => std::env::set_var("JNLP_AGENT_BIN", bin),
                    None => std::env::remove_var("JNLP_AGENT_BIN"),
                }
                c.root = agent.pid();
                c._agent = Some(agent);
            }
            Kind::AgentJar => {
                let work = common::temp_dir("agent-jar");
                let child = tokio::process::Command::new("java")
                    .arg("-jar")
                    .arg(&jar_path)
                    .args(["-url", &url, "-name", &c.node, "-secret", SECRET])
                    .arg("-workDir")
                    .arg(&work)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("java -jar agent.jar starts");
                c.root = child.id().unwrap();
                c._jar = Some(child);
            }
        }
        let mut driver = Driver::accept(&listener).await;
        c.first_calls = driver.ask("calls").await;
        c.driver = Some(driver);
        tokio::time::sleep(settle).await;
        c.idle_rss = c.rss();
        println!(
            "  {:<12} first calls: first {} ms, ten {} ms; idle RSS {:.1} + {:.1} MiB",
            c.label,
            c.first_calls[0],
            c.first_calls[1],
            c.idle_rss.0 as f64 / 1024.0,
            c.idle_rss.1 as f64 / 1024.0
        );
    }

    for round in 0..runs {
        println!("round {} of {runs}:", round + 1);
        for c in &mut contenders {
            c.stream(false, bytes).await;
            c.stream(true, bytes).await;
        }
        if reconnect_each_round {
            for c in &mut contenders {
                c.reconnect(&controller, &listener).await;
            }
        }
    }

    tokio::time::sleep(settle).await;
    for c in &mut contenders {
        c.idle_rss_after = c.rss();
        println!(
            "  {:<12} idle RSS after the streams {:.1} + {:.1} MiB",
            c.label,
            c.idle_rss_after.0 as f64 / 1024.0,
            c.idle_rss_after.1 as f64 / 1024.0
        );
    }

    let base = contenders
        .iter()
        .position(|c| c.kind == Kind::AgentJar)
        .unwrap();
    let (jar_down, jar_up, jar_cpu_down, jar_cpu_up, jar_rss) = {
        let b = &contenders[base];
        (
            b.down.clone(),
            b.up.clone(),
            b.cpu_down.clone(),
            b.cpu_up.clone(),
            b.idle_rss.0 + b.idle_rss.1,
        )
    };
    println!(
        "\nmedian (range) over {runs} rounds, {} MiB per stream:",
        bytes >> 20
    );
    for c in &contenders {
        println!("{}:", c.label);
        println!(
            "  controller -> agent {} MB/s, {} x agent.jar; CPU {} s/GiB, {} x",
            stats(&c.down, 1.0, 0),
            stats(&ratios(&c.down, &jar_down), 1.0, 2),
            stats(&c.cpu_down, 1.0, 2),
            stats(&ratios(&c.cpu_down, &jar_cpu_down), 1.0, 2)
        );
        println!(
            "  agent -> controller {} MB/s, {} x agent.jar; CPU {} s/GiB, {} x",
            stats(&c.up, 1.0, 0),
            stats(&ratios(&c.up, &jar_up), 1.0, 2),
            stats(&c.cpu_up, 1.0, 2),
            stats(&ratios(&c.cpu_up, &jar_cpu_up), 1.0, 2)
        );
        let rss = c.idle_rss.0 + c.idle_rss.1;
        println!(
            "  idle RSS after the first calls {:.1} MiB ({:.1} + {:.1}), {:.2} x agent.jar; first call {} ms",
            rss as f64 / 1024.0,
            c.idle_rss.0 as f64 / 1024.0,
            c.idle_rss.1 as f64 / 1024.0,
            rss as f64 / jar_rss as f64,
            c.first_calls[0]
        );
        let after = c.idle_rss_after.0 + c.idle_rss_after.1;
        println!(
            "  idle RSS after the streams {:.1} MiB ({:.1} + {:.1})",
            after as f64 / 1024.0,
            c.idle_rss_after.0 as f64 / 1024.0,
            c.idle_rss_after.1 as f64 / 1024.0,
        );
        println!(
            "  reconnect to first call answered {} ms",
            stats(&c.reconnect, 1e3, 0)
        );
    }
    controller.shutdown().await;
}
