//! Replay of the recorded controller transcripts (`protocol-fixtures/jnlp4`):
//! the codecs rebuild them byte-exactly, and the handshake driver, run against
//! a controller playing the recording, sends exactly the agent's side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use remoting_protocol::handshake::{
    connect, Connected, HandshakeConfig, HandshakeError, RefusalKind,
};
use remoting_protocol::headers::{self, Headers};
use remoting_protocol::{Capability, Chunk, ChunkCodec, CommandCodec};
use testkit::fixtures::{self, Direction, Layer, Record};
use testkit::replay::{serve_transcript, ReplayOptions};
use testkit::TestIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

fn chunks(records: &[Record], dir: Direction) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.layer == Layer::Chunk && r.dir == dir)
        .collect()
}

#[test]
fn every_transcript_is_present() {
    let names = fixtures::transcripts();
    for expected in [
        "session-accepted.jsonl",
        "refused-bad-secret.jsonl",
        "refused-unknown-node.jsonl",
        "refused-already-connected.jsonl",
        "reconnect-cookie-takeover.jsonl",
        "agent-initiated-close.jsonl",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn chunks_decode_and_reencode_byte_exactly() {
    let mut total = 0;
    for name in fixtures::transcripts() {
        let records = fixtures::load(&name);
        for record in records.iter().filter(|r| r.layer == Layer::Chunk) {
            let mut buf = BytesMut::from(&record.bytes[..]);
            let chunk = ChunkCodec.decode(&mut buf).unwrap().expect("a whole chunk");
            assert!(
                buf.is_empty(),
                "{name} seq {}: one record is one chunk",
                record.seq
            );
            let mut out = BytesMut::new();
            ChunkCodec.encode(chunk, &mut out).unwrap();
            assert_eq!(&out[..], &record.bytes[..], "{name} seq {}", record.seq);
            total += 1;
        }
    }
    assert!(total > 40, "only {total} chunks replayed");
}

/// The whole stream of one direction, split at every byte boundary of the
/// first 5000 bytes and at a few strides elsewhere, decodes to the same chunks.
#[test]
fn streams_split_anywhere_decode_identically() {
    let records = fixtures::load("session-accepted.jsonl");
    for dir in [Direction::AgentToController, Direction::ControllerToAgent] {
        let wanted: Vec<&Record> = chunks(&records, dir);
        let stream: Vec<u8> = wanted.iter().flat_map(|r| r.bytes.clone()).collect();
        let splits = (0..5000.min(stream.len())).chain((5000..stream.len()).step_by(997));
        for split in splits {
            let mut codec = ChunkCodec;
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got: Vec<Chunk> = Vec::new();
            while let Some(c) = codec.decode(&mut buf).unwrap() {
                got.push(c);
            }
            buf.extend_from_slice(&stream[split..]);
            while let Some(c) = codec.decode_eof(&mut buf).unwrap() {
                got.push(c);
            }
            assert_eq!(got.len(), wanted.len(), "split at {split}");
            let mut rebuilt = BytesMut::new();
            for c in got {
                ChunkCodec.encode(c, &mut rebuilt).unwrap();
            }
            assert_eq!(&rebuilt[..], &stream[..], "split at {split}");
        }
    }
}

#[test]
fn commands_reassemble_with_the_recorded_class_names() {
    for name in fixtures::transcripts() {
        let records = fixtures::load(&name);
        for dir in [Direction::AgentToController, Direction::ControllerToAgent] {
            let wanted = chunks(&records, dir);
            // Expected: the class name at the start of each command's first chunk.
            let mut expected = Vec::new();
            let mut at_start = true;
            let mut lens = Vec::new();
            let mut len = 0;
            for r in &wanted {
                let payload = &r.bytes[2..];
                if at_start {
                    expected
                        .push(remoting_protocol::command::class_name(payload).map(str::to_owned));
                }
                len += payload.len();
                at_start = r.bytes[0] & 0x80 == 0;
                if at_start {
                    lens.push(len);
                    len = 0;
                }
            }
            let stream: Vec<u8> = wanted.iter().flat_map(|r| r.bytes.clone()).collect();
            let mut buf = BytesMut::from(&stream[..]);
            let mut codec = CommandCodec::default();
            let mut got = Vec::new();
            while let Some(command) = codec.decode(&mut buf).unwrap() {
                got.push(command);
            }
            let complete = expected.len() - usize::from(!at_start);
            assert_eq!(got.len(), complete, "{name} {dir:?}");
            for (i, command) in got.iter().enumerate() {
                assert_eq!(
                    command.class_name().map(str::to_owned),
                    expected[i],
                    "{name} {dir:?} #{i}"
                );
                assert_eq!(command.payload.len(), lens[i]);
            }
            if !at_start {
                // "first chunks only" recordings end inside a command.
                assert!(
                    codec.decode_eof(&mut buf).is_err(),
                    "{name}: truncated tail must be reported"
                );
            }
            // Re-encoding whole commands gives back the recorded chunks.
            let mut rebuilt = BytesMut::new();
            for command in got {
                Encoder::<Bytes>::encode(&mut codec, command.payload, &mut rebuilt).unwrap();
            }
            assert_eq!(&rebuilt[..], &stream[..rebuilt.len()], "{name} {dir:?}");
        }
    }
}

#[test]
fn the_recorded_session_carries_the_expected_commands() {
    let records = fixtures::load("session-accepted.jsonl");
    let stream: Vec<u8> = chunks(&records, Direction::ControllerToAgent)
        .iter()
        .flat_map(|r| r.bytes.clone())
        .collect();
    let mut buf = BytesMut::from(&stream[..]);
    let mut names = Vec::new();
    let mut codec = CommandCodec::default();
    while let Some(command) = codec.decode(&mut buf).unwrap() {
        names.push(command.class_name().unwrap_or("").to_owned());
    }
    assert_eq!(
        names.first().map(String::as_str),
        Some("hudson.remoting.UserRequest")
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("hudson.remoting.Channel$CloseCommand")
    );
    assert!(names
        .iter()
        .any(|n| n == "hudson.remoting.ProxyOutputStream$Chunk"));
}

#[test]
fn our_close_command_is_the_recorded_one() {
    let records = fixtures::load("agent-initiated-close.jsonl");
    let sent = records
        .iter()
        .find(|r| r.seq == 19)
        .expect("seq 19: the agent's close");
    assert_eq!(sent.dir, Direction::AgentToController);
    let mut ours = BytesMut::new();
    remoting_protocol::close::put_close_command(&mut ours);
    assert_eq!(&ours[..], &sent.bytes[..]);
    // Both sides' answers are closes too, which is how a leaving agent
    // recognises the controller's.
    for seq in [20, 21] {
        let record = records.iter().find(|r| r.seq == seq).unwrap();
        let mut buf = BytesMut::from(&record.bytes[..]);
        let command = CommandCodec::default().decode(&mut buf).unwrap().unwrap();
        assert!(
            remoting_protocol::close::is_close(command.class_name()),
            "seq {seq}"
        );
    }
}

/// Node name, secret and cookie the recorded agent sent.
fn recorded_config(records: &[Record]) -> HandshakeConfig {
    let sent = records
        .iter()
        .find(|r| r.layer == Layer::Headers && r.dir == Direction::AgentToController)
        .expect("agent headers");
    let text = std::str::from_utf8(&sent.bytes[2..]).unwrap();
    let h = Headers::decode(text).unwrap();
    let mut config = HandshakeConfig::new(
        h.get(headers::NODE_NAME).unwrap(),
        h.get(headers::SECRET_KEY).unwrap(),
    );
    config.cookie = h.get(headers::COOKIE).map(str::to_owned);
    config
}

fn recorded_cookie(records: &[Record]) -> String {
    let theirs = records
        .iter()
        .find(|r| r.layer == Layer::Headers && r.dir == Direction::ControllerToAgent)
        .expect("controller headers");
    let h = Headers::decode(std::str::from_utf8(&theirs.bytes[2..]).unwrap()).unwrap();
    h.get(headers::COOKIE).unwrap().to_owned()
}

type Server = tokio::task::JoinHandle<Result<testkit::replay::ReplayReport, String>>;

async fn start_replay(
    name: &str,
    options: ReplayOptions,
) -> (
    Result<Connected<TcpStream>, HandshakeError>,
    Vec<Record>,
    Server,
) {
    let records = fixtures::load(name);
    let identity = TestIdentity::shared();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_transcript(
        listener,
        identity,
        records.clone(),
        options,
    ));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = connect(
        tcp,
        "127.0.0.1",
        identity.identity(),
        recorded_config(&records),
    )
    .await;
    (result, records, server)
}

async fn replay_handshake(
    name: &str,
    options: ReplayOptions,
) -> (Result<Connected<TcpStream>, HandshakeError>, Vec<Record>) {
    let (result, records, server) = start_replay(name, options).await;
    server
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (result, records)
}

#[tokio::test]
async fn handshake_replays_the_accepted_session() {
    let (result, records) = replay_handshake(
        "session-accepted.jsonl",
        ReplayOptions {
            handshake_only: true,
            ..Default::default()
        },
    )
    .await;
    let connected = result.unwrap();
    assert_eq!(
        connected.cookie.as_deref(),
        Some(recorded_cookie(&records).as_str())
    );
    assert_eq!(connected.capability, Capability::CURRENT);
}

/// The controller's first chunks arrive together with its capability; none
/// is lost, and the whole recorded chunk exchange then plays over the
/// connection the driver returned.
#[tokio::test]
async fn handshake_keeps_chunks_that_arrive_with_the_capability() {
    let (result, records, server) = start_replay(
        "reconnect-cookie-takeover.jsonl",
        ReplayOptions {
            handshake_only: false,
            chunks_with_capability: true,
        },
    )
    .await;
    let connected = result.unwrap();
    assert_eq!(
        connected.cookie.as_deref(),
        Some(recorded_cookie(&records).as_str())
    );
    assert!(
        !connected.read_buf.is_empty(),
        "the first chunk came with the capability"
    );
    let mut framed = connected.into_framed(ChunkCodec);
    for record in records.iter().filter(|r| r.layer == Layer::Chunk) {
        let mut buf = BytesMut::from(&record.bytes[..]);
        let recorded = ChunkCodec.decode(&mut buf).unwrap().unwrap();
        match record.dir {
            Direction::ControllerToAgent => {
                let Some(Ok(got)) = framed.next().await else {
                    panic!(
                        "seq {}: channel ended; server: {:?}",
                        record.seq,
                        server.await
                    );
                };
                assert_eq!(got, recorded, "seq {}", record.seq);
            }
            Direction::AgentToController => framed.send(recorded).await.unwrap(),
        }
    }
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn handshake_replays_each_refusal() {
    for (name, kind) in [
        ("refused-bad-secret.jsonl", RefusalKind::BadSecret),
        ("refused-unknown-node.jsonl", RefusalKind::UnknownNode),
        (
            "refused-already-connected.jsonl",
            RefusalKind::AlreadyConnected,
        ),
    ] {
        let (result, _) = replay_handshake(name, ReplayOptions::default()).await;
        match result {
            Err(HandshakeError::Refused(refusal)) => {
                assert_eq!(refusal.kind(), kind, "{name}");
                assert!(
                    !refusal.fatal,
                    "{name}: recorded refusals are ERROR, not FATAL"
                );
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
}
