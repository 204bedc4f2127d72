//! Property tests for the WebSocket channel: any chunk stream, written in
//! any pieces, reaches the controller one chunk per message (big chunks
//! re-split) and means the same; any split of a chunk stream into messages
//! and fragments reads back as the same chunks.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use remoting_protocol::chunk::{MAX_CHUNK_PAYLOAD, SEND_CHUNK_PAYLOAD};
use remoting_protocol::websocket::{
    connect, upgrade_request, KeepAlive, UpgradeHeaders, WsChannel, MAX_MESSAGE_OUT,
};
use remoting_protocol::{Capability, Chunk, ChunkCodec, ChunkHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Decoder, Encoder};

type Server = WebSocketStream<DuplexStream>;

/// A chunk stream from `(payload length, last)` pairs; payload bytes vary.
fn chunk_stream(shape: &[(usize, bool)]) -> (Vec<Chunk>, Bytes) {
    let mut buf = BytesMut::new();
    let chunks: Vec<Chunk> = shape
        .iter()
        .enumerate()
        .map(|(i, &(len, last))| Chunk {
            last,
            payload: (0..len).map(|j| (i * 31 + j) as u8).collect(),
        })
        .collect();
    for chunk in &chunks {
        ChunkCodec.encode(chunk.clone(), &mut buf).unwrap();
    }
    (chunks, buf.freeze())
}

/// What the controller must receive for `chunks`: each chunk, the big ones
/// as pieces of 8192 marked "more follows" but the last, which keeps the
/// chunk's own mark.
fn expected_messages(chunks: &[Chunk]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = &chunk.payload[..];
        loop {
            let take = rest.len().min(SEND_CHUNK_PAYLOAD);
            let last_piece = take == rest.len();
            let header = ChunkHeader {
                len: take,
                last: last_piece && chunk.last,
            };
            let mut message = header.to_bytes().to_vec();
            message.extend_from_slice(&rest[..take]);
            out.push(Bytes::from(message));
            rest = &rest[take..];
            if last_piece {
                break;
            }
        }
    }
    out
}

