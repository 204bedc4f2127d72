//! The scripted controller over real TCP, driven by the real client
//! handshake (`remoting_protocol::handshake::connect`) and raw HTTP/1.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _};
use remoting_protocol::chunk::put_command;
use remoting_protocol::handshake::{self, Connected, HandshakeConfig, HandshakeError, RefusalKind};
use remoting_protocol::utf::{put_utf, take_utf};
use remoting_protocol::{Capability, Chunk, ChunkCodec, InstanceIdentity};
use testkit::controller::ChannelEnd;
use testkit::{ControllerEvent, Peer, TestController};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Decoder as _;

/// Bound on every await; generous for a loaded 2-core machine.
const T: Duration = Duration::from_secs(20);
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NODE: &str = "agent-1";

async fn start() -> TestController {
    TestController::builder().node(NODE, SECRET).start().await
}

async fn connect(
    controller: &TestController,
    config: HandshakeConfig,
) -> Result<Connected<TcpStream>, HandshakeError> {
    let tcp = timeout(T, TcpStream::connect(controller.agent_addr()))
        .await
        .expect("connect timed out")
        .expect("connect");
    timeout(
        T,
        handshake::connect(tcp, "127.0.0.1", controller.identity(), config),
    )
    .await
    .expect("handshake timed out")
}

fn with_cookie(name: &str, secret: &str, cookie: Option<String>) -> HandshakeConfig {
    let mut config = HandshakeConfig::new(name, secret);
    config.cookie = cookie;
    config
}

fn accepted(node: &str, took_over: bool) -> impl Fn(&[ControllerEvent]) -> bool + '_ {
    move |log| {
        log.iter().any(|e| {
            matches!(e, ControllerEvent::Accepted { node: n, took_over: t, .. } if n == node && *t == took_over)
        })
    }
}

fn count(log: &[ControllerEvent], event: &ControllerEvent) -> usize {
    log.iter().filter(|e| *e == event).count()
}

fn closed(node: &str, how: ChannelEnd) -> ControllerEvent {
    ControllerEvent::ChannelClosed {
        node: node.into(),
        how,
    }
}

fn any_closed(log: &[ControllerEvent]) -> bool {
    log.iter()
        .any(|e| matches!(e, ControllerEvent::ChannelClosed { .. }))
}

