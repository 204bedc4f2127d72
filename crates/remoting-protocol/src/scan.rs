//! Watching a chunk stream that passes through unchanged: where commands
//! start and which class starts each, without copying or re-framing the
//! bytes. The bridge forwards whatever it reads in one piece and lets a
//! [`ChunkScanner`] look at it on the way.

use crate::chunk::ChunkHeader;
use crate::command::class_name;

/// Bytes of a command's start kept to read its class name: the stream
/// header, `TC_OBJECT TC_CLASSDESC`, a 2-byte length and a class name of up
/// to 248 bytes (remoting's are under 60).
const PEEK: usize = 256;

/// For the classes in [`WHOLE_HEAD`], the whole first chunk is kept (at most
/// what a sender puts in one chunk), so that the caller can look inside: a
/// `UserRequest` names its callable (a ping, say) well past its start.
pub const HEAD_MAX: usize = crate::chunk::SEND_CHUNK_PAYLOAD;

/// Commands whose whole first chunk is captured. Rare on the hot path: bulk
/// data travels as `ProxyOutputStream$Chunk` commands, which keep only
/// [`PEEK`] bytes.
const WHOLE_HEAD: &[&str] = &["hudson.remoting.UserRequest"];

/// Follows chunk boundaries across arbitrary read sizes.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    /// Payload bytes of the current chunk not seen yet.
    remaining: usize,
    /// First byte of a header split across two pieces.
    half_header: Option<u8>,
    /// Whether the current chunk ends its command.
    current_last: bool,
    /// Whether the next chunk header starts a new command.
    next_starts_command: bool,
    /// Whether the current chunk is the first of its command.
    in_first_chunk: bool,
    /// Start of the current command's first chunk payload.
    peek: Box<[u8; HEAD_MAX]>,
    peek_len: usize,
    /// How much of it to keep: [`PEEK`], or [`HEAD_MAX`] once the class is
    /// known to be one of [`WHOLE_HEAD`].
    peek_limit: usize,
    /// Whether the current command's start was reported already.
    reported: bool,
    /// Totals.
    stats: ScanStats,
}

/// Counts over a scanned stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Bytes seen, headers included.
    pub bytes: u64,
    /// Chunks started.
    pub chunks: u64,
    /// Commands completed.
    pub commands: u64,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            remaining: 0,
            half_header: None,
            current_last: true,
            next_starts_command: true,
            in_first_chunk: false,
            peek: Box::new([0; HEAD_MAX]),
            peek_len: 0,
            peek_limit: PEEK,
            reported: true,
            stats: ScanStats::default(),
        }
    }
}

