//! A stand-in for `java -jar remoting.jar` on stdio (PROTOCOL.md section 4),
//! run as the `fake-engine` binary.
//!
//! It writes the engine's preamble exactly as the recording
//! (`protocol-fixtures/jnlp4/engine-stdio-preamble.bin`), reads its peer's
//! preamble from stdin, then runs one mode over the chunk stream:
//!
//! | mode | does |
//! |---|---|
//! | `echo` (default) | copies every chunk from stdin back to stdout unchanged; a chunk whose payload is `fake-engine:spawn CMD` also starts `sh -c CMD` in the background (a "build") |
//! | `replay FILE.jsonl` | plays the agent side of a recorded transcript's `chunk` records: writes agent>controller ones, reads and compares controller>agent ones (exit 1 on the first difference) |
//! | `sink` | reads and discards chunks; prints `sink: N payload bytes in M chunks` on stderr at EOF |
//! | `source N` | writes N payload bytes as one-chunk commands of 8192 bytes (the last one shorter), while reading stdin to EOF |
//!
//! The mode is the first argument, or else `FAKE_ENGINE_MODE` (e.g.
//! `FAKE_ENGINE_MODE="source 1000000"`). Options: `--spawn-child` starts
//! `sleep 300` first (with its stdio on /dev/null, so it cannot hold our pipes
//! open), for tests that check the whole process group is killed;
//! `--pid-file PATH` writes our pid and then the child's, one a line, before
//! the preamble. Diagnostics go to stderr only; stdout carries nothing but
//! the preamble and chunks. Exit status: 0 at stdin EOF (also
//! when stdin closes before sending anything), 1 on a failure
//! (mismatch, truncated chunk, I/O error), 2 on bad usage.
//!
//! A `replay` FILE that does not exist as given is looked up in the fixture
//! directory, so `replay session-accepted.jsonl` works from anywhere.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use bytes::BytesMut;
use remoting_protocol::chunk::{ChunkHeader, SEND_CHUNK_PAYLOAD};
use remoting_protocol::preamble::{self, PreambleReader};
use remoting_protocol::Capability;

/// Environment variable naming the mode when no argument does.
pub const MODE_ENV: &str = "FAKE_ENGINE_MODE";

/// Environment variable that overrides [`binary_path`].
pub const BIN_ENV: &str = "FAKE_ENGINE_BIN";

const USAGE: &str = "usage: fake-engine [--spawn-child] [--pid-file PATH] [echo | replay FILE.jsonl | sink | source N]";

/// Read buffer size: large reads, and always room for a whole chunk (at most 2 + 32767 bytes).
const READ_BUFFER: usize = 256 * 1024;

/// What to do with the chunk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Copy every chunk back.
    Echo,
    /// Play the agent side of a transcript.
    Replay(PathBuf),
    /// Discard and count.
    Sink,
    /// Write this many payload bytes.
    Source(u64),
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The mode.
    pub mode: Mode,
    /// Start `sleep 300` as a child first.
    pub spawn_child: bool,
    /// Where to write our pid (and the child's).
    pub pid_file: Option<PathBuf>,
}

impl Options {
    /// Reads the arguments (without the program name); `env_mode` is the
    /// value of [`MODE_ENV`], used when no argument names a mode.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env_mode: Option<String>,
    ) -> Result<Self, String> {
        let mut spawn_child = false;
        let mut pid_file = None;
        let mut words = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--spawn-child" => spawn_child = true,
                "--pid-file" => {
                    pid_file = Some(PathBuf::from(args.next().ok_or("--pid-file needs a path")?))
                }
                _ => words.push(arg),
            }
        }
        if words.is_empty() {
            words = env_mode
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        }
        let mut words = words.into_iter();
        let mode = match words.next().as_deref() {
            None | Some("echo") => Mode::Echo,
            Some("sink") => Mode::Sink,
            Some("replay") => Mode::Replay(PathBuf::from(
                words.next().ok_or("replay needs a FILE.jsonl")?,
            )),
            Some("source") => {
                let n = words.next().ok_or("source needs a byte count")?;
                Mode::Source(
                    n.parse()
                        .map_err(|_| format!("source: {n:?} is not a byte count"))?,
                )
            }
            Some(other) => return Err(format!("unknown mode {other:?}")),
        };
        if let Some(extra) = words.next() {
            return Err(format!("unexpected argument {extra:?}"));
        }
        Ok(Self {
            mode,
            spawn_child,
            pid_file,
        })
    }
}

