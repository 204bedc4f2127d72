//! The lender link (`--lender`): the agent binary, with the fake engine,
//! against a lender written here (a WebSocket server that checks the
//! bearer token and speaks `control::link`) and two test controllers, home
//! and borrower.
// tungstenite's server callback fixes the (large) error type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lending::{borrower, home, BORROWER_SECRET, HOME_SECRET};
use common::{accepted, closed, fake_engine, temp_dir, until_online, AgentProcess};
use control::link::{AgentMessage, LenderMessage, LINK_PATH};
use control::{
    BorrowRequest, EventKind, Phase, Placement, Reply, Request, Response, Status, Target, When,
};
use futures_util::{SinkExt, StreamExt};
use testkit::{Peer, TestController};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as UpgradeRequest, Response as UpgradeResponse,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TOKEN: &str = "jla_7e57700000000000000000000000000000000000000000000000000000000000";
const LONG: Duration = Duration::from_secs(30);

/// One link attempt as the fake lender saw it.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    path: String,
    token_ok: bool,
}

/// A lender on 127.0.0.1:0: refuses any token but [`TOKEN`] with 401 and
/// hands every accepted link to the test.
struct FakeLender {
    url: String,
    links: mpsc::UnboundedReceiver<LenderLink>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl FakeLender {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (tx, links) = mpsc::unbounded_channel();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                let check = move |request: &UpgradeRequest, response: UpgradeResponse| {
                    let token_ok = request
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                    let path = request.uri().path().to_owned();
                    let ok = token_ok && path == LINK_PATH;
                    seen.lock().unwrap().push(Attempt {
                        at: Instant::now(),
                        path,
                        token_ok,
                    });
                    if ok {
                        Ok(response)
                    } else {
                        let mut refusal = ErrorResponse::new(Some("unknown agent token".into()));
                        *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
                        Err(refusal)
                    }
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                    let _ = tx.send(LenderLink { ws });
                }
            }
        });
        Self {
            url,
            links,
            attempts,
        }
    }

    /// The next accepted link.
    async fn accept(&mut self) -> LenderLink {
        tokio::time::timeout(LONG, self.links.recv())
            .await
            .expect("the agent opened the link")
            .unwrap()
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

/// The lender's end of one link.
struct LenderLink {
    ws: WebSocketStream<TcpStream>,
}

impl LenderLink {
    /// The agent's next message (pings answered on the way).
    async fn next(&mut self) -> AgentMessage {
        loop {
            let message = tokio::time::timeout(LONG, self.ws.next())
                .await
                .expect("a message from the agent")
                .expect("the link is open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|err| panic!("{err}: {}", text.as_str()));
            }
        }
    }

    async fn send(&mut self, message: &LenderMessage) {
        self.send_text(&serde_json::to_string(message).unwrap())
            .await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Reads the hello and answers it.
    async fn hello(&mut self) -> (String, Vec<String>, String, Status) {
        let AgentMessage::Hello {
            node,
            labels,
            version,
            status,
        } = self.next().await
        else {
            panic!("the first message is not a hello")
        };
        self.send(&LenderMessage::Welcome {
            lender: "test-pool".into(),
        })
        .await;
        (node, labels, version, status)
    }

    /// Sends `request` as `id` and reads until its reply; returns it with
    /// every other message read meanwhile.
    async fn ask(&mut self, id: u64, request: Request) -> (Reply, Vec<AgentMessage>) {
        self.send(&LenderMessage::Request { id, request }).await;
        self.reply(id).await
    }

    async fn reply(&mut self, id: u64) -> (Reply, Vec<AgentMessage>) {
        let mut others = Vec::new();
        loop {
            match self.next().await {
                AgentMessage::Reply { id: got, reply } if got == id => return (reply, others),
                other => others.push(other),
            }
        }
    }
}

fn token_file(token: &str) -> PathBuf {
    let path = temp_dir("token").join("agent-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn start_agent(home: &TestController, lender: &FakeLender, token: &str) -> AgentProcess {
    let url = home.url();
    let cmd = format!("{} echo", fake_engine().display());
    let token = token_file(token);
    AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "mac-01",
            "--engine-command",
            &cmd,
            "--quiet-period",
            "200ms",
            "--lender",
            &lender.url,
            "--lender-token-file",
            token.to_str().unwrap(),
            "--labels",
            "xcode16, big-disk",
        ],
        &[("JENKINS_SECRET", HOME_SECRET)],
    )
}

fn borrow(borrower: &TestController, secret: &str) -> Request {
    Request::Borrow(BorrowRequest {
        target: Target::Url {
            url: borrower.url(),
        },
        name: "guest-mac".into(),
        secret: Some(secret.into()),
        secret_file: None,
        lease: Some(Duration::from_secs(3600)),
        idle_return: None,
        when: When::Idle,
        wait: Some(LONG),
        transport: None,
    })
}

async fn socket_status(agent: &AgentProcess) -> Status {
    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    match client.request(Request::Status).await.unwrap() {
        Response::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

fn statuses(messages: &[AgentMessage]) -> Vec<&Status> {
    messages
        .iter()
        .filter_map(|m| match m {
            AgentMessage::Status { status } => Some(status),
            _ => None,
        })
        .collect()
}

/// The lender lends the agent and takes it back; a link dropped meanwhile
/// comes back with a hello that says where the agent is.
#[tokio::test]
async fn the_lender_lends_the_agent_and_brings_it_home_over_the_link() {
    let home = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let mut lender = FakeLender::start().await;
    let agent = start_agent(&home, &lender, TOKEN);

    let mut link = lender.accept().await;
    let (node, labels, version, status) = link.hello().await;
    assert_eq!(node, "mac-01");
    assert_eq!(&labels[..2], ["xcode16", "big-disk"]);
    for automatic in [std::env::consts::OS, std::env::consts::ARCH] {
        assert!(
            labels.iter().any(|l| l == automatic),
            "{automatic}: {labels:?}"
        );
    }
    if std::env::consts::ARCH == "x86_64" {
        assert!(labels.iter().any(|l| l == "amd64"), "{labels:?}");
    }
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.placement, Placement::Home);
    assert_eq!(status.home_url.as_deref(), Some(home.url().as_str()));
    agent.wait_log("lender link up", 1, LONG).await;
    until_online(&home, "mac-01", true, LONG).await;

    // Borrow, waiting: the reply comes once the borrower sees the node.
    let (reply, meanwhile) = link.ask(1, borrow(&borrower, BORROWER_SECRET)).await;
    assert!(
        borrower.is_online("guest-mac"),
        "replied before online: {reply:?}"
    );
    assert!(
        matches!(&reply, Reply::Ok(Response::Accepted { message }) if message.contains(&borrower.url())),
        "{reply:?}"
    );
    assert!(!home.is_online("mac-01"));
    assert!(
        statuses(&meanwhile)
            .iter()
            .any(|s| s.placement == Placement::Borrowed
                && s.phase == Phase::Online
                && s.controller_url.as_deref() == Some(borrower.url().as_str())),
        "{meanwhile:#?}"
    );
    assert!(
        meanwhile.iter().any(|m| matches!(m, AgentMessage::Event { event } if matches!(event.kind, EventKind::Moved { .. }))),
        "{meanwhile:#?}"
    );
    // The control socket keeps working beside the link.
    assert_eq!(socket_status(&agent).await.placement, Placement::Borrowed);

    // The lender drops the link: the agent comes back and says where it is.
    drop(link);
    let mut link = lender.accept().await;
    let (node, _, _, status) = link.hello().await;
    assert_eq!(node, "mac-01");
    assert_eq!(status.placement, Placement::Borrowed);
    assert_eq!(
        status.controller_url.as_deref(),
        Some(borrower.url().as_str())
    );
    agent.wait_log("lender link down", 1, LONG).await;
    agent.wait_log("lender link up", 2, LONG).await;

    // Return, waiting: the reply comes once home sees the node.
    let (reply, _) = link
        .ask(
            2,
            Request::Return {
                when: When::Now,
                wait: Some(LONG),
            },
        )
        .await;
    assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    assert!(home.is_online("mac-01") && !borrower.is_online("guest-mac"));
    let (reply, _) = link.ask(3, Request::Status).await;
    assert!(
        matches!(&reply, Reply::Ok(Response::Status(s)) if s.placement == Placement::Home),
        "{reply:?}"
    );
    assert!(lender
        .attempts()
        .iter()
        .all(|a| a.token_ok && a.path == LINK_PATH));
    let log = agent.log();
    assert!(!log.contains(TOKEN), "the token was logged");
    assert!(
        !log.contains(BORROWER_SECRET),
        "the borrower's secret was logged"
    );
    home.shutdown().await;
    borrower.shutdown().await;
}

/// A borrow the borrower refuses is an error reply, and the agent never
/// leaves home, as the home controller sees it.
#[tokio::test]
async fn a_borrow_with_a_wrong_secret_gets_an_error_reply_and_the_agent_stays_home() {
    let home = home(Peer::Hold).await;
    let borrower = borrower(Peer::Hold).await;
    let mut lender = FakeLender::start().await;
    let agent = start_agent(&home, &lender, TOKEN);
    let mut link = lender.accept().await;
    link.hello().await;
    until_online(&home, "mac-01", true, LONG).await;

    link.send(&LenderMessage::Request {
        id: 41,
        request: borrow(&borrower, "0000"),
    })
    .await;
    let mut seen = Vec::new();
    let reply = loop {
        assert!(home.is_online("mac-01"), "left home: {seen:#?}");
        match link.next().await {
            AgentMessage::Reply { id: 41, reply } => break reply,
            other => seen.push(other),
        }
    };
    let Reply::Error(message) = reply else {
        panic!("{reply:?}")
    };
    assert!(message.contains("the borrow failed"), "{message}");
    assert!(message.contains("stays where it was"), "{message}");
    assert!(statuses(&seen)
        .iter()
        .all(|s| s.placement == Placement::Home));
    let (reply, _) = link.ask(42, Request::Status).await;
    assert!(
        matches!(&reply, Reply::Ok(Response::Status(s)) if s.placement == Placement::Home && s.pending.is_none()),
        "{reply:?}"
    );
    assert_eq!(closed(&home.log()), 0, "home never dropped the agent");
    assert_eq!(accepted(&borrower.log()), 0);
    assert!(!agent.log().contains(TOKEN));
    home.shutdown().await;
    borrower.shutdown().await;
}

/// A token the lender refuses: a clear error, retried with growing waits,
/// the token never printed; the agent serves home all the while.
#[tokio::test]
async fn a_refused_token_is_logged_clearly_and_retried_with_backoff() {
    let home = home(Peer::Hold).await;
    let lender = FakeLender::start().await;
    let wrong = "jla_wrong0000000000000000000000000000000000000000000000000000000000";
    let agent = start_agent(&home, &lender, wrong);
    until_online(&home, "mac-01", true, LONG).await;
    // The test agent reconnects after 50 ms doubling to 500 ms.
    let deadline = Instant::now() + LONG;
    while lender.attempts().len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", lender.attempts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = lender.attempts();
    assert!(attempts.iter().all(|a| !a.token_ok && a.path == LINK_PATH));
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Each wait is between half and all of 50 ms, 100, 200, 400, 500...
    assert!(gaps[3] >= Duration::from_millis(180), "{gaps:?}");
    assert!(gaps[0] < gaps[3], "{gaps:?}");
    agent.wait_log("cannot open the lender link", 3, LONG).await;
    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("cannot open the lender link"))
        .unwrap();
    assert!(refusal.contains("401"), "{refusal}");
    assert!(refusal.contains("--lender-token-file"), "{refusal}");
    assert!(refusal.contains("unknown agent token"), "{refusal}");
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(!log.contains(wrong), "the token was logged");
    assert!(!log.contains("lender link up"));
    // The agent itself is unaffected.
    assert_eq!(socket_status(&agent).await.phase, Phase::Online);
    home.shutdown().await;
}

/// Messages the link does not take are ignored or refused; nothing moves.
#[tokio::test]
async fn odd_lender_messages_are_ignored_or_refused_and_nothing_moves() {
    let home = home(Peer::Hold).await;
    let mut lender = FakeLender::start().await;
    let agent = start_agent(&home, &lender, TOKEN);
    let mut link = lender.accept().await;
    link.hello().await;
    until_online(&home, "mac-01", true, LONG).await;

    link.send_text("{not json").await;
    link.ws
        .send(Message::Binary(vec![0, 1, 2].into()))
        .await
        .unwrap();
    link.send_text(r#"{"type":"welcome","lender":"again"}"#)
        .await;
    link.send_text(r#"{"type":"request","id":5,"request":{"command":"fly"}}"#)
        .await;
    let (reply, _) = link.reply(5).await;
    assert!(
        matches!(&reply, Reply::Error(m) if m.contains("bad request")),
        "{reply:?}"
    );
    let (reply, _) = link.ask(6, Request::Events).await;
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    let secret = temp_dir("secret").join("borrower-secret");
    std::fs::write(&secret, BORROWER_SECRET).unwrap();
    let mut by_file = BorrowRequest {
        target: Target::Url {
            url: "http://127.0.0.1:9/".into(),
        },
        name: "guest-mac".into(),
        secret: None,
        secret_file: Some(secret),
        lease: None,
        idle_return: None,
        when: When::Now,
        wait: None,
        transport: None,
    };
    let (reply, _) = link.ask(7, Request::Borrow(by_file.clone())).await;
    assert!(
        matches!(&reply, Reply::Error(m) if m.contains("secret_file")),
        "{reply:?}"
    );
    // A borrow the agent itself refuses (no secret at all).
    by_file.secret_file = None;
    let (reply, _) = link.ask(8, Request::Borrow(by_file)).await;
    assert!(matches!(reply, Reply::Error(_)), "{reply:?}");
    // Still linked and home.
    let (reply, _) = link.ask(9, Request::Status).await;
    assert!(
        matches!(&reply, Reply::Ok(Response::Status(s)) if s.placement == Placement::Home && s.pending.is_none()),
        "{reply:?}"
    );
    assert!(
        agent.count("ignored a message from the lender") >= 2,
        "{}",
        agent.log()
    );
    assert!(agent.count("ignored a binary message from the lender") == 1);
    assert_eq!(lender.attempts().len(), 1, "the link never dropped");
    assert_eq!(socket_status(&agent).await.placement, Placement::Home);
    home.shutdown().await;
}
