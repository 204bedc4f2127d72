//! The rules of moving, without I/O: which orders are accepted, when the
//! agent moves and where to. Time is passed in (`now` for timers, `now_ms`
//! for the lease's wall-clock deadline), so every rule is tested on
//! simulated time; the supervisor carries out what these decide.
//!
//! ```text
//!            borrow (checked) + quiet, or now
//!   home ───────────────────────────────────▶ lent to X
//!    ▲                                            │
//!    │  return + quiet, or now                    │
//!    │  lease over + quiet (or past its grace)    │
//!    │  idle for idle_return                      │
//!    │  X unreachable for --borrow-give-up        │
//!    └────────────────────────────────────────────┘
//! ```
//!
//! A borrow that arrives while the agent goes home waits in `next_borrow`
//! and becomes the pending order once home. A move that waits for quiet is
//! decided only on a fresh count ([`Quietness::Quiet`]); the bridge may
//! still call it off when the controller sends work first.

use std::time::{Duration, Instant};

use control::{BorrowRequest, EventKind, ReturnReason, When};

use crate::departure::Intent;
use crate::lending::{target_label, Lease};

/// A move asked for on the control socket or the lender link, waiting to be
/// carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Go to this borrower (when: `request.when`).
    Borrow(BorrowRequest),
    /// Go home.
    Return(When),
}

/// Whether the agent may leave now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quietness {
    /// A request in flight, a build process, or recent traffic.
    Busy,
    /// None of those, on a fresh count.
    Quiet,
    /// None of those, but the count of build processes is too old to trust.
    Unknown,
}

/// Where a move goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// To this borrower.
    Lend(BorrowRequest),
    /// Home, for this reason.
    Home(ReturnReason),
}

/// A move, and whether it waits for quiet (and can be called off by work
/// arriving) or happens whatever the channel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where to.
    pub to: Move,
    /// How the old channel is left.
    pub intent: Intent,
}

impl Decision {
    fn new(to: Move, when: When) -> Self {
        let intent = match when {
            When::Now => Intent::Now,
            When::Idle => Intent::WhenQuiet,
        };
        Self { to, intent }
    }
}

/// An order accepted: what to tell the peer, and whether anything changed
/// (a repeat of an order already in force changes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// What will happen.
    pub message: String,
    /// Whether the order changed what is pending.
    pub changed: bool,
}

fn changed(message: String) -> Accepted {
    Accepted {
        message,
        changed: true,
    }
}

fn unchanged(message: String) -> Accepted {
    Accepted {
        message,
        changed: false,
    }
}

/// The orders: what is pending, what waits behind a move home, and whether
/// a move is under way. Shared by the control socket and the lender link
/// (which accept orders) and the supervisor (which carries them out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orders {
    /// A move accepted and waiting (for its borrower's check, for idle).
    pub pending: Option<(Command, u64)>,
    /// A borrow accepted while going home, and when: pending once home.
    pub next_borrow: Option<(BorrowRequest, u64)>,
    /// A move is under way (decided, the target being connected or the old
    /// channel closed): orders that arrive now are queued behind it.
    pub moving: bool,
}

impl Orders {
    /// Accepts or refuses a borrow, given the lease in force; the message
    /// says what will happen. `request` must be valid and carry its secret.
    pub fn borrow(
        &mut self,
        lease: Option<&Lease>,
        request: &BorrowRequest,
        now_ms: u64,
    ) -> Result<Accepted, String> {
        let label = target_label(&request.target);
        // On the way home (a return asked for, or the lease ending by
        // itself; a lent agent moves nowhere else): queued, carried out
        // from home.
        let returning = lease.is_some()
            && (self.moving || matches!(self.pending, Some((Command::Return(_), _))));
        if returning {
            if self.next_borrow.as_ref().is_some_and(|(queued, _)| {
                queued.target == request.target && queued.name == request.name
            }) {
                return Ok(unchanged(format!(
                    "already queued to go to {label} once home"
                )));
            }
            self.next_borrow = Some((request.clone(), now_ms));
            return Ok(changed(format!("accepted: will go to {label} once home")));
        }
        if let Some(lease) = lease {
            if lease.same_as(request) {
                return Ok(unchanged(format!("already lent to {label}")));
            }
            return Err(format!(
                "already lent to {} as {}; return it first",
                lease.label(),
                lease.request.name
            ));
        }
        match &self.pending {
            Some((Command::Borrow(pending), _))
                if pending.target == request.target
                    && pending.name == request.name
                    && request.when == When::Idle =>
            {
                return Ok(unchanged(format!("already waiting to go to {label}")));
            }
            Some((Command::Borrow(pending), _))
                if pending.target != request.target || pending.name != request.name =>
            {
                return Err(format!(
                    "already waiting to go to {}; return first to cancel it",
                    target_label(&pending.target)
                ))
            }
            _ => {}
        }
        self.pending = Some((Command::Borrow(request.clone()), now_ms));
        Ok(changed(match request.when {
            When::Now => format!("accepted: leaving for {label} now"),
            When::Idle => format!("accepted: will go to {label} when idle"),
        }))
    }