/// The binary's `main`: parses `std::env`, runs on the process's stdio.
pub fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1), std::env::var(MODE_ENV).ok()) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("fake-engine: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (input, output) = stdio();
    match run(&options, input, output, &mut io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fake-engine: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The process's stdin and stdout as plain descriptors: std's `Stdout` is
/// line-buffered (an extra write per newline in binary data) and `Stdin`
/// adds a copy.
#[cfg(unix)]
fn stdio() -> (Box<dyn Read + Send>, Box<dyn Write>) {
    use std::os::fd::AsFd as _;
    let input = io::stdin().as_fd().try_clone_to_owned().map(File::from);
    let output = io::stdout().as_fd().try_clone_to_owned().map(File::from);
    match (input, output) {
        (Ok(input), Ok(output)) => (Box::new(input), Box::new(output)),
        _ => (Box::new(io::stdin()), Box::new(io::stdout())),
    }
}

#[cfg(not(unix))]
fn stdio() -> (Box<dyn Read + Send>, Box<dyn Write>) {
    (Box::new(io::stdin()), Box::new(io::stdout()))
}

/// Runs the engine over `input`/`output`, diagnostics to `diag`.
pub fn run(
    options: &Options,
    input: impl Read + Send + 'static,
    output: impl Write,
    diag: &mut dyn Write,
) -> Result<(), String> {
    let child = if options.spawn_child {
        // Not waited for and not killed: it must outlive us unless our
        // process group is killed, which is what tests check.
        let child = std::process::Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning `sleep 300`: {e}"))?;
        let _ = writeln!(diag, "fake-engine: child pid {}", child.id());
        Some(child.id())
    } else {
        None
    };
    if let Some(path) = &options.pid_file {
        write_pid_file(path, child).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }

    let mut output = BufWriter::with_capacity(READ_BUFFER, output);
    let mut input = Input::new(input);
    let io_err = |what: &str, e: io::Error| format!("{what}: {e}");
    output
        .write_all(&preamble::encode(Capability::CURRENT))
        .and_then(|()| output.flush())
        .map_err(|e| io_err("writing the preamble", e))?;
    if !input.read_preamble()? {
        let _ = writeln!(diag, "fake-engine: stdin closed before any input");
        return Ok(());
    }

    match &options.mode {
        Mode::Echo => echo(&mut input, &mut output),
        Mode::Replay(path) => replay(&mut input, &mut output, &resolve(path), diag),
        Mode::Sink => sink(&mut input, diag),
        Mode::Source(n) => source(input, &mut output, *n, diag),
    }
}

/// Where the `fake-engine` binary is: `$FAKE_ENGINE_BIN`, or next to the
/// running test's `deps/` directory (where `cargo build -p testkit` or any
/// `cargo test` of this crate puts it). `None` if not built.
pub fn binary_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    let path = dir.join(format!("fake-engine{}", std::env::consts::EXE_SUFFIX));
    path.exists().then_some(path)
}

fn write_pid_file(path: &Path, child: Option<u32>) -> io::Result<()> {
    let mut text = format!("{}\n", std::process::id());
    if let Some(child) = child {
        text.push_str(&format!("{child}\n"));
    }
    // Write then rename, so a test polling for the file never reads half of it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn resolve(path: &Path) -> PathBuf {
    if path.exists() {
        return path.to_owned();
    }
    let in_fixtures = crate::fixtures::dir().join(path);
    if in_fixtures.exists() {
        in_fixtures
    } else {
        path.to_owned()
    }
}

/// stdin with one fixed buffer (allocated and zeroed once).
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> Input<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more; 0 at EOF.
    fn fill(&mut self) -> Result<usize, String> {
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
    fn read_preamble(&mut self) -> Result<bool, String> {
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
    fn whole_chunks(&self) -> (usize, u64, u64) {
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
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
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
    fn eof(&self) -> Result<(), String> {
        match self.data().len() {
            0 => Ok(()),
            n => Err(format!("stdin ended inside a chunk ({n} bytes left over)")),
        }
    }
}

/// A chunk whose payload starts with this makes `echo` run the rest as a
/// shell command in the background, like a build step the engine started.
pub const SPAWN_PREFIX: &[u8] = b"fake-engine:spawn ";

/// Starts the "build" commands found in whole chunks.
fn spawn_builds(mut frames: &[u8]) {
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

fn echo(input: &mut Input<impl Read>, output: &mut impl Write) -> Result<(), String> {
    loop {
        let (whole, _, _) = input.whole_chunks();
        if whole > 0 {
            spawn_builds(&input.data()[..whole]);
            // One write per read, however many chunks it brought.
            output
                .write_all(&input.data()[..whole])
                .and_then(|()| output.flush())
                .map_err(|e| format!("writing stdout: {e}"))?;
            input.consume(whole);
        }
        if input.fill()? == 0 {
            return input.eof();
        }
    }
}

fn sink(input: &mut Input<impl Read>, diag: &mut dyn Write) -> Result<(), String> {
    let (mut chunks, mut payload) = (0u64, 0u64);
    loop {
        let (whole, n, bytes) = input.whole_chunks();
        input.consume(whole);
        chunks += n;
        payload += bytes;
        if input.fill()? == 0 {
            let _ = writeln!(diag, "sink: {payload} payload bytes in {chunks} chunks");
            return input.eof();
        }
    }
}

fn source(
    input: Input<impl Read + Send + 'static>,
    output: &mut impl Write,
    total: u64,
    diag: &mut dyn Write,
) -> Result<(), String> {
    // Read stdin at the same time, so a peer that writes while we do (acks,
    // an echo) cannot stall us on a full pipe.
    let reader = std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || {
            let mut input = input;
            let mut received = (input.end - input.start) as u64;
            input.consume(input.end - input.start);
            loop {
                match input.fill() {
                    Ok(0) => return Ok(received),
                    Ok(n) => {
                        received += n as u64;
                        input.consume(n);
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(|e| format!("starting the stdin reader: {e}"))?;
    let pattern: Vec<u8> = (0..SEND_CHUNK_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let mut left = total;
    while left > 0 {
        let len = usize::try_from(left).map_or(SEND_CHUNK_PAYLOAD, |l| l.min(SEND_CHUNK_PAYLOAD));
        output
            .write_all(&ChunkHeader { len, last: true }.to_bytes())
            .and_then(|()| output.write_all(&pattern[..len]))
            .map_err(|e| format!("writing stdout: {e}"))?;
        left -= len as u64;
    }
    output.flush().map_err(|e| format!("writing stdout: {e}"))?;
    let received = reader
        .join()
        .map_err(|_| "the stdin reader panicked".to_owned())??;
    let _ = writeln!(
        diag,
        "source: wrote {total} payload bytes, read {received} bytes"
    );
    Ok(())
}

/// A transcript's `chunk` records, in order: (seq, from the agent, bytes).
fn load_chunks(path: &Path) -> Result<Vec<(u64, bool, Vec<u8>)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chunks = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| format!("{} line {}: {what}", path.display(), i + 1);
        let record: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        if record["layer"] != "chunk" {
            continue;
        }
        let seq = record["seq"].as_u64().ok_or_else(|| bad("no seq"))?;
        let from_agent = match record["dir"].as_str() {
            Some("agent>controller") => true,
            Some("controller>agent") => false,
            _ => return Err(bad("bad dir")),
        };
        let hex = record["hex"].as_str().ok_or_else(|| bad("no hex"))?;
        chunks.push((
            seq,
            from_agent,
            hex::decode(hex).map_err(|e| bad(&e.to_string()))?,
        ));
    }
    chunks.sort_by_key(|(seq, _, _)| *seq);
    Ok(chunks)
}

fn replay(
    input: &mut Input<impl Read>,
    output: &mut impl Write,
    path: &Path,
    diag: &mut dyn Write,
) -> Result<(), String> {
    let write_err = |e: io::Error| format!("writing stdout: {e}");
    for (seq, from_agent, bytes) in load_chunks(path)? {
        if from_agent {
            output.write_all(&bytes).map_err(write_err)?;
            continue;
        }
        // About to wait for the peer: it must have everything we owe it.
        output.flush().map_err(write_err)?;
        match input.next_chunk()? {
            Some(got) if got == bytes => {}
            Some(got) => {
                return Err(format!(
                    "record seq {seq}: expected chunk {}, got {}",
                    describe(&bytes),
                    describe(&got)
                ))
            }
            None => {
                return Err(format!(
                    "record seq {seq}: stdin ended; expected chunk {}",
                    describe(&bytes)
                ))
            }
        }
    }
    output.flush().map_err(write_err)?;
    let mut extra = 0;
    while input.next_chunk()?.is_some() {
        extra += 1;
    }
    if extra > 0 {
        let _ = writeln!(diag, "replay: {extra} chunks after the transcript's end");
    }
    Ok(())
}

/// A chunk for an error message: length and the first bytes in hex.
fn describe(chunk: &[u8]) -> String {
    let head = &chunk[..chunk.len().min(24)];
    let more = if chunk.len() > head.len() { "…" } else { "" };
    format!("of {} bytes {}{more}", chunk.len(), hex::encode(head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Direction, Layer};
    use io::Cursor;
    use remoting_protocol::chunk::put_command;

    fn options(mode: Mode) -> Options {
        Options {
            mode,
            spawn_child: false,
            pid_file: None,
        }
    }

    /// Runs in-process; returns (result, stdout, stderr).
    fn run_with(mode: Mode, stdin: Vec<u8>) -> (Result<(), String>, Vec<u8>, String) {
        let mut out = Vec::new();
        let mut diag = Vec::new();
        let result = run(&options(mode), Cursor::new(stdin), &mut out, &mut diag);
        (result, out, String::from_utf8(diag).unwrap())
    }

    fn with_preamble(chunks: &[u8]) -> Vec<u8> {
        let mut input = b"noise before the preamble\n".to_vec();
        input.extend_from_slice(&preamble::encode(Capability::CURRENT));
        input.extend_from_slice(chunks);
        input
    }

    #[test]
    fn writes_the_recorded_preamble_first() {
        let (result, out, _) = run_with(Mode::Echo, with_preamble(b""));
        result.unwrap();
        assert_eq!(out, fixtures::engine_preamble());
    }

    #[test]
    fn echo_copies_chunks() {
        let mut chunks = BytesMut::new();
        put_command(&mut chunks, &[9; 100_000]);
        put_command(&mut chunks, b"");
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&chunks));
        result.unwrap();
        let preamble = fixtures::engine_preamble();
        assert_eq!(&out[..preamble.len()], &preamble[..]);
        assert_eq!(&out[preamble.len()..], &chunks[..]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let (result, _, _) = run_with(Mode::Echo, with_preamble(b"\x00\x05abc"));
        assert!(result.unwrap_err().contains("inside a chunk"));
        let (result, _, _) = run_with(Mode::Sink, b"<===[JENKINS".to_vec());
        assert!(result.unwrap_err().contains("preamble"));
        let (result, _, diag) = run_with(Mode::Sink, Vec::new());
        assert!(result.is_ok(), "EOF before anything is a clean end");
        assert!(diag.contains("before any input"), "{diag}");
    }

    #[test]
    fn sink_counts() {
        let mut chunks = BytesMut::new();
        put_command(&mut chunks, &[1; 20_000]);
        let (result, out, diag) = run_with(Mode::Sink, with_preamble(&chunks));
        result.unwrap();
        assert_eq!(out, fixtures::engine_preamble());
        assert!(
            diag.contains("sink: 20000 payload bytes in 3 chunks"),
            "{diag}"
        );
    }

    #[test]
    fn source_writes_one_chunk_commands() {
        let (result, out, diag) = run_with(Mode::Source(20_000), with_preamble(b"\x00\x01z"));
        result.unwrap();
        let mut rest = BytesMut::from(&out[fixtures::engine_preamble().len()..]);
        let mut sizes = Vec::new();
        while let Some(h) = ChunkHeader::peek(&rest) {
            assert!(h.last);
            sizes.push(h.len);
            let _ = rest.split_to(2 + h.len);
        }
        assert!(rest.is_empty());
        assert_eq!(sizes, [8192, 8192, 3616]);
        assert!(diag.contains("read 3 bytes"), "{diag}");
    }

    fn transcript_sides(name: &str) -> (Vec<u8>, Vec<u8>) {
        let (mut from_agent, mut to_agent) = (Vec::new(), Vec::new());
        for record in fixtures::load(name)
            .into_iter()
            .filter(|r| r.layer == Layer::Chunk)
        {
            match record.dir {
                Direction::AgentToController => from_agent.extend_from_slice(&record.bytes),
                Direction::ControllerToAgent => to_agent.extend_from_slice(&record.bytes),
            }
        }
        (from_agent, to_agent)
    }

    #[test]
    fn replay_plays_the_agent_side() {
        let (from_agent, to_agent) = transcript_sides("session-accepted.jsonl");
        let mode = Mode::Replay(PathBuf::from("session-accepted.jsonl"));
        let (result, out, _) = run_with(mode, with_preamble(&to_agent));
        result.unwrap();
        assert_eq!(&out[fixtures::engine_preamble().len()..], &from_agent[..]);
    }

    #[test]
    fn replay_names_the_first_difference() {
        let (_, mut to_agent) = transcript_sides("session-accepted.jsonl");
        let last = to_agent.len() - 1;
        to_agent[last] ^= 1;
        let mode = Mode::Replay(PathBuf::from("session-accepted.jsonl"));
        let err = run_with(mode.clone(), with_preamble(&to_agent))
            .0
            .unwrap_err();
        assert!(err.starts_with("record seq "), "{err}");
        let err = run_with(mode, with_preamble(b"")).0.unwrap_err();
        assert!(err.contains("stdin ended"), "{err}");
    }

    #[test]
    fn parses_arguments_and_environment() {
        let parse = |args: &[&str], env: Option<&str>| {
            Options::parse(args.iter().map(|s| s.to_string()), env.map(str::to_owned))
        };
        assert_eq!(parse(&[], None).unwrap(), options(Mode::Echo));
        assert_eq!(
            parse(&[], Some("source 10")).unwrap().mode,
            Mode::Source(10)
        );
        assert_eq!(
            parse(&["sink"], Some("source 10")).unwrap().mode,
            Mode::Sink
        );
        let full = parse(
            &["--spawn-child", "replay", "f.jsonl", "--pid-file", "p"],
            None,
        )
        .unwrap();
        assert_eq!(
            full,
            Options {
                mode: Mode::Replay("f.jsonl".into()),
                spawn_child: true,
                pid_file: Some("p".into()),
            }
        );
        assert!(parse(&["source", "x"], None).is_err());
        assert!(parse(&["replay"], None).is_err());
        assert!(parse(&["dance"], None).is_err());
        assert!(parse(&["echo", "extra"], None).is_err());
        assert!(parse(&["--pid-file"], None).is_err());
    }
}
