//! The pool's decisions, driven through its public API with simulated time.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::*;
use control::When;
use lender::pool::{
    Decision, EndReason, LeaseState, Outcome, Place, Pool, PoolConfig, PoolError, ReturnCause,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;

fn pool_with(agents: &[(&str, &[&str])]) -> Pool {
    let mut pool = Pool::new(PoolConfig::default());
    for (name, labels) in agents {
        pool.agent_connected(hello(name, labels), T0);
    }
    decisions(&mut pool);
    pool
}

fn reserved(outcome: &Outcome) -> (u64, String) {
    match outcome {
        Outcome::Reserved { lease, agent } => (*lease, agent.clone()),
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn lease_out(pool: &mut Pool, requirements: &str, url: &str, now: u64) -> (u64, String) {
    let outcome = pool.request_lease(request(requirements, url, 60), now);
    let (id, agent) = reserved(&outcome.unwrap_or_else(|err| panic!("{err}")));
    check(pool);
    assert!(pool
        .agent_reported(&agent, at(url, true, false), now)
        .is_ok());
    assert_eq!(pool.lease(id).map(|l| &l.state), Some(&LeaseState::Active));
    (id, agent)
}

fn ended(pool: &Pool, id: u64) -> EndReason {
    match pool.lease(id).map(|l| &l.state) {
        Some(LeaseState::Ended(reason)) => reason.clone(),
        other => panic!("lease {id} not ended: {other:?}"),
    }
}

#[test]
fn two_phases_reserve_then_active_when_online_at_the_borrower() {
    let mut pool = pool_with(&[("mac-01", &["macos", "xcode16"]), ("lin-01", &["linux"])]);
    let outcome = pool.request_lease(request("macos && xcode16", B, 60), T0);
    let (id, agent) = reserved(&outcome.unwrap_or_else(|err| panic!("{err}")));
    assert_eq!(agent, "mac-01");
    assert_eq!(
        decisions(&mut pool),
        [Decision::Lend {
            lease: id,
            agent: agent.clone()
        }]
    );
    assert_eq!(pool.agent(&agent).and_then(|a| a.lease), Some(id));
    // Still moving: connecting at the borrower is not online.
    assert!(pool
        .agent_reported(&agent, at(B, false, false), T0 + 1)
        .is_ok());
    assert_eq!(
        pool.lease(id).map(|l| &l.state),
        Some(&LeaseState::Reserved)
    );
    assert!(pool
        .agent_reported(&agent, at(B, true, false), T0 + 2)
        .is_ok());
    assert_eq!(pool.lease(id).map(|l| &l.state), Some(&LeaseState::Active));
    // Confirming again is harmless.
    assert_eq!(pool.confirm(id, T0 + 3), Ok(()));
    check(&pool);

    // The borrow request carries the lease for the agent to enforce.
    let borrow = pool.lease(id).map(|l| l.borrow_request(None));
    let borrow = borrow.unwrap_or_else(|| panic!("no lease"));
    assert_eq!(borrow.secret.as_deref(), Some(SECRET));
    assert_eq!(borrow.lease, Some(Duration::from_secs(7200)));
    assert_eq!(borrow.validate(), Ok(()));
}

#[test]
fn explicit_confirm_activates_a_reservation() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    let (id, _) = reserved(
        &pool
            .request_lease(request("x", B, 0), T0)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(pool.confirm(id, T0 + 5), Ok(()));
    assert_eq!(
        pool.lease(id).map(|l| (&l.state, l.since_ms)),
        Some((&LeaseState::Active, T0 + 5))
    );
}

#[test]
fn the_least_recently_lent_agent_goes_first() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"]), ("a3", &["x"])]);
    // Never-lent agents first, by name.
    let (l1, first) = lease_out(&mut pool, "x", B, T0 + 10);
    assert_eq!(first, "a1");
    let (l2, second) = lease_out(&mut pool, "x", B, T0 + 20);
    assert_eq!(second, "a2");
    // Both come home; a3 was never lent, then a1 (lent earlier than a2).
    for (lease, agent) in [(l1, &first), (l2, &second)] {
        assert!(pool.agent_reported(agent, home(), T0 + 30).is_ok());
        assert!(matches!(
            ended(&pool, lease),
            EndReason::AgentLeft { place: Place::Home }
        ));
    }
    assert_eq!(lease_out(&mut pool, "x", B, T0 + 40).1, "a3");
    assert_eq!(lease_out(&mut pool, "x", B, T0 + 50).1, "a1");
    check(&pool);
}

#[test]
fn only_free_agents_are_lent() {
    let mut pool = pool_with(&[
        ("busy", &["x"]),
        ("away", &["x"]),
        ("gone", &["x"]),
        ("other", &["y"]),
    ]);
    assert!(pool.agent_reported("busy", AgentBusy::report(), T0).is_ok());
    assert!(pool.agent_reported("away", at(A, true, false), T0).is_ok());
    assert!(pool.agent_disconnected("gone", T0).is_ok());
    let outcome = pool.request_lease(request("x", B, 60), T0);
    assert!(matches!(outcome, Ok(Outcome::Queued { .. })), "{outcome:?}");
    // The busy agent becomes idle at home: the waiting request gets it.
    assert!(pool.agent_reported("busy", home(), T0 + 5).is_ok());
    let lent: Vec<_> = decisions(&mut pool)
        .into_iter()
        .filter(|d| matches!(d, Decision::Lend { .. }))
        .collect();
    assert_eq!(
        lent,
        [Decision::Lend {
            lease: 1,
            agent: "busy".into()
        }]
    );
    check(&pool);
}

struct AgentBusy;
impl AgentBusy {
    fn report() -> lender::pool::AgentReport {
        lender::pool::AgentReport {
            place: Place::Home,
            online: true,
            busy: true,
        }
    }
}

#[test]
fn automatic_labels_and_the_node_name_match() {
    let mut pool = pool_with(&[("lin-01", &[])]);
    let outcome = pool.request_lease(request("linux && amd64 && lin-01", B, 0), T0);
    assert!(
        matches!(outcome, Ok(Outcome::Reserved { .. })),
        "{outcome:?}"
    );
    let labels = pool
        .agent("lin-01")
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    assert_eq!(names(&labels), ["amd64", "lin-01", "linux", "x86_64"]);
}

#[test]
fn a_request_nothing_matches_queues_then_times_out_with_a_clear_error() {
    let mut pool = pool_with(&[("lin-01", &["linux"])]);
    let outcome = pool.request_lease(request("windows", B, 600), T0);
    assert_eq!(
        outcome,
        Ok(Outcome::Queued {
            lease: 1,
            deadline_ms: T0 + 600_000
        })
    );
    assert_eq!(pool.next_deadline(), Some(T0 + 600_000));
    assert!(pool.expire_queue(T0 + 599_999).is_empty());
    assert_eq!(pool.expire_queue(T0 + 600_000), [1]);
    let EndReason::TimedOut { message } = ended(&pool, 1) else {
        panic!("not a timeout");
    };
    assert_eq!(
        message,
        "no agent in the pool matches `windows` (waited 10m)"
    );
    assert_eq!(pool.queue().count(), 0);
    assert_eq!(pool.next_deadline(), None);
    check(&pool);
}

#[test]
fn the_timeout_says_what_held_matching_agents_up() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"])]);
    lease_out(&mut pool, "x", A, T0);
    assert!(pool.agent_disconnected("a2", T0).is_ok());
    assert!(matches!(
        pool.request_lease(request("x", B, 60), T0),
        Ok(Outcome::Queued { .. })
    ));
    pool.expire_queue(T0 + 60_000);
    let EndReason::TimedOut { message } = ended(&pool, 2) else {
        panic!("not a timeout");
    };
    assert_eq!(
        message,
        "no agent matching `x` became free within 1m: 2 match \
         (1 lent or away, 0 busy at home, 1 not connected)"
    );
}

#[test]
fn a_request_that_cannot_wait_ends_at_once() {
    let mut pool = pool_with(&[]);
    let outcome = pool.request_lease(request("x", B, 0), T0);
    assert!(
        matches!(
            outcome,
            Ok(Outcome::Ended {
                lease: 1,
                reason: EndReason::TimedOut { .. }
            })
        ),
        "{outcome:?}"
    );
    assert!(matches!(
        decisions(&mut pool)[..],
        [Decision::Ended { lease: 1, .. }]
    ));
    check(&pool);
}

#[test]
fn twenty_concurrent_requests_for_three_agents() {
    let mut pool = Pool::new(PoolConfig::default());
    for name in ["mac-01", "mac-02", "mac-03"] {
        pool.agent_connected(hello(name, &["macos", "arm64"]), T0);
    }
    pool.agent_connected(hello("lin-01", &["linux"]), T0);
    let pool = Arc::new(Mutex::new(pool));
    let start = Arc::new(Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let pool = Arc::clone(&pool);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut req = request("macos && arm64", B, 300);
                req.client = format!("client-{i}");
                let mut pool = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                pool.request_lease(req, T0 + i)
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| match t.join() {
            Ok(Ok(outcome)) => outcome,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut pool = match Arc::try_unwrap(pool) {
        Ok(pool) => pool
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        Err(_) => panic!("pool still shared"),
    };
    check(&pool);

    let agents: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Reserved { agent, .. } => Some(agent.as_str()),
            _ => None,
        })
        .collect();
    let distinct: BTreeSet<&str> = agents.iter().copied().collect();
    assert_eq!(agents.len(), 3, "{outcomes:?}");
    assert_eq!(distinct, BTreeSet::from(["mac-01", "mac-02", "mac-03"]));
    let queued: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Queued { lease, deadline_ms } => {
                assert!(*deadline_ms >= T0 + 300_000);
                Some(*lease)
            }
            _ => None,
        })
        .collect();
    assert_eq!(queued.len(), 17);
    // Exactly three borrows go out, one per agent.
    let lends: Vec<String> = decisions(&mut pool)
        .into_iter()
        .filter_map(|d| match d {
            Decision::Lend { agent, .. } => Some(agent),
            _ => None,
        })
        .collect();
    assert_eq!(lends.len(), 3);
    assert_eq!(lends.iter().collect::<BTreeSet<_>>().len(), 3);

    // Nothing frees up: at their deadlines all 17 time out, none lent.
    let expired = pool.expire_queue(T0 + 300_000 + 20);
    assert_eq!(expired.len(), 17);
    for id in queued {
        assert!(matches!(ended(&pool, id), EndReason::TimedOut { .. }));
    }
    assert_eq!(
        pool.leases()
            .filter(|l| l.state == LeaseState::Reserved)
            .count(),
        3
    );
    assert_eq!(pool.agent("lin-01").and_then(|a| a.lease), None);
    check(&pool);
}

