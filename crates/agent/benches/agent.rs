//! End-to-end figures (docs/performance.md), through the real binary, the test
//! controller and the fake engine on loopback:
//!
//! - bridge throughput, controller → engine, engine → controller, and both
//!   at once (echo);
//! - JNLP4-connect handshake time (TCP + ACK + TLS + headers + capability);
//! - the agent's own resident memory, idle and at its peak under load;
//! - repoint latency: from `borrow` with `now` on the control socket to the
//!   node online at the borrower, and back (fake engine, so this is the
//!   agent's own time); plus a JVM's start-up to first output, the part a
//!   real engine adds;
//! - leaving: the overlap of a move (online at the new controller until
//!   offline at the old one: the remoting-level close and its answer), and
//!   SIGTERM to the node offline as the controller sees it;
//! - repoints with the test suite's Java engine through the production
//!   launch path, with and without warm engines.
//!
//! `cargo bench -p jnlp-agent --bench agent` (builds everything in release).
//! `BENCH_BYTES` sets the transfer size (default 1 GiB); `BENCH_ONLY=throughput`
//! runs only the transfers (over TCP and over a WebSocket).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fake_engine, AgentProcess};
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::handshake::{connect, HandshakeConfig};
use remoting_protocol::Chunk;
use testkit::{Channel, Peer, TestController};
use tokio::sync::oneshot;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const CHUNK: usize = 8192;

fn main() {
    test_support::bench::block_on(run());
}

async fn run() {
    let total: usize = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    println!(
        "transfer size: {} MiB, chunks of {CHUNK} bytes",
        total >> 20
    );

    if std::env::var("BENCH_ONLY").as_deref() != Ok("throughput") {
        timings().await;
    }
    for web_socket in [false, true] {
        let over = if web_socket {
            "WebSocket"
        } else {
            "TCP (JNLP4)"
        };
        let (rate, idle, peak) = transfer("sink", total, Flow::ToEngine, web_socket).await;
        println!(
            "{over}: controller -> engine: {rate:.0} MB/s   agent RSS idle {idle} KiB, peak {peak} KiB"
        );
        let (rate, idle, peak) = transfer(
            &format!("source {total}"),
            total,
            Flow::ToController,
            web_socket,
        )
        .await;
        println!(
            "{over}: engine -> controller: {rate:.0} MB/s   agent RSS idle {idle} KiB, peak {peak} KiB"
        );
        let (rate, idle, peak) = transfer("echo", total, Flow::Echo, web_socket).await;
        println!(
            "{over}: both ways at once (echo): {rate:.0} MB/s each way   agent RSS idle {idle} KiB, peak {peak} KiB"
        );
    }
}

