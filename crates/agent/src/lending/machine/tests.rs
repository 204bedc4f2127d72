//! The move machine on simulated time: every event and instant is given.

#![allow(clippy::unwrap_used)]

use control::{BorrowRequest, When};

use super::*;
use crate::lending::moves::tests::request;

const S: Duration = Duration::from_secs(1);
/// Wall clock at `t0`, unix ms.
const T0_MS: u64 = 1_000_000;

fn limits() -> Limits {
    Limits {
        give_up: 60 * S,
        grace: 10 * S,
        warm_engine: false,
    }
}

/// A machine and a simulated clock that moves with each event.
struct Sim {
    m: Machine,
    t0: Instant,
    at: Duration,
}

impl Sim {
    fn new(saved: Option<Lease>) -> (Self, Vec<Action>) {
        Self::with(limits(), saved)
    }

    fn with(limits: Limits, saved: Option<Lease>) -> (Self, Vec<Action>) {
        let t0 = Instant::now();
        let (m, out) = Machine::new(limits, saved, t0, T0_MS);
        (
            Self {
                m,
                t0,
                at: Duration::ZERO,
            },
            out,
        )
    }

    fn now(&self) -> Instant {
        self.t0 + self.at
    }

    /// The event at the current simulated time.
    fn on(&mut self, event: Event) -> Vec<Action> {
        let now_ms = T0_MS + u64::try_from(self.at.as_millis()).unwrap();
        self.m.on(event, self.now(), now_ms)
    }

    /// Moves the clock on by `d`, then the event.
    fn after(&mut self, d: Duration, event: Event) -> Vec<Action> {
        self.at += d;
        self.on(event)
    }

    /// A session online where the agent is.
    fn online(&mut self) -> Vec<Action> {
        self.on(Event::SessionStarted);
        self.on(Event::Online)
    }

    fn order(&mut self, command: Command) -> Vec<Action> {
        self.on(Event::Order { id: 7, command })
    }
}

fn reports(out: &[Action]) -> Vec<EventKind> {
    out.iter()
        .filter_map(|a| match a {
            Action::Report(kind) => Some(kind.clone()),
            _ => None,
        })
        .collect()
}

fn has(out: &[Action], wanted: &Action) -> bool {
    out.contains(wanted)
}

fn lent(sim: &Sim) -> bool {
    sim.m.lease().is_some()
}

/// At home online, a borrow for `b` (when idle) accepted and checked: the
/// agent is quiet, so the target is being connected.
fn connecting_to_borrower(when: When) -> (Sim, BorrowRequest) {
    let (mut sim, _) = Sim::new(None);
    sim.online();
    let r = request("b", when);
    let out = sim.order(Command::Borrow(r.clone()));
    assert!(has(&out, &Action::CheckBorrower(r.clone())), "{out:?}");
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Reply {
                id: 7,
                answer: Ok(_)
            }
        )),
        "{out:?}"
    );
    let out = sim.on(Event::Census(Quietness::Quiet));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Connect(_))),
        "not checked yet: {out:?}"
    );
    let out = sim.after(S, Event::BorrowerChecked);
    assert_eq!(reports(&out), vec![EventKind::BorrowChecked]);
    assert!(
        has(&out, &Action::Connect(Move::Lend(r.clone()))),
        "{out:?}"
    );
    assert!(sim.m.moving() && sim.m.orders().moving);
    (sim, r)
}

