#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;
use crate::chunk::put_command;
use crate::websocket::connect::config;
use crate::websocket::MAX_MESSAGE_IN;

type Server = WebSocketStream<DuplexStream>;

/// Keepalive that stays out of the way of tests about data.
fn quiet() -> KeepAlive {
    KeepAlive::with_idle_timeout(Duration::from_secs(3600))
}

async fn pair_with(keepalive: KeepAlive, capacity: usize) -> (WsChannel<DuplexStream>, Server) {
    let (client, server) = tokio::io::duplex(capacity);
    let client = WebSocketStream::from_raw_socket(client, Role::Client, Some(config())).await;
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    (WsChannel::new(client, keepalive), server)
}

async fn pair(keepalive: KeepAlive) -> (WsChannel<DuplexStream>, Server) {
    pair_with(keepalive, 256 * 1024).await
}

fn chunk(len: usize, last: bool, fill: u8) -> Vec<u8> {
    let mut out = ChunkHeader { len, last }.to_bytes().to_vec();
    out.resize(2 + len, fill);
    out
}

/// Messages until the client's close; panics on anything but binary,
/// pings and pongs.
async fn binary_messages(server: &mut Server) -> (Vec<Bytes>, Option<CloseFrame>) {
    let mut messages = Vec::new();
    loop {
        match server.next().await.unwrap().unwrap() {
            Message::Binary(data) => messages.push(data),
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(frame) => return (messages, frame),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn each_chunk_becomes_one_message_and_big_ones_are_split() {
    let (mut client, mut server) = pair(quiet()).await;
    let mut stream = BytesMut::new();
    put_command(&mut stream, &[1; 10]);
    put_command(&mut stream, &[2; 20000]);
    put_command(&mut stream, &[]);
    stream.extend_from_slice(&chunk(20000, true, 3));
    stream.extend_from_slice(&chunk(0x7fff, false, 4));
    stream.extend_from_slice(&chunk(5, true, 5));
    let expected: Vec<Vec<u8>> = vec![
        chunk(10, true, 1),
        chunk(8192, false, 2),
        chunk(8192, false, 2),
        chunk(3616, true, 2),
        chunk(0, true, 0),
        chunk(8192, false, 3),
        chunk(8192, false, 3),
        chunk(3616, true, 3),
        chunk(8192, false, 4),
        chunk(8192, false, 4),
        chunk(8192, false, 4),
        chunk(8191, false, 4),
        chunk(5, true, 5),
    ];
    let writer = tokio::spawn(async move {
        let mut rest = &stream[..];
        for size in [1, 3, 7, 100, 5000, 9000, 1, 1, 30000].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*size).min(rest.len());
            client.write_all(&rest[..n]).await.unwrap();
            if n % 2 == 1 {
                client.flush().await.unwrap();
            }
            rest = &rest[n..];
        }
        client.shutdown().await.unwrap();
        client
    });
    let (messages, close) = binary_messages(&mut server).await;
    let messages: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
    assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_OUT));
    assert_eq!(messages, expected);
    assert_eq!(close.unwrap().code, CloseCode::Normal);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_partial_chunk_waits_for_its_end() {
    let (mut client, mut server) = pair(quiet()).await;
    client.write_all(b"\x00\x05ab").await.unwrap();
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), server.next())
            .await
            .is_err(),
        "nothing may be sent before the chunk is complete"
    );
    client.write_all(b"cde\x80").await.unwrap();
    client.flush().await.unwrap();
    let got = server.next().await.unwrap().unwrap();
    assert_eq!(got, Message::Binary(b"\x00\x05abcde"[..].into()));
    assert_eq!(client.outgoing.len(), 1);
}

#[tokio::test]
async fn messages_and_fragments_are_read_as_one_stream() {
    let (mut client, mut server) = pair(quiet()).await;
    let mut stream = BytesMut::new();
    put_command(&mut stream, &[7; 9000]);
    put_command(&mut stream, b"hello");
    put_command(&mut stream, &[]);
    let stream = stream.freeze();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    });
    let frame = |data: Bytes, op: Data, fin: bool| {
        Message::Frame(Frame::message(data, OpCode::Data(op), fin))
    };
    // Whole chunks, a header cut from its payload, fragments, empty
    // messages and pings in between.
    server
        .send(Message::Binary(stream.slice(..1)))
        .await
        .unwrap();
    server
        .send(Message::Binary(stream.slice(1..100)))
        .await
        .unwrap();
    server.send(Message::Binary(Bytes::new())).await.unwrap();
    server
        .send(Message::Ping(Bytes::from_static(b"x")))
        .await
        .unwrap();
    server
        .send(frame(stream.slice(100..4000), Data::Binary, false))
        .await
        .unwrap();
    server.send(Message::Ping(Bytes::new())).await.unwrap();
    server
        .send(frame(stream.slice(4000..4001), Data::Continue, false))
        .await
        .unwrap();
    server
        .send(frame(stream.slice(4001..9003), Data::Continue, true))
        .await
        .unwrap();
    server
        .send(Message::Binary(stream.slice(9003..)))
        .await
        .unwrap();
    server
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap(), stream);
    // The client answered both pings and the close.
    let mut pongs = 0;
    loop {
        match server.next().await {
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(Message::Close(_))) | None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, 2);
}

#[tokio::test]
async fn a_ping_is_answered_while_only_reading() {
    let (mut client, mut server) = pair(quiet()).await;
    let _reader = tokio::spawn(async move {
        let mut buf = [0; 16];
        let _ = client.read(&mut buf).await;
    });
    server
        .send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), server.next())
        .await
        .expect("a pong")
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::Pong(Bytes::from_static(b"p1")));
}

