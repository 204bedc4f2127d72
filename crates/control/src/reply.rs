//! Replies: `{"ok": RESPONSE}` or `{"error": MESSAGE}`, one line each.

use serde::{Deserialize, Serialize};

use crate::{to_json, Event, Status};

/// The reply to a request: `{"ok": RESPONSE}` or `{"error": "MESSAGE"}`.
// A reply lives for one line; boxing the large variant would only make
// matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out (or, for `borrow`/`return`, accepted).
    Ok(Response),
    /// The request was refused; nothing changed.
    Error(String),
}

impl Reply {
    /// An error reply.
    pub fn error(message: impl Into<String>) -> Self {
        Reply::Error(message.into())
    }

    /// As a `Result`, the shape niri-ipc uses.
    pub fn into_result(self) -> Result<Response, String> {
        match self {
            Reply::Ok(response) => Ok(response),
            Reply::Error(message) => Err(message),
        }
    }
}

impl From<Result<Response, String>> for Reply {
    fn from(result: Result<Response, String>) -> Self {
        match result {
            Ok(response) => Reply::Ok(response),
            Err(message) => Reply::Error(message),
        }
    }
}

/// Reads one reply line (without its newline).
pub fn parse_reply(line: &str) -> Result<Reply, serde_json::Error> {
    serde_json::from_str(line)
}

/// The line the agent sends for `reply` (without the newline).
pub fn reply_line(reply: &Reply) -> String {
    to_json(reply)
}

/// A successful reply's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// For `status`.
    Status(Status),
    /// For `borrow` and `return`: the order was taken.
    Accepted {
        /// What will happen, e.g. "accepted; will leave when idle".
        message: String,
    },
    /// On an `events` connection.
    Event(Event),
}
