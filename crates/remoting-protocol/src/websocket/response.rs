//! The controller's answer to the upgrade (controller side:
//! `jenkins.agents.WebSocketAgents`).

use http::{HeaderMap, StatusCode};

use super::{CONNECTION_COOKIE, X_REMOTING_CAPABILITY, X_REMOTING_MINIMUM_VERSION};
use crate::capability::CapabilityError;
use crate::Capability;

/// The headers of a server's `101 Switching Protocols` answer to a version
/// 13 upgrade whose `Sec-WebSocket-Key` is `key` (RFC 6455 4.2.2): what the
/// lender's agent link and the test controller's `wsagents/` both send.
pub fn accept_upgrade(headers: &mut HeaderMap, key: &str) {
    use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
}

/// Longest body excerpt a [`Refusal`] keeps, in characters.
const EXCERPT_CHARS: usize = 200;
/// How much of a body is looked at (for the excerpt and the known reasons).
const BODY_SCAN: usize = 8 * 1024;
/// Longest `X-Remoting-Minimum-Version` / `Connection-Cookie` kept; real
/// ones are a version number and 64 hex digits.
const MAX_HEADER_TEXT: usize = 256;

/// What a 101 carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `X-Remoting-Capability`, the controller's capability.
    pub capability: Option<Capability>,
    /// `X-Remoting-Minimum-Version`: an agent older than this must stop.
    pub minimum_version: Option<String>,
    /// `Connection-Cookie`, to present on the next attempt.
    pub cookie: Option<String>,
}

/// Why the controller refused the upgrade (PROTOCOL.md section 3,
/// refusals). Each message says the cause and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400 "no such agent".
    #[error("the controller has no agent named {node:?} (400 \"no such agent\"): check -name, and that the node exists and is an inbound agent")]
    NoSuchAgent {
        /// The node name we sent.
        node: String,
    },
    /// 403: the secret does not match the node.
    #[error("the controller rejected the secret for node {node:?} (403): check -secret / JENKINS_SECRET / the secret file against the node's page")]
    BadSecret {
        /// The node name we sent.
        node: String,
    },
    /// 400 (500 before Jenkins 2.511): the controller still holds a channel
    /// for the node.
    #[error("node {node:?} is already connected to this controller: retrying; a stale connection gives way only to its cookie or once the controller notices it is gone")]
    AlreadyConnected {
        /// The node name we sent.
        node: String,
    },
    /// 404: nothing at the WebSocket endpoint.
    #[error("the controller answered 404 at its WebSocket endpoint: no WebSocket support at this URL (the servlet container or a reverse proxy does not pass upgrades, or -url is wrong)")]
    NotSupported,
    /// Any other 400: the controller missed a header it needs.
    #[error("the controller refused the upgrade as a bad request (400: {body}): a proxy may have dropped the Node-Name, Secret-Key or X-Remoting-Capability header")]
    MissingHeaders {
        /// Excerpt of the response body.
        body: String,
    },
    /// Anything else.
    #[error("the controller refused the WebSocket upgrade with HTTP {status}{}", excerpt_suffix(.body))]
    Other {
        /// The status code.
        status: u16,
        /// Excerpt of the response body (bounded, control characters removed).
        body: String,
    },
    /// A 101 whose `X-Remoting-Capability` is not a capability.
    #[error(
        "the controller accepted the upgrade but its X-Remoting-Capability is unreadable: {0}"
    )]
    BadCapability(#[source] CapabilityError),
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl Refusal {
    /// Whether retrying cannot help. Always `false` for now: agent.jar keeps
    /// retrying every refusal (a node or secret may be fixed on the
    /// controller meanwhile), and so do we.
    pub fn is_fatal(&self) -> bool {
        false
    }
}

/// Checks the controller's answer to the upgrade. `body` is what came with
/// a non-101 answer, if anything; `node` is the name we sent, for messages.
pub fn check_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    node: &str,
) -> Result<Accepted, Refusal> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let capability = match headers.get(X_REMOTING_CAPABILITY) {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|_| Refusal::BadCapability(CapabilityError::NotBase64))?;
                Some(Capability::from_base64(text).map_err(Refusal::BadCapability)?)
            }
        };
        return Ok(Accepted {
            capability,
            minimum_version: header_text(headers, &X_REMOTING_MINIMUM_VERSION),
            cookie: header_text(headers, &CONNECTION_COOKIE),
        });
    }
    let body = body.unwrap_or_default();
    let body = &body[..body.len().min(BODY_SCAN)];
    let node = node.to_owned();
    let code = status.as_u16();
    if matches!(code, 400 | 500)
        && (contains_ignore_case(body, b"already connected to this controller")
            || contains_ignore_case(body, b"already connected to this master"))
    {
        return Err(Refusal::AlreadyConnected { node });
    }
    Err(match code {
        400 if contains_ignore_case(body, b"no such agent") => Refusal::NoSuchAgent { node },
        400 => Refusal::MissingHeaders {
            body: excerpt(body),
        },
        403 => Refusal::BadSecret { node },
        404 => Refusal::NotSupported,
        _ => Refusal::Other {
            status: code,
            body: excerpt(body),
        },
    })
}

