//! The pool's decisions: which agent goes to which borrower, in memory, with
//! no I/O and no clock (every operation takes `now`, Unix ms).
//!
//! A driver (the lender's HTTP API and agent links) calls one method per
//! input and then drains what to do:
//!
//! - [`Pool::poll_decision`]: orders for the agents ([`Decision::Lend`]:
//!   send `borrow`; [`Decision::Recall`]: send `return`) and news for
//!   borrowers ([`Decision::Ended`]);
//! - [`Pool::take_changes`]: the leases and agents that changed and the
//!   audit entries, to commit to the [store](crate::store) in one
//!   transaction;
//! - [`Pool::next_deadline`]: when to call [`Pool::expire_queue`].
//!
//! # Rules
//!
//! - **One lease per agent.** An agent is tied to at most one lease that
//!   holds it (reserved, active, returning). The only code that ties them,
//!   `reserve`, refuses an agent that is not free ([`PoolError::AgentTaken`]),
//!   and [`Pool::check_invariants`] checks both directions.
//! - **Free** means connected to the lender, at home, idle and in no lease
//!   ([`Agent::is_free`]).
//! - **Choice.** Among the free agents that satisfy the expression (and have
//!   not already failed for this lease), the least recently lent one, never
//!   lent first, ties by name: wear spreads over the pool and the choice is
//!   deterministic.
//! - **Queue.** A request that finds no free agent waits until its deadline,
//!   first come first served (an auto-lease counts from its item's
//!   `inQueueSince`, so the oldest waiting build goes first across
//!   controllers): when an agent becomes free it goes to the
//!   oldest waiting request it satisfies whose borrower is under its cap. So
//!   a request no agent can serve does not hold up the ones behind it.
//! - **Two phases.** Reserved (phase one: set aside, `borrow` sent), then
//!   active once the agent reports itself online at the borrower
//!   ([`Pool::confirm`], or a report saying so). A borrow that fails
//!   ([`Pool::fail`]) frees the agent, is recorded on the lease, and the
//!   lease tries the next matching agent, up to
//!   [`PoolConfig::max_attempts`] agents.
//! - **The agent enforces its lease.** The lease time and idle return travel
//!   in the `borrow`; the agent goes home by itself, and its report ends the
//!   lease. The pool only decides; a lender that goes away strands nobody.
//! - **Per-client queue limit.** A request that would wait while its
//!   client already has [`PoolConfig::max_queued_per_client`] requests
//!   waiting is refused ([`PoolError::TooManyQueued`]) before anything
//!   changes; one served at once, or not waiting at all, is not held back.
//! - **Lending on demand.** [`Pool::demand`] keeps one auto-lease (a
//!   lease with an [`Origin`]) per waiting item of a registered controller,
//!   and ends the queued or reserved ones whose item left the queue. An
//!   auto-lease that reserves an agent first asks for its node
//!   ([`Decision::Provision`]); only [`Pool::provisioned`] (the node's name
//!   and secret) sends the `borrow`. At most `max_agents` agents are held
//!   at one controller.
//! - **Reclaim.** An agent idle at a borrower for longer than a given age
//!   may be sent home for a waiting request it satisfies from another
//!   borrower ([`Pool::reclaim`]); once home it serves the queue like any
//!   free agent.
//!
//! # Layout
//!
//! One `impl Pool` per concept, each in its own file; the types they share
//! are here.
//!
//! - `reservation`: requests, the two phases, failed borrows, nodes made
//!   for auto-leases;
//! - `queue`: waiting requests, served oldest first, expired at deadline;
//! - `returns`: returns, ends, `--one-build`;
//! - `reclaim`: agents idle at one borrower sent home for another;
//! - `demand`: auto-leases for builds waiting at registered controllers;
//! - `reports`: agents connecting, leaving and reporting;
//! - `decision`: what the driver is told (outcomes, decisions, changes);
//! - `agent`, `lease`, `place`: agents, leases, and where an agent is;
//! - `error`: why an operation was refused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use control::When;

mod agent;
mod decision;
mod demand;
mod error;
mod lease;
mod place;
mod queue;
mod reclaim;
mod reports;
mod reservation;
mod returns;

pub use agent::{Agent, AgentHello, AgentReport};
pub use decision::{AuditEntry, Changes, Decision, Outcome};
pub use demand::{demand_client, DemandItem, DemandTemplate};
pub use error::PoolError;
pub use lease::{
    Attempt, Borrower, EndReason, Lease, LeaseId, LeaseRequest, LeaseState, Origin, ReturnCause,
    Secret, MAX_LEASE, MAX_WAIT,
};
pub use place::Place;
pub use reclaim::Reclaim;

