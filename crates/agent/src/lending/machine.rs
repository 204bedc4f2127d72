//! The move machine: where the agent is, its lease and the move in
//! progress, as one type without I/O. The supervisor turns I/O completions
//! into [`Event`]s, carries out the [`Action`]s they return and sleeps until
//! [`Machine::next_wake`]; the rules themselves (which order is accepted,
//! when to move) are [`Orders`] and [`Timers`] in `moves`.
//!
//! A move is made before the old place is left (make before break):
//!
//! ```text
//!            decide (Timers)                Connected, Intent::Now
//!   Still ───────────────────▶ Connecting ─────────────────────────┐
//!     ▲  ▲                        │ │ Connected, WhenQuiet          │
//!     │  │ Refused (per phase)    │ ▼                               ▼
//!     │  └────────────────────────┘ Settling ── Census(Quiet) ──▶ Leaving
//!     │                              │  Census(Busy), SETTLE_LIMIT   │  │
//!     │◀──── Abandon, MoveDeferred ──┘                               │  │
//!     │◀──── Abandon, MoveDeferred ── RequestSeen (WhenQuiet) ───────┘  │
//!     │                                                                 │
//!     └──────────── SessionEnded: Bridge + Persist (arrived) ◀──────────┘
//! ```
//!
//! Without a live session (between attempts) a decided move needs no
//! channel kept: it is carried out at once. A borrow is checked (resolve,
//! engine jar, engine started) before it is decided; a failure in any phase
//! leaves the agent where it is with `BorrowFailed` naming the phase.

use std::time::{Duration, Instant};

use control::{EventKind, MovePhase, Phase, ReturnReason};
use tracing::{info, warn};

use crate::departure::Intent;
use crate::lending::moves::{
    Command, Decision, Forced, Limits, Move, Orders, Quietness, Situation, Timers,
};
use crate::lending::Lease;

#[cfg(test)]
mod tests;

/// How long a connected target waits for a fresh count of build processes
/// before the move is put off as if work had started (under load the count
/// can lag the connection).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How long after the handshake a controller's first call is awaited before
/// the move counts as done without it (Jenkins calls at once).
pub const FIRST_CALL_WAIT: Duration = Duration::from_secs(2);

/// Something that happened, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An order from the control socket or the lender link; `id` comes
    /// back in [`Action::Reply`].
    Order {
        /// The driver's handle on the reply channel.
        id: u64,
        /// What is asked.
        command: Command,
    },
    /// The pending borrow's borrower passed its check (its engine is up).
    BorrowerChecked,
    /// Checking the borrower failed in this phase.
    BorrowerFailed {
        /// Where it failed.
        phase: MovePhase,
        /// Why (never a secret).
        reason: String,
    },
    /// The engine started for home ahead of a return is ready.
    EngineReady,
    /// Starting an engine for home failed.
    EngineFailed,
    /// The engine kept for home is gone (it exited): another is started.
    EngineGone,
    /// The move's target was connected beside the live session.
    Connected,
    /// Connecting the move's target failed in this phase (refused or
    /// unreachable).
    Refused {
        /// Where it failed.
        phase: MovePhase,
        /// Why (never a secret).
        reason: String,
    },
    /// A session started (connecting where the agent is).
    SessionStarted,
    /// The live session's channel is up.
    Online,
    /// The live session ended; `fatal` when its controller refused the
    /// agent for good.
    SessionEnded {
        /// The controller refused the agent for good.
        fatal: bool,
    },
    /// The busy signals, as freshly counted.
    Census(Quietness),
    /// The controller sent a request on the channel being left before the
    /// close went out: the bridge kept the channel.
    RequestSeen,
    /// The controller's first call on the new channel was answered, at
    /// this instant.
    FirstCallAnswered(Instant),
    /// [`Machine::next_wake`] was reached.
    Timer,
}

