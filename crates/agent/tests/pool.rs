//! The pool end to end: `jnlp-lender`'s server (in-process, on a scratch
//! database), a home and a borrowing test controller, and four real
//! `jnlp-agent`s with different labels linked to the lender. What counts is
//! what the controllers see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{fake_engine, lender_token, temp_dir, until_online, AgentProcess};
use lender::server::{self, Config, Running};
use lender::tokens::TokenKind;
use serde_json::{json, Value};
use testkit::TestController;

const HOME_SECRET: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
const BORROWER_SECRET: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const LONG: Duration = Duration::from_secs(60);

/// The machines: name and `--labels`.
const MACHINES: [(&str, &str); 4] = [
    ("mac-01", "mac-mini xcode16"),
    ("mac-02", "mac-mini xcode15"),
    ("gpu-01", "gpu cuda12"),
    ("box-01", ""),
];

struct Pool {
    running: Option<Running>,
    addr: std::net::SocketAddr,
    client: String,
    http: reqwest::Client,
    dir: PathBuf,
}

impl Pool {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(&self.client);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls `GET path` until `pred` holds; panics with the last answer.
    async fn until(&self, what: &str, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let (_, value) = self.call(reqwest::Method::GET, path, None).await;
            if pred(&value) {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {LONG:?}; last: {value:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start_pool() -> (Pool, Vec<(String, PathBuf)>) {
    let dir = temp_dir("pool");
    let db = dir.join("pool.db");
    let client = lender_token(&db, TokenKind::Client, "team-b");
    let agent_tokens = MACHINES
        .iter()
        .map(|(name, _)| {
            let file = dir.join(format!("{name}.token"));
            std::fs::write(&file, lender_token(&db, TokenKind::Agent, name)).unwrap();
            ((*name).to_owned(), file)
        })
        .collect();
    let running = server::start(config("127.0.0.1:0", &db)).await.unwrap();
    let pool = Pool {
        addr: running.local_addr(),
        running: Some(running),
        client,
        http: reqwest::Client::new(),
        dir,
    };
    (pool, agent_tokens)
}

fn config(listen: &str, db: &Path) -> Config {
    let mut config = Config::new(listen, db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(30);
    config
}

impl Pool {
    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Stops the lender and starts it again on the same port and database,
    /// as after a crash and a restart: agents reconnect to the same URL.
    async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let listen = self.addr.to_string();
        let running = server::start(config(&listen, &self.dir.join("pool.db")))
            .await
            .unwrap();
        assert_eq!(running.local_addr(), self.addr);
        self.running = Some(running);
    }
}

fn start_agent(
    home: &TestController,
    pool: &Pool,
    name: &str,
    labels: &str,
    token_file: &Path,
) -> AgentProcess {
    let url = home.url();
    let lender = pool.url();
    let cmd = format!("{} echo", fake_engine().display());
    let token_file = token_file.display().to_string();
    let mut args = vec![
        "-url",
        url.as_str(),
        "-name",
        name,
        "--engine-command",
        cmd.as_str(),
        "--lender",
        lender.as_str(),
        "--lender-token-file",
        token_file.as_str(),
    ];
    if !labels.is_empty() {
        args.extend(["--labels", labels]);
    }
    AgentProcess::start(&args, &[("JENKINS_SECRET", HOME_SECRET)])
}

fn lease_body(requirements: &str, borrower: &TestController, wait: &str) -> Value {
    lease_for("lent-node", requirements, borrower, wait)
}

fn lease_for(node: &str, requirements: &str, borrower: &TestController, wait: &str) -> Value {
    json!({
        "requirements": requirements,
        "borrower": {
            "url": borrower.url(),
            "name": node,
            "secret": BORROWER_SECRET,
        },
        "lease": "1h",
        "wait": wait,
    })
}

/// Home with the four machines, a borrower with `borrower_nodes`, the
/// lender, and the four agents linked to it, all online at home.
struct Rig {
    home: TestController,
    borrower: TestController,
    pool: Pool,
    agents: Vec<AgentProcess>,
}

async fn rig(borrower_nodes: &[&str]) -> Rig {
    let mut home = TestController::builder();
    for (name, _) in MACHINES {
        home = home.node(name, HOME_SECRET);
    }
    let home = home
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let mut borrower = TestController::builder();
    for name in borrower_nodes {
        borrower = borrower.node(name, BORROWER_SECRET);
    }
    let borrower = borrower
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .start()
        .await;
    let (pool, tokens) = start_pool().await;
    let agents: Vec<AgentProcess> = MACHINES
        .iter()
        .zip(&tokens)
        .map(|((name, labels), (_, file))| start_agent(&home, &pool, name, labels, file))
        .collect();
    for (name, _) in MACHINES {
        until_online(&home, name, true, LONG).await;
    }
    all_linked(&pool).await;
    Rig {
        home,
        borrower,
        pool,
        agents,
    }
}

async fn all_linked(pool: &Pool) {
    pool.until("all four agents linked", "/v1/agents", |agents| {
        agents.as_array().is_some_and(|list| {
            list.len() == 4
                && list
                    .iter()
                    .all(|a| a["connected"] == true && a["online"] == true)
        })
    })
    .await;
}

/// A lease by label expression lands on the one matching agent, which the
/// borrower then shows online (and home offline); an expression nothing
/// matches queues and times out with a clear error; returning the lease
/// brings the agent home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_lends_a_matching_machine_and_takes_it_back() {
    let Rig {
        home,
        borrower,
        pool,
        agents,
    } = rig(&["lent-node"]).await;

    // Only mac-01 is a Mac mini with Xcode 16; the automatic platform
    // labels take part too.
    let (status, lease) = pool
        .call(
            reqwest::Method::POST,
            "/v1/leases",
            Some(lease_body("mac-mini && xcode16 && linux", &borrower, "30s")),
        )
        .await;
    assert!(status == 201 || status == 202, "{status}: {lease:#}");
    let id = lease["id"].as_u64().unwrap();
    let active = pool
        .until("the lease active", &format!("/v1/leases/{id}"), |l| {
            l["state"] == "active"
        })
        .await;
    assert_eq!(active["agent"], "mac-01", "{active:#}");
    until_online(&borrower, "lent-node", true, LONG).await;
    until_online(&home, "mac-01", false, LONG).await;
    for (name, _) in &MACHINES[1..] {
        assert!(home.is_online(name), "{name} stayed home");
    }

    // Nothing matches: queued, then timed out with the reason.
    let (status, lost) = pool
        .call(
            reqwest::Method::POST,
            "/v1/leases",
            Some(lease_body("windows && arm64", &borrower, "1s")),
        )
        .await;
    assert!(status < 500, "{status}: {lost:#}");
    if status != 409 {
        let id = lost["id"].as_u64().unwrap();
        let ended = pool
            .until(
                "the impossible lease ended",
                &format!("/v1/leases/{id}"),
                |l| !l["ended"].is_null(),
            )
            .await;
        assert!(ended["agent"].is_null(), "{ended:#}");
        assert!(
            !ended["ended"]["message"].as_str().unwrap_or("").is_empty(),
            "{ended:#}"
        );
    }

    // Returned: home again, the borrower sees the node go.
    let (status, returned) = pool
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/leases/{id}?now=true"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{returned:#}");
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&borrower, "lent-node", false, LONG).await;
    pool.until("the lease ended", &format!("/v1/leases/{id}"), |l| {
        !l["ended"].is_null()
    })
    .await;
    // One agent moved, once: the borrower accepted exactly one channel.
    let accepted = borrower
        .log()
        .iter()
        .filter(|e| matches!(e, testkit::ControllerEvent::Accepted { .. }))
        .count();
    assert_eq!(accepted, 1);
    drop(agents);
    pool.stop().await;
    home.shutdown().await;
    borrower.shutdown().await;
}

/// Twenty concurrent requests for three matching machines: three leases on
/// three different agents, as the controllers themselves see it (three
/// borrower nodes online, those three machines offline at home, the
/// fourth untouched); the other seventeen time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_lend_three_machines_once_each() {
    let nodes: Vec<String> = (0..20).map(|i| format!("lent-{i}")).collect();
    let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let Rig {
        home,
        borrower,
        pool,
        agents,
    } = rig(&node_refs).await;
    // gpu-01 does not match; mac-01, mac-02 and box-01 do.
    let requests = nodes.iter().map(|node| {
        pool.call(
            reqwest::Method::POST,
            "/v1/leases",
            Some(lease_for(node, "linux && !gpu", &borrower, "5s")),
        )
    });
    let answers = futures_util::future::join_all(requests).await;
    let ids: Vec<u64> = answers
        .iter()
        .map(|(status, lease)| {
            assert!(*status == 201 || *status == 202, "{status}: {lease:#}");
            lease["id"].as_u64().unwrap()
        })
        .collect();
    let mut active = Vec::new();
    for id in &ids {
        let lease = pool
            .until("the lease settled", &format!("/v1/leases/{id}"), |l| {
                l["state"] == "active" || !l["ended"].is_null()
            })
            .await;
        if lease["state"] == "active" {
            active.push(lease);
        }
    }
    assert_eq!(active.len(), 3, "{active:#?}");
    let mut lent: Vec<&str> = active
        .iter()
        .map(|l| l["agent"].as_str().unwrap())
        .collect();
    lent.sort_unstable();
    assert_eq!(lent, ["box-01", "mac-01", "mac-02"]);
    for lease in &active {
        until_online(
            &borrower,
            lease["borrower"]["name"].as_str().unwrap(),
            true,
            LONG,
        )
        .await;
    }
    for name in lent {
        until_online(&home, name, false, LONG).await;
    }
    assert!(home.is_online("gpu-01"));
    let online = nodes.iter().filter(|n| borrower.is_online(n)).count();
    let log = borrower.log();
    let accepted = log
        .iter()
        .filter(|e| matches!(e, testkit::ControllerEvent::Accepted { .. }))
        .count();
    assert_eq!(
        (online, accepted),
        (3, 3),
        "each machine lent once; the borrower saw {log:#?}; the leases: {active:#?}"
    );
    drop(agents);
    pool.stop().await;
    home.shutdown().await;
    borrower.shutdown().await;
}

