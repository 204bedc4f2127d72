//! The HTTP API's JSON bodies, shared by the server and the client.
//!
//! Every request but the agent link carries `Authorization: Bearer <client
//! token>`. Bodies are JSON, at most [`MAX_BODY`] bytes; unknown fields in a
//! request are refused, replies may gain fields (clients ignore those they
//! do not know). Durations use humantime syntax (`"90s"`, `"2h"`); times are
//! Unix milliseconds (`*_ms`).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/leases` | [`LeaseBody`] | 201 [`LeaseView`] (an agent is reserved), 202 (queued), 409 [`ErrorBody`] with the lease (nothing can serve it and it may not wait) |
//! | `GET /v1/leases` | | 200 `[LeaseView]`: the caller's leases |
//! | `GET /v1/leases/{id}` | | 200 [`LeaseView`], 404 if it is not the caller's |
//! | `DELETE /v1/leases/{id}[?now=true]` | | 202 [`LeaseView`]: the agent goes home when idle (or now); a queued request is withdrawn |
//! | `GET /v1/agents` | | 200 `[AgentView]` |
//! | `GET /v1/controllers` | | 200 `[ControllerView]`: the registered Jenkins controllers and how lending there goes (never a credential) |
//! | `GET /v1/events` | | `text/event-stream`: `event: lease` / `event: agent` with a view as `data`; lending on demand adds `demand` ([`DemandEvent`]), `node_created`, `node_deleted` ([`NodeEvent`]) and `controller_failing` ([`ControllerView`]) |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /v1/link` | | the agents' WebSocket ([`control::link`]), with an agent token |
//!
//! Errors are `{"error": "..."}` ([`ErrorBody`]) with a 4xx status: 400
//! malformed JSON or an invalid request, 401 a missing or unknown token, 403
//! a token of the wrong kind, 404 an unknown lease, 405 a wrong method, 409
//! a lease in a state that does not allow it, 413 a body over [`MAX_BODY`],
//! 429 a request that would wait while its client already has
//! `--max-queued-per-client` requests waiting. A refused request changes
//! nothing.
//!
//! Limits on a lease request: the borrower's URL http(s) (scheme in any
//! case), at most [`control::MAX_URL`] bytes, without NUL, CR or LF; its node
//! name as Jenkins accepts it ([`control::check_node_name`]); `lease` and
//! `idle_return` at most [`crate::pool::MAX_LEASE`] (30 days), `wait` at
//! most [`crate::pool::MAX_WAIT`] (24 hours).
//!
//! ```text
//! POST /v1/leases
//! {"requirements":"macos && arm64","borrower":{"url":"https://b.example/","name":"mac-lent","secret":"0f1e…","transport":"web_socket"},"lease":"2h","idle_return":"30m","wait":"10m"}
//! ← 201 {"id":7,"state":"reserved","agent":"mac-01","requirements":"(macos && arm64)",…}
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use control::Transport;
use serde::{Deserialize, Serialize};

use crate::pool::{Agent, EndReason, Lease, LeaseId, LeaseState, Place, ReturnCause};

/// The largest request body the server reads, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /v1/leases`: what a borrower asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// A Jenkins label expression, e.g. `macos && arm64`.
    pub requirements: String,
    /// Who borrows.
    pub borrower: BorrowerBody,
    /// The longest time to keep the agent; the agent enforces it.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease: Option<Duration>,
    /// Send the agent home after it has been idle this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_return: Option<Duration>,
    /// How long the request may wait in the queue (default: not at all).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait: Option<Duration>,
}

/// The borrowing controller and the node the agent becomes there.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorrowerBody {
    /// The borrowing controller's URL.
    pub url: String,
    /// The node's name there.
    pub name: String,
    /// The node's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file on the lender's host holding the secret, relative to the
    /// client's own directory `CLIENT/` under the lender's `--secret-dir`
    /// (`..`, absolute paths and symbolic links leading out are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `tcp` or `web_socket`; absent: the agent chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl fmt::Debug for BorrowerBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BorrowerBody")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("secret_file", &self.secret_file)
            .field("transport", &self.transport)
            .finish()
    }
}

