//! Where the pool's state lives between restarts: leases (the queue is the
//! queued leases, in id order), agents' last known places, and an audit log.
//!
//! [`Store`] is deliberately small so that a server database can come
//! later: the pool hands over a batch of [`Changes`] after each operation
//! ([`Store::commit`], one transaction) and is rebuilt from a [`Snapshot`]
//! ([`Store::load`]). [`SqliteStore`] is the default (one file);
//! [`MemoryStore`] serves tests.
//!
//! A commit may wait (a database locked by another process waits up to its
//! busy timeout), and the server must still answer reads meanwhile, so a
//! store hands out a [`Store::reader`]: a second handle on the same data
//! (SQLite: a second connection; in WAL mode readers never wait behind a
//! writer) that sees only what was committed.
//!
//! Borrower secrets are stored while a lease may still need them (to send
//! `borrow` again after a restart) and dropped once it ended. Bearer tokens
//! are stored as their SHA-256 only ([`crate::tokens`]). Registered
//! controllers' API tokens are stored as they are (the lender logs in with
//! them), like borrower secrets: never returned by a listing meant for
//! people, never logged.

use std::path::{Path, PathBuf};

use crate::controllers::ControllerConfig;
use crate::pool::{AuditEntry, Changes, Lease, LeaseId, Snapshot};
use crate::tokens::{Principal, TokenInfo, TokenRecord};

mod memory;
mod postgres;
mod rows;
mod sqlite;

pub use self::postgres::{is_postgres_url, Leadership, Lost, PgStore, PgTarget};
pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, BUSY_TIMEOUT};

/// An audit entry with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position: increasing, never reused.
    pub id: u64,
    /// The entry.
    pub entry: AuditEntry,
}

/// Which leases [`Store::leases`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseFilter {
    /// Every lease.
    All,
    /// Leases not ended yet.
    Open,
    /// Ended leases only.
    Ended,
}

/// Storage for the pool.
pub trait Store: Send {
    /// Writes a batch of changes, all or nothing.
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError>;

    /// What the pool is rebuilt from: every agent, the leases not ended,
    /// the next lease id.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// One lease, ended ones included (without their secret).
    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError>;

    /// The waiting requests, oldest first.
    fn queue(&self) -> Result<Vec<Lease>, StoreError>;

    /// `client`'s leases that pass `filter`, newest first, at most `limit`
    /// (ended ones without their secret).
    fn leases(
        &self,
        client: &str,
        filter: LeaseFilter,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Audit entries after position `after` (0: from the start), oldest
    /// first, at most `limit`.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// Adds a bearer token (its hash).
    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError>;

    /// Whom the token with this hash ([`crate::tokens::hash`]) speaks for;
    /// `None` for an unknown or revoked token.
    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError>;

    /// Every token ever made, revoked ones included, oldest first.
    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;

    /// The hashes of the revoked tokens.
    fn revoked(&self) -> Result<Vec<String>, StoreError>;

    /// Revokes every token named `name` not revoked yet; how many.
    fn revoke(&mut self, name: &str, at_ms: u64) -> Result<usize, StoreError>;

    /// Notes that the token with this hash was used at `at_ms`.
    fn token_used(&mut self, hash: &str, at_ms: u64) -> Result<(), StoreError>;

    /// Registers a controller; `false` (nothing changed) if one of that
    /// name is registered already.
    fn add_controller(&mut self, controller: &ControllerConfig) -> Result<bool, StoreError>;

    /// Removes the controller named `name`; `false` if there was none.
    fn remove_controller(&mut self, name: &str) -> Result<bool, StoreError>;

    /// Every registered controller, by name, with its API token.
    fn controllers(&self) -> Result<Vec<ControllerConfig>, StoreError>;

    /// A second handle on the same data, for reads that must not wait
    /// behind a commit of this one.
    fn reader(&self) -> Result<Box<dyn Store>, StoreError>;

    /// Where the data lives, for messages.
    fn location(&self) -> &Path;
}

/// Why the store failed. Every variant names the database, so that a
/// message in a log or on a terminal says which file to look at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (a locked or broken file, a full disk).
    #[error("database {}: {source}", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// PostgreSQL refused, or could not be reached.
    #[error("database {}: {}", path.display(), pg_detail(source))]
    Postgres {
        /// The database (its URL without password).
        path: PathBuf,
        /// What the client or the server said.
        source: ::postgres::Error,
    },
    /// A write by a lender that is no longer the active one: another took
    /// over since (fencing).
    #[error(
        "database {}: this lender is no longer the active one (its epoch {epoch}, the \
         database's {current}); the write was refused",
        path.display()
    )]
    Fenced {
        /// The database.
        path: PathBuf,
        /// This lender's epoch.
        epoch: i64,
        /// The database's.
        current: i64,
    },
    /// `--db` looks like a PostgreSQL URL but is not a usable one.
    #[error("--db {url}: {detail}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The database file or its directory.
    #[error("database {}: {source}", path.display())]
    Io {
        /// The database.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A row that does not read back (edited by hand, or a bug).
    #[error("database {} holds a bad row: {detail}", path.display())]
    Corrupt {
        /// The database.
        path: PathBuf,
        /// Which row, and what is wrong.
        detail: String,
    },
    /// The file was written by a newer lender.
    #[error(
        "database {} has schema version {found}, newer than this lender's ({known}); \
         run the newer lender",
        path.display()
    )]
    NewerSchema {
        /// The database.
        path: PathBuf,
        /// The file's version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
    /// No database where one was expected (a typo in `--db`?).
    #[error(
        "database {} {what}; check --db, or give --init to start a new, empty pool there",
        path.display()
    )]
    NotAPool {
        /// The path.
        path: PathBuf,
        /// `does not exist`, `is an empty file`, ...
        what: &'static str,
    },
    /// `PRAGMA quick_check` found damage.
    #[error(
        "database {} is damaged ({detail}); restore it from a backup",
        path.display()
    )]
    Damaged {
        /// The database.
        path: PathBuf,
        /// What the check said first.
        detail: String,
    },
}

/// A PostgreSQL error with the server's message and code when there is
/// one (the client's `Display` alone says only "db error").
fn pg_detail(err: &::postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}
