//! The SQLite store: one file, schema created and migrated on open.
//!
//! [`SqliteStore::open`] creates the file (`token create`, `serve --init`);
//! [`SqliteStore::open_existing`] refuses a path that holds no pool (missing,
//! empty, no schema), so that a typo in `--db` cannot start an empty pool
//! that answers every client with 401, and checks the file first
//! (`PRAGMA quick_check`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use control::Transport;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use serde_json::{json, Value};

use crate::controllers::{ControllerConfig, ControllerOptions};
use crate::pool::{
    Agent, Attempt, AuditEntry, Borrower, Changes, EndReason, Lease, LeaseId, LeaseRequest,
    LeaseState, Place, ReturnCause, Secret, Snapshot,
};
use crate::store::{AuditRecord, LeaseFilter, Store, StoreError};
use crate::tokens::{short_id, Principal, TokenInfo, TokenKind, TokenRecord};
use control::labels::Expr;

/// The schema, one entry per version; `PRAGMA user_version` says how many
/// have been applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    name          TEXT PRIMARY KEY,
    labels        TEXT NOT NULL,    -- JSON array of strings
    place_url     TEXT,             -- NULL: at home
    busy          INTEGER NOT NULL,
    idle_since_ms INTEGER,
    last_seen_ms  INTEGER NOT NULL,
    last_lent_ms  INTEGER
);
CREATE TABLE leases (
    id              INTEGER PRIMARY KEY,
    state           TEXT NOT NULL,  -- queued, reserved, active, returning, ended
    state_detail    TEXT,           -- JSON: the return cause or end reason
    agent           TEXT,
    requirements    TEXT NOT NULL,  -- canonical label expression
    borrower_url    TEXT NOT NULL,
    borrower_node   TEXT NOT NULL,
    borrower_secret TEXT,           -- NULL once ended
    transport       TEXT,           -- tcp, web_socket or NULL
    client          TEXT NOT NULL,
    lease_ms        INTEGER,
    idle_return_ms  INTEGER,
    wait_ms         INTEGER NOT NULL,
    requested_ms    INTEGER NOT NULL,
    deadline_ms     INTEGER NOT NULL,
    since_ms        INTEGER NOT NULL,
    attempts        TEXT NOT NULL   -- JSON array of {agent, reason, at_ms}
);
CREATE INDEX leases_by_state ON leases (state, id);
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    lease  INTEGER,
    agent  TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY, -- hex SHA-256 of the token; the token itself is never stored
    kind       TEXT NOT NULL,    -- agent or client
    name       TEXT NOT NULL,    -- the agent's node name or the client's name
    created_ms INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE tokens ADD COLUMN last_used_ms INTEGER; -- to the minute
ALTER TABLE tokens ADD COLUMN revoked_ms INTEGER;   -- NULL: valid
CREATE INDEX tokens_by_name ON tokens (name);
CREATE INDEX leases_by_client ON leases (client, id);
"#,
    r#"
CREATE TABLE controllers (
    name      TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    user      TEXT NOT NULL,
    api_token TEXT NOT NULL,    -- like borrower secrets: never returned, logged or in an event
    options   TEXT NOT NULL,    -- JSON: ControllerOptions
    added_ms  INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE leases ADD COLUMN origin TEXT; -- JSON: an auto-lease's controller and queue item; NULL otherwise
"#,
];

/// How long a write waits for a lock another connection holds before the
/// change is refused.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits; in WAL mode readers wait only for recovery.
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a row or a statement failed, before the file's name is added.
#[derive(Debug)]
enum Fault {
    Sqlite(rusqlite::Error),
    Corrupt(String),
}

impl From<rusqlite::Error> for Fault {
    fn from(err: rusqlite::Error) -> Self {
        Fault::Sqlite(err)
    }
}

type Res<T> = Result<T, Fault>;

/// Leases and agents in one SQLite file (WAL journal). On Unix the file is
/// made readable by its owner only, since it holds borrower secrets.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The name of a shared in-memory database (tests), for readers.
    memory: Option<String>,
}

