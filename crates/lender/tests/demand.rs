//! Lending on demand in the pool, with simulated time: one auto-lease per
//! waiting item, provisioning before the borrow, items leaving the queue,
//! `--max-agents`, a refused create skipping its item.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use control::Transport;
use lender::pool::{
    Decision, DemandItem, DemandTemplate, EndReason, LeaseState, Pool, PoolConfig, Secret,
};

const T0: u64 = 1_700_000_000_000;
const C: &str = "http://ci-b.example/";

fn pool_with(agents: &[(&str, &[&str])]) -> Pool {
    let mut pool = Pool::new(PoolConfig::default());
    for (name, labels) in agents {
        pool.agent_connected(hello(name, labels), T0);
    }
    decisions(&mut pool);
    pool
}

fn item(queue_id: u64, since: u64, label: &str) -> DemandItem {
    DemandItem {
        queue_id,
        in_queue_since_ms: since,
        requirements: expr(label),
    }
}

fn template(max_agents: Option<u32>) -> DemandTemplate {
    DemandTemplate {
        url: C.into(),
        max_agents,
        idle_return: Some(Duration::from_secs(300)),
        one_build: false,
    }
}

fn state(pool: &Pool, id: u64) -> LeaseState {
    pool.lease(id).expect("lease").state.clone()
}

#[test]
fn an_item_gets_an_auto_lease_its_node_then_the_borrow() {
    let mut pool = pool_with(&[("mac1", &["macos"]), ("lin1", &["linux"])]);
    let ids = pool.demand("ci-b", &template(None), &[item(7, T0, "macos")], T0);
    assert_eq!(ids.len(), 1);
    let id = ids[0];
    // Reserved, but no borrow before the node exists.
    assert_eq!(state(&pool, id), LeaseState::Reserved);
    assert_eq!(
        decisions(&mut pool),
        [Decision::Provision {
            lease: id,
            agent: "mac1".into()
        }]
    );
    check(&pool);
    // The same item again: nothing new.
    assert!(pool
        .demand("ci-b", &template(None), &[item(7, T0, "macos")], T0 + 1)
        .is_empty());

    pool.provisioned(
        id,
        "lent-mac1",
        Secret::new("ab12"),
        Some(Transport::WebSocket),
        T0 + 2,
    )
    .unwrap();
    assert_eq!(
        decisions(&mut pool),
        [Decision::Lend {
            lease: id,
            agent: "mac1".into()
        }]
    );
    let borrow = pool.lease(id).unwrap().borrow_request(None);
    assert_eq!(borrow.name, "lent-mac1");
    assert_eq!(borrow.secret.as_deref(), Some("ab12"));
    assert_eq!(borrow.transport, Some(Transport::WebSocket));
    assert_eq!(borrow.idle_return, Some(Duration::from_secs(300)));
    // Provisioned twice: refused.
    assert!(pool
        .provisioned(id, "lent-mac1", Secret::new("ab12"), None, T0 + 3)
        .is_err());

    // Online there: active; the item leaving the queue (its build started
    // on the node) leaves the lease alone.
    pool.agent_reported("mac1", at(C, true, true), T0 + 4)
        .unwrap();
    assert_eq!(state(&pool, id), LeaseState::Active);
    pool.demand("ci-b", &template(None), &[], T0 + 5);
    assert_eq!(state(&pool, id), LeaseState::Active);
    // Home again (idle return): ended.
    pool.agent_reported("mac1", home(), T0 + 6).unwrap();
    assert!(matches!(state(&pool, id), LeaseState::Ended(_)));
    check(&pool);
}

#[test]
fn items_leaving_the_queue_cancel_queued_and_reserved_auto_leases() {
    let mut pool = pool_with(&[("mac1", &["macos"])]);
    let ids = pool.demand(
        "ci-b",
        &template(None),
        &[item(1, T0, "macos"), item(2, T0 + 1, "macos")],
        T0,
    );
    let (first, second) = (ids[0], ids[1]);
    assert_eq!(state(&pool, first), LeaseState::Reserved);
    assert_eq!(state(&pool, second), LeaseState::Queued);
    decisions(&mut pool);
    // Item 1 is gone before its node was made: its agent goes to item 2.
    pool.demand("ci-b", &template(None), &[item(2, T0 + 1, "macos")], T0 + 2);
    assert_eq!(state(&pool, first), LeaseState::Ended(EndReason::Cancelled));
    assert_eq!(state(&pool, second), LeaseState::Reserved);
    assert_eq!(pool.lease(second).unwrap().agent.as_deref(), Some("mac1"));
    // Item 2 goes too, after its borrow went out: the agent is recalled.
    pool.provisioned(second, "lent-mac1", Secret::new("s"), None, T0 + 3)
        .unwrap();
    decisions(&mut pool);
    pool.demand("ci-b", &template(None), &[], T0 + 4);
    assert!(matches!(state(&pool, second), LeaseState::Returning(_)));
    assert!(decisions(&mut pool)
        .iter()
        .any(|d| matches!(d, Decision::Recall { lease, .. } if *lease == second)));
    check(&pool);
}