/// Something the driver must do.
// Actions live for one turn of the driver: boxing the orders would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check the borrower (resolve, engine jar, engine) beside the session;
    /// answer with [`Event::BorrowerChecked`] or [`Event::BorrowerFailed`].
    CheckBorrower(control::BorrowRequest),
    /// Drop the checked borrower (its engine with it): the borrow is gone.
    ForgetBorrower,
    /// Start an engine for home; answer with [`Event::EngineReady`] or
    /// [`Event::EngineFailed`].
    WarmEngine,
    /// Connect the move's target beside the live session; answer with
    /// [`Event::Connected`] or [`Event::Refused`].
    Connect(Move),
    /// Send a [`Event::Census`] once the build processes were counted
    /// afresh.
    CountBuilds,
    /// Ask the live session to leave its channel.
    CloseChannel(Intent),
    /// Close the target's fresh channel again, keeping its engine for the
    /// next try (the move was put off or the target connected too late).
    Abandon,
    /// The old place is left: serve the new one, over the channel made
    /// ahead when `prepared`.
    Bridge {
        /// Where to.
        to: Move,
        /// Whether a channel was connected ahead.
        prepared: bool,
    },
    /// Record the agent's place in the state file.
    Persist(Option<Lease>),
    /// Announce an event.
    Report(EventKind),
    /// Show this phase in `status`.
    Phase(Phase),
    /// Show the orders in `status`.
    PublishOrders(Orders),
    /// Show when `idle_return` runs out, unix ms.
    IdleDeadline(u64),
    /// Show the last error in `status`.
    LastError(String),
    /// Answer an order.
    Reply {
        /// From [`Event::Order`].
        id: u64,
        /// What the peer is told.
        answer: Result<String, String>,
    },
}

/// Where the pending borrow's borrower stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Nothing,
    Checking,
    Checked,
}

/// The move in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// None.
    Still,
    /// The target is being connected beside the live session.
    Connecting(Decision),
    /// The target is connected; the move waits for a fresh count.
    Settling(Decision, Instant),
    /// The live channel is being closed.
    Leaving(Decision),
}

/// The agent's place, lease and move in progress.
#[derive(Debug, Clone)]
pub struct Machine {
    lease: Option<Lease>,
    orders: Orders,
    timers: Timers,
    check: Check,
    step: Step,
    /// A session is running (a channel may be kept while moving).
    live: bool,
    /// The live session's channel is up.
    online: bool,
    /// The busy signals, as last counted.
    quiet: Quietness,
    warming: bool,
    /// An engine for home is kept ready.
    warm_ready: bool,
    /// When the move in progress was decided (for `Moved`).
    moved_at: Option<Instant>,
    /// When the new place's channel came up, while its first call is awaited.
    awaiting_since: Option<Instant>,
    /// The last `now` and `now_ms` seen (maps the lease's wall clock).
    clock: (Instant, u64),
}

impl Machine {
    /// A machine at home, or at the borrower of a lease kept in the state
    /// file; a lease that ended while the agent was stopped sends it home
    /// (and the state file is updated).
    pub fn new(
        limits: Limits,
        saved: Option<Lease>,
        now: Instant,
        now_ms: u64,
    ) -> (Self, Vec<Action>) {
        let mut out = Vec::new();
        let lease = match saved {
            Some(lease) if lease.deadline_ms().is_some_and(|end| end <= now_ms) => {
                info!(borrower = %lease.label(), "the lease expired while the agent was stopped: starting at home");
                out.push(Action::Persist(None));
                None
            }
            other => other,
        };
        let machine = Self {
            lease,
            orders: Orders::default(),
            timers: Timers::new(limits, now),
            check: Check::Nothing,
            step: Step::Still,
            live: false,
            online: false,
            quiet: Quietness::Unknown,
            warming: false,
            warm_ready: false,
            moved_at: None,
            awaiting_since: None,
            clock: (now, now_ms),
        };
        (machine, out)
    }

    /// The lease in force (none at home).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The orders accepted and not carried out yet.
    pub fn orders(&self) -> &Orders {
        &self.orders
    }

    /// Whether the new place's first call is awaited (for `status`).
    pub fn awaiting_first_call(&self) -> bool {
        self.awaiting_since.is_some()
    }

    /// Whether an engine for home is kept ready, as far as the machine knows.
    pub fn warm_ready(&self) -> bool {
        self.warm_ready
    }

    /// Whether a decision waits on the busy signals: something is pending
    /// or a lease is in force (the driver then sends fresh counts).
    pub fn watches_quiet(&self) -> bool {
        self.lease.is_some() || self.orders.pending.is_some()
    }

