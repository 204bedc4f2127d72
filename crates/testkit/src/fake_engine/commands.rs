//! The chunk stream as `echo` sees it: the commands it answers instead of
//! echoing (a close, requests), the ones it acts on ([`HOLD`], [`RELEASE`],
//! [`SPAWN_PREFIX`]), and its output, held back while inside a command.

use std::io::Write;
use std::process::Stdio;

use remoting_protocol::chunk::ChunkHeader;

/// A chunk whose payload starts with this makes `echo` run the rest as a
/// shell command in the background, like a build step the engine started.
pub const SPAWN_PREFIX: &[u8] = b"fake-engine:spawn ";

/// A one-chunk command whose payload is exactly this makes `echo` write the
/// first chunk of a two-chunk command (a `ProxyOutputStream$Chunk`) and hold
/// back its last chunk, and everything else it would write, until
/// [`RELEASE`]: its stdout stays in the middle of a command.
pub const HOLD: &[u8] = b"fake-engine:hold";

/// A one-chunk command whose payload is exactly this makes `echo` write the
/// last chunk of the command [`HOLD`] started, then whatever it held back.
pub const RELEASE: &[u8] = b"fake-engine:release";

/// `ObjectOutputStream` magic + version, then `TC_OBJECT TC_CLASSDESC`.
pub(super) const OBJECT_STREAM_START: &[u8] = b"\xac\xed\x00\x05\x73\x72";

/// The command that ends a channel.
pub(super) const CLOSE_CLASS: &str = "hudson.remoting.Channel$CloseCommand";

/// Commands that expect a `Response`.
pub(super) const REQUEST_CLASSES: [&str; 2] = [
    "hudson.remoting.UserRequest",
    "hudson.remoting.RemoteInvocationHandler$RPCRequest",
];

/// What `echo` answers a request with.
pub(super) const RESPONSE_CLASS: &str = "hudson.remoting.Response";

/// The class of the command [`HOLD`] leaves half-sent.
pub(super) const HELD_CLASS: &str = "hudson.remoting.ProxyOutputStream$Chunk";

/// Length of the payload of [`HOLD`]'s first chunk.
pub(super) const HELD_FIRST_LEN: usize = 100;

/// A Java-serialization-shaped payload: the object-stream start, the class
/// name, then `len` bytes in all (at least the header and name).
pub(super) fn serialized_start(class: &str, len: usize) -> Vec<u8> {
    let mut payload = OBJECT_STREAM_START.to_vec();
    payload.extend_from_slice(&(class.len() as u16).to_be_bytes());
    payload.extend_from_slice(class.as_bytes());
    // serialVersionUID, then SC_SERIALIZABLE and no fields, then filler.
    payload.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0x02, 0, 0, 0x78, 0x70]);
    let mut filler = 0u8;
    while payload.len() < len {
        payload.push(filler);
        filler = filler.wrapping_add(1);
    }
    payload
}

/// One chunk around `payload` (at most [`SEND_CHUNK_PAYLOAD`] bytes).
pub(super) fn chunk(payload: &[u8], last: bool) -> Vec<u8> {
    let header = ChunkHeader {
        len: payload.len(),
        last,
    };
    [&header.to_bytes()[..], payload].concat()
}

/// The one-chunk `Response` command a request is answered with.
pub(super) fn response_chunk() -> Vec<u8> {
    chunk(&serialized_start(RESPONSE_CLASS, 0), true)
}

/// The two chunks of the command [`HOLD`] and [`RELEASE`] write.
pub(super) fn held_chunks() -> (Vec<u8>, Vec<u8>) {
    let first = serialized_start(HELD_CLASS, HELD_FIRST_LEN);
    let rest: Vec<u8> = (0..32u8).collect();
    (chunk(&first, false), chunk(&rest, true))
}

/// The recorded engine's answer to the peer's close: its own
/// `Channel$CloseCommand`, then the zero-length chunk `00 00`
/// (`agent-initiated-close.jsonl` seq 21 and 22, compiled in).
pub(super) fn close_answer() -> Vec<u8> {
    crate::fixtures::engine_close_answer()
}

/// Starts the "build" commands found in whole chunks.
pub(super) fn spawn_builds(mut frames: &[u8]) {
    while let Some(header) = ChunkHeader::peek(frames) {
        let Some(payload) = frames.get(2..2 + header.len) else {
            return;
        };
        if let Some(command) = payload.strip_prefix(SPAWN_PREFIX) {
            let command = String::from_utf8_lossy(command).into_owned();
            // Not waited for: it runs on its own, as a build would.
            let _ = std::process::Command::new("sh")
                .args(["-c", &command])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
        frames = &frames[2 + header.len..];
    }
}

/// What `echo` does with a whole command, by its class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Copy it back.
    Ordinary,
    /// Answer with our own close and end.
    Close,
    /// Answer with a `Response`.
    Request,
}

impl Class {
    pub(super) fn of(name: &str) -> Self {
        if name == CLOSE_CLASS {
            Self::Close
        } else if REQUEST_CLASSES.contains(&name) {
            Self::Request
        } else {
            Self::Ordinary
        }
    }