/// Tells in-memory databases apart.
static NEXT_MEMORY: AtomicU64 = AtomicU64::new(1);

impl SqliteStore {
    /// Opens (or creates) the database at `path` and brings its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|err| sqlite_error(path, err))?;
        restrict_permissions(path)?;
        Self::init(conn, path.to_owned(), None)
    }

    /// Opens the database at `path`, which must already hold a pool (made by
    /// [`SqliteStore::open`]): a missing or empty file, or one without the
    /// lender's tables, is refused. The file is checked with `PRAGMA
    /// quick_check` first.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let not_a_pool = |what| StoreError::NotAPool {
            path: path.to_owned(),
            what,
        };
        match std::fs::metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_a_pool("does not exist"))
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
            Ok(meta) if !meta.is_file() => return Err(not_a_pool("is not a file")),
            Ok(meta) if meta.len() == 0 => return Err(not_a_pool("is an empty file")),
            Ok(_) => {}
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|err| sqlite_error(path, err))?;
        quick_check(&conn).map_err(|fault| at(path, fault))?;
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|err| sqlite_error(path, err))?;
        if version == 0 {
            return Err(not_a_pool("holds no pool (no lender tables)"));
        }
        restrict_permissions(path)?;
        Self::init(conn, path.to_owned(), None)
    }

    /// A database in memory (for tests of this type itself); its readers
    /// share it.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let name = format!(
            "file:jnlp-lender-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            NEXT_MEMORY.fetch_add(1, Ordering::Relaxed)
        );
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_with_flags(&name, memory_flags())
            .map_err(|err| sqlite_error(&path, err))?;
        Self::init(conn, path, Some(name))
    }

    fn init(
        mut conn: Connection,
        path: PathBuf,
        memory: Option<String>,
    ) -> Result<Self, StoreError> {
        let setup = |conn: &mut Connection| -> Res<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(())
        };
        setup(&mut conn).map_err(|fault| at(&path, fault))?;
        migrate(&mut conn, &path)?;
        Ok(SqliteStore { conn, path, memory })
    }

    /// How long a commit waits for a lock held by another connection before
    /// it fails ([`BUSY_TIMEOUT`] unless set).
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(timeout)
            .map_err(|err| sqlite_error(&self.path, err))
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|err| self.error(err.into()))
    }

    fn error(&self, fault: Fault) -> StoreError {
        at(&self.path, fault)
    }
}

fn memory_flags() -> rusqlite::OpenFlags {
    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
}

fn sqlite_error(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn at(path: &Path, fault: Fault) -> StoreError {
    match fault {
        Fault::Sqlite(source) => sqlite_error(path, source),
        Fault::Corrupt(detail) => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
    }
}

/// `PRAGMA quick_check`: `ok`, or the first problem it names.
fn quick_check(conn: &Connection) -> Res<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let mut rows = stmt.query([])?;
    let first: Option<String> = match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    };
    match first.as_deref() {
        Some("ok") | None => Ok(()),
        Some(problem) => Err(Fault::Corrupt(format!("quick_check: {problem}"))),
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::Io {
                path: path.to_owned(),
                source,
            },
        )?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as u32;
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|err| sqlite_error(path, err))?;
    if found > known {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version as u32 + 1)?;
            tx.commit()
        };
        apply(conn).map_err(|err| sqlite_error(path, err))?;
    }
    Ok(())
}

// SQLite integers are i64; times and durations here are u64 ms, far below
// i64::MAX, saturate just in case.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn corrupt(what: impl std::fmt::Display) -> Fault {
    Fault::Corrupt(what.to_string())
}

fn place_url(place: &Place) -> Option<&str> {
    match place {
        Place::Home => None,
        Place::Borrowed { url } => Some(url),
    }
}

fn place_from(url: Option<String>) -> Place {
    url.map_or(Place::Home, |url| Place::Borrowed { url })
}

