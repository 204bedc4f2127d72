//! Lease decision time with 1,000 agents: how long `request_lease` (and
//! serving the queue when an agent comes home) takes, excluding the agent's
//! move, and what the server's copy of the pool for a client's change costs.
//! Then the same decision with its commit, as the server makes it durable
//! before answering: on a SQLite file (`synchronous=FULL`) and on
//! PostgreSQL (a throwaway cluster, fsync on; skipped with a message when
//! PostgreSQL is not installed). Prints p50 / p99 / max per scenario.
//!
//! Run: `cargo bench -p jnlp-lender --bench decide`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use control::labels::Expr;
use control::{Transport, When};
use lender::pool::{
    AgentHello, AgentReport, Borrower, LeaseRequest, Outcome, Place, Pool, PoolConfig, Secret,
};
use lender::store::{PgStore, PgTarget, SqliteStore, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

const AGENTS: usize = 1_000;
/// Decisions timed with their commit, per store.
const COMMITTED: usize = 1_000;
const TOOLS: usize = 30;
const BORROWERS: [&str; 4] = [
    "https://b1.example/",
    "https://b2.example/",
    "https://b3.example/",
    "https://b4.example/",
];

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn tool(rng: &mut StdRng) -> String {
    format!("tool-{:02}", rng.gen_range(0..TOOLS))
}

fn agent_hello(rng: &mut StdRng, i: usize) -> AgentHello {
    let os = match rng.gen_range(0..100) {
        0..=59 => "linux",
        60..=84 => "macos",
        _ => "windows",
    };
    let arch = pick(rng, &["x86_64", "aarch64"]);
    let mut labels: BTreeSet<String> = (0..TOOLS)
        .filter(|_| rng.gen_bool(0.2))
        .map(|t| format!("tool-{t:02}"))
        .collect();
    if rng.gen_bool(0.05) {
        labels.insert("gpu".into());
    }
    AgentHello {
        name: format!("agent-{i:04}"),
        labels,
        os: Some(os.into()),
        arch: Some(arch.into()),
        report: AgentReport {
            place: Place::Home,
            online: true,
            busy: false,
        },
    }
}

/// A random requirement, from common shapes.
fn requirement(rng: &mut StdRng) -> Expr {
    let os = pick(rng, &["linux", "macos", "windows"]);
    let arch = pick(rng, &["amd64", "arm64"]);
    let text = match rng.gen_range(0..5) {
        0 => format!("{os} && {arch}"),
        1 => format!("{os} && {} && !{}", tool(rng), tool(rng)),
        2 => format!("({} || {}) && {arch}", tool(rng), tool(rng)),
        3 => format!("gpu -> {os}"),
        _ => format!(
            "{os} && {arch} && {} && {} && {}",
            tool(rng),
            tool(rng),
            tool(rng)
        ),
    };
    Expr::parse(&text).unwrap_or_else(|err| panic!("{text}: {err}"))
}

fn request(rng: &mut StdRng, requirements: Expr, wait: Duration) -> LeaseRequest {
    LeaseRequest {
        requirements,
        borrower: Borrower {
            url: pick(rng, &BORROWERS).into(),
            node_name: "node".into(),
            secret: Secret::new("s3cr3t"),
            transport: Some(Transport::Tcp),
        },
        client: "bench".into(),
        lease: Some(Duration::from_secs(3600)),
        idle_return: None,
        wait,
        origin: None,
    }
}

fn new_pool(rng: &mut StdRng) -> Pool {
    // One client fills the queue to 500 here: no per-client limit.
    let mut pool = Pool::new(PoolConfig {
        max_queued_per_client: usize::MAX,
        ..PoolConfig::default()
    });
    for i in 0..AGENTS {
        pool.agent_connected(agent_hello(rng, i), 0);
    }
    drain(&mut pool);
    pool
}

/// What the driver does after each call (not timed).
fn drain(pool: &mut Pool) {
    while pool.poll_decision().is_some() {}
    let _ = pool.take_changes();
}

fn report(samples: &mut [Duration], name: &str) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<58} n={:<6} p50={:>8.1?} p99={:>8.1?} max={:>8.1?}",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Every agent at home and idle: each request is reserved (or, when
/// nothing matches, ends at once), then freed again untimed.
fn idle_pool(rng: &mut StdRng) {
    let mut pool = new_pool(rng);
    let mut samples = Vec::new();
    let mut reserved = 0;
    for now in 1..=20_000u64 {
        let requirements = requirement(rng);
        let req = request(rng, requirements, Duration::ZERO);
        let start = Instant::now();
        let outcome = pool.request_lease(req, now);
        samples.push(start.elapsed());
        if let Ok(Outcome::Reserved { lease, agent }) = outcome {
            reserved += 1;
            let _ = pool.return_lease(lease, When::Now, now);
            let home = AgentReport {
                place: Place::Home,
                online: true,
                busy: false,
            };
            let _ = pool.agent_reported(&agent, home, now);
        }
        drain(&mut pool);
        if now % 1000 == 0 {
            pool.forget_ended(now + 1);
        }
    }
    report(
        &mut samples,
        &format!("request_lease, 1000 idle agents ({reserved} reserved)"),
    );
}

