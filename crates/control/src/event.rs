//! Events: what happened, with the status right after it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Status;

/// Something that happened, with the status right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (Unix ms).
    pub at_ms: u64,
    /// What; flattened into the event object as `"kind"` and its fields.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The status after it.
    pub status: Status,
}

/// What an [`Event`] reports: `{"kind": "...", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event on every `events` connection: the current status.
    Subscribed,
    /// The placement or phase changed.
    StateChanged,
    /// A `borrow` was accepted.
    BorrowAccepted,
    /// A `return` was accepted.
    ReturnAccepted,
    /// A move about to happen was called off because the controller sent
    /// work (a build) before the channel close went out; the agent waits
    /// for idle again.
    MoveDeferred,
    /// A pending borrow's target was checked while the agent still serves
    /// home: reachable, its engine jar fetched and its engine started. The
    /// agent moves when idle (or at once with `now`).
    BorrowChecked,
    /// A borrow failed before the agent left home: it stays there.
    BorrowFailed {
        /// Where it failed.
        phase: MovePhase,
        /// Why, as the agent would log it (never a secret).
        reason: String,
    },
    /// The agent is online at its new place after a move, as the controller
    /// sees it: the controller's first call on the new channel was answered
    /// (the status says where).
    Moved {
        /// From the decision to move until the controller's first call was
        /// answered (or, from a controller that sent none within a few
        /// seconds, until the agent stopped waiting for one), in ms.
        ms: u64,
        /// From the decision to move until the new channel was accepted
        /// (the handshake done), in ms. Absent from agents that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connected_ms: Option<u64>,
        /// From the decision to move until the controller's first call was
        /// answered, in ms; absent when the controller sent none in time
        /// (and from agents that predate it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answered_ms: Option<u64>,
    },
    /// A borrowed agent went home.
    ReturnedHome {
        /// Why.
        reason: ReturnReason,
    },
    /// Something failed (a connection attempt, a borrow).
    Error {
        /// What.
        message: String,
    },
}

/// Where a borrow failed. The agent checks the borrower while still at
/// home: it never leaves for a place it could not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// The request cannot work (e.g. a secret file that cannot be read).
    Config,
    /// Finding the agent port and identity: discovery or the JNLP file
    /// (unreachable, not a Jenkins controller, TCP agent port disabled).
    Resolve,
    /// Fetching the borrower's engine jar.
    EngineJar,
    /// Starting the borrower's engine and waiting for its preamble.
    EngineStart,
    /// Reaching the agent port.
    Connect,
    /// The JNLP4-connect handshake: a refusal (bad secret, unknown node,
    /// already connected, FATAL) or a wrong identity.
    Handshake,
}

impl fmt::Display for MovePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MovePhase::Config => "configuration",
            MovePhase::Resolve => "finding the borrower",
            MovePhase::EngineJar => "fetching its engine jar",
            MovePhase::EngineStart => "starting its engine",
            MovePhase::Connect => "reaching its agent port",
            MovePhase::Handshake => "handshake",
        })
    }
}

/// Why a borrowed agent went home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnReason {
    /// The lease ran out.
    LeaseExpired,
    /// It was idle for `idle_return`.
    Idle,
    /// The borrowing controller went away or refused the agent.
    BorrowerGone,
    /// A `return` request.
    Requested,
}
