//! The PostgreSQL store: the same tables and the same rows as SQLite
//! ([`super::rows`]), for lenders that run on a database server, any
//! number of them on one database (one active, [`Leadership`]).
//!
//! A store made for the active lender carries its epoch
//! ([`PgStore::fenced`]): every write first reads `lender_leader.epoch`
//! (`FOR SHARE`, in the write's own transaction) and is refused as
//! [`StoreError::Fenced`] if a takeover bumped it since. A takeover's
//! bump waits for writes in flight, so a paused former leader can never
//! write after it.
//!
//! # Layout
//!
//! - `connect`: the URL, password, `sslmode` and TLS;
//! - `worker`: a connection on a thread of its own;
//! - `schema`: the tables;
//! - `leader`: the advisory lock and the epoch.

use std::path::Path;
use std::sync::Arc;

use postgres::types::ToSql;
use postgres::{Row, Transaction};
use serde_json::Value;

use crate::controllers::{ControllerConfig, ControllerOptions};
use crate::pool::{Agent, AuditEntry, Changes, Lease, LeaseId, LeaseState, Secret, Snapshot};
use crate::store::rows::{
    attempts_json, corrupt, duration_ms, int, place_from, place_url, state_detail, transport_name,
    uint, Corrupt, LeaseRow, LEASE_COLUMNS,
};
use crate::store::{AuditRecord, LeaseFilter, Store, StoreError};
use crate::tokens::{short_id, Principal, TokenInfo, TokenKind, TokenRecord};

mod connect;
mod leader;
mod schema;
mod worker;

pub use connect::{is_postgres_url, PgTarget};
pub use leader::{Leadership, Lost};

use worker::Worker;
use worker::{Conn, Gone};

/// Why a call failed, before the database's name is added.
#[derive(Debug)]
enum Fault {
    Pg(postgres::Error),
    Corrupt(String),
    Fenced { mine: i64, current: i64 },
    Gone,
}

impl From<postgres::Error> for Fault {
    fn from(err: postgres::Error) -> Self {
        Fault::Pg(err)
    }
}

impl From<Corrupt> for Fault {
    fn from(err: Corrupt) -> Self {
        Fault::Corrupt(err.0)
    }
}

type Res<T> = Result<T, Fault>;

fn at(path: &Path, fault: Fault) -> StoreError {
    let path = path.to_owned();
    match fault {
        Fault::Pg(source) => StoreError::Postgres { path, source },
        Fault::Corrupt(detail) => StoreError::Corrupt { path, detail },
        Fault::Fenced { mine, current } => StoreError::Fenced {
            path,
            epoch: mine,
            current,
        },
        Fault::Gone => StoreError::Io {
            path,
            source: std::io::Error::other("the database connection's thread is gone"),
        },
    }
}

/// A pool in a PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    conn: Conn,
    target: Arc<PgTarget>,
    /// The active lender's epoch: writes are refused once it is not the
    /// database's. `None`: not fenced (the `token` and `controller`
    /// commands, tests).
    epoch: Option<i64>,
}

impl PgStore {
    /// Connects and brings the schema up to date, creating it in an empty
    /// database (`serve --init`, `token create`, `migrate`).
    pub fn open(target: &PgTarget) -> Result<Self, StoreError> {
        Self::connect(target, true)
    }

    /// Connects to a database that must already hold a pool: one without
    /// the lender's tables is refused (a typo in `--db` must not start an
    /// empty pool).
    pub fn open_existing(target: &PgTarget) -> Result<Self, StoreError> {
        Self::connect(target, false)
    }

    fn connect(target: &PgTarget, create: bool) -> Result<Self, StoreError> {
        let target = Arc::new(target.clone());
        let location = target.location().to_owned();
        let conn = Conn::open(target.clone(), true).map_err(|err| at(&location, err.into()))?;
        let store = PgStore {
            conn,
            target,
            epoch: None,
        };
        let known = schema::MIGRATIONS.len() as u32;
        let found = store.call(migrate_job(create))?;
        match found {
            None => Err(StoreError::NotAPool {
                path: location,
                what: "holds no pool (no lender tables)",
            }),
            Some(found) if found > known => Err(StoreError::NewerSchema {
                path: location,
                found,
                known,
            }),
            Some(_) => Ok(store),
        }
    }