/// The lender restarts (same port, same database) while a lease is active:
/// the lease survives, the agents reconnect and re-announce, the lent one
/// from the borrower, and the lease can still be returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_lender_keeps_its_lease_and_its_agents() {
    let Rig {
        home,
        borrower,
        mut pool,
        agents,
    } = rig(&["lent-node"]).await;
    let (_, lease) = pool
        .call(
            reqwest::Method::POST,
            "/v1/leases",
            Some(lease_body("xcode16", &borrower, "30s")),
        )
        .await;
    let id = lease["id"].as_u64().unwrap();
    pool.until("the lease active", &format!("/v1/leases/{id}"), |l| {
        l["state"] == "active"
    })
    .await;
    until_online(&borrower, "lent-node", true, LONG).await;

    pool.restart().await;
    all_linked(&pool).await;
    let lease = pool
        .until("the lease still active", &format!("/v1/leases/{id}"), |l| {
            l["state"] == "active"
        })
        .await;
    assert_eq!(lease["agent"], "mac-01");
    pool.until("mac-01 seen at the borrower", "/v1/agents", |list| {
        list.as_array().is_some_and(|list| {
            list.iter()
                .any(|a| a["name"] == "mac-01" && a["place"] != "home")
        })
    })
    .await;
    assert!(borrower.is_online("lent-node"));

    let (status, returned) = pool
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/leases/{id}?now=true"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{returned:#}");
    until_online(&home, "mac-01", true, LONG).await;
    until_online(&borrower, "lent-node", false, LONG).await;
    drop(agents);
    pool.stop().await;
    home.shutdown().await;
    borrower.shutdown().await;
}
