//! The repoint with a real `remoting.jar` as the engine: `borrow --now`
//! until the borrower shows the node online, and `return --now` until home
//! does, the way a Jenkins controller decides "online": after its first
//! calls on the new channel are answered.
//!
//! `BENCH_ENGINE_JAR=/path/to/remoting.jar cargo bench -p jnlp-agent --bench
//! real_repoint` (needs a JDK). Without `BENCH_ENGINE_JAR` it says so and
//! measures nothing.
//!
//! Two test controllers (home and borrower) do discovery and JNLP4-connect;
//! every channel each accepts is handed over a loopback socket to that
//! controller's one long-lived `benches/java/WarmController` JVM (warmed up
//! by unmeasured moves first, as a real controller's JVM is warm), which
//! builds the channel with remoting's `ChannelBuilder` and makes the first
//! calls Jenkins' `SlaveComputer.setChannel` makes: callables whose classes
//! the agent side loads from the controller. Engines are warm, the agent's
//! default: the borrower's is started when the order is checked, home's
//! while the agent is lent (each return waits until it is ready, as an
//! agent lent for a while has it). Between moves the agent and its engines
//! are let go quiet (as between real moves, which are minutes apart).
//!
//! Each move is timed from the order on the control socket to: the
//! handshake done (the controller accepted the channel), the channel up
//! (the controller's remoting side built it), the first call answered, and
//! all first calls answered (online). Contenders alternate move by move.
//!
//! Two modes: one agent per contender moving back and forth (the steady
//! state: every engine after the first minute has its class-data archive
//! whatever the version), or, with `BENCH_FRESH`, new agents each round
//! (fresh work directories) whose first borrow comes `BENCH_AGE` after they
//! came online at home: what a move shortly after the agent started costs.
//!
//! agent.jar has no counterpart: it cannot be repointed (a new controller
//! means a new `java -jar agent.jar` process, a cold JVM).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ENGINE_JAR` | unset (skip) | a real remoting.jar |
//! | `BENCH_RUNS` | 5 | measured moves each way per contender |
//! | `BENCH_WARMUP` | 2 | unmeasured moves each way first |
//! | `BENCH_FRESH` | unset | new agents each round (one borrow and one return each) |
//! | `BENCH_AGE` | 10 | with `BENCH_FRESH`: seconds online at home before the borrow |
//! | `BENCH_VARIANTS` | unset | more contenders, `label=ARGS` separated by `;`: ARGS are agent options, `NAME=VALUE` environment variables (`~` in a value stands for a space) and `bin=PATH` (another build of the agent, e.g. the previous version), split on spaces |
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod java_controller;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::AgentProcess;
use testkit::{Channel, Peer, TestController};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const LONG: Duration = Duration::from_secs(120);

fn main() {
    test_support::bench::block_on(run());
}

/// What a controller side saw of a node's new channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// The handshake is done: the test controller accepted the channel.
    Handshake,
    /// The controller's remoting side built the channel.
    Up,
    /// The first call was answered.
    First,
    /// All first calls were answered: the node is online.
    Online,
}

type Seen = (String, Result<Mark, String>, Instant);

/// One test controller and its warm controller JVM.
struct Side {
    controller: TestController,
    seen: mpsc::UnboundedReceiver<Seen>,
    _jvm: tokio::process::Child,
}

