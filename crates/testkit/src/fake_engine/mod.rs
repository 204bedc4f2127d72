//! A stand-in for `java -jar remoting.jar` on stdio (PROTOCOL.md section 4),
//! run as the `fake-engine` binary.
//!
//! It writes the engine's preamble exactly as the recording
//! (`protocol-fixtures/jnlp4/engine-stdio-preamble.bin`), reads its peer's
//! preamble from stdin, then runs one mode over the chunk stream:
//!
//! | mode | does |
//! |---|---|
//! | `echo` (default) | copies every chunk from stdin back to stdout unchanged (one write per read), except for the whole commands below; a chunk whose payload is `fake-engine:spawn CMD` is echoed and also starts `sh -c CMD` in the background (a "build") |
//! | `echo`: a `hudson.remoting.Channel$CloseCommand` | (PROTOCOL.md section 5) not echoed: once its last chunk is in, writes the recorded engine's answer (agent>controller chunks seq 21 and 22 of `agent-initiated-close.jsonl`: its own close, then `00 00`), flushes, says `fake-engine: channel closed by the peer` on stderr and ends with exit 0, ignoring anything after it |
//! | `echo`: a `hudson.remoting.UserRequest` or `hudson.remoting.RemoteInvocationHandler$RPCRequest` | not echoed: once its last chunk is in, answered with one minimal `hudson.remoting.Response` command of one chunk |
//! | `echo`: [`HOLD`] (`fake-engine:hold`) | a one-chunk command, not echoed: writes and flushes the first chunk (more-follows bit set, 100 bytes, a `hudson.remoting.ProxyOutputStream$Chunk`) of a two-chunk command, so stdout stays inside a command; everything written after it (echoes, answers) waits |
//! | `echo`: [`RELEASE`] (`fake-engine:release`) | a one-chunk command, not echoed: writes the held command's last chunk, then what waited. A close while held also completes the held command first; at stdin EOF while held, what waited is dropped |
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
//! when stdin closes before sending anything) or after `echo` answered a
//! close, 1 on a failure
//! (mismatch, truncated chunk, I/O error), 2 on bad usage.
//!
//! `echo` tells commands apart by the class name at the start of a whole
//! command (the payloads of consecutive chunks up to the one without the
//! more-follows bit; `remoting_protocol::command::class_name`); a command's
//! chunks may arrive in any number of reads. Chunks of ordinary commands are
//! echoed as they arrive (a first chunk too short to name the class is kept
//! until it does); [`HOLD`] and [`RELEASE`] count only between commands.
//!
//! A `replay` FILE that does not exist as given is looked up in the fixture
//! directory, so `replay session-accepted.jsonl` works from anywhere.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use remoting_protocol::preamble;
use remoting_protocol::Capability;

mod commands;
mod input;
mod modes;

pub use commands::{HOLD, RELEASE, SPAWN_PREFIX};
use input::{Input, READ_BUFFER};
use modes::{echo, replay, sink, source};

/// Environment variable naming the mode when no argument does.
pub const MODE_ENV: &str = "FAKE_ENGINE_MODE";

/// Environment variable that overrides [`binary_path`].
pub const BIN_ENV: &str = "FAKE_ENGINE_BIN";

const USAGE: &str = "usage: fake-engine [--spawn-child] [--pid-file PATH] [echo | replay FILE.jsonl | sink | source N]";

/// What to do with the chunk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Copy every chunk back; answer closes and requests; hold and release.
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
        Mode::Echo => echo(&mut input, &mut output, diag),
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

#[cfg(test)]
mod tests {
    use super::commands::{
        chunk, close_answer, held_chunks, response_chunk, serialized_start, CLOSE_CLASS,
        HELD_CLASS, HELD_FIRST_LEN, RESPONSE_CLASS,
    };
    use super::*;
    use crate::fixtures::{self, Direction, Layer};
    use bytes::BytesMut;
    use io::Cursor;
    use remoting_protocol::chunk::{put_command, ChunkHeader};

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

    /// stdin that hands out its bytes a few at a time (`step` per read).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Like [`run_with`], with stdin arriving `step` bytes per read.
    fn run_trickled(
        mode: Mode,
        stdin: Vec<u8>,
        step: usize,
    ) -> (Result<(), String>, Vec<u8>, String) {
        let mut out = Vec::new();
        let mut diag = Vec::new();
        let input = Trickle {
            data: stdin,
            at: 0,
            step,
        };
        let result = run(&options(mode), input, &mut out, &mut diag);
        (result, out, String::from_utf8(diag).unwrap())
    }

