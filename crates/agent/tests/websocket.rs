//! The agent over the WebSocket transport (`-webSocket`), against test
//! controllers whose web port follows PROTOCOL.md section 3: the recorded
//! session byte-exactly, bulk data, every refusal, headers, cookies,
//! keepalive through a proxy that stops forwarding, proxies, and a borrow
//! to a controller that has no TCP agent port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::sessions::{each_way, recorded_session, scripted};
use common::{accepted, fake_engine, until_online, AgentProcess, CuttableProxy};
use testkit::proxy::TestProxy;
use testkit::{ControllerEvent, Peer, TestController};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const LONG: Duration = Duration::from_secs(30);

fn engine(mode: &str) -> String {
    format!("{} {mode}", fake_engine().display())
}

/// A WebSocket-only controller (discovery answers 404) with one node.
async fn ws_controller(node: &str, peer: Peer) -> TestController {
    TestController::builder()
        .node(node, SECRET)
        .remoting_jar(b"jar".to_vec())
        .tcp_agent_port_disabled()
        .peer(peer)
        .start()
        .await
}

/// The agent's arguments for `node` at `url` over a WebSocket.
fn ws_args(url: &str, node: &str, cmd: &str) -> Vec<String> {
    [
        "-webSocket",
        "-url",
        url,
        "-name",
        node,
        "-secret",
        SECRET,
        "--engine-command",
        cmd,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn start(args: &[String], envs: &[(&str, &str)]) -> AgentProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    AgentProcess::start(&args, envs)
}

fn upgrades(log: &[ControllerEvent]) -> Vec<(u16, Vec<(String, String)>)> {
    log.iter()
        .filter_map(|e| match e {
            ControllerEvent::WebSocketUpgrade {
                status, headers, ..
            } => Some((*status, headers.clone())),
            _ => None,
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The recorded session plays over the WebSocket: every chunk crosses
/// unchanged both ways; the login check came first; the TCP agent port
/// was never touched.
#[tokio::test]
async fn recorded_session_crosses_a_web_socket_byte_exactly() {
    let (peer, verdict) = scripted(recorded_session);
    let controller = ws_controller("capture-agent", peer).await;
    let mut args = ws_args(
        &controller.url(),
        "capture-agent",
        &engine("replay session-accepted.jsonl"),
    );
    args.push("-noReconnect".into());
    let mut agent = start(&args, &[]);
    let verdict = tokio::time::timeout(LONG, verdict)
        .await
        .expect("script finished")
        .unwrap();
    verdict.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let status = agent.wait_exit(LONG).await;
    assert!(status.success(), "{status:?}\n{}", agent.log());

    let log = controller.log();
    let login = log
        .iter()
        .position(|e| matches!(e, ControllerEvent::Http { path, status: 200 } if path == "/login"));
    let upgrade = log
        .iter()
        .position(|e| matches!(e, ControllerEvent::WebSocketUpgrade { status: 101, .. }));
    assert!(login.is_some() && login < upgrade, "{log:#?}");
    assert!(
        !log.iter().any(|e| matches!(e, ControllerEvent::HandshakeFailed { .. })
            || matches!(e, ControllerEvent::Http { path, .. } if path == "/tcpSlaveAgentListener/")),
        "{log:#?}"
    );
    assert!(agent.log().contains("web_socket"), "{}", agent.log());
    assert!(!agent.log().contains(SECRET), "the secret reached the log");
    controller.shutdown().await;
}

/// 1 GiB from the controller through the agent to an echoing engine and
/// back, over the WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_each_way_over_a_web_socket() {
    let (peer, verdict) = scripted(|channel| each_way(channel, 1 << 30));
    let controller = ws_controller("big", peer).await;
    let agent = start(&ws_args(&controller.url(), "big", &engine("echo")), &[]);
    let verdict = tokio::time::timeout(Duration::from_secs(300), verdict)
        .await
        .expect("1 GiB each way within 5 minutes")
        .unwrap();
    verdict.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    controller.shutdown().await;
}

async fn failing_run(args: &[String]) -> String {
    let mut args = args.to_vec();
    args.push("-noReconnect".into());
    let mut agent = start(&args, &[]);
    let status = agent.wait_exit(LONG).await;
    assert!(!status.success(), "{}", agent.log());
    let log = agent.log();
    assert!(!log.contains(SECRET), "the secret reached the log:\n{log}");
    log
}

/// Each refusal of the upgrade gives its own clear message.
#[tokio::test]
async fn web_socket_refusals_give_clear_errors() {
    let controller = ws_controller("n1", Peer::Hold).await;
    let url = controller.url();
    let cmd = engine("echo");

    // A wrong secret: 403, and the message says which secret to check.
    let mut args = ws_args(&url, "n1", &cmd);
    let at = args.iter().position(|a| a == SECRET).unwrap();
    args[at] = "f".repeat(64);
    let log = failing_run(&args).await;
    assert!(log.contains("403") && log.contains("-secret"), "{log}");

    // An unknown node: 400 "no such agent".
    let log = failing_run(&ws_args(&url, "nobody", &cmd)).await;
    assert!(log.to_lowercase().contains("no such agent"), "{log}");

    // Already connected: another agent holds n1.
    let holder = start(&ws_args(&url, "n1", &cmd), &[]);
    until_online(&controller, "n1", true, LONG).await;
    let log = failing_run(&ws_args(&url, "n1", &cmd)).await;
    assert!(log.contains("already connected"), "{log}");
    drop(holder);

    // No WebSocket support at all: 404.
    let bare = TestController::builder()
        .node("n1", SECRET)
        .remoting_jar(b"jar".to_vec())
        .web_socket_disabled()
        .start()
        .await;
    let log = failing_run(&ws_args(&bare.url(), "n1", &cmd)).await;
    assert!(log.contains("404") && log.contains("WebSocket"), "{log}");

    // Not ready: login answers 503, and no upgrade is attempted.
    let starting = TestController::builder()
        .node("n1", SECRET)
        .remoting_jar(b"jar".to_vec())
        .login_status(503)
        .start()
        .await;
    let log = failing_run(&ws_args(&starting.url(), "n1", &cmd)).await;
    assert!(log.contains("503") && log.contains("not ready"), "{log}");
    assert!(upgrades(&starting.log()).is_empty());
    controller.shutdown().await;
    bare.shutdown().await;
    starting.shutdown().await;
}

/// `-webSocketHeader`s reach the controller; the node's headers are as
/// agent.jar sends them; the cookie goes only on later attempts.
#[tokio::test]
async fn web_socket_headers_reach_the_controller() {
    let controller = ws_controller("hdr", Peer::Hold).await;
    let mut args = ws_args(&controller.url(), "hdr", &engine("echo"));
    args.extend(["-webSocketHeader".into(), "X-Extra=demo".into()]);
    let agent = start(&args, &[]);
    until_online(&controller, "hdr", true, LONG).await;
    let first = upgrades(&controller.log()).remove(0);
    assert_eq!(first.0, 101);
    let headers = &first.1;
    assert_eq!(header(headers, "x-extra"), Some("demo"));
    assert_eq!(header(headers, "node-name"), Some("hdr"));
    assert_eq!(header(headers, "secret-key"), Some(SECRET));
    assert!(header(headers, "x-remoting-capability").is_some());
    assert_eq!(header(headers, "connection-cookie"), None);
    assert!(
        !agent.log().contains("demo"),
        "header values are not logged"
    );
    controller.shutdown().await;
}

/// A controller without a TCP agent port: plain `-url` fails with a hint
/// to use `-webSocket`; with it, the agent connects.
#[tokio::test]
async fn a_controller_without_tcp_port_needs_web_socket() {
    let controller = ws_controller("nt", Peer::Hold).await;
    let url = controller.url();
    let cmd = engine("echo");
    let mut agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "nt",
            "-secret",
            SECRET,
            "-noReconnect",
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    let status = agent.wait_exit(LONG).await;
    assert!(!status.success());
    assert!(agent.log().contains("-webSocket"), "{}", agent.log());
    let _agent = start(&ws_args(&url, "nt", &cmd), &[]);
    until_online(&controller, "nt", true, LONG).await;
    controller.shutdown().await;
}

/// The agent's side of the connection is cut (the controller's stays
/// open): the reconnection carries the cookie and takes the channel over.
#[tokio::test]
async fn cookie_takeover_over_web_socket_after_an_agent_side_cut() {
    let controller = ws_controller("cut", Peer::Hold).await;
    let proxy = CuttableProxy::start(controller.http_addr()).await;
    let url = format!("http://127.0.0.1:{}/", proxy.port);
    let agent = start(&ws_args(&url, "cut", &engine("echo")), &[]);
    controller.wait_for(|log| accepted(log) == 1, LONG).await;
    // The 101 (and its cookie) must have reached the agent before the cut.
    agent.wait_log("\"connected\"", 1, LONG).await;
    let first_cookie = controller.current_cookie("cut").unwrap();
    proxy.cut_agent_side();
    let log = controller.wait_for(|log| accepted(log) == 2, LONG).await;
    assert!(
        log.iter().any(|e| matches!(
            e,
            ControllerEvent::Accepted {
                took_over: true,
                ..
            }
        )),
        "{log:#?}"
    );
    let second = upgrades(&log).pop().unwrap();
    assert_eq!(
        header(&second.1, "connection-cookie"),
        Some(first_cookie.as_str())
    );
    agent.wait_log("\"connected\"", 2, LONG).await;
    controller.shutdown().await;
}

/// A proxy that stops forwarding without closing anything (a reload that
/// hung): the agent notices within its keepalive limit and reconnects.
#[tokio::test]
async fn a_proxy_that_stops_forwarding_is_noticed_and_left() {
    let controller = ws_controller("frozen", Peer::Hold).await;
    let proxy = TestProxy::builder().start().await;
    let mut args = ws_args(&controller.url(), "frozen", &engine("echo"));
    args.extend(["--web-socket-idle-timeout".into(), "2s".into()]);
    let proxy_url = proxy.url();
    let agent = start(&args, &[("http_proxy", &proxy_url)]);
    // The 101 must have reached the agent before the tunnel freezes.
    agent.wait_log("\"connected\"", 1, LONG).await;
    proxy.freeze_open_tunnels();
    controller.wait_for(|log| accepted(log) == 2, LONG).await;
    agent.wait_log("no WebSocket frame", 1, LONG).await;
    controller.shutdown().await;
}

/// An `http` proxy with credentials carries the WebSocket as a CONNECT
/// tunnel; `no_proxy` bypasses it.
#[tokio::test]
async fn web_sockets_go_through_an_authenticating_proxy_unless_no_proxy() {
    let controller = ws_controller("px", Peer::Hold).await;
    let proxy = TestProxy::builder()
        .credentials("alice", "s3cret")
        .start()
        .await;
    let target = format!("127.0.0.1:{}", controller.http_addr().port());
    let mut args = ws_args(&controller.url(), "px", &engine("echo"));
    args.extend(["-proxyCredentials".into(), "alice:s3cret".into()]);
    let proxy_url = proxy.url();
    let agent = start(&args, &[("http_proxy", &proxy_url)]);
    until_online(&controller, "px", true, LONG).await;
    let seen = proxy.requests();
    assert!(seen.contains(&(target.clone(), 200)), "{seen:?}");
    assert!(!agent.log().contains("s3cret"));
    drop(agent);
    until_online(&controller, "px", false, LONG).await;

    let before = proxy.requests().len();
    let _direct = start(
        &args,
        &[("http_proxy", &proxy_url), ("no_proxy", "127.0.0.1")],
    );
    until_online(&controller, "px", true, LONG).await;
    assert_eq!(
        proxy.requests().len(),
        before,
        "no_proxy bypasses the proxy"
    );
    controller.shutdown().await;
}

async fn status(socket: &Path) -> control::Status {
    let mut client = control::client::connect(socket).await.unwrap();
    match client.request(control::Request::Status).await.unwrap() {
        control::Response::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

/// Home over TCP, lent to a controller that only has a WebSocket (no
/// transport given: the fallback is logged and shown), then back home
/// over TCP.
#[tokio::test]
async fn borrow_from_a_tcp_home_to_a_web_socket_only_borrower_and_back() {
    let home = TestController::builder()
        .node("lent", SECRET)
        .remoting_jar(b"jar".to_vec())
        .start()
        .await;
    let borrower = ws_controller("guest", Peer::Hold).await;
    let url = home.url();
    let cmd = engine("echo");
    let agent = AgentProcess::start(
        &[
            "-url",
            &url,
            "-name",
            "lent",
            "-secret",
            SECRET,
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    until_online(&home, "lent", true, LONG).await;
    // The agent marks itself online just after the controller does.
    let deadline = std::time::Instant::now() + LONG;
    while status(&agent.socket()).await.transport.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no transport in status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status(&agent.socket()).await.transport,
        Some(control::Transport::Tcp)
    );
    let request = control::BorrowRequest {
        target: control::Target::Url {
            url: borrower.url(),
        },
        name: "guest".into(),
        secret: Some(SECRET.into()),
        secret_file: None,
        lease: None,
        idle_return: None,
        when: control::When::Now,
        wait: Some(LONG),
        transport: None,
    };
    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    client
        .request(control::Request::Borrow(request))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    until_online(&borrower, "guest", true, LONG).await;
    until_online(&home, "lent", false, LONG).await;
    let now = status(&agent.socket()).await;
    assert_eq!(now.transport, Some(control::Transport::WebSocket));
    assert!(now.transport_fallback, "{now:?}");
    assert!(
        agent.log().contains("TCP agent port is disabled"),
        "{}",
        agent.log()
    );

    let mut client = control::client::connect(&agent.socket()).await.unwrap();
    client
        .request(control::Request::Return {
            when: control::When::Now,
            wait: Some(LONG),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    until_online(&home, "lent", true, LONG).await;
    until_online(&borrower, "guest", false, LONG).await;
    let back = status(&agent.socket()).await;
    assert_eq!(back.transport, Some(control::Transport::Tcp));
    assert!(!back.transport_fallback);
    home.shutdown().await;
    borrower.shutdown().await;
}

/// `wss`: the controller's certificate is checked against the system roots
/// plus `-cert` (which adds to them); without the CA the agent says what to
/// pass; `-noCertificateCheck` accepts anything.
#[tokio::test]
async fn wss_checks_certificates_with_cert_adding_a_ca() {
    let controller = TestController::builder()
        .node("tls", SECRET)
        .remoting_jar(b"jar".to_vec())
        .tcp_agent_port_disabled()
        .web_tls()
        .start()
        .await;
    let url = controller.url();
    assert!(url.starts_with("https://"), "{url}");
    let cmd = engine("echo");
    let log = failing_run(&ws_args(&url, "tls", &cmd)).await;
    assert!(log.contains("-cert"), "{log}");
    assert!(!controller.is_online("tls"));

    let dir = common::temp_dir("ca");
    let ca = testkit::web_pki::TestCa::shared().write_ca_pem(&dir);
    let mut args = ws_args(&url, "tls", &cmd);
    args.extend(["-cert".into(), format!("@{}", ca.display())]);
    let agent = start(&args, &[]);
    until_online(&controller, "tls", true, LONG).await;
    agent.wait_log("wss://", 1, LONG).await;
    drop(agent);
    until_online(&controller, "tls", false, LONG).await;

    let mut args = ws_args(&url, "tls", &cmd);
    args.push("-noCertificateCheck".into());
    let _agent = start(&args, &[]);
    until_online(&controller, "tls", true, LONG).await;
    controller.shutdown().await;
}

/// An `https://` proxy (TLS to the proxy itself, with credentials): the
/// WebSocket is a CONNECT tunnel inside that TLS; the web port's requests
/// go through it too.
#[tokio::test]
async fn web_sockets_go_through_an_https_proxy() {
    let controller = ws_controller("hp", Peer::Hold).await;
    let proxy = TestProxy::builder()
        .tls()
        .credentials("bob", "pa55")
        .start()
        .await;
    assert!(proxy.url().starts_with("https://"));
    let dir = common::temp_dir("ca");
    let ca = testkit::web_pki::TestCa::shared().write_ca_pem(&dir);
    let mut args = ws_args(&controller.url(), "hp", &engine("echo"));
    args.extend([
        "-cert".into(),
        format!("@{}", ca.display()),
        "-proxyCredentials".into(),
        "bob:pa55".into(),
    ]);
    let proxy_url = proxy.url();
    let agent = start(&args, &[("http_proxy", &proxy_url)]);
    until_online(&controller, "hp", true, LONG).await;
    let target = format!("127.0.0.1:{}", controller.http_addr().port());
    let seen = proxy.requests();
    assert!(
        seen.iter()
            .filter(|(t, s)| *t == target && *s == 200)
            .count()
            >= 2,
        "login and upgrade through the proxy: {seen:?}\n{}",
        agent.log()
    );
    controller.shutdown().await;
}

/// A JNLP file whose arguments carry `-webSocket` (what a controller with
/// WebSocket agents serves) selects the WebSocket.
#[tokio::test]
async fn a_jnlp_file_can_ask_for_web_socket() {
    let controller = TestController::builder()
        .node("jn", SECRET)
        .remoting_jar(b"jar".to_vec())
        .tcp_agent_port_disabled()
        .jnlp_options(&["-webSocket"])
        .start()
        .await;
    let jnlp = format!("{}computer/jn/jenkins-agent.jnlp", controller.url());
    let cmd = engine("echo");
    let _agent = AgentProcess::start(
        &[
            "-jnlpUrl",
            &jnlp,
            "-secret",
            SECRET,
            "--engine-command",
            &cmd,
        ],
        &[],
    );
    until_online(&controller, "jn", true, LONG).await;
    assert_eq!(upgrades(&controller.log()).last().map(|u| u.0), Some(101));
    controller.shutdown().await;
}
