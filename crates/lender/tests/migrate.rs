//! `jnlp-lender migrate --from PATH.db --to postgres://...` (the real
//! binary): everything a SQLite pool holds reads back the same from
//! PostgreSQL (a throwaway cluster), and a second run into a database
//! that holds a pool is refused.

mod common;
mod pg_support;

use std::process::Command;

use common::*;
use lender::controllers::{ControllerConfig, ControllerOptions};
use lender::pool::{Outcome, Pool, PoolConfig, Secret};
use lender::store::{PgStore, PgTarget, SqliteStore, Store};
use lender::tokens::{Principal, TokenKind, TokenRecord};
use pg_support::TestPg;

const T0: u64 = 1_700_000_000_000;

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

fn migrate(from: &std::path::Path, to: &str) -> std::process::Output {
    ok(Command::new(env!("CARGO_BIN_EXE_jnlp-lender"))
        .arg("migrate")
        .arg("--from")
        .arg(from)
        .args(["--to", to])
        .output())
}

#[test]
fn a_sqlite_pool_is_copied_whole() {
    let pg = TestPg::start();
    let url = pg.database("migrated");
    let path = pg.dir().join("pool.db");
    {
        let mut store = ok(SqliteStore::open(&path));
        let mut pool = Pool::new(PoolConfig::default());
        pool.agent_connected(hello("a1", &["x"]), T0);
        pool.agent_connected(hello("a2", &["y"]), T0);
        let Ok(Outcome::Reserved { agent, .. }) = pool.request_lease(request("x", A, 60), T0)
        else {
            panic!("no reservation");
        };
        ok(pool.agent_reported(&agent, at(A, true, false), T0 + 1));
        let _ = pool.request_lease(request("x", B, 600), T0 + 2); // queued
        let _ = pool.request_lease(request("none", B, 0), T0 + 3); // ended at once
        ok(store.commit(&pool.take_changes()));
        for (hash, name, kind) in [
            ("h1", "mac-01", TokenKind::Agent),
            ("h2", "team-b", TokenKind::Client),
        ] {
            ok(store.add_token(&TokenRecord {
                hash: hash.into(),
                principal: Principal {
                    kind,
                    name: name.into(),
                },
                created_ms: T0,
            }));
        }
        ok(store.token_used("h2", T0 + 60_000));
        ok(store.revoke("mac-01", T0 + 5));
        ok(store.add_controller(&ControllerConfig {
            name: "ci".into(),
            url: "https://ci.example/".into(),
            user: "lender".into(),
            api_token: Secret::new("api-token"),
            options: ControllerOptions::default(),
            added_ms: T0,
        }));
    }
    let out = migrate(&path, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let source = ok(SqliteStore::open_existing(&path));
    let dest = ok(PgStore::open_existing(&ok(PgTarget::parse(&url, None))));
    assert_eq!(ok(dest.load()), ok(source.load()));
    for id in 1..=3 {
        assert_eq!(ok(dest.lease(id)), ok(source.lease(id)), "lease {id}");
    }
    assert_eq!(ok(dest.tokens()), ok(source.tokens()));
    assert_eq!(ok(dest.revoked()), ["h1"]);
    assert_eq!(
        ok(dest.token("h2")).map(|p| p.name),
        Some("team-b".to_owned())
    );
    assert_eq!(ok(dest.controllers()), ok(source.controllers()));
    let audit = ok(source.audit(0, 1000));
    assert!(!audit.is_empty());
    assert_eq!(ok(dest.audit(0, 1000)), audit);
    // New audit entries go on after the copied ones.
    let mut dest = dest;
    let mut pool = ok(Pool::restore(PoolConfig::default(), ok(dest.load())));
    pool.agent_connected(hello("a3", &["z"]), T0 + 10);
    ok(dest.commit(&pool.take_changes()));
    let last = audit.last().map_or(0, |r| r.id);
    let after = ok(dest.audit(last, 1000));
    assert!(!after.is_empty() && after.iter().all(|r| r.id > last));

    let again = migrate(&path, &url);
    assert!(!again.status.success());
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("already holds a pool"), "{text}");
}
