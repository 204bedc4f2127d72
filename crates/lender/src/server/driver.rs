//! The driver: the one task that owns the pool and the store.
//!
//! Each [`Input`] (an API call, a link coming up or going down, a message
//! from an agent) is applied to the pool, then [`Driver::settle`] commits
//! the pool's changes to the store (before any order goes out, so a
//! reservation is on disk before its `borrow` is sent), publishes them as
//! events and carries out the pool's decisions:
//!
//! - `Lend` → `borrow` (with `wait`) on the agent's link; its reply
//!   confirms the lease (`ok`) or fails the reservation (`error`, the reason
//!   recorded), and the pool tries the next agent;
//! - `Recall` → `return` (with `wait`) on the agent's link; the agent's
//!   report of being home ends the lease;
//! - `Ended` → counted in the metrics.
//!
//! A timer wakes the driver for queue deadlines ([`Pool::next_deadline`]),
//! and every tick to reclaim idle agents, to fail borrows whose reply is
//! overdue, and to forget old ended leases (the store keeps them).
//!
//! On hello the driver reconciles what it remembers with what the agent
//! says: the agent's place wins (it is the authority on where it is), the
//! lender's leases win (it is the authority on leases); every
//! disagreement is logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use control::link::{AgentMessage, LenderMessage};
use control::{Reply, Request, Status, When};
use http::StatusCode;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::Config;
use crate::api::{end_kind, AgentView, LeaseView};
use crate::pool::{
    AgentHello, AgentReport, Changes, Decision, LeaseId, LeaseRequest, LeaseState, Outcome, Place,
    Pool, PoolError,
};
use crate::store::Store;
use crate::tokens::Principal;

/// Ended leases stay in memory this long for `GET /v1/leases`; the store
/// keeps them for good.
const KEEP_ENDED_MS: u64 = 60 * 60 * 1000;
/// A borrow's reply may come this long after its `wait` before the borrow
/// counts as failed.
const REPLY_GRACE: Duration = Duration::from_secs(30);
/// At most this many tokens are remembered after a lookup.
const TOKEN_CACHE: usize = 4096;

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
}