    /// Whether a move is under way.
    #[cfg(test)]
    pub fn moving(&self) -> bool {
        self.step != Step::Still
    }

    /// Takes one event at `now` (`now_ms`: the wall clock, for leases) and
    /// returns what to do, in order.
    pub fn on(&mut self, event: Event, now: Instant, now_ms: u64) -> Vec<Action> {
        self.clock = (now, now_ms);
        let mut out = Vec::new();
        match event {
            Event::Order { id, command } => {
                let (answer, event) = self.orders.take(self.lease.as_ref(), &command, now_ms);
                out.push(Action::PublishOrders(self.orders.clone()));
                out.extend(event.map(Action::Report));
                out.push(Action::Reply { id, answer });
            }
            Event::BorrowerChecked => match self.check {
                Check::Checking => {
                    self.check = Check::Checked;
                    out.push(Action::Report(EventKind::BorrowChecked));
                }
                // Called off while it was checked.
                _ => out.push(Action::ForgetBorrower),
            },
            Event::BorrowerFailed { phase, reason } => {
                if self.check == Check::Checking {
                    self.fail_borrow(phase, reason, &mut out);
                }
            }
            Event::EngineReady => {
                self.warming = false;
                self.warm_ready = true;
            }
            Event::EngineFailed => {
                self.warming = false;
                self.timers.warm_failed(now);
            }
            Event::EngineGone => self.warm_ready = false,
            Event::Connected => self.connected(now, &mut out),
            Event::Refused { phase, reason } => self.refused(phase, reason, now, &mut out),
            Event::SessionStarted => {
                self.live = true;
                out.push(Action::Phase(Phase::Connecting));
            }
            Event::Online => {
                self.online = true;
                self.timers.online(now);
                out.push(Action::Phase(Phase::Online));
                if self.moved_at.is_some() {
                    self.awaiting_since = Some(now);
                }
            }
            Event::SessionEnded { fatal } => self.session_ended(fatal, now, now_ms, &mut out),
            Event::Census(quiet) => {
                self.quiet = quiet;
                if let Step::Settling(decision, until) = &self.step {
                    match quiet {
                        Quietness::Quiet => self.leave(decision.clone(), &mut out),
                        Quietness::Busy => self.defer(&mut out),
                        Quietness::Unknown if now >= *until => self.defer(&mut out),
                        Quietness::Unknown => out.push(Action::CountBuilds),
                    }
                }
            }
            Event::RequestSeen => {
                self.quiet = Quietness::Busy;
                if matches!(&self.step, Step::Leaving(d) if d.intent == Intent::WhenQuiet) {
                    info!("the controller sent work before the close went out: staying");
                    self.defer(&mut out);
                }
            }
            Event::FirstCallAnswered(at) => self.report_moved(Some(at), now, &mut out),
            Event::Timer => {
                if matches!(&self.step, Step::Settling(_, until) if now >= *until) {
                    info!("no fresh count of build processes in time: not leaving yet");
                    self.defer(&mut out);
                }
                if self
                    .awaiting_since
                    .is_some_and(|since| now >= since + FIRST_CALL_WAIT)
                {
                    info!(after = ?FIRST_CALL_WAIT, "the controller sent no call on the new channel: taking it as online");
                    self.report_moved(None, now, &mut out);
                }
            }
        }
        self.advance(now, now_ms, &mut out);
        out
    }

    /// When to send [`Event::Timer`] at the latest, if nothing else happens.
    pub fn next_wake(&self) -> Option<Instant> {
        let (now, now_ms) = self.clock;
        let mut wakes: Vec<Instant> = Vec::with_capacity(3);
        if let Step::Settling(_, until) = &self.step {
            wakes.push(*until);
        }
        wakes.extend(self.awaiting_since.map(|since| since + FIRST_CALL_WAIT));
        // While an engine for home starts no decision is made: its end is
        // an event of its own.
        let deciding = self.step == Step::Still && !self.warming;
        if deciding && (self.lease.is_some() || self.orders.pending.is_some()) {
            let warm_wanted = self.lease.is_some() && !self.warm_ready && !self.warming;
            wakes.extend(self.timers.next_wake(
                now,
                now_ms,
                self.lease.as_ref(),
                self.online,
                warm_wanted,
            ));
        }
        // A deadline already passed that changed nothing waits for another
        // input; waking for it again would spin.
        wakes.into_iter().filter(|&at| at > now).min()
    }

