//! What the pool tells its driver: the outcome of a request, the orders to
//! carry out, and the changes to commit.

use control::When;

use super::{Agent, EndReason, Lease, LeaseId};

/// What became of a request (or of a failed reservation's retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An agent is reserved; [`Decision::Lend`] says to send it `borrow`.
    Reserved {
        /// The lease.
        lease: LeaseId,
        /// The agent.
        agent: String,
    },
    /// No agent is free; the request waits.
    Queued {
        /// The lease (same id once served).
        lease: LeaseId,
        /// Until when (Unix ms).
        deadline_ms: u64,
    },
    /// The request is over: it could not wait, or gave up.
    Ended {
        /// The lease.
        lease: LeaseId,
        /// Why.
        reason: EndReason,
    },
}

pub(super) fn outcome_lease(outcome: &Outcome) -> LeaseId {
    match outcome {
        Outcome::Reserved { lease, .. }
        | Outcome::Queued { lease, .. }
        | Outcome::Ended { lease, .. } => *lease,
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send `borrow` ([`Lease::borrow_request`]) to `agent`: phase one is
    /// done, the agent is reserved.
    Lend {
        /// The lease.
        lease: LeaseId,
        /// The agent.
        agent: String,
    },
    /// Make the node for an auto-lease's reserved agent at its controller
    /// (create or reuse `<prefix><agent>`, read its secret), then report
    /// [`Pool::provisioned`] or [`Pool::provision_failed`]. No `borrow` is
    /// sent before.
    Provision {
        /// The lease.
        lease: LeaseId,
        /// The agent.
        agent: String,
    },
    /// Send `return` to `agent`.
    Recall {
        /// The lease being returned.
        lease: LeaseId,
        /// The agent.
        agent: String,
        /// Wait for idle, or now.
        when: When,
    },
    /// The lease ended; tell whoever waits for it.
    Ended {
        /// The lease.
        lease: LeaseId,
        /// Why.
        reason: EndReason,
    },
}

/// One line of the audit log. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The lease concerned.
    pub lease: Option<LeaseId>,
    /// The agent concerned.
    pub agent: Option<String>,
    /// What happened, one word: `requested`, `reserved`, `active`, ...
    pub action: String,
    /// Details for people.
    pub detail: String,
}

/// What changed since the last [`Pool::take_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leases as they are now.
    pub leases: Vec<Lease>,
    /// Agents as they are now.
    pub agents: Vec<Agent>,
    /// New audit entries, oldest first.
    pub audit: Vec<AuditEntry>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.agents.is_empty() && self.audit.is_empty()
    }

    /// Adds `later`'s changes after these (a lease or agent in both is
    /// written twice, the later state last).
    pub fn extend(&mut self, later: Changes) {
        self.leases.extend(later.leases);
        self.agents.extend(later.agents);
        self.audit.extend(later.audit);
    }
}