    /// From a command's first payload bytes (`complete`: all of them);
    /// `None` while more bytes could still name a class.
    pub(super) fn classify(head: &[u8], complete: bool) -> Option<Self> {
        if let Some(name) = remoting_protocol::command::class_name(head) {
            return Some(Self::of(name));
        }
        let n = head.len().min(OBJECT_STREAM_START.len());
        let name_may_follow = head[..n] == OBJECT_STREAM_START[..n]
            && match head.get(6..8) {
                Some(len) => head.len() < 8 + usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => true,
            };
        if complete || !name_may_follow {
            Some(Self::Ordinary)
        } else {
            None
        }
    }
}

/// Where stdin's chunk stream is, command-wise.
#[derive(Debug)]
pub(super) enum InCommand {
    /// Between commands.
    Boundary,
    /// Inside a command of this class: its chunks so far were echoed
    /// (ordinary) or swallowed.
    Known(Class),
    /// Inside a command whose first bytes do not name its class yet (a first
    /// chunk shorter than the name): its chunks so far, kept back.
    Undecided { chunks: Vec<u8>, head: Vec<u8> },
}

/// What to do about one whole chunk from stdin.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Copy it back, together with its neighbours.
    Echo,
    /// Nothing (yet).
    Skip,
    /// Copy these bytes back: a command whose class was undecided, up to and
    /// including this chunk, turned out ordinary.
    Emit(Vec<u8>),
    /// A request is complete: answer it.
    Answer,
    /// A close is complete.
    Close,
    /// [`HOLD`].
    Hold,
    /// [`RELEASE`].
    Release,
}

impl InCommand {
    /// Takes the next whole chunk (header included).
    pub(super) fn step(&mut self, frame: &[u8]) -> Step {
        let header = ChunkHeader::parse([frame[0], frame[1]]);
        let payload = &frame[2..];
        match std::mem::replace(self, Self::Boundary) {
            Self::Boundary if header.last && payload == HOLD => Step::Hold,
            Self::Boundary if header.last && payload == RELEASE => Step::Release,
            Self::Boundary => match Class::classify(payload, header.last) {
                Some(class) => self.continue_with(class, header.last),
                None => {
                    *self = Self::Undecided {
                        chunks: frame.to_vec(),
                        head: payload.to_vec(),
                    };
                    Step::Skip
                }
            },
            Self::Known(class) => self.continue_with(class, header.last),
            Self::Undecided {
                mut chunks,
                mut head,
            } => {
                chunks.extend_from_slice(frame);
                head.extend_from_slice(payload);
                match Class::classify(&head, header.last) {
                    Some(Class::Ordinary) => {
                        if !header.last {
                            *self = Self::Known(Class::Ordinary);
                        }
                        Step::Emit(chunks)
                    }
                    Some(class) => self.continue_with(class, header.last),
                    None => {
                        *self = Self::Undecided { chunks, head };
                        Step::Skip
                    }
                }
            }
        }
    }

    /// A chunk of a command of a known class.
    pub(super) fn continue_with(&mut self, class: Class, last: bool) -> Step {
        if !last {
            *self = Self::Known(class);
        }
        match (class, last) {
            (Class::Ordinary, _) => Step::Echo,
            (_, false) => Step::Skip,
            (Class::Close, true) => Step::Close,
            (Class::Request, true) => Step::Answer,
        }
    }
}

/// stdout for `echo`: while a command is held, everything else waits.
pub(super) struct Outgoing<'a, W: Write> {
    pub(super) output: &'a mut W,
    /// `Some` while [`HOLD`] is in force: what was written since.
    pub(super) held: Option<Vec<u8>>,
}

impl<W: Write> Outgoing<'_, W> {
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.held {
            Some(queue) => {
                queue.extend_from_slice(bytes);
                Ok(())
            }
            None => self
                .output
                .write_all(bytes)
                .map_err(|e| format!("writing stdout: {e}")),
        }
    }

    /// Echoes whole chunks, starting the builds among them.
    pub(super) fn echo(&mut self, frames: &[u8]) -> Result<(), String> {
        if frames.is_empty() {
            return Ok(());
        }
        spawn_builds(frames);
        self.write(frames)
    }

    /// Writes the first chunk of the held command; false if one is held already.
    pub(super) fn hold(&mut self) -> Result<bool, String> {
        if self.held.is_some() {
            return Ok(false);
        }
        self.write(&held_chunks().0)?;
        self.held = Some(Vec::new());
        Ok(true)
    }

    /// Writes the last chunk of the held command and what waited behind it;
    /// false if nothing is held.
    pub(super) fn release(&mut self) -> Result<bool, String> {
        let Some(queue) = self.held.take() else {
            return Ok(false);
        };
        self.write(&held_chunks().1)?;
        self.write(&queue)?;
        Ok(true)
    }

    pub(super) fn flush(&mut self) -> Result<(), String> {
        self.output
            .flush()
            .map_err(|e| format!("writing stdout: {e}"))
    }
}
