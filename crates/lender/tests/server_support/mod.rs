//! An in-process lender on 127.0.0.1:0 with a temporary SQLite database,
//! tokens, a raw HTTP helper, and fake agents that speak the agent link
//! (`control::link`) as `jnlp-agent --lender` would.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use control::link::{AgentMessage, LenderMessage, LINK_PATH};
use control::{BorrowRequest, Phase, Placement, Reply, Request, Response, Status, Target, When};
use futures_util::{SinkExt as _, StreamExt as _};
use lender::server::{self, Config, Running};
use lender::store::{SqliteStore, Store as _};
use lender::tokens::{self, Principal, TokenKind, TokenRecord};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

pub const HOME: &str = "https://home.example/";
pub const BORROWER_A: &str = "https://a.example/";
pub const BORROWER_B: &str = "https://b.example/";
pub const SECRET: &str = "s3cr3t-borrower-node-secret";

pub fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "jnlp-lender-server-{}-{name}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        ok(std::fs::create_dir_all(&dir));
        Scratch(dir)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("lender.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a token in the database, as `jnlp-lender token create` does.
pub fn create_token(db: &std::path::Path, kind: TokenKind, name: &str) -> String {
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
        let scratch = Scratch::new(name);
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

/// Polls `check` until it gives a value, at most 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- fake agents ----

/// What a fake agent saw and where it is; shared across its connections.
#[derive(Debug, Default)]
pub struct AgentState {
    /// `None`: at home; else the borrower's URL.
    pub place: Option<String>,
    /// Busy at its current place.
    pub busy: bool,
    pub borrows: Vec<BorrowRequest>,
    pub returns: Vec<When>,
    /// A borrow arrived while already borrowed: lent twice.
    pub lent_twice: bool,
    /// Refuse borrows with this reason (as a borrower refusing the node).
    pub refuse: Option<String>,
    /// Do not answer borrows at all.
    pub mute: bool,
    pub welcomed: bool,
    /// The close frame the lender sent last.
    pub closed: Option<(CloseCode, String)>,
}

enum Command {
    SendStatus,
    Close,
}

pub struct FakeAgent {
    pub name: String,
    labels: Vec<String>,
    token: String,
    state: Arc<Mutex<AgentState>>,
    link: Mutex<Option<(mpsc::Sender<Command>, JoinHandle<()>)>>,
}

impl FakeAgent {
    pub fn new(name: &str, labels: &[&str], token: &str) -> Self {
        FakeAgent {
            name: name.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            token: token.into(),
            state: Arc::default(),
            link: Mutex::new(None),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(name: &str, state: &AgentState) -> Status {
        let (placement, url) = match &state.place {
            None => (Placement::Home, HOME.to_owned()),
            Some(url) => (Placement::Borrowed, url.clone()),
        };
        let mut status = Status {
            placement,
            phase: Phase::Online,
            controller_url: Some(url),
            node_name: Some(name.into()),
            home_url: Some(HOME.into()),
            ..Status::default()
        };
        status.busy.busy = state.busy;
        status
    }

    /// Opens the link and says hello; panics if the upgrade is refused.
    pub async fn connect(&self, addr: SocketAddr) {
        if let Err(status) = self.try_connect(addr, &self.name.clone()).await {
            panic!("link refused: HTTP {status}");
        }
    }

    /// Opens the link with hello naming `node`; `Err(status)` if the
    /// upgrade is refused.
    pub async fn try_connect(&self, addr: SocketAddr, node: &str) -> Result<(), u16> {
        self.disconnect().await;
        let mut request = ok(format!("ws://{addr}{LINK_PATH}").into_client_request());
        request.headers_mut().insert(
            "authorization",
            ok(format!("Bearer {}", self.token).parse()),
        );
        let tcp = ok(TcpStream::connect(addr).await);
        let mut ws = match tokio_tungstenite::client_async(request, tcp).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                return Err(response.status().as_u16())
            }
            Err(err) => panic!("link: {err}"),
        };
        let hello = {
            let state = self.state();
            AgentMessage::Hello {
                node: node.into(),
                labels: self.labels.clone(),
                version: "0.1.0-fake".into(),
                status: Self::status(&self.name, &state),
            }
        };
        ok(ws.send(Message::text(control::to_json(&hello))).await);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(ws, self.name.clone(), self.state.clone(), rx));
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some((tx, task));
        Ok(())
    }

    /// Closes the link (a network failure, or the agent restarting).
    pub async fn disconnect(&self) {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, task)) = link {
            let _ = tx.send(Command::Close).await;
            let _ = task.await;
        }
    }

    /// Sends the current status.
    pub async fn send_status(&self) {
        let tx = self
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(tx, _)| tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Command::SendStatus).await;
        }
    }

    /// Whether the link task has ended (the lender closed it).
    pub fn link_ended(&self) -> bool {
        self.link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(true, |(_, task)| task.is_finished())
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn send(ws: &mut Ws, message: &AgentMessage) {
    let _ = ws.send(Message::text(control::to_json(message))).await;
}

async fn run(
    mut ws: Ws,
    name: String,
    state: Arc<Mutex<AgentState>>,
    mut rx: mpsc::Receiver<Command>,
) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::SendStatus) => {
                    let status = FakeAgent::status(&name, &lock());
                    send(&mut ws, &AgentMessage::Status { status }).await;
                }
                Some(Command::Close) | None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        lock().closed = frame.map(|f| (f.code, f.reason.to_string()));
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return,
                };
                let message: LenderMessage = match serde_json::from_str(text.as_str()) {
                    Ok(message) => message,
                    Err(err) => panic!("agent {name}: bad message from the lender: {err}: {text}"),
                };
                match message {
                    LenderMessage::Welcome { .. } => lock().welcomed = true,
                    LenderMessage::Request { id, request } => {
                        answer(&mut ws, &name, &state, id, request).await;
                    }
                }
            }
        }
    }
}