/// A lease as the API shows it. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// Its id.
    pub id: LeaseId,
    /// `queued`, `reserved`, `active`, `returning` or `ended`.
    pub state: String,
    /// The agent, from reservation on.
    pub agent: Option<String>,
    /// The requirements, in canonical form.
    pub requirements: String,
    /// The borrower, without the secret.
    pub borrower: BorrowerView,
    /// The API client that asked.
    pub client: String,
    /// The lease time asked for.
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// The idle return asked for.
    #[serde(default, with = "humantime_serde")]
    pub idle_return: Option<Duration>,
    /// The wait asked for.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// When it was asked for.
    pub requested_ms: u64,
    /// The end of its wait in the queue.
    pub deadline_ms: u64,
    /// When the current state began.
    pub since_ms: u64,
    /// Borrows that failed, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    /// Why it is returning (state `returning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returning: Option<ReturnView>,
    /// Why it ended (state `ended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndView>,
}

/// The borrower of a [`LeaseView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowerView {
    /// The borrowing controller's URL.
    pub url: String,
    /// The node's name there.
    pub name: String,
    /// The transport asked for.
    #[serde(default)]
    pub transport: Option<Transport>,
}

/// A failed borrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    /// The agent that was reserved.
    pub agent: String,
    /// Why it failed.
    pub reason: String,
    /// When.
    pub at_ms: u64,
}

/// Why a lease is returning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnView {
    /// `requested` or `reclaimed`.
    pub cause: String,
    /// For `reclaimed`: the waiting request the agent goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_lease: Option<LeaseId>,
}

/// Why a lease ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndView {
    /// `returned`, `reclaimed`, `agent_left`, `timed_out`, `failed` or
    /// `cancelled`.
    pub reason: String,
    /// For people: what happened.
    pub message: String,
}

impl EndView {
    /// Whether the lease ended without ever serving (timed out, failed,
    /// cancelled while waiting).
    pub fn is_failure(&self) -> bool {
        matches!(self.reason.as_str(), "timed_out" | "failed" | "cancelled")
    }
}

/// The one-word kind of an end reason, as [`EndView::reason`] and the
/// metrics name it.
pub fn end_kind(reason: &EndReason) -> &'static str {
    match reason {
        EndReason::Returned => "returned",
        EndReason::Reclaimed { .. } => "reclaimed",
        EndReason::AgentLeft { .. } => "agent_left",
        EndReason::TimedOut { .. } => "timed_out",
        EndReason::Failed { .. } => "failed",
        EndReason::Cancelled => "cancelled",
    }
}

impl LeaseView {
    /// The view of `lease`.
    pub fn of(lease: &Lease) -> Self {
        let request = &lease.request;
        let returning = match &lease.state {
            LeaseState::Returning(ReturnCause::Requested) => Some(ReturnView {
                cause: "requested".into(),
                for_lease: None,
            }),
            LeaseState::Returning(ReturnCause::Reclaimed { for_lease }) => Some(ReturnView {
                cause: "reclaimed".into(),
                for_lease: Some(*for_lease),
            }),
            _ => None,
        };
        let ended = match &lease.state {
            LeaseState::Ended(reason) => Some(EndView {
                reason: end_kind(reason).into(),
                message: reason.to_string(),
            }),
            _ => None,
        };
        LeaseView {
            id: lease.id,
            state: lease.state.name().into(),
            agent: lease.agent.clone(),
            requirements: request.requirements.to_string(),
            borrower: BorrowerView {
                url: request.borrower.url.clone(),
                name: request.borrower.node_name.clone(),
                transport: request.borrower.transport,
            },
            client: request.client.clone(),
            lease: request.lease,
            idle_return: request.idle_return,
            wait: request.wait,
            requested_ms: lease.requested_ms,
            deadline_ms: lease.deadline_ms,
            since_ms: lease.since_ms,
            attempts: lease
                .attempts
                .iter()
                .map(|a| AttemptView {
                    agent: a.agent.clone(),
                    reason: a.reason.clone(),
                    at_ms: a.at_ms,
                })
                .collect(),
            returning,
            ended,
        }
    }
}