#[test]
fn a_quiet_borrow_is_made_before_break_and_persisted_on_arrival() {
    let (mut sim, r) = connecting_to_borrower(When::Idle);
    let out = sim.after(S, Event::Connected);
    assert_eq!(out, vec![Action::CountBuilds], "waits for a fresh count");
    let out = sim.on(Event::Census(Quietness::Quiet));
    assert!(
        has(&out, &Action::CloseChannel(Intent::WhenQuiet)),
        "{out:?}"
    );
    assert!(has(&out, &Action::Phase(Phase::Leaving)));
    let out = sim.after(S, Event::SessionEnded { fatal: false });
    assert!(has(
        &out,
        &Action::Bridge {
            to: Move::Lend(r.clone()),
            prepared: true
        }
    ));
    let lease = sim.m.lease().cloned().unwrap();
    assert_eq!(lease.request, r);
    assert_eq!(lease.started_ms, T0_MS + 3_000);
    assert!(has(&out, &Action::Persist(Some(lease))), "{out:?}");
    assert_eq!(reports(&out), vec![EventKind::StateChanged]);
    assert_eq!(sim.m.orders().pending, None, "the borrow is done");
    // Online at the borrower: `Moved` once its first call is answered,
    // timed from the decision (t0 + 1 s).
    sim.after(S, Event::SessionStarted);
    sim.after(S, Event::Online);
    assert_eq!(sim.m.next_wake(), Some(sim.now() + FIRST_CALL_WAIT));
    sim.at += S / 2;
    let out = sim.on(Event::FirstCallAnswered(sim.now()));
    assert_eq!(
        reports(&out),
        vec![EventKind::Moved {
            ms: 4_500,
            connected_ms: Some(4_000),
            answered_ms: Some(4_500)
        }]
    );
    let again = Event::FirstCallAnswered(sim.now());
    assert!(reports(&sim.on(again)).is_empty(), "once");
}

#[test]
fn a_controller_that_never_calls_counts_as_online_after_the_first_call_wait() {
    let (mut sim, _) = connecting_to_borrower(When::Now);
    let out = sim.after(S, Event::Connected);
    assert!(has(&out, &Action::CloseChannel(Intent::Now)), "{out:?}");
    sim.on(Event::SessionEnded { fatal: false });
    sim.on(Event::SessionStarted);
    sim.after(S, Event::Online);
    let wake = sim.m.next_wake().unwrap();
    assert_eq!(wake, sim.now() + FIRST_CALL_WAIT);
    assert!(reports(&sim.after(FIRST_CALL_WAIT - S, Event::Timer)).is_empty());
    let out = sim.after(S, Event::Timer);
    assert_eq!(
        reports(&out),
        vec![EventKind::Moved {
            ms: 4_000,
            connected_ms: Some(2_000),
            answered_ms: None
        }]
    );
}

#[test]
fn the_settle_limit_puts_the_move_off_without_a_fresh_count() {
    let (mut sim, r) = connecting_to_borrower(When::Idle);
    sim.after(S, Event::Connected);
    let until = sim.now() + SETTLE_LIMIT;
    assert_eq!(sim.m.next_wake(), Some(until));
    // A stale count is no answer: it waits for another.
    let out = sim.after(SETTLE_LIMIT / 2, Event::Census(Quietness::Unknown));
    assert_eq!(out, vec![Action::CountBuilds]);
    assert!(reports(&sim.after(SETTLE_LIMIT / 4, Event::Timer)).is_empty());
    let out = sim.after(SETTLE_LIMIT / 4, Event::Timer);
    assert!(has(&out, &Action::Abandon), "{out:?}");
    assert!(has(&out, &Action::Phase(Phase::Draining)));
    assert_eq!(reports(&out), vec![EventKind::MoveDeferred]);
    assert!(!sim.m.moving() && !lent(&sim));
    // The borrower stays checked: the next quiet count connects it again,
    // without checking it again.
    let out = sim.after(S, Event::Census(Quietness::Quiet));
    assert!(!out.iter().any(|a| matches!(a, Action::CheckBorrower(_))));
    assert!(has(&out, &Action::Connect(Move::Lend(r))), "{out:?}");
}

#[test]
fn work_counted_while_the_target_was_connected_puts_the_move_off() {
    let (mut sim, _) = connecting_to_borrower(When::Idle);
    sim.after(S, Event::Connected);
    let out = sim.on(Event::Census(Quietness::Busy));
    assert!(has(&out, &Action::Abandon));
    assert_eq!(reports(&out), vec![EventKind::MoveDeferred]);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Connect(_))),
        "busy: {out:?}"
    );
}