#[test]
fn max_agents_caps_a_controller_and_the_oldest_item_goes_first() {
    let mut pool = pool_with(&[("m1", &["macos"]), ("m2", &["macos"])]);
    // Given newest first, served oldest first.
    let ids = pool.demand(
        "ci-b",
        &template(Some(1)),
        &[item(9, T0 + 5, "macos"), item(3, T0, "macos")],
        T0 + 10,
    );
    let origin = |id| pool.lease(id).unwrap().request.origin.clone().unwrap();
    assert_eq!(origin(ids[0]).queue_id, 3);
    assert_eq!(state(&pool, ids[0]), LeaseState::Reserved);
    assert_eq!(
        state(&pool, ids[1]),
        LeaseState::Queued,
        "one agent at most"
    );
    check(&pool);
}

#[test]
fn a_refused_create_frees_the_agent_and_skips_the_item() {
    let mut pool = pool_with(&[("mac1", &["macos"])]);
    let id = pool.demand("ci-b", &template(None), &[item(4, T0, "macos")], T0)[0];
    decisions(&mut pool);
    pool.provision_failed(id, "lender lacks hudson.model.Computer.Create", T0 + 1)
        .unwrap();
    match state(&pool, id) {
        LeaseState::Ended(EndReason::Failed { message }) => {
            assert!(message.contains("Computer.Create"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(pool.agent("mac1").unwrap().is_free());
    // The item still waits: it is not tried again.
    assert!(pool
        .demand("ci-b", &template(None), &[item(4, T0, "macos")], T0 + 2)
        .is_empty());
    // An item no agent matches waits (no agent reserved).
    let ids = pool.demand("ci-b", &template(None), &[item(5, T0, "gpu")], T0 + 3);
    assert_eq!(state(&pool, ids[0]), LeaseState::Queued);
    check(&pool);
}

#[test]
fn one_build_recalls_the_agent_once_its_first_build_is_over() {
    let mut pool = pool_with(&[("mac1", &["macos"])]);
    let mut t = template(None);
    t.one_build = true;
    let id = pool.demand("ci-b", &t, &[item(1, T0, "macos")], T0)[0];
    pool.provisioned(id, "lent-mac1", Secret::new("s"), None, T0 + 1)
        .unwrap();
    decisions(&mut pool);
    // Online and idle: no build yet, it stays.
    pool.agent_reported("mac1", at(C, true, false), T0 + 2)
        .unwrap();
    assert_eq!(state(&pool, id), LeaseState::Active);
    pool.agent_reported("mac1", at(C, true, true), T0 + 3)
        .unwrap();
    assert_eq!(state(&pool, id), LeaseState::Active);
    assert!(
        pool.lease(id)
            .unwrap()
            .request
            .origin
            .as_ref()
            .unwrap()
            .built
    );
    // The build is over: the agent is recalled.
    pool.agent_reported("mac1", at(C, true, false), T0 + 4)
        .unwrap();
    assert!(matches!(state(&pool, id), LeaseState::Returning(_)));
    assert!(decisions(&mut pool)
        .iter()
        .any(|d| matches!(d, Decision::Recall { lease, .. } if *lease == id)));
    check(&pool);
}

#[test]
fn the_oldest_waiting_build_goes_first_across_controllers() {
    let mut pool = pool_with(&[("m1", &["macos"])]);
    pool.agent_reported("m1", at(C, true, true), T0).unwrap();
    // m1 is away (busy, no lease): both wait. ci-b's item is younger but
    // asked first.
    let b = pool.demand(
        "ci-b",
        &template(None),
        &[item(1, T0 + 50, "macos")],
        T0 + 100,
    )[0];
    let mut other = template(None);
    other.url = "http://ci-c.example/".into();
    let c = pool.demand("ci-c", &other, &[item(1, T0 + 10, "macos")], T0 + 101)[0];
    assert_eq!(state(&pool, b), LeaseState::Queued);
    assert_eq!(state(&pool, c), LeaseState::Queued);
    // m1 comes home: ci-c's older item gets it.
    pool.agent_reported("m1", home(), T0 + 200).unwrap();
    assert_eq!(state(&pool, c), LeaseState::Reserved);
    assert_eq!(state(&pool, b), LeaseState::Queued);
    check(&pool);
}