/// Reads the client side until the controller closes it (EOF or error).
async fn expect_closed(connected: Connected<TcpStream>) {
    let mut framed = connected.into_framed(ChunkCodec);
    loop {
        match timeout(T, framed.next())
            .await
            .expect("channel not closed in time")
        {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

#[tokio::test]
async fn accepted_node_goes_online_with_a_cookie() {
    let controller = start().await;
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    assert_eq!(connected.capability, Capability::CURRENT);
    let cookie = connected
        .cookie
        .clone()
        .expect("the controller hands out a cookie");
    assert_eq!(cookie.len(), 32);
    assert!(cookie.bytes().all(|b| b.is_ascii_hexdigit()));

    let log = controller.wait_for(accepted(NODE, false), T).await;
    assert!(log.contains(&ControllerEvent::Accepted {
        node: NODE.into(),
        cookie: cookie.clone(),
        took_over: false
    }));
    assert!(controller.is_online(NODE));
    assert_eq!(controller.current_cookie(NODE), Some(cookie));

    // The agent going away (no close_notify) takes the node offline.
    drop(connected);
    controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::ConnectionLost)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    assert_eq!(controller.current_cookie(NODE), None);
    controller.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_the_recorded_texts_and_get_a_bye() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .fatal_node("doomed", "Node is disabled")
        .start()
        .await;
    let cases = [
        (
            NODE,
            "0000badsecret",
            RefusalKind::BadSecret,
            false,
            "ERROR: Authorization failure".to_owned(),
        ),
        (
            "ghost",
            SECRET,
            RefusalKind::UnknownNode,
            false,
            "ERROR: Unknown client name: ghost".to_owned(),
        ),
        (
            "doomed",
            SECRET,
            RefusalKind::Other,
            true,
            "FATAL: Node is disabled".to_owned(),
        ),
    ];
    for (node, secret, kind, fatal, response) in cases {
        let err = connect(&controller, HandshakeConfig::new(node, secret))
            .await
            .expect_err("refused");
        let HandshakeError::Refused(refusal) = &err else {
            panic!("{node}: not a refusal: {err}");
        };
        assert_eq!(
            (refusal.kind(), refusal.fatal),
            (kind, fatal),
            "{node}: {err}"
        );
        assert_eq!(err.is_retryable(), !fatal);
        let bye = ControllerEvent::ByeReceived { node: node.into() };
        let log = controller.wait_for(|log| log.contains(&bye), T).await;
        assert!(log.contains(&ControllerEvent::Refused {
            node: node.into(),
            response
        }));
        assert!(!controller.is_online(node));
    }
    assert!(!controller.log().iter().any(|e| matches!(
        e,
        ControllerEvent::Accepted { .. } | ControllerEvent::HandshakeFailed { .. }
    )));
    controller.shutdown().await;
}

#[tokio::test]
async fn second_connection_without_the_cookie_is_refused() {
    let controller = start().await;
    let first = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;

    for cookie in [None, Some("0123456789abcdef0123456789abcdef".to_owned())] {
        let err = connect(&controller, with_cookie(NODE, SECRET, cookie))
            .await
            .expect_err("refused");
        let HandshakeError::Refused(refusal) = &err else {
            panic!("not a refusal: {err}");
        };
        assert_eq!(
            (refusal.kind(), refusal.fatal),
            (RefusalKind::AlreadyConnected, false)
        );
    }
    let response =
        format!("ERROR: {NODE} is already connected to this master. Rejecting this connection.");
    let refused = ControllerEvent::Refused {
        node: NODE.into(),
        response,
    };
    let bye = ControllerEvent::ByeReceived { node: NODE.into() };
    controller
        .wait_for(|log| count(log, &refused) == 2 && count(log, &bye) == 2, T)
        .await;
    // The first channel is untouched.
    assert!(controller.is_online(NODE));
    assert_eq!(controller.current_cookie(NODE), first.cookie);
    assert!(!any_closed(&controller.log()));
    controller.shutdown().await;
}

#[tokio::test]
async fn the_live_channels_cookie_takes_the_node_over() {
    let controller = start().await;
    let first = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;
    let old_cookie = first.cookie.clone();

    let second = connect(&controller, with_cookie(NODE, SECRET, old_cookie.clone()))
        .await
        .unwrap();
    let new_cookie = second.cookie.clone().expect("a new cookie");
    assert_ne!(Some(&new_cookie), old_cookie.as_ref());

    let log = controller
        .wait_for(
            |log| accepted(NODE, true)(log) && log.contains(&closed(NODE, ChannelEnd::TakenOver)),
            T,
        )
        .await;
    assert!(log.contains(&ControllerEvent::Accepted {
        node: NODE.into(),
        cookie: new_cookie.clone(),
        took_over: true
    }));
    assert!(
        !log.contains(&closed(NODE, ChannelEnd::ConnectionLost)),
        "only the old channel closed"
    );
    expect_closed(first).await;
    assert!(controller.is_online(NODE));
    assert_eq!(controller.current_cookie(NODE), Some(new_cookie));
    drop(second);
    controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::ConnectionLost)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}

#[tokio::test]
async fn echo_peer_sends_every_chunk_back() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .peer(Peer::Echo)
        .start()
        .await;
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    let mut framed = connected.into_framed(ChunkCodec);
    let mut wire = BytesMut::new();
    put_command(&mut wire, &[7; 50_000]);
    put_command(&mut wire, b"");
    put_command(&mut wire, b"last");
    let mut sent = Vec::new();
    while let Some(chunk) = ChunkCodec.decode(&mut wire).unwrap() {
        sent.push(chunk);
    }
    for chunk in &sent {
        framed.feed(chunk.clone()).await.unwrap();
    }
    framed.flush().await.unwrap();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let chunk = timeout(T, framed.next()).await.expect("echo in time");
        received.push(chunk.expect("more chunks").unwrap());
    }
    assert_eq!(received, sent);
    controller.shutdown().await;
}