#[test]
fn a_request_seen_on_the_channel_calls_the_move_off() {
    let (mut sim, r) = connecting_to_borrower(When::Idle);
    sim.after(S, Event::Connected);
    sim.on(Event::Census(Quietness::Quiet));
    // The controller sent work before the close went out.
    sim.on(Event::Census(Quietness::Busy));
    let out = sim.on(Event::RequestSeen);
    assert!(has(&out, &Action::Abandon), "{out:?}");
    assert_eq!(reports(&out), vec![EventKind::MoveDeferred]);
    assert!(!sim.m.moving() && !sim.m.orders().moving);
    // The channel stays; once quiet again the move is tried again.
    let out = sim.after(S, Event::SessionEnded { fatal: false });
    assert!(
        !out.iter().any(|a| matches!(a, Action::Bridge { .. })),
        "ended on its own, busy: {out:?}"
    );
    sim.online();
    let out = sim.on(Event::Census(Quietness::Quiet));
    assert!(has(&out, &Action::Connect(Move::Lend(r))), "{out:?}");
}

#[test]
fn a_move_now_is_not_called_off_by_a_request() {
    let (mut sim, _) = connecting_to_borrower(When::Now);
    sim.after(S, Event::Connected);
    let out = sim.on(Event::RequestSeen);
    assert!(out.is_empty(), "{out:?}");
    assert!(sim.m.moving());
}

#[test]
fn a_failed_check_names_its_phase_and_the_agent_stays() {
    for phase in [
        MovePhase::Config,
        MovePhase::Resolve,
        MovePhase::EngineJar,
        MovePhase::EngineStart,
    ] {
        let (mut sim, _) = Sim::new(None);
        sim.online();
        sim.order(Command::Borrow(request("b", When::Now)));
        let out = sim.after(
            S,
            Event::BorrowerFailed {
                phase,
                reason: "no".into(),
            },
        );
        assert_eq!(
            reports(&out),
            vec![EventKind::BorrowFailed {
                phase,
                reason: "no".into()
            }]
        );
        assert!(has(
            &out,
            &Action::LastError(format!("borrow failed ({phase}): no"))
        ));
        assert_eq!(sim.m.orders().pending, None, "{phase}");
        assert!(!sim.m.moving() && !lent(&sim));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::Connect(_) | Action::CheckBorrower(_))));
    }
}

#[test]
fn a_borrower_refusing_the_connection_fails_the_borrow() {
    for phase in [MovePhase::Connect, MovePhase::Handshake] {
        let (mut sim, _) = connecting_to_borrower(When::Now);
        let out = sim.after(
            S,
            Event::Refused {
                phase,
                reason: "refused".into(),
            },
        );
        assert_eq!(
            reports(&out),
            vec![EventKind::BorrowFailed {
                phase,
                reason: "refused".into()
            }]
        );
        assert!(has(&out, &Action::Phase(Phase::Online)));
        assert!(!sim.m.moving() && !sim.m.orders().moving && !lent(&sim));
        assert_eq!(sim.m.orders().pending, None);
    }
}

/// Lent to `b` and online there.
fn lent_online(r: BorrowRequest) -> Sim {
    let (mut sim, _) = Sim::new(Some(Lease {
        request: r,
        started_ms: T0_MS,
    }));
    sim.online();
    sim
}

#[test]
fn home_unreachable_keeps_the_agent_at_the_borrower_and_retries() {
    let mut sim = lent_online(request("b", When::Idle));
    sim.on(Event::Census(Quietness::Busy));
    let out = sim.order(Command::Return(When::Now));
    assert!(
        has(&out, &Action::Connect(Move::Home(ReturnReason::Requested))),
        "{out:?}"
    );
    let out = sim.after(
        S,
        Event::Refused {
            phase: MovePhase::Connect,
            reason: "connection refused".into(),
        },
    );
    assert!(has(
        &out,
        &Action::LastError("home: connection refused".into())
    ));
    assert!(reports(&out).is_empty());
    assert!(lent(&sim) && !sim.m.moving());
    assert!(sim.m.orders().pending.is_some(), "the return stands");
    let retry = sim.now() + crate::lending::moves::RETRY_MOVE;
    assert_eq!(sim.m.next_wake(), Some(retry));
    assert!(!sim
        .after(S, Event::Timer)
        .iter()
        .any(|a| matches!(a, Action::Connect(_))));
    let out = sim.after(crate::lending::moves::RETRY_MOVE - S, Event::Timer);
    assert!(
        has(&out, &Action::Connect(Move::Home(ReturnReason::Requested))),
        "{out:?}"
    );
}

