//! Property tests for every parser that reads peer bytes: chunk and command
//! decoders, headers, capability, engine preamble and the handshake machine.
//! Arbitrary input gives a value or an error, never a panic, and nothing is
//! reserved beyond what the framing bounds allow.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use remoting_protocol::chunk::{put_command, MAX_CHUNK_PAYLOAD};
use remoting_protocol::handshake::{Handshake, HandshakeConfig};
use remoting_protocol::preamble::{PreambleReader, MAX_NOISE};
use remoting_protocol::scan::ChunkScanner;
use remoting_protocol::{Capability, Chunk, ChunkCodec, CommandCodec, Headers};
use tokio_util::codec::{Decoder, Encoder};

fn decode_all<D: Decoder>(codec: &mut D, buf: &mut BytesMut) -> Result<Vec<D::Item>, D::Error> {
    let mut out = Vec::new();
    while let Some(item) = codec.decode(buf)? {
        out.push(item);
    }
    Ok(out)
}

proptest! {
    #[test]
    fn chunk_decoder_never_panics_or_overreserves(bytes in proptest::collection::vec(any::<u8>(), 0..70_000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let chunks = decode_all(&mut ChunkCodec, &mut buf).unwrap();
        // Whatever is left is less than one chunk, and reservations stay
        // within the input plus one chunk (a header cannot announce more).
        prop_assert!(buf.len() < 2 + MAX_CHUNK_PAYLOAD);
        prop_assert!(buf.capacity() <= 2 * (bytes.len() + 2 + MAX_CHUNK_PAYLOAD));
        let consumed: usize = chunks.iter().map(|c| 2 + c.payload.len()).sum();
        prop_assert_eq!(consumed + buf.len(), bytes.len());
    }

    #[test]
    fn chunks_round_trip_split_anywhere(
        payloads in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
        split in any::<prop::sample::Index>(),
    ) {
        let chunks: Vec<Chunk> = payloads
            .into_iter()
            .map(|(last, p)| Chunk { last, payload: Bytes::from(p) })
            .collect();
        let mut wire = BytesMut::new();
        for c in &chunks {
            ChunkCodec.encode(c.clone(), &mut wire).unwrap();
        }
        let at = split.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut got = decode_all(&mut ChunkCodec, &mut buf).unwrap();
        buf.extend_from_slice(&wire[at..]);
        got.extend(decode_all(&mut ChunkCodec, &mut buf).unwrap());
        prop_assert_eq!(got, chunks);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn command_decoder_never_panics_and_respects_its_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..70_000),
        limit in 0usize..100_000,
    ) {
        let mut codec = CommandCodec::new(limit);
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(commands) = decode_all(&mut codec, &mut buf) {
            for c in commands {
                prop_assert!(c.payload.len() <= limit);
                let _ = c.class_name();
            }
        }
    }

    #[test]
    fn commands_round_trip_split_anywhere(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20_000), 1..5),
        split in any::<prop::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for p in &payloads {
            put_command(&mut wire, p);
        }
        let at = split.index(wire.len() + 1);
        let mut codec = CommandCodec::default();
        let mut buf = BytesMut::from(&wire[..at]);
        let mut got = decode_all(&mut codec, &mut buf).unwrap();
        buf.extend_from_slice(&wire[at..]);
        got.extend(decode_all(&mut codec, &mut buf).unwrap());
        let got: Vec<Vec<u8>> = got.into_iter().map(|c| c.payload.to_vec()).collect();
        prop_assert_eq!(got, payloads);
    }

    #[test]
    fn header_parser_never_panics(text in ".{0,200}") {
        let _ = Headers::decode(&text);
    }

    #[test]
    fn header_parser_never_panics_on_near_json(text in r#"[{}":,\\nul \tu0-9a-fA-F\x08\x0cé😀]{0,80}"#) {
        let _ = Headers::decode(&text);
    }

    #[test]
    fn headers_round_trip(entries in proptest::collection::vec((".{0,20}", proptest::option::of(".{0,40}")), 0..8)) {
        let mut headers = Headers::new();
        for (k, v) in entries {
            headers.insert(k, v);
        }
        prop_assert_eq!(Headers::decode(&headers.encode()).unwrap(), headers);
    }

    #[test]
    fn capability_parser_never_panics(text in ".{0,2000}") {
        let _ = Capability::from_base64(&text);
    }

    #[test]
    fn capability_round_trips(mask in any::<u64>()) {
        let cap = Capability::from_mask(mask);
        prop_assert_eq!(Capability::from_base64(&cap.to_base64()).unwrap(), cap);
    }

    #[test]
    fn preamble_reader_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10)) {
        let mut reader = PreambleReader::new();
        let mut buf = BytesMut::new();
        for c in chunks {
            buf.extend_from_slice(&c);
            match reader.feed(&mut buf) {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => prop_assert!(buf.len() <= MAX_NOISE + 2048),
            }
        }
    }

    /// The handshake machine fed arbitrary controller bytes at any point
    /// errors or waits; it never panics.
    #[test]
    fn handshake_machine_never_panics(
        ack_ok in any::<bool>(),
        input in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..6),
    ) {
        let now = Instant::now();
        let mut hs = Handshake::new(HandshakeConfig::new("n", "s"), now).unwrap();
        while hs.poll_transmit().is_some() {}
        let mut buf = BytesMut::new();
        if ack_ok {
            buf.extend_from_slice(b"\x00\x03ACK");
            hs.handle_input(&mut buf, now).unwrap();
            prop_assert!(hs.poll_event().is_some());
            hs.tls_established(now).unwrap();
        }
        for piece in input {
            buf.extend_from_slice(&piece);
            if hs.handle_input(&mut buf, now).is_err() {
                break;
            }
            while hs.poll_transmit().is_some() {}
            let _ = hs.poll_event();
        }
    }

    #[test]
    fn scanner_never_panics(pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut scanner = ChunkScanner::new();
        let mut total = 0;
        for p in &pieces {
            scanner.feed(p, |_, _| {});
            total += p.len() as u64;
        }
        prop_assert_eq!(scanner.stats().bytes, total);
    }

    /// On a valid stream cut into arbitrary pieces the scanner sees the same
    /// commands, with the same class names, as the command decoder.
    #[test]
    fn scanner_agrees_with_the_command_decoder(
        commands in proptest::collection::vec(("[a-zA-Z.$]{0,40}", 0usize..20_000), 0..6),
        cuts in proptest::collection::vec(1usize..5000, 1..10),
    ) {
        let mut wire = BytesMut::new();
        for (class, len) in &commands {
            let mut p = b"\xac\xed\x00\x05\x73\x72".to_vec();
            p.extend_from_slice(&(class.len() as u16).to_be_bytes());
            p.extend_from_slice(class.as_bytes());
            p.resize((*len).max(p.len()), 1);
            put_command(&mut wire, &p);
        }
        let mut decoded = Vec::new();
        let mut buf = wire.clone();
        for c in decode_all(&mut CommandCodec::default(), &mut buf).unwrap() {
            decoded.push(c.class_name().map(str::to_owned));
        }
        let mut scanner = ChunkScanner::new();
        let mut seen = Vec::new();
        let mut rest = &wire[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let (now, later) = rest.split_at((*cut).min(rest.len()));
            scanner.feed(now, |c, _| seen.push(c.map(str::to_owned)));
            rest = later;
        }
        prop_assert_eq!(seen, decoded);
        prop_assert!(scanner.at_command_boundary());
        prop_assert_eq!(scanner.stats().commands, commands.len() as u64);
    }
}
