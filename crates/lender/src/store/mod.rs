//! Where the pool's state lives between restarts: leases (the queue is the
//! queued leases, in id order), agents' last known places, and an audit log.
//!
//! [`Store`] is deliberately small so that a server database can come
//! later: the pool hands over a batch of [`Changes`] after each operation
//! ([`Store::commit`], one transaction) and is rebuilt from a [`Snapshot`]
//! ([`Store::load`]). [`SqliteStore`] is the default (one file);
//! [`MemoryStore`] serves tests.
//!
//! Borrower secrets are stored while a lease may still need them (to send
//! `borrow` again after a restart) and dropped once it ended. Bearer tokens
//! are stored as their SHA-256 only ([`crate::tokens`]).

use crate::pool::{AuditEntry, Changes, Lease, LeaseId, Snapshot};
use crate::tokens::{Principal, TokenRecord};

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// An audit entry with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position: increasing, never reused.
    pub id: u64,
    /// The entry.
    pub entry: AuditEntry,
}

/// Storage for the pool.
pub trait Store {
    /// Writes a batch of changes, all or nothing.
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError>;

    /// What the pool is rebuilt from: every agent, the leases not ended,
    /// the next lease id.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// One lease, ended ones included (without their secret).
    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError>;

    /// The waiting requests, oldest first.
    fn queue(&self) -> Result<Vec<Lease>, StoreError>;

    /// Audit entries after position `after` (0: from the start), oldest
    /// first, at most `limit`.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// Adds a bearer token (its hash).
    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError>;

    /// Whom the token with this hash ([`crate::tokens::hash`]) speaks for.
    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError>;
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (a locked or broken file, a full disk).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file or its directory.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// A row that does not read back (edited by hand, or a bug).
    #[error("database holds a bad row: {0}")]
    Corrupt(String),
    /// The file was written by a newer lender.
    #[error("database schema version {found} is newer than this lender's ({known})")]
    NewerSchema {
        /// The file's version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
}
