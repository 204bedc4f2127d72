//! The driver: the one task that owns the pool and the store.
//!
//! Each [`Input`] (an API call, a link coming up or going down, a message
//! from an agent) is applied to the pool, then [`Driver::settle`] commits
//! the pool's changes to the store, publishes them as events and carries
//! out the pool's decisions:
//!
//! - `Lend` → `borrow` (with `wait`) on the agent's link; its reply
//!   confirms the lease (`ok`) or fails the reservation (`error`, the reason
//!   recorded), and the pool tries the next agent;
//! - `Recall` → `return` (with `wait`) on the agent's link; the agent's
//!   report of being home ends the lease;
//! - `Ended` → counted in the metrics; an auto-lease's node is deleted
//!   (not with `--keep-nodes`);
//! - `Provision` (lending on demand) → a task makes the node at the
//!   controller and reads its secret; its result comes back as
//!   [`Input::Provisioned`] and only then the `borrow` goes out. A `Recall`
//!   of an auto-lease first takes its node temporarily offline and waits
//!   for it to be idle ([`Input::LeaveReady`]), then sends `return` now.
//!
//! Each registered controller's watcher sends its waiting items
//! ([`Input::Demand`]); the pool keeps one auto-lease per item, and the
//! driver deletes idle lent nodes no open auto-lease uses. The driver
//! adds to what the pool sees:
//! - a reserved auto-lease whose item left the queue while its agent is
//!   already connected to its node counts as still waiting (the build most
//!   likely started on it: a recall would cut it);
//! - an agent is never provisioned at its own home controller (the
//!   reservation passes to another agent);
//! - a borrow refused for the node's secret ends the auto-lease and stops
//!   lending at that controller (failing, with what to do) until it is
//!   re-registered; a create refused with 401/403 shows it failing too.
//!   Re-registering forgets its ended auto-leases, so their items are
//!   served again;
//! - the builds seen on lent nodes give the queued-to-started metric.
//!
//! # Durable before acknowledged
//!
//! - A client's change (a lease request, a return) is tried on a copy of
//!   the pool. The copy replaces the pool only once the store has committed
//!   its changes; then the client is answered. A change the store refuses
//!   (a database locked by another process, a full disk) is answered 503
//!   and leaves the pool exactly as it was; the ids it used are not handed
//!   out again.
//! - What agents report is a fact, not a request: it is applied at once.
//!   If the store refuses it, it waits (with everything after it) for the
//!   next commit, and until then no decision is carried out: no `borrow` is
//!   sent for a reservation that is not on disk.
//! - A commit runs on a blocking thread. While it waits, the driver still
//!   answers reads (leases, agents, metrics) from the pool, which holds only
//!   what is committed or reported; other inputs wait their turn, in order.
//!
//! A timer wakes the driver for queue deadlines ([`Pool::next_deadline`]),
//! and every tick to retry a refused commit, to reclaim idle agents, to
//! fail borrows whose reply is overdue, and to forget old ended leases (the
//! store keeps them).
//!
//! On hello the driver reconciles what it remembers with what the agent
//! says: the agent's place wins (it is the authority on where it is), the
//! lender's leases win (it is the authority on leases); every
//! disagreement is logged.
//!
//! # Layout
//!
//! - this module: the inputs, the driver's state, its loop, the timer and
//!   API calls;
//! - `agents`: links coming up, agents' messages and replies;
//! - `commit`: the commit path (durable before acknowledged);
//! - `decide`: carrying out the pool's decisions;
//! - `demand`: lending on demand's inputs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use control::link::{AgentMessage, LenderMessage};
use control::{Reply, Request, Status, When};
use http::StatusCode;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::metrics::{ChangeKind, Metrics};
use super::Config;
use crate::api::{end_kind, AgentView, LeaseView};
use crate::controllers::ControllerConfig;
use crate::pool::{
    AgentHello, AgentReport, Changes, Decision, LeaseId, LeaseRequest, LeaseState, Outcome, Place,
    Pool, PoolError,
};
use crate::pool::{DemandItem, DemandTemplate};
use crate::store::{Store, StoreError};

use super::provision::{self, Provisioned};
use super::registry::Registry;

