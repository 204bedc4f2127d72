//! The controller's answer to the WebSocket upgrade
//! (`remoting_protocol::websocket::check_response`).
//!
//! Input: byte 0 picks the status, then `Name: value` lines up to an empty
//! line are the headers, the rest is the body. Checks: no panic; a 101 is
//! the only acceptance; what is kept from the headers and the body is
//! bounded, and a refusal's text stays short whatever the body.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use remoting_protocol::websocket::check_response;

const STATUSES: [u16; 8] = [101, 101, 400, 403, 404, 500, 502, 200];

/// The node name's length plus the longest fixed text and a 200-character
/// excerpt, with room to spare.
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    let Ok(status) = StatusCode::from_u16(STATUSES[usize::from(status) % STATUSES.len()]) else {
        return;
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], Some(&rest[at + 2..])),
        None => (rest, None),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    match check_response(status, &headers, body, "mac-01") {
        Ok(accepted) => {
            assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
            for text in [&accepted.cookie, &accepted.minimum_version]
                .into_iter()
                .flatten()
            {
                assert!(text.len() <= 256, "kept {} bytes of a header", text.len());
                // The cookie goes back in the next upgrade's headers.
                assert!(HeaderValue::from_str(text).is_ok(), "kept {text:?}");
            }
        }
        Err(refusal) => {
            let message = refusal.to_string();
            assert!(
                message.chars().count() <= MAX_MESSAGE,
                "a {}-character refusal: {message}",
                message.chars().count()
            );
            let _ = refusal.is_fatal();
        }
    }
});