#[test]
fn a_failed_borrow_releases_the_agent_and_tries_the_next() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"])]);
    let (id, first) = reserved(
        &pool
            .request_lease(request("x", B, 60), T0)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    decisions(&mut pool);
    let retry = pool.fail(id, "handshake: the borrower refused the secret", T0 + 1);
    assert_eq!(
        retry,
        Ok(Outcome::Reserved {
            lease: id,
            agent: "a2".into()
        })
    );
    assert_eq!(
        decisions(&mut pool),
        [Decision::Lend {
            lease: id,
            agent: "a2".into()
        }]
    );
    assert_eq!(pool.agent(&first).and_then(|a| a.lease), None);
    let lease = pool
        .lease(id)
        .cloned()
        .unwrap_or_else(|| panic!("no lease"));
    assert_eq!(lease.attempts.len(), 1);
    assert_eq!(lease.attempts[0].agent, "a1");
    assert!(lease.attempts[0].reason.contains("refused"));
    check(&pool);

    // The second fails too; a1 already failed for this lease: it waits.
    let retry = pool.fail(id, "connect: timed out", T0 + 2);
    assert_eq!(
        retry,
        Ok(Outcome::Queued {
            lease: id,
            deadline_ms: T0 + 60_000
        })
    );
    // The freed agents serve other requests.
    assert!(matches!(
        pool.request_lease(request("x", B, 0), T0 + 3),
        Ok(Outcome::Reserved { .. })
    ));
    pool.expire_queue(T0 + 60_000);
    let EndReason::TimedOut { message } = ended(&pool, id) else {
        panic!("not a timeout");
    };
    assert!(
        message.ends_with("; 2 borrow(s) failed, last on a2: connect: timed out"),
        "{message}"
    );
    check(&pool);
}

