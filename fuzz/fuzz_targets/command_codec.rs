//! Whole commands (`remoting_protocol::CommandCodec`), the class name peek,
//! and the pass-through scanner (`remoting_protocol::scan::ChunkScanner`).
//!
//! Input: byte 0 sets the read size, byte 1 the command size limit, the
//! rest is the stream. Checks: no panic; reads of any size give the same
//! commands (or the same refusal) as one read; a command over the limit is
//! refused; every decoded command encodes and decodes back to itself; the
//! scanner, fed the same reads, counts the same commands and agrees on
//! where the stream stands.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use remoting_protocol::command::class_name;
use remoting_protocol::scan::ChunkScanner;
use remoting_protocol::{ChunkError, Command, CommandCodec};
use tokio_util::codec::{Decoder, Encoder};

const LIMITS: [usize; 4] = [usize::MAX, 64 * 1024 * 1024, 8192, 100];

#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Truncated,
    TooLarge,
}

fn decode(stream: &[u8], step: usize, limit: usize) -> (Vec<Bytes>, End) {
    let mut codec = CommandCodec::new(limit);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(command)) => {
                    assert!(command.payload.len() <= limit);
                    commands.push(command.payload);
                }
                Ok(None) => break,
                Err(ChunkError::CommandTooLarge { .. }) => return (commands, End::TooLarge),
                Err(err) => panic!("unexpected error mid-stream: {err}"),
            }
        }
    }
    let end = match codec.decode_eof(&mut buf) {
        Ok(None) => End::Clean,
        Ok(Some(command)) => panic!("decode_eof found a command decode missed: {command:?}"),
        Err(ChunkError::Truncated(_)) => End::Truncated,
        Err(ChunkError::CommandTooLarge { .. }) => End::TooLarge,
        Err(err) => panic!("unexpected error at the end: {err}"),
    };
    (commands, end)
}

fuzz_target!(|data: &[u8]| {
    let [step, limit, stream @ ..] = data else {
        return;
    };
    let step = usize::from(*step) + 1;
    let limit = LIMITS[usize::from(*limit) % LIMITS.len()];

    let (whole, whole_end) = decode(stream, stream.len().max(1), limit);
    let (pieces, pieces_end) = decode(stream, step, limit);
    assert_eq!(whole, pieces, "reads of {step} bytes changed the commands");
    assert_eq!(whole_end, pieces_end);

    for payload in &whole {
        let _ = class_name(payload);
        let mut encoded = BytesMut::new();
        let command = Command {
            payload: payload.clone(),
        };
        let _ = format!("{command:?}");
        if let Err(err) = CommandCodec::default().encode(command, &mut encoded) {
            panic!("a decoded command cannot be encoded: {err}");
        }
        match CommandCodec::default().decode(&mut encoded) {
            Ok(Some(back)) => assert_eq!(&back.payload, payload),
            other => panic!("an encoded command does not decode: {other:?}"),
        }
        assert!(encoded.is_empty(), "bytes left after one encoded command");
    }

    if limit == usize::MAX {
        // The scanner has no limit: it must see exactly the codec's commands.
        let mut scanner = ChunkScanner::new();
        let mut started = 0usize;
        for piece in stream.chunks(step) {
            scanner.feed(piece, |_, head| {
                assert!(head.len() <= remoting_protocol::scan::HEAD_MAX);
                started += 1;
            });
        }
        let stats = scanner.stats();
        assert_eq!(stats.bytes, stream.len() as u64);
        assert_eq!(
            stats.commands,
            whole.len() as u64,
            "scanner and codec disagree"
        );
        assert_eq!(scanner.at_command_boundary(), whole_end == End::Clean);
        assert!(started >= whole.len());

        // Holding at command ends: the pieces it takes add up to the stream.
        let mut scanner = ChunkScanner::new();
        let mut rest = stream;
        let mut ends = 0;
        while !rest.is_empty() {
            let before = scanner.stats().commands;
            let taken = scanner.feed_to_command_end(rest, |_, _| {});
            assert!(taken <= rest.len() && taken > 0);
            let after = scanner.stats().commands;
            assert!(
                after - before <= 1,
                "more than one command ended in one call"
            );
            if after > before {
                ends += 1;
                assert!(scanner.at_command_boundary());
            }
            rest = &rest[taken..];
        }
        assert_eq!(ends, whole.len());
    }
});
