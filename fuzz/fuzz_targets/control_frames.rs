//! The control socket's protocol (`control`): line framing
//! (`frame::read_line_bounded`), requests (`parse_request`), replies and
//! events (`parse_reply`).
//!
//! Input: byte 0 sets the reader's buffer size, byte 1 the line bound, the
//! rest is what a client (or the agent) sent. Checks: no panic; no line
//! longer than the bound is ever returned, and a longer one is refused
//! whatever the buffer size; a request that parses is valid, and the line a
//! client would send for it parses back to the same request; a reply that
//! parses prints as a line that parses back to the same reply.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use control::frame::{read_line_bounded, FrameError};
use control::{parse_reply, parse_request, reply_line, request_line};
use libfuzzer_sys::fuzz_target;
use tokio::io::BufReader;

/// Runs a future over an in-memory reader, which is never pending.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory read was pending"),
    }
}

/// The lines read, or `None` for a line refused as not UTF-8.
fn lines(input: &[u8], capacity: usize, max: usize) -> (Vec<Option<String>>, bool) {
    let mut reader = BufReader::with_capacity(capacity, input);
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        match now(read_line_bounded(&mut reader, &mut line, max)) {
            Ok(Some(())) => {
                assert!(
                    line.len() <= max,
                    "a {}-byte line passed a {max}-byte bound",
                    line.len()
                );
                out.push(Some(line.clone()));
            }
            Ok(None) => return (out, false),
            Err(FrameError::NotUtf8) => out.push(None),
            Err(FrameError::TooLong { max: m }) => {
                assert_eq!(m, max);
                return (out, true);
            }
            Err(err) => panic!("reading from memory failed: {err}"),
        }
    }
}

fn check_line(line: &str) {
    if let Ok(request) = parse_request(line) {
        assert_eq!(request.validate(), Ok(()));
        let sent = request_line(&request);
        match parse_request(&sent) {
            Ok(back) => assert_eq!(back, request, "request changed through {sent}"),
            Err(err) => panic!("the line for a parsed request, {sent}, is refused: {err}"),
        }
    }
    if let Ok(reply) = parse_reply(line) {
        let sent = reply_line(&reply);
        match parse_reply(&sent) {
            Ok(back) => assert_eq!(back, reply, "reply changed through {sent}"),
            Err(err) => panic!("the line for a parsed reply, {sent}, is refused: {err}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [capacity, max, input @ ..] = data else {
        return;
    };
    let capacity = usize::from(*capacity) + 1;
    let max = usize::from(*max) * 16;

    let (read, too_long) = lines(input, capacity, max);
    // The buffer size never changes what is read.
    let (again, again_too_long) = lines(input, input.len().max(1), max);
    assert_eq!((&read, too_long), (&again, again_too_long));

    for line in read.iter().flatten() {
        check_line(line);
    }
    // Requests longer than any bound above go through the parsers too.
    if let Ok(text) = std::str::from_utf8(input) {
        check_line(text);
    }
});
