//! The store: every implementation keeps the same state, SQLite and
//! PostgreSQL (a throwaway cluster, `pg_support`) across a restart; one
//! suite, run on each.

mod common;
mod pg_support;

use common::*;
use control::When;
use lender::pool::{
    Decision, EndReason, LeaseState, Outcome, Pool, PoolConfig, ReturnCause, Snapshot,
};
use lender::store::{Leadership, MemoryStore, PgStore, PgTarget, SqliteStore, Store, StoreError};
use pg_support::TestPg;
use test_support::Scratch;

const T0: u64 = 1_700_000_000_000;

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

/// A pool with a lease in every state, committed to `store` after each
/// step, as the service would.
fn busy_pool(store: &mut dyn Store) -> Pool {
    let mut pool = Pool::new(PoolConfig::default());
    let mut step = |pool: &mut Pool| ok(store.commit(&pool.take_changes()));
    for (name, labels) in [
        ("a1", &["x"][..]),
        ("a2", &["x"]),
        ("a3", &["x", "y"]),
        ("a4", &["x"]),
    ] {
        pool.agent_connected(hello(name, labels), T0);
    }
    step(&mut pool);
    // 1: active at A, then returning.
    let Ok(Outcome::Reserved { agent: a, .. }) = pool.request_lease(request("x", A, 60), T0) else {
        panic!("no reservation");
    };
    ok(pool.agent_reported(&a, at(A, true, false), T0 + 1));
    ok(pool.return_lease(1, When::Idle, T0 + 2));
    step(&mut pool);
    // 2: active at B, idle.
    let Ok(Outcome::Reserved { agent: b, .. }) = pool.request_lease(request("x", B, 60), T0 + 3)
    else {
        panic!("no reservation");
    };
    ok(pool.agent_reported(&b, at(B, true, false), T0 + 4));
    // 3: reserved, with a failed attempt behind it.
    let _ = pool.request_lease(request("x && y", B, 60), T0 + 5);
    let _ = ok(pool.fail(3, "handshake: refused", T0 + 6));
    // 4: reserved.
    let _ = pool.request_lease(request(r#""odd label" || x"#, B, 60), T0 + 7);
    step(&mut pool);
    // 5: reserved (a3, free again); 6: queued; 7: ended at once.
    let _ = pool.request_lease(request("x", B, 600), T0 + 8);
    let _ = pool.request_lease(request("y", A, 600), T0 + 9);
    let _ = pool.request_lease(request("nothing", B, 0), T0 + 10);
    step(&mut pool);
    check(&pool);
    pool
}

fn states(snapshot: &Snapshot) -> Vec<(u64, &'static str)> {
    snapshot
        .leases
        .iter()
        .map(|l| (l.id, l.state.name()))
        .collect()
}

fn round_trip(store: &mut dyn Store) {
    let pool = busy_pool(store);
    let loaded = ok(store.load());
    assert_eq!(loaded, as_stored(pool.snapshot()));
    assert_eq!(
        states(&loaded),
        [
            (1, "returning"),
            (2, "active"),
            (3, "queued"),
            (4, "reserved"),
            (5, "reserved"),
            (6, "queued"),
        ]
    );
    assert_eq!(loaded.next_id, 8);
    let queue: Vec<u64> = ok(store.queue()).iter().map(|l| l.id).collect();
    assert_eq!(queue, [3, 6]);
    assert_eq!(queue, pool.queue().map(|l| l.id).collect::<Vec<_>>());
    // Ended leases are kept, without their secret.
    let ended = ok(store.lease(7)).unwrap_or_else(|| panic!("lease 7 missing"));
    assert!(matches!(
        ended.state,
        LeaseState::Ended(EndReason::TimedOut { .. })
    ));
    assert_eq!(ended.request.borrower.secret.expose(), "");
    assert_eq!(ok(store.lease(99)), None);
    let returning = ok(store.lease(1)).unwrap_or_else(|| panic!("lease 1 missing"));
    assert_eq!(
        returning.state,
        LeaseState::Returning(ReturnCause::Requested)
    );
    assert_eq!(returning.request.borrower.secret.expose(), SECRET);
    // The audit log pages in order.
    let first = ok(store.audit(0, 3));
    assert_eq!(first.len(), 3);
    let rest = ok(store.audit(first[2].id, 1000));
    assert!(rest.iter().all(|r| r.id > first[2].id));
    assert!(rest.iter().any(|r| r.entry.action == "borrow-failed"
        && r.entry.lease == Some(3)
        && r.entry.detail == "handshake: refused"));
}

#[test]
fn memory_store_round_trip() {
    round_trip(&mut MemoryStore::new());
}

#[test]
fn sqlite_store_round_trip() {
    round_trip(&mut ok(SqliteStore::open_in_memory()));
}

#[test]
fn sqlite_reopened_after_a_restart_gives_the_same_leases_and_queue() {
    let scratch = Scratch::new("restart");
    assert_eq!(ok(ok(SqliteStore::open(&scratch.db())).schema_version()), 5);
    reopened_after_a_restart(|| Box::new(ok(SqliteStore::open(&scratch.db()))));
}

#[test]
fn postgres_reopened_after_a_restart_gives_the_same_leases_and_queue() {
    let pg = TestPg::start();
    let target = pg_target(&pg.database("restart"));
    assert_eq!(ok(ok(PgStore::open(&target)).schema_version()), 1);
    reopened_after_a_restart(|| Box::new(ok(PgStore::open_existing(&target))));
}

fn pg_target(url: &str) -> PgTarget {
    ok(PgTarget::parse(url, None))
}

fn reopened_after_a_restart(open: impl Fn() -> Box<dyn Store>) {
    let before = {
        let mut store = open();
        let pool = busy_pool(store.as_mut());
        as_stored(pool.snapshot())
    };
    // "Restart": a new process opens the database and rebuilds the pool.
    let mut store = open();
    let snapshot = ok(store.load());
    assert_eq!(snapshot, before);
    let mut pool = ok(Pool::restore(PoolConfig::default(), snapshot));
    check(&pool);
    assert_eq!(pool.queue().map(|l| l.id).collect::<Vec<_>>(), [3, 6]);
    assert!(pool.agents().all(|a| !a.connected));

    // Agents reconnect and report: the reserved ones get `borrow` again,
    // the returning one `return`; ids go on from 8; the agent that comes
    // home serves the oldest waiting request it satisfies.
    let mut a1 = hello("a1", &["x"]);
    a1.report = at(A, true, false);
    pool.agent_connected(a1, T0 + 100);
    for (name, labels) in [("a2", &["x"][..]), ("a3", &["x", "y"]), ("a4", &["x"])] {
        let mut h = hello(name, labels);
        if name == "a2" {
            h.report = at(B, true, false);
        }
        pool.agent_connected(h, T0 + 100);
    }
    check(&pool);
    assert_eq!(
        decisions(&mut pool),
        [
            Decision::Recall {
                lease: 1,
                agent: "a1".into(),
                when: When::Idle
            },
            Decision::Lend {
                lease: 5,
                agent: "a3".into()
            },
            Decision::Lend {
                lease: 4,
                agent: "a4".into()
            },
        ]
    );
    let next = pool.request_lease(request("x", B, 60), T0 + 101);
    assert!(
        matches!(next, Ok(Outcome::Queued { lease: 8, .. })),
        "{next:?}"
    );
    ok(pool.agent_reported("a1", home(), T0 + 102));
    assert_eq!(
        pool.lease(1).map(|l| &l.state),
        Some(&LeaseState::Ended(EndReason::Returned))
    );
    assert_eq!(
        pool.lease(3).map(|l| l.state.name()),
        Some("queued"),
        "a1 already failed for 3"
    );
    assert_eq!(pool.lease(8).map(|l| l.state.name()), Some("reserved"));
    assert_eq!(
        pool.lease(8).and_then(|l| l.agent.clone()).as_deref(),
        Some("a1")
    );
    ok(store.commit(&pool.take_changes()));
    drop(store);
    let store = open();
    assert_eq!(ok(store.load()), as_stored(pool.snapshot()));
}

#[test]
fn a_newer_schema_is_refused() {
    let scratch = Scratch::new("newer");
    drop(ok(SqliteStore::open(&scratch.db())));
    {
        let conn = ok(rusqlite::Connection::open(scratch.db()));
        ok(conn.pragma_update(None, "user_version", 7));
    }
    match SqliteStore::open(&scratch.db()) {
        Err(StoreError::NewerSchema {
            found: 7, known: 5, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn the_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("private");
    let mut store = ok(SqliteStore::open(&scratch.db()));
    let _ = busy_pool(&mut store);
    let mode = ok(std::fs::metadata(scratch.db())).permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_empty_commit_is_a_no_op() {
    let mut store = ok(SqliteStore::open_in_memory());
    ok(store.commit(&Default::default()));
    assert_eq!(
        ok(store.load()),
        Snapshot {
            next_id: 1,
            ..Snapshot::default()
        }
    );
}

fn controller(name: &str, token: &str) -> lender::controllers::ControllerConfig {
    let mut options = lender::controllers::ControllerOptions {
        max_agents: Some(2),
        node_prefix: "lent-".into(),
        one_build: true,
        ..Default::default()
    };
    options.idle_return = std::time::Duration::from_secs(90);
    lender::controllers::ControllerConfig {
        name: name.into(),
        url: format!("http://{name}.example:8080/"),
        user: "lender".into(),
        api_token: lender::pool::Secret::new(token),
        options,
        added_ms: T0,
    }
}

/// Registers, lists (through a reader too: `serve` re-reads the table
/// there), refuses a second of the same name, removes.
fn controllers_round_trip(store: &mut dyn Store) {
    let reader = ok(store.reader());
    assert_eq!(ok(store.controllers()), []);
    assert!(ok(store.add_controller(&controller("b", "tok-b"))));
    assert!(ok(store.add_controller(&controller("a", "tok-a"))));
    assert!(!ok(store.add_controller(&controller("a", "other"))));
    let listed = ok(reader.controllers());
    assert_eq!(listed, [controller("a", "tok-a"), controller("b", "tok-b")]);
    assert_eq!(listed[0].api_token.expose(), "tok-a");
    assert!(ok(store.remove_controller("a")));
    assert!(!ok(store.remove_controller("a")));
    assert_eq!(ok(reader.controllers()), [controller("b", "tok-b")]);
}

#[test]
fn memory_store_keeps_controllers() {
    controllers_round_trip(&mut MemoryStore::new());
}

#[test]
fn sqlite_store_keeps_controllers_across_a_restart() {
    let scratch = Scratch::new("controllers");
    {
        let mut store = ok(SqliteStore::open(&scratch.db()));
        controllers_round_trip(&mut store);
    }
    let store = ok(SqliteStore::open_existing(&scratch.db()));
    assert_eq!(ok(store.controllers()), [controller("b", "tok-b")]);
}

#[test]
fn postgres_store_round_trip() {
    let pg = TestPg::start();
    let target = pg_target(&pg.database("round_trip"));
    round_trip(&mut ok(PgStore::open(&target)));
}

#[test]
fn postgres_store_keeps_controllers_and_tokens_across_a_restart() {
    let pg = TestPg::start();
    let target = pg_target(&pg.database("controllers"));
    {
        let mut store = ok(PgStore::open(&target));
        controllers_round_trip(&mut store);
        tokens_round_trip(&mut store);
    }
    let store = ok(PgStore::open_existing(&target));
    assert_eq!(ok(store.controllers()), [controller("b", "tok-b")]);
    assert_eq!(ok(store.tokens()).len(), 2);
}

#[test]
fn sqlite_store_keeps_tokens() {
    tokens_round_trip(&mut ok(SqliteStore::open_in_memory()));
}

fn tokens_round_trip(store: &mut dyn Store) {
    use lender::tokens::{Principal, TokenKind, TokenRecord};
    let record = |hash: &str, name: &str, kind| TokenRecord {
        hash: hash.into(),
        principal: Principal {
            kind,
            name: name.into(),
        },
        created_ms: T0,
    };
    ok(store.add_token(&record("aa11", "mac-01", TokenKind::Agent)));
    ok(store.add_token(&record("bb22", "team-b", TokenKind::Client)));
    assert!(store
        .add_token(&record("bb22", "again", TokenKind::Client))
        .is_err());
    assert_eq!(
        ok(store.token("bb22")).map(|p| p.name),
        Some("team-b".to_owned())
    );
    ok(store.token_used("bb22", T0 + 60_000));
    assert_eq!(ok(store.revoke("mac-01", T0 + 1)), 1);
    assert_eq!(ok(store.revoke("mac-01", T0 + 2)), 0);
    assert_eq!(ok(store.token("aa11")), None);
    assert_eq!(ok(store.revoked()), ["aa11"]);
    let listed = ok(store.tokens());
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["mac-01", "team-b"]);
    assert_eq!(listed[0].revoked_ms, Some(T0 + 1));
    assert_eq!(listed[1].last_used_ms, Some(T0 + 60_000));
}

#[test]
fn postgres_refuses_a_database_without_a_pool_and_a_newer_schema() {
    let pg = TestPg::start();
    let target = pg_target(&pg.database("empty"));
    match PgStore::open_existing(&target) {
        Err(err @ StoreError::NotAPool { .. }) => {
            let text = err.to_string();
            assert!(text.contains("--init"), "{text}");
            assert!(text.contains("/empty"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    drop(ok(PgStore::open(&target)));
    let sql = "UPDATE lender_schema SET version = 9";
    let url = pg.url("empty");
    let mut client = ok(postgres::Client::connect(&url, postgres::NoTls));
    ok(client.batch_execute(sql));
    drop(client);
    match PgStore::open_existing(&target) {
        Err(StoreError::NewerSchema {
            found: 9, known: 1, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn postgres_unreachable_is_a_clear_error() {
    let pg = TestPg::start();
    let url = pg.url("nowhere");
    let port = pg.port();
    drop(pg);
    let Err(err) = PgStore::open(&pg_target(&url)) else {
        panic!("connected to a stopped server");
    };
    let text = err.to_string();
    assert!(
        text.contains(&format!("postgres://lender@127.0.0.1:{port}/nowhere")),
        "{text}"
    );
}

/// One leader at a time; a takeover bumps the epoch, and the former
/// leader's store can then write nothing: fenced in the same transaction.
#[test]
fn postgres_a_former_leader_is_fenced_after_a_takeover() {
    let pg = TestPg::start();
    let target = pg_target(&pg.database("fenced"));
    let mut first = ok(PgStore::open(&target));
    let mut lock_a = ok(Leadership::connect(&target));
    let mut lock_b = ok(Leadership::connect(&target));
    let epoch_a = ok(lock_a.try_acquire("a", T0)).unwrap_or_else(|| panic!("a did not lead"));
    assert_eq!(ok(lock_b.try_acquire("b", T0)), None, "two leaders");
    first = first.fenced(epoch_a);
    let mut pool = Pool::new(PoolConfig::default());
    pool.agent_connected(hello("a1", &["x"]), T0);
    ok(first.commit(&pool.take_changes()));
    assert!(lock_a.check().is_ok());

    // a pauses; its lock's session ends (killed, cut off): b takes over.
    drop(lock_a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let epoch_b = loop {
        if let Some(epoch) = ok(lock_b.try_acquire("b", T0 + 1)) {
            break epoch;
        }
        assert!(std::time::Instant::now() < deadline, "b never took over");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(epoch_b > epoch_a);

    // a wakes up and writes: refused, nothing stored.
    let _ = pool.request_lease(request("x", A, 60), T0 + 2);
    let changes = pool.take_changes();
    match first.commit(&changes) {
        Err(StoreError::Fenced { epoch, current, .. }) => {
            assert_eq!((epoch, current), (epoch_a, epoch_b));
        }
        other => panic!("{other:?}"),
    }
    let second = ok(PgStore::open_existing(&target)).fenced(epoch_b);
    assert_eq!(ok(second.load()).leases, []);
    // Its readers are fenced too.
    let mut reader = ok(first.reader());
    assert!(matches!(
        reader.token_used("x", T0),
        Err(StoreError::Fenced { .. })
    ));
    let mut second = second;
    ok(second.commit(&changes));
    assert_eq!(ok(second.load()).leases.len(), 1);
}

/// `sslmode` is honoured: `require` encrypts (the server's certificate not
/// checked), `verify-full` checks it against `sslrootcert` and the host
/// name and refuses a certificate it cannot trust.
#[test]
fn postgres_sslmode_require_and_verify_full() {
    let (pg, ca) = TestPg::start_tls();
    let base = format!("postgres://lender@127.0.0.1:{}/postgres", pg.port());
    // The server takes TCP over TLS only: `require` connects, `disable` is refused.
    ok(PgStore::open(&pg_target(&format!(
        "{base}?sslmode=require"
    ))));
    assert!(matches!(
        PgStore::open(&pg_target(&format!("{base}?sslmode=disable"))),
        Err(StoreError::Postgres { .. })
    ));
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let store = ok(PgStore::open(&pg_target(&verified)));
    assert_eq!(ok(store.schema_version()), 1);
    // A CA that did not sign the server's certificate: refused.
    let other = pg.dir().join("other-ca.crt");
    let other_key = ok(rcgen::KeyPair::generate());
    let mut params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ok(std::fs::write(
        &other,
        ok(params.self_signed(&other_key)).pem(),
    ));
    let untrusted = format!("{base}?sslmode=verify-full&sslrootcert={}", other.display());
    let Err(err) = PgStore::open(&pg_target(&untrusted)) else {
        panic!("verify-full accepted a certificate from an unknown CA");
    };
    assert!(matches!(err, StoreError::Postgres { .. }), "{err}");
}
