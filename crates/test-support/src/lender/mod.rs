//! An in-process lender on 127.0.0.1:0 with a scratch SQLite database,
//! tokens, a raw HTTP helper, and fake agents ([`FakeAgent`]) that speak
//! the agent link (`control::link`) as `jnlp-agent --lender` would.

mod fake_agent;
mod process;

pub use fake_agent::{AgentState, FakeAgent};
pub use process::ServeProcess;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lender::server::{self, Config, Running};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::{self, Principal, TokenKind, TokenRecord};
use serde_json::Value;

use crate::scratch::Scratch;

pub const HOME: &str = "https://home.example/";
pub const BORROWER_A: &str = "https://a.example/";
pub const BORROWER_B: &str = "https://b.example/";
pub const SECRET: &str = "s3cr3t-borrower-node-secret";
/// How long [`eventually`] waits: the lender's tick is 50 ms in tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

/// Creates a token in the database `db` (made if missing), as `jnlp-lender
/// token create` does, and returns it.
pub fn create_token(db: &Path, kind: TokenKind, name: &str) -> String {
    let mut store = ok(SqliteStore::open(db));
    let token = tokens::generate(kind);
    ok(store.add_token(&TokenRecord {
        hash: tokens::hash(&token),
        principal: Principal {
            kind,
            name: name.into(),
        },
        created_ms: 0,
    }));
    token
}

/// A lender with a scratch database and tokens for two clients.
#[derive(Debug)]
pub struct Lender {
    pub scratch: Scratch,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    /// Client `team-a`.
    pub team_a: String,
    /// Client `team-b`.
    pub team_b: String,
    agent_tokens: BTreeMap<String, String>,
    tweak: fn(&mut Config),
}

pub fn test_config(db: PathBuf) -> Config {
    let mut config = Config::new("127.0.0.1:0", db);
    config.tick = Duration::from_millis(50);
    config.borrow_wait = Duration::from_secs(5);
    config
}

impl Lender {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, |_| {}).await
    }

    pub async fn start_with(name: &str, tweak: fn(&mut Config)) -> Self {
        let scratch = Scratch::new(&format!("lender-server-{name}"));
        let team_a = create_token(&scratch.db(), TokenKind::Client, "team-a");
        let team_b = create_token(&scratch.db(), TokenKind::Client, "team-b");
        let mut config = test_config(scratch.db());
        tweak(&mut config);
        let running = ok(server::start(config).await);
        Lender {
            addr: running.local_addr(),
            running: Some(running),
            scratch,
            team_a,
            team_b,
            agent_tokens: BTreeMap::new(),
            tweak,
        }
    }

    /// Stops the server and starts a new one on the same database (on a new
    /// port).
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let mut config = test_config(self.scratch.db());
        (self.tweak)(&mut config);
        let running = ok(server::start(config).await);
        self.addr = running.local_addr();
        self.running = Some(running);
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn agent_token(&mut self, name: &str) -> String {
        let db = self.scratch.db();
        self.agent_tokens
            .entry(name.to_owned())
            .or_insert_with(|| create_token(&db, TokenKind::Agent, name))
            .clone()
    }

    /// A fake agent connected and announced.
    pub async fn agent(&mut self, name: &str, labels: &[&str]) -> FakeAgent {
        let token = self.agent_token(name);
        let agent = FakeAgent::new(name, labels, &token);
        agent.connect(self.addr).await;
        self.wait_connected(name).await;
        agent
    }

    pub async fn wait_connected(&self, name: &str) {
        let token = self.team_b.clone();
        eventually(&format!("agent {name} connected"), || async {
            let (_, agents) = self.call("GET", "/v1/agents", &token, None).await;
            find_agent(&agents, name).filter(|a| a["connected"] == true)
        })
        .await;
    }

    /// One HTTP exchange: status and JSON body (`Value::Null` if not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self
            .raw(method, path, Some(token), body.map(|b| b.to_string()))
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, String) {
        let client = reqwest::Client::new();
        let method = ok(reqwest::Method::from_bytes(method.as_bytes()));
        let mut request = client.request(method, format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = ok(request.send().await);
        let status = response.status().as_u16();
        (status, ok(response.text().await))
    }

    /// POST /v1/leases with the usual borrower.
    pub async fn lease(
        &self,
        token: &str,
        requirements: &str,
        borrower: &str,
        wait: &str,
    ) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/leases",
            token,
            Some(lease_body(requirements, borrower, wait)),
        )
        .await
    }

    pub async fn get_lease(&self, token: &str, id: u64) -> Value {
        let (status, lease) = self
            .call("GET", &format!("/v1/leases/{id}"), token, None)
            .await;
        assert_eq!(status, 200, "{lease}");
        lease
    }

    /// Waits until lease `id` is in `state`.
    pub async fn wait_state(&self, token: &str, id: u64, state: &str) -> Value {
        eventually(&format!("lease {id} {state}"), || async {
            let lease = self.get_lease(token, id).await;
            (lease["state"] == state).then_some(lease)
        })
        .await
    }

    pub async fn agents(&self) -> Value {
        self.call("GET", "/v1/agents", &self.team_b.clone(), None)
            .await
            .1
    }
}

pub fn lease_body(requirements: &str, borrower: &str, wait: &str) -> Value {
    serde_json::json!({
        "requirements": requirements,
        "borrower": {
            "url": borrower,
            "name": "lent-node",
            "secret": SECRET,
            "transport": "web_socket",
        },
        "lease": "2h",
        "idle_return": "30m",
        "wait": wait,
    })
}

pub fn find_agent(agents: &Value, name: &str) -> Option<Value> {
    agents
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

/// Polls `check` until it gives a value, at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::wait::until_some(what, WAIT, check).await
}