/// A registered controller as the API shows it (`GET /v1/controllers`):
/// never its API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerView {
    /// The lender's name for it.
    pub name: String,
    /// Its root URL.
    pub url: String,
    /// The Jenkins user the lender logs in as.
    pub user: String,
    /// `pending` (not read yet), `ok` (its queue was read at the last
    /// poll) or `failing` (see `last_error`).
    pub state: String,
    /// Why the last poll failed (naming the missing permission on a 403),
    /// or the last failure before it recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `X-Jenkins` at the last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jenkins_version: Option<String>,
    /// Buildable items waiting longer than `demand_after` at the last poll.
    pub waiting_items: usize,
    /// Agents of the pool borrowed there now.
    pub agents_lent: usize,
    /// When it was last read (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled_ms: Option<u64>,
    /// Whether the lender lends there on demand (`--no-demand`: false).
    pub demand: bool,
}

/// `event: demand`: a registered controller has a build waiting for a
/// label (seen for the first time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandEvent {
    /// The controller's name.
    pub controller: String,
    /// The queue item's id there.
    pub queue_id: u64,
    /// The label expression it waits for (canonical).
    pub requirements: String,
    /// When it was queued (unix ms).
    pub in_queue_since_ms: u64,
}

/// `event: node_created` / `event: node_deleted`: the lender made or
/// removed a lent node at a registered controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The controller's name.
    pub controller: String,
    /// The node's name.
    pub node: String,
    /// The auto-lease it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// Its node name at home.
    pub name: String,
    /// `free`, `leased`, `busy` (at home), `away` (at a borrower without a
    /// lease of this pool) or `offline` (no link to the lender).
    pub state: String,
    /// Everything an expression can match.
    pub labels: Vec<String>,
    /// Whether its link to the lender is up.
    pub connected: bool,
    /// `home` or `borrowed`, as it last reported.
    pub place: String,
    /// The borrower's URL when borrowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrower_url: Option<String>,
    /// Whether its channel was up at the last report.
    pub online: bool,
    /// Whether it was busy at the last report.
    pub busy: bool,
    /// The lease it is in.
    pub lease: Option<LeaseId>,
    /// Since when it has been idle where it is.
    pub idle_since_ms: Option<u64>,
    /// The last message from it.
    pub last_seen_ms: u64,
    /// When it was last reserved.
    pub last_lent_ms: Option<u64>,
}

/// The state word of [`AgentView::state`], also the metrics' label.
pub fn agent_state(agent: &Agent) -> &'static str {
    if agent.lease.is_some() {
        "leased"
    } else if !agent.connected {
        "offline"
    } else if agent.is_free() {
        "free"
    } else if agent.place != Place::Home {
        "away"
    } else {
        "busy"
    }
}

impl AgentView {
    /// The view of `agent`.
    pub fn of(agent: &Agent) -> Self {
        let (place, borrower_url) = match &agent.place {
            Place::Home => ("home", None),
            Place::Borrowed { url } => ("borrowed", Some(url.clone())),
        };
        AgentView {
            name: agent.name.clone(),
            state: agent_state(agent).into(),
            labels: agent.labels.iter().cloned().collect(),
            connected: agent.connected,
            place: place.into(),
            borrower_url,
            online: agent.online,
            busy: agent.busy,
            lease: agent.lease,
            idle_since_ms: agent.idle_since_ms,
            last_seen_ms: agent.last_seen_ms,
            last_lent_ms: agent.last_lent_ms,
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The lease concerned, when there is one (e.g. a request that could
    /// not wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
}