    /// stdout after the preamble.
    fn after_preamble(out: &[u8]) -> &[u8] {
        let preamble = fixtures::engine_preamble();
        assert_eq!(&out[..preamble.len()], &preamble[..]);
        &out[preamble.len()..]
    }

    /// `payload` as one command in chunks of at most `size` bytes.
    fn chunked(payload: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pieces = payload.chunks(size).peekable();
        while let Some(piece) = pieces.next() {
            out.extend_from_slice(&chunk(piece, pieces.peek().is_none()));
        }
        out
    }

    fn command(payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_command(&mut out, payload);
        out.to_vec()
    }

    /// The commands of a stream: (class name, whether the stream ended
    /// inside it); panics on a partial chunk.
    fn commands(mut stream: &[u8]) -> Vec<(Option<String>, bool)> {
        let (mut found, mut payload, mut open) = (Vec::new(), Vec::new(), false);
        while let Some(header) = ChunkHeader::peek(stream) {
            payload.extend_from_slice(&stream[2..2 + header.len]);
            stream = &stream[2 + header.len..];
            open = !header.last;
            if header.last {
                let name = remoting_protocol::command::class_name(&payload).map(str::to_owned);
                found.push((name, false));
                payload.clear();
            }
        }
        assert!(stream.is_empty(), "a partial chunk");
        if open {
            let name = remoting_protocol::command::class_name(&payload).map(str::to_owned);
            found.push((name, true));
        }
        found
    }