    /// Accepts or refuses a return, given the lease in force.
    pub fn give_back(
        &mut self,
        lease: Option<&Lease>,
        when: When,
        now_ms: u64,
    ) -> Result<String, String> {
        let pending_borrow = matches!(self.pending, Some((Command::Borrow(_), _)));
        // A return cancels a borrow queued behind the move home.
        self.next_borrow = None;
        if lease.is_none() && !pending_borrow {
            return Err("not lent: the agent is at home".into());
        }
        self.pending = if lease.is_some() || self.moving {
            // Borrowed, or on the way to the borrower: the return follows
            // once there.
            Some((Command::Return(when), now_ms))
        } else {
            // Cancels a borrow still waiting for idle.
            None
        };
        Ok(match when {
            When::Now => "accepted: returning home now".into(),
            When::Idle => "accepted: will return home when idle".into(),
        })
    }

    /// Takes an order: the answer for the peer, and the event to announce
    /// (none for a repeat that changed nothing, or a refusal).
    pub fn take(
        &mut self,
        lease: Option<&Lease>,
        command: &Command,
        now_ms: u64,
    ) -> (Result<String, String>, Option<EventKind>) {
        match command {
            Command::Borrow(request) => match self.borrow(lease, request, now_ms) {
                Ok(a) => (
                    Ok(a.message),
                    a.changed.then_some(EventKind::BorrowAccepted),
                ),
                Err(refused) => (Err(refused), None),
            },
            Command::Return(when) => match self.give_back(lease, *when, now_ms) {
                Ok(message) => (Ok(message), Some(EventKind::ReturnAccepted)),
                Err(refused) => (Err(refused), None),
            },
        }
    }

    /// A move was carried out: the order it served is done; one that
    /// arrived during the move (a return while going to the borrower)
    /// stays, and a borrow queued behind a move home becomes pending.
    pub fn moved(&mut self, home: bool) {
        let done = matches!(
            (&self.pending, home),
            (Some((Command::Borrow(_), _)), false) | (Some((Command::Return(_), _)), true)
        );
        if done {
            self.pending = None;
        }
        if home {
            if let Some((request, since_ms)) = self.next_borrow.take() {
                self.pending = Some((Command::Borrow(request), since_ms));
            }
        }
        self.moving = false;
    }

    /// The pending borrow's request, if any.
    pub fn pending_borrow(&self) -> Option<&BorrowRequest> {
        match &self.pending {
            Some((Command::Borrow(request), _)) => Some(request),
            _ => None,
        }
    }
}

/// Time limits of the decisions, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A borrower unreachable this long sends the agent home.
    pub give_up: Duration,
    /// A lease past its end waits this long for work to end.
    pub grace: Duration,
    /// Whether engines are started ahead of moves.
    pub warm_engine: bool,
}

/// What a decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The pending order.
    pub pending: Option<&'a Command>,
    /// The lease in force.
    pub lease: Option<&'a Lease>,
    /// Whether the pending borrow's borrower was checked.
    pub checked: bool,
    /// Whether the agent is online where it is.
    pub online: bool,
    /// The busy signals.
    pub quiet: Quietness,
}

/// What a decision found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The move to make, if any.
    pub decision: Option<Decision>,
    /// When `idle_return` runs out, unix ms (for `status`).
    pub idle_deadline_ms: Option<u64>,
    /// Why the agent leaves without waiting, if it does (for the log).
    pub forced: Option<Forced>,
}

/// A move home that happens whatever the agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// The lease ended and the agent stayed busy through its grace.
    GraceOver,
    /// The borrower stayed unreachable for `--borrow-give-up`.
    GaveUp,
}

