//! The stdio engine's preamble (PROTOCOL.md section 4).
//!
//! `java -jar remoting.jar` with no arguments is a channel endpoint on
//! stdin/stdout. Each side writes the capability preamble
//! `<===[JENKINS REMOTING CAPACITY]===>`, its base64 capability text, and the
//! binary-mode preamble `00 00 00 00`; after that both directions carry the
//! chunk stream. Like remoting's own reader, ours skips noise (a JVM warning,
//! say) before each preamble, within a bound.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::capability::{Capability, CapabilityError, MAX_TEXT_LEN};

/// Starts the capability text.
pub const CAPABILITY_PREAMBLE: &[u8] = b"<===[JENKINS REMOTING CAPACITY]===>";
/// Announces binary mode, i.e. the chunk stream.
pub const BINARY_MODE_PREAMBLE: &[u8] = &[0, 0, 0, 0];
/// Most noise skipped before giving up on a peer that is not an engine.
pub const MAX_NOISE: usize = 64 * 1024;

/// Why the engine's preamble could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The engine wrote too much before (or instead of) its preamble.
    #[error("the engine wrote {0} bytes without a remoting preamble; is it remoting.jar?")]
    NoPreamble(usize),
    /// The capability text was bad.
    #[error("the engine's capability is invalid: {0}")]
    Capability(#[from] CapabilityError),
    /// The engine's output ended before the preamble was complete.
    #[error("the engine's output ended before its preamble was complete")]
    Eof,
    /// Reading or writing the engine's pipes failed.
    #[error("engine stdio failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the engine announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnginePreamble {
    /// The engine's capability.
    pub capability: Capability,
    /// Its base64 text, exactly as written (the same text a JNLP4 peer sends).
    pub capability_text: String,
    /// Bytes skipped before the preambles (the engine's stray output).
    pub noise: Bytes,
}

/// Our side of the preamble: capability preamble, text, binary mode.
pub fn encode(capability: Capability) -> Bytes {
    let text = capability.to_base64();
    let mut out = BytesMut::with_capacity(CAPABILITY_PREAMBLE.len() + text.len() + 4);
    out.put_slice(CAPABILITY_PREAMBLE);
    out.put_slice(text.as_bytes());
    out.put_slice(BINARY_MODE_PREAMBLE);
    out.freeze()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Capability,
    Text,
    Mode,
    /// The preamble was read; what follows belongs to the chunk stream.
    Done,
}

/// Reads the engine's preamble from its stdout, incrementally and without I/O.
#[derive(Debug)]
pub struct PreambleReader {
    state: State,
    noise: BytesMut,
    text: String,
}

impl Default for PreambleReader {
    fn default() -> Self {
        Self {
            state: State::Capability,
            noise: BytesMut::new(),
            text: String::new(),
        }
    }
}

impl PreambleReader {
    /// A reader at the start of the engine's output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes preamble bytes from `buf`; `Some` once complete, leaving the
    /// chunk stream that follows in `buf` (then and on any later call).
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<Option<EnginePreamble>, PreambleError> {
        loop {
            match self.state {
                State::Capability => {
                    if !self.skip_to(buf, CAPABILITY_PREAMBLE)? {
                        return Ok(None);
                    }
                    self.state = State::Text;
                }
                State::Text => {
                    let len = buf.iter().take_while(|b| is_base64(**b)).count();
                    if self.text.len() + len > MAX_TEXT_LEN {
                        return Err(CapabilityError::TooLong(self.text.len() + len).into());
                    }
                    // Only base64 characters were taken, so this is ASCII.
                    self.text
                        .extend(buf.split_to(len).iter().map(|b| char::from(*b)));
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    self.state = State::Mode;
                }
                State::Done => return Ok(None),
                State::Mode => {
                    if !self.skip_to(buf, BINARY_MODE_PREAMBLE)? {
                        return Ok(None);
                    }
                    let capability = Capability::from_base64(&self.text)?;
                    self.state = State::Done;
                    return Ok(Some(EnginePreamble {
                        capability,
                        capability_text: std::mem::take(&mut self.text),
                        noise: std::mem::take(&mut self.noise).freeze(),
                    }));
                }
            }
        }
    }

