//! The scripted controller's WebSocket agent endpoint (PROTOCOL.md 3),
//! driven by a tokio-tungstenite client and raw HTTP/1.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use remoting_protocol::chunk::{put_command, ChunkHeader};
use remoting_protocol::Capability;
use testkit::controller::{ChannelEnd, REMOTING_MINIMUM_VERSION};
use testkit::{Channel, ControllerEvent, Peer, TestController};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Bound on every await; generous for a loaded 2-core machine.
const T: Duration = Duration::from_secs(20);
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NODE: &str = "ws-node";

type Client = WebSocketStream<TcpStream>;

async fn start(peer: Peer) -> TestController {
    TestController::builder()
        .node(NODE, SECRET)
        .peer(peer)
        .start()
        .await
}

/// `Node-Name`, `Secret-Key` and `X-Remoting-Capability`, as agent.jar sends them.
fn agent_headers(node: &str, secret: &str) -> Vec<(String, String)> {
    vec![
        ("Node-Name".into(), node.into()),
        ("Secret-Key".into(), secret.into()),
        (
            "X-Remoting-Capability".into(),
            Capability::CURRENT.to_base64(),
        ),
    ]
}

/// A WebSocket upgrade of `wsagents/` with these extra headers.
async fn ws_connect(
    controller: &TestController,
    headers: &[(String, String)],
) -> Result<(Client, http::HeaderMap), WsError> {
    let addr = controller.http_addr();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(format!("ws://{addr}/wsagents/"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let tcp = timeout(T, TcpStream::connect(addr)).await.unwrap().unwrap();
    let (client, response) = timeout(
        T,
        tokio_tungstenite::client_async(request.body(()).unwrap(), tcp),
    )
    .await
    .expect("upgrade timed out")?;
    Ok((client, response.headers().clone()))
}

/// An accepted agent connection and its `Connection-Cookie`.
async fn agent(controller: &TestController, extra: &[(&str, &str)]) -> (Client, String) {
    let mut headers = agent_headers(NODE, SECRET);
    headers.extend(extra.iter().map(|(n, v)| ((*n).into(), (*v).into())));
    let (client, response) = ws_connect(controller, &headers).await.unwrap();
    let cookie = header(&response, "connection-cookie").unwrap().to_owned();
    (client, cookie)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Status, headers and body of a raw `GET {path}` with these headers (an
/// upgrade request if they say so; the answer is not a 101 here).
async fn raw_get(
    controller: &TestController,
    path: &str,
    headers: &[(String, String)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut tcp = timeout(T, TcpStream::connect(controller.http_addr()))
        .await
        .unwrap()
        .unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n",
        controller.http_addr()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    timeout(T, tcp.write_all(request.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut more = [0u8; 4096];
        let n = timeout(T, tcp.read(&mut more)).await.unwrap().unwrap();
        assert!(n > 0, "EOF inside the response head: {buf:?}");
        buf.extend_from_slice(&more[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let response_headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = response_headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("content-length");
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut more = [0u8; 4096];
        let n = timeout(T, tcp.read(&mut more)).await.unwrap().unwrap();
        assert!(n > 0, "EOF inside the body");
        body.extend_from_slice(&more[..n]);
    }
    (status, response_headers, body)
}

/// The upgrade headers a raw request needs to count as a WebSocket upgrade.
fn upgrade_headers() -> Vec<(String, String)> {
    vec![
        ("Connection".into(), "Upgrade".into()),
        ("Upgrade".into(), "websocket".into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
        ("Sec-WebSocket-Key".into(), generate_key()),
    ]
}

fn upgrade_event(log: &[ControllerEvent], status: u16) -> Option<&[(String, String)]> {
    log.iter().rev().find_map(|e| match e {
        ControllerEvent::WebSocketUpgrade {
            status: s, headers, ..
        } if *s == status => Some(headers.as_slice()),
        _ => None,
    })
}

fn has(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn accepted(took_over: bool) -> impl Fn(&[ControllerEvent]) -> bool {
    move |log| {
        log.iter().any(|e| {
            matches!(e, ControllerEvent::Accepted { node, took_over: t, .. } if node == NODE && *t == took_over)
        })
    }
}

fn closed(how: ChannelEnd) -> impl Fn(&[ControllerEvent]) -> bool {
    move |log| {
        log.contains(&ControllerEvent::ChannelClosed {
            node: NODE.into(),
            how,
        })
    }
}

/// Reads until the controller's close frame; its code, or `None` if the
/// connection ended without one. Pings are answered by the client as it reads.
async fn close_code(client: &mut Client) -> Option<CloseCode> {
    loop {
        match timeout(T, client.next()).await.expect("no close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// The next binary message (skipping pings).
async fn binary(client: &mut Client) -> Bytes {
    loop {
        match timeout(T, client.next()).await.expect("no message in time") {
            Some(Ok(Message::Binary(data))) => return data,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

fn chunk(payload: &[u8], last: bool) -> Vec<u8> {
    let mut out = ChunkHeader {
        len: payload.len(),
        last,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn login_answers_200_and_the_switch_makes_it_not_ready() {
    let controller = start(Peer::Hold).await;
    let (status, headers, body) = raw_get(&controller, "/login", &[]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("<html"));
    assert!(has(&headers, "x-jenkins").is_some());
    let http = ControllerEvent::Http {
        path: "/login".into(),
        status: 200,
    };
    assert!(controller.log().contains(&http));
    controller.shutdown().await;

    let controller = TestController::builder().login_status(503).start().await;
    let (status, _, _) = raw_get(&controller, "/login", &[]).await;
    assert_eq!(status, 503);
    let http = ControllerEvent::Http {
        path: "/login".into(),
        status: 503,
    };
    assert!(controller.log().contains(&http));
    controller.shutdown().await;
}

#[tokio::test]
async fn refusals_use_jenkins_status_codes() {
    let controller = start(Peer::Hold).await;
    let upgrade = |headers: Vec<(String, String)>| {
        let mut all = upgrade_headers();
        all.extend(headers);
        all
    };
    let without = |name: &str| {
        let mut headers = agent_headers(NODE, SECRET);
        headers.retain(|(n, _)| n != name);
        upgrade(headers)
    };
    for missing in ["Node-Name", "Secret-Key", "X-Remoting-Capability"] {
        let (status, _, _) = raw_get(&controller, "/wsagents/", &without(missing)).await;
        assert_eq!(status, 400, "without {missing}");
        assert!(upgrade_event(&controller.log(), 400).is_some());
    }
    // Every agent header, but not an upgrade.
    let (status, _, _) = raw_get(&controller, "/wsagents/", &agent_headers(NODE, SECRET)).await;
    assert_eq!(status, 400, "not an upgrade");

    let (status, _, body) = raw_get(
        &controller,
        "/wsagents/",
        &upgrade(agent_headers("nobody", SECRET)),
    )
    .await;
    assert_eq!(status, 400);
    let body = String::from_utf8(body).unwrap();
    assert!(body.to_lowercase().contains("no such agent"), "{body}");
    assert!(body.contains("nobody"), "{body}");
    let log = controller.log();
    assert!(matches!(
        log.last(),
        Some(ControllerEvent::WebSocketUpgrade { node, status: 400, .. }) if node == "nobody"
    ));

    let (status, _, body) = raw_get(
        &controller,
        "/wsagents/",
        &upgrade(agent_headers(NODE, "wrong")),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.is_empty(), "{body:?}");
    assert!(upgrade_event(&controller.log(), 403).is_some());
    assert!(!controller.is_online(NODE));

    // Already connected: no cookie, then someone else's cookie.
    let (_client, cookie) = agent(&controller, &[]).await;
    controller.wait_for(accepted(false), T).await;
    let other_cookie = cookie.chars().rev().collect::<String>();
    for cookie in [None, Some(other_cookie)] {
        let mut headers = upgrade(agent_headers(NODE, SECRET));
        headers.extend(cookie.map(|c| ("Connection-Cookie".to_owned(), c)));
        let (status, _, body) = raw_get(&controller, "/wsagents/", &headers).await;
        assert_eq!(status, 400);
        assert_eq!(
            String::from_utf8(body).unwrap().trim_end(),
            format!("{NODE} is already connected to this controller. Rejecting this connection.")
        );
    }
    // A cookie that is not hex: 500, and the live channel stays.
    let mut headers = upgrade(agent_headers(NODE, SECRET));
    headers.push(("Connection-Cookie".to_owned(), "not-hex".to_owned()));
    let (status, _, _) = raw_get(&controller, "/wsagents/", &headers).await;
    assert_eq!(status, 500);
    assert!(controller.is_online(NODE));
    let log = controller.log();
    assert!(!log
        .iter()
        .any(|e| matches!(e, ControllerEvent::ChannelClosed { .. })));
    // No plain Http events for wsagents/.
    assert!(!log
        .iter()
        .any(|e| matches!(e, ControllerEvent::Http { path, .. } if path == "/wsagents/")));
    controller.shutdown().await;
}

#[tokio::test]
async fn legacy_controllers_refuse_a_second_connection_with_500() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .legacy_already_connected_500()
        .start()
        .await;
    let (_client, _) = agent(&controller, &[]).await;
    controller.wait_for(accepted(false), T).await;
    let err = ws_connect(&controller, &agent_headers(NODE, SECRET))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, WsError::Http(response) if response.status() == 500),
        "{err:?}"
    );
    assert!(upgrade_event(&controller.log(), 500).is_some());
    controller.shutdown().await;
}

#[tokio::test]
async fn fatal_nodes_and_bad_capabilities_get_500() {
    let controller = TestController::builder()
        .fatal_node(NODE, "Disabled")
        .start()
        .await;
    let mut headers = upgrade_headers();
    headers.extend(agent_headers(NODE, SECRET));
    let (status, _, body) = raw_get(&controller, "/wsagents/", &headers).await;
    assert_eq!(status, 500);
    assert_eq!(body, b"Disabled\n");
    // A capability that does not parse is a server error too, before any check.
    let mut headers = upgrade_headers();
    headers.extend(agent_headers("nobody", SECRET));
    headers.retain(|(n, _)| n != "X-Remoting-Capability");
    headers.push(("X-Remoting-Capability".into(), "not base64!".into()));
    let (status, _, _) = raw_get(&controller, "/wsagents/", &headers).await;
    assert_eq!(status, 500);
    controller.shutdown().await;
}

#[tokio::test]
async fn disabled_web_socket_support_answers_404() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .web_socket_disabled()
        .start()
        .await;
    let err = ws_connect(&controller, &agent_headers(NODE, SECRET))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, WsError::Http(response) if response.status() == 404),
        "{err:?}"
    );
    let log = controller.log();
    assert!(matches!(
        log.last(),
        Some(ControllerEvent::WebSocketUpgrade { node, status: 404, .. }) if node == NODE
    ));
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}

/// The 101 carries the remoting headers; the request's headers reach the
/// event log; the TCP port can be disabled meanwhile.
#[tokio::test]
async fn accepted_upgrade_carries_the_remoting_headers() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .tcp_agent_port_disabled()
        .remoting_minimum_version("3000.vdeadbeef")
        .start()
        .await;
    let (status, _, _) = raw_get(&controller, "/tcpSlaveAgentListener/", &[]).await;
    assert_eq!(status, 404);
    let mut headers = agent_headers(NODE, SECRET);
    headers.push(("X-Extra".into(), "demo".into()));
    let (_client, response) = ws_connect(&controller, &headers).await.unwrap();
    assert_eq!(
        header(&response, "x-remoting-capability"),
        Some(Capability::CURRENT.to_base64().as_str())
    );
    assert_eq!(
        header(&response, "x-remoting-minimum-version"),
        Some("3000.vdeadbeef")
    );
    let cookie = header(&response, "connection-cookie").unwrap().to_owned();
    assert_eq!(cookie.len(), 32);
    assert!(cookie
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let log = controller.wait_for(accepted(false), T).await;
    let upgrade_at = log
        .iter()
        .position(|e| matches!(e, ControllerEvent::WebSocketUpgrade { status: 101, .. }))
        .unwrap();
    let accepted_at = log
        .iter()
        .position(|e| matches!(e, ControllerEvent::Accepted { .. }))
        .unwrap();
    assert!(upgrade_at < accepted_at);
    let request = upgrade_event(&log, 101).unwrap();
    assert_eq!(has(request, "x-extra").as_deref(), Some("demo"));
    assert_eq!(has(request, "node-name").as_deref(), Some(NODE));
    assert_eq!(has(request, "connection-cookie"), None);
    assert!(matches!(
        &log[accepted_at],
        ControllerEvent::Accepted { cookie: c, took_over: false, .. } if *c == cookie
    ));
    assert_eq!(controller.current_cookie(NODE), Some(cookie));
    assert!(controller.is_online(NODE));
    controller.shutdown().await;
}

#[tokio::test]
async fn default_minimum_version_is_published() {
    let controller = start(Peer::Hold).await;
    let (_client, response) = ws_connect(&controller, &agent_headers(NODE, SECRET))
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-remoting-minimum-version"),
        Some(REMOTING_MINIMUM_VERSION)
    );
    controller.shutdown().await;
}

/// Each chunk comes back as its own message, however the agent split them.
#[tokio::test]
async fn echo_peer_sends_one_chunk_per_message() {
    let controller = start(Peer::Echo).await;
    let (mut client, _) = agent(&controller, &[]).await;
    let (a, b, c) = (
        chunk(b"first", false),
        chunk(b"second", true),
        chunk(b"", true),
    );

    // Three chunks in one message.
    let together = [a.clone(), b.clone(), c.clone()].concat();
    client.send(Message::Binary(together.into())).await.unwrap();
    assert_eq!(binary(&mut client).await, a);
    assert_eq!(binary(&mut client).await, b);
    assert_eq!(binary(&mut client).await, c);

    // A header alone, then its payload; a chunk split inside its payload.
    let d = chunk(b"straddling", true);
    client
        .send(Message::Binary(Bytes::copy_from_slice(&d[..1])))
        .await
        .unwrap();
    client
        .send(Message::Binary(Bytes::copy_from_slice(&d[1..5])))
        .await
        .unwrap();
    client
        .send(Message::Binary(Bytes::copy_from_slice(&d[5..])))
        .await
        .unwrap();
    assert_eq!(binary(&mut client).await, d);

    // One message in three frames (continuation frames), two chunks in it.
    let e = chunk(&[7u8; 300], false);
    let f = chunk(b"tail", true);
    let message = [e.clone(), f.clone()].concat();
    let frames = [
        Frame::message(message[..100].to_vec(), OpCode::Data(Data::Binary), false),
        Frame::message(
            message[100..250].to_vec(),
            OpCode::Data(Data::Continue),
            false,
        ),
        Frame::message(message[250..].to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        client.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(binary(&mut client).await, e);
    assert_eq!(binary(&mut client).await, f);

    // The largest message accepted: exactly 64 KiB (two chunks).
    let g = chunk(&[1u8; 0x7fff], false);
    let h = chunk(&vec![2u8; 64 * 1024 - g.len() - 2], true);
    client
        .send(Message::Binary([g.clone(), h.clone()].concat().into()))
        .await
        .unwrap();
    assert_eq!(binary(&mut client).await, g);
    assert_eq!(binary(&mut client).await, h);
    assert!(controller.is_online(NODE));
    controller.shutdown().await;
}

#[tokio::test]
async fn the_live_channels_cookie_takes_the_node_over() {
    let controller = start(Peer::Hold).await;
    let (mut first, cookie) = agent(&controller, &[]).await;
    controller.wait_for(accepted(false), T).await;
    // In upper case: Jenkins normalises it and answers with it.
    let (_second, new_cookie) = agent(
        &controller,
        &[("Connection-Cookie", &cookie.to_uppercase())],
    )
    .await;
    assert_eq!(new_cookie, cookie);
    let log = controller
        .wait_for(
            |log| accepted(true)(log) && closed(ChannelEnd::TakenOver)(log),
            T,
        )
        .await;
    let request = upgrade_event(&log, 101).unwrap();
    assert_eq!(
        has(request, "connection-cookie"),
        Some(cookie.to_uppercase())
    );
    assert!(controller.is_online(NODE));
    assert_eq!(controller.current_cookie(NODE), Some(new_cookie));
    // The controller ended the old channel: a normal close.
    assert_eq!(close_code(&mut first).await, Some(CloseCode::Normal));
    controller.shutdown().await;
}

#[tokio::test]
async fn disconnect_sends_a_normal_close() {
    let controller = start(Peer::Echo).await;
    let (mut client, _) = agent(&controller, &[]).await;
    controller.wait_for(accepted(false), T).await;
    assert!(controller.disconnect(NODE));
    controller
        .wait_for(closed(ChannelEnd::Disconnected), T)
        .await;
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Normal));
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}

/// A script that holds its channel but never reads it: only the transport
/// can notice the end.
fn idle_script() -> Peer {
    Peer::script(|channel| async move {
        let Channel { framed, kicked, .. } = channel;
        kicked.cancelled().await;
        drop(framed);
    })
}

#[tokio::test]
async fn a_close_frame_ends_the_channel_at_once() {
    for peer in [Peer::Hold, idle_script()] {
        let controller = start(peer.clone()).await;
        let (mut client, _) = agent(&controller, &[]).await;
        controller.wait_for(accepted(false), T).await;
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        timeout(T, client.close(Some(normal)))
            .await
            .unwrap()
            .unwrap();
        // The controller answers the close with the same (normal) status.
        assert_eq!(
            close_code(&mut client).await,
            Some(CloseCode::Normal),
            "{peer:?}"
        );
        controller
            .wait_for(closed(ChannelEnd::ConnectionLost), T)
            .await;
        assert!(!controller.is_online(NODE), "{peer:?}");
        controller.shutdown().await;
    }
}

#[tokio::test]
async fn a_tcp_drop_without_close_ends_the_channel_at_once() {
    for peer in [Peer::Hold, idle_script()] {
        let controller = start(peer.clone()).await;
        let (client, _) = agent(&controller, &[]).await;
        controller.wait_for(accepted(false), T).await;
        drop(client);
        controller
            .wait_for(closed(ChannelEnd::ConnectionLost), T)
            .await;
        assert!(!controller.is_online(NODE), "{peer:?}");
        let log = controller.log();
        assert!(
            !log.iter()
                .any(|e| matches!(e, ControllerEvent::CloseNotifyIgnored { .. })),
            "no ghosts over WebSocket"
        );
        controller.shutdown().await;
    }
}

/// PROTOCOL.md 5, row 5, over WebSocket: the recorded answer as one message.
#[tokio::test]
async fn a_close_command_is_answered_and_ends_the_channel() {
    for (peer, first) in [
        (Peer::Hold, true),
        (Peer::Echo, true),
        (Peer::Hold, false),
        (Peer::Echo, false),
    ] {
        let controller = start(peer.clone()).await;
        let (mut client, _) = agent(&controller, &[]).await;
        controller.wait_for(accepted(false), T).await;
        let mut before = BytesMut::new();
        if first {
            put_command(&mut before, b"some command first");
            client
                .send(Message::Binary(before.clone().freeze()))
                .await
                .unwrap();
        }
        let mut close = BytesMut::new();
        remoting_protocol::close::put_close_command(&mut close);
        client.send(Message::Binary(close.freeze())).await.unwrap();
        let mut expected = Vec::new();
        if matches!(peer, Peer::Echo) && first {
            expected.push(before.to_vec());
        }
        expected.push(testkit::fixtures::controller_close_command());
        let mut got = Vec::new();
        let code = loop {
            match timeout(T, client.next()).await.unwrap() {
                Some(Ok(Message::Binary(data))) => got.push(data.to_vec()),
                Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
                Some(Ok(_)) => {}
                other => panic!("{peer:?}: {other:?}"),
            }
        };
        assert_eq!(got, expected, "{peer:?}");
        assert_eq!(code, Some(CloseCode::Normal), "{peer:?}");
        controller
            .wait_for(closed(ChannelEnd::CloseCommand), T)
            .await;
        assert!(!controller.is_online(NODE), "{peer:?}");
        controller.shutdown().await;
    }
}

#[tokio::test]
async fn pings_arrive_at_the_configured_interval() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .web_socket_ping_interval(Duration::from_millis(100))
        .start()
        .await;
    let (mut client, _) = agent(&controller, &[]).await;
    let started = Instant::now();
    let mut pings = 0;
    while pings < 2 {
        match timeout(T, client.next()).await.expect("no ping in time") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // The first after half the interval, the second one interval later.
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(controller.is_online(NODE));
    controller.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .web_socket_idle_timeout(Duration::from_millis(300))
        .start()
        .await;
    let started = Instant::now();
    // Not polled from here on: tungstenite answers nothing, sends nothing.
    let (mut client, _) = agent(&controller, &[]).await;
    controller
        .wait_for(closed(ChannelEnd::ConnectionLost), T)
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!controller.is_online(NODE));
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Away));
    controller.shutdown().await;
}

#[tokio::test]
async fn a_message_over_64_kib_gets_close_1009() {
    let controller = start(Peer::Echo).await;
    let (mut client, _) = agent(&controller, &[]).await;
    controller.wait_for(accepted(false), T).await;
    let big = vec![0u8; 65 * 1024];
    timeout(T, client.send(Message::Binary(big.into())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Size));
    controller
        .wait_for(closed(ChannelEnd::ConnectionLost), T)
        .await;
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}
