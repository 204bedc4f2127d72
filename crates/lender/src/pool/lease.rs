//! Leases: what a borrower asked for and where the request stands.

use std::fmt;
use std::time::Duration;

use control::{BorrowRequest, Target, Transport, When};

use crate::pool::place::Place;
use control::labels::Expr;

/// A lease's id, also the id of the request while it waits in the queue.
/// Ids grow with each request, so their order is the queue's (FIFO) order.
pub type LeaseId = u64;

/// The borrower's node secret. `Debug` never shows it; there is no
/// `Display`. Read it with [`Secret::expose`] only to send it to the agent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the `borrow` sent to the agent and for the
    /// store; never for a log line or an API reply.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The controller that borrows an agent, and how the agent joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borrower {
    /// The borrowing controller's URL, e.g. `https://b.example/`.
    pub url: String,
    /// The node's name on the borrowing controller.
    pub node_name: String,
    /// The node's secret there.
    pub secret: Secret,
    /// TCP agent port or WebSocket; `None` lets the agent choose (TCP,
    /// falling back to WebSocket).
    pub transport: Option<Transport>,
}

/// Where an auto-lease comes from: a build waiting in the queue of a
/// registered controller (lending on demand). Its borrower's node and
/// secret are known only once the node has been made for the reserved
/// agent ([`crate::pool::Pool::provisioned`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The registered controller's name.
    pub controller: String,
    /// The waiting queue item's id there.
    pub queue_id: u64,
    /// When it was queued there (unix ms): the oldest is served first.
    pub in_queue_since_ms: u64,
    /// At most this many agents held at that controller at once.
    #[serde(default)]
    pub max_agents: Option<u32>,
    /// The node exists and its name and secret are in the borrower.
    #[serde(default)]
    pub provisioned: bool,
    /// `--one-build`: the lease ends once the first build there is over.
    #[serde(default)]
    pub one_build: bool,
    /// The agent was seen busy there (a build started).
    #[serde(default)]
    pub built: bool,
}

/// What a borrower asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The label expression an agent must satisfy.
    pub requirements: Expr,
    /// Who borrows.
    pub borrower: Borrower,
    /// The API client that asked (only it may return the lease).
    pub client: String,
    /// The longest time the agent stays; the agent enforces it.
    pub lease: Option<Duration>,
    /// The agent returns home after being idle this long; the agent
    /// enforces it.
    pub idle_return: Option<Duration>,
    /// How long the request may wait in the queue; zero: not at all.
    pub wait: Duration,
    /// Set for an auto-lease (lending on demand); `None` for a request
    /// made through the API.
    pub origin: Option<Origin>,
}

/// The longest `lease` (and `idle_return`) a request may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The longest `wait` in the queue a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

impl LeaseRequest {
    /// Checks what the types cannot: the borrower's URL (as
    /// [`Target::validate`]: http(s), at most [`control::MAX_URL`] bytes, one
    /// line), node name (as Jenkins accepts it) and secret, durations longer
    /// than zero and at most [`MAX_LEASE`] (`lease`, `idle_return`) or
    /// [`MAX_WAIT`] (`wait`).
    pub fn validate(&self) -> Result<(), String> {
        Target::Url {
            url: self.borrower.url.clone(),
        }
        .validate()?;
        // An auto-lease gets its node and secret once an agent is
        // reserved for it (provisioning).
        if self.origin.as_ref().is_none_or(|o| o.provisioned) {
            control::check_node_name(&self.borrower.node_name)
                .map_err(|rule| format!("the borrower's node name {rule}"))?;
            if self.borrower.secret.expose().is_empty() {
                return Err("the borrower's node secret must not be empty".into());
            }
        }
        for (field, value) in [("lease", self.lease), ("idle_return", self.idle_return)] {
            if value == Some(Duration::ZERO) {
                return Err(format!("`{field}` must be longer than zero"));
            }
            if value.is_some_and(|v| v > MAX_LEASE) {
                return Err(format!(
                    "`{field}` must be at most {}",
                    humantime::format_duration(MAX_LEASE)
                ));
            }
        }
        if self.wait > MAX_WAIT {
            return Err(format!(
                "`wait` must be at most {}",
                humantime::format_duration(MAX_WAIT)
            ));
        }
        Ok(())
    }
}