    /// Moves bytes before `marker` to the noise; true once `marker` is consumed.
    /// A possible partial marker at the end of `buf` stays there.
    fn skip_to(&mut self, buf: &mut BytesMut, marker: &[u8]) -> Result<bool, PreambleError> {
        let found = buf.windows(marker.len()).position(|w| w == marker);
        let skip = match found {
            Some(at) => at,
            None => (0..=buf.len())
                .find(|&at| marker.starts_with(&buf[at..]))
                .unwrap_or(buf.len()),
        };
        if self.noise.len() + skip > MAX_NOISE {
            return Err(PreambleError::NoPreamble(self.noise.len() + skip));
        }
        self.noise.extend_from_slice(&buf[..skip]);
        buf.advance(skip);
        if found.is_some() {
            buf.advance(marker.len());
        }
        Ok(found.is_some())
    }
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// Writes our preamble to the engine's stdin and reads the engine's from its
/// stdout. Chunk bytes that follow the engine's preamble are left in `buf`.
pub async fn exchange<R, W>(
    engine_out: &mut R,
    engine_in: &mut W,
    ours: Capability,
    buf: &mut BytesMut,
) -> Result<EnginePreamble, PreambleError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    engine_in.write_all(&encode(ours)).await?;
    engine_in.flush().await?;
    let mut reader = PreambleReader::new();
    loop {
        if let Some(preamble) = reader.feed(buf)? {
            return Ok(preamble);
        }
        buf.reserve(4096);
        if engine_out.read_buf(buf).await? == 0 {
            return Err(PreambleError::Eof);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RECORDED: &[u8] =
        include_bytes!("../../../protocol-fixtures/jnlp4/engine-stdio-preamble.bin");

    #[test]
    fn our_preamble_is_what_the_engine_writes() {
        assert_eq!(&encode(Capability::CURRENT)[..], RECORDED);
    }

    #[test]
    fn reads_the_recorded_engine_byte_by_byte_with_noise() {
        let mut input = b"Picked up JAVA_TOOL_OPTIONS: -Xmx1g\n<===[JENK".to_vec();
        input.extend_from_slice(RECORDED);
        input.extend_from_slice(b"\x00\x01z");
        let mut reader = PreambleReader::new();
        let mut buf = BytesMut::new();
        let mut result = None;
        for b in input {
            buf.put_u8(b);
            if let Some(p) = reader.feed(&mut buf).unwrap() {
                result = Some(p);
                break;
            }
        }
        let preamble = result.unwrap();
        assert_eq!(preamble.capability, Capability::CURRENT);
        assert_eq!(
            &preamble.noise[..],
            b"Picked up JAVA_TOOL_OPTIONS: -Xmx1g\n<===[JENK"
        );
        assert!(buf.is_empty());
        let mut rest = BytesMut::from(&b"\x00\x01z"[..]);
        assert!(reader.feed(&mut rest).unwrap().is_none());
        assert_eq!(
            rest.len(),
            3,
            "a finished reader leaves the chunk stream alone"
        );
    }

    #[test]
    fn chunks_after_the_preamble_stay_in_the_buffer() {
        let mut buf = BytesMut::from(RECORDED);
        buf.extend_from_slice(b"\x00\x01z");
        let preamble = PreambleReader::new().feed(&mut buf).unwrap().unwrap();
        assert_eq!(preamble.capability_text, Capability::CURRENT.to_base64());
        assert_eq!(&buf[..], b"\x00\x01z");
    }

    #[test]
    fn endless_noise_is_refused() {
        let mut buf = BytesMut::from(&vec![b'x'; MAX_NOISE + 1][..]);
        assert!(matches!(
            PreambleReader::new().feed(&mut buf),
            Err(PreambleError::NoPreamble(_))
        ));
    }
}