mod agents;
mod commit;
mod decide;
mod demand;

/// Ended leases stay in memory this long for `GET /v1/leases`; the store
/// keeps them for good.
const KEEP_ENDED_MS: u64 = 60 * 60 * 1000;
/// A borrow's reply may come this long after its `wait` before the borrow
/// counts as failed.
const REPLY_GRACE: Duration = Duration::from_secs(30);
/// Inputs set aside while a commit waits; beyond this the driver stops
/// reading inputs until the commit is done.
const MAX_DEFERRED: usize = 4096;

/// Something for the driver to apply.
#[derive(Debug)]
pub(crate) enum Input {
    /// A call from the HTTP API.
    Api(ApiCall),
    /// An agent's link is up and it said hello (the link checked the name
    /// against its token).
    LinkUp {
        node: String,
        link: u64,
        labels: Vec<String>,
        version: String,
        status: Box<Status>,
        tx: mpsc::Sender<LenderMessage>,
    },
    /// A message after hello.
    LinkMessage {
        node: String,
        link: u64,
        message: Box<AgentMessage>,
    },
    /// The link is gone.
    LinkDown { node: String, link: u64 },
    /// A registered controller's waiting items (its watcher read its queue).
    Demand {
        config: Box<ControllerConfig>,
        items: Vec<DemandItem>,
        /// Its nodes named with the lender's prefix.
        nodes: Vec<crate::jenkins::Computer>,
    },
    /// The home node of an agent about to be lent is temporarily offline
    /// and idle (`Ok`), or that could not be done.
    LendReady {
        lease: LeaseId,
        agent: String,
        result: Result<(), String>,
    },
    /// The node of a returning auto-lease is temporarily offline and idle
    /// at its controller (`Ok`), or that could not be done (`Err`: the
    /// return goes out as usual).
    LeaveReady {
        lease: LeaseId,
        agent: String,
        result: Result<(), String>,
    },
    /// A node for an auto-lease was made, or could not be.
    Provisioned {
        lease: LeaseId,
        agent: String,
        controller: String,
        result: Result<Provisioned, provision::NotMade>,
    },
}

/// An API call and where to send its answer.
#[derive(Debug)]
pub(crate) enum ApiCall {
    Lease {
        request: Box<LeaseRequest>,
        reply: oneshot::Sender<Result<(StatusCode, LeaseView), ApiError>>,
    },
    /// A lease the pool holds (the server looks in the store for others).
    GetLease {
        id: LeaseId,
        reply: oneshot::Sender<Option<LeaseView>>,
    },
    /// The leases the pool holds for `client` (every open one).
    Leases {
        client: String,
        reply: oneshot::Sender<Vec<LeaseView>>,
    },
    Return {
        id: LeaseId,
        client: String,
        when: When,
        reply: oneshot::Sender<Result<LeaseView, ApiError>>,
    },
    Agents {
        reply: oneshot::Sender<Vec<AgentView>>,
    },
    Metrics {
        reply: oneshot::Sender<String>,
    },
}

impl ApiCall {
    /// Whether the call only reads, so that it can be answered while a
    /// commit waits.
    fn is_read(&self) -> bool {
        matches!(
            self,
            ApiCall::GetLease { .. }
                | ApiCall::Leases { .. }
                | ApiCall::Agents { .. }
                | ApiCall::Metrics { .. }
        )
    }
}

/// An API call refused: the status, the message and maybe the lease.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub lease: Option<Box<LeaseView>>,
    /// For a 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            lease: None,
            allow: None,
        }
    }
}

/// A change, as `GET /v1/events` streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A lease changed (only its client sees it).
    Lease(LeaseView),
    /// An agent changed.
    Agent(AgentView),
    /// A registered controller started failing (or fails differently).
    ControllerFailing(crate::api::ControllerView),
    /// A registered controller has a new waiting item.
    Demand(crate::api::DemandEvent),
    /// A lent node was created.
    NodeCreated(crate::api::NodeEvent),
    /// A lent node was deleted.
    NodeDeleted(crate::api::NodeEvent),
}