impl Side {
    async fn start(label: &str, nodes: &[String], jar: &[u8], java_cp: &str, fs: &Path) -> Self {
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jvm = tokio::process::Command::new("java")
            .arg("-XX:+UseSerialGC")
            .arg(format!("-Dbench.fs={}", fs.display()))
            .args(["-cp", java_cp, "WarmController"])
            .arg(control.local_addr().unwrap().port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // remoting logs each channel's end there.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("java runs WarmController");
        let (stream, _) = tokio::time::timeout(LONG, control.accept())
            .await
            .expect("the controller's JVM connects back")
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        let first = lines.next_line().await.unwrap().unwrap_or_default();
        let port: u16 = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{label}'s controller JVM said {first:?}"));
        let (tx, seen) = mpsc::unbounded_channel();
        let reports = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                let mut words = line.splitn(3, ' ');
                let (what, node) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let mark = match what {
                    "up" => Ok(Mark::Up),
                    "first" => Ok(Mark::First),
                    "online" => Ok(Mark::Online),
                    _ => Err(line.clone()),
                };
                let _ = reports.send((node.to_owned(), mark, at));
            }
        });
        let mut builder = TestController::builder()
            .remoting_jar(jar.to_vec())
            .peer(Peer::script(move |ch| relay(ch, port, tx.clone())));
        for node in nodes {
            builder = builder.node(node, SECRET);
        }
        Self {
            controller: builder.start().await,
            seen,
            _jvm: jvm,
        }
    }

    /// Forgets what was seen before an order.
    fn clear(&mut self) {
        while self.seen.try_recv().is_ok() {}
    }

    /// The times of `node`'s marks until it is online.
    async fn until_online(&mut self, node: &str) -> [Instant; 4] {
        let mut at = [None; 4];
        let deadline = Instant::now() + LONG;
        while at[3].is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (who, mark, when) = tokio::time::timeout(left, self.seen.recv())
                .await
                .unwrap_or_else(|_| panic!("{node} not online within {LONG:?}"))
                .expect("the controller side runs");
            if who != node {
                continue;
            }
            match mark {
                Ok(mark) => {
                    let slot = &mut at[mark as usize];
                    slot.get_or_insert(when);
                }
                Err(line) if at[0].is_some() => panic!("{node}: {line}"),
                // An earlier channel of this node ending.
                Err(_) => {}
            }
        }
        at.map(|t| t.expect("every mark before online"))
    }
}

/// Hands an accepted channel to the controller JVM: the node's name, our
/// capability preamble, then the chunk stream both ways.
async fn relay(channel: Channel, port: u16, seen: mpsc::UnboundedSender<Seen>) {
    let _ = seen.send((channel.node.clone(), Ok(Mark::Handshake), Instant::now()));
    let node = channel.node.clone();
    let jvm = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    jvm.set_nodelay(true).unwrap();
    let (jvm_read, jvm_write) = jvm.into_split();
    java_controller::relay(channel, Some(node), jvm_read, jvm_write).await;
}

/// How to start one contender's agent.
struct Spec {
    label: String,
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Spec {
    fn parse(label: &str, words: &str) -> Self {
        let mut spec = Spec {
            label: label.into(),
            bin: common::agent_bin(),
            args: vec![],
            envs: vec![],
        };
        for word in words.split_whitespace() {
            match word.split_once('=') {
                Some(("bin", path)) => spec.bin = path.into(),
                Some((name, value)) if !name.starts_with('-') => {
                    spec.envs.push((name.to_owned(), value.replace('~', " ")))
                }
                _ => spec.args.push(word.to_owned()),
            }
        }
        spec
    }
}

/// One agent and its moves.
struct Contender {
    label: String,
    home: String,
    away: String,
    agent: AgentProcess,
    /// Whether it keeps warm engines (`--no-warm-engine` not given).
    warm: bool,
    /// Per move direction (borrow, return): per step, seconds.
    times: [[Vec<f64>; 4]; 2],
}

impl Contender {
    /// Starts `spec`'s agent at home as `home`, online there and settled.
    async fn start(
        spec: &Spec,
        home: &str,
        away: &str,
        home_url: &str,
        sides: &mut [Side; 2],
    ) -> Self {
        let mut args = vec!["-url", home_url, "-name", home, "-secret", SECRET];
        args.extend(spec.args.iter().map(String::as_str));
        let envs: Vec<(&str, &str)> = spec
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        sides[0].clear();
        let agent = AgentProcess::start_bin(&spec.bin, common::temp_dir("work"), &args, &envs);
        let contender = Contender {
            label: spec.label.clone(),
            home: home.into(),
            away: away.into(),
            agent,
            warm: !spec.args.iter().any(|a| a == "--no-warm-engine"),
            times: Default::default(),
        };
        // Online at home, first calls answered, before any move.
        sides[0].until_online(home).await;
        contender.settle(control::Placement::Home).await;
        contender
    }

