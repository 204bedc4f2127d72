//! The test proxy: CONNECT tunnels, credentials, TLS, freezing, and
//! absolute-form forwarding, driven with raw sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::ServerName;
use testkit::proxy::TestProxy;
use testkit::web_pki::TestCa;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(5);

/// An echo server on 127.0.0.1; aborted with the handle.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, task)
}

/// Reads a response head; returns it and whatever followed it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).unwrap(), rest);
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "EOF before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends CONNECT (plus `extra` headers) and returns the status line's head.
async fn connect<S>(stream: &mut S, target: SocketAddr, extra: &str) -> (String, Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_head(stream).await
}

/// Writes `data` and reads the same number of bytes back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    back
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Proxy-Authorization: Basic {token}\r\n")
}

/// Polls `open_tunnels()` until it equals `n`.
async fn wait_open(proxy: &TestProxy, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.open_tunnels() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "open tunnels: {} (want {n})",
            proxy.open_tunnels()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connect_relays_both_ways_including_bytes_sent_with_the_head() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder().start().await;
    assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nearly bytes");
    client.write_all(head.as_bytes()).await.unwrap();
    let (status, mut rest) = read_head(&mut client).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    while rest.len() < b"early bytes".len() {
        let mut chunk = [0u8; 64];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, b"early bytes");
    assert_eq!(round_trip(&mut client, b"later").await, b"later");
    assert_eq!(proxy.requests(), vec![(echo.to_string(), 200)]);
    wait_open(&proxy, 1).await;
    drop(client);
    wait_open(&proxy, 0).await;
}

#[tokio::test]
async fn a_head_split_across_writes_is_reassembled() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder().start().await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    for piece in head.as_bytes().chunks(3) {
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (status, rest) = read_head(&mut client).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert!(rest.is_empty());
    assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
}

#[tokio::test]
async fn credentials_are_required_when_configured() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder()
        .credentials("jenkins", "s3cret")
        .start()
        .await;

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut client, echo, "").await;
    assert!(status.starts_with("HTTP/1.1 407 "), "{status}");
    assert!(
        status.contains("Proxy-Authenticate: Basic realm=\"test\"\r\n"),
        "{status}"
    );

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut client, echo, &basic("jenkins", "wrong")).await;
    assert!(status.starts_with("HTTP/1.1 407 "), "{status}");

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut client, echo, &basic("jenkins", "s3cret")).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert_eq!(round_trip(&mut client, b"hi").await, b"hi");

    let target = echo.to_string();
    assert_eq!(
        proxy.requests(),
        vec![(target.clone(), 407), (target.clone(), 407), (target, 200)]
    );
}

#[tokio::test]
async fn an_unreachable_target_is_502() {
    // Bound but not listening: refused, and no other test can take the
    // port while it is held.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    let proxy = TestProxy::builder().start().await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut client, closed, "").await;
    assert!(status.starts_with("HTTP/1.1 502 "), "{status}");
    let seen = proxy.wait_for(|seen| !seen.is_empty(), WAIT).await;
    assert_eq!(seen, vec![(closed.to_string(), 502)]);
}

#[tokio::test]
async fn unsupported_and_malformed_requests_are_refused() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder().start().await;
    for (request, want) in [
        (&b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"[..], "405"),
        (b"GET https://x/ HTTP/1.1\r\n\r\n", "405"),
        (b"CONNECT nohost HTTP/1.1\r\n\r\n", "400"),
        (b"\x00\x01\x02 garbage\xff\r\n\r\n", "400"),
        (b"CONNECT a:1 HTTP/1.1\r\nbroken header\r\n\r\n", "400"),
    ] {
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.write_all(request).await.unwrap();
        let (status, _) = read_head(&mut client).await;
        assert!(status.starts_with(&format!("HTTP/1.1 {want} ")), "{status}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the answer");
    }

    // Oversized head.
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut huge = b"CONNECT a:1 HTTP/1.1\r\nX: ".to_vec();
    huge.resize(testkit::proxy::MAX_HEAD + 100, b'a');
    client.write_all(&huge).await.unwrap();
    let (status, _) = read_head(&mut client).await;
    assert!(status.starts_with("HTTP/1.1 431 "), "{status}");

    // Still serving.
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut client, echo, "").await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert_eq!(
        proxy.requests(),
        vec![
            ("/index.html".to_string(), 405),
            ("https://x/".to_string(), 405),
            ("nohost".to_string(), 400),
            (echo.to_string(), 200),
        ]
    );
}

#[tokio::test]
async fn a_tls_proxy_tunnels_for_clients_trusting_the_test_ca() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder().tls().start().await;
    assert_eq!(proxy.url(), format!("https://{}", proxy.addr()));
    let connector = TlsConnector::from(TestCa::shared().client_config());
    for name in ["127.0.0.1", "localhost"] {
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let name = ServerName::try_from(name).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (status, rest) = connect(&mut tls, echo, "").await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
        assert!(rest.is_empty());
        assert_eq!(round_trip(&mut tls, b"over tls").await, b"over tls");
    }
}

#[tokio::test]
async fn frozen_tunnels_stay_open_but_deliver_nothing() {
    let (echo, _server) = echo_server().await;
    let proxy = TestProxy::builder().start().await;
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut old, echo, "").await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert_eq!(round_trip(&mut old, b"before").await, b"before");

    proxy.freeze_open_tunnels();
    old.write_all(b"after").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), old.read(&mut buf)).await;
    assert!(read.is_err(), "a frozen tunnel answered: {read:?}");

    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    let (status, _) = connect(&mut new, echo, "").await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert_eq!(round_trip(&mut new, b"fresh").await, b"fresh");
    assert_eq!(proxy.open_tunnels(), 2);

    // Still neither data nor EOF on the old one.
    old.write_all(b"more").await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(100), old.read(&mut buf)).await;
    assert!(read.is_err(), "a frozen tunnel answered: {read:?}");

    // Closing the client ends the frozen tunnel.
    drop(old);
    wait_open(&proxy, 1).await;
}

#[tokio::test]
async fn absolute_form_requests_are_forwarded_in_origin_form() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (head_tx, head_rx) = oneshot::channel();
    let _server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (head, _) = read_head(&mut socket).await;
        head_tx.send(head).unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await
            .unwrap();
    });
    let proxy = TestProxy::builder().credentials("u", "p").start().await;

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let request = format!(
        "GET http://{origin}/jnlpJars/agent.jar?x=1 HTTP/1.1\r\nHost: {origin}\r\n{}Proxy-Connection: keep-alive\r\n\r\n",
        basic("u", "p")
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");

    let head = head_rx.await.unwrap();
    assert_eq!(
        head,
        format!(
            "GET /jnlpJars/agent.jar?x=1 HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
        )
    );
    assert_eq!(proxy.requests(), vec![(origin.to_string(), 200)]);
}