/// The timers of moving: how long the agent has been idle, offline, past
/// its lease, and when a failed step may be tried again.
#[derive(Debug, Clone)]
pub struct Timers {
    limits: Limits,
    /// When the agent was last seen busy (for `idle_return`).
    idle_since: Instant,
    /// Since when the current place has had no live session (for give-up).
    offline_since: Instant,
    /// When a lease expired while the agent was busy.
    lease_expired_at: Option<Instant>,
    /// No move is tried before this (after connecting ahead failed).
    retry_move_at: Option<Instant>,
    /// No engine for home is started before this (after that failed).
    warm_retry_at: Option<Instant>,
}

/// How long to wait before trying again to connect home ahead of a return
/// that failed (the agent stays where it is meanwhile).
pub const RETRY_MOVE: Duration = Duration::from_secs(5);
/// How long to wait before trying again to start an engine for home.
pub const WARM_RETRY: Duration = Duration::from_secs(30);

impl Timers {
    /// Fresh timers at `now`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            idle_since: now,
            offline_since: now,
            lease_expired_at: None,
            retry_move_at: None,
            warm_retry_at: None,
        }
    }

    /// Whether to move now. A borrow moves only once its borrower was
    /// checked; a move that waits for quiet only on [`Quietness::Quiet`].
    pub fn decide(&mut self, now: Instant, now_ms: u64, s: Situation<'_>) -> Verdict {
        let mut verdict = Verdict::default();
        if s.pending.is_none() && s.lease.is_none() {
            // At home with nothing asked.
            return verdict;
        }
        // Not known to be quiet counts as busy, for idleness too.
        let busy = s.quiet != Quietness::Quiet;
        if busy {
            self.idle_since = now;
        }
        match s.pending {
            Some(Command::Borrow(request))
                if s.checked && s.lease.is_none() && (request.when == When::Now || !busy) =>
            {
                verdict.decision = Some(Decision::new(Move::Lend(request.clone()), request.when));
                return verdict;
            }
            Some(Command::Return(when)) if s.lease.is_some() && (*when == When::Now || !busy) => {
                verdict.decision = Some(Decision::new(Move::Home(ReturnReason::Requested), *when));
                return verdict;
            }
            _ => {}
        }
        let Some(lease) = s.lease else {
            return verdict;
        };
        if let Some(idle) = lease.request.idle_return {
            let left = idle.saturating_sub(now.duration_since(self.idle_since));
            verdict.idle_deadline_ms = Some(control::ms_after(now_ms, left));
        }
        if lease
            .deadline_ms()
            .is_some_and(|deadline| deadline <= now_ms)
        {
            if !busy {
                verdict.decision = Some(Decision::new(
                    Move::Home(ReturnReason::LeaseExpired),
                    When::Idle,
                ));
                return verdict;
            }
            let expired = *self.lease_expired_at.get_or_insert(now);
            if now.duration_since(expired) >= self.limits.grace {
                verdict.forced = Some(Forced::GraceOver);
                verdict.decision = Some(Decision::new(
                    Move::Home(ReturnReason::LeaseExpired),
                    When::Now,
                ));
                return verdict;
            }
        }
        if !s.online && now.duration_since(self.offline_since) >= self.limits.give_up {
            verdict.forced = Some(Forced::GaveUp);
            verdict.decision = Some(Decision::new(
                Move::Home(ReturnReason::BorrowerGone),
                When::Now,
            ));
            return verdict;
        }
        if let Some(idle) = lease.request.idle_return {
            if s.online && now.duration_since(self.idle_since) >= idle {
                verdict.decision = Some(Decision::new(Move::Home(ReturnReason::Idle), When::Idle));
            }
        }
        verdict
    }

    /// The live session went online, or ended after being online: the
    /// place counts as reachable from here.
    pub fn online(&mut self, now: Instant) {
        self.offline_since = now;
    }

    /// Connecting home ahead of a return failed: the agent stays where it
    /// is and tries the move again after [`RETRY_MOVE`].
    pub fn home_unreachable(&mut self, now: Instant) {
        self.retry_move_at = Some(now + RETRY_MOVE);
    }

    /// Whether moves are put off after connecting home failed.
    pub fn gated(&self, now: Instant) -> bool {
        self.retry_move_at.is_some_and(|at| now < at)
    }

    /// Starting an engine for home failed: tried again after [`WARM_RETRY`].
    pub fn warm_failed(&mut self, now: Instant) {
        self.warm_retry_at = Some(now + WARM_RETRY);
    }

    /// Whether to start an engine for home now: lent, warm engines wanted,
    /// none kept yet, and no recent failure.
    pub fn wants_warm_home(&self, now: Instant, lent: bool, have_spare: bool) -> bool {
        self.limits.warm_engine
            && lent
            && !have_spare
            && self.warm_retry_at.is_none_or(|at| now >= at)
    }

    /// The earliest time at which [`Timers::decide`] or
    /// [`Timers::wants_warm_home`] may answer differently without any other
    /// input: a retry allowed again, a lease ending (its wall-clock deadline
    /// mapped onto `now`), its grace running out, the give-up or idle time
    /// reached. Waking early is harmless (the rules are asked again); waking
    /// late is not, so every deadline counts.
    pub fn next_wake(
        &self,
        now: Instant,
        now_ms: u64,
        lease: Option<&Lease>,
        online: bool,
        warm_wanted: bool,
    ) -> Option<Instant> {
        let mut wakes = Vec::with_capacity(6);
        wakes.extend(self.retry_move_at.filter(|&at| at > now));
        if warm_wanted && self.limits.warm_engine {
            wakes.extend(self.warm_retry_at.filter(|&at| at > now));
        }
        if let Some(lease) = lease {
            match (lease.deadline_ms(), self.lease_expired_at) {
                (_, Some(expired)) => wakes.push(expired + self.limits.grace),
                (Some(deadline), None) => {
                    wakes.push(now + Duration::from_millis(deadline.saturating_sub(now_ms)))
                }
                (None, None) => {}
            }
            if !online {
                wakes.push(self.offline_since + self.limits.give_up);
            }
            if let (true, Some(idle)) = (online, lease.request.idle_return) {
                wakes.push(self.idle_since + idle);
            }
        }
        wakes.into_iter().min()
    }

    /// Arrived at a new place: every timer starts over.
    pub fn arrived(&mut self, now: Instant) {
        self.lease_expired_at = None;
        self.idle_since = now;
        self.offline_since = now;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use control::Target;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A borrow of node `node` at `http://NAME.example/` (the machine's tests
    /// use it too).
    pub(in crate::lending) fn request(name: &str, when: When) -> BorrowRequest {
        BorrowRequest {
            target: Target::Url {
                url: format!("http://{name}.example/"),
            },
            name: "node".into(),
            secret: Some("s".into()),
            secret_file: None,
            lease: None,
            idle_return: None,
            when,
            transport: None,
            wait: None,
        }
    }

    fn lease(request: BorrowRequest, started_ms: u64) -> Lease {
        Lease {
            request,
            started_ms,
        }
    }

    fn limits() -> Limits {
        Limits {
            give_up: 60 * S,
            grace: 10 * S,
            warm_engine: true,
        }
    }

    fn situation<'a>(
        pending: Option<&'a Command>,
        lease: Option<&'a Lease>,
        quiet: Quietness,
    ) -> Situation<'a> {
        Situation {
            pending,
            lease,
            checked: true,
            online: true,
            quiet,
        }
    }

    #[test]
    fn a_borrow_waits_for_its_check_and_for_quiet_unless_now() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let idle = Command::Borrow(request("b", When::Idle));
        let mut s = situation(Some(&idle), None, Quietness::Quiet);
        s.checked = false;
        assert_eq!(timers.decide(t0, 0, s).decision, None, "not checked yet");
        s.checked = true;
        for quiet in [Quietness::Busy, Quietness::Unknown] {
            s.quiet = quiet;
            assert_eq!(timers.decide(t0, 0, s).decision, None, "{quiet:?}");
        }
        s.quiet = Quietness::Quiet;
        let d = timers.decide(t0, 0, s).decision.unwrap();
        assert_eq!(d.intent, Intent::WhenQuiet);
        assert!(matches!(d.to, Move::Lend(_)));
        let now = Command::Borrow(request("b", When::Now));
        let d = timers
            .decide(t0, 0, situation(Some(&now), None, Quietness::Busy))
            .decision
            .unwrap();
        assert_eq!(d.intent, Intent::Now, "now does not wait for quiet");
    }

    #[test]
    fn a_return_waits_for_quiet_unless_now() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let l = lease(request("b", When::Idle), 0);
        let idle = Command::Return(When::Idle);
        let s = situation(Some(&idle), Some(&l), Quietness::Busy);
        assert_eq!(timers.decide(t0, 0, s).decision, None);
        let s = situation(Some(&idle), Some(&l), Quietness::Quiet);
        assert_eq!(
            timers.decide(t0, 0, s).decision,
            Some(Decision::new(
                Move::Home(ReturnReason::Requested),
                When::Idle
            ))
        );
        let now = Command::Return(When::Now);
        let s = situation(Some(&now), Some(&l), Quietness::Busy);
        assert_eq!(
            timers.decide(t0, 0, s).decision.unwrap().intent,
            Intent::Now
        );
    }

    #[test]
    fn a_lease_ends_when_quiet_or_after_its_grace() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let mut r = request("b", When::Idle);
        r.lease = Some(100 * S);
        let l = lease(r, 1_000);
        let end_ms = 101_000;
        let busy = situation(None, Some(&l), Quietness::Busy);
        assert_eq!(
            timers.decide(t0, end_ms - 1, busy).decision,
            None,
            "before its end"
        );
        // Over, but busy: the grace starts now.
        let t1 = t0 + 100 * S;
        assert_eq!(timers.decide(t1, end_ms, busy).decision, None);
        assert_eq!(
            timers.decide(t1 + 9 * S, end_ms + 9_000, busy).decision,
            None
        );
        let v = timers.decide(t1 + 10 * S, end_ms + 10_000, busy);
        assert_eq!(
            v.decision,
            Some(Decision::new(
                Move::Home(ReturnReason::LeaseExpired),
                When::Now
            ))
        );
        assert_eq!(v.forced, Some(Forced::GraceOver));
        // Quiet at the end: leaves when quiet, at once.
        let mut timers = Timers::new(limits(), t0);
        let quiet = situation(None, Some(&l), Quietness::Quiet);
        assert_eq!(
            timers.decide(t1, end_ms, quiet).decision,
            Some(Decision::new(
                Move::Home(ReturnReason::LeaseExpired),
                When::Idle
            ))
        );
    }

    #[test]
    fn an_idle_borrower_sends_the_agent_home_after_idle_return() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let mut r = request("b", When::Idle);
        r.idle_return = Some(30 * S);
        let l = lease(r, 0);
        let quiet = situation(None, Some(&l), Quietness::Quiet);
        let v = timers.decide(t0 + 10 * S, 10_000, quiet);
        assert_eq!(v.decision, None);
        assert_eq!(v.idle_deadline_ms, Some(30_000));
        // Work resets the idle time.
        let busy = situation(None, Some(&l), Quietness::Busy);
        timers.decide(t0 + 20 * S, 20_000, busy);
        assert_eq!(timers.decide(t0 + 49 * S, 49_000, quiet).decision, None);
        let v = timers.decide(t0 + 50 * S, 50_000, quiet);
        assert_eq!(
            v.decision,
            Some(Decision::new(Move::Home(ReturnReason::Idle), When::Idle))
        );
        // Offline is not idle at the borrower.
        let mut offline = quiet;
        offline.online = false;
        let mut timers = Timers::new(limits(), t0);
        assert_eq!(timers.decide(t0 + 50 * S, 50_000, offline).decision, None);
    }

    #[test]
    fn an_unreachable_borrower_is_given_up_after_borrow_give_up() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let l = lease(request("b", When::Idle), 0);
        let mut s = situation(None, Some(&l), Quietness::Busy);
        s.online = false;
        assert_eq!(timers.decide(t0 + 59 * S, 0, s).decision, None);
        // Online in between: the count starts over.
        timers.online(t0 + 30 * S);
        assert_eq!(timers.decide(t0 + 60 * S, 0, s).decision, None);
        let v = timers.decide(t0 + 90 * S, 0, s);
        assert_eq!(
            v.decision,
            Some(Decision::new(
                Move::Home(ReturnReason::BorrowerGone),
                When::Now
            ))
        );
        // Arriving home resets every timer.
        timers.arrived(t0 + 90 * S);
        assert_eq!(timers.decide(t0 + 100 * S, 0, s).decision, None);
    }

    #[test]
    fn home_unreachable_puts_the_return_off_for_a_while() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        let l = lease(request("b", When::Idle), 0);
        let ret = Command::Return(When::Now);
        let s = situation(Some(&ret), Some(&l), Quietness::Quiet);
        timers.home_unreachable(t0);
        assert!(timers.gated(t0 + RETRY_MOVE - S));
        assert!(!timers.gated(t0 + RETRY_MOVE));
        assert!(timers.decide(t0 + RETRY_MOVE, 0, s).decision.is_some());
    }

    #[test]
    fn an_engine_for_home_is_warmed_while_lent_and_retried_after_a_failure() {
        let t0 = Instant::now();
        let mut timers = Timers::new(limits(), t0);
        assert!(!timers.wants_warm_home(t0, false, false), "at home");
        assert!(timers.wants_warm_home(t0, true, false));
        assert!(!timers.wants_warm_home(t0, true, true), "one is kept");
        timers.warm_failed(t0);
        assert!(!timers.wants_warm_home(t0 + WARM_RETRY - S, true, false));
        assert!(timers.wants_warm_home(t0 + WARM_RETRY, true, false));
        let mut cold = limits();
        cold.warm_engine = false;
        assert!(!Timers::new(cold, t0).wants_warm_home(t0, true, false));
    }

    #[test]
    fn a_borrow_during_the_move_home_is_queued_and_pending_once_home() {
        let mut orders = Orders::default();
        let l = lease(request("a", When::Idle), 0);
        orders.give_back(Some(&l), When::Now, 1).unwrap();
        orders.moving = true;
        let next = request("b", When::Idle);
        let said = orders.borrow(Some(&l), &next, 2).unwrap();
        assert!(
            said.changed && said.message.contains("once home"),
            "{said:?}"
        );
        let again = orders.borrow(Some(&l), &next, 3).unwrap();
        assert!(!again.changed && again.message.contains("already queued"));
        orders.moved(true);
        assert_eq!(orders.pending, Some((Command::Borrow(next), 2)));
        assert!(orders.next_borrow.is_none());
        assert!(!orders.moving);
    }

    #[test]
    fn taking_an_order_announces_only_what_changed() {
        let mut orders = Orders::default();
        let borrow = Command::Borrow(request("a", When::Idle));
        let (answer, event) = orders.take(None, &borrow, 1);
        assert!(answer.is_ok());
        assert_eq!(event, Some(EventKind::BorrowAccepted));
        let (answer, event) = orders.take(None, &borrow, 2);
        assert!(answer.unwrap().contains("already waiting"));
        assert_eq!(event, None, "a repeat changes nothing");
        let (answer, event) = orders.take(None, &Command::Return(When::Now), 3);
        assert!(answer.is_ok());
        assert_eq!(event, Some(EventKind::ReturnAccepted));
        let (answer, event) = orders.take(None, &Command::Return(When::Now), 4);
        assert!(answer.is_err(), "at home with nothing pending");
        assert_eq!(event, None);
    }

    #[test]
    fn a_return_during_the_move_to_the_borrower_follows_it() {
        let mut orders = Orders::default();
        let r = request("a", When::Idle);
        orders.borrow(None, &r, 1).unwrap();
        orders.moving = true;
        orders.give_back(None, When::Idle, 2).unwrap();
        orders.moved(false);
        assert_eq!(orders.pending, Some((Command::Return(When::Idle), 2)));
    }

    #[test]
    fn a_return_cancels_a_waiting_borrow_and_is_refused_at_home() {
        let mut orders = Orders::default();
        assert!(orders.give_back(None, When::Idle, 1).is_err());
        orders.borrow(None, &request("a", When::Idle), 1).unwrap();
        orders.give_back(None, When::Idle, 2).unwrap();
        assert_eq!(orders.pending, None, "cancelled");
        // A return also drops a borrow queued behind the move home.
        let l = lease(request("a", When::Idle), 0);
        orders.give_back(Some(&l), When::Idle, 3).unwrap();
        orders
            .borrow(Some(&l), &request("b", When::Idle), 4)
            .unwrap();
        orders.give_back(Some(&l), When::Now, 5).unwrap();
        assert!(orders.next_borrow.is_none());
    }

    #[test]
    fn a_second_borrow_elsewhere_is_refused_and_a_repeat_is_harmless() {
        let mut orders = Orders::default();
        let a = request("a", When::Idle);
        orders.borrow(None, &a, 1).unwrap();
        let again = orders.borrow(None, &a, 2).unwrap();
        assert!(!again.changed && again.message.contains("already waiting"));
        let err = orders
            .borrow(None, &request("b", When::Idle), 3)
            .unwrap_err();
        assert!(err.contains("return first"), "{err}");
        let l = lease(a.clone(), 0);
        let mut lent = Orders::default();
        let again = lent.borrow(Some(&l), &a, 4).unwrap();
        assert!(!again.changed && again.message.contains("already lent"));
        assert!(lent.borrow(Some(&l), &request("b", When::Idle), 5).is_err());
    }
}