#[test]
fn borrows_give_up_after_max_attempts() {
    let mut pool = pool_with(&[
        ("a1", &["x"]),
        ("a2", &["x"]),
        ("a3", &["x"]),
        ("a4", &["x"]),
    ]);
    let (id, _) = reserved(
        &pool
            .request_lease(request("x", B, 60), T0)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert!(matches!(
        pool.fail(id, "bad secret", T0),
        Ok(Outcome::Reserved { .. })
    ));
    assert!(matches!(
        pool.fail(id, "bad secret", T0),
        Ok(Outcome::Reserved { .. })
    ));
    let last = pool.fail(id, "bad secret", T0);
    assert!(
        matches!(
            last,
            Ok(Outcome::Ended {
                reason: EndReason::Failed { .. },
                ..
            })
        ),
        "{last:?}"
    );
    assert!(pool.agents().all(|a| a.lease.is_none()));
    assert!(matches!(
        pool.fail(id, "again", T0),
        Err(PoolError::WrongState { .. })
    ));
    check(&pool);
}

#[test]
fn an_agent_reported_elsewhere_fails_its_reservation() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"])]);
    let (id, agent) = reserved(
        &pool
            .request_lease(request("x", B, 60), T0)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert!(pool
        .agent_reported(&agent, at(A, true, false), T0 + 1)
        .is_ok());
    let lease = pool
        .lease(id)
        .cloned()
        .unwrap_or_else(|| panic!("no lease"));
    assert_eq!(lease.state, LeaseState::Reserved);
    assert_eq!(lease.agent.as_deref(), Some("a2"));
    assert_eq!(
        lease.attempts[0].reason,
        format!("agent reports being at {A} instead")
    );
    check(&pool);
}

#[test]
fn the_queue_is_first_come_first_served_without_head_of_line_blocking() {
    let mut pool = pool_with(&[("a1", &["x", "y"])]);
    let (first, agent) = lease_out(&mut pool, "x", A, T0);
    // 2 wants z (nobody has it), 3 and 4 want x.
    for (req, at) in [("z", T0 + 1), ("x", T0 + 2), ("x || y", T0 + 3)] {
        assert!(matches!(
            pool.request_lease(request(req, B, 600), at),
            Ok(Outcome::Queued { .. })
        ));
    }
    assert_eq!(pool.queue().map(|l| l.id).collect::<Vec<_>>(), [2, 3, 4]);
    decisions(&mut pool);
    // The agent's lease runs out: it comes home and goes to request 3.
    assert!(pool.agent_reported(&agent, home(), T0 + 10).is_ok());
    assert!(matches!(
        ended(&pool, first),
        EndReason::AgentLeft { place: Place::Home }
    ));
    let ds = decisions(&mut pool);
    assert!(
        ds.contains(&Decision::Lend {
            lease: 3,
            agent: agent.clone()
        }),
        "{ds:?}"
    );
    assert_eq!(pool.queue().map(|l| l.id).collect::<Vec<_>>(), [2, 4]);
    check(&pool);
}

#[test]
fn returning_a_lease_recalls_the_agent_and_ends_when_it_is_home() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    let (id, agent) = lease_out(&mut pool, "x", B, T0);
    decisions(&mut pool);
    assert_eq!(pool.return_lease(id, When::Idle, T0 + 1), Ok(()));
    assert_eq!(
        decisions(&mut pool),
        [Decision::Recall {
            lease: id,
            agent: agent.clone(),
            when: When::Idle
        }]
    );
    assert_eq!(
        pool.lease(id).map(|l| &l.state),
        Some(&LeaseState::Returning(ReturnCause::Requested))
    );
    // Returning again asks nothing new unless it is `now`.
    assert_eq!(pool.return_lease(id, When::Idle, T0 + 2), Ok(()));
    assert!(decisions(&mut pool).is_empty());
    assert_eq!(pool.return_lease(id, When::Now, T0 + 3), Ok(()));
    assert!(matches!(
        decisions(&mut pool)[..],
        [Decision::Recall {
            when: When::Now,
            ..
        }]
    ));
    // Still at the borrower (draining): the agent stays tied to the lease.
    assert!(pool
        .agent_reported(&agent, at(B, true, true), T0 + 4)
        .is_ok());
    assert_eq!(pool.agent(&agent).and_then(|a| a.lease), Some(id));
    assert!(pool.agent_reported(&agent, home(), T0 + 5).is_ok());
    assert_eq!(ended(&pool, id), EndReason::Returned);
    assert_eq!(
        pool.return_lease(id, When::Idle, T0 + 6),
        Err(PoolError::WrongState {
            lease: id,
            state: "ended",
            action: "return"
        })
    );
    assert_eq!(
        pool.return_lease(99, When::Idle, T0),
        Err(PoolError::UnknownLease(99))
    );
    check(&pool);
}