    /// After every event: checks a new borrower, warms an engine for home,
    /// decides a move.
    fn advance(&mut self, now: Instant, now_ms: u64, out: &mut Vec<Action>) {
        if self.step != Step::Still {
            return;
        }
        match (self.orders.pending_borrow(), &self.lease, &self.check) {
            (Some(request), None, Check::Nothing) => {
                info!(borrower = %crate::lending::target_label(&request.target), "checking the borrower before leaving");
                out.push(Action::CheckBorrower(request.clone()));
                self.check = Check::Checking;
            }
            (None, _, Check::Checking | Check::Checked) => {
                self.check = Check::Nothing;
                out.push(Action::ForgetBorrower);
            }
            _ => {}
        }
        if self.online
            && !self.warming
            && self
                .timers
                .wants_warm_home(now, self.lease.is_some(), self.warm_ready)
        {
            self.warming = true;
            out.push(Action::WarmEngine);
        }
        if self.warming || self.timers.gated(now) {
            return;
        }
        if self.orders.pending.is_none() && self.lease.is_none() {
            return;
        }
        let pending = self.orders.pending.as_ref().map(|(command, _)| command);
        let situation = Situation {
            pending,
            lease: self.lease.as_ref(),
            checked: self.check == Check::Checked,
            online: self.online,
            quiet: self.quiet,
        };
        let verdict = self.timers.decide(now, now_ms, situation);
        out.extend(verdict.idle_deadline_ms.map(Action::IdleDeadline));
        match verdict.forced {
            Some(Forced::GraceOver) => warn!("the lease expired and the agent stayed busy through the grace period: leaving anyway"),
            Some(Forced::GaveUp) => warn!("the borrower stayed unreachable: going home"),
            None => {}
        }
        let Some(decision) = verdict.decision else {
            if self.online && self.orders.pending.is_some() {
                out.push(Action::Phase(Phase::Draining));
            }
            return;
        };
        self.moved_at = Some(now);
        self.orders.moving = true;
        out.push(Action::PublishOrders(self.orders.clone()));
        if self.live {
            // Connect the target while this place is still served.
            out.push(Action::Connect(decision.to.clone()));
            self.step = Step::Connecting(decision);
        } else {
            // No channel to keep: go at once.
            self.arrive(decision.to, false, now, now_ms, out);
        }
    }

    fn connected(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Step::Connecting(decision) = &self.step else {
            // Connected for a move that is no more.
            out.push(Action::Abandon);
            return;
        };
        let decision = decision.clone();
        match decision.intent {
            // Whether work started here while the target was being
            // connected is decided on a fresh count.
            Intent::WhenQuiet => {
                self.step = Step::Settling(decision, now + SETTLE_LIMIT);
                out.push(Action::CountBuilds);
            }
            _ => self.leave(decision, out),
        }
    }

    fn refused(&mut self, phase: MovePhase, reason: String, now: Instant, out: &mut Vec<Action>) {
        let Step::Connecting(decision) = &self.step else {
            return;
        };
        let lending = matches!(decision.to, Move::Lend(_));
        self.step = Step::Still;
        self.moved_at = None;
        self.orders.moving = false;
        if lending {
            self.fail_borrow(phase, reason, out);
        } else {
            warn!(%phase, %reason, "home cannot be reached: staying at the borrower for now");
            out.push(Action::LastError(format!("home: {reason}")));
            out.push(Action::PublishOrders(self.orders.clone()));
            self.timers.home_unreachable(now);
        }
        out.push(Action::Phase(if self.online {
            Phase::Online
        } else {
            Phase::Connecting
        }));
    }