/// Handshake, repoint, leaving and JVM figures.
async fn timings() {
    let handshake = handshake_time(50).await;
    println!(
        "handshake (TCP+ACK+TLS+headers+capability): mean {:.2} ms over 50",
        handshake.as_secs_f64() * 1e3
    );

    let (mean, worst, offline) = repoint_latency(10).await;
    println!(
        "repoint (borrow/return --now to online at the other controller): mean {:.1} ms, worst {:.1} ms over 10",
        mean.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
    println!(
        "overlap (online at the new controller until offline at the old one): mean {:.1} ms, worst {:.1} ms over 10",
        mean_ms(&offline),
        max_ms(&offline)
    );
    let sigterm = sigterm_offline(5).await;
    println!(
        "leaving (SIGTERM to offline at the controller): mean {:.1} ms, worst {:.1} ms over 5",
        mean_ms(&sigterm),
        max_ms(&sigterm)
    );
    let jar = common::java_echo_engine_jar();
    for warm in [true, false] {
        let (borrow, give_back) = repoint_jvm(&jar, warm, 5).await;
        let label = if warm {
            "warm engines"
        } else {
            "--no-warm-engine"
        };
        println!(
            "repoint with a JVM engine, {label}: borrow --now to online at the borrower mean {:.0} ms (worst {:.0}); return --now to online at home mean {:.0} ms (worst {:.0}) over 5",
            mean_ms(&borrow),
            max_ms(&borrow),
            mean_ms(&give_back),
            max_ms(&give_back)
        );
    }
    match jvm_start() {
        Some(t) => println!("JVM start-up to first stdout byte (trivial class, excludes remoting's own start): {:.0} ms", t.as_secs_f64() * 1e3),
        None => println!("JVM start-up: javac/java not available"),
    }
}

async fn handshake_time(rounds: u32) -> Duration {
    let controller = TestController::builder().node("hs", SECRET).start().await;
    let mut spent = Duration::ZERO;
    for _ in 0..rounds {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(controller.agent_addr())
            .await
            .unwrap();
        let connected = connect(
            tcp,
            "127.0.0.1",
            controller.identity(),
            HandshakeConfig::new("hs", SECRET),
        )
        .await
        .unwrap();
        spent += started.elapsed();
        drop(connected);
        controller.wait_for(|_| true, Duration::from_secs(1)).await;
        // Let the controller notice the close before the next round.
        while controller.is_online("hs") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    controller.shutdown().await;
    spent / rounds
}

#[derive(Clone, Copy, PartialEq)]
enum Flow {
    ToEngine,
    ToController,
    Echo,
}

/// Runs one transfer; returns MB/s (10^6 bytes per second) and the agent's
/// RSS in KiB before it and at its peak.
async fn transfer(mode: &str, total: usize, flow: Flow, web_socket: bool) -> (f64, u64, u64) {
    let (tx, rx) = oneshot::channel::<Duration>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let peer = Peer::script(move |channel: Channel| {
        let tx = tx.clone();
        let mut start = start_rx.clone();
        async move {
            let _ = start.wait_for(|go| *go).await;
            let (mut sink, mut stream) = channel.framed.split();
            let started = Instant::now();
            let sender = tokio::spawn(async move {
                if flow != Flow::ToController {
                    let payload = Bytes::from(vec![0x42; CHUNK]);
                    for _ in 0..total / CHUNK {
                        let chunk = Chunk {
                            last: true,
                            payload: payload.clone(),
                        };
                        sink.feed(chunk).await.unwrap();
                    }
                    sink.flush().await.unwrap();
                }
                sink
            });
            let mut received = 0;
            if flow != Flow::ToEngine {
                while received < total {
                    match stream.next().await {
                        Some(Ok(chunk)) => received += chunk.payload.len(),
                        _ => break,
                    }
                }
            }
            let sink = sender.await.unwrap();
            let elapsed = started.elapsed();
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(elapsed);
            }
            drop(sink);
        }
    });
    let controller = TestController::builder()
        .node("bench", SECRET)
        .remoting_jar(b"jar".to_vec())
        .peer(peer)
        .start()
        .await;
    let url = controller.url();
    let cmd = format!("{} {mode}", fake_engine().display());
    let mut args = vec![
        "-url",
        &url,
        "-name",
        "bench",
        "-secret",
        SECRET,
        "--engine-command",
        &cmd,
    ];
    if web_socket {
        args.push("-webSocket");
    }
    let agent = AgentProcess::start(&args, &[]);
    agent
        .wait_log("\"connected\"", 1, Duration::from_secs(60))
        .await;
    let idle = common::proc_status_kib(agent.pid(), "VmRSS");
    let cpu_before = common::proc_cpu_seconds(agent.pid());
    start_tx.send(true).unwrap();
    let elapsed = tokio::time::timeout(Duration::from_secs(600), rx)
        .await
        .unwrap()
        .unwrap();
    let cpu = common::proc_cpu_seconds(agent.pid()) - cpu_before;
    let peak = common::proc_status_kib(agent.pid(), "VmHWM");
    println!(
        "  [{mode}] {:.2} s, agent CPU {:.2} s ({:.0}% of one core)",
        elapsed.as_secs_f64(),
        cpu,
        100.0 * cpu / elapsed.as_secs_f64()
    );
    drop(agent);
    controller.shutdown().await;
    (total as f64 / elapsed.as_secs_f64() / 1e6, idle, peak)
}

/// Moves the agent between two controllers `rounds` times with `now`, timing
/// each from the request to the other controller's acceptance.
fn mean_ms(times: &[Duration]) -> f64 {
    times.iter().sum::<Duration>().as_secs_f64() * 1e3 / times.len().max(1) as f64
}

fn max_ms(times: &[Duration]) -> f64 {
    times
        .iter()
        .copied()
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// The agent's status; a default one while its socket is not up yet.
async fn agent_status(socket: &std::path::Path) -> control::Status {
    let Ok(mut client) = control::client::connect(socket).await else {
        return control::Status::default();
    };
    match client.request(control::Request::Status).await {
        Ok(control::Response::Status(status)) => status,
        _ => control::Status::default(),
    }
}

/// Waits until the agent is online at `placement` (moved and recorded).
async fn settle(socket: &std::path::Path, placement: control::Placement) {
    loop {
        let status = agent_status(socket).await;
        if status.phase == control::Phase::Online && status.placement == placement {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGTERM to the node offline at the controller, over `rounds` starts.
async fn sigterm_offline(rounds: usize) -> Vec<Duration> {
    let controller = TestController::builder()
        .node("term", SECRET)
        .remoting_jar(b"jar".to_vec())
        .start()
        .await;
    let url = controller.url();
    let cmd = format!("{} echo", fake_engine().display());
    let mut times = Vec::new();
    for _ in 0..rounds {
        let mut agent = AgentProcess::start(
            &[
                "-url",
                &url,
                "-name",
                "term",
                "-secret",
                SECRET,
                "--engine-command",
                &cmd,
            ],
            &[],
        );
        while !controller.is_online("term") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        agent.signal(nix::sys::signal::Signal::SIGTERM);
        times.push(common::until_online(&controller, "term", false, Duration::from_secs(30)).await);
        agent.wait_exit(Duration::from_secs(30)).await;
    }
    controller.shutdown().await;
    times
}

async fn repoint_latency(rounds: usize) -> (Duration, Duration, Vec<Duration>) {
    let accepted = Arc::new(tokio::sync::Notify::new());
    let peer = |notify: Arc<tokio::sync::Notify>| {
        Peer::script(move |mut channel: Channel| {
            let notify = notify.clone();
            async move {
                notify.notify_one();
                while let Some(Ok(_)) = channel.framed.next().await {}
            }
        })
    };
    let lender = TestController::builder()
        .node("mac", SECRET)
        .remoting_jar(b"lender jar".to_vec())
        .peer(peer(accepted.clone()))
        .start()
        .await;
    let borrower = TestController::builder()
        .node("guest", SECRET)
        .remoting_jar(b"borrower jar".to_vec())
        .peer(peer(accepted.clone()))
        .start()
        .await;
    let url = lender.url();
    let cmd = format!("{} echo", fake_engine().display());
    let agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "mac",
            "-secret",
            SECRET,
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    accepted.notified().await;
    let socket = agent.socket();
    let mut times = Vec::new();
    let mut offline = Vec::new();
    for round in 0..rounds {
        let request = if round % 2 == 0 {
            common::lending::borrow_now(borrower.url(), "guest", SECRET, None)
        } else {
            control::Request::Return {
                when: control::When::Now,
                wait: None,
            }
        };
        let ((old, old_node), (new, new_node), placement) = if round % 2 == 0 {
            (
                (&lender, "mac"),
                (&borrower, "guest"),
                control::Placement::Borrowed,
            )
        } else {
            (
                (&borrower, "guest"),
                (&lender, "mac"),
                control::Placement::Home,
            )
        };
        let mut client = control::client::connect(&socket).await.unwrap();
        let started = Instant::now();
        client.request(request).await.unwrap();
        // Make before break: online at the new place first, then offline at
        // the old one; the difference is the overlap.
        let (mut online_at, mut offline_at) = (None, None);
        while online_at.is_none() || offline_at.is_none() {
            if online_at.is_none() && new.is_online(new_node) {
                online_at = Some(started.elapsed());
            }
            if offline_at.is_none() && !old.is_online(old_node) {
                offline_at = Some(started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the move did not finish"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let (online_at, offline_at) = (
            online_at.unwrap_or_default(),
            offline_at.unwrap_or_default(),
        );
        times.push(online_at);
        offline.push(offline_at.saturating_sub(online_at));
        // Settled (moved and recorded) before the next order.
        settle(&socket, placement).await;
    }
    drop(agent);
    lender.shutdown().await;
    borrower.shutdown().await;
    let worst = times.iter().copied().max().unwrap_or_default();
    (
        times.iter().sum::<Duration>() / rounds as u32,
        worst,
        offline,
    )
}

/// Repoint times with the test suite's Java echo engine run through the
/// production launch path (`java -jar` on the controller's jar): `borrow
/// --now` to online at the borrower, `return --now` to online at home. With
/// warm engines each return waits until home's engine is ready, as an agent
/// borrowed for a while would have it.
async fn repoint_jvm(jar: &[u8], warm: bool, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let lender = TestController::builder()
        .node("mac", SECRET)
        .remoting_jar(jar.to_vec())
        .start()
        .await;
    let borrower = TestController::builder()
        .node("guest", SECRET)
        .remoting_jar(jar.to_vec())
        .start()
        .await;
    let url = lender.url();
    let mut args = vec!["-url", url.as_str(), "-name", "mac", "-secret", SECRET];
    if !warm {
        args.push("--no-warm-engine");
    }
    let agent = AgentProcess::start(&args, &[]);
    let socket = agent.socket();
    settle(&socket, control::Placement::Home).await;
    let (mut borrow, mut give_back) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        offline(&borrower, "guest").await;
        let request = common::lending::borrow_now(borrower.url(), "guest", SECRET, None);
        let started = Instant::now();
        control::client::connect(&socket)
            .await
            .unwrap()
            .request(request)
            .await
            .unwrap();
        borrow.push(online_after(&borrower, "guest", started).await);
        settle(&socket, control::Placement::Borrowed).await;
        while warm && agent_status(&socket).await.warm_engine.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        offline(&lender, "mac").await;
        let started = Instant::now();
        control::client::connect(&socket)
            .await
            .unwrap()
            .request(control::Request::Return {
                when: control::When::Now,
                wait: None,
            })
            .await
            .unwrap();
        give_back.push(online_after(&lender, "mac", started).await);
        settle(&socket, control::Placement::Home).await;
    }
    drop(agent);
    lender.shutdown().await;
    borrower.shutdown().await;
    (borrow, give_back)
}

/// When `controller` shows `node` online, counted from `started` (the
/// order was accepted; the move goes on). The test controller makes no
/// first call, so the agent's own "moved" would wait out its 2 s for one:
/// what the controller sees is the figure.
async fn online_after(controller: &TestController, node: &str, started: Instant) -> Duration {
    while !controller.is_online(node) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{node} never came online"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    started.elapsed()
}

/// Waits until `controller` no longer shows `node` online (the last move
/// is over there), so that a move is timed from its own start.
async fn offline(controller: &TestController, node: &str) {
    let started = Instant::now();
    while controller.is_online(node) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{node} never went offline"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A JVM's start-up until its first byte on stdout, with a class compiled
/// here on the fly (no binary is kept): the least a real engine adds to a
/// repoint.
fn jvm_start() -> Option<Duration> {
    use std::io::Read as _;
    let dir = common::temp_dir("jvm");
    std::fs::write(
        dir.join("Hello.java"),
        "public class Hello { public static void main(String[] a) throws Exception { System.out.print('<'); System.out.flush(); System.in.read(); } }",
    )
    .ok()?;
    let ok = std::process::Command::new("javac")
        .arg("Hello.java")
        .current_dir(&dir)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let mut total = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let mut child = std::process::Command::new("java")
            .args(["-cp", dir.to_str()?, "Hello"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut byte = [0u8; 1];
        child.stdout.as_mut()?.read_exact(&mut byte).ok()?;
        total += started.elapsed();
        drop(child.stdin.take());
        let _ = child.wait();
    }
    Some(total / 5)
}
