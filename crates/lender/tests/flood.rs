//! The real `jnlp-lender serve` under the usual service limit of 1,024 open
//! files, flooded with 1,100 connections that send nothing: a legitimate
//! request is still answered within 3 s and an agent link still comes up.
//!
//! Two runs: with only the soft limit at 1,024 (the lender raises it to the
//! hard one), and with the hard limit at 1,024 too (the cap on
//! unauthenticated connections does the work, closing the oldest).

mod server_support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lender::tokens::TokenKind;
use server_support::*;
use tokio::net::TcpStream;

const FLOOD: usize = 1100;

/// The lender binary, killed on drop, with its log lines.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `serve` under `ulimit` (e.g. `-Sn 1024`) and waits for its
    /// address.
    fn start(ulimit: &str, db: &std::path::Path) -> Self {
        let mut child = ok(Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit {ulimit} 1024 && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_jnlp-lender"))
            .args(["serve", "--init", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn());
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let (tx, log) = mpsc::channel();
        // Drained to the end, so that logging never blocks the server.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut served = Served {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match served.log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("jnlp-lender: listening on ") {
                        served.addr = ok(addr.trim().parse());
                        served.seen_lines(seen);
                        return served;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("the lender did not start: {}", seen.join("\n"));
    }

    fn seen_lines(&self, lines: Vec<String>) {
        for line in lines {
            eprintln!("lender: {line}");
        }
    }
}

/// Raises this process's soft limit on open files: the flood needs more
/// than 1,024.
fn raise_own_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = ok(getrlimit(Resource::RLIMIT_NOFILE));
    assert!(
        hard >= 2 * FLOOD as u64,
        "this test needs a hard open-files limit of at least {}, not {hard}",
        2 * FLOOD
    );
    ok(setrlimit(Resource::RLIMIT_NOFILE, hard, hard));
}

/// How many of `streams` the server has closed.
fn closed(streams: &[TcpStream]) -> usize {
    let mut byte = [0u8; 1];
    streams
        .iter()
        .filter(|s| match s.try_read(&mut byte) {
            Ok(_) => true,
            Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

async fn flood_then_serve(what: &str, ulimit: &str) -> (usize, Duration) {
    let scratch = Scratch::new(&format!("flood-{what}"));
    let db = scratch.db();
    let client = create_token(&db, TokenKind::Client, "team-b");
    let agent_token = create_token(&db, TokenKind::Agent, "a1");
    let served = Served::start(ulimit, &db);
    let addr = served.addr;

    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => flood.push(stream),
            Ok(Err(err)) => panic!("{what}: flood connection {i}: {err}"),
            Err(_) => break, // the backlog is full: the server stopped accepting
        }
    }
    let opened = flood.len();

    // A legitimate request during the flood, on a fresh connection.
    let http = ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build());
    let started = Instant::now();
    let answer = http
        .get(format!("http://{addr}/v1/agents"))
        .bearer_auth(&client)
        .send()
        .await;
    let took = started.elapsed();
    let status = answer.as_ref().map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(200)),
        "{what}: GET /v1/agents during a flood of {opened} connections: {status:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{what}: took {took:?}");

    // An agent link still comes up.
    let agent = FakeAgent::new("a1", &["x"], &agent_token);
    let linked = tokio::time::timeout(Duration::from_secs(5), agent.connect(addr)).await;
    assert!(
        linked.is_ok(),
        "{what}: the agent link did not come up during the flood"
    );
    eventually(&format!("{what}: agent a1 connected"), || async {
        let text = http
            .get(format!("http://{addr}/v1/agents"))
            .bearer_auth(&client)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let agents: serde_json::Value = serde_json::from_str(&text).ok()?;
        find_agent(&agents, "a1").filter(|a| a["connected"] == true)
    })
    .await;
    let closed_now = closed(&flood);
    eprintln!(
        "{what}: {opened} flood connections open, GET /v1/agents answered in {took:?}, \
         {closed_now} flood connections closed by the server so far"
    );
    agent.disconnect().await;
    drop(served);
    (closed_now, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_lock_out_requests_or_agent_links() {
    raise_own_limit();
    // Soft limit 1,024: the lender raises it to the hard limit.
    flood_then_serve("soft-1024", "-Sn").await;
    // Hard limit 1,024 too: the cap closes the oldest unauthenticated
    // connections to make room.
    let (closed, _) = flood_then_serve("hard-1024", "-n").await;
    assert!(
        closed >= FLOOD - 256,
        "with the cap of 256, at least {} of the flood should be closed, not {closed}",
        FLOOD - 256
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_unauthenticated_timeout() {
    raise_own_limit();
    let scratch = Scratch::new("flood-timeout");
    let served = Served::start("-Sn", &scratch.db());
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(ok(TcpStream::connect(served.addr).await));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(25);
    while closed(&silent) < silent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} silent connections closed after {:?}",
            closed(&silent),
            silent.len(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("silent connections closed after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed too early"
    );
}
