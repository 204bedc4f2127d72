//! Builders shared by the pool and store tests.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use control::labels::Expr;
use control::Transport;
use lender::pool::{
    AgentHello, AgentReport, Borrower, Decision, LeaseRequest, Place, Pool, Secret, Snapshot,
};

pub const A: &str = "https://a.example/";
pub const B: &str = "https://b.example/";
pub const SECRET: &str = "0f1e2d3c4b5a";

pub fn hello(name: &str, labels: &[&str]) -> AgentHello {
    AgentHello {
        name: name.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        os: Some("linux".into()),
        arch: Some("x86_64".into()),
        report: home(),
    }
}

pub fn home() -> AgentReport {
    AgentReport {
        place: Place::Home,
        online: true,
        busy: false,
    }
}

pub fn at(url: &str, online: bool, busy: bool) -> AgentReport {
    AgentReport {
        place: Place::Borrowed { url: url.into() },
        online,
        busy,
    }
}

pub fn expr(text: &str) -> Expr {
    match Expr::parse(text) {
        Ok(e) => e,
        Err(err) => panic!("{text:?}: {err}"),
    }
}

pub fn request(requirements: &str, url: &str, wait_secs: u64) -> LeaseRequest {
    LeaseRequest {
        requirements: expr(requirements),
        borrower: Borrower {
            url: url.into(),
            node_name: "borrowed-node".into(),
            secret: Secret::new(SECRET),
            transport: Some(Transport::WebSocket),
        },
        client: "team-b".into(),
        lease: Some(Duration::from_secs(7200)),
        idle_return: Some(Duration::from_secs(1800)),
        wait: Duration::from_secs(wait_secs),
        origin: None,
    }
}

pub fn decisions(pool: &mut Pool) -> Vec<Decision> {
    std::iter::from_fn(|| pool.poll_decision()).collect()
}

pub fn check(pool: &Pool) {
    if let Err(err) = pool.check_invariants() {
        panic!("invariant broken: {err}\n{pool:#?}");
    }
}

/// A snapshot as a store gives it back: agents disconnected, not online,
/// their lease links rebuilt from the leases.
pub fn as_stored(mut snapshot: Snapshot) -> Snapshot {
    for agent in &mut snapshot.agents {
        agent.connected = false;
        agent.online = false;
        agent.lease = None;
    }
    snapshot
}

pub fn names(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}