#[test]
fn returning_a_queued_request_withdraws_it() {
    let mut pool = pool_with(&[]);
    assert!(matches!(
        pool.request_lease(request("x", B, 60), T0),
        Ok(Outcome::Queued { .. })
    ));
    assert_eq!(pool.return_lease(1, When::Idle, T0 + 1), Ok(()));
    assert_eq!(ended(&pool, 1), EndReason::Cancelled);
    assert_eq!(pool.queue().count(), 0);
    check(&pool);
}

#[test]
fn a_disconnected_agent_keeps_its_lease_and_gets_its_orders_again() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"])]);
    let (reserved_id, r_agent) = reserved(
        &pool
            .request_lease(request("x", B, 60), T0)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let (active_id, a_agent) = lease_out(&mut pool, "x", B, T0);
    assert_eq!(pool.return_lease(active_id, When::Idle, T0), Ok(()));
    decisions(&mut pool);
    for name in [&r_agent, &a_agent] {
        assert!(pool.agent_disconnected(name, T0 + 1).is_ok());
    }
    assert_eq!(
        pool.agent(&r_agent).and_then(|a| a.lease),
        Some(reserved_id)
    );
    assert_eq!(pool.agent(&a_agent).and_then(|a| a.lease), Some(active_id));
    // Back: the reserved one (still at home) gets `borrow` again, the
    // returning one (still at the borrower) gets `return` again.
    pool.agent_connected(hello(&r_agent, &["x"]), T0 + 2);
    let mut returning = hello(&a_agent, &["x"]);
    returning.report = at(B, true, false);
    pool.agent_connected(returning, T0 + 2);
    assert_eq!(
        decisions(&mut pool),
        [
            Decision::Lend {
                lease: reserved_id,
                agent: r_agent
            },
            Decision::Recall {
                lease: active_id,
                agent: a_agent,
                when: When::Idle
            },
        ]
    );
    check(&pool);
}

