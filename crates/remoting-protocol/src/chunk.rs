//! Chunk framing of the channel (PROTOCOL.md 2.6): every chunk is a 2-byte
//! big-endian header, then the payload. Header bit `0x8000` set means more
//! chunks of the same command follow; the low 15 bits are the payload length.
//!
//! The same framing runs over JNLP4-connect (inside TLS), over the stdio
//! engine after its preamble, and one chunk per WebSocket message, so chunks
//! pass between them unchanged.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest payload a 15-bit length can announce.
pub const MAX_CHUNK_PAYLOAD: usize = 0x7fff;

/// Largest payload remoting itself puts in one chunk; our encoders split
/// commands the same way.
pub const SEND_CHUNK_PAYLOAD: usize = 8192;

const MORE_FOLLOWS: u16 = 0x8000;

/// Why a chunk stream could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The underlying stream failed.
    #[error("channel I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A chunk payload longer than a header can announce was handed to an encoder.
    #[error("a chunk payload of {0} bytes exceeds the 32767 a chunk header can carry")]
    ChunkTooLarge(usize),
    /// A command grew past the configured bound.
    #[error("the peer sent a command of more than {limit} bytes; refusing to buffer it")]
    CommandTooLarge {
        /// The bound in force.
        limit: usize,
    },
    /// The stream ended inside a chunk or a command.
    #[error("the channel ended in the middle of a {0}")]
    Truncated(&'static str),
}

/// A chunk header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Payload length (at most [`MAX_CHUNK_PAYLOAD`]).
    pub len: usize,
    /// Whether this chunk ends its command.
    pub last: bool,
}

impl ChunkHeader {
    /// Decodes the two header bytes.
    pub const fn parse(bytes: [u8; 2]) -> Self {
        let raw = u16::from_be_bytes(bytes);
        Self {
            len: (raw & !MORE_FOLLOWS) as usize,
            last: raw & MORE_FOLLOWS == 0,
        }
    }

    /// Reads a header at the front of `buf`, if two bytes are there.
    pub fn peek(buf: &[u8]) -> Option<Self> {
        Some(Self::parse([*buf.first()?, *buf.get(1)?]))
    }

    /// The two header bytes; `len` must not exceed [`MAX_CHUNK_PAYLOAD`].
    pub fn to_bytes(self) -> [u8; 2] {
        let mut raw = (self.len & MAX_CHUNK_PAYLOAD) as u16;
        if !self.last {
            raw |= MORE_FOLLOWS;
        }
        raw.to_be_bytes()
    }
}

/// One chunk.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Whether this chunk ends its command.
    pub last: bool,
    /// The payload, a slice of the receive buffer (no copy).
    pub payload: Bytes,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("last", &self.last)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Chunk {
    /// The header this chunk is sent with.
    pub fn header(&self) -> ChunkHeader {
        ChunkHeader {
            len: self.payload.len(),
            last: self.last,
        }
    }
}

/// Codec for single chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCodec;

impl Decoder for ChunkCodec {
    type Item = Chunk;
    type Error = ChunkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        let Some(header) = ChunkHeader::peek(src) else {
            return Ok(None);
        };
        let frame_len = 2 + header.len;
        if src.len() < frame_len {
            // Bounded: a header cannot announce more than 32 KiB.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(2);
        Ok(Some(Chunk {
            last: header.last,
            payload: src.split_to(header.len).freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        match self.decode(src)? {
            Some(chunk) => Ok(Some(chunk)),
            None if src.is_empty() => Ok(None),
            None => Err(ChunkError::Truncated("chunk")),
        }
    }
}

impl Encoder<Chunk> for ChunkCodec {
    type Error = ChunkError;

    fn encode(&mut self, chunk: Chunk, dst: &mut BytesMut) -> Result<(), ChunkError> {
        if chunk.payload.len() > MAX_CHUNK_PAYLOAD {
            return Err(ChunkError::ChunkTooLarge(chunk.payload.len()));
        }
        dst.reserve(2 + chunk.payload.len());
        dst.put_slice(&chunk.header().to_bytes());
        dst.put_slice(&chunk.payload);
        Ok(())
    }
}

/// Appends `payload` as one command: chunks of at most
/// [`SEND_CHUNK_PAYLOAD`], the last without the more-follows bit. An empty
/// payload becomes the single empty chunk `00 00`.
pub fn put_command(dst: &mut BytesMut, payload: &[u8]) {
    let chunks = payload.len().div_ceil(SEND_CHUNK_PAYLOAD).max(1);
    dst.reserve(payload.len() + 2 * chunks);
    let mut rest = payload;
    loop {
        let take = rest.len().min(SEND_CHUNK_PAYLOAD);
        let (now, later) = rest.split_at(take);
        dst.put_slice(
            &ChunkHeader {
                len: take,
                last: later.is_empty(),
            }
            .to_bytes(),
        );
        dst.put_slice(now);
        if later.is_empty() {
            return;
        }
        rest = later;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_bits() {
        assert_eq!(
            ChunkHeader::parse([0x80, 0x00]),
            ChunkHeader {
                len: 0,
                last: false
            }
        );
        assert_eq!(
            ChunkHeader::parse([0x20, 0x00]),
            ChunkHeader {
                len: 8192,
                last: true
            }
        );
        assert_eq!(
            ChunkHeader::parse([0xff, 0xff]),
            ChunkHeader {
                len: 0x7fff,
                last: false
            }
        );
        for (len, last) in [(0, true), (0x7fff, false), (8192, true)] {
            let h = ChunkHeader { len, last };
            assert_eq!(ChunkHeader::parse(h.to_bytes()), h);
        }
    }

    #[test]
    fn decodes_and_waits_for_whole_chunks() {
        let mut codec = ChunkCodec;
        let mut buf = BytesMut::from(&b"\x80\x02ab\x00"[..]);
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((first.last, &first.payload[..]), (false, &b"ab"[..]));
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\x01");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"c");
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((second.last, &second.payload[..]), (true, &b"c"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn eof_inside_a_chunk_is_an_error() {
        let mut buf = BytesMut::from(&b"\x00\x05abc"[..]);
        assert!(matches!(
            ChunkCodec.decode_eof(&mut buf),
            Err(ChunkError::Truncated("chunk"))
        ));
        assert!(ChunkCodec
            .decode_eof(&mut BytesMut::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn encoder_refuses_oversized_payloads() {
        let chunk = Chunk {
            last: true,
            payload: Bytes::from(vec![0; MAX_CHUNK_PAYLOAD + 1]),
        };
        assert!(matches!(
            ChunkCodec.encode(chunk, &mut BytesMut::new()),
            Err(ChunkError::ChunkTooLarge(_))
        ));
    }

    #[test]
    fn put_command_splits_like_remoting() {
        let mut buf = BytesMut::new();
        put_command(&mut buf, &[7; 20000]);
        let mut sizes = Vec::new();
        while let Some(c) = ChunkCodec.decode(&mut buf).unwrap() {
            sizes.push((c.payload.len(), c.last));
        }
        assert_eq!(sizes, [(8192, false), (8192, false), (3616, true)]);
        put_command(&mut buf, &[]);
        assert_eq!(&buf[..], b"\x00\x00");
    }
}