impl ChunkScanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Totals so far.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Whether the stream is between commands (nothing half-sent).
    pub fn at_command_boundary(&self) -> bool {
        self.remaining == 0 && self.half_header.is_none() && self.next_starts_command
    }

    /// Looks at the next piece of the stream; `on_command` gets, once for
    /// every command that starts, its class name (if readable) and the start
    /// of its first chunk (see [`HEAD_MAX`]).
    pub fn feed(&mut self, data: &[u8], on_command: impl FnMut(Option<&str>, &[u8])) {
        self.scan(data, on_command, false);
    }

    /// Like [`ChunkScanner::feed`], but stops right after the first command
    /// that ends in `data`, and returns how many bytes it took (all of them
    /// when no command ends). For holding a stream at a command boundary:
    /// what it leaves is the start of the next command.
    pub fn feed_to_command_end(
        &mut self,
        data: &[u8],
        on_command: impl FnMut(Option<&str>, &[u8]),
    ) -> usize {
        self.scan(data, on_command, true)
    }

    fn scan(
        &mut self,
        data: &[u8],
        mut on_command: impl FnMut(Option<&str>, &[u8]),
        stop_at_command_end: bool,
    ) -> usize {
        let total = data.len();
        let taken = self.scan_inner(data, &mut on_command, stop_at_command_end);
        self.stats.bytes += taken as u64;
        debug_assert!(taken <= total);
        taken
    }

    fn scan_inner(
        &mut self,
        mut data: &[u8],
        on_command: &mut impl FnMut(Option<&str>, &[u8]),
        stop_at_command_end: bool,
    ) -> usize {
        let total = data.len();
        while !data.is_empty() {
            let commands = self.stats.commands;
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                if self.in_first_chunk && !self.reported {
                    self.capture(&data[..take]);
                }
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    self.end_chunk(on_command);
                } else if self.peek_len == self.peek_limit {
                    self.report(on_command);
                }
            } else {
                let header = if let Some(first) = self.half_header.take() {
                    let header = ChunkHeader::parse([first, data[0]]);
                    data = &data[1..];
                    header
                } else if let [first] = data {
                    self.half_header = Some(*first);
                    return total;
                } else {
                    let header = ChunkHeader::parse([data[0], data[1]]);
                    data = &data[2..];
                    header
                };
                self.start_chunk(header, on_command);
            }
            if stop_at_command_end && self.stats.commands > commands {
                return total - data.len();
            }
        }
        total
    }

    /// Keeps the start of a first chunk, widening to the whole chunk once the
    /// class turns out to be one of [`WHOLE_HEAD`].
    fn capture(&mut self, mut bytes: &[u8]) {
        loop {
            let room = (self.peek_limit - self.peek_len).min(bytes.len());
            self.peek[self.peek_len..self.peek_len + room].copy_from_slice(&bytes[..room]);
            self.peek_len += room;
            bytes = &bytes[room..];
            let widen = self.peek_limit == PEEK
                && self.peek_len == PEEK
                && class_name(&self.peek[..PEEK]).is_some_and(|c| WHOLE_HEAD.contains(&c));
            if !widen {
                return;
            }
            self.peek_limit = HEAD_MAX;
        }
    }

    fn start_chunk(
        &mut self,
        header: ChunkHeader,
        on_command: &mut impl FnMut(Option<&str>, &[u8]),
    ) {
        self.stats.chunks += 1;
        self.in_first_chunk = self.next_starts_command;
        if self.in_first_chunk {
            self.peek_len = 0;
            self.peek_limit = PEEK;
            self.reported = false;
        }
        self.current_last = header.last;
        self.next_starts_command = header.last;
        self.remaining = header.len;
        if header.len == 0 {
            self.end_chunk(on_command);
        }
    }

    fn end_chunk(&mut self, on_command: &mut impl FnMut(Option<&str>, &[u8])) {
        if self.in_first_chunk {
            self.report(on_command);
        }
        if self.current_last {
            self.stats.commands += 1;
        }
        self.in_first_chunk = false;
    }

    fn report(&mut self, on_command: &mut impl FnMut(Option<&str>, &[u8])) {
        if !self.reported {
            self.reported = true;
            let head = &self.peek[..self.peek_len];
            on_command(class_name(head), head);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chunk::put_command;
    use bytes::BytesMut;

    fn command(class: &str, len: usize) -> Vec<u8> {
        let mut p = b"\xac\xed\x00\x05\x73\x72".to_vec();
        p.extend_from_slice(&(class.len() as u16).to_be_bytes());
        p.extend_from_slice(class.as_bytes());
        p.resize(len.max(p.len()), 7);
        p
    }

    #[test]
    fn reports_each_command_once_whatever_the_piece_size() {
        let mut wire = BytesMut::new();
        put_command(&mut wire, &command("hudson.remoting.UserRequest", 20_000));
        put_command(&mut wire, &[]);
        put_command(&mut wire, &command("hudson.remoting.Response", 30));
        for piece in [1, 2, 3, 7, 100, 8193, wire.len()] {
            let mut scanner = ChunkScanner::new();
            let mut seen = Vec::new();
            for part in wire.chunks(piece) {
                scanner.feed(part, |c, _| seen.push(c.map(str::to_owned)));
            }
            assert_eq!(
                seen,
                [
                    Some("hudson.remoting.UserRequest".to_owned()),
                    None,
                    Some("hudson.remoting.Response".to_owned())
                ],
                "piece size {piece}"
            );
            let stats = scanner.stats();
            assert_eq!(
                (stats.commands, stats.chunks, stats.bytes),
                (3, 5, wire.len() as u64)
            );
            assert!(scanner.at_command_boundary());
        }
    }

    #[test]
    fn user_requests_keep_their_whole_first_chunk() {
        let mut request = command("hudson.remoting.UserRequest", 6000);
        request[5000..5015].copy_from_slice(b"PingThread$Ping");
        let mut wire = BytesMut::new();
        put_command(&mut wire, &request);
        put_command(
            &mut wire,
            &command("hudson.remoting.ProxyOutputStream$Chunk", 6000),
        );
        for piece in [1, 300, 4096, wire.len()] {
            let mut heads = Vec::new();
            let mut scanner = ChunkScanner::new();
            for part in wire.chunks(piece) {
                scanner.feed(part, |c, head| {
                    heads.push((c.map(str::to_owned), head.len()))
                });
            }
            assert_eq!(
                heads,
                [
                    (Some("hudson.remoting.UserRequest".to_owned()), 6000),
                    (
                        Some("hudson.remoting.ProxyOutputStream$Chunk".to_owned()),
                        PEEK
                    )
                ],
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn stops_after_the_first_command_that_ends() {
        let mut wire = BytesMut::new();
        put_command(&mut wire, &command("a.First", 9000));
        let first = wire.len();
        put_command(&mut wire, &[]);
        put_command(&mut wire, &command("b.Third", 30));
        for piece in [1, 3, 8193, wire.len()] {
            let mut scanner = ChunkScanner::new();
            let mut ends = Vec::new();
            let mut at = 0;
            let mut classes = Vec::new();
            for part in wire.chunks(piece) {
                let mut part = part;
                while !part.is_empty() {
                    let n = scanner
                        .feed_to_command_end(part, |c, _| classes.push(c.map(str::to_owned)));
                    at += n;
                    part = &part[n..];
                    if scanner.at_command_boundary() {
                        ends.push(at);
                    }
                }
            }
            assert_eq!(ends, [first, first + 2, wire.len()], "piece size {piece}");
            assert_eq!(classes.len(), 3);
            assert_eq!(scanner.stats().bytes, wire.len() as u64);
        }
    }

    #[test]
    fn knows_when_a_command_is_half_sent() {
        let mut wire = BytesMut::new();
        put_command(&mut wire, &command("x.Y", 9000));
        let mut scanner = ChunkScanner::new();
        scanner.feed(&wire[..1], |_, _| {});
        assert!(!scanner.at_command_boundary());
        scanner.feed(&wire[1..8194], |_, _| {});
        assert!(
            !scanner.at_command_boundary(),
            "first chunk done, more follow"
        );
        scanner.feed(&wire[8194..], |_, _| {});
        assert!(scanner.at_command_boundary());
    }
}