#[test]
fn an_agent_at_a_borrower_without_a_lease_is_not_lent() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    assert!(pool.agent_reported("a1", at(A, true, false), T0).is_ok());
    assert!(matches!(
        pool.request_lease(request("x", B, 60), T0),
        Ok(Outcome::Queued { .. })
    ));
    let changes = pool.take_changes();
    assert!(changes.audit.iter().any(|e| e.action == "unleased"));
    assert_eq!(
        pool.agent_reported("nobody", home(), T0),
        Err(PoolError::UnknownAgent("nobody".into()))
    );
}

#[test]
fn reclaim_brings_an_idle_agent_home_for_a_request_from_another_borrower() {
    let mut pool = pool_with(&[("mac-01", &["macos"]), ("mac-02", &["macos"])]);
    let (at_a, idle_agent) = lease_out(&mut pool, "macos", A, T0);
    let (_, busy_agent) = lease_out(&mut pool, "macos", A, T0);
    assert!(pool
        .agent_reported(&busy_agent, at(A, true, true), T0 + 1)
        .is_ok());
    // A request from B waits; one from A itself never reclaims from A.
    assert!(matches!(
        pool.request_lease(request("macos", B, 3600), T0 + 2),
        Ok(Outcome::Queued { lease: 3, .. })
    ));
    let min_idle = Duration::from_secs(600);
    assert!(pool.reclaim_candidates(T0 + 599_999, min_idle).is_empty());
    let picked = pool.reclaim_candidates(T0 + 600_000, min_idle);
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0].agent, idle_agent);
    assert_eq!((picked[0].lease, picked[0].for_lease), (at_a, 3));
    decisions(&mut pool);
    assert_eq!(pool.reclaim(T0 + 600_000, min_idle), picked);
    assert_eq!(
        decisions(&mut pool),
        [Decision::Recall {
            lease: at_a,
            agent: idle_agent.clone(),
            when: When::Idle
        }]
    );
    // Already being reclaimed for request 3: not picked twice.
    assert!(pool.reclaim_candidates(T0 + 700_000, min_idle).is_empty());
    // Home: the lease at A ends as reclaimed and B gets the agent.
    assert!(pool
        .agent_reported(&idle_agent, home(), T0 + 700_000)
        .is_ok());
    assert_eq!(ended(&pool, at_a), EndReason::Reclaimed { for_lease: 3 });
    assert_eq!(
        pool.lease(3).and_then(|l| l.agent.clone()),
        Some(idle_agent)
    );
    assert_eq!(pool.lease(3).map(|l| &l.state), Some(&LeaseState::Reserved));
    check(&pool);
}

#[test]
fn reclaim_skips_requests_from_the_same_borrower() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    lease_out(&mut pool, "x", A, T0);
    assert!(matches!(
        pool.request_lease(request("x", A, 3600), T0),
        Ok(Outcome::Queued { .. })
    ));
    assert!(pool
        .reclaim_candidates(T0 + 3_000_000, Duration::from_secs(60))
        .is_empty());
}

