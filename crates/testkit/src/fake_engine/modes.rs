//! The modes over the chunk stream: `echo`, `sink`, `source`, `replay`.

use std::io::{self, Read, Write};
use std::path::Path;

use remoting_protocol::chunk::{ChunkHeader, SEND_CHUNK_PAYLOAD};

use super::commands::*;
use super::input::Input;

pub(super) fn echo(
    input: &mut Input<impl Read>,
    output: &mut impl Write,
    diag: &mut dyn Write,
) -> Result<(), String> {
    let mut state = InCommand::Boundary;
    let mut out = Outgoing { output, held: None };
    loop {
        let data = input.data();
        // `run..at`: ordinary chunks not written yet, copied back in one
        // write per read unless a special chunk interrupts them.
        let (mut at, mut run) = (0, 0);
        while let Some(header) = ChunkHeader::peek(&data[at..]) {
            let end = at + 2 + header.len;
            if end > data.len() {
                break;
            }
            let step = state.step(&data[at..end]);
            if step != Step::Echo {
                out.echo(&data[run..at])?;
                run = end;
            }
            match step {
                Step::Echo | Step::Skip => {}
                Step::Emit(frames) => out.echo(&frames)?,
                Step::Answer => out.write(&response_chunk())?,
                Step::Hold => {
                    if !out.hold()? {
                        let _ = writeln!(diag, "fake-engine: a command is held already");
                    }
                }
                Step::Release => {
                    if !out.release()? {
                        let _ = writeln!(diag, "fake-engine: no held command to release");
                    }
                }
                Step::Close => {
                    // Like the engine's channel: the command being written
                    // is finished before the close goes out.
                    out.release()?;
                    out.write(&close_answer())?;
                    out.flush()?;
                    let _ = writeln!(diag, "fake-engine: channel closed by the peer");
                    return Ok(());
                }
            }
            at = end;
        }
        out.echo(&data[run..at])?;
        out.flush()?;
        input.consume(at);
        if input.fill()? == 0 {
            if let InCommand::Undecided { chunks, .. } = &state {
                // Never classified: echoed, as any chunk is.
                out.echo(chunks)?;
                out.flush()?;
            }
            if let Some(queue) = &out.held {
                let _ = writeln!(
                    diag,
                    "fake-engine: stdin ended with a command held; {} bytes not written",
                    queue.len()
                );
            }
            return input.eof();
        }
    }
}

pub(super) fn sink(input: &mut Input<impl Read>, diag: &mut dyn Write) -> Result<(), String> {
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

pub(super) fn source(
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
pub(super) fn load_chunks(path: &Path) -> Result<Vec<(u64, bool, Vec<u8>)>, String> {
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

pub(super) fn replay(
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
pub(super) fn describe(chunk: &[u8]) -> String {
    let head = &chunk[..chunk.len().min(24)];
    let more = if chunk.len() > head.len() { "…" } else { "" };
    format!("of {} bytes {}{more}", chunk.len(), hex::encode(head))
}
