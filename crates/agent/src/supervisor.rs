//! Keeps the agent connected to where it should be: home, or the borrower
//! it was lent to.
//!
//! One session at a time. Between and during sessions it serves borrow and
//! return commands (queued by the control socket in the [`Hub`]), and
//! decides on its own to go home when a lease expires, when the borrower
//! has been idle for `idle_return`, or when the borrower has been
//! unreachable for `--borrow-give-up`. Moving = ask the session to leave
//! (its channel is closed at the remoting level, so the controller takes
//! the node offline at once; a move that waits for idle is called off if
//! the controller sends work before the close goes out), end the engine,
//! its process group and any build process left behind, record the new
//! place in the state file, connect there. SIGTERM and SIGINT leave the
//! same way, at once. Failed attempts wait with exponential backoff and jitter; home is
//! retried forever (unless `-noReconnect` / `-noReconnectAfter` say
//! otherwise); a FATAL refusal stops the agent at home and sends it home
//! from a borrower.

mod ahead;
mod online;
mod signals;
mod state;

pub use self::signals::shutdown_on_signals;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{EventKind, MovePhase, Phase, ReturnReason};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument as _};

use self::ahead::{ahead, Ahead, Candidate, Settling, SETTLE_LIMIT};
use self::online::{first_call_given_up, mark_online, report, report_moved, FIRST_CALL_WAIT};
use self::state::Supervisor;
use crate::departure::{Departure, Intent};
use crate::engine::busy;
use crate::lending::backoff::Backoff;
use crate::lending::hub::{Hub, Order};
use crate::lending::moves::{Decision, Forced, Limits, Move, Orders, Quietness, Situation, Timers};
use crate::lending::{Lease, StateFile};
use crate::session::{Agent, Continuity, Online, Prepared, Route, SessionError};
use crate::settings::Settings;

/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How often pending moves, leases and idleness are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Time given to processes left behind by builds between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Why the agent stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to (signal), or the session ended with `-noReconnect`.
    Cleanly,
    /// Gave up: a fatal error, or reconnecting was not allowed.
    Failed(anyhow::Error),
}

/// Runs sessions until told to stop or until reconnecting cannot help.
pub async fn run(
    agent: &Agent,
    home_settings: Settings,
    hub: Arc<Hub>,
    state: StateFile,
    backoff: &mut Backoff,
    shutdown: CancellationToken,
) -> Stopped {
    let home = match Route::new(home_settings.clone()) {
        Ok(home) => home,
        Err(err) => return Stopped::Failed(err),
    };
    let Some(inbox) = hub.take_orders() else {
        return Stopped::Failed(anyhow::anyhow!(
            "the agent's orders are already served by another supervisor"
        ));
    };
    let limits = Limits {
        give_up: home_settings.borrow_give_up,
        grace: home_settings.lease_grace,
        warm_engine: home_settings.warm_engine,
    };
    let mut sup = Supervisor {
        agent,
        home_settings,
        home,
        hub,
        state: Arc::new(state),
        lease: None,
        away: None,
        home_continuity: Continuity::default(),
        away_continuity: Continuity::default(),
        timers: Timers::new(limits, Instant::now()),
        orders: Orders::default(),
        inbox,
        candidate: None,
        prepared: None,
        move_started: None,
        abandoning: Vec::new(),
    };
    sup.resume();
    let stopped = sup.serve(backoff, &shutdown).await;
    sup.home_continuity.shutdown().await;
    sup.away_continuity.shutdown().await;
    for closing in sup.abandoning.drain(..) {
        let _ = closing.await;
    }
    stopped
}

impl<'a> Supervisor<'a> {
    /// Picks up where the agent was before a restart.
    fn resume(&mut self) {
        let lease = match self.state.load() {
            Ok(lease) => lease,
            Err(err) => {
                warn!("{err:#}; starting at home");
                None
            }
        };
        let Some(lease) = lease else {
            return;
        };
        if lease
            .deadline_ms()
            .is_some_and(|deadline| deadline <= busy::now_ms())
        {
            info!(borrower = %lease.label(), "the lease expired while the agent was stopped: starting at home");
            if let Err(err) = self.state.save(None) {
                warn!(%err, "cannot update the state file");
            }
            return;
        }
        match lease
            .settings(&self.home_settings)
            .map_err(anyhow::Error::msg)
            .and_then(Route::new)
        {
            Ok(route) => {
                info!(borrower = %lease.label(), node = %lease.request.name, "resuming at the borrower");
                self.away = Some(route);
                self.hub.core().lease = Some(lease.clone());
                self.lease = Some(lease);
            }
            Err(err) => warn!("cannot resume the borrow ({err:#}); starting at home"),
        }
    }