#[test]
fn a_borrower_cap_makes_extra_requests_wait() {
    let mut pool = Pool::new(PoolConfig {
        max_per_borrower: Some(1),
        ..PoolConfig::default()
    });
    for name in ["a1", "a2"] {
        pool.agent_connected(hello(name, &["x"]), T0);
    }
    let (first, agent) = lease_out(&mut pool, "x", "https://b.example", T0);
    // Same borrower (trailing slash or not): waits; another borrower: served.
    assert!(matches!(
        pool.request_lease(request("x", B, 60), T0),
        Ok(Outcome::Queued { lease: 2, .. })
    ));
    assert!(matches!(
        pool.request_lease(request("x", A, 60), T0),
        Ok(Outcome::Reserved { lease: 3, .. })
    ));
    // The first lease ends: the waiting request from B is now under the cap,
    // and the agent that came home serves it.
    assert!(pool.agent_reported(&agent, home(), T0 + 1).is_ok());
    assert!(matches!(ended(&pool, first), EndReason::AgentLeft { .. }));
    assert_eq!(pool.lease(2).map(|l| &l.state), Some(&LeaseState::Reserved));
    check(&pool);

    // At the cap, the timeout says so.
    assert!(matches!(
        pool.request_lease(request("x", B, 1), T0 + 2),
        Ok(Outcome::Queued { lease: 4, .. })
    ));
    pool.expire_queue(T0 + 1002);
    let EndReason::TimedOut { message } = ended(&pool, 4) else {
        panic!("not a timeout");
    };
    assert!(
        message.ends_with("already holds its limit of 1 agents"),
        "{message}"
    );
}

#[test]
fn invalid_requests_are_refused_and_change_nothing() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    let mut bad_url = request("x", "ftp://b.example/", 0);
    assert!(matches!(
        pool.request_lease(bad_url.clone(), T0),
        Err(PoolError::InvalidRequest(_))
    ));
    bad_url.borrower.url = B.into();
    bad_url.borrower.node_name = " ".into();
    assert!(matches!(
        pool.request_lease(bad_url, T0),
        Err(PoolError::InvalidRequest(_))
    ));
    let mut zero = request("x", B, 0);
    zero.lease = Some(Duration::ZERO);
    assert!(matches!(
        pool.request_lease(zero, T0),
        Err(PoolError::InvalidRequest(_))
    ));
    assert_eq!(pool.leases().count(), 0);
    assert!(decisions(&mut pool).is_empty());
}

#[test]
fn secrets_stay_out_of_debug_and_the_audit_log() {
    let mut pool = pool_with(&[("a1", &["x"])]);
    lease_out(&mut pool, "x", B, T0);
    let changes = pool.take_changes();
    let everything = format!("{pool:?} {changes:?}");
    assert!(!everything.contains(SECRET));
    assert!(everything.contains("Secret(***)"));
    let actions: Vec<&str> = changes.audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connected", "requested", "reserved", "active"]);
}

#[test]
fn restore_rebuilds_the_same_pool() {
    let mut pool = pool_with(&[("a1", &["x"]), ("a2", &["x"]), ("a3", &["y"])]);
    lease_out(&mut pool, "x", A, T0);
    let _ = pool.request_lease(request("x", B, 60), T0);
    let _ = pool.request_lease(request("x", B, 60), T0);
    let _ = pool.request_lease(request("z", B, 0), T0);
    let before = as_stored(pool.snapshot());
    let restored = Pool::restore(PoolConfig::default(), before.clone());
    let mut restored = restored.unwrap_or_else(|err| panic!("{err}"));
    check(&restored);
    assert_eq!(as_stored(restored.snapshot()), before);
    assert_eq!(restored.queue().map(|l| l.id).collect::<Vec<_>>(), [3]);
    // Ids continue after the last one, ended ones included.
    let next = restored.request_lease(request("q", B, 60), T0);
    assert!(
        matches!(next, Ok(Outcome::Queued { lease: 5, .. })),
        "{next:?}"
    );

    // A snapshot with an agent in two leases is refused.
    let mut broken = before;
    let mut twin = broken.leases[0].clone();
    twin.id = 42;
    broken.leases.push(twin);
    assert!(matches!(
        Pool::restore(PoolConfig::default(), broken),
        Err(PoolError::Inconsistent(_))
    ));
}

// ---- random operations keep the invariants ----

#[derive(Debug, Clone)]
enum Op {
    Request {
        expr: usize,
        borrower: usize,
        wait_s: u64,
    },
    Confirm(u64),
    Fail(u64),
    Report {
        agent: usize,
        place: usize,
        online: bool,
        busy: bool,
    },
    Disconnect(usize),
    Reconnect(usize),
    Return {
        lease: u64,
        now: bool,
    },
    Expire,
    Reclaim,
    Tick(u64),
}