#[test]
fn a_return_arriving_mid_move_follows_the_agent_to_the_borrower() {
    let (mut sim, r) = connecting_to_borrower(When::Now);
    let out = sim.order(Command::Return(When::Idle));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Reply { answer: Ok(m), .. } if m.contains("when idle"))),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Abandon)),
        "the move goes on"
    );
    sim.after(S, Event::Connected);
    let out = sim.on(Event::SessionEnded { fatal: false });
    assert!(has(
        &out,
        &Action::Bridge {
            to: Move::Lend(r),
            prepared: true
        }
    ));
    assert_eq!(
        sim.m.orders().pending.as_ref().map(|(c, _)| c),
        Some(&Command::Return(When::Idle))
    );
    // Online at the borrower and quiet: home again.
    sim.online();
    let out = sim.on(Event::Census(Quietness::Quiet));
    assert!(
        has(&out, &Action::Connect(Move::Home(ReturnReason::Requested))),
        "{out:?}"
    );
}

#[test]
fn a_borrow_arriving_mid_return_is_queued_and_carried_out_from_home() {
    let mut sim = lent_online(request("a", When::Idle));
    sim.order(Command::Return(When::Now));
    let b = request("b", When::Now);
    let out = sim.order(Command::Borrow(b.clone()));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Reply { answer: Ok(m), .. } if m.contains("once home"))),
        "{out:?}"
    );
    sim.after(S, Event::Connected);
    let out = sim.on(Event::SessionEnded { fatal: false });
    assert_eq!(
        reports(&out),
        vec![EventKind::ReturnedHome {
            reason: ReturnReason::Requested
        }]
    );
    assert!(has(&out, &Action::Persist(None)));
    assert!(
        has(&out, &Action::CheckBorrower(b)),
        "checked from home: {out:?}"
    );
}

#[test]
fn a_lease_that_ended_while_stopped_starts_the_agent_at_home() {
    let mut r = request("b", When::Idle);
    r.lease = Some(60 * S);
    let ended = Lease {
        request: r.clone(),
        started_ms: T0_MS - 61_000,
    };
    let (sim, out) = Sim::new(Some(ended));
    assert_eq!(out, vec![Action::Persist(None)]);
    assert!(!lent(&sim));
    // One still running resumes at the borrower, and wakes at its end.
    let running = Lease {
        request: r,
        started_ms: T0_MS - 30_000,
    };
    let (mut sim, out) = Sim::new(Some(running.clone()));
    assert!(out.is_empty());
    assert_eq!(sim.m.lease(), Some(&running));
    sim.online();
    sim.on(Event::Census(Quietness::Busy));
    assert_eq!(sim.m.next_wake(), Some(sim.t0 + 30 * S));
    // Over but busy: the grace runs, then it leaves whatever happens.
    let out = sim.after(30 * S, Event::Timer);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Connect(_))),
        "{out:?}"
    );
    assert_eq!(sim.m.next_wake(), Some(sim.now() + 10 * S));
    let out = sim.after(10 * S, Event::Timer);
    assert!(
        has(
            &out,
            &Action::Connect(Move::Home(ReturnReason::LeaseExpired))
        ),
        "{out:?}"
    );
    let out = sim.after(S, Event::Connected);
    assert!(has(&out, &Action::CloseChannel(Intent::Now)), "{out:?}");
}