/// An agent's live link.
#[derive(Debug)]
struct Link {
    id: u64,
    tx: mpsc::Sender<LenderMessage>,
    next_request: u64,
}

/// A request sent on a link, waiting for its reply.
#[derive(Debug)]
struct Pending {
    lease: LeaseId,
    kind: PendingKind,
    overdue: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Borrow,
    Return,
}

/// The driver's state.
#[derive(Debug)]
pub(crate) struct Driver {
    pool: Pool,
    /// `None` only while a commit has it on a blocking thread.
    store: Option<StoreBox>,
    links: HashMap<String, Link>,
    /// By (agent, link, request id).
    pending: BTreeMap<(String, u64, u64), Pending>,
    events: broadcast::Sender<Arc<ServerEvent>>,
    metrics: Metrics,
    /// Reported changes the store refused, retried with the next commit;
    /// no decision is carried out while there are any.
    unsaved: Changes,
    /// The last commit failed (for the metrics: `unsaved` is empty while
    /// its retry is under way).
    failing: bool,
    /// Inputs that arrived while a commit waited, in order.
    deferred: VecDeque<Input>,
    /// Every input sender is gone.
    inputs_closed: bool,
    reclaim_after: Option<Duration>,
    borrow_wait: Duration,
    tick: Duration,
    next_tick: Instant,
    /// Lending on demand: the registered controllers as their watchers
    /// last sent them.
    controllers: BTreeMap<String, ControllerConfig>,
    /// One lock per controller: creates there one at a time.
    creates: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    registry: Arc<Registry>,
    /// Auto-leases whose node is being made.
    provisioning: std::collections::BTreeSet<LeaseId>,
    /// Controllers that refused a lent node's secret, with the message
    /// shown: nothing more is lent there until re-registered.
    refused: BTreeMap<String, String>,
    /// Returning auto-leases whose node is being taken offline.
    leaving: std::collections::BTreeSet<LeaseId>,
    /// Each agent's home URL, as it last said.
    homes: HashMap<String, String>,
    /// Reserved leases whose agent's home node is being taken offline.
    lending: std::collections::BTreeSet<LeaseId>,
    /// Agents whose home node the lender may have taken offline: brought
    /// back online once they are home and in no lease.
    offline_at_home: std::collections::BTreeSet<String>,
    /// Orphan nodes being deleted (not asked twice).
    deleting: std::collections::BTreeSet<(String, String)>,
    /// For provisioning tasks to report back (weak: the driver must not
    /// keep its own input channel open).
    inputs: mpsc::WeakSender<Input>,
    tracker: tokio_util::task::TaskTracker,
}

/// What the driver needs to run provisioning tasks.
#[derive(Debug)]
pub(crate) struct Wiring {
    pub registry: Arc<Registry>,
    pub inputs: mpsc::WeakSender<Input>,
    pub tracker: tokio_util::task::TaskTracker,
}

/// The store, with a `Debug` that says nothing.
struct StoreBox(Box<dyn Store + Send>);

impl std::fmt::Debug for StoreBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn now_ms() -> u64 {
    control::now_ms()
}

/// `duration` from now; a duration past what an `Instant` holds (a queue
/// deadline 500 million years away) is a year from now, re-checked then,
/// instead of a panic.
fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration.min(FAR)).unwrap_or(now)
}

