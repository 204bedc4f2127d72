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
//! agent.jar has no counterpart: it cannot be repointed (a new controller
//! means a new `java -jar agent.jar` process, a cold JVM).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ENGINE_JAR` | unset (skip) | a real remoting.jar |
//! | `BENCH_RUNS` | 5 | measured moves each way per contender |
//! | `BENCH_WARMUP` | 2 | unmeasured moves each way first |
//! | `BENCH_VARIANTS` | unset | more contenders, `label=ARGS` separated by `;`: ARGS are agent options and `NAME=VALUE` environment variables (`~` in a value stands for a space), split on spaces |
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::AgentProcess;
use remoting_protocol::capability::Capability;
use remoting_protocol::preamble::{self, PreambleReader};
use testkit::{Channel, Peer, TestController};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    async fn start(label: &str, nodes: &[String], jar: &[u8], java_cp: &str) -> Self {
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jvm = tokio::process::Command::new("java")
            .args(["-XX:+UseSerialGC", "-cp", java_cp, "WarmController"])
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
    let Channel {
        node,
        framed,
        kicked,
    } = channel;
    let parts = framed.into_parts();
    let (mut net_read, mut net_write) = tokio::io::split(parts.io);
    let jvm = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    jvm.set_nodelay(true).unwrap();
    let (mut jvm_read, mut jvm_write) = jvm.into_split();
    let early = parts.read_buf;
    let to_jvm = async move {
        jvm_write.write_all(format!("{node}\n").as_bytes()).await?;
        jvm_write
            .write_all(&preamble::encode(Capability::CURRENT))
            .await?;
        jvm_write.write_all(&early).await?;
        tokio::io::copy(&mut net_read, &mut jvm_write).await
    };
    let from_jvm = async move {
        let mut reader = PreambleReader::new();
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        loop {
            if jvm_read.read_buf(&mut buf).await? == 0 {
                return Ok(0);
            }
            if reader
                .feed(&mut buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .is_some()
            {
                break;
            }
        }
        net_write.write_all(&buf).await?;
        tokio::io::copy(&mut jvm_read, &mut net_write).await
    };
    tokio::select! {
        _ = kicked.cancelled() => {}
        _ = to_jvm => {}
        _ = from_jvm => {}
    }
}

fn compile(jar: &Path) -> PathBuf {
    let classes = common::temp_dir("warm-controller");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/java/WarmController.java");
    let compiled = std::process::Command::new("javac")
        .args(["-nowarn", "-cp"])
        .arg(jar)
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .status()
        .expect("javac runs");
    assert!(
        compiled.success(),
        "WarmController does not compile against {jar:?}: is it a remoting.jar?"
    );
    classes
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
            control::Request::Borrow(control::BorrowRequest {
                target: control::Target::Url {
                    url: borrower_url.to_owned(),
                },
                name: node.clone(),
                secret: Some(SECRET.into()),
                secret_file: None,
                lease: None,
                idle_return: None,
                when: control::When::Now,
                wait: None,
                transport: None,
            })
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

fn stats(values: &[f64]) -> String {
    let mut v: Vec<f64> = values.iter().map(|x| x * 1e3).collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{:.0} ({lo:.0}-{hi:.0})", v[v.len() / 2]),
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
    let classes = compile(&jar_path);
    let java_cp = format!("{}:{}", jar_path.display(), classes.display());

    let mut specs: Vec<(String, Vec<String>)> = vec![("agent".into(), vec![])];
    for spec in std::env::var("BENCH_VARIANTS")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((label, args)) = spec.split_once('=') {
            specs.push((
                label.trim().into(),
                args.split_whitespace().map(str::to_owned).collect(),
            ));
        }
    }
    let homes: Vec<String> = (0..specs.len()).map(|i| format!("home-{i}")).collect();
    let aways: Vec<String> = (0..specs.len()).map(|i| format!("away-{i}")).collect();
    let mut sides = [
        Side::start("home", &homes, &jar, &java_cp).await,
        Side::start("borrower", &aways, &jar, &java_cp).await,
    ];
    let home_url = sides[0].controller.url();
    let borrower_url = sides[1].controller.url();
    println!(
        "real repoint: {}, {runs} measured moves each way after {warmup}, load {}",
        jar_path.display(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let mut contenders = Vec::new();
    for (i, (label, extra)) in specs.into_iter().enumerate() {
        let mut args = vec![
            "-url".to_owned(),
            home_url.clone(),
            "-name".into(),
            homes[i].clone(),
            "-secret".into(),
            SECRET.into(),
        ];
        let mut envs = Vec::new();
        for word in extra {
            match word.split_once('=') {
                Some((name, value)) if !name.starts_with('-') => {
                    envs.push((name.to_owned(), value.replace('~', " ")))
                }
                _ => args.push(word),
            }
        }
        let warm = !args.iter().any(|a| a == "--no-warm-engine");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent = AgentProcess::start(&args, &envs);
        let contender = Contender {
            label,
            home: homes[i].clone(),
            away: aways[i].clone(),
            agent,
            warm,
            times: Default::default(),
        };
        // Online at home, first calls answered, before any move.
        sides[0].until_online(&contender.home).await;
        contender.settle(control::Placement::Home).await;
        contenders.push(contender);
    }

    println!(
        "  {:<10} {:<6} {:>5} {:>5} {:>5} {:>5} (ms: order -> handshake -> channel up -> first call answered -> online)",
        "", "", "hs", "up", "first", "all"
    );
    for round in 0..warmup + runs {
        let record = round >= warmup;
        for borrow in [true, false] {
            for c in &mut contenders {
                c.step(borrow, &mut sides, &borrower_url, record).await;
            }
        }
    }

    println!("\nmedian (range) over {runs} moves each way, ms:");
    for c in &contenders {
        for (way, steps) in ["borrow --now", "return --now"].iter().zip(&c.times) {
            println!(
                "{:<10} {way}: online {}; order -> handshake {}, -> channel up {}, -> first call answered {}, -> all answered {}",
                c.label,
                stats(&totals(steps)),
                stats(&steps[0]),
                stats(&steps[1]),
                stats(&steps[2]),
                stats(&steps[3]),
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
}