/// A response header as text: visible ASCII, bounded; anything else is
/// treated as absent (it could not be sent back in a request either).
fn header_text(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let value = headers.get(name)?;
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > MAX_HEADER_TEXT {
        tracing::warn!(header = %name, len = text.len(), "ignoring an empty or oversized header in the controller's 101");
        return None;
    }
    Some(text.to_owned())
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A readable excerpt of a (possibly HTML, possibly binary) body: tags
/// become spaces, control characters and whitespace runs turned into one space,
/// at most [`EXCERPT_CHARS`] characters.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut in_tag = false;
    let mut space = false;
    let mut count = 0;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                space = !out.is_empty();
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() || c == char::REPLACEMENT_CHARACTER => {
                space = !out.is_empty();
            }
            c => {
                // The space before `c` counts too.
                if count + usize::from(space) + 1 > EXCERPT_CHARS {
                    out.push('…');
                    return out;
                }
                if space {
                    out.push(' ');
                    count += 1;
                    space = false;
                }
                out.push(c);
                count += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CAPABILITY: &str =
        "rO0ABXNyABpodWRzb24ucmVtb3RpbmcuQ2FwYWJpbGl0eQAAAAAAAAABAgABSgAEbWFza3hwAAAAAAAAAf4=";

    fn check(status: u16, body: &[u8]) -> Result<Accepted, Refusal> {
        check_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            Some(body),
            "n1",
        )
    }

    #[test]
    fn switching_protocols_with_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REMOTING_CAPABILITY, CAPABILITY.parse().unwrap());
        headers.insert(
            X_REMOTING_MINIMUM_VERSION,
            "3107.v665000b_51092".parse().unwrap(),
        );
        headers.insert(CONNECTION_COOKIE, "00ff".parse().unwrap());
        let accepted =
            check_response(StatusCode::SWITCHING_PROTOCOLS, &headers, None, "n1").unwrap();
        assert_eq!(
            accepted,
            Accepted {
                capability: Some(Capability::CURRENT),
                minimum_version: Some("3107.v665000b_51092".into()),
                cookie: Some("00ff".into()),
            }
        );
    }

    #[test]
    fn switching_protocols_without_headers() {
        let accepted = check_response(
            StatusCode::SWITCHING_PROTOCOLS,
            &HeaderMap::new(),
            None,
            "n",
        )
        .unwrap();
        assert_eq!(
            accepted,
            Accepted {
                capability: None,
                minimum_version: None,
                cookie: None
            }
        );
    }

    #[test]
    fn unreadable_capability_or_oversized_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REMOTING_CAPABILITY, "!!".parse().unwrap());
        assert!(matches!(
            check_response(StatusCode::SWITCHING_PROTOCOLS, &headers, None, "n"),
            Err(Refusal::BadCapability(CapabilityError::NotBase64))
        ));
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION_COOKIE, "a".repeat(1000).parse().unwrap());
        let accepted = check_response(StatusCode::SWITCHING_PROTOCOLS, &headers, None, "n");
        assert_eq!(accepted.unwrap().cookie, None);
    }

    #[test]
    fn refusal_table() {
        let already = b"n1 is already connected to this controller. Rejecting this connection.";
        let cases: Vec<(u16, &[u8], Refusal)> = vec![
            (
                400,
                b"no such agent",
                Refusal::NoSuchAgent { node: "n1".into() },
            ),
            (
                400,
                b"<html><title>Error 400 No Such Agent</title></html>",
                Refusal::NoSuchAgent { node: "n1".into() },
            ),
            (403, b"", Refusal::BadSecret { node: "n1".into() }),
            (
                400,
                already,
                Refusal::AlreadyConnected { node: "n1".into() },
            ),
            (
                500,
                already,
                Refusal::AlreadyConnected { node: "n1".into() },
            ),
            (
                500,
                b"n1 is already connected to this master. Rejecting this connection.",
                Refusal::AlreadyConnected { node: "n1".into() },
            ),
            (404, b"<html>Not Found</html>", Refusal::NotSupported),
            (
                400,
                b"<html><body><h2>HTTP ERROR 400</h2>\r\n<p>missing\theaders</p></body></html>",
                Refusal::MissingHeaders {
                    body: "HTTP ERROR 400 missing headers".into(),
                },
            ),
            (
                502,
                b"Bad Gateway",
                Refusal::Other {
                    status: 502,
                    body: "Bad Gateway".into(),
                },
            ),
            (
                500,
                b"",
                Refusal::Other {
                    status: 500,
                    body: String::new(),
                },
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(check(status, body), Err(expected), "{status} {body:?}");
        }
        assert_eq!(
            check_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), None, "n1"),
            Err(Refusal::MissingHeaders {
                body: String::new()
            })
        );
    }

    #[test]
    fn long_or_binary_bodies_are_bounded() {
        let mut body = vec![b'x'; 100_000];
        body[10] = 0;
        body[20] = 0xff;
        body[30] = b'\n';
        let Err(Refusal::Other { body, .. }) = check(502, &body) else {
            panic!("not Other");
        };
        assert!(body.chars().count() <= EXCERPT_CHARS + 1, "{}", body.len());
        assert!(body.ends_with('…'));
        assert!(!body.chars().any(|c| c.is_control()));
    }

    #[test]
    fn messages_say_what_to_do() {
        let secret = Refusal::BadSecret { node: "n1".into() }.to_string();
        assert!(
            secret.contains("403") && secret.contains("-secret"),
            "{secret}"
        );
        assert!(Refusal::NotSupported.to_string().contains("proxy"));
        let other = Refusal::Other {
            status: 502,
            body: "Bad Gateway".into(),
        };
        assert_eq!(
            other.to_string(),
            "the controller refused the WebSocket upgrade with HTTP 502: Bad Gateway"
        );
        assert!(!other.is_fatal());
    }

    /// Found by the `websocket_response` fuzz target: a space falling at
    /// the 200th character stepped the count past the bound, and the rest
    /// of the body (up to 8 KiB) went into the message.
    #[test]
    fn the_excerpt_stays_bounded_when_a_space_falls_at_its_end() {
        for before in 190..=EXCERPT_CHARS {
            let body = format!("{} {}", "x".repeat(before), "y".repeat(2000));
            let Err(Refusal::Other { body, .. }) = check(502, body.as_bytes()) else {
                panic!("a 502 is Other");
            };
            assert!(
                body.chars().count() <= EXCERPT_CHARS + 1,
                "{before}: {body}"
            );
            assert!(body.ends_with('…'), "{before}: {body}");
        }
    }
}