fn state_detail(state: &LeaseState) -> Option<Value> {
    match state {
        LeaseState::Queued | LeaseState::Reserved | LeaseState::Active => None,
        LeaseState::Returning(ReturnCause::Requested) => Some(json!({"kind": "requested"})),
        LeaseState::Returning(ReturnCause::Reclaimed { for_lease }) => {
            Some(json!({"kind": "reclaimed", "for_lease": for_lease}))
        }
        LeaseState::Ended(reason) => Some(match reason {
            EndReason::Returned => json!({"kind": "returned"}),
            EndReason::Reclaimed { for_lease } => {
                json!({"kind": "reclaimed", "for_lease": for_lease})
            }
            EndReason::AgentLeft { place } => {
                json!({"kind": "agent_left", "url": place_url(place)})
            }
            EndReason::TimedOut { message } => json!({"kind": "timed_out", "message": message}),
            EndReason::Failed { message } => json!({"kind": "failed", "message": message}),
            EndReason::Cancelled => json!({"kind": "cancelled"}),
        }),
    }
}

fn state_from(name: &str, detail: Option<&str>) -> Res<LeaseState> {
    let detail: Value = match detail {
        Some(text) => serde_json::from_str(text).map_err(corrupt)?,
        None => Value::Null,
    };
    let kind = detail["kind"].as_str().unwrap_or_default();
    let for_lease = || {
        detail["for_lease"]
            .as_u64()
            .ok_or_else(|| corrupt(format!("lease state {detail} without for_lease")))
    };
    let message = || detail["message"].as_str().unwrap_or_default().to_owned();
    Ok(match (name, kind) {
        ("queued", _) => LeaseState::Queued,
        ("reserved", _) => LeaseState::Reserved,
        ("active", _) => LeaseState::Active,
        ("returning", "requested") => LeaseState::Returning(ReturnCause::Requested),
        ("returning", "reclaimed") => LeaseState::Returning(ReturnCause::Reclaimed {
            for_lease: for_lease()?,
        }),
        ("ended", "returned") => LeaseState::Ended(EndReason::Returned),
        ("ended", "reclaimed") => LeaseState::Ended(EndReason::Reclaimed {
            for_lease: for_lease()?,
        }),
        ("ended", "agent_left") => LeaseState::Ended(EndReason::AgentLeft {
            place: place_from(detail["url"].as_str().map(str::to_owned)),
        }),
        ("ended", "timed_out") => LeaseState::Ended(EndReason::TimedOut { message: message() }),
        ("ended", "failed") => LeaseState::Ended(EndReason::Failed { message: message() }),
        ("ended", "cancelled") => LeaseState::Ended(EndReason::Cancelled),
        _ => return Err(corrupt(format!("lease state {name:?} {detail}"))),
    })
}

fn transport_name(transport: Option<Transport>) -> Option<&'static str> {
    transport.map(|t| match t {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "web_socket",
    })
}

fn transport_from(name: Option<String>) -> Res<Option<Transport>> {
    match name.as_deref() {
        None => Ok(None),
        Some("tcp") => Ok(Some(Transport::Tcp)),
        Some("web_socket") => Ok(Some(Transport::WebSocket)),
        Some(other) => Err(corrupt(format!("transport {other:?}"))),
    }
}

fn attempts_json(attempts: &[Attempt]) -> String {
    Value::Array(
        attempts
            .iter()
            .map(|a| json!({"agent": a.agent, "reason": a.reason, "at_ms": a.at_ms}))
            .collect(),
    )
    .to_string()
}

fn attempts_from(text: &str) -> Res<Vec<Attempt>> {
    let value: Value = serde_json::from_str(text).map_err(corrupt)?;
    let items = value
        .as_array()
        .ok_or_else(|| corrupt("attempts is not an array"))?;
    Ok(items
        .iter()
        .map(|a| Attempt {
            agent: a["agent"].as_str().unwrap_or_default().to_owned(),
            reason: a["reason"].as_str().unwrap_or_default().to_owned(),
            at_ms: a["at_ms"].as_u64().unwrap_or(0),
        })
        .collect())
}

const LEASE_COLUMNS: &str = "id, state, state_detail, agent, requirements, borrower_url, \
     borrower_node, borrower_secret, transport, client, lease_ms, idle_return_ms, wait_ms, \
     requested_ms, deadline_ms, since_ms, attempts, origin";

