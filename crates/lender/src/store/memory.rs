//! A store in memory, for tests: same behaviour as SQLite, no file.

use std::collections::BTreeMap;

use crate::pool::{Agent, Changes, Lease, LeaseId, LeaseState, Secret, Snapshot};
use crate::store::{AuditRecord, Store, StoreError};
use crate::tokens::{Principal, TokenRecord};

/// Keeps everything in maps; ended leases lose their secret, as in SQLite.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    agents: BTreeMap<String, Agent>,
    leases: BTreeMap<LeaseId, Lease>,
    audit: Vec<AuditRecord>,
    tokens: BTreeMap<String, Principal>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        for agent in &changes.agents {
            self.agents.insert(agent.name.clone(), agent.clone());
        }
        for lease in &changes.leases {
            let mut lease = lease.clone();
            if matches!(lease.state, LeaseState::Ended(_)) {
                lease.request.borrower.secret = Secret::new("");
            }
            self.leases.insert(lease.id, lease);
        }
        for entry in &changes.audit {
            let id = self.audit.len() as u64 + 1;
            self.audit.push(AuditRecord {
                id,
                entry: entry.clone(),
            });
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            agents: self
                .agents
                .values()
                .cloned()
                .map(|mut agent| {
                    agent.connected = false;
                    agent.online = false;
                    agent.lease = None;
                    agent
                })
                .collect(),
            leases: self
                .leases
                .values()
                .filter(|lease| !matches!(lease.state, LeaseState::Ended(_)))
                .cloned()
                .collect(),
            next_id: self.leases.keys().next_back().map_or(1, |id| id + 1),
        })
    }

    fn lease(&self, id: LeaseId) -> Result<Option<Lease>, StoreError> {
        Ok(self.leases.get(&id).cloned())
    }

    fn queue(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .leases
            .values()
            .filter(|lease| lease.state == LeaseState::Queued)
            .cloned()
            .collect())
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .audit
            .iter()
            .filter(|record| record.id > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn add_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens
            .insert(token.hash.clone(), token.principal.clone());
        Ok(())
    }

    fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        Ok(self.tokens.get(hash).cloned())
    }
}