/// An API call and where to send its answer.
#[derive(Debug)]
pub(crate) enum ApiCall {
    Authenticate {
        hash: String,
        reply: oneshot::Sender<Option<Principal>>,
    },
    Lease {
        request: Box<LeaseRequest>,
        reply: oneshot::Sender<Result<(StatusCode, LeaseView), ApiError>>,
    },
    GetLease {
        id: LeaseId,
        client: String,
        reply: oneshot::Sender<Result<LeaseView, ApiError>>,
    },
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
    store: StoreBox,
    links: HashMap<String, Link>,
    /// By (agent, link, request id).
    pending: BTreeMap<(String, u64, u64), Pending>,
    tokens: HashMap<String, Principal>,
    events: broadcast::Sender<Arc<ServerEvent>>,
    metrics: Metrics,
    /// Changes the store refused, retried with the next commit.
    unsaved: Changes,
    reclaim_after: Option<Duration>,
    borrow_wait: Duration,
    tick: Duration,
    next_tick: Instant,
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
    ) -> Self {
        let tick = config.tick.max(Duration::from_millis(10));
        Driver {
            pool,
            store: StoreBox(store),
            links: HashMap::new(),
            pending: BTreeMap::new(),
            tokens: HashMap::new(),
            events,
            metrics: Metrics::default(),
            unsaved: Changes::default(),
            reclaim_after: config.reclaim_after,
            borrow_wait: config.borrow_wait,
            tick,
            next_tick: after(tick),
        }
    }

    /// Applies inputs until `cancel` or until every sender is gone, then
    /// writes the last changes.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>, cancel: CancellationToken) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                () = cancel.cancelled() => break,
                input = inputs.recv() => match input {
                    Some(input) => self.apply(input),
                    None => break,
                },
                () = sleep_until(wake) => self.on_timer(),
            }
            self.settle();
        }
        self.links.clear();
        self.commit();
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

    fn apply(&mut self, input: Input) {
        let now = now_ms();
        match input {
            Input::Api(call) => self.api(call, now),
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
        self.pool.agent_connected(hello, now);
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
            AgentMessage::Status { status } => self.pool.agent_reported(node, report(&status), now),
            AgentMessage::Event { event } => {
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

    fn api(&mut self, call: ApiCall, now: u64) {
        match call {
            ApiCall::Authenticate { hash, reply } => {
                let _ = reply.send(self.authenticate(hash));
            }
            ApiCall::Lease { request, reply } => {
                let client = request.client.clone();
                let result = self.pool.request_lease(*request, now);
                // On disk (and the borrow sent) before the caller hears of it.
                self.settle();
                let answer = match result {
                    Ok(Outcome::Reserved { lease, .. }) => {
                        self.view(lease).map(|v| (StatusCode::CREATED, v))
                    }
                    Ok(Outcome::Queued { lease, .. }) => {
                        self.view(lease).map(|v| (StatusCode::ACCEPTED, v))
                    }
                    Ok(Outcome::Ended { lease, reason }) => Err(ApiError {
                        status: StatusCode::CONFLICT,
                        message: reason.to_string(),
                        lease: self.view(lease).ok().map(Box::new),
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
                };
                if let Ok((status, view)) = &answer {
                    tracing::info!(lease = view.id, %client, state = %view.state, agent = ?view.agent, %status, "lease requested");
                }
                let _ = reply.send(answer);
            }
            ApiCall::GetLease { id, client, reply } => {
                let _ = reply.send(self.own_view(id, &client));
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
            ApiCall::Return {
                id,
                client,
                when,
                reply,
            } => {
                let answer = self.own_view(id, &client).and_then(|_| {
                    self.pool
                        .return_lease(id, when, now)
                        .map_err(|err| match err {
                            PoolError::WrongState { .. } => {
                                ApiError::new(StatusCode::CONFLICT, err.to_string())
                            }
                            other => ApiError::new(StatusCode::NOT_FOUND, other.to_string()),
                        })
                });
                let answer = answer.and_then(|()| {
                    tracing::info!(lease = id, %client, ?when, "lease returned by its client");
                    self.settle();
                    self.view(id)
                });
                let _ = reply.send(answer);
            }
            ApiCall::Agents { reply } => {
                let _ = reply.send(self.pool.agents().map(AgentView::of).collect());
            }
            ApiCall::Metrics { reply } => {
                let _ = reply.send(self.metrics.render(&self.pool, self.links.len()));
            }
        }
    }

    fn authenticate(&mut self, hash: String) -> Option<Principal> {
        if let Some(principal) = self.tokens.get(&hash) {
            return Some(principal.clone());
        }
        match self.store.0.token(&hash) {
            Ok(Some(principal)) => {
                if self.tokens.len() >= TOKEN_CACHE {
                    self.tokens.clear();
                }
                self.tokens.insert(hash, principal.clone());
                Some(principal)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(%err, "token lookup failed");
                None
            }
        }
    }

    fn view(&self, id: LeaseId) -> Result<LeaseView, ApiError> {
        if let Some(lease) = self.pool.lease(id) {
            return Ok(LeaseView::of(lease));
        }
        match self.store.0.lease(id) {
            Ok(Some(lease)) => Ok(LeaseView::of(&lease)),
            Ok(None) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no lease {id}"),
            )),
            Err(err) => {
                tracing::error!(%err, lease = id, "lease lookup failed");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the database failed; see the lender's log",
                ))
            }
        }
    }

    /// The lease if it is `client`'s; another client's lease is "not
    /// found", so that ids tell nothing.
    fn own_view(&self, id: LeaseId, client: &str) -> Result<LeaseView, ApiError> {
        match self.view(id) {
            Ok(view) if view.client == client => Ok(view),
            Ok(_) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no lease {id} of client {client:?}"),
            )),
            Err(err) if err.status == StatusCode::NOT_FOUND => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no lease {id} of client {client:?}"),
            )),
            Err(err) => Err(err),
        }
    }

    // ---- after each input ----

    /// Commits, then carries out decisions until there are none (carrying
    /// one out may fail a borrow, which makes more).
    fn settle(&mut self) {
        loop {
            self.commit();
            let Some(decision) = self.pool.poll_decision() else {
                break;
            };
            self.decide(decision);
        }
    }

    fn commit(&mut self) {
        let changes = self.pool.take_changes();
        if changes.is_empty() && self.unsaved.is_empty() {
            return;
        }
        self.metrics.observe(&changes);
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
        let mut batch = std::mem::take(&mut self.unsaved);
        batch.leases.extend(changes.leases);
        batch.agents.extend(changes.agents);
        batch.audit.extend(changes.audit);
        if let Err(err) = self.store.0.commit(&batch) {
            tracing::error!(%err, "cannot write to the database; retrying with the next change");
            self.unsaved = batch;
        }
    }

    fn decide(&mut self, decision: Decision) {
        match decision {
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
            Decision::Recall { lease, agent, when } => {
                let request = Request::Return {
                    when,
                    wait: Some(self.borrow_wait),
                };
                tracing::info!(lease, %agent, ?when, "sending return");
                self.send(&agent, request, lease, PendingKind::Return);
            }
            Decision::Ended { lease, reason } => {
                tracing::info!(lease, reason = end_kind(&reason), %reason, "lease ended");
                self.metrics.ended(&reason);
            }
        }
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