/// 900 agents lent out, 500 requests waiting: new requests scan the pool
/// and mostly queue; then agents come home and serve the queue.
fn loaded_pool(rng: &mut StdRng) {
    let mut pool = new_pool(rng);
    let any = Expr::parse("linux || macos || windows").unwrap_or_else(|err| panic!("{err}"));
    let mut lent = Vec::new();
    for now in 1..=900u64 {
        let req = request(rng, any.clone(), Duration::ZERO);
        if let Ok(Outcome::Reserved { lease, agent }) = pool.request_lease(req, now) {
            let url = pool.lease(lease).map(|l| l.request.borrower.url.clone());
            let there = AgentReport {
                place: Place::Borrowed {
                    url: url.unwrap_or_default(),
                },
                online: true,
                busy: false,
            };
            let _ = pool.agent_reported(&agent, there, now);
            lent.push(agent);
        }
    }
    drain(&mut pool);
    let wait = Duration::from_secs(24 * 3600);
    let mut samples = Vec::new();
    let mut now = 1_000;
    while pool.queue().count() < 500 {
        now += 1;
        let requirements = requirement(rng);
        let req = request(rng, requirements, wait);
        let start = Instant::now();
        let _ = pool.request_lease(req, now);
        samples.push(start.elapsed());
        drain(&mut pool);
    }
    report(
        &mut samples,
        "request_lease, 900 lent, queue filling to 500",
    );

    // The server tries each client's change on a copy of the pool, kept only
    // once the database has it: the copy's cost comes on top of a decision.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let copy = pool.clone();
        samples.push(start.elapsed());
        drop(copy);
    }
    report(
        &mut samples,
        &format!(
            "copy of the pool for a client's change ({} leases)",
            pool.leases().count()
        ),
    );

    let mut samples = Vec::new();
    for agent in lent.iter().take(400) {
        now += 1;
        let home = AgentReport {
            place: Place::Home,
            online: true,
            busy: false,
        };
        let start = Instant::now();
        let _ = pool.agent_reported(agent, home, now);
        samples.push(start.elapsed());
        drain(&mut pool);
    }
    report(
        &mut samples,
        &format!(
            "agent home -> serve queue of <=500 ({} still waiting)",
            pool.queue().count()
        ),
    );
}

/// A decision and its commit, as the server does before it answers:
/// `request_lease` on 1,000 idle agents, then the pool's changes (the
/// lease, the agent, the audit entries) in one transaction. The lease is
/// returned and the agent comes home untimed (committed too).
fn committed(rng: &mut StdRng, name: &str, store: &mut dyn Store) -> Result<(), String> {
    let mut pool = Pool::new(PoolConfig {
        max_queued_per_client: usize::MAX,
        ..PoolConfig::default()
    });
    for i in 0..AGENTS {
        pool.agent_connected(agent_hello(rng, i), 0);
    }
    while pool.poll_decision().is_some() {}
    store
        .commit(&pool.take_changes())
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for now in 1..=COMMITTED as u64 {
        let requirements = requirement(rng);
        let req = request(rng, requirements, Duration::ZERO);
        let start = Instant::now();
        let outcome = pool.request_lease(req, now);
        store
            .commit(&pool.take_changes())
            .map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
        while pool.poll_decision().is_some() {}
        if let Ok(Outcome::Reserved { lease, agent }) = outcome {
            let _ = pool.return_lease(lease, When::Now, now);
            let home = AgentReport {
                place: Place::Home,
                online: true,
                busy: false,
            };
            let _ = pool.agent_reported(&agent, home, now);
        }
        while pool.poll_decision().is_some() {}
        store
            .commit(&pool.take_changes())
            .map_err(|e| e.to_string())?;
    }
    report(&mut samples, &format!("request_lease + commit, {name}"));
    Ok(())
}

fn stores(rng: &mut StdRng) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("jnlp-lender-decide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let sqlite = SqliteStore::open(&dir.join("lender.db")).map_err(|e| e.to_string());
    let outcome =
        sqlite.and_then(|mut store| committed(rng, "SQLite (synchronous=FULL)", &mut store));
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    if pg_support::bin_dir().is_none() {
        println!(
            "request_lease + commit, PostgreSQL: skipped (PostgreSQL is not installed: \
             no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
        );
        return Ok(());
    }
    let pg = pg_support::TestPg::start_with(true)?;
    let url = pg.database("decide");
    let mut store = PgTarget::parse(&url, None)
        .and_then(|target| PgStore::open(&target))
        .map_err(|e| e.to_string())?;
    committed(rng, "PostgreSQL (fsync on, loopback)", &mut store)
}

fn main() {
    let mut rng = StdRng::seed_from_u64(9);
    println!("lease decision time, {AGENTS} agents, {TOOLS} tool labels (seed 9)");
    idle_pool(&mut rng);
    loaded_pool(&mut rng);
    if let Err(err) = stores(&mut rng) {
        eprintln!("decide bench: {err}");
        std::process::exit(1);
    }
}
