//! The real binary killed with SIGKILL while clients write, with the
//! database locked by another process for a while: every lease a client was
//! told about (201, 202) is there after the restart, no id was handed out
//! twice, and nothing refused (503) was made.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WRITERS: usize = 6;

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(db: &Path) -> Server {
        let mut child = ok(Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--db-busy-timeout",
                "300ms",
                // Every request waits in the queue: far more than the
                // default 100 per client.
                "--max-queued-per-client",
                "100000",
                "--db",
            ])
            .arg(db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn());
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = match lines.next() {
                Some(line) => ok(line),
                None => panic!("the lender exited before listening"),
            };
            if let Some(addr) = line.strip_prefix("jnlp-lender: listening on ") {
                break format!("http://{}", addr.trim());
            }
        };
        // Keep reading, so that the pipe never fills.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server { child, url }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(db: &Path) -> String {
    let out = ok(Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .args(["token", "create", "--client", "ci", "--db"])
        .arg(db)
        .output());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn body(node: &str) -> String {
    json!({
        "requirements": "nothing-matches",
        "borrower": {"url": "https://b.example/", "name": node, "secret": "s"},
        "wait": "1h",
    })
    .to_string()
}

/// What the writers were told.
#[derive(Default)]
struct Told {
    acknowledged: Vec<(u64, String)>,
    refused_nodes: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_writers_and_a_locked_database_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("jnlp-lender-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ok(std::fs::create_dir_all(&dir));
    let db: PathBuf = dir.join("pool.db");
    let token = token(&db);
    let told = Arc::new(Mutex::new(Told::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_else(|err| panic!("{err}"));

    for round in 0..3 {
        let server = Server::start(&db);
        let stop = Arc::new(AtomicBool::new(false));
        let locked = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let (http, url, token) = (http.clone(), server.url.clone(), token.clone());
            let (stop, locked, told) = (stop.clone(), locked.clone(), told.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let tag = if locked.load(Ordering::Relaxed) {
                        "locked"
                    } else {
                        "open"
                    };
                    let node = format!("r{round}-w{writer}-{n}-{tag}");
                    let sent = http
                        .post(format!("{url}/v1/leases"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body(&node))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    let status = response.status().as_u16();
                    let Ok(text) = response.text().await else {
                        break;
                    };
                    let value: Value = serde_json::from_str(&text).unwrap_or_default();
                    let mut told = told.lock().unwrap_or_else(|e| e.into_inner());
                    match status {
                        201 | 202 => {
                            let id = value["id"].as_u64().unwrap_or_else(|| panic!("{text}"));
                            told.acknowledged.push((id, node));
                        }
                        503 => told.refused_nodes.push(node),
                        other => panic!("unexpected {other}: {text}"),
                    }
                }
            }));
        }
        let acknowledged = || {
            told.lock()
                .unwrap_or_else(|e| e.into_inner())
                .acknowledged
                .len()
        };
        let wait_for = |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(60);
            async move {
                while acknowledged() < count {
                    assert!(Instant::now() < deadline, "writes do not progress");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for(acknowledged() + 100).await;
        // Another process locks the database for a while.
        let lock = ok(rusqlite::Connection::open(&db));
        ok(lock.execute_batch("BEGIN EXCLUSIVE"));
        locked.store(true, Ordering::Relaxed);
        let refused_before = told
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused_nodes
            .len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while told
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused_nodes
            .len()
            < refused_before + WRITERS
        {
            assert!(
                Instant::now() < deadline,
                "no refusal while the database is locked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        locked.store(false, Ordering::Relaxed);
        ok(lock.execute_batch("ROLLBACK"));
        drop(lock);
        wait_for(acknowledged() + 100).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            let _ = writer.await;
        }
    }

    let server = Server::start(&db);
    let response = ok(http
        .get(format!("{}/v1/leases?state=all&limit=1000", server.url))
        .bearer_auth(&token)
        .send()
        .await);
    assert_eq!(response.status().as_u16(), 200);
    let listed: Value = serde_json::from_str(&ok(response.text().await)).unwrap_or_default();
    let told = told.lock().unwrap_or_else(|e| e.into_inner());
    let stored = ok(rusqlite::Connection::open(&db));
    let count: i64 = ok(stored.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0)));
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(usize::try_from(count).unwrap_or(0).min(1000)),
        "the restarted lender lists what is stored"
    );
    let mut ids = BTreeSet::new();
    for (id, node) in &told.acknowledged {
        assert!(ids.insert(*id), "id {id} acknowledged twice");
        let name: Option<String> = stored
            .query_row(
                "SELECT borrower_node FROM leases WHERE id = ?1",
                [i64::try_from(*id).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .ok();
        assert_eq!(
            name.as_deref(),
            Some(node.as_str()),
            "acknowledged lease {id} lost"
        );
    }
    for node in &told.refused_nodes {
        let made: i64 = ok(stored.query_row(
            "SELECT COUNT(*) FROM leases WHERE borrower_node = ?1",
            [node],
            |r| r.get(0),
        ));
        assert_eq!(made, 0, "a refused request ({node}) was made");
    }
    println!(
        "crash: {} acknowledged, {} refused while locked, {} stored, 0 lost",
        told.acknowledged.len(),
        told.refused_nodes.len(),
        count
    );
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