    /// The payload of the first chunk of `name`'s recorded commands of `class`.
    fn recorded_command(name: &str, dir: Direction, class: &str) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut collecting = false;
        for record in fixtures::load(name)
            .into_iter()
            .filter(|r| r.layer == Layer::Chunk && r.dir == dir)
        {
            let header = ChunkHeader::peek(&record.bytes).unwrap();
            let body = &record.bytes[2..];
            if payload.is_empty() && !collecting {
                collecting = remoting_protocol::command::class_name(body) == Some(class);
            }
            if collecting {
                payload.extend_from_slice(body);
                if header.last {
                    return payload;
                }
            }
        }
        panic!("{name}: no {class} command");
    }

    const CLOSE_FIXTURE: &str = "agent-initiated-close.jsonl";
    const CLOSE_SEQS: [u64; 2] = [21, 22];

    fn recorded_close_answer() -> Vec<u8> {
        let records = fixtures::load(CLOSE_FIXTURE);
        let mut answer = Vec::new();
        for seq in CLOSE_SEQS {
            let record = records.iter().find(|r| r.seq as u64 == seq).unwrap();
            assert_eq!(record.dir, Direction::AgentToController);
            answer.extend_from_slice(&record.bytes);
        }
        answer
    }

    fn controller_close() -> Vec<u8> {
        recorded_command(
            CLOSE_FIXTURE,
            Direction::ControllerToAgent,
            "hudson.remoting.Channel$CloseCommand",
        )
    }

    fn user_request() -> Vec<u8> {
        recorded_command(
            CLOSE_FIXTURE,
            Direction::ControllerToAgent,
            "hudson.remoting.UserRequest",
        )
    }

    fn rpc_request() -> Vec<u8> {
        serialized_start("hudson.remoting.RemoteInvocationHandler$RPCRequest", 300)
    }

    /// An ordinary command of several chunks (a `ProxyOutputStream$Chunk`).
    fn ordinary_big() -> Vec<u8> {
        serialized_start(HELD_CLASS, 20_000)
    }

    #[test]
    fn the_close_answer_is_the_recorded_one() {
        let answer = close_answer();
        assert_eq!(answer, recorded_close_answer());
        assert_eq!(
            commands(&answer),
            [
                (Some(CLOSE_CLASS.to_owned()), false),
                (None, false), // `00 00`
            ]
        );
        assert!(answer.ends_with(b"\x00\x00"));
    }

    #[test]
    fn echo_answers_a_close_and_ends() {
        let before = command(b"before");
        let mut input = before.clone();
        input.extend_from_slice(&command(&controller_close()));
        input.extend_from_slice(&command(b"after the close: ignored"));
        let (result, out, diag) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        assert_eq!(
            after_preamble(&out),
            [before, recorded_close_answer()].concat()
        );
        assert!(
            diag.contains("fake-engine: channel closed by the peer"),
            "{diag}"
        );
    }

    #[test]
    fn echo_answers_a_close_split_over_chunks_and_reads_once_whole() {
        let close = chunked(&controller_close(), 100);
        for step in [1, 7, 150, 4096] {
            let (result, out, diag) = run_trickled(Mode::Echo, with_preamble(&close), step);
            result.unwrap();
            assert_eq!(after_preamble(&out), recorded_close_answer(), "step {step}");
            assert!(diag.contains("closed by the peer"), "{diag}");
        }
        // Stdin ends before the close's last chunk: no answer.
        let cut = &close[..close.len() - 50];
        let cut = &cut[..cut.len() - (cut.len() % 102)];
        let (result, out, diag) = run_with(Mode::Echo, with_preamble(cut));
        result.unwrap();
        assert!(after_preamble(&out).is_empty());
        assert!(!diag.contains("closed"), "{diag}");
    }

    #[test]
    fn echo_answers_requests_instead_of_echoing_them() {
        let (a, b) = (command(b"first"), command(&ordinary_big()));
        let mut input = a.clone();
        input.extend_from_slice(&command(&user_request()));
        input.extend_from_slice(&b);
        input.extend_from_slice(&command(&rpc_request()));
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        let response = response_chunk();
        assert_eq!(
            after_preamble(&out),
            [a, response.clone(), b, response.clone()].concat()
        );
        assert_eq!(
            commands(&response),
            [(Some(RESPONSE_CLASS.to_owned()), false)]
        );
    }

    #[test]
    fn echo_answers_a_request_spanning_chunks_once_after_its_last() {
        let request = chunked(&user_request(), 64);
        assert!(request.len() > 10 * 66, "several chunks");
        let (a, b) = (command(&ordinary_big()), command(b"after"));
        let input = [a.clone(), request.clone(), b.clone()].concat();
        for step in [1, 3, 65, 1000, READ_BUFFER] {
            let (result, out, _) = run_trickled(Mode::Echo, with_preamble(&input), step);
            result.unwrap();
            assert_eq!(
                after_preamble(&out),
                [&a[..], &response_chunk(), &b].concat(),
                "step {step}"
            );
        }
        // Cut after some of its chunks: not answered.
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&request[..66 * 5]));
        result.unwrap();
        assert!(after_preamble(&out).is_empty());
    }

    #[test]
    fn echo_copies_multi_chunk_commands_split_across_reads() {
        let mut input = command(&ordinary_big());
        input.extend_from_slice(&chunked(&ordinary_big(), 1000));
        input.extend_from_slice(&command(b""));
        input.extend_from_slice(&command(&[7; 9000]));
        // A first chunk too short to name its class, of an ordinary command.
        let big = ordinary_big();
        input.extend_from_slice(&chunk(&big[..3], false));
        input.extend_from_slice(&chunk(&big[3..9], false));
        input.extend_from_slice(&chunked(&big[9..], 5000));
        // A control payload inside a command is only data.
        input.extend_from_slice(&chunk(HOLD, false));
        input.extend_from_slice(&chunk(RELEASE, true));
        for step in [1, 2, 9, 1001, 8194, READ_BUFFER] {
            let (result, out, _) = run_trickled(Mode::Echo, with_preamble(&input), step);
            result.unwrap();
            assert_eq!(after_preamble(&out), &input[..], "step {step}");
        }
    }

    #[test]
    fn echo_answers_a_request_whose_first_chunk_is_too_short_to_name_it() {
        let request = user_request();
        let mut input = chunk(&request[..2], false);
        input.extend_from_slice(&chunk(&request[2..10], false));
        input.extend_from_slice(&chunk(&request[10..], true));
        let (result, out, _) = run_trickled(Mode::Echo, with_preamble(&input), 5);
        result.unwrap();
        assert_eq!(after_preamble(&out), response_chunk());
        // Stdin ends while the class is still unknown: echoed as it came.
        let cut = &input[..(2 + 2) + (2 + 8)];
        let (result, out, _) = run_with(Mode::Echo, with_preamble(cut));
        result.unwrap();
        assert_eq!(after_preamble(&out), cut);
    }

    #[test]
    fn hold_leaves_stdout_inside_a_command_until_release() {
        let (first, last) = held_chunks();
        let first_header = ChunkHeader::peek(&first).unwrap();
        assert!(!first_header.last);
        assert_eq!(first_header.len, HELD_FIRST_LEN);
        assert!(ChunkHeader::peek(&last).unwrap().last);

        let x = command(b"echoed while held");
        let y = command(b"after the release");
        let input = [
            command(HOLD),
            x.clone(),
            command(&user_request()),
            command(RELEASE),
            y.clone(),
        ]
        .concat();
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        let out = after_preamble(&out);
        assert_eq!(out, [&first[..], &last, &x, &response_chunk(), &y].concat());
        assert_eq!(
            commands(out)[0],
            (Some(HELD_CLASS.to_owned()), false),
            "one ProxyOutputStream$Chunk of two chunks"
        );

        // Without the release, stdout ends inside the held command.
        let input = [command(HOLD), x.clone()].concat();
        let (result, out, diag) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        let out = after_preamble(&out);
        assert_eq!(out, first);
        assert_eq!(commands(out), [(Some(HELD_CLASS.to_owned()), true)]);
        assert!(diag.contains("held"), "{diag}");

        // A second hold or a stray release changes nothing.
        let input = [
            command(RELEASE),
            command(HOLD),
            command(HOLD),
            command(RELEASE),
        ]
        .concat();
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        assert_eq!(after_preamble(&out), [first, last].concat());
    }

    #[test]
    fn a_close_while_held_finishes_the_held_command_first() {
        let (first, last) = held_chunks();
        let x = command(b"x");
        let input = [command(HOLD), x.clone(), command(&controller_close())].concat();
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        assert_eq!(
            after_preamble(&out),
            [first, last, x, recorded_close_answer()].concat()
        );
    }

    /// Output shared between a writer and a test's stdin.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// stdin that gives `first`, then, on the next read, records what
    /// stdout had received by then and ends.
    struct Watching {
        first: Option<Vec<u8>>,
        stdout: Shared,
        seen: Shared,
    }

    impl Read for Watching {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.first.take() {
                Some(first) => {
                    buf[..first.len()].copy_from_slice(&first);
                    Ok(first.len())
                }
                None => {
                    let now = self.stdout.0.lock().unwrap().clone();
                    *self.seen.0.lock().unwrap() = now;
                    Ok(0)
                }
            }
        }
    }

    #[test]
    fn the_held_chunk_and_answers_are_flushed_before_reading_on() {
        for (input, expected) in [
            (command(HOLD), held_chunks().0),
            (command(&user_request()), response_chunk()),
        ] {
            let (stdout, seen) = (Shared::default(), Shared::default());
            let stdin = Watching {
                first: Some(with_preamble(&input)),
                stdout: stdout.clone(),
                seen: seen.clone(),
            };
            let mut diag = Vec::new();
            run(&options(Mode::Echo), stdin, stdout, &mut diag).unwrap();
            let seen = seen.0.lock().unwrap().clone();
            assert_eq!(after_preamble(&seen), expected);
        }
    }

    #[test]
    fn echo_still_starts_builds() {
        let marker = std::env::temp_dir().join(format!(
            "fake-engine-spawn-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&marker);
        let spawn = command(format!("fake-engine:spawn touch '{}'", marker.display()).as_bytes());
        let input = [spawn.clone(), command(&user_request())].concat();
        let (result, out, _) = run_with(Mode::Echo, with_preamble(&input));
        result.unwrap();
        assert_eq!(after_preamble(&out), [spawn, response_chunk()].concat());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !marker.exists() {
            assert!(std::time::Instant::now() < deadline, "the build never ran");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&marker);
    }

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct CountingWriter {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn echo_writes_once_per_read() {
        let mut ordinary = Vec::new();
        for i in 0..200u32 {
            ordinary.extend_from_slice(&command(&i.to_be_bytes()));
        }
        ordinary.extend_from_slice(&command(&ordinary_big()));
        let with_request = [&ordinary[..], &command(&user_request()), &ordinary].concat();
        for (input, expected) in [
            (ordinary.clone(), ordinary.clone()),
            (
                with_request,
                [&ordinary[..], &response_chunk(), &ordinary].concat(),
            ),
        ] {
            let mut out = CountingWriter::default();
            let mut diag = Vec::new();
            // Cursor: all of stdin in one read.
            run(
                &options(Mode::Echo),
                Cursor::new(with_preamble(&input)),
                &mut out,
                &mut diag,
            )
            .unwrap();
            assert_eq!(after_preamble(&out.bytes), expected);
            assert_eq!(out.writes, 2, "the preamble, then one write for the read");
        }
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
