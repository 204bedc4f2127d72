//! The agent link: the one outbound connection an agent started with
//! `--lender URL` keeps to `jnlp-lender`, over which the pool learns where
//! the agent is and sends it the same orders the control socket takes.
//!
//! # Transport
//!
//! - A WebSocket to `{lender}/v1/link` (`wss` for an `https` lender URL),
//!   opened by the agent with `Authorization: Bearer <agent token>`; the
//!   token names the one agent it may speak for.
//! - One JSON object per text message, each way, at most [`MAX_MESSAGE`]
//!   bytes. Binary messages are refused. Unknown fields are ignored (either
//!   side may grow); unknown message types are refused.
//! - The agent reconnects with backoff whenever the link drops; the lender
//!   treats a dropped link as "agent unreachable", not as "agent gone": each
//!   agent enforces its own lease and is the authority on where it is.
//! - Keepalive: the agent pings every [`PING_INTERVAL`]; either side treats
//!   a link that carried nothing for three intervals as dead. An idle link
//!   costs a ping and a pong a minute.
//!
//! # Messages
//!
//! Agent → lender ([`AgentMessage`]):
//!
//! ```text
//! {"type":"hello","node":"mac-01","labels":["macos","arm64","xcode16"],"version":"0.1.0","status":{…}}
//! {"type":"status","status":{…}}
//! {"type":"event","event":{"at_ms":…,"kind":"moved","ms":212,"status":{…}}}
//! {"type":"reply","id":7,"reply":{"ok":{"accepted":{"message":"…"}}}}
//! ```
//!
//! `hello` comes first on every connection (a restarted agent re-announces
//! its place this way); `status` whenever it changed; `event` for every
//! event of the control socket's `events` stream; `reply` answers a
//! `request` with the control socket's reply ([`Reply`]), in any order.
//!
//! Lender → agent ([`LenderMessage`]):
//!
//! ```text
//! {"type":"welcome","lender":"pool-1"}
//! {"type":"request","id":7,"request":{"command":"borrow",…}}
//! ```
//!
//! `welcome` answers `hello`; `request` carries a control-socket [`Request`]
//! (`status`, `borrow` or `return`; `events` is refused, the link streams
//! them anyway). A `borrow` with `wait` is answered once the agent is online
//! at the borrower or the borrow failed, as on the socket: that is the
//! second phase of the pool's reservation.

use serde::{Deserialize, Serialize};

use crate::{Event, Reply, Request, Status};

/// The path of the link on the lender's HTTP port.
pub const LINK_PATH: &str = "/v1/link";

/// The largest message either side sends or accepts, in bytes.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// How often the agent pings the lender.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored both ways, so that either side can grow.
#[serde(tag = "type", rename_all = "snake_case")]
// A hello is sent once per connection: boxing the status buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum AgentMessage {
    /// The first message on every connection.
    Hello {
        /// The agent's node name at home.
        node: String,
        /// Its labels (`--labels`, plus the automatic `os`, `arch` and
        /// distribution labels).
        labels: Vec<String>,
        /// The agent's version.
        version: String,
        /// Where it is and what it is doing.
        status: Status,
    },
    /// The status changed.
    Status {
        /// The new status.
        status: Status,
    },
    /// An event, as the control socket's `events` stream carries it.
    Event {
        /// The event.
        event: Event,
    },
    /// The answer to a [`LenderMessage::Request`].
    Reply {
        /// The request's id.
        id: u64,
        /// The control socket's reply.
        reply: Reply,
    },
}

/// What the lender sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LenderMessage {
    /// The answer to `hello`.
    Welcome {
        /// The lender's name, for logs.
        lender: String,
    },
    /// An order, answered by a [`AgentMessage::Reply`] with the same id.
    Request {
        /// Chosen by the lender, unique on this connection.
        id: u64,
        /// The order.
        request: Request,
    },
}

/// The automatic labels for an OS and architecture as Rust names them
/// (`std::env::consts`): the names themselves plus the aliases people write
/// in Jenkins (`arm64` for `aarch64`, `amd64` for `x86_64`), so that
/// `macos && arm64` finds an Apple silicon Mac.
pub fn platform_labels(os: &str, arch: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for name in [os, arch] {
        if !name.is_empty() {
            labels.push(name.to_owned());
        }
    }
    let alias = match arch {
        "aarch64" => Some("arm64"),
        "x86_64" => Some("amd64"),
        "x86" => Some("i386"),
        _ => None,
    };
    labels.extend(alias.map(str::to_owned));
    if os == "macos" {
        labels.push("mac".to_owned());
    }
    labels
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Response, When};

    #[test]
    fn messages_round_trip_with_their_documented_tags() {
        let hello = AgentMessage::Hello {
            node: "mac-01".into(),
            labels: vec!["macos".into(), "arm64".into()],
            version: "0.1.0".into(),
            status: Status::default(),
        };
        let text = serde_json::to_string(&hello).unwrap();
        assert!(
            text.starts_with(r#"{"type":"hello","node":"mac-01""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<AgentMessage>(&text).unwrap(), hello);

        let reply = AgentMessage::Reply {
            id: 7,
            reply: Reply::Ok(Response::Accepted {
                message: "ok".into(),
            }),
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<AgentMessage>(&text).unwrap(), reply);

        let request = LenderMessage::Request {
            id: 7,
            request: Request::Return {
                when: When::Idle,
                wait: None,
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(
            text.starts_with(r#"{"type":"request","id":7,"request":{"command":"return""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<LenderMessage>(&text).unwrap(),
            request
        );
    }

    #[test]
    fn unknown_types_are_refused_and_unknown_fields_ignored() {
        assert!(serde_json::from_str::<LenderMessage>(r#"{"type":"nope"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<LenderMessage>(r#"{"type":"welcome","lender":"x","extra":1}"#)
                .unwrap(),
            LenderMessage::Welcome { lender: "x".into() }
        );
    }

    #[test]
    fn platform_labels_add_common_aliases() {
        assert_eq!(
            platform_labels("macos", "aarch64"),
            ["macos", "aarch64", "arm64", "mac"]
        );
        assert_eq!(
            platform_labels("linux", "x86_64"),
            ["linux", "x86_64", "amd64"]
        );
        assert!(platform_labels("", "").is_empty());
    }
}