async fn answer(
    ws: &mut Ws,
    name: &str,
    state: &Arc<Mutex<AgentState>>,
    id: u64,
    request: Request,
) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    match request {
        Request::Borrow(borrow) => {
            let (reply, moved) = {
                let mut s = lock();
                if s.place.is_some() {
                    s.lent_twice = true;
                }
                let url = match &borrow.target {
                    Target::Url { url } => url.clone(),
                    other => panic!("unexpected target {other:?}"),
                };
                s.borrows.push(borrow);
                if s.mute {
                    return;
                }
                match s.refuse.clone() {
                    Some(reason) => (Reply::Error(reason), false),
                    None => {
                        s.place = Some(url);
                        (
                            Reply::Ok(Response::Accepted {
                                message: "online at the borrower".into(),
                            }),
                            true,
                        )
                    }
                }
            };
            send(ws, &AgentMessage::Reply { id, reply }).await;
            if moved {
                let status = FakeAgent::status(name, &lock());
                send(ws, &AgentMessage::Status { status }).await;
            }
        }
        Request::Return { when, .. } => {
            {
                let mut s = lock();
                s.returns.push(when);
                s.place = None;
                s.busy = false;
            }
            let reply = Reply::Ok(Response::Accepted {
                message: "home".into(),
            });
            send(ws, &AgentMessage::Reply { id, reply }).await;
            let status = FakeAgent::status(name, &lock());
            send(ws, &AgentMessage::Status { status }).await;
        }
        Request::Status => {
            let status = FakeAgent::status(name, &lock());
            let reply = Reply::Ok(Response::Status(status));
            send(ws, &AgentMessage::Reply { id, reply }).await;
        }
        Request::Events => {
            let reply = Reply::error("events are streamed on the link anyway");
            send(ws, &AgentMessage::Reply { id, reply }).await;
        }
    }
}
