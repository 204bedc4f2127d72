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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use control::When;

mod agent;
mod lease;

pub use agent::{Agent, AgentHello, AgentReport, Place};
pub use lease::{
    Attempt, Borrower, EndReason, Lease, LeaseId, LeaseRequest, LeaseState, Origin, ReturnCause,
    Secret, MAX_LEASE, MAX_WAIT,
};

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

/// A build waiting at a registered controller, as [`Pool::demand`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandItem {
    /// The queue item's id there.
    pub queue_id: u64,
    /// When it was queued (unix ms).
    pub in_queue_since_ms: u64,
    /// The label expression it waits for.
    pub requirements: crate::labels::Expr,
}

/// What every auto-lease at one controller shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandTemplate {
    /// The controller's URL (the borrower).
    pub url: String,
    /// `--max-agents`.
    pub max_agents: Option<u32>,
    /// `--idle-return`, enforced by the agent.
    pub idle_return: Option<Duration>,
    /// `--one-build`: each lease ends once its first build is over.
    pub one_build: bool,
}

/// The API client name auto-leases of `controller` are filed under.
pub fn demand_client(controller: &str) -> String {
    format!("controller:{controller}")
}

fn outcome_lease(outcome: &Outcome) -> LeaseId {
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

/// An agent idle at a borrower that the pool sends home for a waiting
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    /// The agent.
    pub agent: String,
    /// Its current lease.
    pub lease: LeaseId,
    /// The waiting request it would serve.
    pub for_lease: LeaseId,
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

    // ---- reading ----

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

    // ---- agents ----

    /// An agent connected to the lender and introduced itself. A known agent
    /// keeps its lease; orders it may have missed are sent again.
    pub fn agent_connected(&mut self, hello: AgentHello, now: u64) {
        let labels = Agent::labels_for(&hello);
        let name = hello.name.clone();
        let agent = self.agents.entry(name.clone()).or_insert_with(|| Agent {
            name: name.clone(),
            labels: BTreeSet::new(),
            connected: false,
            place: hello.report.place.clone(),
            online: false,
            busy: hello.report.busy,
            idle_since_ms: None,
            last_seen_ms: now,
            last_lent_ms: None,
            lease: None,
        });
        agent.labels = labels;
        agent.connected = true;
        self.record(now, None, Some(&name), "connected", String::new());
        self.apply_report(&name, hello.report, now);
        // Orders sent while the link was down may be lost: send them again
        // (both are idempotent on the agent).
        let pending = self.agents.get(&name).and_then(|agent| {
            let id = agent.lease?;
            let lease = self.leases.get(&id)?;
            match (&lease.state, &agent.place) {
                // An auto-lease whose node is not made yet (a restart
                // lost the provisioning) asks for it again.
                (LeaseState::Reserved, Place::Home)
                    if lease
                        .request
                        .origin
                        .as_ref()
                        .is_some_and(|o| !o.provisioned) =>
                {
                    Some(Decision::Provision {
                        lease: id,
                        agent: name.clone(),
                    })
                }
                (LeaseState::Reserved, Place::Home) => Some(Decision::Lend {
                    lease: id,
                    agent: name.clone(),
                }),
                (LeaseState::Returning(_), Place::Borrowed { .. }) => Some(Decision::Recall {
                    lease: id,
                    agent: name.clone(),
                    when: When::Idle,
                }),
                _ => None,
            }
        });
        self.decisions.extend(pending);
        self.serve_queue(now);
    }

    /// An agent's link to the lender went down. It keeps its place and
    /// lease (it enforces the lease itself); it is not lent until it is back.
    pub fn agent_disconnected(&mut self, name: &str, now: u64) -> Result<(), PoolError> {
        let agent = self
            .agents
            .get_mut(name)
            .ok_or_else(|| PoolError::UnknownAgent(name.to_owned()))?;
        agent.connected = false;
        agent.online = false;
        self.changed_agents.insert(name.to_owned());
        self.record(now, None, Some(name), "disconnected", String::new());
        Ok(())
    }

    /// An agent reported its place and activity. Its lease follows: a
    /// reserved agent online at the borrower makes the lease active; an
    /// agent that left the borrower ends it; an agent that came home serves
    /// the queue.
    pub fn agent_reported(
        &mut self,
        name: &str,
        report: AgentReport,
        now: u64,
    ) -> Result<(), PoolError> {
        if !self.agents.contains_key(name) {
            return Err(PoolError::UnknownAgent(name.to_owned()));
        }
        self.apply_report(name, report, now);
        self.serve_queue(now);
        Ok(())
    }

    fn apply_report(&mut self, name: &str, report: AgentReport, now: u64) {
        let Some(agent) = self.agents.get_mut(name) else {
            return;
        };
        // Borrowed without saying where: between two channels. Not evidence
        // of being anywhere else; the next report will say.
        if matches!(&report.place, Place::Borrowed { url } if url.is_empty()) {
            agent.online = false;
            agent.busy = report.busy;
            agent.last_seen_ms = now;
            self.changed_agents.insert(name.to_owned());
            return;
        }
        let moved = agent.place != report.place;
        if report.busy {
            agent.idle_since_ms = None;
        } else if moved || agent.busy || agent.idle_since_ms.is_none() {
            agent.idle_since_ms = Some(now);
        }
        agent.place = report.place.clone();
        agent.online = report.online;
        agent.busy = report.busy;
        agent.last_seen_ms = now;
        let lease_id = agent.lease;
        self.changed_agents.insert(name.to_owned());

        let Some(id) = lease_id else {
            if let (true, Place::Borrowed { url }) = (moved, &report.place) {
                self.record(
                    now,
                    None,
                    Some(name),
                    "unleased",
                    format!(
                        "agent reports being at {url} without a pool lease; not lent until home"
                    ),
                );
            }
            return;
        };
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let at_borrower = matches!(&report.place,
            Place::Borrowed { url } if same_url(url, &lease.request.borrower.url));
        match (&lease.state, &report.place) {
            (LeaseState::Reserved, _) if at_borrower => {
                if report.online {
                    self.activate(id, now);
                }
            }
            (LeaseState::Reserved, Place::Home) => {}
            (LeaseState::Reserved, Place::Borrowed { url }) => {
                let reason = format!("agent reports being at {url} instead");
                self.fail_reserved(id, &reason, now);
            }
            (LeaseState::Active, _) if at_borrower => self.one_build(id, report.busy, now),
            (LeaseState::Active, place) => {
                let place = place.clone();
                self.end(id, EndReason::AgentLeft { place }, now);
            }
            (LeaseState::Returning(_), _) if at_borrower => {}
            (LeaseState::Returning(cause), Place::Home) => {
                let reason = match *cause {
                    ReturnCause::Requested => EndReason::Returned,
                    ReturnCause::Reclaimed { for_lease } => EndReason::Reclaimed { for_lease },
                };
                self.end(id, reason, now);
            }
            (LeaseState::Returning(_), place) => {
                let place = place.clone();
                self.end(id, EndReason::AgentLeft { place }, now);
            }
            (LeaseState::Queued | LeaseState::Ended(_), _) => {}
        }
    }

    // ---- leases ----

    /// A borrower asks for an agent: reserves the best free match at once,
    /// or queues the request until `now + wait`, or (no wait) ends it with
    /// the reason.
    pub fn request_lease(&mut self, request: LeaseRequest, now: u64) -> Result<Outcome, PoolError> {
        request.validate().map_err(PoolError::InvalidRequest)?;
        let limit = self.config.max_queued_per_client;
        // Refused before anything changes (no id taken) if it would wait
        // beyond the client's limit; served at once, it never queues.
        // (The agents are scanned only for a client at its limit.)
        let at_limit = request.wait > Duration::ZERO && self.queued_of(&request.client) >= limit;
        if at_limit && self.pick_for(&request, &[]).is_none() {
            return Err(PoolError::TooManyQueued {
                client: request.client,
                limit,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = now.saturating_add(ms(request.wait));
        let lease = Lease {
            id,
            request,
            state: LeaseState::Queued,
            agent: None,
            requested_ms: now,
            deadline_ms,
            since_ms: now,
            attempts: Vec::new(),
        };
        let detail = format!(
            "`{}` for {} ({}), client {:?}",
            lease.request.requirements,
            lease.request.borrower.url,
            lease.request.borrower.node_name,
            lease.request.client
        );
        self.leases.insert(id, lease);
        self.changed_leases.insert(id);
        self.record(now, Some(id), None, "requested", detail);
        Ok(self.place(id, now))
    }

    /// Reserves an agent for lease `id` (queued or just requested), or
    /// queues it, or ends it once its deadline has passed.
    fn place(&mut self, id: LeaseId, now: u64) -> Outcome {
        if let Some(agent) = self.pick(id) {
            if self.reserve(id, &agent, now).is_ok() {
                return Outcome::Reserved { lease: id, agent };
            }
        }
        let deadline_ms = self.leases.get(&id).map_or(0, |l| l.deadline_ms);
        if deadline_ms > now {
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.state = LeaseState::Queued;
                lease.agent = None;
                lease.since_ms = now;
            }
            self.queue.insert(id);
            self.changed_leases.insert(id);
            self.record(
                now,
                Some(id),
                None,
                "queued",
                format!("until {deadline_ms}"),
            );
            Outcome::Queued {
                lease: id,
                deadline_ms,
            }
        } else {
            let reason = EndReason::TimedOut {
                message: self.wait_message(id),
            };
            self.end(id, reason.clone(), now);
            Outcome::Ended { lease: id, reason }
        }
    }

    /// The agent of a reserved lease reports itself online at the borrower:
    /// the lease becomes active. Confirming an active lease does nothing.
    pub fn confirm(&mut self, id: LeaseId, now: u64) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {
                self.activate(id, now);
                Ok(())
            }
            LeaseState::Active => Ok(()),
            state => Err(PoolError::WrongState {
                lease: id,
                state: state.name(),
                action: "confirm",
            }),
        }
    }

    /// The borrow for reserved lease `id` failed (the borrower refused, the
    /// agent could not go): the agent is released and the lease tries the
    /// next matching agent, or waits again, or gives up.
    pub fn fail(&mut self, id: LeaseId, reason: &str, now: u64) -> Result<Outcome, PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {}
            state => {
                return Err(PoolError::WrongState {
                    lease: id,
                    state: state.name(),
                    action: "fail a borrow",
                })
            }
        }
        let outcome = self.fail_reserved(id, reason, now);
        self.serve_queue(now);
        Ok(outcome)
    }

    fn fail_reserved(&mut self, id: LeaseId, reason: &str, now: u64) -> Outcome {
        self.release_agent(id);
        let Some(lease) = self.leases.get_mut(&id) else {
            return Outcome::Ended {
                lease: id,
                reason: EndReason::Cancelled,
            };
        };
        let agent = lease.agent.take().unwrap_or_default();
        lease.attempts.push(Attempt {
            agent: agent.clone(),
            reason: reason.to_owned(),
            at_ms: now,
        });
        let attempts = lease.attempts.len();
        self.changed_leases.insert(id);
        self.record(
            now,
            Some(id),
            Some(&agent),
            "borrow-failed",
            reason.to_owned(),
        );
        if attempts >= self.config.max_attempts {
            let reason = EndReason::Failed {
                message: format!("the borrow failed on {attempts} agents; last: {reason}"),
            };
            self.end(id, reason.clone(), now);
            return Outcome::Ended { lease: id, reason };
        }
        self.place(id, now)
    }

    /// The node for reserved auto-lease `id` exists at its controller:
    /// its name, secret and transport go into the borrower, and the
    /// `borrow` is sent ([`Decision::Lend`]).
    pub fn provisioned(
        &mut self,
        id: LeaseId,
        node_name: &str,
        secret: Secret,
        transport: Option<control::Transport>,
        now: u64,
    ) -> Result<(), PoolError> {
        let lease = self.leases.get(&id).ok_or(PoolError::UnknownLease(id))?;
        let waiting = lease.state == LeaseState::Reserved
            && lease
                .request
                .origin
                .as_ref()
                .is_some_and(|o| !o.provisioned);
        if !waiting {
            return Err(PoolError::WrongState {
                lease: id,
                state: lease.state.name(),
                action: "provision",
            });
        }
        let mut request = lease.request.clone();
        request.borrower.node_name = node_name.to_owned();
        request.borrower.secret = secret;
        request.borrower.transport = transport;
        if let Some(origin) = request.origin.as_mut() {
            origin.provisioned = true;
        }
        request.validate().map_err(PoolError::InvalidRequest)?;
        let agent = lease.agent.clone().unwrap_or_default();
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.request = request;
        }
        self.changed_leases.insert(id);
        self.record(
            now,
            Some(id),
            Some(&agent),
            "provisioned",
            format!("node {node_name}"),
        );
        self.decisions
            .push_back(Decision::Lend { lease: id, agent });
        Ok(())
    }

    /// The node for reserved auto-lease `id` could not be made (refused,
    /// unreachable): the lease ends, its agent is free again.
    pub fn provision_failed(
        &mut self,
        id: LeaseId,
        reason: &str,
        now: u64,
    ) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Reserved => {}
            state => {
                return Err(PoolError::WrongState {
                    lease: id,
                    state: state.name(),
                    action: "fail provisioning",
                })
            }
        }
        self.end(
            id,
            EndReason::Failed {
                message: format!("the node could not be made: {reason}"),
            },
            now,
        );
        self.serve_queue(now);
        Ok(())
    }

    /// The items waiting at controller `controller` now: an auto-lease is
    /// requested for each one that has none (oldest item first), and the
    /// queued or reserved auto-leases of items no longer waiting end (a
    /// reserved one whose `borrow` went out is recalled). Leases whose
    /// agent is online there (active) are left alone: their item may have
    /// left the queue by starting on it. Returns the new leases.
    pub fn demand(
        &mut self,
        controller: &str,
        template: &DemandTemplate,
        items: &[DemandItem],
        now: u64,
    ) -> Vec<LeaseId> {
        let waiting: BTreeSet<u64> = items.iter().map(|i| i.queue_id).collect();
        let mut covered = BTreeSet::new();
        let mut gone = Vec::new();
        for lease in self.leases.values() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller {
                continue;
            }
            // An item served once is not served again (a refused create
            // skips the item; it does not loop).
            covered.insert(origin.queue_id);
            if matches!(lease.state, LeaseState::Ended(_)) {
                continue;
            }
            if !waiting.contains(&origin.queue_id) {
                gone.push((lease.id, lease.state.clone(), origin.provisioned));
            }
        }
        for (id, state, provisioned) in gone {
            match state {
                LeaseState::Queued => self.end(id, EndReason::Cancelled, now),
                LeaseState::Reserved if !provisioned => {
                    self.end(id, EndReason::Cancelled, now);
                    self.serve_queue(now);
                }
                LeaseState::Reserved => {
                    self.start_return(id, ReturnCause::Requested, When::Idle, now)
                }
                _ => {}
            }
        }
        let mut fresh: Vec<&DemandItem> = items
            .iter()
            .filter(|i| !covered.contains(&i.queue_id))
            .collect();
        fresh.sort_by_key(|i| (i.in_queue_since_ms, i.queue_id));
        let mut created = Vec::new();
        for item in fresh {
            let request = LeaseRequest {
                requirements: item.requirements.clone(),
                borrower: Borrower {
                    url: template.url.clone(),
                    node_name: String::new(),
                    secret: Secret::new(""),
                    transport: None,
                },
                client: demand_client(controller),
                lease: None,
                idle_return: template.idle_return,
                wait: MAX_WAIT,
                origin: Some(Origin {
                    controller: controller.to_owned(),
                    queue_id: item.queue_id,
                    in_queue_since_ms: item.in_queue_since_ms,
                    max_agents: template.max_agents,
                    provisioned: false,
                    one_build: template.one_build,
                    built: false,
                }),
            };
            match self.request_lease(request, now) {
                Ok(outcome) => created.push(outcome_lease(&outcome)),
                Err(err) => {
                    self.record(
                        now,
                        None,
                        None,
                        "demand-refused",
                        format!("controller {controller} item {}: {err}", item.queue_id),
                    );
                }
            }
        }
        created
    }

    /// Returns lease `id`: a waiting request is withdrawn; an agent reserved
    /// or lent is asked to go home (`when` idle, or now) and the lease ends
    /// once it reports itself there.
    pub fn return_lease(&mut self, id: LeaseId, when: When, now: u64) -> Result<(), PoolError> {
        match self.state_of(id)? {
            LeaseState::Queued => {
                self.end(id, EndReason::Cancelled, now);
                Ok(())
            }
            LeaseState::Reserved | LeaseState::Active => {
                self.start_return(id, ReturnCause::Requested, when, now);
                Ok(())
            }
            LeaseState::Returning(_) => {
                if when == When::Now {
                    self.start_return(id, ReturnCause::Requested, when, now);
                }
                Ok(())
            }
            state @ LeaseState::Ended(_) => Err(PoolError::WrongState {
                lease: id,
                state: state.name(),
                action: "return",
            }),
        }
    }

    /// Ends every waiting request whose deadline has passed, with a message
    /// saying what held it up. Returns their ids.
    pub fn expire_queue(&mut self, now: u64) -> Vec<LeaseId> {
        let expired: Vec<LeaseId> = self
            .queue()
            .filter(|lease| lease.deadline_ms <= now)
            .map(|lease| lease.id)
            .collect();
        for &id in &expired {
            let message = self.wait_message(id);
            self.end(id, EndReason::TimedOut { message }, now);
        }
        expired
    }

    /// Agents worth reclaiming: for each waiting request (oldest first) that
    /// no reclaim already serves, the agent idle longest (at least
    /// `min_idle`) at another borrower that satisfies it. Changes nothing.
    pub fn reclaim_candidates(&self, now: u64, min_idle: Duration) -> Vec<Reclaim> {
        let min_idle = ms(min_idle);
        let served: BTreeSet<LeaseId> = self
            .leases
            .values()
            .filter_map(|lease| match lease.state {
                LeaseState::Returning(ReturnCause::Reclaimed { for_lease }) => Some(for_lease),
                _ => None,
            })
            .collect();
        let mut picked: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        for waiting in self.queue() {
            if waiting.deadline_ms <= now
                || served.contains(&waiting.id)
                || self.at_cap(&waiting.request.borrower.url)
            {
                continue;
            }
            let best = self
                .agents
                .values()
                .filter_map(|agent| {
                    let id = agent.lease?;
                    let current = self.leases.get(&id)?;
                    let idle_since = agent.idle_since_ms?;
                    let eligible = agent.connected
                        && !agent.busy
                        && current.state == LeaseState::Active
                        && now.saturating_sub(idle_since) >= min_idle
                        && !same_url(&current.request.borrower.url, &waiting.request.borrower.url)
                        && !picked.contains(agent.name.as_str())
                        && !waiting.tried(&agent.name)
                        && waiting.request.requirements.matches(&agent.labels);
                    eligible.then_some((idle_since, agent.name.as_str(), id))
                })
                .min();
            if let Some((_, name, lease)) = best {
                picked.insert(name);
                out.push(Reclaim {
                    agent: name.to_owned(),
                    lease,
                    for_lease: waiting.id,
                });
            }
        }
        out
    }

    /// Sends home the agents [`Pool::reclaim_candidates`] picks (when idle),
    /// and returns them.
    pub fn reclaim(&mut self, now: u64, min_idle: Duration) -> Vec<Reclaim> {
        let picked = self.reclaim_candidates(now, min_idle);
        for reclaim in &picked {
            let cause = ReturnCause::Reclaimed {
                for_lease: reclaim.for_lease,
            };
            self.start_return(reclaim.lease, cause, When::Idle, now);
        }
        picked
    }

    // ---- internals ----

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

    fn at_cap(&self, url: &str) -> bool {
        self.config
            .max_per_borrower
            .is_some_and(|cap| self.held.get(&borrower_key(url)).copied().unwrap_or(0) >= cap)
    }

    /// The free agent lease `id` should get: least recently lent, then by
    /// name; none if its borrower is at its cap.
    fn pick(&self, id: LeaseId) -> Option<String> {
        let lease = self.leases.get(&id)?;
        self.pick_for(&lease.request, &lease.attempts)
    }

    /// [`Pool::pick`] for a request, skipping the agents already `tried`.
    fn pick_for(&self, request: &LeaseRequest, tried: &[Attempt]) -> Option<String> {
        if self.at_cap(&request.borrower.url) || self.origin_at_cap(request) {
            return None;
        }
        self.agents
            .values()
            .filter(|agent| {
                agent.is_free()
                    && !tried.iter().any(|a| a.agent == agent.name)
                    && request.requirements.matches(&agent.labels)
            })
            .min_by_key(|agent| (agent.last_lent_ms, agent.name.as_str()))
            .map(|agent| agent.name.clone())
    }

    /// Whether the controller an auto-lease comes from already holds its
    /// `--max-agents`.
    fn origin_at_cap(&self, request: &LeaseRequest) -> bool {
        request
            .origin
            .as_ref()
            .and_then(|o| o.max_agents)
            .is_some_and(|cap| {
                self.held
                    .get(&borrower_key(&request.borrower.url))
                    .copied()
                    .unwrap_or(0)
                    >= cap as usize
            })
    }

    /// How many of `client`'s requests wait in the queue.
    fn queued_of(&self, client: &str) -> usize {
        self.queue().filter(|l| l.request.client == client).count()
    }

    /// Ties `agent` to lease `id`: the one place that does, and it refuses
    /// an agent that is not free.
    fn reserve(&mut self, id: LeaseId, name: &str, now: u64) -> Result<(), PoolError> {
        let agent = self
            .agents
            .get_mut(name)
            .ok_or_else(|| PoolError::UnknownAgent(name.to_owned()))?;
        if !agent.is_free() {
            return Err(PoolError::AgentTaken {
                agent: name.to_owned(),
                lease: agent.lease,
            });
        }
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(PoolError::UnknownLease(id))?;
        agent.lease = Some(id);
        agent.last_lent_ms = Some(now);
        lease.state = LeaseState::Reserved;
        lease.agent = Some(name.to_owned());
        lease.since_ms = now;
        *self
            .held
            .entry(borrower_key(&lease.request.borrower.url))
            .or_default() += 1;
        let detail = format!("for {}", lease.request.borrower.url);
        self.queue.remove(&id);
        self.changed_leases.insert(id);
        self.changed_agents.insert(name.to_owned());
        let provision = lease
            .request
            .origin
            .as_ref()
            .is_some_and(|o| !o.provisioned);
        self.record(now, Some(id), Some(name), "reserved", detail);
        self.decisions.push_back(if provision {
            Decision::Provision {
                lease: id,
                agent: name.to_owned(),
            }
        } else {
            Decision::Lend {
                lease: id,
                agent: name.to_owned(),
            }
        });
        Ok(())
    }

    /// Unties lease `id` from its agent (the lease keeps the name).
    fn release_agent(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let Some(name) = &lease.agent else {
            return;
        };
        let Some(agent) = self.agents.get_mut(name) else {
            return;
        };
        if agent.lease == Some(id) {
            agent.lease = None;
            self.changed_agents.insert(name.clone());
            let key = borrower_key(&lease.request.borrower.url);
            if let Some(count) = self.held.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.held.remove(&key);
                }
            }
        }
    }

    fn activate(&mut self, id: LeaseId, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Active;
        lease.since_ms = now;
        let agent = lease.agent.clone();
        let detail = format!("online at {}", lease.request.borrower.url);
        self.changed_leases.insert(id);
        self.record(now, Some(id), agent.as_deref(), "active", detail);
    }

    fn start_return(&mut self, id: LeaseId, cause: ReturnCause, when: When, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Returning(cause);
        lease.since_ms = now;
        let agent = lease.agent.clone().unwrap_or_default();
        self.changed_leases.insert(id);
        let detail = match cause {
            ReturnCause::Requested => format!("requested, when {when:?}"),
            ReturnCause::Reclaimed { for_lease } => {
                format!("reclaimed for waiting request {for_lease}")
            }
        };
        self.record(now, Some(id), Some(&agent), "returning", detail);
        self.decisions.push_back(Decision::Recall {
            lease: id,
            agent,
            when,
        });
    }

    fn end(&mut self, id: LeaseId, reason: EndReason, now: u64) {
        self.release_agent(id);
        self.queue.remove(&id);
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.state = LeaseState::Ended(reason.clone());
        lease.since_ms = now;
        let agent = lease.agent.clone();
        self.changed_leases.insert(id);
        self.record(now, Some(id), agent.as_deref(), "ended", reason.to_string());
        self.decisions
            .push_back(Decision::Ended { lease: id, reason });
    }

    /// `--one-build`: an active auto-lease whose agent was busy there and
    /// is idle again has had its build; the agent is recalled.
    fn one_build(&mut self, id: LeaseId, busy: bool, now: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        let Some(origin) = lease.request.origin.as_mut().filter(|o| o.one_build) else {
            return;
        };
        if busy {
            if !origin.built {
                origin.built = true;
                self.changed_leases.insert(id);
                self.record(now, Some(id), None, "building", "one build".into());
            }
        } else if origin.built {
            self.start_return(id, ReturnCause::Requested, When::Idle, now);
        }
    }

    /// Gives free agents to waiting requests, oldest request first.
    fn serve_queue(&mut self, now: u64) {
        if self.queue.is_empty() || !self.agents.values().any(Agent::is_free) {
            return;
        }
        // Oldest first: an auto-lease by its item's time in its
        // controller's queue (so the oldest waiting build across
        // controllers goes first), any other by its request.
        let mut waiting: Vec<(u64, LeaseId)> = self
            .queue
            .iter()
            .filter_map(|id| {
                let lease = self.leases.get(id)?;
                let since = lease
                    .request
                    .origin
                    .as_ref()
                    .map_or(lease.requested_ms, |o| o.in_queue_since_ms);
                Some((since, *id))
            })
            .collect();
        waiting.sort_unstable();
        for (_, id) in waiting {
            let live = self.leases.get(&id).is_some_and(|l| l.deadline_ms > now);
            if !live {
                continue;
            }
            if let Some(agent) = self.pick(id) {
                // `pick` only offers free agents, so this cannot be refused.
                let _ = self.reserve(id, &agent, now);
                if !self.agents.values().any(Agent::is_free) {
                    return;
                }
            }
        }
    }

    /// Why lease `id` found no agent: for the borrower's error.
    fn wait_message(&self, id: LeaseId) -> String {
        let Some(lease) = self.leases.get(&id) else {
            return String::new();
        };
        let expr = &lease.request.requirements;
        let wait = humantime::format_duration(lease.request.wait);
        let matching: Vec<&Agent> = self
            .agents
            .values()
            .filter(|agent| expr.matches(&agent.labels))
            .collect();
        let mut message = if matching.is_empty() {
            format!("no agent in the pool matches `{expr}` (waited {wait})")
        } else {
            let away = matching
                .iter()
                .filter(|a| a.lease.is_some() || a.place != Place::Home)
                .count();
            let offline = matching.iter().filter(|a| !a.connected).count();
            let busy = matching
                .iter()
                .filter(|a| a.connected && a.busy && a.place == Place::Home && a.lease.is_none())
                .count();
            format!(
                "no agent matching `{expr}` became free within {wait}: {} match \
                 ({away} lent or away, {busy} busy at home, {offline} not connected)",
                matching.len()
            )
        };
        if let Some(cap) = self.config.max_per_borrower {
            if self.at_cap(&lease.request.borrower.url) {
                message.push_str(&format!(
                    "; {} already holds its limit of {cap} agents",
                    lease.request.borrower.url
                ));
            }
        }
        if let Some(last) = lease.attempts.last() {
            message.push_str(&format!(
                "; {} borrow(s) failed, last on {}: {}",
                lease.attempts.len(),
                last.agent,
                last.reason
            ));
        }
        message
    }
}