    fn session_ended(&mut self, fatal: bool, now: Instant, now_ms: u64, out: &mut Vec<Action>) {
        if self.online {
            self.timers.online(now);
        }
        self.live = false;
        self.online = false;
        self.awaiting_since = None;
        match std::mem::replace(&mut self.step, Step::Still) {
            Step::Leaving(decision) => {
                self.arrive(decision.to, true, now, now_ms, out);
                return;
            }
            Step::Connecting(decision) => {
                // The work ahead is dropped, a borrower's engine with it:
                // it is checked again and the decision made again.
                if matches!(decision.to, Move::Lend(_)) {
                    self.check = Check::Nothing;
                }
                out.push(Action::Abandon);
                self.moved_at = None;
                self.orders.moving = false;
                out.push(Action::PublishOrders(self.orders.clone()));
            }
            Step::Settling(..) => {
                // The target's channel is closed again; its engine is kept.
                out.push(Action::Abandon);
                self.moved_at = None;
                self.orders.moving = false;
                out.push(Action::PublishOrders(self.orders.clone()));
            }
            Step::Still => {}
        }
        if fatal && self.lease.is_some() {
            out.push(Action::LastError(
                "the borrower refused the agent for good".into(),
            ));
            self.arrive(
                Move::Home(ReturnReason::BorrowerGone),
                false,
                now,
                now_ms,
                out,
            );
        }
    }

    /// Online at the target (and quiet here when that was asked): leave.
    fn leave(&mut self, decision: Decision, out: &mut Vec<Action>) {
        out.push(Action::CloseChannel(decision.intent));
        out.push(Action::Phase(Phase::Leaving));
        self.step = Step::Leaving(decision);
    }

    /// The move is put off (work started here): the target's fresh
    /// channel is closed again; a checked borrower stays checked.
    fn defer(&mut self, out: &mut Vec<Action>) {
        self.step = Step::Still;
        self.moved_at = None;
        self.orders.moving = false;
        out.push(Action::Abandon);
        out.push(Action::PublishOrders(self.orders.clone()));
        out.push(Action::Phase(Phase::Draining));
        out.push(Action::Report(EventKind::MoveDeferred));
    }

    fn fail_borrow(&mut self, phase: MovePhase, reason: String, out: &mut Vec<Action>) {
        warn!(%phase, %reason, "the borrow failed; staying here");
        self.orders.pending = None;
        self.check = Check::Nothing;
        out.push(Action::ForgetBorrower);
        out.push(Action::PublishOrders(self.orders.clone()));
        out.push(Action::LastError(format!(
            "borrow failed ({phase}): {reason}"
        )));
        out.push(Action::Report(EventKind::BorrowFailed { phase, reason }));
    }

    /// The old place is left: the new one is recorded and served.
    fn arrive(
        &mut self,
        to: Move,
        prepared: bool,
        now: Instant,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        self.step = Step::Still;
        out.push(Action::Bridge {
            to: to.clone(),
            prepared,
        });
        let home = match to {
            Move::Lend(request) => {
                self.lease = Some(Lease {
                    request,
                    started_ms: now_ms,
                });
                // The checked borrower is the place now.
                self.check = Check::Nothing;
                None
            }
            Move::Home(reason) => {
                self.lease = None;
                Some(reason)
            }
        };
        // The engine that leaves stops its spare too, and the old place's
        // busy signals say nothing of the new one.
        self.warm_ready = false;
        self.quiet = Quietness::Unknown;
        out.push(Action::Persist(self.lease.clone()));
        self.orders.moved(home.is_some());
        out.push(Action::PublishOrders(self.orders.clone()));
        self.timers.arrived(now);
        out.extend(
            self.lease
                .as_ref()
                .and_then(|lease| lease.request.idle_return)
                .map(|idle| Action::IdleDeadline(control::ms_after(now_ms, idle))),
        );
        out.push(Action::Report(match home {
            Some(reason) => EventKind::ReturnedHome { reason },
            None => EventKind::StateChanged,
        }));
    }

    /// The move is done as the new controller sees it.
    fn report_moved(&mut self, answered: Option<Instant>, now: Instant, out: &mut Vec<Action>) {
        let (Some(moved_at), Some(online_at)) = (self.moved_at, self.awaiting_since) else {
            return;
        };
        let since = |t: Instant| {
            u64::try_from(t.saturating_duration_since(moved_at).as_millis()).unwrap_or(u64::MAX)
        };
        let at = answered.unwrap_or(now);
        out.push(Action::Report(EventKind::Moved {
            ms: since(at),
            connected_ms: Some(since(online_at)),
            answered_ms: answered.map(since),
        }));
        self.moved_at = None;
        self.awaiting_since = None;
    }
}