    /// Ends the agent and removes its work directory.
    fn end(self) -> [[Vec<f64>; 4]; 2] {
        let Contender { agent, times, .. } = self;
        let work = agent.work_dir.clone();
        drop(agent);
        let _ = std::fs::remove_dir_all(work);
        times
    }

    async fn status(&self) -> control::Status {
        let Ok(mut client) = control::client::connect(&self.agent.socket()).await else {
            return control::Status::default();
        };
        match client.request(control::Request::Status).await {
            Ok(control::Response::Status(status)) => status,
            _ => control::Status::default(),
        }
    }

    /// Until online at `placement`, moved and recorded, with the engine for
    /// the next move ready when one is kept (home's, while lent).
    async fn settle(&self, placement: control::Placement) {
        let deadline = Instant::now() + LONG;
        loop {
            let status = self.status().await;
            let warm_ready =
                !self.warm || placement == control::Placement::Home || status.warm_engine.is_some();
            if status.phase == control::Phase::Online
                && status.placement == placement
                && !status.awaiting_first_call
                && warm_ready
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not settled at {placement:?}: {status:?}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.quiet().await;
    }

    /// Until the agent and its processes use under 3% of a core over
    /// 300 ms (JIT compilers and archive dumps of the last move done).
    async fn quiet(&self) {
        let root = self.agent.pid();
        let cpu = || {
            let mut pids = vec![root];
            pids.extend(test_support::procfs::proc_descendants(root));
            pids.into_iter()
                .map(test_support::procfs::proc_cpu_seconds)
                .sum::<f64>()
        };
        let window = Duration::from_millis(300);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let before = cpu();
            tokio::time::sleep(window).await;
            if cpu() - before < 0.03 * window.as_secs_f64() {
                return;
            }
        }
    }

    /// One move; returns the step times when `record`.
    async fn step(
        &mut self,
        borrow: bool,
        sides: &mut [Side; 2],
        borrower_url: &str,
        record: bool,
    ) {
        let (to, node) = if borrow {
            (&mut sides[1], self.away.clone())
        } else {
            (&mut sides[0], self.home.clone())
        };
        to.clear();
        let request = if borrow {
            common::lending::borrow_now(borrower_url.to_owned(), &node, SECRET, None)
        } else {
            control::Request::Return {
                when: control::When::Now,
                wait: None,
            }
        };
        let mut client = control::client::connect(&self.agent.socket())
            .await
            .unwrap();
        let ordered = Instant::now();
        let answer = client.request(request).await;
        assert!(
            matches!(answer, Ok(control::Response::Accepted { .. })),
            "{}: {answer:?}",
            self.label
        );
        let marks = to.until_online(&node).await;
        let mut last = ordered;
        let mut line = format!(
            "  {:<10} {:<6}",
            self.label,
            if borrow { "borrow" } else { "return" }
        );
        for (i, at) in marks.into_iter().enumerate() {
            let secs = at.saturating_duration_since(last).as_secs_f64();
            last = at.max(last);
            line.push_str(&format!(" {:>5.0}", secs * 1e3));
            if record {
                self.times[usize::from(!borrow)][i].push(secs);
            }
        }
        let total = last.duration_since(ordered).as_secs_f64();
        println!(
            "{line}  = {:>4.0} ms{}",
            total * 1e3,
            if record { "" } else { " (warm-up)" }
        );
        self.settle(if borrow {
            control::Placement::Borrowed
        } else {
            control::Placement::Home
        })
        .await;
    }
}

fn stats(values: &[f64], scale: f64, digits: usize) -> String {
    let mut v: Vec<f64> = values.iter().map(|x| x * scale).collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => {
            let n = v.len();
            let median = (v[(n - 1) / 2] + v[n / 2]) / 2.0;
            format!("{median:.d$} ({lo:.d$}-{hi:.d$})", d = digits)
        }
        _ => "-".into(),
    }
}

fn totals(steps: &[Vec<f64>; 4]) -> Vec<f64> {
    (0..steps[0].len())
        .map(|i| steps.iter().map(|s| s[i]).sum())
        .collect()
}