/// The furthest the driver sleeps at once.
const FAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl Driver {
    pub fn new(
        pool: Pool,
        store: Box<dyn Store + Send>,
        config: &Config,
        events: broadcast::Sender<Arc<ServerEvent>>,
        wiring: Wiring,
    ) -> Self {
        let tick = config.tick.max(Duration::from_millis(10));
        Driver {
            pool,
            store: Some(StoreBox(store)),
            links: HashMap::new(),
            pending: BTreeMap::new(),
            events,
            metrics: Metrics::default(),
            unsaved: Changes::default(),
            failing: false,
            deferred: VecDeque::new(),
            inputs_closed: false,
            reclaim_after: config.reclaim_after,
            borrow_wait: config.borrow_wait,
            tick,
            next_tick: after(tick),
            controllers: BTreeMap::new(),
            creates: BTreeMap::new(),
            provisioning: std::collections::BTreeSet::new(),
            refused: BTreeMap::new(),
            deleting: std::collections::BTreeSet::new(),
            leaving: std::collections::BTreeSet::new(),
            homes: HashMap::new(),
            lending: std::collections::BTreeSet::new(),
            offline_at_home: std::collections::BTreeSet::new(),
            registry: wiring.registry,
            inputs: wiring.inputs,
            tracker: wiring.tracker,
        }
    }

    /// Applies inputs until `cancel` or until every sender is gone, then
    /// writes the last changes.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let input = match self.deferred.pop_front() {
                Some(input) => Some(input),
                None if self.inputs_closed => break,
                None => {
                    let wake = self.next_wake();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        input = inputs.recv() => match input {
                            Some(input) => Some(input),
                            None => break,
                        },
                        () = sleep_until(wake) => None,
                    }
                }
            };
            match input {
                Some(input) => self.apply(input, &mut inputs).await,
                None => self.on_timer(),
            }
            self.settle(&mut inputs).await;
        }
        self.links.clear();
        self.commit(&mut inputs).await;
        tracing::info!("driver stopped");
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_tick;
        if let Some(deadline) = self.pool.next_deadline() {
            let in_ms = deadline.saturating_sub(now_ms());
            wake = wake.min(after(Duration::from_millis(in_ms)));
        }
        wake
    }

    fn on_timer(&mut self) {
        let now = now_ms();
        for id in self.pool.expire_queue(now) {
            tracing::info!(lease = id, "request timed out in the queue");
        }
        let instant = Instant::now();
        if instant < self.next_tick {
            return;
        }
        self.next_tick = after(self.tick);
        if let Some(min_idle) = self.reclaim_after {
            if self.pool.queue().next().is_some() {
                for reclaim in self.pool.reclaim(now, min_idle) {
                    tracing::info!(
                        agent = %reclaim.agent,
                        lease = reclaim.lease,
                        for_lease = reclaim.for_lease,
                        "reclaiming an idle agent for a waiting request"
                    );
                }
            }
        }
        let overdue: Vec<(String, u64, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.overdue <= instant)
            .map(|(key, _)| key.clone())
            .collect();
        for key in overdue {
            if let Some(pending) = self.pending.remove(&key) {
                let reason = format!(
                    "no reply from agent {} within {}",
                    key.0,
                    humantime::format_duration(self.borrow_wait.saturating_add(REPLY_GRACE))
                );
                self.on_reply(&key.0, pending, Reply::Error(reason), now);
            }
        }
        self.pool.forget_ended(now.saturating_sub(KEEP_ENDED_MS));
    }

    async fn apply(&mut self, input: Input, inputs: &mut mpsc::Receiver<Input>) {
        let now = now_ms();
        match input {
            Input::Api(call) => self.api(call, inputs, now).await,
            Input::LinkUp {
                node,
                link,
                labels,
                version,
                status,
                tx,
            } => self.link_up(node, link, labels, &version, &status, tx, now),
            Input::LinkMessage {
                node,
                link,
                message,
            } => {
                if self.links.get(&node).map(|l| l.id) != Some(link) {
                    tracing::debug!(%node, link, "message from a replaced link ignored");
                    return;
                }
                self.agent_message(&node, link, *message, now);
            }
            Input::Demand {
                config,
                items,
                nodes,
            } => {
                let name = config.name.clone();
                let mut items = items;
                items.extend(self.arrived_meanwhile(&name, &items, &nodes));
                self.demand(*config, &items, now);
                self.builds_started(&name, &nodes, now);
                self.reconcile_nodes(&name, &nodes);
            }
            Input::Provisioned {
                lease,
                agent,
                controller,
                result,
            } => self.provisioned(lease, &agent, &controller, result, now),
            Input::LeaveReady {
                lease,
                agent,
                result,
            } => self.leave_ready(lease, &agent, result),
            Input::LendReady {
                lease,
                agent,
                result,
            } => self.lend_ready(lease, &agent, result),
            Input::LinkDown { node, link } => {
                if self.links.get(&node).map(|l| l.id) != Some(link) {
                    return;
                }
                self.links.remove(&node);
                self.pending
                    .retain(|(agent, l, _), _| !(agent == &node && *l == link));
                tracing::info!(%node, "agent link down; the agent keeps its place and lease");
                if let Err(err) = self.pool.agent_disconnected(&node, now) {
                    tracing::warn!(%node, %err, "disconnect of an unknown agent");
                }
            }
        }
    }

    async fn api(&mut self, call: ApiCall, inputs: &mut mpsc::Receiver<Input>, now: u64) {
        match call {
            ApiCall::Lease { request, reply } => {
                let client = request.client.clone();
                let answer = self
                    .change(inputs, |pool| pool.request_lease(*request, now))
                    .await
                    .and_then(|result| self.lease_answer(result));
                // The borrow goes out before the caller hears of it.
                self.settle(inputs).await;
                if let Ok((status, view)) = &answer {
                    tracing::info!(lease = view.id, %client, state = %view.state, agent = ?view.agent, %status, "lease requested");
                }
                let _ = reply.send(answer);
            }
            ApiCall::Return {
                id,
                client,
                when,
                reply,
            } => {
                let answer = match self.pool.lease(id) {
                    Some(lease) if lease.request.client == client => {
                        let returned = self
                            .change(inputs, |pool| pool.return_lease(id, when, now))
                            .await
                            .and_then(|result| {
                                result.map_err(|err| match err {
                                    PoolError::WrongState { .. } => {
                                        ApiError::new(StatusCode::CONFLICT, err.to_string())
                                    }
                                    other => {
                                        ApiError::new(StatusCode::NOT_FOUND, other.to_string())
                                    }
                                })
                            });
                        returned.and_then(|()| {
                            tracing::info!(lease = id, %client, ?when, "lease returned by its client");
                            self.pool.lease(id).map(LeaseView::of).ok_or_else(|| {
                                ApiError::new(StatusCode::NOT_FOUND, format!("no lease {id}"))
                            })
                        })
                    }
                    _ => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no open lease {id} of client {client:?}"),
                    )),
                };
                self.settle(inputs).await;
                let _ = reply.send(answer);
            }
            read => self.read(read),
        }
    }

    /// Answers a call that only reads the pool.
    fn read(&self, call: ApiCall) {
        match call {
            ApiCall::GetLease { id, reply } => {
                let _ = reply.send(self.pool.lease(id).map(LeaseView::of));
            }
            ApiCall::Leases { client, reply } => {
                let views = self
                    .pool
                    .leases()
                    .filter(|l| l.request.client == client)
                    .map(LeaseView::of)
                    .collect();
                let _ = reply.send(views);
            }
            ApiCall::Agents { reply } => {
                let _ = reply.send(self.pool.agents().map(AgentView::of).collect());
            }
            ApiCall::Metrics { reply } => {
                let unsaved = self.failing || !self.unsaved.is_empty();
                let _ = reply.send(self.metrics.render(&self.pool, self.links.len(), unsaved));
            }
            ApiCall::Lease { .. } | ApiCall::Return { .. } => {
                tracing::error!("a change was taken for a read; dropped");
            }
        }
    }

    fn lease_answer(
        &self,
        result: Result<Outcome, PoolError>,
    ) -> Result<(StatusCode, LeaseView), ApiError> {
        let view = |id| {
            self.pool
                .lease(id)
                .map(LeaseView::of)
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no lease {id}")))
        };
        match result {
            Ok(Outcome::Reserved { lease, .. }) => view(lease).map(|v| (StatusCode::CREATED, v)),
            Ok(Outcome::Queued { lease, .. }) => view(lease).map(|v| (StatusCode::ACCEPTED, v)),
            Ok(Outcome::Ended { lease, reason }) => Err(ApiError {
                status: StatusCode::CONFLICT,
                message: reason.to_string(),
                lease: view(lease).ok().map(Box::new),
                allow: None,
            }),
            Err(PoolError::InvalidRequest(message)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, message))
            }
            Err(err @ PoolError::TooManyQueued { .. }) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                err.to_string(),
            )),
            Err(err) => Err(ApiError::new(StatusCode::CONFLICT, err.to_string())),
        }
    }
}