#[tokio::test]
async fn script_peer_gets_the_channel() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .peer(Peer::script(move |mut channel| {
            let tx = tx.clone();
            async move {
                let hello = Chunk {
                    last: true,
                    payload: format!("hello {}", channel.node).into(),
                };
                channel.framed.send(hello).await.unwrap();
                if let Some(Ok(chunk)) = channel.framed.next().await {
                    tx.send(chunk.payload).unwrap();
                }
                // Returning closes the channel.
            }
        }))
        .start()
        .await;
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    let mut framed = connected.into_framed(ChunkCodec);
    let hello = timeout(T, framed.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(&hello.payload[..], format!("hello {NODE}").as_bytes());
    framed
        .send(Chunk {
            last: true,
            payload: "from the agent".into(),
        })
        .await
        .unwrap();
    let got = timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(&got[..], b"from the agent");
    controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::PeerFinished)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}

#[tokio::test]
async fn disconnect_kicks_the_channel() {
    let controller = start().await;
    assert!(!controller.disconnect(NODE));
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;
    assert!(controller.disconnect(NODE));
    expect_closed(connected).await;
    controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::Disconnected)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    controller.shutdown().await;
}

/// A raw HTTP/1.1 GET: (status, lower-cased headers, body).
async fn http_get(controller: &TestController, path: &str) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut tcp = TcpStream::connect(controller.http_addr()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(T, tcp.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn discovery_publishes_port_identity_and_protocols() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .jnlp_host("agents.example")
        .start()
        .await;
    let (status, headers, body) = http_get(&controller, "/tcpSlaveAgentListener/").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"Jenkins");
    let port = controller.agent_addr().port().to_string();
    assert_eq!(header(&headers, "x-jenkins-jnlp-port"), Some(port.as_str()));
    assert_eq!(
        header(&headers, "x-jenkins-jnlp-host"),
        Some("agents.example")
    );
    assert_eq!(
        header(&headers, "x-jenkins-agent-protocols"),
        Some("JNLP4-connect, Ping")
    );
    assert_eq!(
        header(&headers, "x-remoting-minimum-version"),
        Some("3107.v665000b_51092")
    );
    assert_eq!(header(&headers, "x-jenkins"), Some("2.500-test"));
    let identity =
        InstanceIdentity::from_base64(header(&headers, "x-instance-identity").unwrap()).unwrap();
    assert_eq!(&identity, controller.identity());

    // The agent's own reading of it agrees.
    let endpoint = remoting_protocol::discovery::endpoint_from_response(
        &controller.url(),
        http::StatusCode::OK,
        &headers,
    )
    .unwrap();
    assert_eq!(
        (endpoint.host.as_str(), endpoint.port),
        ("agents.example", controller.agent_addr().port())
    );
    assert!(endpoint.offers_jnlp4());

    assert!(controller.log().contains(&ControllerEvent::Http {
        path: "/tcpSlaveAgentListener/".into(),
        status: 200
    }));
    controller.shutdown().await;

    // Without jnlp_host the header is absent.
    let controller = start().await;
    let (_, headers, _) = http_get(&controller, "/tcpSlaveAgentListener/").await;
    assert_eq!(header(&headers, "x-jenkins-jnlp-host"), None);
    assert!(controller.url().starts_with("http://127.0.0.1:"));
    assert!(controller.url().ends_with('/'));
    controller.shutdown().await;
}

#[tokio::test]
async fn disabled_tcp_port_and_unknown_pages_answer_404() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .tcp_agent_port_disabled()
        .start()
        .await;
    for path in [
        "/tcpSlaveAgentListener/",
        "/",
        "/computer/ghost/jenkins-agent.jnlp",
        "/jnlpJars/agent.jar",
    ] {
        let (status, headers, _) = http_get(&controller, path).await;
        assert_eq!(status, 404, "{path}");
        // Every page identifies the controller, 404s included.
        assert_eq!(header(&headers, "x-jenkins"), Some("2.500-test"));
        assert!(headers.contains_key("x-instance-identity"));
        assert!(controller.log().contains(&ControllerEvent::Http {
            path: path.into(),
            status: 404
        }));
    }
    controller.shutdown().await;
}