    /// This store, its writes fenced by `epoch` (from
    /// [`Leadership::try_acquire`]).
    pub fn fenced(mut self, epoch: i64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.call(|w| Ok(schema_version(w.client()?)?.unwrap_or(0)))
    }

    /// The database's current epoch.
    pub fn epoch(&self) -> Result<i64, StoreError> {
        self.call(|w| {
            let row = w
                .client()?
                .query_one("SELECT epoch FROM lender_leader WHERE id = 1", &[])?;
            Ok(row.get(0))
        })
    }

    /// Copies audit entries with their positions (`migrate`): positions
    /// go on after the highest copied.
    pub fn copy_audit(&mut self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.write(move |tx| {
            for record in &records {
                let e = &record.entry;
                tx.execute(
                    "INSERT INTO audit (id, at_ms, lease, agent, action, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    &[
                        &int(record.id),
                        &int(e.at_ms),
                        &e.lease.map(int),
                        &e.agent,
                        &e.action,
                        &e.detail,
                    ],
                )?;
            }
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('audit', 'id'), \
                 GREATEST((SELECT MAX(id) FROM audit), 1))",
                &[],
            )?;
            Ok(())
        })
    }

    /// Copies a token as it is (`migrate`): its times and revocation too.
    pub fn copy_token(&mut self, hash: String, info: TokenInfo) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO tokens (hash, kind, name, created_ms, last_used_ms, revoked_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
                &[
                    &hash,
                    &info.kind,
                    &info.name,
                    &int(info.created_ms),
                    &info.last_used_ms.map(int),
                    &info.revoked_ms.map(int),
                ],
            )?;
            Ok(())
        })
    }

    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> Res<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.conn
            .call(job)
            .unwrap_or_else(|Gone| Err(Fault::Gone))
            .map_err(|fault| at(self.target.location(), fault))
    }

    /// A write: one transaction, the epoch checked first.
    fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Transaction<'_>) -> Res<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let epoch = self.epoch;
        self.call(move |w| {
            let mut tx = w.client()?.transaction()?;
            if let Some(mine) = epoch {
                let row = tx.query_one(
                    "SELECT epoch FROM lender_leader WHERE id = 1 FOR SHARE",
                    &[],
                )?;
                let current: i64 = row.get(0);
                if current != mine {
                    return Err(Fault::Fenced { mine, current });
                }
            }
            let value = job(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }
}

fn schema_version(client: &mut postgres::Client) -> Result<Option<u32>, postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('lender_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let version: Option<i32> = client
        .query_opt("SELECT version FROM lender_schema", &[])?
        .map(|row| row.get(0));
    Ok(Some(version.map_or(0, |v| u32::try_from(v).unwrap_or(0))))
}

/// The schema's version after migrating (`None`: no pool, and `create` off).
fn migrate_job(create: bool) -> impl FnOnce(&mut Worker) -> Res<Option<u32>> + Send + 'static {
    move |w| {
        let client = w.client()?;
        let found = schema_version(client)?;
        let known = schema::MIGRATIONS.len() as u32;
        match found {
            None if !create => return Ok(None),
            Some(found) if found >= known => return Ok(Some(found)),
            _ => {}
        }
        let mut tx = client.transaction()?;
        // Lenders starting together: one migrates, the others wait and see it done.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&schema::MIGRATION_LOCK],
        )?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS lender_schema (version INTEGER NOT NULL)")?;
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM lender_schema", &[])?
            .map(|row| row.get(0));
        let mut version = match version {
            Some(v) => usize::try_from(v).unwrap_or(0),
            None => {
                tx.execute("INSERT INTO lender_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        while version < schema::MIGRATIONS.len() {
            tx.batch_execute(schema::MIGRATIONS[version])?;
            version += 1;
        }
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        tx.execute("UPDATE lender_schema SET version = $1", &[&v])?;
        tx.commit()?;
        Ok(Some(version as u32))
    }
}

const UPSERT_AGENT: &str = "INSERT INTO agents \
    (name, labels, place_url, busy, idle_since_ms, last_seen_ms, last_lent_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
    labels = EXCLUDED.labels, place_url = EXCLUDED.place_url, busy = EXCLUDED.busy, \
    idle_since_ms = EXCLUDED.idle_since_ms, last_seen_ms = EXCLUDED.last_seen_ms, \
    last_lent_ms = EXCLUDED.last_lent_ms";

fn upsert_lease_sql() -> String {
    let columns: Vec<&str> = LEASE_COLUMNS.split(',').map(str::trim).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let updates: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO leases ({LEASE_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        params.join(", "),
        updates.join(", ")
    )
}

const INSERT_AUDIT: &str =
    "INSERT INTO audit (at_ms, lease, agent, action, detail) VALUES ($1, $2, $3, $4, $5)";

fn write_changes(tx: &mut Transaction<'_>, changes: &Changes) -> Res<()> {
    if !changes.agents.is_empty() {
        let stmt = tx.prepare(UPSERT_AGENT)?;
        for agent in &changes.agents {
            let labels =
                Value::Array(agent.labels.iter().cloned().map(Value::String).collect()).to_string();
            tx.execute(
                &stmt,
                &[
                    &agent.name,
                    &labels,
                    &place_url(&agent.place),
                    &agent.busy,
                    &agent.idle_since_ms.map(int),
                    &int(agent.last_seen_ms),
                    &agent.last_lent_ms.map(int),
                ],
            )?;
        }
    }
    if !changes.leases.is_empty() {
        let stmt = tx.prepare(&upsert_lease_sql())?;
        for lease in &changes.leases {
            write_lease(tx, &stmt, lease)?;
        }
    }
    if !changes.audit.is_empty() {
        let stmt = tx.prepare(INSERT_AUDIT)?;
        for e in &changes.audit {
            tx.execute(
                &stmt,
                &[
                    &int(e.at_ms),
                    &e.lease.map(int),
                    &e.agent,
                    &e.action,
                    &e.detail,
                ],
            )?;
        }
    }
    Ok(())
}

fn write_lease(tx: &mut Transaction<'_>, stmt: &postgres::Statement, lease: &Lease) -> Res<()> {
    let ended = matches!(lease.state, LeaseState::Ended(_));
    let request = &lease.request;
    let secret = (!ended).then(|| request.borrower.secret.expose().to_owned());
    let origin = request
        .origin
        .as_ref()
        .and_then(|o| serde_json::to_string(o).ok());
    let params: [&(dyn ToSql + Sync); 18] = [
        &int(lease.id),
        &lease.state.name(),
        &state_detail(&lease.state).map(|v| v.to_string()),
        &lease.agent,
        &request.requirements.to_string(),
        &request.borrower.url,
        &request.borrower.node_name,
        &secret,
        &transport_name(request.borrower.transport),
        &request.client,
        &request.lease.map(duration_ms),
        &request.idle_return.map(duration_ms),
        &duration_ms(request.wait),
        &int(lease.requested_ms),
        &int(lease.deadline_ms),
        &int(lease.since_ms),
        &attempts_json(&lease.attempts),
        &origin,
    ];
    tx.execute(stmt, &params)?;
    Ok(())
}

fn lease_row(row: &Row) -> Res<Lease> {
    Ok(LeaseRow {
        id: row.try_get(0)?,
        state: row.try_get(1)?,
        state_detail: row.try_get(2)?,
        agent: row.try_get(3)?,
        requirements: row.try_get(4)?,
        borrower_url: row.try_get(5)?,
        borrower_node: row.try_get(6)?,
        borrower_secret: row.try_get(7)?,
        transport: row.try_get(8)?,
        client: row.try_get(9)?,
        lease_ms: row.try_get(10)?,
        idle_return_ms: row.try_get(11)?,
        wait_ms: row.try_get(12)?,
        requested_ms: row.try_get(13)?,
        deadline_ms: row.try_get(14)?,
        since_ms: row.try_get(15)?,
        attempts: row.try_get(16)?,
        origin: row.try_get(17)?,
    }
    .into_lease()?)
}

fn leases_where(
    client: &mut postgres::Client,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
    order: &str,
) -> Res<Vec<Lease>> {
    client
        .query(
            &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE {condition} ORDER BY {order}"),
            params,
        )?
        .iter()
        .map(lease_row)
        .collect()
}

fn agent_row(row: &Row) -> Res<Agent> {
    let name: String = row.try_get(0)?;
    let labels: String = row.try_get(1)?;
    let labels: Vec<String> = serde_json::from_str(&labels)
        .map_err(|err| corrupt(format!("agent {name:?}: labels: {err}")))?;
    Ok(Agent {
        name,
        labels: labels.into_iter().collect(),
        connected: false,
        place: place_from(row.try_get(2)?),
        online: false,
        busy: row.try_get(3)?,
        idle_since_ms: row.try_get::<_, Option<i64>>(4)?.map(uint),
        last_seen_ms: uint(row.try_get(5)?),
        last_lent_ms: row.try_get::<_, Option<i64>>(6)?.map(uint),
        lease: None,
    })
}

fn token_kind(kind: &str) -> Res<TokenKind> {
    TokenKind::parse(kind).ok_or_else(|| corrupt(format!("token kind {kind:?}")).into())
}

impl Store for PgStore {
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = changes.clone();
        self.write(move |tx| write_changes(tx, &changes))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.call(|w| {
            let client = w.client()?;
            // One snapshot of the database for all three reads.
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let agents = tx
                .query(
                    "SELECT name, labels, place_url, busy, idle_since_ms, last_seen_ms, \
                     last_lent_ms FROM agents ORDER BY name",
                    &[],
                )?
                .iter()
                .map(agent_row)
                .collect::<Res<Vec<_>>>()?;
            let leases = tx
                .query(
                    &format!(
                        "SELECT {LEASE_COLUMNS} FROM leases WHERE state <> 'ended' ORDER BY id"
                    ),
                    &[],
                )?
                .iter()
                .map(lease_row)
                .collect::<Res<Vec<_>>>()?;
            let max_id: Option<i64> = tx.query_one("SELECT MAX(id) FROM leases", &[])?.get(0);
            tx.commit()?;
            Ok(Snapshot {
                agents,
                leases,
                next_id: max_id.map_or(1, |id| uint(id) + 1),
            })
        })
    }

    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError> {
        self.call(move |w| {
            Ok(leases_where(w.client()?, "id = $1", &[&int(id)], "id")?
                .into_iter()
                .next())
        })
    }

    fn queue(&self) -> Result<Vec<Lease>, StoreError> {
        self.call(|w| leases_where(w.client()?, "state = 'queued'", &[], "id"))
    }

    fn leases(
        &self,
        client: &str,
        filter: LeaseFilter,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let name = client.to_owned();
        let condition = match filter {
            LeaseFilter::All => "client = $1",
            LeaseFilter::Open => "client = $1 AND state <> 'ended'",
            LeaseFilter::Ended => "client = $1 AND state = 'ended'",
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |w| {
            leases_where(w.client()?, condition, &[&name, &limit], "id DESC LIMIT $2")
        })
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |w| {
            let rows = w.client()?.query(
                "SELECT id, at_ms, lease, agent, action, detail FROM audit \
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&int(after), &limit],
            )?;
            rows.iter()
                .map(|row| {
                    Ok(AuditRecord {
                        id: uint(row.try_get(0)?),
                        entry: AuditEntry {
                            at_ms: uint(row.try_get(1)?),
                            lease: row.try_get::<_, Option<i64>>(2)?.map(uint),
                            agent: row.try_get(3)?,
                            action: row.try_get(4)?,
                            detail: row.try_get(5)?,
                        },
                    })
                })
                .collect()
        })
    }

    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        let token = token.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO tokens (hash, kind, name, created_ms) VALUES ($1, $2, $3, $4)",
                &[
                    &token.hash,
                    &token.principal.kind.as_str(),
                    &token.principal.name,
                    &int(token.created_ms),
                ],
            )?;
            Ok(())
        })
    }

    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash.to_owned();
        self.call(move |w| {
            let row = w.client()?.query_opt(
                "SELECT kind, name FROM tokens WHERE hash = $1 AND revoked_ms IS NULL",
                &[&hash],
            )?;
            row.map(|row| {
                Ok(Principal {
                    kind: token_kind(row.try_get(0)?)?,
                    name: row.try_get(1)?,
                })
            })
            .transpose()
        })
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.call(|w| {
            let rows = w.client()?.query(
                "SELECT hash, kind, name, created_ms, last_used_ms, revoked_ms FROM tokens \
                 ORDER BY created_ms, seq",
                &[],
            )?;
            rows.iter()
                .map(|row| {
                    let hash: String = row.try_get(0)?;
                    Ok(TokenInfo {
                        id: short_id(&hash),
                        kind: token_kind(row.try_get(1)?)?.as_str(),
                        name: row.try_get(2)?,
                        created_ms: uint(row.try_get(3)?),
                        last_used_ms: row.try_get::<_, Option<i64>>(4)?.map(uint),
                        revoked_ms: row.try_get::<_, Option<i64>>(5)?.map(uint),
                    })
                })
                .collect()
        })
    }

    fn revoked(&self) -> Result<Vec<String>, StoreError> {
        self.call(|w| {
            let rows = w
                .client()?
                .query("SELECT hash FROM tokens WHERE revoked_ms IS NOT NULL", &[])?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn revoke(&mut self, name: &str, at_ms: u64) -> Result<usize, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE tokens SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
                &[&name, &int(at_ms)],
            )?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn token_used(&mut self, hash: &str, at_ms: u64) -> Result<(), StoreError> {
        let hash = hash.to_owned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE tokens SET last_used_ms = $2 WHERE hash = $1",
                &[&hash, &int(at_ms)],
            )?;
            Ok(())
        })
    }

    fn add_controller(&mut self, controller: &ControllerConfig) -> Result<bool, StoreError> {
        let c = controller.clone();
        self.write(move |tx| {
            let options = serde_json::to_string(&c.options)
                .map_err(|err| corrupt(format!("controller options: {err}")))?;
            let n = tx.execute(
                "INSERT INTO controllers (name, url, \"user\", api_token, options, added_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                &[
                    &c.name,
                    &c.url,
                    &c.user,
                    &c.api_token.expose(),
                    &options,
                    &int(c.added_ms),
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn remove_controller(&mut self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| {
            Ok(tx.execute("DELETE FROM controllers WHERE name = $1", &[&name])? == 1)
        })
    }

    fn controllers(&self) -> Result<Vec<ControllerConfig>, StoreError> {
        self.call(|w| {
            let rows = w.client()?.query(
                "SELECT name, url, \"user\", api_token, options, added_ms FROM controllers \
                 ORDER BY name",
                &[],
            )?;
            rows.iter()
                .map(|row| {
                    let name: String = row.try_get(0)?;
                    let options: String = row.try_get(4)?;
                    let options: ControllerOptions = serde_json::from_str(&options)
                        .map_err(|err| corrupt(format!("controller {name:?}: options: {err}")))?;
                    Ok(ControllerConfig {
                        name,
                        url: row.try_get(1)?,
                        user: row.try_get(2)?,
                        api_token: Secret::new(row.try_get::<_, String>(3)?),
                        options,
                        added_ms: uint(row.try_get(5)?),
                    })
                })
                .collect()
        })
    }

    fn reader(&self) -> Result<Box<dyn Store>, StoreError> {
        let conn = Conn::open(self.target.clone(), true)
            .map_err(|err| at(self.target.location(), err.into()))?;
        Ok(Box::new(PgStore {
            conn,
            target: self.target.clone(),
            epoch: self.epoch,
        }))
    }

    fn location(&self) -> &Path {
        self.target.location()
    }
}