/// Limits the pool applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// At most this many agents held (reserved, active or returning) by one
    /// borrower URL; requests beyond it wait.
    pub max_per_borrower: Option<usize>,
    /// A lease gives up after borrows failed on this many agents (a wrong
    /// secret fails everywhere; it should not cycle the whole pool).
    pub max_attempts: usize,
    /// At most this many requests of one API client wait in the queue; a
    /// request that would wait beyond it is refused
    /// ([`PoolError::TooManyQueued`]), so one client cannot fill the
    /// lender's memory and database.
    pub max_queued_per_client: usize,
}

/// [`PoolConfig::max_queued_per_client`] by default.
pub const DEFAULT_MAX_QUEUED_PER_CLIENT: usize = 100;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_per_borrower: None,
            max_attempts: 3,
            max_queued_per_client: DEFAULT_MAX_QUEUED_PER_CLIENT,
        }
    }
}

/// What a pool is rebuilt from after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Agents' last known state (all count as disconnected until they
    /// reconnect).
    pub agents: Vec<Agent>,
    /// The leases not ended yet.
    pub leases: Vec<Lease>,
    /// The id the next request gets: above every lease ever made, ended
    /// ones included, so that ids are never reused.
    pub next_id: LeaseId,
}

/// The pool. See the module docs for its rules.
///
/// `Clone` lets the server try a client's change on a copy and keep it only
/// once the store has it: a change the store refuses leaves the pool exactly
/// as it was.
#[derive(Debug, Clone)]
pub struct Pool {
    config: PoolConfig,
    agents: BTreeMap<String, Agent>,
    leases: BTreeMap<LeaseId, Lease>,
    /// Queued leases; ids grow with requests, so this is FIFO order.
    queue: BTreeSet<LeaseId>,
    /// Leases holding an agent, per borrower URL (normalised).
    held: BTreeMap<String, usize>,
    next_id: LeaseId,
    decisions: VecDeque<Decision>,
    changed_leases: BTreeSet<LeaseId>,
    changed_agents: BTreeSet<String>,
    audit: Vec<AuditEntry>,
}

