//! The pool end to end: `jnlp-lender`'s server (in-process, on a scratch
//! database), a home and a borrowing test controller, and four real
//! `jnlp-agent`s with different labels linked to the lender. What counts is
//! what the controllers see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{fake_engine, temp_dir, until_online, AgentProcess};
use lender::server::{self, Config, Running};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::{self, Principal, TokenKind, TokenRecord};
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

fn token(db: &Path, kind: TokenKind, name: &str) -> String {
    let mut store = SqliteStore::open(db).unwrap();
    let token = tokens::generate(kind);
    store
        .add_token(&TokenRecord {
            hash: tokens::hash(&token),
            principal: Principal {
                kind,
                name: name.into(),
            },
            created_ms: 0,
        })
        .unwrap();
    token
}

struct Pool {
    running: Running,
    client: String,
    http: reqwest::Client,
    _dir: PathBuf,
}

impl Pool {
    fn url(&self) -> String {
        format!("http://{}", self.running.local_addr())
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
    let client = token(&db, TokenKind::Client, "team-b");
    let agent_tokens = MACHINES
        .iter()
        .map(|(name, _)| {
            let file = dir.join(format!("{name}.token"));
            std::fs::write(&file, token(&db, TokenKind::Agent, name)).unwrap();
            ((*name).to_owned(), file)
        })
        .collect();
    let mut config = Config::new("127.0.0.1:0", &db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(30);
    let running = server::start(config).await.unwrap();
    let pool = Pool {
        running,
        client,
        http: reqwest::Client::new(),
        _dir: dir,
    };
    (pool, agent_tokens)
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
    json!({
        "requirements": requirements,
        "borrower": {
            "url": borrower.url(),
            "name": "lent-node",
            "secret": BORROWER_SECRET,
        },
        "lease": "1h",
        "wait": wait,
    })
}

/// A lease by label expression lands on the one matching agent, which the
/// borrower then shows online (and home offline); an expression nothing
/// matches queues and times out with a clear error; returning the lease
/// brings the agent home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_lends_a_matching_machine_and_takes_it_back() {
    let mut home = TestController::builder();
    for (name, _) in MACHINES {
        home = home.node(name, HOME_SECRET);
    }
    let home = home
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .start()
        .await;
    let borrower = TestController::builder()
        .node("lent-node", BORROWER_SECRET)
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
    pool.until("all four agents linked", "/v1/agents", |agents| {
        agents.as_array().is_some_and(|list| {
            list.len() == 4
                && list
                    .iter()
                    .all(|a| a["connected"] == true && a["online"] == true)
        })
    })
    .await;

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
    pool.running.shutdown().await;
    home.shutdown().await;
    borrower.shutdown().await;
}
