//! Fake agents: they speak the agent link (`control::link`) as `jnlp-agent
//! --lender` would, and do what a test tells them (refuse, stay mute, be
//! busy) instead of moving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use control::link::{AgentMessage, LenderMessage, LINK_PATH};
use control::{BorrowRequest, Phase, Placement, Reply, Request, Response, Status, Target, When};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{ok, HOME};

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

#[derive(Debug)]
enum Command {
    SendStatus,
    Close,
}

#[derive(Debug)]
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
            .is_none_or(|(_, task)| task.is_finished())
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