/// A lease row as read, before the fallible conversions.
struct LeaseRow {
    id: i64,
    state: String,
    state_detail: Option<String>,
    agent: Option<String>,
    requirements: String,
    borrower_url: String,
    borrower_node: String,
    borrower_secret: Option<String>,
    transport: Option<String>,
    client: String,
    lease_ms: Option<i64>,
    idle_return_ms: Option<i64>,
    wait_ms: i64,
    requested_ms: i64,
    deadline_ms: i64,
    since_ms: i64,
    attempts: String,
    origin: Option<String>,
}

impl LeaseRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(LeaseRow {
            id: row.get(0)?,
            state: row.get(1)?,
            state_detail: row.get(2)?,
            agent: row.get(3)?,
            requirements: row.get(4)?,
            borrower_url: row.get(5)?,
            borrower_node: row.get(6)?,
            borrower_secret: row.get(7)?,
            transport: row.get(8)?,
            client: row.get(9)?,
            lease_ms: row.get(10)?,
            idle_return_ms: row.get(11)?,
            wait_ms: row.get(12)?,
            requested_ms: row.get(13)?,
            deadline_ms: row.get(14)?,
            since_ms: row.get(15)?,
            attempts: row.get(16)?,
            origin: row.get(17)?,
        })
    }

    fn into_lease(self) -> Res<Lease> {
        let requirements = Expr::parse(&self.requirements)
            .map_err(|err| corrupt(format!("lease {}: requirements: {err}", self.id)))?;
        let millis = |v: i64| Duration::from_millis(uint(v));
        Ok(Lease {
            id: uint(self.id),
            request: LeaseRequest {
                requirements,
                borrower: Borrower {
                    url: self.borrower_url,
                    node_name: self.borrower_node,
                    secret: Secret::new(self.borrower_secret.unwrap_or_default()),
                    transport: transport_from(self.transport)?,
                },
                client: self.client,
                lease: self.lease_ms.map(millis),
                idle_return: self.idle_return_ms.map(millis),
                wait: millis(self.wait_ms),
                origin: self
                    .origin
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|err| corrupt(format!("lease {}: origin: {err}", self.id)))?,
            },
            state: state_from(&self.state, self.state_detail.as_deref())?,
            agent: self.agent,
            requested_ms: uint(self.requested_ms),
            deadline_ms: uint(self.deadline_ms),
            since_ms: uint(self.since_ms),
            attempts: attempts_from(&self.attempts)?,
        })
    }
}

fn write_lease(tx: &Transaction<'_>, lease: &Lease) -> Res<()> {
    let ended = matches!(lease.state, LeaseState::Ended(_));
    let request = &lease.request;
    let secret = (!ended).then(|| request.borrower.secret.expose());
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO leases ({LEASE_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ),
        params![
            int(lease.id),
            lease.state.name(),
            state_detail(&lease.state).map(|v| v.to_string()),
            lease.agent,
            request.requirements.to_string(),
            request.borrower.url,
            request.borrower.node_name,
            secret,
            transport_name(request.borrower.transport),
            request.client,
            request.lease.map(duration_ms),
            request.idle_return.map(duration_ms),
            duration_ms(request.wait),
            int(lease.requested_ms),
            int(lease.deadline_ms),
            int(lease.since_ms),
            attempts_json(&lease.attempts),
            request
                .origin
                .as_ref()
                .and_then(|o| serde_json::to_string(o).ok()),
        ],
    )?;
    Ok(())
}

fn write_agent(tx: &Transaction<'_>, agent: &Agent) -> Res<()> {
    let labels = Value::Array(agent.labels.iter().cloned().map(Value::String).collect());
    tx.execute(
        "INSERT OR REPLACE INTO agents \
         (name, labels, place_url, busy, idle_since_ms, last_seen_ms, last_lent_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            agent.name,
            labels.to_string(),
            place_url(&agent.place),
            agent.busy,
            agent.idle_since_ms.map(int),
            int(agent.last_seen_ms),
            agent.last_lent_ms.map(int),
        ],
    )?;
    Ok(())
}

