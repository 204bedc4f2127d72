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

use super::controllers::Registry;
use super::provision::{self, Provisioned};

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

    /// The borrower refused the agent's connection for the node the lender
    /// made (the secret read from its `jenkins-agent.jnlp` does not
    /// match): another agent would be refused too, so the auto-lease ends
    /// (the agent stays home, the node is deleted), the controller shows
    /// as failing with what to do, and nothing more is lent there until its
    /// registration changes.
    fn secret_refused(&mut self, lease: LeaseId, agent: &str, reason: &str, now: u64) {
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        let Some(origin) = l.request.origin.as_ref().filter(|o| o.provisioned) else {
            // A manual lease: its borrower gave the secret; the next agent
            // is tried as for any failed borrow.
            if let Err(err) = self.pool.fail(lease, reason, now) {
                tracing::warn!(lease, %err, "cannot fail");
            }
            return;
        };
        let controller = origin.controller.clone();
        let node = l.request.borrower.node_name.clone();
        let message = format!(
            "the controller refused the secret of node {node} that the lender read from its \
             jenkins-agent.jnlp ({reason}); check what serves that file (a proxy or cache in \
             front of Jenkins, a plugin rotating agent secrets), then `jnlp-lender controller \
             add {controller} --replace ...` to lend there again"
        );
        tracing::warn!(lease, %agent, %controller, %node, "the controller refused the node's secret; lending there stops");
        self.refused.insert(controller.clone(), message.clone());
        if let Some(view) = self.registry.note_refused(&controller, &message) {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::ControllerFailing(view)));
        }
        if let Err(err) = self.pool.provision_failed(lease, &message, now) {
            tracing::warn!(lease, %err, "cannot end the lease");
        }
    }

    /// A controller's waiting items: the pool keeps one auto-lease each.
    fn demand(&mut self, config: ControllerConfig, items: &[DemandItem], now: u64) {
        let name = config.name.clone();
        if self
            .controllers
            .get(&name)
            .is_some_and(|old| *old != config)
        {
            // Re-registered: a refused secret (or create) is for the
            // admin to have fixed; the items it failed for are served
            // again.
            self.refused.remove(&name);
            self.pool.forget_ended_auto(&name);
        }
        if self.refused.contains_key(&name) {
            self.controllers.insert(name, config);
            return;
        }
        let template = DemandTemplate {
            url: config.url.clone(),
            max_agents: config.options.max_agents,
            idle_return: Some(config.options.idle_return),
            one_build: config.options.one_build,
        };
        self.controllers.insert(name.clone(), config);
        let created = self.pool.demand(&name, &template, items, now);
        if !created.is_empty() {
            tracing::info!(controller = %name, leases = ?created, "demand: auto-leases requested");
        }
        // Reserved auto-leases whose node nobody is making (the controller
        // was not polled yet when they were reserved, or a restart lost
        // the task): make it now.
        let orphans: Vec<(LeaseId, String)> = self
            .pool
            .leases()
            .filter(|l| {
                l.state == LeaseState::Reserved
                    && !self.provisioning.contains(&l.id)
                    && l.request
                        .origin
                        .as_ref()
                        .is_some_and(|o| o.controller == name && !o.provisioned)
            })
            .filter_map(|l| Some((l.id, l.agent.clone()?)))
            .collect();
        for (lease, agent) in orphans {
            self.provision(lease, agent);
        }
    }

    /// Reserved auto-leases whose item left the queue while their agent
    /// is already connected to its node there: the item most likely
    /// started on it before the borrow's answer came back (the queue is
    /// read before the nodes). Kept as if still waiting, so that the pool
    /// does not recall an agent whose build has just started (which would
    /// cut it); the answer makes the lease active. An item cancelled after
    /// the agent arrived leaves the agent there until its idle return.
    fn arrived_meanwhile(
        &self,
        controller: &str,
        items: &[DemandItem],
        nodes: &[crate::jenkins::Computer],
    ) -> Vec<DemandItem> {
        let waiting: std::collections::BTreeSet<u64> = items.iter().map(|i| i.queue_id).collect();
        self.pool
            .leases()
            .filter(|l| l.state == LeaseState::Reserved)
            .filter_map(|l| {
                let origin = l.request.origin.as_ref()?;
                let arrived = nodes
                    .iter()
                    .any(|n| n.name == l.request.borrower.node_name && (n.connected || !n.offline));
                (origin.controller == controller
                    && origin.provisioned
                    && !waiting.contains(&origin.queue_id)
                    && arrived)
                    .then(|| DemandItem {
                        queue_id: origin.queue_id,
                        in_queue_since_ms: origin.in_queue_since_ms,
                        requirements: l.request.requirements.clone(),
                    })
            })
            .collect()
    }

    /// Auto-leases whose item's build is seen running on their node: the
    /// metric from the item's `inQueueSince` to its build's start (the
    /// build's own timestamp; the poll's time when Jenkins does not show
    /// the build, e.g. without Job/Read, and the node is busy).
    fn builds_started(&mut self, controller: &str, nodes: &[crate::jenkins::Computer], now: u64) {
        if nodes.is_empty() {
            return;
        }
        for lease in self.pool.leases() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller
                || !origin.provisioned
                || matches!(lease.state, LeaseState::Ended(_))
            {
                continue;
            }
            let Some(node) = nodes
                .iter()
                .find(|n| n.name == lease.request.borrower.node_name)
            else {
                continue;
            };
            let started = match node.builds.iter().find(|b| b.queue_id == origin.queue_id) {
                Some(build) => Some(build.started_ms),
                None if node.builds.is_empty() && !node.idle => Some(now),
                None => None,
            };
            if let Some(started) = started {
                self.metrics
                    .build_started(controller, lease.id, origin.in_queue_since_ms, started);
            }
        }
    }

    /// Deletes the controller's idle nodes with the lender's prefix that no
    /// open auto-lease uses or is making (left by a restart mid-lease, or
    /// by a delete that failed).
    fn reconcile_nodes(&mut self, controller: &str, nodes: &[crate::jenkins::Computer]) {
        let Some(config) = self.controllers.get(controller) else {
            return;
        };
        // Forget deletes that are done (the node is no longer listed).
        self.deleting
            .retain(|(c, n)| c != controller || nodes.iter().any(|node| node.name == *n));
        if config.options.keep_nodes || nodes.is_empty() {
            return;
        }
        let mut live = std::collections::BTreeSet::new();
        for lease in self.pool.leases() {
            let Some(origin) = lease.request.origin.as_ref() else {
                continue;
            };
            if origin.controller != controller || matches!(lease.state, LeaseState::Ended(_)) {
                continue;
            }
            live.insert(lease.request.borrower.node_name.clone());
            if let Some(agent) = &lease.agent {
                live.insert(config.node_name(agent));
            }
        }
        let orphans: Vec<String> = nodes
            .iter()
            .filter(|n| {
                n.idle
                    && !live.contains(&n.name)
                    && !self
                        .deleting
                        .contains(&(controller.to_owned(), n.name.clone()))
            })
            .map(|n| n.name.clone())
            .collect();
        for node in orphans {
            tracing::info!(controller, %node, "lent node without a live lease; deleting it");
            self.deleting.insert((controller.to_owned(), node.clone()));
            self.delete_node(controller, &node, None);
        }
    }

    fn provisioned(
        &mut self,
        lease: LeaseId,
        agent: &str,
        controller: &str,
        result: Result<Provisioned, provision::NotMade>,
        now: u64,
    ) {
        self.provisioning.remove(&lease);
        match result {
            Ok(made) => {
                if !self.refused.contains_key(controller) {
                    self.registry.clear_refused(controller);
                }
                let node = made.node.clone();
                if let Err(err) =
                    self.pool
                        .provisioned(lease, &made.node, made.secret, made.transport, now)
                {
                    // Cancelled meanwhile (the item left the queue): the
                    // node is not needed.
                    tracing::info!(lease, %agent, %node, %err, "node made for a lease that no longer wants it");
                    self.delete_node(controller, &node, Some(lease));
                }
            }
            Err(provision::NotMade {
                message: reason,
                denied,
            }) => {
                tracing::warn!(lease, %agent, controller, %reason, "cannot make the node; the item is skipped");
                if denied {
                    // The token or its permissions: failing until a node is
                    // made there again or the registration changes (which
                    // serves the skipped items again).
                    let message = format!(
                        "cannot make nodes: {reason}; grant the permission to the lender's \
                         Jenkins user (or fix its token with `jnlp-lender controller add \
                         {controller} --replace ...`, which also retries the items skipped)"
                    );
                    if let Some(view) = self.registry.note_refused(controller, &message) {
                        let _ = self
                            .events
                            .send(Arc::new(ServerEvent::ControllerFailing(view)));
                    }
                } else {
                    self.registry.note_error(controller, &reason);
                }
                if let Err(err) = self.pool.provision_failed(lease, &reason, now) {
                    tracing::debug!(lease, %err, "provisioning failure for a settled lease");
                }
            }
        }
    }

    /// Deletes a lent node in a task, unless `--keep-nodes`.
    fn delete_node(&mut self, controller: &str, node: &str, lease: Option<LeaseId>) {
        let Some(config) = self.controllers.get(controller).cloned() else {
            return;
        };
        if config.options.keep_nodes {
            tracing::info!(%node, controller, "node kept (--keep-nodes)");
            return;
        }
        let node = node.to_owned();
        let events = self.events.clone();
        self.tracker.spawn(async move {
            if provision::delete(&config, &node).await {
                let _ = events.send(Arc::new(ServerEvent::NodeDeleted(crate::api::NodeEvent {
                    controller: config.name.clone(),
                    node,
                    lease,
                })));
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn link_up(
        &mut self,
        node: String,
        link: u64,
        labels: Vec<String>,
        version: &str,
        status: &Status,
        tx: mpsc::Sender<LenderMessage>,
        now: u64,
    ) {
        let report = AgentReport::from_status(status);
        self.reconcile(&node, &report);
        if let Some(home) = &status.home_url {
            self.homes.insert(node.clone(), home.clone());
            // After a restart the lender does not know whether it took the
            // home node offline: look once.
            self.offline_at_home.insert(node.clone());
        }
        if let Some(old) = self.links.insert(
            node.clone(),
            Link {
                id: link,
                tx,
                next_request: 1,
            },
        ) {
            // Dropping its sender closes the older link.
            tracing::info!(%node, old = old.id, "agent reconnected; the older link is closed");
            self.pending
                .retain(|(agent, l, _), _| !(agent == &node && *l == old.id));
        }
        tracing::info!(%node, %version, link, place = ?report.place, "agent said hello");
        let hello = AgentHello {
            name: node,
            labels: labels.into_iter().collect(),
            // The agent adds its platform labels itself.
            os: None,
            arch: None,
            report,
        };
        let name = hello.name.clone();
        self.pool.agent_connected(hello, now);
        self.back_home(&name);
    }

    /// Logs where the agent's word and the lender's memory disagree; the
    /// pool then applies the report (the agent's place wins, the lease
    /// follows it).
    fn reconcile(&self, node: &str, report: &AgentReport) {
        let Some(known) = self.pool.agent(node) else {
            return;
        };
        if known.place != report.place {
            tracing::warn!(
                %node,
                reported = ?report.place,
                remembered = ?known.place,
                "agent reports another place than the lender remembers; the agent's word wins"
            );
        }
        let lease = known.lease.and_then(|id| self.pool.lease(id));
        match (lease, &report.place) {
            (Some(lease), place) => {
                let at_borrower = matches!(place, Place::Borrowed { url }
                    if url.trim_end_matches('/') == lease.request.borrower.url.trim_end_matches('/'));
                let agrees = match lease.state {
                    LeaseState::Reserved => at_borrower || *place == Place::Home,
                    LeaseState::Active => at_borrower,
                    LeaseState::Returning(_) => true,
                    _ => true,
                };
                if !agrees {
                    tracing::warn!(
                        %node,
                        lease = lease.id,
                        state = lease.state.name(),
                        borrower = %lease.request.borrower.url,
                        reported = ?place,
                        "the agent is not where its lease says; the lease follows the agent"
                    );
                }
            }
            (None, Place::Borrowed { url }) => tracing::warn!(
                %node,
                %url,
                "agent reports being lent outside the pool; not lent until it is home"
            ),
            (None, Place::Home) => {}
        }
    }

    fn agent_message(&mut self, node: &str, link: u64, message: AgentMessage, now: u64) {
        let report = |status: &Status| AgentReport::from_status(status);
        let result = match message {
            AgentMessage::Hello { .. } => {
                // The link refuses a second hello; nothing to do here.
                Ok(())
            }
            AgentMessage::Status { status } => {
                self.note_home(node, &status);
                self.pool.agent_reported(node, report(&status), now)
            }
            AgentMessage::Event { event } => {
                self.note_home(node, &event.status);
                self.pool.agent_reported(node, report(&event.status), now)
            }
            AgentMessage::Reply { id, reply } => {
                match self.pending.remove(&(node.to_owned(), link, id)) {
                    Some(pending) => self.on_reply(node, pending, reply, now),
                    None => tracing::debug!(%node, id, "reply to no pending request"),
                }
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::warn!(%node, %err, "agent message not applied");
        }
        self.back_home(node);
    }

    fn note_home(&mut self, node: &str, status: &Status) {
        if let Some(home) = &status.home_url {
            self.homes.insert(node.to_owned(), home.clone());
        }
    }

    /// The registered controller that is `agent`'s home, if any.
    fn home_controller(&self, agent: &str) -> Option<ControllerConfig> {
        let home = super::controllers::same_url(self.homes.get(agent)?);
        self.controllers
            .values()
            .find(|c| super::controllers::same_url(&c.url) == home)
            .cloned()
    }

    /// An agent home and in no lease whose home node the lender took
    /// offline: brought back online (only if it is temporarily offline
    /// with the lender's message).
    fn back_home(&mut self, agent: &str) {
        if !self.offline_at_home.contains(agent) {
            return;
        }
        let home_free = self
            .pool
            .agent(agent)
            .is_some_and(|a| a.place == Place::Home && a.lease.is_none());
        if !home_free {
            return;
        }
        let Some(config) = self.home_controller(agent) else {
            return;
        };
        self.offline_at_home.remove(agent);
        let node = agent.to_owned();
        self.tracker.spawn(async move {
            match provision::bring_online_if_ours(&config, &node).await {
                Ok(true) => {
                    tracing::info!(%node, controller = %config.name, "home node back online")
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(%node, %err, "cannot bring the home node back online"),
            }
        });
    }

    fn on_reply(&mut self, node: &str, pending: Pending, reply: Reply, now: u64) {
        let id = pending.lease;
        let current = self
            .pool
            .lease(id)
            .is_some_and(|l| l.state == LeaseState::Reserved && l.agent.as_deref() == Some(node));
        match (pending.kind, reply) {
            (PendingKind::Borrow, Reply::Ok(_)) if current => {
                tracing::info!(lease = id, agent = %node, "agent online at the borrower");
                if let Err(err) = self.pool.confirm(id, now) {
                    tracing::warn!(lease = id, %err, "cannot confirm");
                }
            }
            (PendingKind::Borrow, Reply::Error(reason)) if current && refused_secret(&reason) => {
                self.secret_refused(id, node, &reason, now);
            }
            (PendingKind::Borrow, Reply::Error(reason)) if current => {
                tracing::warn!(lease = id, agent = %node, %reason, "borrow failed; trying the next agent");
                match self.pool.fail(id, &reason, now) {
                    Ok(outcome) => tracing::debug!(lease = id, ?outcome, "after the failure"),
                    Err(err) => tracing::warn!(lease = id, %err, "cannot fail"),
                }
            }
            (PendingKind::Borrow, reply) => {
                tracing::debug!(lease = id, agent = %node, ?reply, "late borrow reply ignored");
            }
            (PendingKind::Return, Reply::Ok(_)) => {
                tracing::debug!(lease = id, agent = %node, "return accepted");
            }
            (PendingKind::Return, Reply::Error(reason)) => {
                tracing::warn!(lease = id, agent = %node, %reason, "return refused or late; the agent's report will end the lease");
            }
        }
    }

    // ---- API ----

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

    /// A client's change: tried on a copy of the pool, kept only once the
    /// store has committed it (with any reported changes still unsaved).
    /// Refused by the store: 503, and the pool is as before (but for the
    /// lease ids the copy used, which are never handed out again).
    async fn change<T>(
        &mut self,
        inputs: &mut mpsc::Receiver<Input>,
        apply: impl FnOnce(&mut Pool) -> T,
    ) -> Result<T, ApiError> {
        let mut copy = self.pool.clone();
        let result = apply(&mut copy);
        let mut batch = self.unsaved.clone();
        batch.extend(copy.take_changes());
        if batch.is_empty() {
            self.pool = copy;
            return Ok(result);
        }
        match self.write(batch, inputs).await {
            Ok(batch) => {
                self.unsaved = Changes::default();
                self.failing = false;
                self.pool = copy;
                self.publish(&batch);
                Ok(result)
            }
            Err((_, err)) => {
                self.pool.skip_ids_to(copy.next_id());
                self.metrics.store_failed(ChangeKind::Client);
                tracing::error!(%err, "the database refused a client's change; it was not made");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the lender could not store this change in its database, so it did not \
                     make it (see the lender's log); try again later",
                ))
            }
        }
    }

    // ---- after each input ----

    /// Commits, then carries out decisions until there are none (carrying
    /// one out may fail a borrow, which makes more). Carries out nothing
    /// while the store refuses the changes behind the decisions.
    async fn settle(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        loop {
            if !self.commit(inputs).await {
                return;
            }
            let Some(decision) = self.pool.poll_decision() else {
                break;
            };
            self.decide(decision);
        }
    }

    /// Commits what changed (and what the store refused before); whether
    /// everything is on disk now.
    async fn commit(&mut self, inputs: &mut mpsc::Receiver<Input>) -> bool {
        let changes = self.pool.take_changes();
        if changes.is_empty() && self.unsaved.is_empty() {
            return true;
        }
        let mut batch = std::mem::take(&mut self.unsaved);
        batch.extend(changes);
        match self.write(batch, inputs).await {
            Ok(batch) => {
                self.failing = false;
                self.publish(&batch);
                true
            }
            Err((batch, err)) => {
                self.failing = true;
                tracing::error!(%err, "cannot write to the database; retrying with the next change, carrying out nothing until then");
                self.metrics.store_failed(ChangeKind::Reported);
                self.unsaved = batch;
                false
            }
        }
    }

    /// Events and metrics for changes now on disk.
    fn publish(&mut self, changes: &Changes) {
        self.metrics.observe(changes);
        for lease in &changes.leases {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::Lease(LeaseView::of(lease))));
        }
        for agent in &changes.agents {
            let _ = self
                .events
                .send(Arc::new(ServerEvent::Agent(AgentView::of(agent))));
        }
    }

    /// Writes `batch` on a blocking thread, answering reads meanwhile and
    /// setting other inputs aside; gives the batch back on success.
    async fn write(
        &mut self,
        batch: Changes,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> Result<Changes, (Changes, StoreError)> {
        let Some(StoreBox(mut store)) = self.store.take() else {
            let lost = StoreError::Io {
                path: "(lost)".into(),
                source: std::io::Error::other("the store was lost when a commit panicked"),
            };
            return Err((batch, lost));
        };
        let job = tokio::task::spawn_blocking(move || {
            let result = store.commit(&batch);
            (store, batch, result)
        });
        tokio::pin!(job);
        let joined = loop {
            tokio::select! {
                biased;
                joined = &mut job => break joined,
                input = inputs.recv(), if !self.inputs_closed && self.deferred.len() < MAX_DEFERRED => {
                    match input {
                        Some(Input::Api(call)) if call.is_read() => self.read(call),
                        Some(other) => self.deferred.push_back(other),
                        None => self.inputs_closed = true,
                    }
                }
            }
        };
        match joined {
            Ok((store, batch, result)) => {
                self.store = Some(StoreBox(store));
                match result {
                    Ok(()) => Ok(batch),
                    Err(err) => Err((batch, err)),
                }
            }
            // The store went with the panic: every later commit fails too.
            Err(err) => Err((
                Changes::default(),
                StoreError::Io {
                    path: "(lost)".into(),
                    source: std::io::Error::other(format!("the commit panicked: {err}")),
                },
            )),
        }
    }

    fn decide(&mut self, decision: Decision) {
        match decision {
            Decision::Lend { lease, agent } if self.lend_first(lease, &agent) => {
                tracing::info!(lease, %agent, "taking the home node offline before the agent leaves");
            }
            Decision::Lend { lease, agent } => {
                let Some(l) = self.pool.lease(lease) else {
                    return;
                };
                if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(&agent) {
                    return;
                }
                let request = Request::Borrow(l.borrow_request(Some(self.borrow_wait)));
                tracing::info!(lease, %agent, borrower = %l.request.borrower.url, "sending borrow");
                self.send(&agent, request, lease, PendingKind::Borrow);
            }
            Decision::Recall { lease, agent, when } if self.leave_first(lease, &agent) => {
                tracing::info!(lease, %agent, ?when, "taking the node offline before the agent leaves");
            }
            Decision::Recall { lease, agent, when } => {
                let request = Request::Return {
                    when,
                    wait: Some(self.borrow_wait),
                };
                tracing::info!(lease, %agent, ?when, "sending return");
                self.send(&agent, request, lease, PendingKind::Return);
            }
            Decision::Provision { lease, agent } => self.provision(lease, agent),
            Decision::Ended { lease, reason } => {
                tracing::info!(lease, reason = end_kind(&reason), %reason, "lease ended");
                self.metrics.ended(&reason);
                let made = self.pool.lease(lease).and_then(|l| {
                    let origin = l.request.origin.as_ref()?;
                    origin.provisioned.then(|| {
                        (
                            origin.controller.clone(),
                            l.request.borrower.node_name.clone(),
                        )
                    })
                });
                if let Some((controller, node)) = made {
                    self.delete_node(&controller, &node, Some(lease));
                }
            }
        }
    }

    /// Leaving without guessing: before an auto-lease's agent is taken
    /// from its controller, its node there is taken temporarily offline
    /// (no new build can start), checked idle again (a build that slipped
    /// in is waited for), and only then the agent is sent home at once.
    /// Whether a task now does that (the `return` follows on
    /// [`Input::LeaveReady`]).
    fn leave_first(&mut self, lease: LeaseId, agent: &str) -> bool {
        let Some(l) = self.pool.lease(lease) else {
            return false;
        };
        let Some(origin) = l.request.origin.as_ref().filter(|o| o.provisioned) else {
            return false;
        };
        let Some(config) = self.controllers.get(&origin.controller).cloned() else {
            return false;
        };
        if !self.leaving.insert(lease) {
            // Already under way (a re-sent recall).
            return true;
        }
        let node = l.request.borrower.node_name.clone();
        let message = format!("jnlp-lender: returning agent {agent} (lease {lease})");
        let deadline = after(self.borrow_wait);
        let inputs = self.inputs.clone();
        let agent = agent.to_owned();
        let poll = self.tick.max(Duration::from_millis(100));
        self.tracker.spawn(async move {
            let result =
                provision::take_offline_until_idle(&config, &node, &message, poll, deadline)
                    .await
                    .map_err(|err| err.to_string());
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::LeaveReady {
                        lease,
                        agent,
                        result,
                    })
                    .await;
            }
        });
        true
    }

    /// Leaving home without guessing: when the agent's home is a registered
    /// controller, its node there is taken temporarily offline and checked
    /// idle before the `borrow` goes out (then with `when: now`). Whether a
    /// task now does that (the borrow follows on [`Input::LendReady`]).
    fn lend_first(&mut self, lease: LeaseId, agent: &str) -> bool {
        let reserved = self
            .pool
            .lease(lease)
            .is_some_and(|l| l.state == LeaseState::Reserved && l.agent.as_deref() == Some(agent));
        if !reserved || self.pool.agent(agent).map(|a| &a.place) != Some(&Place::Home) {
            return false;
        }
        let Some(config) = self.home_controller(agent) else {
            return false;
        };
        if !self.lending.insert(lease) {
            return true;
        }
        self.offline_at_home.insert(agent.to_owned());
        let message = format!("jnlp-lender: lending {agent} (lease {lease})");
        let deadline = after(self.borrow_wait);
        let poll = self.tick.max(Duration::from_millis(100));
        let inputs = self.inputs.clone();
        let agent = agent.to_owned();
        self.tracker.spawn(async move {
            let result =
                provision::take_offline_until_idle(&config, &agent, &message, poll, deadline)
                    .await
                    .map_err(|err| err.to_string());
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::LendReady {
                        lease,
                        agent,
                        result,
                    })
                    .await;
            }
        });
        true
    }

    /// The home node is offline and idle (or that failed): the borrow goes
    /// out, to leave at once (or, on failure, when idle, as before).
    fn lend_ready(&mut self, lease: LeaseId, agent: &str, result: Result<(), String>) {
        self.lending.remove(&lease);
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(agent) {
            self.back_home(agent);
            return;
        }
        let mut borrow = l.borrow_request(Some(self.borrow_wait));
        match result {
            Ok(()) => borrow.when = When::Now,
            Err(reason) => {
                tracing::warn!(lease, %agent, %reason, "cannot take the home node offline first; the agent leaves when idle");
            }
        }
        tracing::info!(lease, %agent, borrower = %l.request.borrower.url, when = ?borrow.when, "sending borrow");
        self.send(agent, Request::Borrow(borrow), lease, PendingKind::Borrow);
    }

    /// The node is offline and idle (or that failed): the agent goes now
    /// (or, on failure, as it would have without credentials: when idle).
    fn leave_ready(&mut self, lease: LeaseId, agent: &str, result: Result<(), String>) {
        self.leaving.remove(&lease);
        let returning = self.pool.lease(lease).is_some_and(|l| {
            matches!(l.state, LeaseState::Returning(_)) && l.agent.as_deref() == Some(agent)
        });
        if !returning {
            return;
        }
        let when = match result {
            Ok(()) => When::Now,
            Err(reason) => {
                tracing::warn!(lease, %agent, %reason, "cannot take the node offline first; the agent leaves when idle");
                When::Idle
            }
        };
        let request = Request::Return {
            when,
            wait: Some(self.borrow_wait),
        };
        tracing::info!(lease, %agent, ?when, "sending return");
        self.send(agent, request, lease, PendingKind::Return);
    }

    /// Makes the node for reserved auto-lease `lease` in a task; the result
    /// comes back as [`Input::Provisioned`].
    fn provision(&mut self, lease: LeaseId, agent: String) {
        let Some(l) = self.pool.lease(lease) else {
            return;
        };
        if l.state != LeaseState::Reserved || l.agent.as_deref() != Some(&agent) {
            return;
        }
        let Some(origin) = l.request.origin.clone() else {
            return;
        };
        let Some(config) = self.controllers.get(&origin.controller).cloned() else {
            // Restarted: the controller's watcher has not reported yet; its
            // first demand input asks again for every reserved auto-lease.
            tracing::info!(lease, controller = %origin.controller, "controller not polled yet; provisioning waits");
            return;
        };
        if self
            .home_controller(&agent)
            .is_some_and(|home| home.name == config.name)
        {
            // The item waits at the agent's own home, which has its node
            // already (busy, or taken offline while it is lent or coming
            // back): its own scheduler uses it. Lending it there as a
            // second node would take it from that node; another agent may
            // serve the item.
            tracing::info!(lease, %agent, controller = %config.name, "the item waits at the agent's home; not lent to itself");
            if let Err(err) = self.pool.fail(
                lease,
                &format!("{agent}'s home is {}: not lent to itself", config.name),
                now_ms(),
            ) {
                tracing::warn!(lease, %err, "cannot pass the lease on");
            }
            return;
        }
        let labels = self
            .pool
            .agent(&agent)
            .map(|a| a.labels.clone())
            .unwrap_or_default();
        let creates = self.creates.entry(config.name.clone()).or_default().clone();
        if !self.provisioning.insert(lease) {
            return;
        }
        let inputs = self.inputs.clone();
        let events = self.events.clone();
        tracing::info!(lease, %agent, controller = %config.name, "making the node");
        self.tracker.spawn(async move {
            let result = provision::provision(&config, lease, &agent, &labels, creates)
                .await
                .map_err(|err| provision::NotMade {
                    denied: matches!(err.status(), Some(401 | 403)),
                    message: err.to_string(),
                });
            if let Ok(made) = &result {
                if made.created {
                    let _ =
                        events.send(Arc::new(ServerEvent::NodeCreated(crate::api::NodeEvent {
                            controller: config.name.clone(),
                            node: made.node.clone(),
                            lease: Some(lease),
                        })));
                }
            }
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs
                    .send(Input::Provisioned {
                        lease,
                        agent,
                        controller: config.name,
                        result,
                    })
                    .await;
            }
        });
    }

    /// Sends `request` on `agent`'s link. Without a link the order waits
    /// for the agent's hello, after which the pool sends it again.
    fn send(&mut self, agent: &str, request: Request, lease: LeaseId, kind: PendingKind) {
        let Some(link) = self.links.get_mut(agent) else {
            tracing::info!(%agent, lease, "agent not connected; the order goes out when it says hello");
            return;
        };
        let id = link.next_request;
        link.next_request += 1;
        match link.tx.try_send(LenderMessage::Request { id, request }) {
            Ok(()) => {
                self.pending.insert(
                    (agent.to_owned(), link.id, id),
                    Pending {
                        lease,
                        kind,
                        overdue: after(self.borrow_wait.saturating_add(REPLY_GRACE)),
                    },
                );
            }
            Err(err) => {
                // A link that does not take a message is stuck or gone:
                // drop it; the agent reconnects and gets the order again.
                tracing::warn!(%agent, %err, "agent link does not take messages; dropping it");
                let link = link.id;
                self.links.remove(agent);
                self.pending
                    .retain(|(a, l, _), _| !(a == agent && *l == link));
                if let Err(err) = self.pool.agent_disconnected(agent, now_ms()) {
                    tracing::warn!(%agent, %err, "cannot mark the agent disconnected");
                }
            }
        }
    }
}

/// Whether a failed borrow's reason is the controller refusing the
/// node's secret (the agent words the JNLP4 `Authorization failure` and
/// the WebSocket 403 this way).
fn refused_secret(reason: &str) -> bool {
    [
        "secret does not match",
        "Authorization failure",
        "rejected the secret",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
}