#[test]
fn an_unreachable_borrower_is_given_up_without_a_channel_to_keep() {
    let (mut sim, _) = Sim::new(Some(Lease {
        request: request("b", When::Idle),
        started_ms: T0_MS,
    }));
    sim.on(Event::SessionStarted);
    sim.on(Event::SessionEnded { fatal: false });
    assert_eq!(sim.m.next_wake(), Some(sim.t0 + 60 * S));
    let out = sim.after(60 * S, Event::Timer);
    assert!(has(
        &out,
        &Action::Bridge {
            to: Move::Home(ReturnReason::BorrowerGone),
            prepared: false
        }
    ));
    assert!(has(&out, &Action::Persist(None)));
    assert!(!lent(&sim));
}

#[test]
fn a_fatal_refusal_at_the_borrower_sends_the_agent_home() {
    let mut sim = lent_online(request("b", When::Idle));
    let out = sim.on(Event::SessionEnded { fatal: true });
    assert_eq!(
        reports(&out),
        vec![EventKind::ReturnedHome {
            reason: ReturnReason::BorrowerGone
        }]
    );
    assert!(!lent(&sim));
}

#[test]
fn the_session_ending_mid_move_drops_the_work_ahead() {
    let (mut sim, _) = connecting_to_borrower(When::Idle);
    sim.on(Event::Census(Quietness::Busy));
    let out = sim.on(Event::SessionEnded { fatal: false });
    assert!(has(&out, &Action::Abandon));
    assert!(!sim.m.moving() && !sim.m.orders().moving && !lent(&sim));
    // The borrower's engine went with the work: it is checked again.
    assert!(
        out.iter().any(|a| matches!(a, Action::CheckBorrower(_))),
        "{out:?}"
    );
    // A late connection for that move is closed again.
    assert_eq!(sim.on(Event::Connected), vec![Action::Abandon]);
    // Settling when the session ends: the engine is kept, no new check.
    let (mut sim, _) = connecting_to_borrower(When::Idle);
    sim.after(S, Event::Connected);
    let out = sim.on(Event::SessionEnded { fatal: false });
    assert!(has(&out, &Action::Abandon));
    assert!(
        !out.iter().any(|a| matches!(a, Action::CheckBorrower(_))),
        "{out:?}"
    );
}

#[test]
fn an_idle_borrower_sends_the_agent_home_at_its_idle_deadline() {
    let mut r = request("b", When::Idle);
    r.idle_return = Some(30 * S);
    let mut sim = lent_online(r);
    let out = sim.on(Event::Census(Quietness::Quiet));
    assert!(has(&out, &Action::IdleDeadline(T0_MS + 30_000)), "{out:?}");
    assert_eq!(sim.m.next_wake(), Some(sim.t0 + 30 * S));
    let out = sim.after(30 * S, Event::Timer);
    assert!(
        has(&out, &Action::Connect(Move::Home(ReturnReason::Idle))),
        "{out:?}"
    );
}

#[test]
fn an_engine_for_home_is_warmed_while_lent_and_retried_after_a_failure() {
    let mut warm = limits();
    warm.warm_engine = true;
    let (mut sim, _) = Sim::with(
        warm,
        Some(Lease {
            request: request("b", When::Idle),
            started_ms: T0_MS,
        }),
    );
    sim.on(Event::SessionStarted);
    let out = sim.on(Event::Online);
    assert!(has(&out, &Action::WarmEngine), "{out:?}");
    sim.on(Event::Census(Quietness::Busy));
    let out = sim.after(S, Event::EngineFailed);
    assert!(!has(&out, &Action::WarmEngine));
    let retry = sim.now() + crate::lending::moves::WARM_RETRY;
    assert_eq!(sim.m.next_wake(), Some(retry));
    let out = sim.after(crate::lending::moves::WARM_RETRY, Event::Timer);
    assert!(has(&out, &Action::WarmEngine));
    sim.on(Event::EngineReady);
    assert_eq!(sim.m.next_wake(), None, "nothing left to wait for");
    // The kept engine exited: another is started at once.
    let out = sim.after(S, Event::EngineGone);
    assert!(has(&out, &Action::WarmEngine), "{out:?}");
}
