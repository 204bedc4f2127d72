//! stdin as the modes read it: whole chunks out of one fixed buffer.

use std::io::{self, Read};

use bytes::BytesMut;
use remoting_protocol::chunk::ChunkHeader;
use remoting_protocol::preamble::PreambleReader;

/// Read buffer size: large reads, and always room for a whole chunk (at most 2 + 32767 bytes).
pub(super) const READ_BUFFER: usize = 256 * 1024;

/// stdin with one fixed buffer (allocated and zeroed once).
pub(super) struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
}

impl<R: Read> Input<R> {
    pub(super) fn new(reader: R) -> Self {
        Self {
            reader,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more; 0 at EOF.
    pub(super) fn fill(&mut self) -> Result<usize, String> {
        if self.end == self.buf.len() {
            // Only a partial chunk (< 32 KiB) is ever left unconsumed, so
            // moving it to the front always makes room.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading stdin: {e}")),
            }
        }
    }

    /// Consumes the peer's preamble, leaving what follows it buffered.
    /// False if stdin closed before sending anything (a peer that gave up
    /// before starting: a clean end, like EOF later on).
    pub(super) fn read_preamble(&mut self) -> Result<bool, String> {
        let mut seen = 0;
        let mut reader = PreambleReader::new();
        let mut pending = BytesMut::new();
        loop {
            match reader.feed(&mut pending) {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => return Err(format!("reading the peer's preamble: {e}")),
            }
            match self.fill()? {
                0 if seen == 0 => return Ok(false),
                0 => return Err("stdin ended before the peer's preamble was complete".into()),
                n => seen += n,
            }
            pending.extend_from_slice(self.data());
            self.consume(self.end - self.start);
        }
        // The buffer is empty here and the leftover is at most one read.
        self.buf[..pending.len()].copy_from_slice(&pending);
        self.start = 0;
        self.end = pending.len();
        Ok(true)
    }

    /// Length of the longest prefix of whole chunks, and how many there are.
    pub(super) fn whole_chunks(&self) -> (usize, u64, u64) {
        let data = self.data();
        let (mut at, mut chunks, mut payload) = (0, 0, 0);
        while let Some(header) = ChunkHeader::peek(&data[at..]) {
            if data.len() - at < 2 + header.len {
                break;
            }
            at += 2 + header.len;
            chunks += 1;
            payload += header.len as u64;
        }
        (at, chunks, payload)
    }

    /// The next whole chunk (header included), or `None` at a clean EOF.
    pub(super) fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(header) = ChunkHeader::peek(self.data()) {
                if self.data().len() >= 2 + header.len {
                    let chunk = self.data()[..2 + header.len].to_vec();
                    self.consume(chunk.len());
                    return Ok(Some(chunk));
                }
            }
            if self.fill()? == 0 {
                return self.eof().map(|()| None);
            }
        }
    }

    /// At EOF: fine if nothing is left, else the stream was cut mid-chunk.
    pub(super) fn eof(&self) -> Result<(), String> {
        match self.data().len() {
            0 => Ok(()),
            n => Err(format!("stdin ended inside a chunk ({n} bytes left over)")),
        }
    }
}
