//! Builders for tests of the lender's pool and store: agents' hellos and
//! reports, lease requests, and checks of the pool's invariants.

use std::collections::BTreeSet;
use std::time::Duration;

use control::labels::Expr;
use control::Transport;
use lender::pool::{
    AgentHello, AgentReport, Borrower, Decision, LeaseRequest, Place, Pool, Secret, Snapshot,
};

/// A borrower.
pub const A: &str = "https://a.example/";
/// Another borrower.
pub const B: &str = "https://b.example/";
/// The borrower node's secret in [`request`]s.
pub const SECRET: &str = "0f1e2d3c4b5a";

/// An agent's hello: at home, online, idle, with `labels`.
pub fn hello(name: &str, labels: &[&str]) -> AgentHello {
    AgentHello {
        name: name.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        os: Some("linux".into()),
        arch: Some("x86_64".into()),
        report: home(),
    }
}

/// A report: at home, online, idle.
pub fn home() -> AgentReport {
    AgentReport {
        place: Place::Home,
        online: true,
        busy: false,
    }
}

/// A report: at the borrower `url`.
pub fn at(url: &str, online: bool, busy: bool) -> AgentReport {
    AgentReport {
        place: Place::Borrowed { url: url.into() },
        online,
        busy,
    }
}

/// A label expression; panics naming it if it does not parse.
pub fn expr(text: &str) -> Expr {
    match Expr::parse(text) {
        Ok(e) => e,
        Err(err) => panic!("{text:?}: {err}"),
    }
}

/// A lease request by client `team-b` for the borrower `url`, waiting
/// `wait_secs`.
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

/// Every decision the pool has pending.
pub fn decisions(pool: &mut Pool) -> Vec<Decision> {
    std::iter::from_fn(|| pool.poll_decision()).collect()
}

/// Panics with the pool if an invariant is broken.
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

/// The names in a set, in order.
pub fn names(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}