/// A connected channel and the controller's end, over an in-memory pipe.
async fn connected() -> (WsChannel<DuplexStream>, Server) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(tokio_tungstenite::accept_async(server));
    let request = upgrade_request(
        "http://controller.test/",
        &UpgradeHeaders {
            node: "n",
            secret: "s",
            capability: &Capability::CURRENT,
            cookie: None,
            extra: &[],
        },
    )
    .unwrap();
    let keepalive = KeepAlive::with_idle_timeout(Duration::from_secs(3600));
    let (channel, _) = connect(client, request, "n", keepalive).await.unwrap();
    (channel, server.await.unwrap().unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pieces of `bytes` of the sizes in `sizes` (at least 1), cycled.
fn pieces<'a>(bytes: &'a Bytes, sizes: &'a [usize]) -> impl Iterator<Item = Bytes> + 'a {
    let mut at = 0;
    sizes.iter().cycle().map_while(move |&size| {
        if at == bytes.len() {
            return None;
        }
        let end = (at + size.max(1)).min(bytes.len());
        let piece = bytes.slice(at..end);
        at = end;
        Some(piece)
    })
}

fn shape() -> impl Strategy<Value = Vec<(usize, bool)>> {
    let len = prop_oneof![
        0..=16usize,
        0..=SEND_CHUNK_PAYLOAD + 2,
        0..=MAX_CHUNK_PAYLOAD
    ];
    proptest::collection::vec((len, any::<bool>()), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_chunks_arrive_one_per_message(
        shape in shape(),
        sizes in proptest::collection::vec(1..20_000usize, 1..8),
    ) {
        let (chunks, stream) = chunk_stream(&shape);
        let (messages, expected) = runtime().block_on(async {
            let (mut channel, mut server) = connected().await;
            let writer = tokio::spawn(async move {
                for (i, piece) in pieces(&stream, &sizes).enumerate() {
                    channel.write_all(&piece).await.unwrap();
                    if i % 3 == 0 {
                        channel.flush().await.unwrap();
                    }
                }
                channel.shutdown().await.unwrap();
            });
            let mut messages = Vec::new();
            while let Some(message) = server.next().await {
                match message.unwrap() {
                    Message::Binary(data) => messages.push(data),
                    Message::Close(_) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            writer.await.unwrap();
            (messages, expected_messages(&chunks))
        });
        for message in &messages {
            prop_assert!(message.len() <= MAX_MESSAGE_OUT);
            let mut one = BytesMut::from(&message[..]);
            prop_assert!(ChunkCodec.decode(&mut one).unwrap().is_some());
            prop_assert!(one.is_empty(), "one chunk per message");
        }
        prop_assert_eq!(messages, expected);
    }

    #[test]
    fn messages_split_anywhere_read_back_as_the_same_chunks(
        shape in shape(),
        sizes in proptest::collection::vec(1..20_000usize, 1..8),
        fragment in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let (chunks, stream) = chunk_stream(&shape);
        let got = runtime().block_on(async {
            let (mut channel, mut server) = connected().await;
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                channel.read_to_end(&mut got).await.unwrap();
                got
            });
            for (i, piece) in pieces(&stream, &sizes).enumerate() {
                if fragment[i % fragment.len()] && piece.len() > 1 {
                    let half = piece.len() / 2;
                    let first = Frame::message(piece.slice(..half), OpCode::Data(Data::Binary), false);
                    let second = Frame::message(piece.slice(half..), OpCode::Data(Data::Continue), true);
                    server.send(Message::Frame(first)).await.unwrap();
                    server.send(Message::Frame(second)).await.unwrap();
                } else {
                    server.send(Message::Binary(piece)).await.unwrap();
                }
                if i % 4 == 0 {
                    server.send(Message::Binary(Bytes::new())).await.unwrap();
                }
            }
            server.close(None).await.unwrap();
            reader.await.unwrap()
        });
        let mut buf = BytesMut::from(&got[..]);
        let mut decoded = Vec::new();
        while let Some(chunk) = ChunkCodec.decode_eof(&mut buf).unwrap() {
            decoded.push(chunk);
        }
        prop_assert_eq!(decoded, chunks);
    }
}

/// Messages that have all arrived are handed over in one read (a write to
/// the engine and a wake-up for it per read, not per 8 KiB message); a
/// close after them still ends the stream once they are read.
#[test]
fn messages_already_arrived_come_in_one_read() {
    runtime().block_on(async {
        let (mut channel, mut server) = connected().await;
        let message = Bytes::from(vec![7u8; 8194]);
        for _ in 0..4 {
            server.feed(Message::Binary(message.clone())).await.unwrap();
        }
        // In memory: once the close is sent, all of it waits on the client's side.
        server.close(None).await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let n = channel.read(&mut buf).await.unwrap();
        assert_eq!(n, 4 * 8194);
        assert_eq!(channel.read(&mut buf).await.unwrap(), 0);
    });
}

/// A text message behind binary ones already arrived: the binary bytes are
/// delivered whole, and the next read fails with the text message's error.
#[test]
fn an_error_after_arrived_messages_comes_with_the_next_read() {
    runtime().block_on(async {
        let (mut channel, mut server) = connected().await;
        let message = Bytes::from(vec![7u8; 8194]);
        server.feed(Message::Binary(message.clone())).await.unwrap();
        server.feed(Message::Binary(message)).await.unwrap();
        server.send(Message::Text("no".into())).await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        let err = loop {
            match channel.read(&mut buf).await {
                Ok(0) => panic!("ended without the error"),
                Ok(n) => got += n,
                Err(err) => break err,
            }
        };
        assert_eq!(got, 2 * 8194, "every binary byte before the error");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("text WebSocket message"), "{err}");
    });
}