const EXPRS: [&str; 5] = ["x", "y", "x && y", "x || y", "!x"];
const AGENTS: [(&str, &[&str]); 5] = [
    ("a1", &["x"]),
    ("a2", &["x", "y"]),
    ("a3", &["y"]),
    ("a4", &[]),
    ("a5", &["x"]),
];
const BORROWERS: [&str; 2] = [A, B];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..EXPRS.len(), 0..2usize, 0..120u64).prop_map(|(expr, borrower, wait_s)| Op::Request { expr, borrower, wait_s }),
        2 => (1..30u64).prop_map(Op::Confirm),
        1 => (1..30u64).prop_map(Op::Fail),
        3 => (0..AGENTS.len(), 0..3usize, any::<bool>(), any::<bool>())
            .prop_map(|(agent, place, online, busy)| Op::Report { agent, place, online, busy }),
        1 => (0..AGENTS.len()).prop_map(Op::Disconnect),
        1 => (0..AGENTS.len()).prop_map(Op::Reconnect),
        1 => (1..30u64, any::<bool>()).prop_map(|(lease, now)| Op::Return { lease, now }),
        1 => Just(Op::Expire),
        1 => Just(Op::Reclaim),
        2 => (1..90_000u64).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_keep_one_lease_per_agent(ops in prop::collection::vec(op(), 1..80)) {
        let mut pool = Pool::new(PoolConfig { max_per_borrower: Some(3), max_attempts: 2, ..PoolConfig::default() });
        for (name, labels) in AGENTS {
            pool.agent_connected(hello(name, labels), T0);
        }
        let mut now = T0;
        for op in ops {
            match op {
                Op::Request { expr, borrower, wait_s } => {
                    let _ = pool.request_lease(request(EXPRS[expr], BORROWERS[borrower], wait_s), now);
                }
                Op::Confirm(id) => { let _ = pool.confirm(id, now); }
                Op::Fail(id) => { let _ = pool.fail(id, "refused", now); }
                Op::Report { agent, place, online, busy } => {
                    let report = match place {
                        0 => lender::pool::AgentReport { place: Place::Home, online, busy },
                        p => at(BORROWERS[p - 1], online, busy),
                    };
                    let _ = pool.agent_reported(AGENTS[agent].0, report, now);
                }
                Op::Disconnect(agent) => { let _ = pool.agent_disconnected(AGENTS[agent].0, now); }
                Op::Reconnect(agent) => pool.agent_connected(hello(AGENTS[agent].0, AGENTS[agent].1), now),
                Op::Return { lease, now: at_once } => {
                    let _ = pool.return_lease(lease, if at_once { When::Now } else { When::Idle }, now);
                }
                Op::Expire => { pool.expire_queue(now); }
                Op::Reclaim => { pool.reclaim(now, Duration::from_secs(30)); }
                Op::Tick(ms) => now += ms,
            }
            prop_assert_eq!(pool.check_invariants(), Ok(()));
            // Directly: no agent in two leases that hold one.
            let mut holders = BTreeSet::new();
            for lease in pool.leases().filter(|l| l.state.holds_agent()) {
                prop_assert!(holders.insert(lease.agent.clone()), "{:?} held twice", lease.agent);
            }
            // No free agent is left idle while a live request it satisfies
            // waits (caps aside).
            for waiting in pool.queue().filter(|l| l.deadline_ms > now) {
                let url = waiting.request.borrower.url.trim_end_matches('/');
                let held = pool.leases().filter(|l| l.state.holds_agent()
                    && l.request.borrower.url.trim_end_matches('/') == url).count();
                if held >= 3 { continue; }
                for agent in pool.agents().filter(|a| a.is_free()) {
                    prop_assert!(
                        waiting.tried(&agent.name) || !waiting.request.requirements.matches(&agent.labels),
                        "{} is free but request {} waits", agent.name, waiting.id
                    );
                }
            }
            // Restoring from the live state gives the same pool.
            let stored = as_stored(pool.snapshot());
            let restored = Pool::restore(PoolConfig::default(), stored.clone());
            prop_assert!(restored.is_ok());
            if let Ok(restored) = restored {
                prop_assert_eq!(as_stored(restored.snapshot()), stored);
            }
        }
    }
}