#[tokio::test]
async fn ping_and_http_hello_on_the_agent_port() {
    let controller = start().await;
    assert_eq!(
        agent_port_answer(&controller, &utf("Protocol:Ping")).await,
        "Ping\n"
    );

    let hello = agent_port_answer(&controller, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(hello.starts_with("HTTP/1.0 200 OK\r\n"), "{hello}");
    assert!(
        hello.contains("\r\n\r\nJenkins-Agent-Protocols: JNLP4-connect, Ping\r\n"),
        "{hello}"
    );
    assert!(hello.contains("Remoting-Minimum-Version: 3107.v665000b_51092\r\n"));
    let other = agent_port_answer(&controller, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.0 404 "), "{other}");
    // Neither is a failed handshake.
    assert!(controller.log().is_empty(), "{:?}", controller.log());
    controller.shutdown().await;

    // A protocol left out of the list is refused as disabled.
    let controller = TestController::builder()
        .protocols("JNLP4-connect")
        .start()
        .await;
    let answer = agent_port_answer(&controller, &utf("Protocol:Ping")).await;
    assert_eq!(answer, "Disabled protocol:Protocol:Ping\n");
    controller
        .wait_for(
            |log| matches!(log, [ControllerEvent::HandshakeFailed { reason }] if reason.contains("disabled")),
            T,
        )
        .await;
    controller.shutdown().await;
}

fn utf(text: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_utf(&mut out, text).unwrap();
    out.to_vec()
}

/// Sends `bytes` to the agent port and reads the answer up to the close.
async fn agent_port_answer(controller: &TestController, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(controller.agent_addr()).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    timeout(T, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn jnlp_files_plain_and_encrypted() {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .jnlp_options(&["-workDir", "/tmp/a&b"])
        .start()
        .await;
    let url = controller.url();
    for file in ["jenkins-agent.jnlp", "slave-agent.jnlp"] {
        let (status, headers, body) =
            http_get(&controller, &format!("/computer/{NODE}/{file}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/x-java-jnlp-file")
        );
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("<application-desc main-class=\"hudson.remoting.jnlp.Main\">"));
        assert!(text.contains(&format!("<jar href=\"{url}jnlpJars/remoting.jar\"/>")));
        assert!(text.contains("/tmp/a&amp;b"), "XML-escaped: {text}");
        let parsed = remoting_protocol::jnlp::parse_jnlp(&body).unwrap();
        assert_eq!(
            (parsed.secret.as_str(), parsed.name.as_str()),
            (SECRET, NODE)
        );
        assert_eq!(
            parsed.options,
            ["-url", url.as_str(), "-workDir", "/tmp/a&b"]
        );
    }

    let (status, headers, body) = http_get(
        &controller,
        &format!("/computer/{NODE}/jenkins-agent.jnlp?encrypt=true"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    let plain = remoting_protocol::jnlp::decrypt_jnlp(SECRET, &body).unwrap();
    let text = String::from_utf8(plain).unwrap();
    assert!(
        text.contains(&format!("<argument>{SECRET}</argument>")),
        "{text}"
    );
    assert!(
        text.contains(&format!("<argument>{NODE}</argument>")),
        "{text}"
    );
    let parsed = remoting_protocol::jnlp::parse_encrypted_jnlp(SECRET, &body).unwrap();
    assert_eq!(parsed.name, NODE);

    let (status, _, _) = http_get(
        &controller,
        "/computer/ghost/jenkins-agent.jnlp?encrypt=true",
    )
    .await;
    assert_eq!(status, 404);
    controller.shutdown().await;
}

#[tokio::test]
async fn remoting_jar_is_served_when_configured() {
    let jar = b"PK\x03\x04 not really a jar".to_vec();
    let controller = TestController::builder()
        .remoting_jar(jar.clone())
        .start()
        .await;
    for path in ["/jnlpJars/remoting.jar", "/jnlpJars/agent.jar"] {
        let (status, _, body) = http_get(&controller, path).await;
        assert_eq!((status, body), (200, jar.clone()), "{path}");
    }
    controller.shutdown().await;
}

/// A hand-driven JNLP4 client up to TLS, for what the real driver never sends.
async fn tls_client(controller: &TestController) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(controller.agent_addr()).await.unwrap();
    let mut out = BytesMut::new();
    put_utf(&mut out, "Protocol:JNLP4-connect").unwrap();
    put_utf(&mut out, "ACK").unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut ack = [0u8; 5];
    timeout(T, tcp.read_exact(&mut ack)).await.unwrap().unwrap();
    assert_eq!(&ack, b"\x00\x03ACK");
    let config = remoting_protocol::tls::client_config(controller.identity()).unwrap();
    let name = rustls_pki_types::ServerName::try_from("jenkins-agent-port").unwrap();
    timeout(
        T,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

async fn send_frame(io: &mut (impl tokio::io::AsyncWrite + Unpin), text: &str) {
    let mut out = BytesMut::new();
    put_utf(&mut out, text).unwrap();
    io.write_all(&out).await.unwrap();
    io.flush().await.unwrap();
}

async fn read_frame(io: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut BytesMut) -> String {
    loop {
        if let Some(text) = take_utf(buf).unwrap() {
            return text;
        }
        let n = timeout(T, io.read_buf(buf)).await.unwrap().unwrap();
        assert_ne!(n, 0, "closed while waiting for a frame");
    }
}

#[tokio::test]
async fn garbage_on_the_agent_port_is_survived() {
    let controller = start().await;
    let mut frames = BytesMut::new();
    put_utf(&mut frames, "Protocol:JNLP4-connect").unwrap();
    let jnlp4_line = frames.split().freeze();
    let garbage: Vec<Vec<u8>> = vec![
        b"\xff\xff\x00\x01garbage".to_vec(), // announces 65535 bytes, then closes
        b"\x00\x02\xff\xfe".to_vec(),        // not UTF-8
        b"\x00\x0eProtocol:Nope!".to_vec(),
        b"\x00\x05hello".to_vec(), // not a protocol line
        [&jnlp4_line[..], b"\x00\x03NAK"].concat(),
        [&jnlp4_line[..], b"\x00\x03ACK\x16\x03\x01"].concat(), // bytes before TLS
        vec![],                                                 // connect and close
    ];
    for bytes in &garbage {
        let mut tcp = TcpStream::connect(controller.agent_addr()).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut sink = Vec::new();
        // The controller closes (or answers and closes); a reset is fine too.
        let _ = timeout(T, tcp.read_to_end(&mut sink))
            .await
            .expect("closed in time");
    }
    let failures = |log: &[ControllerEvent]| {
        log.iter()
            .filter(|e| matches!(e, ControllerEvent::HandshakeFailed { .. }))
            .count()
    };
    controller
        .wait_for(|log| failures(log) == garbage.len(), T)
        .await;

    // Malformed headers inside TLS get the controller's answer, then BYE.
    for headers in ["not json", r#"{"Secret-Key":"x"}"#] {
        let mut tls = tls_client(&controller).await;
        send_frame(&mut tls, headers).await;
        let mut buf = BytesMut::new();
        let theirs = read_frame(&mut tls, &mut buf).await;
        assert!(
            theirs.starts_with(r#"{"JnlpAgentProtocol.cookie":""#),
            "{theirs}"
        );
        send_frame(&mut tls, "OK").await;
        let response = read_frame(&mut tls, &mut buf).await;
        assert_eq!(response, "ERROR: Malformed connection header");
        send_frame(&mut tls, "BYE").await;
    }
    let bye = ControllerEvent::ByeReceived {
        node: String::new(),
    };
    controller.wait_for(|log| count(log, &bye) == 2, T).await;

    // And it still works.
    connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;
    controller.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_channels_and_frees_the_ports() {
    let controller = start().await;
    let (http_port, agent_port) = (
        controller.http_addr().port(),
        controller.agent_addr().port(),
    );
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;
    timeout(T, controller.shutdown())
        .await
        .expect("shutdown in time");
    expect_closed(connected).await;

    // "Restart the controller on the same ports."
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .http_port(http_port)
        .agent_port(agent_port)
        .start()
        .await;
    assert_eq!(controller.agent_addr().port(), agent_port);
    connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    let (status, _, _) = http_get(&controller, "/tcpSlaveAgentListener/").await;
    assert_eq!(status, 200);
    controller.shutdown().await;
}

/// A controller whose ping gives a ghost up after `ping_timeout`, with
/// [`NODE`] connected and accepted.
async fn online_with_ping_timeout(
    ping_timeout: Duration,
) -> (TestController, Connected<TcpStream>) {
    let controller = TestController::builder()
        .node(NODE, SECRET)
        .ping_timeout(ping_timeout)
        .start()
        .await;
    let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.wait_for(accepted(NODE, false), T).await;
    (controller, connected)
}

/// PROTOCOL.md 5, row 1: a TLS close_notify (then FIN) leaves a ghost that
/// keeps the node online and refuses a new connection without the cookie,
/// until the controller's ping gives up.
#[tokio::test]
async fn close_notify_leaves_a_ghost_until_the_ping_timeout() {
    let (controller, mut first) = online_with_ping_timeout(Duration::from_millis(1500)).await;
    timeout(T, first.stream.tls_mut().shutdown())
        .await
        .unwrap()
        .unwrap();
    drop(first);
    let ignored = ControllerEvent::CloseNotifyIgnored { node: NODE.into() };
    controller.wait_for(|log| log.contains(&ignored), T).await;
    assert!(controller.is_online(NODE), "the ghost stays online");
    let refused = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, HandshakeError::Refused(r) if r.kind() == RefusalKind::AlreadyConnected),
        "{refused:?}"
    );
    let log = controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::PingTimeout)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e, ControllerEvent::ChannelClosed { .. }))
            .count(),
        1
    );
    let _again = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller
        .wait_for(
            |log| accepted(NODE, false)(log) && controller.is_online(NODE),
            T,
        )
        .await;
    controller.shutdown().await;
}

/// Shutting the channel's stream down (`ChannelStream`, what the agent's
/// bridge and session hold) ends TCP and sends no close_notify: the node
/// goes offline at once, with a slow ping that would keep a ghost for
/// minutes, and the node can connect again.
#[tokio::test]
async fn a_channel_stream_shutdown_is_a_tcp_close_not_a_ghost() {
    let (controller, mut first) = online_with_ping_timeout(Duration::from_secs(600)).await;
    timeout(T, first.stream.shutdown()).await.unwrap().unwrap();
    let log = controller
        .wait_for(
            |log| log.contains(&closed(NODE, ChannelEnd::ConnectionLost)),
            T,
        )
        .await;
    assert!(!controller.is_online(NODE));
    let ignored = ControllerEvent::CloseNotifyIgnored { node: NODE.into() };
    assert!(!log.contains(&ignored), "{log:?}");
    let _again = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    controller.shutdown().await;
}

/// A ghost is taken over by its own cookie, like any live channel.
#[tokio::test]
async fn a_ghosts_cookie_takes_it_over() {
    let controller = start().await;
    let mut first = connect(&controller, HandshakeConfig::new(NODE, SECRET))
        .await
        .unwrap();
    let cookie = first.cookie.clone();
    timeout(T, first.stream.tls_mut().shutdown())
        .await
        .unwrap()
        .unwrap();
    let ignored = ControllerEvent::CloseNotifyIgnored { node: NODE.into() };
    controller.wait_for(|log| log.contains(&ignored), T).await;
    let _second = connect(&controller, with_cookie(NODE, SECRET, cookie))
        .await
        .unwrap();
    controller
        .wait_for(
            |log| accepted(NODE, true)(log) && log.contains(&closed(NODE, ChannelEnd::TakenOver)),
            T,
        )
        .await;
    assert!(controller.is_online(NODE));
    controller.shutdown().await;
}

/// PROTOCOL.md 5, row 5: a Channel$CloseCommand is answered with the
/// controller's own (the recorded one) and takes the node offline at once.
#[tokio::test]
async fn a_close_command_is_answered_and_ends_the_channel() {
    for (peer, first) in [
        (Peer::Hold, true),
        (Peer::Echo, true),
        (Peer::Hold, false),
        (Peer::Echo, false),
    ] {
        let controller = TestController::builder()
            .node(NODE, SECRET)
            .peer(peer.clone())
            .start()
            .await;
        let connected = connect(&controller, HandshakeConfig::new(NODE, SECRET))
            .await
            .unwrap();
        controller.wait_for(accepted(NODE, false), T).await;
        let mut tls = connected.stream;
        let mut wire = BytesMut::new();
        if first {
            put_command(&mut wire, b"some command first");
        }
        let before_close = wire.len();
        remoting_protocol::close::put_close_command(&mut wire);
        timeout(T, tls.write_all(&wire)).await.unwrap().unwrap();
        let mut got = Vec::new();
        // The controller answers, then ends the connection (EOF or error).
        let _ = timeout(T, tls.read_to_end(&mut got)).await.unwrap();
        let mut expected = match peer {
            Peer::Echo => wire[..before_close].to_vec(),
            _ => Vec::new(),
        };
        expected.extend(testkit::fixtures::controller_close_command());
        assert_eq!(got, expected, "{peer:?}");
        controller
            .wait_for(
                |log| log.contains(&closed(NODE, ChannelEnd::CloseCommand)),
                T,
            )
            .await;
        assert!(!controller.is_online(NODE), "{peer:?}");
        controller.shutdown().await;
    }
}