/// A borrower URL as the cap counts it: without trailing slashes.
fn borrower_key(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Pool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Pool {
            config,
            agents: BTreeMap::new(),
            leases: BTreeMap::new(),
            queue: BTreeSet::new(),
            held: BTreeMap::new(),
            next_id: 1,
            decisions: VecDeque::new(),
            changed_leases: BTreeSet::new(),
            changed_agents: BTreeSet::new(),
            audit: Vec::new(),
        }
    }

    /// A pool rebuilt from stored state: leases as they were, agents
    /// disconnected until they reconnect and report.
    pub fn restore(config: PoolConfig, snapshot: Snapshot) -> Result<Self, PoolError> {
        let mut pool = Pool::new(config);
        pool.next_id = snapshot.next_id.max(1);
        for mut agent in snapshot.agents {
            agent.connected = false;
            agent.online = false;
            agent.lease = None;
            pool.agents.insert(agent.name.clone(), agent);
        }
        for lease in snapshot.leases {
            pool.next_id = pool.next_id.max(lease.id.saturating_add(1));
            if lease.state == LeaseState::Queued {
                pool.queue.insert(lease.id);
            }
            if lease.state.holds_agent() {
                let name = lease.agent.clone().ok_or_else(|| {
                    PoolError::Inconsistent(format!("lease {} holds no agent", lease.id))
                })?;
                let agent = pool.agents.get_mut(&name).ok_or_else(|| {
                    PoolError::Inconsistent(format!(
                        "lease {} holds unknown agent {name:?}",
                        lease.id
                    ))
                })?;
                if let Some(other) = agent.lease {
                    return Err(PoolError::Inconsistent(format!(
                        "agent {name:?} is in leases {other} and {}",
                        lease.id
                    )));
                }
                agent.lease = Some(lease.id);
                *pool
                    .held
                    .entry(borrower_key(&lease.request.borrower.url))
                    .or_default() += 1;
            }
            pool.leases.insert(lease.id, lease);
        }
        pool.check_invariants().map_err(PoolError::Inconsistent)?;
        Ok(pool)
    }

    /// A lease by id.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease kept, by id.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The waiting requests, oldest first.
    pub fn queue(&self) -> impl Iterator<Item = &Lease> {
        self.queue.iter().filter_map(|id| self.leases.get(id))
    }

    /// An agent by name.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.get(name)
    }

    /// Every agent, by name.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// The pool's live state, as [`Pool::restore`] takes it: every agent and
    /// the leases not ended.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            agents: self.agents.values().cloned().collect(),
            leases: self
                .leases
                .values()
                .filter(|lease| !matches!(lease.state, LeaseState::Ended(_)))
                .cloned()
                .collect(),
            next_id: self.next_id,
        }
    }

    /// The earliest queue deadline: when to call [`Pool::expire_queue`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.queue().map(|lease| lease.deadline_ms).min()
    }

    /// The id the next request gets.
    pub fn next_id(&self) -> LeaseId {
        self.next_id
    }

    /// Never hands out ids below `id` again: ids a refused change used (and
    /// nobody was told of) stay used.
    pub fn skip_ids_to(&mut self, id: LeaseId) {
        self.next_id = self.next_id.max(id);
    }

    /// The next thing to do, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> Changes {
        let leases = std::mem::take(&mut self.changed_leases);
        let agents = std::mem::take(&mut self.changed_agents);
        Changes {
            leases: leases
                .iter()
                .filter_map(|id| self.leases.get(id).cloned())
                .collect(),
            agents: agents
                .iter()
                .filter_map(|name| self.agents.get(name).cloned())
                .collect(),
            audit: std::mem::take(&mut self.audit),
        }
    }

    /// Drops ended leases that ended before `before_ms` from memory (the
    /// store keeps them).
    pub fn forget_ended(&mut self, before_ms: u64) {
        self.leases.retain(|_, lease| {
            !(matches!(lease.state, LeaseState::Ended(_)) && lease.since_ms < before_ms)
        });
    }

    /// Forgets the ended auto-leases of `controller`, so that their items
    /// are served again (its registration changed: what failed there, a
    /// refused create or secret, may work now).
    pub fn forget_ended_auto(&mut self, controller: &str) {
        self.leases.retain(|_, lease| {
            !(matches!(lease.state, LeaseState::Ended(_))
                && lease
                    .request
                    .origin
                    .as_ref()
                    .is_some_and(|o| o.controller == controller))
        });
    }

    /// Checks that agents and leases agree: every agent tied to a lease is
    /// that lease's agent and the lease holds it (so no agent is in two
    /// leases), the queue is exactly the queued leases, and the per-borrower
    /// counts are right.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for lease in self.leases.values() {
            if lease.state.holds_agent() {
                let Some(name) = &lease.agent else {
                    return Err(format!("lease {} holds no agent", lease.id));
                };
                let agent_lease = self.agents.get(name).and_then(|a| a.lease);
                if agent_lease != Some(lease.id) {
                    return Err(format!(
                        "lease {} holds {name:?}, which is in lease {agent_lease:?}",
                        lease.id
                    ));
                }
                *held
                    .entry(borrower_key(&lease.request.borrower.url))
                    .or_default() += 1;
            }
            if (lease.state == LeaseState::Queued) != self.queue.contains(&lease.id) {
                return Err(format!("lease {} and the queue disagree", lease.id));
            }
        }
        for agent in self.agents.values() {
            if let Some(id) = agent.lease {
                let lease = self.leases.get(&id);
                let holds = lease.is_some_and(|l| {
                    l.state.holds_agent() && l.agent.as_deref() == Some(&agent.name)
                });
                if !holds {
                    return Err(format!(
                        "agent {:?} is in lease {id}, which does not hold it",
                        agent.name
                    ));
                }
            }
        }
        if self.queue.iter().any(|id| !self.leases.contains_key(id)) {
            return Err("the queue holds an unknown lease".into());
        }
        let counted: BTreeMap<_, _> = self
            .held
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if counted != held {
            return Err(format!(
                "per-borrower counts {counted:?}, leases say {held:?}"
            ));
        }
        Ok(())
    }

    fn state_of(&self, id: LeaseId) -> Result<LeaseState, PoolError> {
        self.leases
            .get(&id)
            .map(|lease| lease.state.clone())
            .ok_or(PoolError::UnknownLease(id))
    }

    fn record(
        &mut self,
        now: u64,
        lease: Option<LeaseId>,
        agent: Option<&str>,
        action: &str,
        detail: String,
    ) {
        self.audit.push(AuditEntry {
            at_ms: now,
            lease,
            agent: agent.map(str::to_owned),
            action: action.to_owned(),
            detail,
        });
    }
}