fn write_audit(tx: &Transaction<'_>, entry: &AuditEntry) -> Res<()> {
    tx.execute(
        "INSERT INTO audit (at_ms, lease, agent, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            int(entry.at_ms),
            entry.lease.map(int),
            entry.agent,
            entry.action,
            entry.detail,
        ],
    )?;
    Ok(())
}

impl SqliteStore {
    fn leases_where(&self, condition: &str) -> Res<Vec<Lease>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE {condition} ORDER BY id"
        ))?;
        let rows = stmt.query_map([], LeaseRow::read)?;
        rows.map(|row| row?.into_lease()).collect()
    }

    fn agents(&self) -> Res<Vec<Agent>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, labels, place_url, busy, idle_since_ms, last_seen_ms, last_lent_ms \
             FROM agents ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<i64>>(6)?,
            ))
        })?;
        rows.map(|row| {
            let (name, labels, place, busy, idle_since, last_seen, last_lent) = row?;
            let labels: Vec<String> = serde_json::from_str(&labels)
                .map_err(|err| corrupt(format!("agent {name:?}: labels: {err}")))?;
            Ok(Agent {
                name,
                labels: labels.into_iter().collect(),
                connected: false,
                place: place_from(place),
                online: false,
                busy,
                idle_since_ms: idle_since.map(uint),
                last_seen_ms: uint(last_seen),
                last_lent_ms: last_lent.map(uint),
                lease: None,
            })
        })
        .collect()
    }

    fn commit_batch(&mut self, changes: &Changes) -> Res<()> {
        let tx = self.conn.transaction()?;
        for agent in &changes.agents {
            write_agent(&tx, agent)?;
        }
        for lease in &changes.leases {
            write_lease(&tx, lease)?;
        }
        for entry in &changes.audit {
            write_audit(&tx, entry)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn load_snapshot(&self) -> Res<Snapshot> {
        let max_id: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM leases", [], |row| row.get(0))?;
        Ok(Snapshot {
            agents: self.agents()?,
            leases: self.leases_where("state <> 'ended'")?,
            next_id: max_id.map_or(1, |id| uint(id) + 1),
        })
    }

    fn one_lease(&self, id: LeaseId) -> Res<Option<Lease>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1"),
                [int(id)],
                LeaseRow::read,
            )
            .optional()?;
        row.map(LeaseRow::into_lease).transpose()
    }

    fn client_leases(&self, client: &str, filter: LeaseFilter, limit: usize) -> Res<Vec<Lease>> {
        let condition = match filter {
            LeaseFilter::All => "",
            LeaseFilter::Open => "AND state <> 'ended'",
            LeaseFilter::Ended => "AND state = 'ended'",
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE client = ?1 {condition} \
             ORDER BY id DESC LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![client, limit], LeaseRow::read)?;
        rows.map(|row| row?.into_lease()).collect()
    }

    fn audit_after(&self, after: u64, limit: usize) -> Res<Vec<AuditRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at_ms, lease, agent, action, detail FROM audit \
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![int(after), limit], |row| {
            Ok(AuditRecord {
                id: uint(row.get(0)?),
                entry: AuditEntry {
                    at_ms: uint(row.get(1)?),
                    lease: row.get::<_, Option<i64>>(2)?.map(uint),
                    agent: row.get(3)?,
                    action: row.get(4)?,
                    detail: row.get(5)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn find_token(&self, hash: &str) -> Res<Option<Principal>> {
        let row = self
            .conn
            .query_row(
                "SELECT kind, name FROM tokens WHERE hash = ?1 AND revoked_ms IS NULL",
                [hash],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()?;
        row.map(|(kind, name)| {
            let kind =
                TokenKind::parse(&kind).ok_or_else(|| corrupt(format!("token kind {kind:?}")))?;
            Ok(Principal { kind, name })
        })
        .transpose()
    }

    fn all_tokens(&self) -> Res<Vec<TokenInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, kind, name, created_ms, last_used_ms, revoked_ms FROM tokens \
             ORDER BY created_ms, rowid",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<i64>>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (hash, kind, name, created, used, revoked) = row?;
            let kind =
                TokenKind::parse(&kind).ok_or_else(|| corrupt(format!("token kind {kind:?}")))?;
            Ok(TokenInfo {
                id: short_id(&hash),
                kind: kind.as_str(),
                name,
                created_ms: uint(created),
                last_used_ms: used.map(uint),
                revoked_ms: revoked.map(uint),
            })
        })
        .collect()
    }

    fn all_controllers(&self) -> Res<Vec<ControllerConfig>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, url, user, api_token, options, added_ms FROM controllers ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (name, url, user, token, options, added) = row?;
            let options: ControllerOptions = serde_json::from_str(&options)
                .map_err(|err| corrupt(format!("controller {name:?}: options: {err}")))?;
            Ok(ControllerConfig {
                name,
                url,
                user,
                api_token: Secret::new(token),
                options,
                added_ms: uint(added),
            })
        })
        .collect()
    }

    fn revoked_hashes(&self) -> Res<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT hash FROM tokens WHERE revoked_ms IS NOT NULL")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store for SqliteStore {
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.commit_batch(changes)
            .map_err(|fault| self.error(fault))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_snapshot().map_err(|fault| self.error(fault))
    }

    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError> {
        self.one_lease(id).map_err(|fault| self.error(fault))
    }

    fn queue(&self) -> Result<Vec<Lease>, StoreError> {
        self.leases_where("state = 'queued'")
            .map_err(|fault| self.error(fault))
    }

    fn leases(
        &self,
        client: &str,
        filter: LeaseFilter,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        self.client_leases(client, filter, limit)
            .map_err(|fault| self.error(fault))
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_after(after, limit)
            .map_err(|fault| self.error(fault))
    }

    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO tokens (hash, kind, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    token.hash,
                    token.principal.kind.as_str(),
                    token.principal.name,
                    int(token.created_ms),
                ],
            )
            .map_err(|err| self.error(err.into()))?;
        Ok(())
    }

    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        self.find_token(hash).map_err(|fault| self.error(fault))
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.all_tokens().map_err(|fault| self.error(fault))
    }

    fn revoked(&self) -> Result<Vec<String>, StoreError> {
        self.revoked_hashes().map_err(|fault| self.error(fault))
    }

    fn revoke(&mut self, name: &str, at_ms: u64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                params![name, int(at_ms)],
            )
            .map_err(|err| self.error(err.into()))
    }

    fn token_used(&mut self, hash: &str, at_ms: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE tokens SET last_used_ms = ?2 WHERE hash = ?1",
                params![hash, int(at_ms)],
            )
            .map_err(|err| self.error(err.into()))?;
        Ok(())
    }

    fn add_controller(&mut self, controller: &ControllerConfig) -> Result<bool, StoreError> {
        let options = serde_json::to_string(&controller.options)
            .map_err(|err| self.error(corrupt(format!("controller options: {err}"))))?;
        let added = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO controllers (name, url, user, api_token, options, added_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    controller.name,
                    controller.url,
                    controller.user,
                    controller.api_token.expose(),
                    options,
                    int(controller.added_ms),
                ],
            )
            .map_err(|err| self.error(err.into()))?;
        Ok(added == 1)
    }

    fn remove_controller(&mut self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .conn
            .execute("DELETE FROM controllers WHERE name = ?1", params![name])
            .map_err(|err| self.error(err.into()))?;
        Ok(removed == 1)
    }

    fn controllers(&self) -> Result<Vec<ControllerConfig>, StoreError> {
        self.all_controllers().map_err(|fault| self.error(fault))
    }

    fn reader(&self) -> Result<Box<dyn Store>, StoreError> {
        let conn = match &self.memory {
            Some(name) => Connection::open_with_flags(name, memory_flags()),
            None => Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .and_then(|conn| conn.busy_timeout(READ_BUSY_TIMEOUT).map(|()| conn))
        .map_err(|err| self.error(err.into()))?;
        Ok(Box::new(SqliteStore {
            conn,
            path: self.path.clone(),
            memory: self.memory.clone(),
        }))
    }

    fn location(&self) -> &Path {
        &self.path
    }
}