#[test]
fn a_client_at_its_queue_limit_is_refused_and_nothing_changes() {
    let config = PoolConfig {
        max_queued_per_client: 3,
        ..PoolConfig::default()
    };
    let mut pool = Pool::new(config);
    pool.agent_connected(hello("mac-01", &["macos"]), T0);
    decisions(&mut pool);
    // Three wait for gpu, which nobody has.
    for i in 0..3 {
        let outcome = pool.request_lease(request("gpu", B, 60), T0 + i);
        assert!(matches!(outcome, Ok(Outcome::Queued { .. })), "{outcome:?}");
    }
    let _ = pool.take_changes();
    let before = pool.snapshot();
    let refused = pool.request_lease(request("gpu", B, 60), T0 + 10);
    assert_eq!(
        refused,
        Err(PoolError::TooManyQueued {
            client: "team-b".into(),
            limit: 3
        })
    );
    assert_eq!(pool.snapshot(), before, "a refused request changes nothing");
    assert!(pool.take_changes().is_empty());
    assert_eq!(pool.queue().count(), 3);

    // Served at once, it never queues: allowed at the limit.
    let served = pool.request_lease(request("macos", B, 60), T0 + 11);
    assert!(matches!(served, Ok(Outcome::Reserved { .. })), "{served:?}");
    // Not waiting at all: it ends at once, allowed too.
    let now = pool.request_lease(request("gpu", B, 0), T0 + 12);
    assert!(matches!(now, Ok(Outcome::Ended { .. })), "{now:?}");
    // Another client has its own limit.
    let mut other = request("gpu", B, 60);
    other.client = "team-a".into();
    assert!(matches!(
        pool.request_lease(other, T0 + 13),
        Ok(Outcome::Queued { .. })
    ));
    // Ids were not spent on the refusal: 1..=3 queued, then 4, 5, 6.
    assert_eq!(pool.queue().map(|l| l.id).collect::<Vec<_>>(), [1, 2, 3, 6]);
    // One withdrawn, the client may queue again.
    assert_eq!(pool.return_lease(1, When::Idle, T0 + 14), Ok(()));
    assert!(matches!(
        pool.request_lease(request("gpu", B, 60), T0 + 15),
        Ok(Outcome::Queued { .. })
    ));
    check(&pool);
}

#[test]
fn requests_over_the_duration_limits_or_with_bad_names_are_refused() {
    let mut pool = pool_with(&[("mac-01", &["macos"])]);
    let day = Duration::from_secs(86_400);
    let eons = Duration::from_secs(500_000_000 * 365 * 86_400);
    type Tweak<'a> = Box<dyn Fn(&mut lender::pool::LeaseRequest) + 'a>;
    let cases: Vec<(Tweak<'_>, &str)> = vec![
        (
            Box::new(|r| r.lease = Some(30 * day + Duration::from_secs(1))),
            "`lease` must be at most 30days",
        ),
        (
            Box::new(move |r| r.lease = Some(eons)),
            "`lease` must be at most",
        ),
        (
            Box::new(|r| r.idle_return = Some(Duration::MAX)),
            "`idle_return` must be at most",
        ),
        (
            Box::new(|r| r.wait = day + Duration::from_secs(1)),
            "`wait` must be at most 1day",
        ),
        (Box::new(move |r| r.wait = eons), "`wait` must be at most"),
        (
            Box::new(|r| r.borrower.node_name = "a/b".into()),
            "node name must not contain '/'",
        ),
        (
            Box::new(|r| r.borrower.node_name = "..".into()),
            "node name must not be `.` or `..`",
        ),
        (
            Box::new(|r| r.borrower.node_name = "n".repeat(256)),
            "at most 255",
        ),
        (
            Box::new(|r| r.borrower.url = format!("{B}{}", "x".repeat(2048))),
            "at most 2048",
        ),
        (
            Box::new(|r| r.borrower.url = format!("{B}\r\nX-Evil: 1")),
            "NUL, CR or LF",
        ),
    ];
    for (tweak, message) in cases {
        let mut request = request("macos", B, 60);
        tweak(&mut request);
        match pool.request_lease(request, T0) {
            Err(PoolError::InvalidRequest(text)) => assert!(text.contains(message), "{text}"),
            other => panic!("expected {message:?}, got {other:?}"),
        }
    }
    assert_eq!(pool.leases().count(), 0);
    // At the limits exactly: accepted.
    let mut request = request("macos", B, 86_400);
    request.lease = Some(30 * day);
    request.idle_return = Some(30 * day);
    assert!(matches!(
        pool.request_lease(request, T0),
        Ok(Outcome::Reserved { .. })
    ));
    check(&pool);
}
