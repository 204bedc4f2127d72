//! Whole commands: the payloads of consecutive chunks joined up to the chunk
//! without the more-follows bit. Each command is one Java serialization
//! stream; the agent never deserializes it, but the class name at its start
//! says what the channel is doing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::chunk::{put_command, ChunkError, ChunkHeader};

/// Default bound on one command's size. Remoting streams large data as many
/// small commands, so even class-file and jar prefetch commands stay far below.
pub const DEFAULT_MAX_COMMAND: usize = 64 * 1024 * 1024;

/// `ObjectOutputStream` magic + version, then `TC_OBJECT TC_CLASSDESC`.
const OBJECT_STREAM_START: &[u8] = b"\xac\xed\x00\x05\x73\x72";

/// The Java class name of the object that starts a serialized command
/// (`hudson.remoting.UserRequest`, `hudson.remoting.Response`, ...), read from
/// the first bytes only. `None` when the bytes do not start that way (e.g. a
/// continuation chunk, or the empty chunk after a close).
pub fn class_name(payload: &[u8]) -> Option<&str> {
    let rest = payload.strip_prefix(OBJECT_STREAM_START)?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    std::str::from_utf8(rest.get(2..2 + len)?).ok()
}

/// One command's payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// The joined payload.
    pub payload: Bytes,
}

impl Command {
    /// See [`class_name`].
    pub fn class_name(&self) -> Option<&str> {
        class_name(&self.payload)
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("class", &self.class_name())
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Codec for whole commands. Decoding scans chunk headers in place and takes
/// the command off the buffer only once its last chunk is there: a command of
/// one chunk is a zero-copy slice, a longer one is joined with one copy.
#[derive(Debug, Clone)]
pub struct CommandCodec {
    max_command: usize,
    /// Bytes at the front of the buffer already known to be whole non-last chunks.
    scanned: usize,
    /// Payload bytes in those chunks.
    scanned_payload: usize,
    /// Number of those chunks.
    scanned_chunks: usize,
}

impl Default for CommandCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_COMMAND)
    }
}

impl CommandCodec {
    /// A codec refusing commands longer than `max_command` bytes.
    pub fn new(max_command: usize) -> Self {
        Self {
            max_command,
            scanned: 0,
            scanned_payload: 0,
            scanned_chunks: 0,
        }
    }
}

impl Decoder for CommandCodec {
    type Item = Command;
    type Error = ChunkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, ChunkError> {
        loop {
            let Some(header) = ChunkHeader::peek(&src[self.scanned..]) else {
                return Ok(None);
            };
            let payload_len = self.scanned_payload + header.len;
            if payload_len > self.max_command {
                return Err(ChunkError::CommandTooLarge {
                    limit: self.max_command,
                });
            }
            let end = self.scanned + 2 + header.len;
            if src.len() < end {
                src.reserve(end - src.len());
                return Ok(None);
            }
            if !header.last {
                self.scanned = end;
                self.scanned_payload = payload_len;
                self.scanned_chunks += 1;
                continue;
            }
            let payload = if self.scanned_chunks == 0 {
                src.advance(2);
                src.split_to(header.len).freeze()
            } else {
                let mut joined = BytesMut::with_capacity(payload_len);
                let mut frames = src.split_to(end);
                while let Some(h) = ChunkHeader::peek(&frames) {
                    frames.advance(2);
                    joined.put_slice(&frames[..h.len]);
                    frames.advance(h.len);
                }
                joined.freeze()
            };
            self.scanned = 0;
            self.scanned_payload = 0;
            self.scanned_chunks = 0;
            return Ok(Some(Command { payload }));
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Command>, ChunkError> {
        match self.decode(src)? {
            Some(command) => Ok(Some(command)),
            None if src.is_empty() => Ok(None),
            None => Err(ChunkError::Truncated("command")),
        }
    }
}

impl Encoder<Bytes> for CommandCodec {
    type Error = ChunkError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), ChunkError> {
        put_command(dst, &payload);
        Ok(())
    }
}

impl Encoder<Command> for CommandCodec {
    type Error = ChunkError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), ChunkError> {
        put_command(dst, &command.payload);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn class_name_peek() {
        let mut payload = b"\xac\xed\x00\x05\x73\x72\x00\x18hudson.remoting.Response".to_vec();
        payload.extend_from_slice(&[0; 10]);
        assert_eq!(class_name(&payload), Some("hudson.remoting.Response"));
        assert_eq!(class_name(&payload[..20]), None, "name cut short");
        assert_eq!(class_name(b""), None);
        assert_eq!(class_name(b"\xac\xed\x00\x05\x73\x72\xff"), None);
    }

    #[test]
    fn joins_chunks_and_slices_single_ones() {
        let mut buf = BytesMut::new();
        put_command(&mut buf, &[1; 20000]);
        put_command(&mut buf, b"one");
        let mut codec = CommandCodec::default();
        let mut partial = buf.split_to(9000);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        let big = codec.decode(&mut partial).unwrap().unwrap();
        assert_eq!(big.payload.len(), 20000);
        assert!(big.payload.iter().all(|&b| b == 1));
        let small = codec.decode(&mut partial).unwrap().unwrap();
        assert_eq!(&small.payload[..], b"one");
        assert!(partial.is_empty());
    }

    #[test]
    fn oversized_commands_are_refused_before_buffering() {
        let mut codec = CommandCodec::new(10_000);
        let mut buf = BytesMut::new();
        // Only the headers need to arrive for the refusal.
        buf.extend_from_slice(
            &ChunkHeader {
                len: 8192,
                last: false,
            }
            .to_bytes(),
        );
        buf.extend_from_slice(&[0; 8192]);
        buf.extend_from_slice(
            &ChunkHeader {
                len: 8192,
                last: true,
            }
            .to_bytes(),
        );
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ChunkError::CommandTooLarge { limit: 10_000 })
        ));
    }

    #[test]
    fn eof_mid_command_is_an_error() {
        let mut buf = BytesMut::from(&b"\x80\x01a"[..]);
        let mut codec = CommandCodec::default();
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(ChunkError::Truncated("command"))
        ));
    }
}