    async fn serve(&mut self, backoff: &mut Backoff, shutdown: &CancellationToken) -> Stopped {
        let mut last_online = Instant::now();
        let mut last_problem: Option<String> = None;
        let mut attempt: u64 = 0;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            attempt += 1;
            let borrowed = self.lease.is_some();
            self.hub.set_phase(Phase::Connecting);
            let departure = Departure::new();
            let mut called_off = departure.watch();
            let went_online = Cell::new(false);
            let online_at: Cell<Option<Instant>> = Cell::new(None);
            let started = Instant::now();
            let mut decided: Option<Decision> = None;
            // The session owns its route and continuity for a while, so the
            // supervisor can prepare the other place beside it.
            let (route, mut continuity) = match (&self.away, borrowed) {
                (Some(away), true) => (away.clone(), std::mem::take(&mut self.away_continuity)),
                _ => (self.home.clone(), std::mem::take(&mut self.home_continuity)),
            };
            let mut checking: Option<Ahead<'a, ()>> = None;
            let mut warming: Option<Ahead<'a, ()>> = None;
            let mut connecting: Option<Ahead<'a, Prepared>> = None;
            let mut ready: Option<(Candidate, Prepared)> = None;
            let mut settling: Option<Settling> = None;
            let result = {
                let hub = self.hub.clone();
                let (agent, state) = (self.agent, self.state.clone());
                let moved_at = self.move_started.take();
                // `moved` is reported once the controller's first call on
                // the new channel is answered (when it shows the node online).
                let mut moved_reported = moved_at.is_none();
                let span = tracing::info_span!(
                    "session",
                    attempt,
                    controller = route.label().as_deref().unwrap_or(""),
                    borrowed
                );
                let session = agent
                    .run_session(
                        &route,
                        &mut continuity,
                        &state,
                        &departure,
                        self.prepared.take(),
                        |online: Online| {
                            went_online.set(true);
                            online_at.set(Some(Instant::now()));
                            if moved_at.is_some() {
                                hub.core().awaiting_first_call = true;
                            }
                            mark_online(&hub, &online);
                        },
                    )
                    .instrument(span);
                tokio::pin!(session);
                loop {
                    tokio::select! {
                        result = &mut session => break result,
                        answered = departure.first_call_answered(), if !moved_reported => {
                            moved_reported = true;
                            if let Some(at) = moved_at {
                                report_moved(&self.hub, at, online_at.get(), Some(answered));
                            }
                        }
                        () = first_call_given_up(online_at.get()), if !moved_reported && online_at.get().is_some() => {
                            moved_reported = true;
                            if let Some(at) = moved_at {
                                info!(after = ?FIRST_CALL_WAIT, "the controller sent no call on the new channel: taking it as online");
                                report_moved(&self.hub, at, online_at.get(), None);
                            }
                        }
                        (candidate, checked) = ahead(&mut checking) => {
                            checking = None;
                            match checked {
                                Ok(()) => self.borrow_checked(candidate),
                                Err(err) => self.borrow_failed(&err, candidate).await,
                            }
                        }
                        (candidate, warmed) = ahead(&mut warming) => {
                            warming = None;
                            self.home_continuity = candidate.continuity;
                            match warmed {
                                Ok(()) => info!("an engine for home is ready"),
                                Err(err) => {
                                    debug!(%err, "cannot start an engine for home yet");
                                    self.timers.warm_failed(Instant::now());
                                }
                            }
                        }
                        (candidate, connected) = ahead(&mut connecting) => {
                            connecting = None;
                            let intent = decided.as_ref().map(|d| d.intent);
                            let lending = matches!(decided.as_ref().map(|d| &d.to), Some(Move::Lend(_)));
                            match (connected, intent) {
                                // Whether work started here while the target
                                // was being connected is decided below, on a
                                // fresh count of build processes.
                                (Ok(prepared), Some(Intent::WhenQuiet)) => {
                                    settling = Some(Settling {
                                        candidate,
                                        prepared,
                                        until: Instant::now() + SETTLE_LIMIT,
                                    });
                                }
                                (Ok(prepared), Some(intent)) => {
                                    // Online at the target: now leave here.
                                    departure.request(intent);
                                    self.hub.set_phase(Phase::Leaving);
                                    ready = Some((candidate, prepared));
                                }
                                (Ok(prepared), None) => {
                                    self.abandoning.push(agent.abandon(prepared, &mut self.home_continuity));
                                }
                                (Err(err), _) => {
                                    decided = None;
                                    self.set_moving(false);
                                    match lending {
                                        true => self.borrow_failed(&err, candidate).await,
                                        false => {
                                            warn!(%err, "home cannot be reached: staying at the borrower for now");
                                            self.hub.core().last_error = Some(format!("home: {err}"));
                                            self.home_continuity = candidate.continuity;
                                            self.timers.home_unreachable(Instant::now());
                                        }
                                    }
                                    self.hub.set_phase(if went_online.get() { Phase::Online } else { Phase::Connecting });
                                }
                            }
                        }
                        Some(order) = self.inbox.recv() => self.take_order(order),
                        _ = tick.tick() => self.hub.sample_rates(),
                        _ = called_off.changed() => {}
                        () = shutdown.cancelled(), if departure.intent() != Intent::Now => {
                            departure.request(Intent::Now);
                            self.hub.set_phase(Phase::Leaving);
                            continue;
                        }
                    }
                    if let Some(pending) = settling.take() {
                        let lending =
                            matches!(decided.as_ref().map(|d| &d.to), Some(Move::Lend(_)));
                        match self.hub.quiet_to_move() {
                            Quietness::Unknown if Instant::now() < pending.until => {
                                settling = Some(pending)
                            }
                            Quietness::Quiet => {
                                // Online at the target and quiet here: now leave.
                                departure.request(Intent::WhenQuiet);
                                self.hub.set_phase(Phase::Leaving);
                                ready = Some((pending.candidate, pending.prepared));
                            }
                            // Work started here while the target was being
                            // connected (or still no count to tell): this
                            // place keeps the agent for now.
                            Quietness::Busy | Quietness::Unknown => {
                                info!("work started while the target was being connected: not leaving yet");
                                self.defer_prepared(pending, lending);
                                decided = None;
                            }
                        }
                    }
                    if ready.is_some() && departure.intent() == Intent::Stay {
                        // The bridge called the move off: work arrived first.
                        // The target's fresh channel is closed again; a
                        // borrower stays checked for the next decision.
                        if let Some((candidate, prepared)) = ready.take() {
                            let mut candidate = candidate;
                            self.abandoning
                                .push(self.agent.abandon(prepared, &mut candidate.continuity));
                            match decided.as_ref().map(|d| &d.to) {
                                Some(Move::Lend(_)) => self.candidate = Some(candidate),
                                _ => self.home_continuity = candidate.continuity,
                            }
                        }
                        decided = None;
                        self.set_moving(false);
                        self.hub.set_phase(Phase::Draining);
                        self.hub.emit(EventKind::MoveDeferred);
                    }
                    if decided.is_none() {
                        self.track_borrow(&mut checking);
                    }
                    if decided.is_none() && warming.is_none() && went_online.get() {
                        self.warm_home(&mut warming);
                    }
                    self.publish_warm_engine();
                    let gated = self.timers.gated(Instant::now());
                    if decided.is_none()
                        && connecting.is_none()
                        && ready.is_none()
                        && warming.is_none()
                        && !gated
                    {
                        decided = self.decide(went_online.get());
                        if let Some(decision) = &decided {
                            self.set_moving(true);
                            let candidate = match &decision.to {
                                Move::Lend(_) => self.candidate.take(),
                                Move::Home(_) => Some(Candidate {
                                    route: self.home.clone(),
                                    continuity: std::mem::take(&mut self.home_continuity),
                                }),
                            };
                            if let Some(mut candidate) = candidate {
                                // Connect the target while this place is still served.
                                let (agent, state) = (self.agent, self.state.clone());
                                self.abandoning.retain(|closing| !closing.is_finished());
                                let closing = std::mem::take(&mut self.abandoning);
                                connecting = Some(Box::pin(async move {
                                    for closed in closing {
                                        let _ = closed.await;
                                    }
                                    let connected = agent
                                        .connect(
                                            &candidate.route,
                                            &mut candidate.continuity,
                                            &state,
                                        )
                                        .await;
                                    (candidate, connected)
                                }));
                            } else {
                                // No live channel to keep (the borrower is gone): just go.
                                departure.request(decision.intent);
                                self.hub.set_phase(Phase::Leaving);
                            }
                        } else if went_online.get() && self.orders.pending.is_some() {
                            self.hub.set_phase(Phase::Draining);
                        }
                    }
                }
            };
            // A candidate still being checked or connected when the session
            // ended is dropped (its engine with it); the decision is made again.
            drop(checking);
            drop(connecting);
            drop(settling);
            drop(warming);
            if borrowed {
                self.away_continuity = continuity;
            } else {
                self.home_continuity = continuity;
            }
            let online = went_online.get();
            {
                let mut core = self.hub.core();
                core.engine_pid = None;
                core.awaiting_first_call = false;
                // Where it connects next (status says "serves or is
                // connecting to"): never "nowhere" in the middle of a move.
                core.controller_url = match &core.lease {
                    Some(lease) => Some(crate::lending::target_label(&lease.request.target)),
                    None => core.home_url.clone(),
                };
            }
            if online {
                last_online = Instant::now();
                last_problem = None;
                self.timers.online(Instant::now());
                if started.elapsed() >= STABLE {
                    backoff.reset();
                }
            }
            if shutdown.is_cancelled() {
                return Stopped::Cleanly;
            }
            if let Some(decided) = decided {
                match ready {
                    Some((candidate, prepared)) => {
                        self.apply(decided.to, Some(candidate), Some(prepared), backoff)
                            .await;
                        continue;
                    }
                    None if matches!(decided.to, Move::Home(ReturnReason::BorrowerGone)) => {
                        self.apply(decided.to, None, None, backoff).await;
                        continue;
                    }
                    // The session ended on its own before the target was ready.
                    None => self.set_moving(false),
                }
            }
            match result {
                Ok(end) => {
                    info!(?end, "disconnected");
                    if !borrowed && self.home_settings.no_reconnect {
                        return Stopped::Cleanly;
                    }
                }
                Err(err) if err.is_fatal() && borrowed => {
                    error!(%err, "the borrower refused the agent for good: going home");
                    self.hub.core().last_error = Some(err.to_string());
                    self.apply(Move::Home(ReturnReason::BorrowerGone), None, None, backoff)
                        .await;
                    continue;
                }
                Err(err) if err.is_fatal() => {
                    error!(%err, "giving up");
                    return Stopped::Failed(err.into());
                }
                Err(err) => {
                    report(&err, online, &mut last_problem);
                    self.hub.core().last_error = Some(err.to_string());
                    self.hub.emit(EventKind::Error {
                        message: err.to_string(),
                    });
                    if !borrowed && self.home_settings.no_reconnect {
                        return Stopped::Failed(
                            anyhow::Error::new(err).context("-noReconnect is set"),
                        );
                    }
                }
            }
            if let (false, Some(limit)) = (borrowed, self.home_settings.no_reconnect_after) {
                if last_online.elapsed() >= limit {
                    return Stopped::Failed(anyhow::anyhow!(
                        "not connected for {}; giving up as -noReconnectAfter says",
                        humantime::format_duration(limit)
                    ));
                }
            }
            // Wait before the next attempt, still serving commands.
            self.hub.set_phase(Phase::BackingOff);
            let delay = backoff.next_delay();
            info!(delay = %humantime::format_duration(Duration::from_millis(control::duration_ms(delay))), "reconnecting");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = shutdown.cancelled() => return Stopped::Cleanly,
                    Some(order) = self.inbox.recv() => self.take_order(order),
                    _ = tick.tick() => {}
                }
                // No live channel here: a borrower is checked inline, then
                // the agent goes (there is nothing to keep serving).
                let mut checking = None;
                self.track_borrow(&mut checking);
                if let Some(mut work) = checking {
                    let (candidate, checked) = work.as_mut().await;
                    match checked {
                        Ok(()) => self.borrow_checked(candidate),
                        Err(err) => self.borrow_failed(&err, candidate).await,
                    }
                }
                let decided = self.decide(false);
                if let Some(decided) = decided {
                    self.set_moving(true);
                    let candidate = match decided.to {
                        Move::Lend(_) => self.candidate.take(),
                        Move::Home(_) => None,
                    };
                    self.apply(decided.to, candidate, None, backoff).await;
                    break;
                }
            }
        }
    }

    /// An order from the control socket or the lender link: accepted or
    /// refused by the move rules, published for `status`, answered.
    fn take_order(&mut self, order: Order) {
        let (reply, event) = self
            .orders
            .take(self.lease.as_ref(), &order.command, busy::now_ms());
        self.publish_orders();
        if let Some(event) = event {
            self.hub.emit(event);
        }
        // The peer may have gone meanwhile; the order stands.
        let _ = order.reply.send(reply);
    }

    /// Shows the orders in `status`.
    fn publish_orders(&self) {
        self.hub.core().orders = self.orders.clone();
    }

    /// Whether to move now ([`Timers::decide`] on the pending order, the
    /// lease and the busy signals).
    fn decide(&mut self, online: bool) -> Option<Decision> {
        let pending = self.orders.pending.clone();
        if pending.is_none() && self.lease.is_none() {
            // At home with nothing asked: no need to look at /proc.
            return None;
        }
        let situation = Situation {
            pending: pending.as_ref().map(|(command, _)| command),
            lease: self.lease.as_ref(),
            checked: self.candidate.is_some(),
            online,
            quiet: self.hub.quiet_to_move(),
        };
        let verdict = self
            .timers
            .decide(Instant::now(), busy::now_ms(), situation);
        if let Some(idle_deadline_ms) = verdict.idle_deadline_ms {
            self.hub.core().idle_deadline_ms = Some(idle_deadline_ms);
        }
        match (verdict.forced, &self.lease) {
            (Some(Forced::GraceOver), _) => warn!(
                grace = %humantime::format_duration(self.home_settings.lease_grace),
                "the lease expired and the agent stayed busy through the grace period: leaving anyway"
            ),
            (Some(Forced::GaveUp), Some(lease)) => warn!(
                borrower = %lease.label(),
                after = %humantime::format_duration(self.home_settings.borrow_give_up),
                "the borrower stayed unreachable: going home"
            ),
            _ => {}
        }
        verdict.decision
    }

    /// Closes the target's fresh channel again (a move put off: work
    /// started here) and keeps what it was connected with for the next try.
    fn defer_prepared(&mut self, pending: Settling, lending: bool) {
        let Settling {
            mut candidate,
            prepared,
            ..
        } = pending;
        self.abandoning
            .push(self.agent.abandon(prepared, &mut candidate.continuity));
        if lending {
            self.candidate = Some(candidate);
        } else {
            self.home_continuity = candidate.continuity;
        }
        self.set_moving(false);
        self.hub.set_phase(Phase::Draining);
        self.hub.emit(EventKind::MoveDeferred);
    }

    /// Records that a move is under way (from now) or not, for the `moved`
    /// event and for orders that arrive meanwhile.
    fn set_moving(&mut self, moving: bool) {
        self.move_started = moving.then(Instant::now);
        self.orders.moving = moving;
        self.publish_orders();
    }

    /// Starts checking the borrower of a newly pending borrow, and forgets
    /// a checked borrower whose borrow was cancelled.
    fn track_borrow(&mut self, checking: &mut Option<Ahead<'a, ()>>) {
        let pending = self.orders.pending_borrow().cloned();
        let Some(request) = pending.filter(|_| self.lease.is_none()) else {
            // Nothing to check (or the borrow was called off): drop it.
            self.candidate = None;
            return;
        };
        if checking.is_some() || self.candidate.is_some() {
            return;
        }
        let lease = Lease {
            request,
            started_ms: busy::now_ms(),
        };
        let route = match lease
            .settings(&self.home_settings)
            .map_err(anyhow::Error::msg)
            .and_then(Route::new)
        {
            Ok(route) => route,
            Err(err) => {
                let reason = format!("{err:#}");
                self.fail_borrow(MovePhase::Config, reason);
                return;
            }
        };
        info!(borrower = %lease.label(), "checking the borrower before leaving");
        let mut candidate = Candidate {
            route,
            continuity: Continuity::default(),
        };
        let (agent, warm) = (self.agent, self.home_settings.warm_engine);
        *checking = Some(Box::pin(async move {
            let checked = agent
                .check(&candidate.route, &mut candidate.continuity, warm)
                .await;
            (candidate, checked)
        }));
    }

    /// While borrowed, starts an engine for home (resolve, jar, engine) so
    /// that going home costs only a handshake.
    fn warm_home(&mut self, warming: &mut Option<Ahead<'a, ()>>) {
        let wanted = self.timers.wants_warm_home(
            Instant::now(),
            self.lease.is_some(),
            self.home_continuity.spare_pid().is_some(),
        );
        if !wanted {
            return;
        }
        let mut candidate = Candidate {
            route: self.home.clone(),
            continuity: std::mem::take(&mut self.home_continuity),
        };
        let agent = self.agent;
        *warming = Some(Box::pin(async move {
            let warmed = agent
                .check(&candidate.route, &mut candidate.continuity, true)
                .await;
            (candidate, warmed)
        }));
    }

    /// Shows in `status` the engine kept for the next move, if any.
    fn publish_warm_engine(&mut self) {
        let warm = if self.lease.is_some() {
            let label = self.home.label();
            self.home_continuity.spare_pid().map(|pid| (pid, label))
        } else {
            self.candidate.as_mut().and_then(|candidate| {
                let label = candidate.route.label();
                candidate.continuity.spare_pid().map(|pid| (pid, label))
            })
        };
        self.hub.core().warm_engine = warm;
    }

    /// The pending borrow's target passed its check.
    fn borrow_checked(&mut self, candidate: Candidate) {
        info!(
            borrower = candidate.route.label().unwrap_or_default(),
            "the borrower is reachable and its engine is ready"
        );
        self.candidate = Some(candidate);
        self.hub.emit(EventKind::BorrowChecked);
    }

    /// A borrow that cannot be carried out: the agent stays where it is.
    /// The candidate's engine, which never served, is dropped (its process
    /// group killed) rather than stopped gracefully, so the live session's
    /// bridge is not held up.
    async fn borrow_failed(&mut self, err: &SessionError, candidate: Candidate) {
        drop(candidate);
        self.fail_borrow(err.phase(), err.to_string());
    }

    fn fail_borrow(&mut self, phase: MovePhase, reason: String) {
        error!(%phase, %reason, "the borrow failed; staying here");
        self.orders.pending = None;
        {
            let mut core = self.hub.core();
            core.orders = self.orders.clone();
            core.last_error = Some(format!("borrow failed ({phase}): {reason}"));
        }
        self.candidate = None;
        self.hub.emit(EventKind::BorrowFailed { phase, reason });
    }

    /// Carries out a move once the old session is over.
    async fn apply(
        &mut self,
        decided: Move,
        candidate: Option<Candidate>,
        prepared: Option<Prepared>,
        backoff: &mut Backoff,
    ) {
        let leaving = self.lease.is_some();
        // The engine that leaves stops its spare too: the next place runs
        // another controller's engine.
        if leaving {
            self.away_continuity.shutdown().await;
        } else {
            self.home_continuity.shutdown().await;
        }
        let left =
            crate::engine::builds::end_leftovers(&crate::engine::live_engines(), LEFTOVER_GRACE)
                .await;
        if left > 0 {
            warn!(processes = left, "ended processes that builds left running");
        }
        let returned = match &decided {
            Move::Home(reason) => Some(*reason),
            Move::Lend(_) => None,
        };
        match decided {
            Move::Lend(request) => {
                let lease = Lease {
                    request,
                    started_ms: busy::now_ms(),
                };
                let route = match candidate {
                    Some(candidate) => {
                        self.away_continuity = candidate.continuity;
                        Ok(candidate.route)
                    }
                    None => lease
                        .settings(&self.home_settings)
                        .map_err(anyhow::Error::msg)
                        .and_then(Route::new),
                };
                match route {
                    Ok(route) => {
                        info!(borrower = %lease.label(), node = %lease.request.name, lease = ?lease.request.lease, "lent");
                        self.away = Some(route);
                        self.lease = Some(lease);
                        self.prepared = prepared;
                    }
                    Err(err) => {
                        error!("cannot go to the borrower: {err:#}; staying home");
                        self.hub.core().last_error = Some(format!("{err:#}"));
                    }
                }
            }
            Move::Home(reason) => {
                info!(?reason, "returning home");
                if let Some(candidate) = candidate {
                    self.home_continuity = candidate.continuity;
                }
                self.prepared = prepared;
                self.lease = None;
                self.away = None;
            }
        }
        if let Err(err) = self.state.save(self.lease.as_ref()) {
            error!(%err, path = %self.state.path().display(), "cannot record the agent's place in the state file");
        }
        self.orders.moved(returned.is_some());
        {
            let mut core = self.hub.core();
            core.lease = self.lease.clone();
            core.orders = self.orders.clone();
            core.idle_deadline_ms = self
                .lease
                .as_ref()
                .and_then(|lease| lease.request.idle_return)
                .map(|idle| control::ms_after(busy::now_ms(), idle));
            core.since_ms = busy::now_ms();
        }
        self.timers.arrived(Instant::now());
        backoff.reset();
        if let Some(reason) = returned {
            self.hub.emit(EventKind::ReturnedHome { reason });
        } else {
            self.hub.emit(EventKind::StateChanged);
        }
    }
}