#[tokio::test(start_paused = true)]
async fn own_pings_go_out_while_reading() {
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(4));
    let (mut client, mut server) = pair(keepalive).await;
    let _reader = tokio::spawn(async move {
        let mut buf = [0; 16];
        let _ = client.read(&mut buf).await;
    });
    let start = Instant::now();
    for _ in 0..3 {
        let message = server.next().await.unwrap().unwrap();
        assert_eq!(message, Message::Ping(Bytes::new()));
    }
    assert!(start.elapsed() >= 3 * keepalive.ping_interval);
}

#[tokio::test(start_paused = true)]
async fn a_silent_controller_times_reads_out() {
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(4));
    let (mut client, _server) = pair(keepalive).await;
    let start = Instant::now();
    let mut buf = [0; 16];
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("no WebSocket frame"), "{err}");
    assert!(start.elapsed() >= keepalive.idle_timeout);
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_a_quiet_channel_alive() {
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(4));
    let (mut client, mut server) = pair(keepalive).await;
    // The server reads, which answers our pings.
    tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
    let mut buf = [0; 16];
    let read = tokio::time::timeout(10 * keepalive.idle_timeout, client.read(&mut buf)).await;
    assert!(read.is_err(), "the read ended: {read:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_write_times_out() {
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(4));
    let (mut client, _server) = pair_with(keepalive, 4096).await;
    let start = Instant::now();
    let mut command = BytesMut::new();
    put_command(&mut command, &[0; 100_000]);
    let err = loop {
        let sent = client.write_all(&command).await;
        if let Err(err) = sent.and(client.flush().await) {
            break err;
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(start.elapsed() >= keepalive.write_timeout);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_close_times_out() {
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(4));
    let (mut client, _server) = pair_with(keepalive, 4096).await;
    let mut command = BytesMut::new();
    put_command(&mut command, &[0; 100_000]);
    // Fills the pipe; the write side is stuck from here on.
    let start = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(1), client.write_all(&command)).await;
    let err = client.shutdown().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(start.elapsed() >= keepalive.write_timeout);
    // close_normally gives up at its own bound.
    let start = Instant::now();
    client.close_normally(Duration::from_secs(2)).await;
    assert!(start.elapsed() <= Duration::from_secs(3));
}

#[test]
fn the_channel_is_send() {
    fn send<T: Send>() {}
    send::<WsChannel<tokio::net::TcpStream>>();
}

#[tokio::test]
async fn read_errors_stay() {
    let (mut client, mut server) = pair(quiet()).await;
    server.send(Message::text("hello")).await.unwrap();
    let first = client.read(&mut [0; 4]).await.unwrap_err();
    let again = client.read(&mut [0; 4]).await.unwrap_err();
    assert_eq!(first.kind(), again.kind());
    assert_eq!(first.to_string(), again.to_string());
}

#[tokio::test]
async fn a_close_from_the_controller_is_the_end() {
    let (mut client, mut server) = pair(quiet()).await;
    server
        .send(Message::Binary(Bytes::from_static(b"\x00\x00")))
        .await
        .unwrap();
    server.close(None).await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"\x00\x00");
    assert_eq!(client.read(&mut [0; 4]).await.unwrap(), 0);
    // Our close reply went out although nobody wrote.
    assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
}

#[tokio::test]
async fn close_normally_sends_1000() {
    let (mut client, mut server) = pair(quiet()).await;
    client.write_all(b"\x00\x01x\x00").await.unwrap();
    client.close_normally(Duration::from_secs(5)).await;
    let (messages, close) = binary_messages(&mut server).await;
    assert_eq!(messages, [Bytes::from_static(b"\x00\x01x")]);
    assert_eq!(close.unwrap().code, CloseCode::Normal);
    let _ = client.get_mut().shutdown().await;
}

#[tokio::test]
async fn text_and_oversized_messages_are_errors() {
    let (mut client, mut server) = pair(quiet()).await;
    server.send(Message::text("hello")).await.unwrap();
    let err = client.read(&mut [0; 4]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);

    let (mut client, mut server) = pair(quiet()).await;
    let big = vec![0; MAX_MESSAGE_IN + 1];
    tokio::spawn(async move { server.send(Message::Binary(big.into())).await });
    let err = client.read(&mut [0; 4]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test]
async fn a_dropped_connection_is_an_unexpected_eof() {
    let (mut client, server) = pair(quiet()).await;
    drop(server);
    let err = client.read(&mut [0; 4]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

/// Read and write halves in two tasks, our pings going out all the time,
/// against an echoing controller: nothing hangs and the bytes come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_with_frequent_pings_echo() {
    let keepalive = KeepAlive {
        ping_interval: Duration::from_millis(1),
        idle_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
    };
    let (client, mut server) = pair_with(keepalive, 8 * 1024).await;
    tokio::spawn(async move {
        while let Some(Ok(message)) = server.next().await {
            if message.is_binary() && server.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut stream = BytesMut::new();
    for i in 0..300usize {
        put_command(&mut stream, &vec![i as u8; (i * 997) % 20000]);
    }
    let stream = stream.freeze();
    let (mut read, mut write) = tokio::io::split(client);
    let sent = stream.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(3000) {
            write.write_all(piece).await.unwrap();
            write.flush().await.unwrap();
        }
        write
    });
    let echoed = tokio::time::timeout(Duration::from_secs(60), async {
        let mut got = vec![0; stream.len()];
        read.read_exact(&mut got).await.unwrap();
        got
    })
    .await
    .expect("the echo completes");
    assert_eq!(echoed, stream);
    writer.await.unwrap();
}