/// Where a lease stands.
///
/// ```text
///            request_lease
///          /              \
///         v                v
///      Queued ---------> Reserved --confirm / agent online there--> Active
///      |  ^  agent free   |  |                                         |
///      |  +---- fail -----+  | return_lease                            | return_lease, reclaim
///      |   (next agent       v                                         v
///      |    or queue)     Returning <----------------------------------+
///      |                     |                                         |
///      | deadline, cancel    | agent reports home                      | agent reports home
///      v                     v                                         v  (lease time, idle)
///    Ended <-----------------+-----------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Waiting for a matching agent, until the lease's `deadline_ms`.
    Queued,
    /// Phase one: an agent is set aside and told to go (`borrow`); no other
    /// lease can have it.
    Reserved,
    /// Phase two: the agent reported itself online at the borrower.
    Active,
    /// The agent was asked to go home.
    Returning(ReturnCause),
    /// Over.
    Ended(EndReason),
}

impl LeaseState {
    /// A short name: `queued`, `reserved`, `active`, `returning`, `ended`.
    pub fn name(&self) -> &'static str {
        match self {
            LeaseState::Queued => "queued",
            LeaseState::Reserved => "reserved",
            LeaseState::Active => "active",
            LeaseState::Returning(_) => "returning",
            LeaseState::Ended(_) => "ended",
        }
    }

    /// Whether an agent is tied to the lease (reserved, active, returning).
    pub fn holds_agent(&self) -> bool {
        matches!(
            self,
            LeaseState::Reserved | LeaseState::Active | LeaseState::Returning(_)
        )
    }
}

/// Why a lease's agent was asked to go home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnCause {
    /// The borrower (or an admin) returned the lease.
    Requested,
    /// The pool reclaims the agent, idle at this borrower, for a waiting
    /// request.
    Reclaimed {
        /// The waiting request.
        for_lease: LeaseId,
    },
}

/// Why a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Returned on request; the agent is home.
    Returned,
    /// Reclaimed for a waiting request; the agent is home.
    Reclaimed {
        /// The waiting request.
        for_lease: LeaseId,
    },
    /// The agent left the borrower on its own: home after its lease time,
    /// idle return or losing the borrower, or (a disagreement, logged)
    /// somewhere else.
    AgentLeft {
        /// Where the agent reported itself.
        place: Place,
    },
    /// No matching agent became free before the request's deadline.
    TimedOut {
        /// Why, for the borrower: what matched and what held it up.
        message: String,
    },
    /// Borrows kept failing (see the lease's attempts).
    Failed {
        /// The last failure and how many there were.
        message: String,
    },
    /// Withdrawn while it waited.
    Cancelled,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Returned => f.write_str("returned"),
            EndReason::Reclaimed { for_lease } => {
                write!(f, "reclaimed for waiting request {for_lease}")
            }
            EndReason::AgentLeft { place: Place::Home } => {
                f.write_str("the agent went home (lease time, idle return or borrower gone)")
            }
            EndReason::AgentLeft {
                place: Place::Borrowed { url },
            } => write!(f, "the agent reports being at {url} instead"),
            EndReason::TimedOut { message } | EndReason::Failed { message } => f.write_str(message),
            EndReason::Cancelled => f.write_str("cancelled while waiting"),
        }
    }
}

/// A borrow that failed, kept on the lease so the borrower learns why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The agent that was reserved.
    pub agent: String,
    /// Why it failed (a borrower refusal, the agent's report); never a
    /// secret.
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// A lease, from request to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// What was asked for.
    pub request: LeaseRequest,
    /// Where it stands.
    pub state: LeaseState,
    /// The agent, from reservation on (kept once ended, for the record).
    pub agent: Option<String>,
    /// When it was requested (Unix ms).
    pub requested_ms: u64,
    /// The end of its wait in the queue (Unix ms).
    pub deadline_ms: u64,
    /// When the current state began (Unix ms).
    pub since_ms: u64,
    /// Borrows that failed, oldest first.
    pub attempts: Vec<Attempt>,
}

impl Lease {
    /// The `borrow` to send to the reserved agent. `wait` asks the agent to
    /// reply only once online at the borrower (or failed).
    pub fn borrow_request(&self, wait: Option<Duration>) -> BorrowRequest {
        let borrower = &self.request.borrower;
        BorrowRequest {
            target: Target::Url {
                url: borrower.url.clone(),
            },
            name: borrower.node_name.clone(),
            secret: Some(borrower.secret.expose().to_owned()),
            secret_file: None,
            lease: self.request.lease,
            idle_return: self.request.idle_return,
            when: When::Idle,
            wait,
            transport: borrower.transport,
        }
    }

    /// Whether `agent` already failed for this lease (it is not tried
    /// again).
    pub fn tried(&self, agent: &str) -> bool {
        self.attempts.iter().any(|a| a.agent == agent)
    }
}
