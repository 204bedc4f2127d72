//! The answer to `tcpSlaveAgentListener/`
//! (`remoting_protocol::discovery::endpoint_from_response`).
//!
//! Input: the first line is the controller URL (as a user would type it),
//! the first byte of the rest picks the status, then `Name: value` lines are
//! the headers. Checks: no panic; an accepted endpoint has a host, a port
//! and offers JNLP4-connect; a refusal caused by the controller's headers
//! stays short (the controller cannot flood the agent's log).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use remoting_protocol::discovery::{endpoint_from_response, DiscoveryError};

/// A generous bound on a refusal's text: the longest fixed message plus a
/// few quoted values of at most 64 characters.
const MAX_MESSAGE: usize = 512;

const STATUSES: [u16; 6] = [200, 200, 200, 404, 500, 302];

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let url = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = lines
        .next()
        .and_then(|line| line.first())
        .map_or(200, |&b| STATUSES[usize::from(b) % STATUSES.len()]);
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
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
    match endpoint_from_response(&url, status, &headers) {
        Ok(endpoint) => {
            assert!(!endpoint.host.is_empty());
            assert_ne!(endpoint.port, 0);
            assert!(endpoint.offers_jnlp4());
        }
        // The URL is the user's own, echoed whole on purpose.
        Err(DiscoveryError::InvalidUrl { .. }) => {}
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.chars().count() <= MAX_MESSAGE,
                "a {}-character refusal: {message}",
                message.chars().count()
            );
        }
    }
});
