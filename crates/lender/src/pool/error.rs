//! Why the pool refused an operation.

use super::LeaseId;

/// Why an operation was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No lease has this id.
    #[error("no lease {0}")]
    UnknownLease(LeaseId),
    /// No agent has this name.
    #[error("no agent named {0:?}")]
    UnknownAgent(String),
    /// The lease is not in a state that allows this.
    #[error("lease {lease} is {state}; cannot {action}")]
    WrongState {
        /// The lease.
        lease: LeaseId,
        /// Its state's name.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The request cannot work.
    #[error("invalid lease request: {0}")]
    InvalidRequest(String),
    /// The one-lease-per-agent guard refused a reservation (a bug if seen).
    #[error("agent {agent:?} is not free (lease {lease:?})")]
    AgentTaken {
        /// The agent.
        agent: String,
        /// The lease it already has.
        lease: Option<LeaseId>,
    },
    /// The client already has its limit of requests waiting in the queue,
    /// and this one would wait too.
    #[error(
        "client {client:?} already has {limit} requests waiting in the queue, its limit; \
         wait for some to be served or withdraw them (DELETE /v1/leases/ID)"
    )]
    TooManyQueued {
        /// The API client.
        client: String,
        /// The limit ([`PoolConfig::max_queued_per_client`]).
        limit: usize,
    },
    /// A snapshot breaks the pool's invariants.
    #[error("inconsistent pool state: {0}")]
    Inconsistent(String),
}