async fn run() {
    let Some(jar_path) = std::env::var_os("BENCH_ENGINE_JAR").map(PathBuf::from) else {
        println!(
            "real_repoint: skipped: set BENCH_ENGINE_JAR to a real remoting.jar \
             (built from jenkinsci/remoting, or a controller's jnlpJars/remoting.jar)"
        );
        return;
    };
    let env_number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env_number("BENCH_RUNS", 5);
    let warmup = env_number("BENCH_WARMUP", 2);
    let jar = std::fs::read(&jar_path).expect("BENCH_ENGINE_JAR is readable");
    let classes = java_controller::compile(&jar_path, "benches/java/WarmController.java");
    let java_cp = format!("{}:{}", jar_path.display(), classes.display());

    let fresh = std::env::var_os("BENCH_FRESH").is_some();
    let age = Duration::from_secs(env_number("BENCH_AGE", 10) as u64);
    let mut specs = vec![Spec::parse("agent", "")];
    for spec in std::env::var("BENCH_VARIANTS")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((label, words)) = spec.split_once('=') {
            specs.push(Spec::parse(label.trim(), words));
        }
    }
    let homes: Vec<String> = (0..specs.len()).map(|i| format!("home-{i}")).collect();
    let aways: Vec<String> = (0..specs.len()).map(|i| format!("away-{i}")).collect();
    // The nodes' remote FS roots, made by the first calls.
    let fs = common::temp_dir("remote-fs");
    let mut sides = [
        Side::start("home", &homes, &jar, &java_cp, &fs).await,
        Side::start("borrower", &aways, &jar, &java_cp, &fs).await,
    ];
    let home_url = sides[0].controller.url();
    let borrower_url = sides[1].controller.url();
    println!(
        "real repoint: {}, {runs} measured moves each way after {warmup}{}, load {}",
        jar_path.display(),
        if fresh {
            format!(", a new agent each round, borrowing {age:?} after it came online")
        } else {
            String::new()
        },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "  {:<10} {:<6} {:>5} {:>5} {:>5} {:>5} (ms: order -> handshake -> channel up -> first call answered -> online)",
        "", "", "hs", "up", "first", "all"
    );
    let mut times: Vec<[[Vec<f64>; 4]; 2]> = specs.iter().map(|_| Default::default()).collect();
    let mut contenders = Vec::new();
    for round in 0..warmup + runs {
        let record = round >= warmup;
        if contenders.is_empty() {
            let started = Instant::now();
            for (i, spec) in specs.iter().enumerate() {
                contenders.push(
                    Contender::start(spec, &homes[i], &aways[i], &home_url, &mut sides).await,
                );
            }
            if fresh {
                tokio::time::sleep(age.saturating_sub(started.elapsed())).await;
            }
        }
        for borrow in [true, false] {
            for c in &mut contenders {
                c.step(borrow, &mut sides, &borrower_url, record).await;
            }
        }
        if fresh {
            for (i, c) in contenders.drain(..).enumerate() {
                for (way, steps) in c.end().into_iter().enumerate() {
                    for (step, values) in steps.into_iter().enumerate() {
                        times[i][way][step].extend(values);
                    }
                }
            }
        }
    }
    for (i, c) in contenders.drain(..).enumerate() {
        times[i] = c.end();
    }

    println!("\nmedian (range) over {runs} moves each way, ms; x agent: the same move's total over the first contender's, paired by round:");
    for (spec, mine) in specs.iter().zip(&times) {
        for (way, label) in ["borrow --now", "return --now"].iter().enumerate() {
            let steps = &mine[way];
            let paired: Vec<f64> = totals(steps)
                .iter()
                .zip(totals(&times[0][way]))
                .map(|(a, b)| a / b)
                .collect();
            println!(
                "{:<10} {label}: online {} ({} x agent); order -> handshake {}, -> channel up {}, -> first call answered {}, -> all answered {}",
                spec.label,
                stats(&totals(steps), 1e3, 0),
                stats(&paired, 1.0, 2),
                stats(&steps[0], 1e3, 0),
                stats(&steps[1], 1e3, 0),
                stats(&steps[2], 1e3, 0),
                stats(&steps[3], 1e3, 0),
            );
        }
    }
    println!(
        "load after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for side in sides {
        side.controller.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(classes);
    let _ = std::fs::remove_dir_all(fs);
}
