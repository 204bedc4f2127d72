//! The channel's chunk framing (`remoting_protocol::ChunkCodec`).
//!
//! Input: the first byte sets the size of the reads the stream arrives in,
//! the rest is the stream. Checks: no panic; reads of any size give the
//! same chunks as one read; re-encoding the chunks gives back exactly the
//! bytes they were read from; the end of the stream is refused only inside
//! a chunk; a decoder never reserves more than one chunk ahead.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use remoting_protocol::chunk::MAX_CHUNK_PAYLOAD;
use remoting_protocol::{Chunk, ChunkCodec, ChunkError};
use tokio_util::codec::{Decoder, Encoder};

/// Decodes `stream` arriving `step` bytes at a time, then ends it.
fn decode(stream: &[u8], step: usize) -> (Vec<Chunk>, Result<(), String>, usize) {
    let mut codec = ChunkCodec;
    let mut buf = BytesMut::new();
    let mut chunks = Vec::new();
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => break,
                Err(err) => panic!("the chunk decoder never refuses a stream: {err}"),
            }
        }
        // Bounded allocation: at most one whole chunk is ever waited for.
        assert!(
            buf.capacity() <= (2 + MAX_CHUNK_PAYLOAD).max(stream.len()) * 2,
            "capacity {} for a {}-byte stream",
            buf.capacity(),
            stream.len()
        );
    }
    let left = buf.len();
    let end = match codec.decode_eof(&mut buf) {
        Ok(None) => Ok(()),
        Ok(Some(chunk)) => panic!("decode_eof found a chunk decode missed: {chunk:?}"),
        Err(ChunkError::Truncated(what)) => Err(what.to_owned()),
        Err(err) => panic!("unexpected error at the end: {err}"),
    };
    (chunks, end, left)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let (whole, whole_end, left) = decode(stream, stream.len().max(1));
    let (pieces, pieces_end, _) = decode(stream, step);
    assert_eq!(whole, pieces, "reads of {step} bytes changed the chunks");
    assert_eq!(whole_end, pieces_end);
    assert_eq!(
        whole_end.is_err(),
        left > 0,
        "end refused iff bytes were left"
    );

    let mut encoded = BytesMut::new();
    for chunk in whole {
        if let Err(err) = ChunkCodec.encode(chunk, &mut encoded) {
            panic!("a decoded chunk cannot be encoded: {err}");
        }
    }
    assert_eq!(&encoded[..], &stream[..stream.len() - left]);
});
